"""Preemption and divergence: SIGTERM checkpoints and resumes exactly; SIGKILL during a
checkpoint write keeps the previous good checkpoint; a NaN loss stops with the step named."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

# Over the reference run's arguments (tests/conftest.py: 60 steps, long enough that a
# signal lands mid-run): only the signal or the end saves.
RUN = ["--config.checkpoint_steps=1000"]
# The other fault runs: the tiny ViT, up to 60 steps, a progress line every step.
LONG = [
    "--config.num_training_steps=60",
    "--config.log_summary_steps=1",
    "--config.log_eval_steps=1000",
]

# Makes the checkpoint write of step HANG_AT_STEP stop after the data is written but
# before Orbax's atomic rename, so the test can SIGKILL the process at that point.
HANGING_CHECKPOINT = """
import os, pathlib, time, sys
from orbax.checkpoint._src.path import atomicity
finalize = atomicity.AtomicRenameTemporaryPath.finalize
async def hanging_finalize(self, *args, **kwargs):
    if self.get_final().name == os.environ["HANG_AT_STEP"]:
        pathlib.Path(os.environ["HANG_MARKER"]).write_text("writing")
        time.sleep(600)
    return await finalize(self, *args, **kwargs)
atomicity.AtomicRenameTemporaryPath.finalize = hanging_finalize
from scenic_baselines.cli import main
sys.exit(main(sys.argv[1:]))
"""


def popen_cli(args, script=None, env_extra=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env_extra or {}))
    env["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=1"
    command = (
        [sys.executable, "-c", script, *args]
        if script
        else [sys.executable, "-m", "scenic_baselines.cli", *args]
    )
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


def params_at(workdir, step):
    path = workdir / "checkpoints" / str(step) / "default"
    return ocp.StandardCheckpointer().restore(path)["params"]


def steps_saved(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def wait_for_line(process, needle, timeout=300):
    deadline, seen = time.monotonic() + timeout, []
    for line in process.stdout:
        seen.append(line)
        if needle in line:
            return seen
        if time.monotonic() > deadline:
            break
    process.kill()
    raise AssertionError(f"never saw {needle!r}:\n" + "".join(seen[-30:]))


def test_sigterm_checkpoints_and_resume_is_exact(tmp_path, cli, reference_args, reference_run):
    workdir = tmp_path / "preempted"
    process = popen_cli([*reference_args, *RUN, "--workdir", str(workdir)])
    wait_for_line(process, "step 5/60")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 143, output[-3000:]
    assert "Stopped by SIGTERM" in output
    (stopped_step,) = steps_saved(workdir)
    assert 5 <= stopped_step < 60
    assert not (workdir / "final_metrics.json").exists()

    resumed = cli(*reference_args, *RUN, "--workdir", str(workdir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from {workdir / 'checkpoints'} at step {stopped_step}" in resumed.stderr
    # The same parameters as the uninterrupted reference run (same steps, checkpointed at
    # 30 and 60 instead of only at the signal and the end).
    full, _, _ = reference_run
    jax.tree.map(np.testing.assert_array_equal, params_at(full, 60), params_at(workdir, 60))


def test_sigkill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path, cli, tiny_vit_digits):
    args = [
        "train",
        "--config",
        "vit_digits",
        *tiny_vit_digits,
        *LONG,
        "--config.checkpoint_steps=4",
        "--config.num_training_steps=12",
    ]
    workdir = tmp_path / "killed"
    marker = tmp_path / "marker"
    process = popen_cli(
        [*args, "--workdir", str(workdir)],
        script=HANGING_CHECKPOINT,
        env_extra={"HANG_AT_STEP": "8", "HANG_MARKER": str(marker)},
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the checkpoint write of step 8 never started"
        time.sleep(0.2)
    process.kill()  # SIGKILL mid-write
    process.communicate(timeout=60)
    assert steps_saved(workdir) == [4]
    good = params_at(workdir, 4)

    resumed = cli(*args, "--workdir", str(workdir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 4." in resumed.stderr
    assert steps_saved(workdir) == [4, 8, 12]
    # The kept checkpoint is the one the resumed run started from, untouched (that resuming
    # is exact, against an uninterrupted run, is the SIGTERM test's check).
    jax.tree.map(np.testing.assert_array_equal, params_at(workdir, 4), good)
    final = params_at(workdir, 12)
    assert any(
        np.abs(a - b).max() > 0 for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(good))
    )


def test_nan_loss_stops_with_the_step_and_keeps_last_good_checkpoint(
    tmp_path, cli, tiny_vit_digits
):
    # Adam's steps are ~lr in size: at 1e30 the parameters overflow within a few steps.
    workdir = tmp_path / "diverged"
    run = cli(
        "train",
        "--config",
        "vit_digits",
        "--workdir",
        str(workdir),
        *tiny_vit_digits,
        *LONG,
        "--config.checkpoint_steps=2",
        "--config.lr_configs.warmup_steps=0",
        "--config.lr_configs.base_learning_rate=1e30",
    )
    assert run.returncode == 1, run.stderr[-3000:]
    message = run.stderr.strip().splitlines()[-1]
    assert "NaN or infinite at step" in message or "not finite at step" in message, message
    bad_step = int(message.split(" at step ")[1].split(".")[0].split(";")[0])
    saved = steps_saved(workdir) if (workdir / "checkpoints").exists() else []
    assert all(step < bad_step for step in saved)
    for step in saved:
        assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params_at(workdir, step)))
