"""Two processes on this machine (jax.distributed, gloo CPU collectives) train exactly like
one process with two devices at the same global batch (the shared reference run)."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

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
        XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={devices}",
    )
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_two_processes_equal_one_process_with_two_devices(
    tmp_path, two_device_run, reference_overrides
):
    overrides, steps = reference_overrides
    address = f"127.0.0.1:{free_port()}"
    workers = [
        start(
            [
                address,
                "2",
                str(i),
                str(tmp_path / "two"),
                str(tmp_path / f"p{i}.npz"),
                *overrides,
            ],
            devices=1,
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-3000:]
    assert all("PROCESSES 2 DEVICES 2" in out for out in outputs)

    # The reference: one process with two devices (pmap), the same run through the CLI.
    one_process, _, _ = two_device_run
    one = ocp.StandardCheckpointer().restore(one_process / "checkpoints" / str(steps) / "default")[
        "params"
    ]
    one = {
        "/".join(str(k.key) for k in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(one)[0]
    }
    p0, p1 = (np.load(tmp_path / name) for name in ("p0.npz", "p1.npz"))
    assert sorted(p0) == sorted(one)
    for key in one:
        np.testing.assert_array_equal(p0[key], p1[key])  # both processes hold the same state
        np.testing.assert_allclose(p0[key], one[key], rtol=1e-5, atol=1e-6)
    accuracies = {
        float(line.split()[1])
        for out in outputs
        for line in out.splitlines()
        if line.startswith("ACCURACY")
    }
    reference = json.loads((one_process / "final_metrics.json").read_text())["accuracy"]
    assert accuracies == {reference}  # eval counted the same examples everywhere
    # Written once, by process 0, and the checkpoints are complete.
    final = json.loads((tmp_path / "two" / "final_metrics.json").read_text())
    assert final["step"] == steps
    assert sorted(
        int(p.name) for p in (tmp_path / "two" / "checkpoints").iterdir() if p.name.isdigit()
    ) == [30, 60]
