"""Multi-head dot-product attention.

Parameters are laid out as in the published ViT checkpoints (`query`, `key`, `value` with
kernels `[D, heads, head_dim]`, `out` with `[heads, head_dim, D]`), so pretrained weights
map one to one. The attention itself goes through `jax.nn.dot_product_attention`, which
picks a fused kernel where the backend has one.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


class MultiHeadAttention(nn.Module):
    """Multi-head attention from `inputs_q` to `inputs_kv` (self-attention if omitted).

    Attributes:
      num_heads: number of heads; the feature size must divide by it.
      qkv_features: total width of queries/keys/values (default: input width).
      out_features: output width (default: input width).
      dropout_rate: dropout on the attention weights (disables the fused path).
      mask: optional boolean `[B, 1 or heads, Lq, Lkv]`, True where attention is allowed.
    """

    num_heads: int
    qkv_features: int | None = None
    out_features: int | None = None
    dropout_rate: float = 0.0
    kernel_init: Callable = nn.initializers.xavier_uniform()
    bias_init: Callable = nn.initializers.zeros
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, inputs_q, inputs_kv=None, mask=None, deterministic: bool = True):
        inputs_kv = inputs_q if inputs_kv is None else inputs_kv
        features = self.qkv_features or inputs_q.shape[-1]
        if features % self.num_heads:
            raise ValueError(
                f"Attention width {features} is not divisible by num_heads={self.num_heads}."
            )
        head_dim = features // self.num_heads
        dense = lambda name: nn.DenseGeneral(
            (self.num_heads, head_dim),
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            dtype=self.dtype,
            name=name,
        )
        query, key, value = dense("query")(inputs_q), dense("key")(inputs_kv), dense("value")(
            inputs_kv
        )
        if self.dropout_rate > 0.0 and not deterministic:
            scale = 1.0 / jnp.sqrt(head_dim).astype(query.dtype)
            logits = jnp.einsum("...qhd,...khd->...hqk", query * scale, key)
            if mask is not None:
                logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
            weights = jax.nn.softmax(logits, axis=-1)
            weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
            attended = jnp.einsum("...hqk,...khd->...qhd", weights, value)
        else:
            attended = jax.nn.dot_product_attention(query, key, value, mask=mask)
        return nn.DenseGeneral(
            self.out_features or inputs_q.shape[-1],
            axis=(-2, -1),
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            dtype=self.dtype,
            name="out",
        )(attended)
