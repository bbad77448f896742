"""scenic-baselines end to end: train, eval, list-configs, and clear errors on bad input.

The trained workdir is a copy of the session's reference run (tests/conftest.py), trained
through the console entry in a subprocess; the bad-input cases call the same `main` in this
process (what the console script runs, without paying a process start per case).
"""

import contextlib
import hashlib
import io
import json
import pathlib
import subprocess
import sys

import pytest

from scenic_baselines.cli import main


def snapshot(directory: pathlib.Path) -> dict[str, str]:
    """Every file under `directory` with a hash of its contents."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def run_main(*args) -> subprocess.CompletedProcess:
    """`scenic-baselines ARGS` in this process: exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        returncode = main(list(args))
    return subprocess.CompletedProcess(args, returncode, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def trained(reference_run, private_copy):
    workdir, stdout, stderr = reference_run
    return private_copy(workdir), subprocess.CompletedProcess([], 0, stdout, stderr)


def test_train_leaves_checkpoints_summaries_config_and_metrics(trained):
    workdir, result = trained
    assert "test accuracy:" in result.stdout
    assert "parameters" in result.stderr and "GFLOPs per example" in result.stderr
    assert "examples/s" in result.stderr and "ETA" in result.stderr
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["30", "60"]
    assert list(workdir.glob("events.out.tfevents.*")), "no TensorBoard summaries"
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["hidden_size"] == 16 and config["num_training_steps"] == 60
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert final["step"] == 60 and 0.0 <= final["accuracy"] <= 1.0
    assert final["train_examples_per_sec"] > 0


def test_eval_verb_reproduces_final_metrics(trained, cli):
    workdir, _ = trained
    result = cli("eval", "--workdir", str(workdir))
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads((workdir / "final_metrics.json").read_text())
    evaluated = json.loads((workdir / "eval_metrics.json").read_text())
    assert evaluated["step"] == 60
    assert evaluated["accuracy"] == pytest.approx(final["accuracy"], abs=1e-6)
    assert evaluated["loss"] == pytest.approx(final["loss"], rel=1e-5)


def test_every_project_cli_starts_without_jax_or_tensorflow():
    """`scenic-<project> --help` / `list-configs` answer at once: importing a project's CLI
    module loads no jax, flax, TensorFlow or torch (each verb imports what it runs)."""
    projects = ["scenic_baselines", "scenic_vivit", "scenic_mbt", "scenic_tokenlearner",
                "scenic_owl_vit"]  # fmt: skip
    heavy = ("jax", "flax", "tensorflow", "torch")
    code = (
        f"import sys\nfor p in {projects!r}: __import__(p + '.cli')\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_list_configs(cli):
    result = run_main("list-configs")
    assert result.returncode == 0
    assert {"vit_digits", "vit_b16_imagenet"} <= set(result.stdout.split())


BAD_CONFIG = """
from scenic_baselines.configs.vit_digits import get_config as base

def get_config():
    config = base()
    config.num_trainng_steps = 10
    return config
"""


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--config.model.hiden_size=8"],
            "Unknown config key model.hiden_size: nothing reads it. Did you mean 'hidden_size'?",
        ),
        (["--config.num_trainng_steps=5"], "num_trainng_steps: nothing reads it"),
        (["--config.dataset_name=digitz"], "Unknown data set 'digitz'"),
        (["--config.model_name=vit_clasification"], "Unknown model_name 'vit_clasification'"),
        (["--config.optimizer.name=adamm"], "Unknown optimizer.name 'adamm'"),
        (
            ["--config.dataset_configs.image_size=8", "--config.dataset_configs.shift=2"],
            "Unknown config key dataset_configs.shift: nothing reads it.",
        ),
        (["--config.optimizer.name=sgd"], None),  # b1/b2 are adamw's: read by nobody
        (["--bogus"], "Unrecognised argument '--bogus'"),
        # Bad values, not only bad keys, are config errors found before anything is written.
        (["--config.grad_accumulation_steps=3"], "grad_accumulation_steps=3 must divide"),
        (["--config.batch_size=0"], "batch_size must be an integer >= 1, got 0"),
        (["--config.dataset_configs.shift_pixels=-1"], "shift_pixels must be >= 0, got -1"),
        (["--config.trainer_name=trainr"], "Unknown trainer_name 'trainr'. Did you mean"),
        (["--config.parallelism=spmd"], "parallelism must be 'pmap' or 'mesh', got 'spmd'"),
        (["--config.parallelism=mesh", "--config.mesh.fsdp=3"], "do not divide by the fixed"),
        (
            ["--config.parallelism=mesh", "--config.partition_rules=(('nope', ('fsdp',)),)"],
            "partition rule 0 ('nope' -> ('fsdp',)) matches no parameter.",
        ),
    ],
)
def test_bad_input_is_one_clear_error_and_nothing_written(trained, cli, extra, message):
    workdir, _ = trained
    before = snapshot(workdir)
    result = run_main("train", "--config", "vit_digits", "--workdir", str(workdir), *extra)
    assert result.returncode != 0
    assert result.stderr.startswith("scenic-baselines: error:"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    if message:
        assert message in result.stderr
    assert snapshot(workdir) == before


def test_a_partition_rule_error_creates_no_workdir(tmp_path):
    """The rules are checked against the model's parameters, once the model exists, but
    before the run writes anything: the workdir it would have created is not left behind."""
    workdir = tmp_path / "new"
    result = run_main(
        "train", "--config", "vit_digits", "--workdir", str(workdir),
        "--config.parallelism=mesh",
        "--config.partition_rules=(('head/kernel$', ('fsdp', None, None)),)",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "names 3 axes but parameter head/kernel has shape" in result.stderr
    assert not workdir.exists()


def test_misspelled_key_in_config_file(tmp_path, cli):
    path = tmp_path / "typo.py"
    path.write_text(BAD_CONFIG)
    result = run_main("train", "--config", str(path), "--workdir", str(tmp_path / "wd"))
    assert result.returncode != 0
    assert "num_trainng_steps: nothing reads it" in result.stderr
    assert "Did you mean 'num_training_steps'" in result.stderr
    assert not (tmp_path / "wd").exists()


def test_checkpoint_of_another_model_shape_is_refused(trained, cli, tiny_vit_digits):
    workdir, _ = trained
    before = snapshot(workdir)
    result = run_main(
        "train",
        "--config",
        "vit_digits",
        "--workdir",
        str(workdir),
        *tiny_vit_digits,
        "--config.model.hidden_size=32",
        "--config.num_training_steps=90",
    )
    assert result.returncode != 0
    assert "does not match this model" in result.stderr
    assert "params/" in result.stderr and "checkpoint (16,) != model (32,)" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(workdir) == before


def test_config_file_that_does_not_load_is_named(tmp_path, cli):
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n    pass\n")
    failing = tmp_path / "failing.py"
    failing.write_text("def get_config():\n    return {}['model']\n")
    for path, message in (
        (broken, f"Config file {broken} does not parse: invalid syntax (line 1)"),
        (failing, f"Config file {failing}: get_config() failed (line 2): KeyError"),
    ):
        result = run_main("train", "--config", str(path), "--workdir", str(tmp_path / "wd"))
        assert result.returncode == 2, result.stderr[-2000:]
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"scenic-baselines: error: {message}"), lines
        assert not (tmp_path / "wd").exists()


def test_init_from_file_that_cannot_be_read_leaves_no_workdir(tmp_path, cli, tiny_vit_digits):
    """A fresh run reads `init_from` before it writes anything (the checkpoints folder
    included): a corrupt file is one error line, exit 2, and no workdir."""
    corrupt = tmp_path / "weights.npz"
    corrupt.write_bytes(b"not an npz archive")
    workdir = tmp_path / "fresh"
    init_from = f"--config.init_from={{'checkpoint': '{corrupt}', 'format': 'npz'}}"
    result = run_main(
        "train", "--config", "vit_digits", "--workdir", str(workdir), *tiny_vit_digits, init_from
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("scenic-baselines: error:"), lines
    assert str(corrupt) in lines[0]
    assert not workdir.exists() or not any(workdir.iterdir()), sorted(workdir.rglob("*"))


def test_workdir_that_is_a_file_is_refused(tmp_path, cli, tiny_vit_digits):
    path = tmp_path / "file"
    path.write_text("not a directory")
    result = run_main("train", "--config", "vit_digits", "--workdir", str(path), *tiny_vit_digits)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"scenic-baselines: error: --workdir {path} exists and is not a directory."
    )
    assert path.read_text() == "not a directory"


def test_corrupt_latest_checkpoint_is_named_kept_and_not_replaced(trained, cli, tiny_vit_digits):
    workdir, _ = trained
    damaged = tmp_copy(workdir)
    for data_file in (damaged / "checkpoints" / "60" / "default").rglob("d/*"):
        data_file.write_bytes(data_file.read_bytes()[:10])  # truncated array data
    before = snapshot(damaged)
    # Resuming (the `eval` verb restores through the same code) must not start over.
    more = ["--config.num_training_steps=90"]
    result = run_main(
        "train", "--config", "vit_digits", *tiny_vit_digits, *more, "--workdir", str(damaged)
    )
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"scenic-baselines: error: Checkpoint {damaged}/checkpoints/60 ")
    assert "cannot be read" in last and "Nothing was deleted or overwritten" in last
    assert "Traceback" not in result.stderr
    assert snapshot(damaged) == before  # not deleted, not replaced, nothing added


def tmp_copy(workdir: pathlib.Path) -> pathlib.Path:
    import shutil

    copy = workdir.parent / f"{workdir.name}-damaged"
    shutil.copytree(workdir, copy)
    return copy
