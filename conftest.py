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
# Compile options for XLA:CPU (docs/experiments/test_suite_time.md), each kept when XLA_FLAGS
# already names it; subprocesses inherit them. Both only make compiling the tests' tiny
# programs cheaper; tests/test_suite_compile_options.py checks that training computes what
# XLA's defaults compute.
# - LLVM level 1 instead of 3: about half the compile time. Level 0 is faster still but
#   changes results (a NaN in the UNet test).
# - The elemental fusion emitters instead of the MLIR ones: ~15% less CPU for the whole
#   suite (878 -> 749 s cold); steps run 10-15% slower, which only long runs would notice.
SUITE_XLA_FLAGS = {
    "--xla_backend_optimization_level": "1",
    "--xla_cpu_use_fusion_emitters": "false",
}
for flag, value in SUITE_XLA_FLAGS.items():
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}={value}".strip()
