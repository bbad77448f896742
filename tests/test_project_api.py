"""A project made only of scenic's public API (tests/project_api/quadrants: its own data
set, trainer with an extra config key, model and `detect` verb) trains, evaluates, runs its
verb on new data and reports bad input like every scenic CLI, without touching the core."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

PROJECT = pathlib.Path(__file__).parent / "project_api"


def quadrants(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "quadrants.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("quadrants")
    result = quadrants("train", "--config", "quadrants_demo", "--workdir", str(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_train_with_the_projects_trainer_data_set_and_config_key(trained):
    workdir, result = trained
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert final["step"] == 30 and final["accuracy"] == 1.0, final
    assert (workdir / "notes.txt").read_text() == "quadrants demo\n"  # the project's key
    config = json.loads((workdir / "config.json").read_text())
    assert config["trainer_name"] == "notes_trainer" and config["notes"] == "quadrants demo"
    assert "test accuracy: 100.00%" in result.stdout


def test_eval_and_list_configs(trained):
    workdir, _ = trained
    result = quadrants("eval", "--workdir", str(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((workdir / "eval_metrics.json").read_text())["accuracy"] == 1.0
    listed = quadrants("list-configs")
    assert listed.returncode == 0 and listed.stdout.split() == ["quadrants_demo"]


def test_detect_verb_runs_the_trained_model_on_new_images(trained, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(PROJECT))
    from quadrants.cli import make_images

    labels = np.array([3, 0, 2, 1, 1])
    images_path = tmp_path / "images.npy"
    np.save(images_path, make_images(labels, 0.3, seed=7))
    workdir, _ = trained
    result = quadrants("detect", "--workdir", str(workdir), "--images", str(images_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "step": 30,
        "quadrants": labels.tolist(),
    }
    np.save(images_path, np.zeros((2, 4, 4, 1), np.float32))
    bad = quadrants("detect", "--workdir", str(workdir), "--images", str(images_path))
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        f"quadrants: error: {images_path}: images must be [N, 8, 8, 1], got (2, 4, 4, 1)."
    )
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.notes=" + "x" * 41, "notes must be at most 40 characters, got 41."),
        ("--config.notse=hi", "Unknown config key notse: nothing reads it. Did you mean 'notes'?"),
        (
            "--config.dataset_configs.noise=-1",
            "data set 'quadrants' (dataset_configs): quadrants noise must be >= 0, got -1.0.",
        ),
    ],
)
def test_bad_project_values_are_one_line_errors_before_the_workdir(tmp_path, override, message):
    workdir = tmp_path / "run"
    result = quadrants("train", "--config", "quadrants_demo", "--workdir", str(workdir), override)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"quadrants: error: {message}"), lines
    assert not workdir.exists()
