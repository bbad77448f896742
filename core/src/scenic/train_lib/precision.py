"""Mixed precision: compute in bfloat16, keep parameters and optimizer state in float32.

Flax modules take `dtype` (the compute dtype) and `param_dtype` (float32 by default), so a
model built with `dtype=compute_dtype(config)` keeps float32 parameters, and so does the
optimizer state built from them. Inputs are cast once at the top of the train/eval step;
losses should be computed from logits cast back to float32 (`to_float32`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scenic.common_lib.config_utils import ConfigError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str | None) -> jnp.dtype:
    """'float32' (default for None/'') or 'bfloat16' -> the jnp dtype; else ConfigError."""
    if not name:
        return jnp.dtype(jnp.float32)
    if name not in DTYPES:
        raise ConfigError(f"Unknown compute dtype {name!r}; known: {', '.join(DTYPES)}.")
    return jnp.dtype(DTYPES[name])


def cast_inputs(batch, dtype, keys=("inputs",)):
    """Casts the floating arrays under `keys` of a batch dict (or a bare array) to `dtype`.

    Integer data (labels, token ids, uint8 images) and `batch_mask` are left alone.
    """

    def cast(x):
        return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

    if not isinstance(batch, dict):
        return cast(jnp.asarray(batch))
    return {k: (jax.tree.map(cast, v) if k in keys else v) for k, v in batch.items()}


def to_float32(tree):
    """Floating leaves to float32 (logits before the loss, metrics)."""
    return jax.tree.map(
        lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def check_float32(tree, where: str = "params") -> None:
    """Raises ValueError naming the first floating leaf of `tree` that is not float32."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    for path, leaf in flat:
        dtype = jnp.result_type(leaf)
        if jnp.issubdtype(dtype, jnp.floating) and dtype != jnp.float32:
            name = jax.tree_util.keystr(path, simple=True, separator="/")
            raise ValueError(f"{where}/{name} is {dtype}; keep {where} in float32.")
