"""Shared helpers for the cross-package tests: running a project's CLI in a subprocess, and
the uninterrupted reference runs that the CLI, fault, pmap and multi-process tests compare
against (each trained once per test session, however many tests and xdist workers use it)."""

import json
import os
import shutil
import subprocess
import sys

import filelock
import pytest

# A 1-layer, 16-wide ViT on digits for 6 steps: every code path, a few seconds.
TINY_VIT_DIGITS = [
    "--config.model.hidden_size=16",
    "--config.model.num_layers=1",
    "--config.model.num_heads=2",
    "--config.model.mlp_dim=32",
    "--config.batch_size=32",
    "--config.eval_batch_size=64",
    "--config.num_training_steps=6",
    "--config.log_summary_steps=3",
    "--config.log_eval_steps=6",
    "--config.checkpoint_steps=3",
    "--config.lr_configs.warmup_steps=2",
]

# The reference run: the tiny ViT for 60 steps (long enough that a signal sent after step 5
# lands mid-run), a progress line every step, checkpoints at 30 and 60, eval at the end.
REFERENCE_STEPS = 60
REFERENCE_RUN = [
    *TINY_VIT_DIGITS,
    f"--config.num_training_steps={REFERENCE_STEPS}",
    "--config.log_summary_steps=1",
    "--config.log_eval_steps=1000",
    "--config.checkpoint_steps=30",
]


def run_cli(*args, devices=1, timeout=600):
    """Runs `python -m scenic_baselines.cli ARGS` with `devices` CPU devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    )
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return subprocess.run(
        [sys.executable, "-m", "scenic_baselines.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def cli():
    return run_cli


@pytest.fixture(scope="session")
def tiny_vit_digits():
    return list(TINY_VIT_DIGITS)


@pytest.fixture(scope="session")
def reference_overrides():
    """The reference runs' `--config.*` overrides, and their number of steps."""
    return list(REFERENCE_RUN), REFERENCE_STEPS


@pytest.fixture(scope="session")
def reference_args():
    """`train --config vit_digits` arguments of the reference runs (without --workdir)."""
    return ["train", "--config", "vit_digits", *REFERENCE_RUN]


def session_folder(tmp_path_factory, worker_id):
    """The test session's temporary folder, the same for every xdist worker."""
    root = tmp_path_factory.getbasetemp()
    return root if worker_id == "master" else root.parent


def shared_once(tmp_path_factory, worker_id, name, produce):
    """`produce(folder)` run once per test session, by whichever xdist worker asks first
    (the others wait on a file lock), its JSON-able result kept for all. Returns (folder,
    result); treat the folder as read-only."""
    root = session_folder(tmp_path_factory, worker_id)
    folder, log = root / name, root / f"{name}.json"
    with filelock.FileLock(str(root / f"{name}.lock")):
        if not log.exists():
            folder.mkdir(exist_ok=True)
            log.write_text(json.dumps(produce(folder)))
    return folder, json.loads(log.read_text())


def shared_run(tmp_path_factory, worker_id, name, devices):
    """The reference run on `devices` CPU devices, trained once per session and read by all:
    treat it as read-only (copy it with `private_copy` to write into it). Returns (workdir,
    stdout, stderr)."""

    def train(workdir):
        result = run_cli(
            "train", "--config", "vit_digits", "--workdir", str(workdir), *REFERENCE_RUN,
            devices=devices,
        )  # fmt: skip
        return [result.returncode, result.stdout, result.stderr]

    workdir, (returncode, stdout, stderr) = shared_once(
        tmp_path_factory, worker_id, f"reference-{name}", train
    )
    assert returncode == 0, stderr[-3000:]
    return workdir, stdout, stderr


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory, worker_id):
    """The test session's temporary folder, the same for every xdist worker."""
    return session_folder(tmp_path_factory, worker_id)


@pytest.fixture(scope="session")
def share_once(tmp_path_factory, worker_id):
    """`share_once(name, produce)`: `shared_once` for this session."""
    return lambda name, produce: shared_once(tmp_path_factory, worker_id, name, produce)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory, worker_id):
    """The uninterrupted reference run on one device."""
    return shared_run(tmp_path_factory, worker_id, "one-device", devices=1)


@pytest.fixture(scope="session")
def two_device_run(tmp_path_factory, worker_id):
    """The same run on two devices (pmap), at the same global batch."""
    return shared_run(tmp_path_factory, worker_id, "two-devices", devices=2)


@pytest.fixture(scope="session")
def private_copy(tmp_path_factory):
    """`private_copy(workdir)`: a copy of a shared run's workdir that a test may write into."""

    def copy(workdir):
        destination = tmp_path_factory.mktemp(workdir.name) / workdir.name
        shutil.copytree(workdir, destination)
        return destination

    return copy
