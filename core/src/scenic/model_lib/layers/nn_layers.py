"""MLP block, position embeddings, stochastic depth, residual wrappers and small layers
(squeeze-and-excite, affine, identity)."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scenic.model_lib.layers.masked_layers import masked_avg_pool


class MlpBlock(nn.Module):
    """Dense -> activation -> dropout -> Dense -> dropout (the Transformer MLP)."""

    mlp_dim: int
    out_dim: int | None = None
    dropout_rate: float = 0.0
    activation: Callable = nn.gelu
    kernel_init: Callable = nn.initializers.xavier_uniform()
    bias_init: Callable = nn.initializers.normal(stddev=1e-6)
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, inputs, deterministic: bool = True):
        out_dim = self.out_dim or inputs.shape[-1]
        x = nn.Dense(
            self.mlp_dim, kernel_init=self.kernel_init, bias_init=self.bias_init, dtype=self.dtype
        )(inputs)
        x = self.activation(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        x = nn.Dense(
            out_dim, kernel_init=self.kernel_init, bias_init=self.bias_init, dtype=self.dtype
        )(x)
        return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)


class StochasticDepth(nn.Module):
    """Drops the whole residual branch per example with probability `rate` (Huang et al., 2016).

    Kept examples are scaled by 1 / (1 - rate) so the expectation is unchanged.
    Uses the 'dropout' RNG stream.
    """

    rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        if deterministic or self.rate <= 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


def quick_gelu(x):
    """`x * sigmoid(1.702 x)`: the GELU approximation OpenAI's CLIP was trained with (its
    weights need it; the tanh or erf GELU gives other outputs)."""
    return x * jax.nn.sigmoid(1.702 * x)


class AddLearnedPositionEmbedding(nn.Module):
    """Adds a learned position embedding `[1, L, D]` to `[B, L, D]` inputs.

    With `num_positions` the table is `[1, num_positions, D]` and inputs of any length up to
    it get its first L rows: a text model's context (CLIP's 77 positions) also serves
    shorter token sequences. Without it the table has the inputs' length.
    """

    posemb_init: Callable = nn.initializers.normal(stddev=0.02)
    num_positions: int | None = None

    @nn.compact
    def __call__(self, inputs):
        if inputs.ndim != 3:
            raise ValueError(f"Expected [batch, length, features] inputs, got {inputs.shape}.")
        length = inputs.shape[1]
        if self.num_positions is not None and length > self.num_positions:
            raise ValueError(
                f"Inputs of length {length} exceed the {self.num_positions} learned positions."
            )
        rows = length if self.num_positions is None else self.num_positions
        embedding = self.param("pos_embedding", self.posemb_init, (1, rows, inputs.shape[2]))
        return inputs + embedding[:, :length].astype(inputs.dtype)


def sincos_position_embedding_1d(length: int, dim: int, max_period: float = 10_000.0):
    """Fixed sin-cos embedding `[1, length, dim]` (Vaswani et al., 2017): sines then cosines."""
    if dim % 2:
        raise ValueError(f"Sin-cos embedding width must be even, got {dim}.")
    position = np.arange(length, dtype=np.float64)[:, None]
    omega = 1.0 / max_period ** (np.arange(dim // 2, dtype=np.float64) / (dim // 2))
    angles = position * omega[None, :]
    embedding = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    return jnp.asarray(embedding[None], jnp.float32)


def sincos_position_embedding_2d(height: int, width: int, dim: int, max_period: float = 10_000.0):
    """Fixed 2D sin-cos embedding `[1, height*width, dim]`, laid out as big_vision's
    `posemb_sincos_2d` (so models trained there get the same table here).

    A quarter of the channels each: sin(x), cos(x), sin(y), cos(y), with frequencies
    max_period ** -(i / (dim/4 - 1)); tokens are row-major over the (height, width) grid.
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding width must be divisible by 4, got {dim}.")
    quarter = dim // 4
    y, x = np.mgrid[:height, :width].astype(np.float64)
    omega = 1.0 / max_period ** (np.arange(quarter, dtype=np.float64) / max(quarter - 1, 1))
    y_angles = y.reshape(-1)[:, None] * omega[None]
    x_angles = x.reshape(-1)[:, None] * omega[None]
    embedding = np.concatenate(
        [np.sin(x_angles), np.cos(x_angles), np.sin(y_angles), np.cos(y_angles)], axis=1
    )
    return jnp.asarray(embedding[None], jnp.float32)


class Identity(nn.Module):
    """Returns its input. Give it a name to tag a tensor for `capture_intermediates`."""

    @nn.compact
    def __call__(self, x):
        return x


class Affine(nn.Module):
    """Learned per-channel `x * scale + bias` (ResMLP's Affine; LayerScale with no bias)."""

    use_bias: bool = True
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        x = x * self.param("scale", self.scale_init, (x.shape[-1],)).astype(x.dtype)
        if self.use_bias:
            x = x + self.param("bias", self.bias_init, (x.shape[-1],)).astype(x.dtype)
        return x


class SqueezeAndExcite(nn.Module):
    """Channel gating from globally pooled features (Hu et al., 2018):
    `x * gate(Dense(act(Dense(mean(x)))))`, pooling over every axis between batch and channels.

    With a `mask` (`x.shape[:-1]`, 1 at real positions) the pooling ignores padding.
    """

    reduction: int = 4
    activation: Callable = nn.relu
    gate: Callable = nn.sigmoid
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, mask=None):
        if x.ndim < 3:
            raise ValueError(f"SqueezeAndExcite expects [batch, ..., channels], got {x.shape}.")
        channels = x.shape[-1]
        pooled = x.mean(tuple(range(1, x.ndim - 1))) if mask is None else masked_avg_pool(x, mask)
        hidden = nn.Dense(max(1, channels // self.reduction), dtype=self.dtype, name="reduce")
        gates = self.gate(
            nn.Dense(channels, dtype=self.dtype, name="expand")(self.activation(hidden(pooled)))
        )
        return x * gates.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (channels,)).astype(x.dtype)


class Residual(nn.Module):
    """`x + branch(x)` with LayerNorm where the architecture wants it.

    norm: 'pre' gives `x + drop(layer(LN(x)))` (ViT, pre-LN Transformer); 'post' gives
    `LN(x + drop(layer(x)))` (original Transformer, BERT); None gives `x + drop(layer(x))`.
    `drop` is dropout then stochastic depth. The branch is called as
    `layer(h, *args, **kwargs)`, plus `deterministic=` when `forward_deterministic`.
    """

    layer: nn.Module
    norm: str | None = "pre"
    dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    forward_deterministic: bool = True
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x, *args, deterministic: bool = True, **kwargs):
        if self.norm not in ("pre", "post", None):
            raise ValueError(f"Residual: norm must be 'pre', 'post' or None, got {self.norm!r}.")
        if self.forward_deterministic:
            kwargs["deterministic"] = deterministic
        h = nn.LayerNorm(epsilon=self.epsilon, name="norm")(x) if self.norm == "pre" else x
        y = self.layer(h, *args, **kwargs)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        y = x + StochasticDepth(self.stochastic_depth)(y, deterministic=deterministic)
        return nn.LayerNorm(epsilon=self.epsilon, name="norm")(y) if self.norm == "post" else y
