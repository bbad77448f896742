"""Parameter counts and FLOPs, logged at the start of every run."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np


def count_parameters(params) -> int:
    return int(sum(np.prod(np.shape(p)) for p in jax.tree.leaves(params)))


def compiled_flops(fn, *args) -> float | None:
    """FLOPs of one call of `fn(*args)` from XLA's cost analysis (None if unavailable).

    `args` may be `jax.ShapeDtypeStruct`s: nothing is executed.
    """
    return compiled_costs(fn, *args)[0]


def model_flops(fn, *args) -> float | None:
    """FLOPs of one call of `fn(*args)` from XLA's cost analysis of the program as traced,
    before XLA's optimisations: the model's own arithmetic, which is what MFU counts, and
    no compilation (a large model's forward takes seconds to compile). Falls back to
    `compiled_flops` where the backend analyses only compiled programs."""
    try:
        analysis = jax.jit(fn).lower(*args).cost_analysis()
        if isinstance(analysis, list | tuple):
            analysis = analysis[0] if analysis else None
        if analysis and "flops" in analysis:
            return float(analysis["flops"])
    except Exception:  # analyses are best-effort on some backends
        pass
    return compiled_flops(fn, *args)


def compiled_costs(fn, *args) -> tuple[float | None, int | None]:
    """(FLOPs, temporary bytes) of one call of `fn(*args)` from one compilation: XLA's cost
    and memory analyses, each None where the backend gives none. `args` may be
    `jax.ShapeDtypeStruct`s."""
    try:
        compiled = jax.jit(fn).lower(*args).compile()
    except Exception:  # analyses are best-effort on some backends
        return None, None
    try:
        analysis = compiled.cost_analysis()
        if isinstance(analysis, list | tuple):
            analysis = analysis[0] if analysis else None
        flops = float(analysis["flops"]) if analysis and "flops" in analysis else None
    except Exception:
        flops = None
    try:
        temp_bytes = int(compiled.memory_analysis().temp_size_in_bytes)
    except Exception:
        temp_bytes = None
    return flops, temp_bytes


def peak_matmul_flops(size: int = 1024, repeats: int = 5, dtype=jnp.float32) -> float:
    """FLOP/s of a square matmul on one default device (best of `repeats`): the reference
    for MFU estimates, measured in the same process as the run it is compared with."""
    a = jnp.ones((size, size), dtype)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def run_peak_matmul_flops(size: int = 2048, dtype=jnp.float32) -> float:
    """`peak_matmul_flops` for a training run's MFU estimate, timed on the first call in this
    process for each size, dtype and default device and then reused: the machine does not
    change between runs in one process, and each timing costs ~0.6 s of matmuls (a test
    session trains hundreds of tiny models in a few processes). Benchmarks that watch a
    shared host's speed drift call `peak_matmul_flops`, which times it afresh."""
    return _peak_once(size, jnp.dtype(dtype), jax.devices()[0])


@functools.cache
def _peak_once(size: int, dtype, device) -> float:
    del device  # part of the cache key: peak_matmul_flops runs on the default device
    return peak_matmul_flops(size=size, dtype=dtype)
