"""TokenLearner v1 / v1.1 and TokenFuser (Ryoo et al., NeurIPS 2021).

A TokenLearner turns the `L` tokens of a feature map into `S` learned tokens (S = 8 or 16
where L is in the hundreds): each learned token is a weighted pooling of all input tokens,
with weights computed from the tokens themselves, so later layers cost S/L as much.
TokenFuser goes the other way, mixing the S processed tokens back out onto the L positions
so that a TokenLearner -> block -> TokenFuser unit can sit in a residual stream.

Parameter names follow the original Scenic (`token_masking` for the weighting MLP,
`fuser_mix_norm1/2`). Unlike the original v1, which reshaped `[N, L, D]` to a square and
refused anything else, every module here takes tokens on any grid.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from scenic.model_lib import layers

V1_POOLINGS = ("sum", "mean")


class TokenLearnerV11(nn.Module):
    """v1.1, the default: LayerNorm -> MLP (`bottleneck_dim` wide, GELU) -> one logit per
    learned token at each position -> softmax over positions -> weighted sum of the inputs.

    Input `[N, ..., D]` (any grid of positions, flattened); output `[N, num_tokens, D]`.
    """

    num_tokens: int
    bottleneck_dim: int = 64
    dropout_rate: float = 0.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        y = nn.LayerNorm(dtype=self.dtype)(x)
        logits = layers.MlpBlock(
            mlp_dim=self.bottleneck_dim,
            out_dim=self.num_tokens,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            name="token_masking",
        )(y, deterministic=deterministic)  # [N, L, S]
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=1).astype(x.dtype)
        return jnp.einsum("nls,nld->nsd", weights, x)


class TokenLearnerV1(nn.Module):
    """v1, the paper's module: LayerNorm -> four 3x3 convolutions without bias (GELU between
    them) with `num_tokens` channels -> sigmoid maps -> sum (or mean) of the inputs weighted
    by each map.

    Input `[N, *grid, D]` with a 2D grid `(h, w)` (3x3 kernels; any h and w) or a 3D grid
    `(t, h, w)` (3x3x3 kernels, for one TokenLearner over a whole clip); output
    `[N, num_tokens, D]`.
    """

    num_tokens: int
    pooling: str = "sum"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        del deterministic  # no dropout in v1
        if self.pooling not in V1_POOLINGS:
            raise ValueError(f"TokenLearner v1 pooling must be one of {V1_POOLINGS}, got "
                             f"{self.pooling!r}.")
        if x.ndim not in (4, 5):
            raise ValueError(
                f"TokenLearner v1 takes a token grid [N, h, w, D] or [N, t, h, w, D], got "
                f"shape {x.shape}."
            )
        kernel = (3,) * (x.ndim - 2)
        maps = nn.LayerNorm(dtype=self.dtype)(x)
        for i in range(4):
            if i:
                maps = nn.gelu(maps)
            maps = nn.Conv(
                self.num_tokens, kernel, padding="SAME", use_bias=False, dtype=self.dtype
            )(maps)
        maps = nn.sigmoid(maps.reshape(x.shape[0], -1, self.num_tokens))  # [N, L, S]
        tokens = jnp.einsum("nls,nld->nsd", maps, x.reshape(x.shape[0], -1, x.shape[-1]))
        if self.pooling == "mean":
            tokens = tokens / maps.shape[1]
        return tokens


class TokenFuser(nn.Module):
    """Mixes `[N, S, D]` learned tokens back onto the `[N, L, D]` positions they came from.

    The tokens are mixed with each other (a Dense over the token axis, zero-initialised as in
    the original, between LayerNorms when `use_normalization`), then every position takes a
    sigmoid-gated sum of them, the gates computed from its own input token by a
    `bottleneck_dim`-wide MLP. Returns `[N, L, D]`, to be added to the residual stream.
    """

    use_normalization: bool = True
    bottleneck_dim: int = 64
    dropout_rate: float = 0.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, tokens, original, deterministic: bool = True):
        num_tokens = tokens.shape[1]
        if self.use_normalization:
            tokens = nn.LayerNorm(dtype=self.dtype, name="fuser_mix_norm1")(tokens)
        tokens = nn.Dense(num_tokens, kernel_init=nn.initializers.zeros, dtype=self.dtype)(
            tokens.transpose(0, 2, 1)
        ).transpose(0, 2, 1)
        if self.use_normalization:
            tokens = nn.LayerNorm(dtype=self.dtype, name="fuser_mix_norm2")(tokens)
        gates = layers.MlpBlock(
            mlp_dim=self.bottleneck_dim,
            out_dim=num_tokens,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            name="token_masking",
        )(nn.LayerNorm(dtype=self.dtype)(original), deterministic=deterministic)
        fused = jnp.einsum("nsd,nls->nld", tokens, nn.sigmoid(gates))
        return nn.Dropout(self.dropout_rate)(fused, deterministic=deterministic)
