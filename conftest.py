"""Settings for every test in the workspace (core, projects, cross-package).

One persistent JAX compilation cache for the whole run, in `.pytest_cache/`: many tests
compile the same tiny train and eval steps again (each CLI run in a subprocess, each resumed
run), and XLA:CPU compilation is most of their time. A cached executable is the one the
compiler produced for the same computation, flags and JAX version, so results are the same.
Subprocesses the tests start inherit it through the environment. Set
JAX_COMPILATION_CACHE_DIR yourself (to another folder) to override it.
"""

import os
import pathlib

os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    str(pathlib.Path(__file__).parent / ".pytest_cache" / "jax_compilation_cache"),
)
# Only computations that take a while to compile: reading many tiny entries back is no faster.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# LLVM level 1 instead of 3 for XLA:CPU: about half the compile time of the tiny programs the
# tests compile, with the same step speed at these sizes (docs/experiments/test_suite_time.md).
# Level 0 is faster still but changes results (a NaN in the UNet test). Kept when XLA_FLAGS
# already names a level; subprocesses inherit it.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=1"
    ).strip()
