"""Multi-head dot-product attention, relative position bias and axial attention.

Parameters are laid out as in the published ViT checkpoints (`query`, `key`, `value` with
kernels `[D, heads, head_dim]`, `out` with `[heads, head_dim, D]`), so pretrained weights
map one to one. The attention itself goes through `jax.nn.dot_product_attention`, which
picks a fused kernel where the backend has one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _check_broadcastable(name: str, shape: tuple, target: tuple) -> None:
    # Dimensions may be symbolic (a `jax.export` dynamic batch), so no np.broadcast_shapes;
    # callers pass np.shape(x), a tuple even where a converter (jax2onnx) patches jnp.shape.
    ok = len(shape) <= len(target) and all(
        s == 1 or s == t for s, t in zip(reversed(shape), reversed(target))
    )
    if not ok:
        raise ValueError(
            f"MultiHeadAttention: {name} of shape {shape} does not broadcast to "
            f"[*batch, heads, len_q, len_kv] = {target}."
        )


def _merge_batch_dims(x, batch_shape: tuple):
    """Brings a mask/bias broadcastable to `[*batch, h, q, k]` to the 4D `[B', h, q, k]` that
    `jax.nn.dot_product_attention` takes, materialising the batch only where it varies."""
    x = jnp.reshape(x, (1,) * (len(batch_shape) + 3 - x.ndim) + x.shape)
    if all(d == 1 for d in x.shape[:-3]):
        return x.reshape((1, *x.shape[-3:]))
    return jnp.broadcast_to(x, batch_shape + x.shape[-3:]).reshape((-1, *x.shape[-3:]))


def einsum_attention(query, key, value, bias=None, mask=None, *, dropout=None):
    """softmax(q k^T / sqrt(head_dim) + bias, masked) v, written out on `[..., length,
    heads, head_dim]` inputs: what `jax.nn.dot_product_attention` computes, with every
    intermediate materialised and, if given, `dropout` applied to the attention weights
    (which the fused call cannot do)."""
    scale = 1.0 / jnp.sqrt(query.shape[-1]).astype(query.dtype)
    logits = jnp.einsum("...qhd,...khd->...hqk", query * scale, key)
    if bias is not None:
        logits = logits + bias.astype(logits.dtype)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1)
    if dropout is not None:
        weights = dropout(weights)
    return jnp.einsum("...hqk,...khd->...qhd", weights, value)


class MultiHeadAttention(nn.Module):
    """Multi-head attention from `inputs_q` to `inputs_kv` (self-attention if omitted).

    Inputs are `[*batch, length, features]` with any number of batch dimensions.

    Attributes:
      num_heads: number of heads; the feature size must divide by it.
      qkv_features: total width of queries/keys/values (default: input width).
      out_features: output width (default: input width).
      dropout_rate: dropout on the attention weights (disables the fused path).
    """

    num_heads: int
    qkv_features: int | None = None
    out_features: int | None = None
    dropout_rate: float = 0.0
    kernel_init: Callable = nn.initializers.xavier_uniform()
    bias_init: Callable = nn.initializers.zeros
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(
        self,
        inputs_q,
        inputs_kv=None,
        mask=None,
        deterministic: bool = True,
        *,
        pos_emb_q=None,
        pos_emb_k=None,
        pos_emb_v=None,
        attention_bias=None,
    ):
        """Attends from `inputs_q` to `inputs_kv`.

        Args:
          mask: optional boolean, broadcastable to `[*batch, heads, len_q, len_kv]`, True where
            attention is allowed. A query with no allowed key attends uniformly to all keys
            (finite, but meaningless: mask such rows downstream).
          pos_emb_q, pos_emb_k, pos_emb_v: optional position embeddings added to the inputs of
            the query / key / value projections only (DETR passes q and k, not v).
          attention_bias: optional float added to the logits, broadcastable to
            `[*batch, heads, len_q, len_kv]` (e.g. `RelativeAttentionBias()` `[heads, q, k]`).
        """
        inputs_kv = inputs_q if inputs_kv is None else inputs_kv
        features = self.qkv_features or inputs_q.shape[-1]
        if features % self.num_heads:
            raise ValueError(
                f"Attention width {features} is not divisible by num_heads={self.num_heads}."
            )
        head_dim = features // self.num_heads

        def dense(name):
            return nn.DenseGeneral(
                (self.num_heads, head_dim),
                kernel_init=self.kernel_init,
                bias_init=self.bias_init,
                dtype=self.dtype,
                name=name,
            )

        def add(x, pos):
            return x if pos is None else x + pos

        query = dense("query")(add(inputs_q, pos_emb_q))
        key = dense("key")(add(inputs_kv, pos_emb_k))
        value = dense("value")(add(inputs_kv, pos_emb_v))

        batch_shape = query.shape[:-3]
        if key.shape[:-3] != batch_shape:
            raise ValueError(
                f"MultiHeadAttention: batch dimensions of inputs_q {inputs_q.shape} and "
                f"inputs_kv {inputs_kv.shape} differ."
            )
        logits_shape = (*batch_shape, self.num_heads, query.shape[-3], key.shape[-3])
        if mask is not None:
            _check_broadcastable("mask", np.shape(mask), logits_shape)
            mask = _merge_batch_dims(jnp.asarray(mask, bool), batch_shape)
        if attention_bias is not None:
            _check_broadcastable("attention_bias", np.shape(attention_bias), logits_shape)
            attention_bias = _merge_batch_dims(jnp.asarray(attention_bias), batch_shape)
        query, key, value = (t.reshape((-1, *t.shape[-3:])) for t in (query, key, value))

        if self.dropout_rate > 0.0 and not deterministic:
            attended = einsum_attention(
                query,
                key,
                value,
                attention_bias,
                mask,
                dropout=lambda w: nn.Dropout(self.dropout_rate)(w, deterministic=False),
            )
        else:
            if attention_bias is not None:
                attention_bias = attention_bias.astype(query.dtype)
            attended = jax.nn.dot_product_attention(
                query, key, value, bias=attention_bias, mask=mask
            )
        attended = attended.reshape(batch_shape + attended.shape[1:])
        return nn.DenseGeneral(
            self.out_features or inputs_q.shape[-1],
            axis=(-2, -1),
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            dtype=self.dtype,
            name="out",
        )(attended)


def relative_position_index(grid_shape: Sequence[int]) -> np.ndarray:
    """Index `[N, N]` (N = prod(grid_shape)) into a table of every relative offset on a grid.

    Tokens are row-major over the grid. Entry (i, j) encodes the offset `coords(i) - coords(j)`
    (query minus key, as in Swin) in mixed radix with digits in `[0, 2 * size - 1)`, so the
    table has `prod(2 * size - 1)` rows. A 1-element shape gives the 1D (T5-style, unbucketed)
    index `i - j + L - 1`.
    """
    grid_shape = tuple(int(s) for s in grid_shape)
    if not grid_shape or any(s < 1 for s in grid_shape):
        raise ValueError(f"grid_shape must be non-empty positive sizes, got {grid_shape}.")
    axes = np.meshgrid(*[np.arange(s) for s in grid_shape], indexing="ij")
    coords = np.stack(axes, -1).reshape(-1, len(grid_shape))
    offsets = coords[:, None, :] - coords[None, :, :] + np.asarray(grid_shape) - 1
    index = np.zeros(offsets.shape[:2], np.int64)
    for dim, size in enumerate(grid_shape):
        index = index * (2 * size - 1) + offsets[..., dim]
    return index.astype(np.int32)


class RelativeAttentionBias(nn.Module):
    """Learned bias `[heads, N, N]` for attention among the N tokens of a grid, one value per
    (relative offset, head), as in Swin (2D) or T5 without buckets (1D).

    The table parameter is named as in Swin checkpoints: `relative_position_bias_table`
    `[prod(2 * size - 1), heads]`. Pass the output as `attention_bias` to MultiHeadAttention.
    """

    num_heads: int
    grid_shape: tuple[int, ...]
    embedding_init: Callable = nn.initializers.truncated_normal(stddev=0.02)

    @nn.compact
    def __call__(self):
        index = relative_position_index(self.grid_shape)
        num_offsets = math.prod(2 * s - 1 for s in self.grid_shape)
        table = self.param(
            "relative_position_bias_table", self.embedding_init, (num_offsets, self.num_heads)
        )
        return jnp.transpose(table[index], (2, 0, 1))


class AxialAttention(nn.Module):
    """Self-attention along one axis of `[B, ..., C]` inputs; every other axis acts as batch
    (Ho et al., 2019). Stack two with `axis=1` and `axis=2` for rows then columns.

    Parameters live in a child MultiHeadAttention named `attention`.
    """

    num_heads: int
    axis: int
    qkv_features: int | None = None
    out_features: int | None = None
    dropout_rate: float = 0.0
    kernel_init: Callable = nn.initializers.xavier_uniform()
    bias_init: Callable = nn.initializers.zeros
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, inputs, mask=None, deterministic: bool = True, *, attention_bias=None):
        """Args:
        mask: optional `[B, ...]` (inputs without channels), True at real positions: padded
          positions are not attended to.
        attention_bias: optional, broadcastable to `[heads, L, L]` over the attended axis.
        """
        axis = self.axis % inputs.ndim if -inputs.ndim <= self.axis < inputs.ndim else None
        if inputs.ndim < 3 or axis is None or not 1 <= axis <= inputs.ndim - 2:
            raise ValueError(
                f"AxialAttention: axis={self.axis} must name a non-batch, non-channel axis of "
                f"inputs with shape {inputs.shape}."
            )
        x = jnp.moveaxis(inputs, axis, -2)
        key_mask = None
        if mask is not None:
            if np.shape(mask) != inputs.shape[:-1]:
                raise ValueError(
                    f"AxialAttention: mask shape {np.shape(mask)} must equal the inputs' shape "
                    f"without channels, {inputs.shape[:-1]}."
                )
            key_mask = jnp.moveaxis(jnp.asarray(mask, bool), axis, -1)[..., None, None, :]
        y = MultiHeadAttention(
            num_heads=self.num_heads,
            qkv_features=self.qkv_features,
            out_features=self.out_features,
            dropout_rate=self.dropout_rate,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
            dtype=self.dtype,
            name="attention",
        )(x, mask=key_mask, deterministic=deterministic, attention_bias=attention_bias)
        return jnp.moveaxis(y, -2, axis)
