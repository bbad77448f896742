"""MLP block, position embeddings and stochastic depth."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


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


class AddLearnedPositionEmbedding(nn.Module):
    """Adds a learned position embedding `[1, L, D]` to `[B, L, D]` inputs."""

    posemb_init: Callable = nn.initializers.normal(stddev=0.02)

    @nn.compact
    def __call__(self, inputs):
        if inputs.ndim != 3:
            raise ValueError(f"Expected [batch, length, features] inputs, got {inputs.shape}.")
        embedding = self.param("pos_embedding", self.posemb_init, (1, *inputs.shape[1:]))
        return inputs + embedding.astype(inputs.dtype)


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
