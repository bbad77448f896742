"""tools/bench_trainer.py runs on a machine with JAX, flax, optax and orbax but no
TensorFlow, TFDS or clu (what the lent GPU machines carry): here those imports are made to
fail, and the benchmark must still train, time and print its row."""

import os
import pathlib
import subprocess
import sys

TOOL = pathlib.Path(__file__).resolve().parents[1] / "tools" / "bench_trainer.py"

# Any import of these raises ImportError in the child (sys.modules entries set to None).
BLOCKED = ("tensorflow", "tensorflow_datasets", "clu", "tensorboard")
RUNNER = f"""
import runpy, sys
sys.modules.update(dict.fromkeys({BLOCKED!r}))
sys.argv = [{str(TOOL)!r}, *sys.argv[1:]]
runpy.run_path({str(TOOL)!r}, run_name="__main__")
"""


def test_bench_trainer_needs_no_tensorflow_tfds_or_clu():
    env = dict(os.environ, GLIBC_TUNABLES="")  # no allocator re-exec: keep the blocked imports
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, "--models", "digits", "--steps", "2", "--batch", "16"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("digits ")]
    assert len(rows) == 1, result.stdout
    mode, batch, examples_per_sec, unit, gflop_per_example = rows[0][1:6]
    assert (mode, batch, unit) == ("pmap", "16", "images")
    assert float(examples_per_sec) > 0 and float(gflop_per_example) > 0
    assert "MFU" in result.stdout and "peak" in result.stdout
