"""Padding-aware layers: pooling, normalisation and convolution that ignore padded positions.

Masks follow the batch convention: shape `x.shape[:-1]` (no channel axis), 1/True at real
positions and 0/False at padding. Statistics divide by the number of real positions and are
finite (zero) where there is none, so fully padded examples (padded eval batches) give zeros,
never NaNs, in the forward and the backward pass. Parameter names match the unmasked Flax
layers, so their weights load unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def _channel_mask(x, mask, where: str):
    """Validated boolean mask `[..., 1]` for `x`, or all-True when `mask` is None."""
    if mask is None:
        return jnp.ones((*x.shape[:-1], 1), bool)
    if jnp.shape(mask) != x.shape[:-1]:
        raise ValueError(
            f"{where}: mask shape {jnp.shape(mask)} must equal the input shape without "
            f"channels, {x.shape[:-1]}."
        )
    return (jnp.asarray(mask) > 0)[..., None]


def _default_axes(x, axis):
    axis = tuple(range(1, x.ndim - 1)) if axis is None else axis
    return (axis,) if isinstance(axis, int) else tuple(axis)


def masked_mean_and_variance(x, mask, axis, axis_name: str | None = None):
    """Mean and biased variance of `x` over `axis`, counting only positions where the boolean
    `mask` (broadcastable to `x`) is True; both are 0 where nothing is counted. Two-pass (no
    E[x^2] - E[x]^2 cancellation); `axis_name` also sums over that mapped axis (pmap/vmap)."""
    mask = jnp.broadcast_to(mask, x.shape)

    def total(v):
        v = jnp.sum(v, axis, keepdims=True)
        return v if axis_name is None else jax.lax.psum(v, axis_name)

    count = total(mask.astype(x.dtype))
    safe_count = jnp.maximum(count, 1)
    mean = total(jnp.where(mask, x, 0)) / safe_count
    variance = total(jnp.where(mask, jnp.square(x - mean), 0)) / safe_count
    return mean, variance, count


def masked_avg_pool(x, mask, axis=None):
    """Mean of `[B, ..., C]` over `axis` (default: every axis between batch and channels)
    over real positions only; 0 where a pooled region has no real position."""
    axis = _default_axes(x, axis)
    m = _channel_mask(x, mask, "masked_avg_pool")
    total = jnp.sum(jnp.where(m, x, 0), axis)
    count = jnp.sum(m, axis).astype(x.dtype)
    return total / jnp.maximum(count, 1)


def masked_max_pool(x, mask, axis=None):
    """Max of `[B, ..., C]` over `axis` (default: every axis between batch and channels) over
    real positions only; 0 where a pooled region has no real position."""
    axis = _default_axes(x, axis)
    m = _channel_mask(x, mask, "masked_max_pool")
    pooled = jnp.max(jnp.where(m, x, -jnp.inf), axis)
    return jnp.where(jnp.any(m, axis), pooled, 0).astype(x.dtype)


class MaskedLayerNorm(nn.Module):
    """LayerNorm whose statistics skip padding; padded positions come out as zeros.

    With the default `reduction_axes=-1` every real token gets exactly `nn.LayerNorm`'s output.
    Reducing over spatial axes too (e.g. `(1, 2, 3)` for `[B, H, W, C]`) normalises each
    example over its real positions only. Scale and bias are per channel.
    """

    epsilon: float = 1e-6
    reduction_axes: int | tuple[int, ...] = -1
    use_bias: bool = True
    use_scale: bool = True
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, mask=None):
        m = _channel_mask(x, mask, "MaskedLayerNorm")
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        mean, variance, _ = masked_mean_and_variance(x32, m, self.reduction_axes)
        y = (x32 - mean) * jax.lax.rsqrt(variance + self.epsilon)
        y = _scale_and_shift(self, y)
        return jnp.where(m, y, 0).astype(self.dtype or x.dtype)


class MaskedBatchNorm(nn.Module):
    """BatchNorm whose batch statistics count only real positions; padded positions come out
    as zeros. Variables match `nn.BatchNorm` (`scale`, `bias`; `batch_stats` `mean`, `var`);
    running statistics are not updated by a batch with no real position, nor at init.
    `axis_name` computes the statistics across devices (pmap) as well.
    """

    use_running_average: bool | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    axis_name: str | None = None
    use_bias: bool = True
    use_scale: bool = True
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, mask=None, use_running_average: bool | None = None):
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        m = _channel_mask(x, mask, "MaskedBatchNorm")
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
        if use_running_average:
            mean, variance = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            initializing = self.is_initializing()
            axis_name = None if initializing else self.axis_name
            mean, variance, count = masked_mean_and_variance(x32, m, axes, axis_name)
            mean, variance, count = (v.reshape(features) for v in (mean, variance, count))
            if not initializing:
                seen = count > 0
                new_mean = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                new_var = self.momentum * ra_var.value + (1 - self.momentum) * variance
                ra_mean.value = jnp.where(seen, new_mean, ra_mean.value)
                ra_var.value = jnp.where(seen, new_var, ra_var.value)
        y = (x32 - mean) * jax.lax.rsqrt(variance + self.epsilon)
        y = _scale_and_shift(self, y)
        return jnp.where(m, y, 0).astype(self.dtype or x.dtype)


def _scale_and_shift(module, y):
    features = (y.shape[-1],)
    if module.use_scale:
        y = y * module.param("scale", module.scale_init, features)
    if module.use_bias:
        y = y + module.param("bias", module.bias_init, features)
    return y


class MaskedConv(nn.Conv):
    """`nn.Conv` (same attributes and parameters) that zeroes padded inputs before the
    convolution and padded outputs after it, so padding never leaks into real positions.

    Takes `(inputs, mask)` and returns `(outputs, output_mask)`. Only 'SAME' padding with
    no input dilation: output position i then sits over input position i * stride, and is
    real iff that input position is.
    """

    def __call__(self, inputs, mask):
        if self.padding != "SAME" or self.input_dilation not in (None, 1):
            raise ValueError(
                "MaskedConv supports only padding='SAME' without input dilation, got "
                f"padding={self.padding!r}, input_dilation={self.input_dilation!r}."
            )
        m = _channel_mask(inputs, mask, "MaskedConv")
        outputs = super().__call__(jnp.where(m, inputs, 0))
        strides = self.strides or 1
        strides = (strides,) * (inputs.ndim - 2) if isinstance(strides, int) else strides
        out_mask = m[(slice(None), *tuple(slice(None, None, s) for s in strides))]
        return jnp.where(out_mask, outputs, 0), out_mask[..., 0]
