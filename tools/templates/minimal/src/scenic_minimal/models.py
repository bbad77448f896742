"""The project's model, and the registry its CLI reads: `config.model_name` -> base model.

`config.model` holds the constructor arguments of `PatchClassifier` (any other key is an
error that names it, before training starts). The loss (softmax cross-entropy with optional
label smoothing), accuracy and per-class metrics come from the core's `ClassificationModel`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from scenic.model_lib import layers
from scenic.model_lib.base_models.classification_model import ClassificationModel
from scenic.model_lib.vit_encoder import PatchEmbedding


class PatchClassifier(nn.Module):
    """Image -> non-overlapping patches embedded to `hidden_size` -> `num_layers` residual
    MLP blocks on every patch -> the patches flattened (their positions count) -> a linear
    head to `num_classes` logits."""

    num_classes: int
    patch_size: tuple[int, int] = (4, 4)
    hidden_size: int = 32
    mlp_dim: int = 64
    num_layers: int = 1
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = PatchEmbedding(tuple(self.patch_size), self.hidden_size, name="embedding")(images)
        for i in range(self.num_layers):
            mlp = layers.MlpBlock(self.mlp_dim, dropout_rate=self.dropout_rate, name=f"mlp_{i}")
            x = x + mlp(nn.LayerNorm(name=f"norm_{i}")(x), deterministic=not train)
        x = nn.LayerNorm(name="final_norm")(x)
        return nn.Dense(self.num_classes, name="head")(x.reshape(x.shape[0], -1))


class PatchClassification(ClassificationModel):
    """`PatchClassifier` trained with softmax cross-entropy."""

    def build_flax_model(self):
        return PatchClassifier(num_classes=self.num_classes, **self.config.model.to_dict())

    @classmethod
    def model_config_keys(cls):
        excluded = ("num_classes", "parent", "name")
        return tuple(f.name for f in dataclasses.fields(PatchClassifier) if f.name not in excluded)


MODELS = {"patch_classifier": PatchClassification}
