"""Two processes on this machine (jax.distributed, gloo CPU collectives) train exactly like
one process with two devices at the same global batch."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

# Runs the trainer the way the CLI does, then saves this process's final parameters.
WORKER = """
import sys, numpy as np, jax
from scenic.common_lib import config_utils, runner
from scenic.train_lib import distributed, trainer
from scenic_baselines.models import MODELS
address, processes, index, workdir, out = sys.argv[1:6]
if int(processes) > 1:
    distributed.initialize(address, int(processes), int(index))
config = config_utils.load_config("vit_digits", "scenic_baselines.configs")
overrides = [o.removeprefix("--config.") for o in sys.argv[6:]]
config, model_cls = runner.resolve_config(config, MODELS, overrides)
result = trainer.train(
    model_cls=model_cls, dataset=runner.build_dataset(config), config=config, workdir=workdir)
state, final = result.state, result.metrics
flat = {"/".join(str(k.key) for k in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(state["params"])[0]}
np.savez(out, **flat)
print("ACCURACY", final["accuracy"], "PROCESSES", jax.process_count(), "DEVICES",
      jax.device_count())
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, devices):
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="2",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_two_processes_equal_one_process_with_two_devices(tmp_path, tiny_vit_digits):
    overrides = [*tiny_vit_digits, "--config.checkpoint_steps=3"]
    address = f"127.0.0.1:{free_port()}"
    workers = [
        start(
            [address, "2", str(i), str(tmp_path / "two"), str(tmp_path / f"p{i}.npz"), *overrides],
            devices=1,
        )
        for i in range(2)
    ]
    single = start(
        [address, "1", "0", str(tmp_path / "one"), str(tmp_path / "single.npz"), *overrides],
        devices=2,
    )
    outputs = [w.communicate(timeout=600)[0] for w in [*workers, single]]
    for worker, output in zip([*workers, single], outputs, strict=True):
        assert worker.returncode == 0, output[-3000:]
    assert all("PROCESSES 2 DEVICES 2" in out for out in outputs[:2])
    assert "PROCESSES 1 DEVICES 2" in outputs[2]

    p0, p1, one = (np.load(tmp_path / name) for name in ("p0.npz", "p1.npz", "single.npz"))
    assert sorted(p0) == sorted(one)
    for key in one:
        np.testing.assert_array_equal(p0[key], p1[key])  # both processes hold the same state
        np.testing.assert_allclose(p0[key], one[key], rtol=1e-5, atol=1e-6)
    accuracies = {
        line.split()[1]
        for out in outputs
        for line in out.splitlines()
        if line.startswith("ACCURACY")
    }
    assert len(accuracies) == 1, accuracies  # eval counted the same examples everywhere
    # Written once, by process 0, and the checkpoints are complete.
    assert json.loads((tmp_path / "two" / "final_metrics.json").read_text())["step"] == 6
    assert sorted(
        p.name for p in (tmp_path / "two" / "checkpoints").iterdir() if p.name.isdigit()
    ) == ["3", "6"]
