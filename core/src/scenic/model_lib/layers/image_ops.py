"""Image (and video) tensor ops as pure functions: patches, space-to-depth, pooling, resize.

Inputs are channels-last `[B, *spatial, C]` with any number of spatial axes (2 for images,
3 for video), and sizes are an int (same for every spatial axis) or one per spatial axis.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _per_axis(name: str, value, x) -> tuple[int, ...]:
    spatial = x.ndim - 2
    if spatial < 1:
        raise ValueError(f"{name}: expected [batch, *spatial, channels], got shape {x.shape}.")
    value = (value,) * spatial if isinstance(value, int) else tuple(value)
    if len(value) != spatial or any(v < 1 for v in value):
        raise ValueError(
            f"{name}: need {spatial} positive sizes for input shape {x.shape}, got {value}."
        )
    return value


def extract_patches(x, patch_size):
    """Non-overlapping patches: `[B, *spatial, C]` -> `[B, *grid, prod(patch) * C]`.

    Each patch is flattened in (p_1, ..., p_n, c) order, the order of a conv kernel
    `[p_1, ..., p_n, C, D]` reshaped to `[-1, D]`: `extract_patches(x, p) @ kernel` is the
    strided patch-embedding convolution. Sizes must divide the spatial axes.
    """
    patch = _per_axis("extract_patches", patch_size, x)
    spatial = x.shape[1:-1]
    if any(s % p for s, p in zip(spatial, patch)):
        raise ValueError(f"extract_patches: patch size {patch} does not divide {spatial}.")
    n = len(spatial)
    grid = tuple(s // p for s, p in zip(spatial, patch))
    x = x.reshape((x.shape[0], *sum(zip(grid, patch), ()), x.shape[-1]))
    order = (0, *tuple(range(1, 2 * n, 2)), *tuple(range(2, 2 * n + 1, 2)), 2 * n + 1)
    return x.transpose(order).reshape((x.shape[0], *grid, -1))


def merge_patches(patches, patch_size):
    """Inverse of `extract_patches`: `[B, *grid, prod(patch) * C]` -> `[B, *spatial, C]`."""
    patch = _per_axis("merge_patches", patch_size, patches)
    if patches.shape[-1] % math.prod(patch):
        raise ValueError(
            f"merge_patches: {patches.shape[-1]} features are not a multiple of the patch "
            f"volume {math.prod(patch)}."
        )
    n = len(patch)
    grid = patches.shape[1:-1]
    channels = patches.shape[-1] // math.prod(patch)
    x = patches.reshape((patches.shape[0], *grid, *patch, channels))
    order = (0, *sum(((1 + i, 1 + n + i) for i in range(n)), ()), 2 * n + 1)
    spatial = tuple(g * p for g, p in zip(grid, patch))
    return x.transpose(order).reshape((patches.shape[0], *spatial, channels))


def space_to_depth(x, block_size):
    """`tf.nn.space_to_depth` (NHWC) layout: the same as `extract_patches`."""
    return extract_patches(x, block_size)


def depth_to_space(x, block_size):
    """`tf.nn.depth_to_space` (NHWC) layout: the same as `merge_patches`."""
    return merge_patches(x, block_size)


def _windows(name, x, window, strides):
    window = _per_axis(name, window, x)
    strides = window if strides is None else _per_axis(name, strides, x)
    return (1, *window, 1), (1, *strides, 1)


def _pool_mask(name, x, mask):
    if mask is None:
        return jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
    if jnp.shape(mask) != x.shape[:-1]:
        raise ValueError(
            f"{name}: mask shape {jnp.shape(mask)} must equal the input shape without "
            f"channels, {x.shape[:-1]}."
        )
    return (jnp.asarray(mask) > 0).astype(x.dtype)[..., None]


def avg_pool(x, window, strides=None, padding="VALID", mask=None):
    """Windowed average over the spatial axes (strides default to the window).

    Averages only real positions: zero padding from 'SAME' is not counted (as TensorFlow,
    unlike `flax.linen.avg_pool`'s default), nor positions where `mask` (`x.shape[:-1]`) is 0.
    Windows with no real position give 0; `max_pool(mask[..., None], ...)` is their mask.
    """
    dims, strides = _windows("avg_pool", x, window, strides)
    m = _pool_mask("avg_pool", x, mask)
    total = jax.lax.reduce_window(x * m, 0.0, jax.lax.add, dims, strides, padding)
    count = jax.lax.reduce_window(m, 0.0, jax.lax.add, dims, strides, padding)
    return (total / jnp.maximum(count, 1)).astype(x.dtype)


def max_pool(x, window, strides=None, padding="VALID", mask=None):
    """Windowed max over the spatial axes (strides default to the window), over real positions
    only (`mask` `x.shape[:-1]`, 1 real); windows with no real position give 0."""
    dims, strides = _windows("max_pool", x, window, strides)
    m = _pool_mask("max_pool", x, mask)
    masked = jnp.where(m > 0, x, -jnp.inf)
    pooled = jax.lax.reduce_window(masked, -jnp.inf, jax.lax.max, dims, strides, padding)
    if mask is None:
        return pooled.astype(x.dtype)
    seen = jax.lax.reduce_window(m, 0.0, jax.lax.max, dims, strides, padding)
    return jnp.where(seen > 0, pooled, 0).astype(x.dtype)


def resize(x, size, method: str = "bilinear", antialias: bool = True):
    """Resizes the spatial axes of `[B, *spatial, C]` to `size` with `jax.image.resize`
    (half-pixel centres, as TF2 and PIL; `antialias` only matters when shrinking)."""
    size = _per_axis("resize", size, x)
    return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), method, antialias)
