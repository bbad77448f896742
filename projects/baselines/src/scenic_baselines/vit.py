"""Vision Transformer (Dosovitskiy et al., 2021) with pre-LN encoder blocks.

The classifier and its base models; the encoder itself (patch embedding, blocks, pooling)
is the core's `scenic.model_lib.vit_encoder`, shared with ViViT. Parameter names follow the
published ViT checkpoints (`embedding`, `cls`, `Transformer/posembed_input`,
`encoderblock_i`, `head`), so the ViT-B/16 config with a 1000-way head has the published
86,567,656 parameters.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from scenic.model_lib import vit_encoder
from scenic.model_lib.base_models.classification_model import (
    ClassificationModel,
    MultiLabelClassificationModel,
)


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
      exact_gelu, layer_norm_epsilon: the exact (erf) GELU and the encoder's LayerNorm
        epsilon. The defaults (tanh GELU, 1e-6) are the JAX originals' (vit_jax, big_vision,
        Scenic); timm ViTs need `exact_gelu=True`, Hugging Face ViTs also their epsilon
        (1e-12) for the same logits (`vit_weights`).
      remat: recompute each encoder block's activations in the backward pass (True or
        'full'; 'dots' keeps the matmul results): about a quarter more compute, parameters
        the same either way. Meant to save activation memory on accelerators; XLA:CPU was
        measured to save none (tools/README.md).
      scan_layers: the encoder blocks as one `nn.scan` (compiled once whatever the depth;
        parameters stacked under `Transformer/encoderblock`, converted to and from the
        per-layer names by `init_from`). Needs stochastic_depth 0.
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
    exact_gelu: bool = False
    layer_norm_epsilon: float = 1e-6
    remat: bool | str = False
    scan_layers: bool = False
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, images, *, train: bool = False):
        if self.classifier not in vit_encoder.POOLINGS:
            raise ValueError(
                f"ViT classifier must be 'token', 'gap' or 'map', got {self.classifier!r}."
            )
        return encode_and_classify(self, images, train)


def encode_and_classify(vit, x, train: bool):
    """Patch embedding (`embedding`), class token, the encoder (`Transformer`), pooling and
    head of `vit` (a ViT or a module with its fields, such as the hybrid ViT, whose patches
    come from a ResNet's feature map `x`), built inside `vit`'s compact `__call__`."""
    x = vit_encoder.PatchEmbedding(
        tuple(vit.patch_size), vit.hidden_size, vit.dtype, name="embedding"
    )(x)
    batch, grid_h, grid_w, width = x.shape
    x = x.reshape(batch, grid_h * grid_w, width)
    if vit.classifier == "token":
        x = vit_encoder.add_class_token(vit, x)
    x = vit_encoder.Encoder(
        num_layers=vit.num_layers,
        mlp_dim=vit.mlp_dim,
        num_heads=vit.num_heads,
        posemb=vit.posemb,
        posemb_grid=(grid_h, grid_w),
        has_cls_token=vit.classifier == "token",
        dropout_rate=vit.dropout_rate,
        attention_dropout_rate=vit.attention_dropout_rate,
        stochastic_depth=vit.stochastic_depth,
        remat=vit.remat,
        scan_layers=vit.scan_layers,
        dtype=vit.dtype,
        block_kwargs={
            "exact_gelu": vit.exact_gelu,
            "layer_norm_epsilon": vit.layer_norm_epsilon,
        },
        layer_norm_epsilon=vit.layer_norm_epsilon,
        name="Transformer",
    )(x, train=train)
    x = vit_encoder.pool(
        x, vit.classifier, num_heads=vit.num_heads, mlp_dim=vit.mlp_dim, dtype=vit.dtype
    )
    return vit_encoder.classification_head(
        x,
        vit.num_classes,
        representation_size=vit.representation_size,
        bias_init=vit.head_bias_init,
    )


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
