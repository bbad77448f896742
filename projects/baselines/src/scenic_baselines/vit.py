"""Vision Transformer (Dosovitskiy et al., 2021) with pre-LN encoder blocks.

One model in one file. Parameter names follow the published ViT checkpoints
(`embedding`, `cls`, `Transformer/posembed_input`, `encoderblock_i`, `head`), so the
ViT-B/16 config with a 1000-way head has the published 86,567,656 parameters.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from scenic.model_lib import layers
from scenic.model_lib.base_models.classification_model import (
    ClassificationModel,
    MultiLabelClassificationModel,
)


class PatchEmbedding(nn.Module):
    """Non-overlapping patches -> linear projection: a stride-`patch` convolution.

    Written as reshape + matmul, which XLA:CPU runs far faster than `nn.Conv` on small
    images; the kernel keeps the conv layout `[ph, pw, C, D]` of published checkpoints.
    """

    patch_size: tuple[int, int]
    hidden_size: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, images):
        batch, height, width, channels = images.shape
        ph, pw = self.patch_size
        if height % ph or width % pw:
            raise ValueError(
                f"Image size {(height, width)} is not divisible by patch size {(ph, pw)}."
            )
        kernel = self.param(
            "kernel",
            nn.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3),
            (ph, pw, channels, self.hidden_size),
        )
        bias = self.param("bias", nn.initializers.zeros, (self.hidden_size,))
        patches = images.reshape(batch, height // ph, ph, width // pw, pw, channels)
        dtype = self.dtype or images.dtype
        out = jnp.einsum("bhpwqc,pqcd->bhwd", patches.astype(dtype), kernel.astype(dtype))
        return out + bias.astype(dtype)


class EncoderBlock(nn.Module):
    """Pre-LN Transformer block: x + SD(MHA(LN(x))), then x + SD(MLP(LN(x)))."""

    mlp_dim: int
    num_heads: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_0")(x)
        y = layers.MultiHeadAttention(
            num_heads=self.num_heads,
            dropout_rate=self.attention_dropout_rate,
            dtype=self.dtype,
            name="MultiHeadDotProductAttention_1",
        )(y, deterministic=deterministic)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        x = x + layers.StochasticDepth(self.stochastic_depth)(y, deterministic)
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_2")(x)
        y = layers.MlpBlock(
            mlp_dim=self.mlp_dim,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            name="MlpBlock_3",
        )(y, deterministic=deterministic)
        return x + layers.StochasticDepth(self.stochastic_depth)(y, deterministic)


def rematerialised(block_cls: type[nn.Module]) -> type[nn.Module]:
    """`block_cls` whose activations are recomputed in the backward pass instead of kept.

    Trades one more forward pass of the block for activation memory that no longer grows
    with the number of layers (where the compiler exploits it: XLA:CPU was measured not to);
    parameter names are unchanged, so checkpoints load either way. The block must take
    `(x, deterministic)` positionally: `deterministic` (argument 2, after the module itself)
    is static.
    """
    return nn.remat(block_cls, static_argnums=(2,))


class Encoder(nn.Module):
    """Position embedding, dropout, `num_layers` encoder blocks and a final LayerNorm."""

    num_layers: int
    mlp_dim: int
    num_heads: int
    posemb: str
    posemb_grid: tuple[int, int]
    has_cls_token: bool
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    remat: bool = False
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.posemb == "learned":
            x = layers.AddLearnedPositionEmbedding(name="posembed_input")(x)
        elif self.posemb == "sincos2d":
            table = layers.sincos_position_embedding_2d(*self.posemb_grid, x.shape[-1])
            if self.has_cls_token:
                table = jnp.concatenate([jnp.zeros_like(table[:, :1]), table], axis=1)
            x = x + table.astype(x.dtype)
        else:
            raise ValueError(f"ViT posemb must be 'learned' or 'sincos2d', got {self.posemb!r}.")
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        block = rematerialised(EncoderBlock) if self.remat else EncoderBlock
        for i in range(self.num_layers):
            x = block(
                mlp_dim=self.mlp_dim,
                num_heads=self.num_heads,
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                stochastic_depth=self.stochastic_depth * i / max(self.num_layers - 1, 1),
                dtype=self.dtype,
                name=f"encoderblock_{i}",
            )(x, not train)
        return nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)


class MAPHead(nn.Module):
    """Multi-head attention pooling: a learned probe attends over the tokens."""

    num_heads: int
    mlp_dim: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x):
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, x.shape[-1]))
        probe = jnp.tile(probe.astype(x.dtype), (x.shape[0], 1, 1))
        x = layers.MultiHeadAttention(num_heads=self.num_heads, dtype=self.dtype)(probe, x)
        y = nn.LayerNorm(dtype=self.dtype)(x)
        x = x + layers.MlpBlock(mlp_dim=self.mlp_dim, dtype=self.dtype)(y)
        return x[:, 0]


class ViT(nn.Module):
    """Vision Transformer classifier.

    Attributes:
      num_classes: output classes (0 or None: return the pre-logits representation).
      patch_size: (height, width) of each patch.
      hidden_size, num_layers, num_heads, mlp_dim: encoder size.
      classifier: 'token' (class token), 'gap' (global average pool) or 'map'
        (multi-head attention pooling).
      posemb: 'learned' or 'sincos2d' (fixed).
      representation_size: optional pre-logits Dense + tanh layer width.
      stochastic_depth: drop-path rate of the last layer; layer i uses i/(L-1) of it.
      head_bias_init: initial value of the classifier bias (-10 for multi-label).
      remat: recompute each encoder block's activations in the backward pass (about a
        quarter more compute; parameters are the same either way). Meant to save activation
        memory on accelerators; XLA:CPU was measured to save none (tools/README.md).
    """

    num_classes: int | None
    patch_size: tuple[int, int] = (16, 16)
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    classifier: str = "token"
    posemb: str = "learned"
    representation_size: int | None = None
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    head_bias_init: float = 0.0
    remat: bool = False
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, images, *, train: bool = False):
        if self.classifier not in ("token", "gap", "map"):
            raise ValueError(
                f"ViT classifier must be 'token', 'gap' or 'map', got {self.classifier!r}."
            )
        x = PatchEmbedding(tuple(self.patch_size), self.hidden_size, self.dtype, name="embedding")(
            images
        )
        batch, grid_h, grid_w, width = x.shape
        x = x.reshape(batch, grid_h * grid_w, width)
        if self.classifier == "token":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, width)).astype(x.dtype)
            x = jnp.concatenate([jnp.tile(cls, (batch, 1, 1)), x], axis=1)
        x = Encoder(
            num_layers=self.num_layers,
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            posemb=self.posemb,
            posemb_grid=(grid_h, grid_w),
            has_cls_token=self.classifier == "token",
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            stochastic_depth=self.stochastic_depth,
            remat=self.remat,
            dtype=self.dtype,
            name="Transformer",
        )(x, train=train)
        if self.classifier == "token":
            x = x[:, 0]
        elif self.classifier == "gap":
            x = jnp.mean(x, axis=1)
        else:
            x = MAPHead(self.num_heads, self.mlp_dim, self.dtype, name="MAPHead_0")(x)
        if self.representation_size:
            x = nn.tanh(nn.Dense(self.representation_size, name="pre_logits")(x))
        if not self.num_classes:
            return x
        head = nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.constant(self.head_bias_init),
            name="head",
        )
        return head(x).astype(jnp.float32)


class ViTClassificationModel(ClassificationModel):
    """ViT with softmax cross-entropy; `config.model` holds the ViT's constructor arguments."""

    def build_flax_model(self):
        return build_vit(self.config.model, self.dataset_meta_data["num_classes"])


class ViTMultiLabelClassificationModel(MultiLabelClassificationModel):
    """ViT with sigmoid cross-entropy (multi-label)."""

    def build_flax_model(self):
        return build_vit(self.config.model, self.dataset_meta_data["num_classes"])


def build_vit(model_config: ml_collections.ConfigDict, num_classes: int) -> ViT:
    kwargs = model_config.to_dict()
    if "patch_size" in kwargs:
        kwargs["patch_size"] = tuple(kwargs["patch_size"])
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    return ViT(num_classes=num_classes, **kwargs)
