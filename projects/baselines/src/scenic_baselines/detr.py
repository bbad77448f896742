"""DETR (Carion et al., "End-to-End Object Detection with Transformers", ECCV 2020).

A ResNet backbone (its last stage, stride 32), a 1x1 input projection, fixed sine position
embeddings, a post-norm transformer encoder over the feature map and a decoder of
`num_queries` learned object queries, then per query a class (with a trailing no-object
class) and a box (cxcywh in [0, 1] of the padded input canvas). The outputs are the dict
the core `DetectionModel` criterion reads (`pred_logits`, `pred_boxes`, and `aux_outputs`,
one dict per earlier decoder layer, each normalised by the shared decoder LayerNorm as in
DETR); the loss, matching and evaluation are the core's, never copied here.

Inputs: images `[B, H, W, 3]`, or a dict `{'image': ..., 'padding_mask': [B, H, W]}` (1 on
real pixels, 0 on canvas padding: masked out of attention and of the position embeddings).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scenic.model_lib import layers
from scenic.model_lib.base_models.detection_model import DetectionModel
from scenic.train_lib import steps
from scenic_baselines import resnet


def split_inputs(inputs):
    """(images [B, H, W, C], padding mask [B, H, W] bool) from an array or a dict."""
    if isinstance(inputs, dict):
        images = inputs["image"]
        mask = inputs.get("padding_mask")
    else:
        images, mask = inputs, None
    if mask is None:
        mask = jnp.ones(images.shape[:3], bool)
    return images, jnp.asarray(mask) > 0


def downsample_mask(mask, height: int, width: int):
    """Nearest-neighbour resize of a [B, H, W] mask to [B, height, width] (source index
    floor(i * H / height), as torch's `interpolate(mode='nearest')`, which DETR uses)."""
    rows = (np.arange(height) * mask.shape[1]) // height
    cols = (np.arange(width) * mask.shape[2]) // width
    return mask[:, rows][:, :, cols]


def sine_position_embedding(mask, num_features: int, temperature: float = 10000.0):
    """DETR's normalised 2D sine embedding of the real pixels: [B, h, w] bool ->
    [B, h, w, 2 * num_features] (y features first, then x). Positions are the cumulative
    count of real pixels along each axis, scaled to (0, 2 pi]."""
    mask = mask.astype(jnp.float32)
    y_embed, x_embed = jnp.cumsum(mask, axis=1), jnp.cumsum(mask, axis=2)
    eps, scale = 1e-6, 2 * math.pi
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = temperature ** (2 * (np.arange(num_features) // 2) / num_features)

    def interleave(embed):
        pos = embed[..., None] / jnp.asarray(dim_t, jnp.float32)
        stacked = jnp.stack([jnp.sin(pos[..., 0::2]), jnp.cos(pos[..., 1::2])], axis=-1)
        return stacked.reshape(*pos.shape[:-1], num_features)

    return jnp.concatenate([interleave(y_embed), interleave(x_embed)], axis=-1)


class FeedForward(nn.Module):
    """Dense -> ReLU -> dropout -> Dense (DETR's FFN)."""

    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, deterministic: bool):
        y = nn.relu(nn.Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(x))
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="fc2")(y)


class EncoderLayer(nn.Module):
    """Post-norm: x = LN(x + Attn(x + pos, x + pos, x)); x = LN(x + FFN(x))."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, pos, key_mask, deterministic: bool):
        drop = nn.Dropout(self.dropout_rate)
        y = layers.MultiHeadAttention(self.num_heads, dtype=self.dtype, name="self_attn")(
            x, mask=key_mask, pos_emb_q=pos, pos_emb_k=pos
        )
        x = nn.LayerNorm(dtype=self.dtype, name="self_attn_norm")(x + drop(y, deterministic))
        y = FeedForward(self.mlp_dim, self.dropout_rate, self.dtype, name="mlp")(x, deterministic)
        return nn.LayerNorm(dtype=self.dtype, name="mlp_norm")(x + drop(y, deterministic))


class DecoderLayer(nn.Module):
    """Post-norm: self-attention among the queries (query positions on q and k), cross-
    attention to the encoder memory (query positions on q, pixel positions on k), FFN."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, query_pos, memory, pos, key_mask, deterministic: bool):
        drop = nn.Dropout(self.dropout_rate)
        y = layers.MultiHeadAttention(self.num_heads, dtype=self.dtype, name="self_attn")(
            x, pos_emb_q=query_pos, pos_emb_k=query_pos
        )
        x = nn.LayerNorm(dtype=self.dtype, name="self_attn_norm")(x + drop(y, deterministic))
        y = layers.MultiHeadAttention(self.num_heads, dtype=self.dtype, name="cross_attn")(
            x, memory, mask=key_mask, pos_emb_q=query_pos, pos_emb_k=pos
        )
        x = nn.LayerNorm(dtype=self.dtype, name="cross_attn_norm")(x + drop(y, deterministic))
        y = FeedForward(self.mlp_dim, self.dropout_rate, self.dtype, name="mlp")(x, deterministic)
        return nn.LayerNorm(dtype=self.dtype, name="mlp_norm")(x + drop(y, deterministic))


class DETR(nn.Module):
    """DETR detector.

    Attributes:
      num_classes: object classes; the class head has one more (the last: no object).
      backbone_num_layers, backbone_num_filters: the ResNet (`scenic_baselines.resnet`).
      backbone_frozen_batch_norm: normalise with the running statistics only, as DETR's
        FrozenBatchNorm2d on a pretrained backbone; False trains batch norm (synchronised
        over `bn_axis_name`), for a backbone trained from scratch.
      backbone_stage: which ResNet stage feeds the transformer (4: stride 32, as DETR;
        smaller for small images).
      hidden_size, num_heads, mlp_dim: transformer width, heads and FFN width.
      num_encoder_layers, num_decoder_layers, num_queries: as in the paper (6, 6, 100).
      dropout_rate: transformer dropout (0.1 in DETR).
      aux_loss: also return the earlier decoder layers' predictions (`aux_outputs`).
    """

    num_classes: int
    backbone_num_layers: int = 50
    backbone_num_filters: int = 64
    backbone_frozen_batch_norm: bool = True
    backbone_stage: int = 4
    hidden_size: int = 256
    num_heads: int = 8
    mlp_dim: int = 2048
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    num_queries: int = 100
    dropout_rate: float = 0.1
    aux_loss: bool = True
    bn_axis_name: str | None = None
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, inputs, *, train: bool = False):
        images, mask = split_inputs(inputs)
        deterministic = not train
        features = resnet.ResNet(
            num_classes=None,
            num_layers=self.backbone_num_layers,
            num_filters=self.backbone_num_filters,
            return_features=True,
            freeze_batch_norm=self.backbone_frozen_batch_norm,
            bn_axis_name=self.bn_axis_name,
            dtype=self.dtype,
            name="backbone",
        )(images, train=train)[f"stage_{self.backbone_stage}"]
        batch, height, width, _ = features.shape
        x = nn.Dense(self.hidden_size, dtype=self.dtype, name="input_proj")(features)
        mask = downsample_mask(mask, height, width)
        pos = sine_position_embedding(mask, self.hidden_size // 2).astype(x.dtype)
        x, pos = x.reshape(batch, -1, self.hidden_size), pos.reshape(batch, -1, self.hidden_size)
        key_mask = mask.reshape(batch, 1, 1, -1)

        for i in range(self.num_encoder_layers):
            x = EncoderLayer(
                self.num_heads,
                self.mlp_dim,
                self.dropout_rate,
                self.dtype,
                name=f"encoder_layer_{i}",
            )(x, pos, key_mask, deterministic)

        query_pos = self.param(
            "query_pos", nn.initializers.normal(1.0), (self.num_queries, self.hidden_size)
        )
        query_pos = jnp.broadcast_to(query_pos.astype(x.dtype), (batch, *query_pos.shape))
        queries = jnp.zeros_like(query_pos)
        decoder_norm = nn.LayerNorm(dtype=self.dtype, name="decoder_norm")
        class_head = nn.Dense(self.num_classes + 1, dtype=self.dtype, name="class_head")
        box_head = BoxHead(self.hidden_size, dtype=self.dtype, name="box_head")

        def predict(hidden):
            hidden = decoder_norm(hidden)
            return {
                "pred_logits": class_head(hidden).astype(jnp.float32),
                "pred_boxes": jax.nn.sigmoid(box_head(hidden).astype(jnp.float32)),
            }

        aux_outputs = []
        for i in range(self.num_decoder_layers):
            queries = DecoderLayer(
                self.num_heads,
                self.mlp_dim,
                self.dropout_rate,
                self.dtype,
                name=f"decoder_layer_{i}",
            )(queries, query_pos, x, pos, key_mask, deterministic)
            if self.aux_loss and i < self.num_decoder_layers - 1:
                aux_outputs.append(predict(queries))
        outputs = predict(queries)
        if self.aux_loss:
            outputs["aux_outputs"] = aux_outputs
        return outputs


class BoxHead(nn.Module):
    """Three Dense layers (ReLU between) -> 4 box logits (sigmoid outside)."""

    hidden_size: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.hidden_size, dtype=self.dtype, name="Dense_0")(x))
        x = nn.relu(nn.Dense(self.hidden_size, dtype=self.dtype, name="Dense_1")(x))
        return nn.Dense(4, dtype=self.dtype, name="Dense_2")(x)


class DETRDetectionModel(DetectionModel):
    """DETR through the core set-prediction criterion; `config.model` holds `DETR`'s
    constructor arguments (the class count comes from the data set). Batch norm, when
    trained, is synchronised over the trainer's device axis."""

    def build_flax_model(self):
        return build_detr(self.config.model, self.dataset_meta_data["num_classes"])

    @classmethod
    def model_config_keys(cls) -> tuple[str, ...]:
        excluded = ("num_classes", "parent", "name", "bn_axis_name")
        return tuple(f.name for f in dataclasses.fields(DETR) if f.name not in excluded)


def build_detr(model_config: ml_collections.ConfigDict, num_classes: int) -> DETR:
    kwargs = model_config.to_dict()
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    return DETR(num_classes=num_classes, bn_axis_name=steps.AXIS, **kwargs)
