"""Parameter counts and FLOPs, logged at the start of every run."""

from __future__ import annotations

import jax
import numpy as np


def count_parameters(params) -> int:
    return int(sum(np.prod(np.shape(p)) for p in jax.tree.leaves(params)))


def compiled_flops(fn, *args) -> float | None:
    """FLOPs of one call of `fn(*args)` from XLA's cost analysis (None if unavailable).

    `args` may be `jax.ShapeDtypeStruct`s: nothing is executed.
    """
    try:
        analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    except Exception:  # cost analysis is best-effort on some backends
        return None
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])
