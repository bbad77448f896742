"""Shared helpers for the cross-package tests: running a project's CLI in a subprocess."""

import os
import subprocess
import sys

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


def run_cli(*args, devices=1, timeout=600):
    """Runs `python -m scenic_baselines.cli ARGS` with `devices` CPU devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
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
