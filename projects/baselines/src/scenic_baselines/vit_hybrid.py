"""The hybrid Vision Transformer (Dosovitskiy et al., 2021, Sec. 3.1): a ResNet stem, then ViT.

The image goes through the root and the first stages of a post-activation ResNet with
GroupNorm and weight-standardised convolutions (`bit.resnet_trunk`, vit_jax's
`models_resnet.py` arithmetic: (w - mean) / (std + 1e-5), GroupNorm epsilon 1e-6, TF 'SAME'
padding); its feature map is cut into `patch_size` patches (1x1 for R50+ViT-B/16) and
embedded, and the standard ViT encoder (the core's `scenic.model_lib.vit_encoder`, as
`vit.ViT`) classifies the tokens. R50+ViT-B/16 uses stages of (3, 4, 9) units, so the
feature map has stride 16 (14 x 14 tokens at 224 px, 1024 channels) and, with a 1000-way
head at 224 px, 98,659,112 parameters (11,894,848 in the ResNet).

Parameter names are the published R50+ViT-B_16.npz's (`conv_root`, `gn_root`, `block1`..,
`embedding`, `cls`, `Transformer/...`, `head`): `config.init_from.checkpoint` may be that
file (`bit_weights` registers its format with the core's `init_from`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from scenic.model_lib import vit_encoder
from scenic.model_lib.base_models.classification_model import ClassificationModel
from scenic_baselines import bit, vit

#: vit_jax `models_resnet.py`: StdConv's epsilon (added to the std) and flax's GroupNorm's.
HYBRID_WS_EPSILON = 1e-5
HYBRID_GN_EPSILON = 1e-6


class ViTHybrid(nn.Module):
    """ResNet stem + ViT classifier.

    Attributes:
      num_classes: output classes (0 or None: return the pre-logits representation).
      resnet_block_sizes: bottleneck units of each ResNet stage ((3, 4, 9) for R50+ViT-B/16;
        () keeps only the root, stride 4).
      resnet_width: channels after the root (64; a stage s has 4 x width x 2^s outputs).
      num_groups, gn_epsilon, ws_epsilon, ws_formula, padding: the ResNet's GroupNorm and
        weight standardisation (`bit.Arithmetic`; defaults: vit_jax's).
      patch_size .. remat: as `vit.ViT`, with patches cut from the ResNet's feature map.
      conv_impl: how the ResNet's convolutions are computed (`resnet.conv2d`).
      dtype: compute dtype (parameters stay float32).
    """

    num_classes: int | None
    resnet_block_sizes: tuple[int, ...] = (3, 4, 9)
    resnet_width: int = 64
    num_groups: int = 32
    gn_epsilon: float = HYBRID_GN_EPSILON
    ws_epsilon: float = HYBRID_WS_EPSILON
    ws_formula: str = "std+eps"
    padding: str = "same"
    patch_size: tuple[int, int] = (1, 1)
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
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, images, *, train: bool = False):
        if self.classifier not in vit_encoder.POOLINGS:
            raise ValueError(
                f"ViTHybrid classifier must be one of {vit_encoder.POOLINGS}, "
                f"got {self.classifier!r}."
            )
        arithmetic = bit.Arithmetic(
            self.padding,
            self.num_groups,
            self.gn_epsilon,
            self.ws_epsilon,
            self.ws_formula,
            self.conv_impl,
            self.dtype,
        )
        x = bit.resnet_trunk(
            images, tuple(self.resnet_block_sizes), self.resnet_width, False, arithmetic
        )
        return vit.encode_and_classify(self, x, train)


class ViTHybridClassificationModel(ClassificationModel):
    """ViTHybrid with softmax cross-entropy; `config.model` holds its constructor arguments.
    `config.init_from.checkpoint` may be an official hybrid .npz (`bit_weights`)."""

    def build_flax_model(self):
        return build_vit_hybrid(self.config.model, self.dataset_meta_data["num_classes"])

    @classmethod
    def model_config_keys(cls) -> tuple[str, ...]:
        excluded = ("num_classes", "parent", "name")
        return tuple(f.name for f in dataclasses.fields(ViTHybrid) if f.name not in excluded)


def build_vit_hybrid(model_config: ml_collections.ConfigDict, num_classes: int) -> ViTHybrid:
    kwargs = model_config.to_dict()
    for key in ("patch_size", "resnet_block_sizes"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    return ViTHybrid(num_classes=num_classes, **kwargs)
