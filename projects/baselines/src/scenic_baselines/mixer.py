"""MLP-Mixer (Tolstikhin et al., 2021): a vision model built only of MLPs.

Non-overlapping patches are embedded by one linear map (`stem`, a stride-P convolution)
into S tokens of width C. Each of the `num_layers` blocks mixes first across tokens, then
across channels, both pre-LayerNorm residual MLPs (Dense, GELU, Dense):

    U = X + token_mixing(LayerNorm_0(X)^T)^T       hidden width D_S (`tokens_mlp_dim`)
    Y = U + channel_mixing(LayerNorm_1(U))         hidden width D_C (`channels_mlp_dim`)

then `pre_head_layer_norm`, the mean over tokens and the zero-initialised linear `head`.
As in the official code (google-research/vision_transformer, `vit_jax/models_mixer.py`)
the GELU is Flax's default, the tanh approximation, and LayerNorm's epsilon is 1e-6.

Published sizes (`VARIANTS`; the paper's Table 1, big_vision's `mlp_mixer.py`): S 512 /
256 / 2048 / 8 blocks, B 768 / 384 / 3072 / 12, L 1024 / 512 / 4096 / 24, H 1280 / 640 /
5120 / 32 (C / D_S / D_C / depth), with 16x16 or 32x32 patches (14x14 for H). Mixer-B/16
at 224 px with a 1000-way head has 59,880,472 parameters. The token-mixing MLP's kernels
are [S, D_S] and [D_S, S], so they are tied to the number of patches: a checkpoint only
loads into a model of the same image size / patch size.

Beyond the paper, off by default (they leave the official parameter tree unchanged):
  - stochastic depth: block i drops each residual branch with rate i / (L - 1) of
    `stochastic_depth` (timm / big_vision's linear rule), kept examples scaled by
    1 / (1 - rate) (`scenic.model_lib.layers.StochasticDepth`);
  - `dropout_rate`: dropout after each MLP's hidden layer and its output;
  - `layer_scale` (CaiT, Touvron et al., 2021): a learned per-channel scale on each
    BRANCH, x + scale * branch(x), initialised to `layer_scale`; parameters
    `token_mixing_scale` and `channel_mixing_scale` [C] in each block. (The original
    Scenic Mixer scaled the residual of its channel-mixing step instead.)

Parameter names are the official checkpoints' (`stem`, `MixerBlock_{i}/{LayerNorm_0,
token_mixing/Dense_{0,1}, LayerNorm_1, channel_mixing/Dense_{0,1}}`,
`pre_head_layer_norm`, `head`), so the published `.npz` files (flat '/'-joined names,
e.g. gs://mixer_models/imagenet21k/Mixer-B_16.npz) load with the core's reader, with a
new head for another class count:

    config.init_from = {"checkpoint": "/path/Mixer-B_16.npz", "reinit": ("head/.*",)}

A file that does not fit gets one `PretrainedInitError` listing every missing, mis-shaped
and unused array (`scenic.train_lib.pretrained_init`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from scenic.model_lib import layers, vit_encoder
from scenic.model_lib.base_models.classification_model import (
    ClassificationModel,
    MultiLabelClassificationModel,
)

#: Scale -> (hidden_size C, tokens_mlp_dim D_S, channels_mlp_dim D_C, num_layers).
SCALES = {
    "S": (512, 256, 2048, 8),
    "B": (768, 384, 3072, 12),
    "L": (1024, 512, 4096, 24),
    "H": (1280, 640, 5120, 32),
}
#: The published variants: 'B/16' is scale B with 16x16 patches.
VARIANTS = ("S/16", "S/32", "B/16", "B/32", "L/16", "L/32", "H/14")


def variant(name: str) -> dict[str, Any]:
    """`Mixer` constructor arguments of a published variant such as 'B/16'."""
    if name not in VARIANTS:
        raise ValueError(f"Unknown Mixer variant {name!r}; known: {', '.join(VARIANTS)}.")
    scale, patch = name.split("/")
    hidden, tokens_mlp, channels_mlp, depth = SCALES[scale]
    return {
        "patch_size": (int(patch), int(patch)),
        "hidden_size": hidden,
        "tokens_mlp_dim": tokens_mlp,
        "channels_mlp_dim": channels_mlp,
        "num_layers": depth,
    }


class MixerBlock(nn.Module):
    """Token mixing, then channel mixing, each x + DropPath(scale * MLP(LayerNorm(x)))."""

    tokens_mlp_dim: int
    channels_mlp_dim: int
    dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    layer_scale: float | None = None
    dtype: Any = None

    def mlp(self, hidden: int, name: str) -> layers.MlpBlock:
        # Flax Dense's initialisers (LeCun normal kernels, zero biases), as the official code.
        return layers.MlpBlock(
            mlp_dim=hidden,
            dropout_rate=self.dropout_rate,
            activation=nn.gelu,  # approximate=True: the tanh form, as the official code
            kernel_init=nn.initializers.lecun_normal(),
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            name=name,
        )

    def residual(self, x, branch, scale_name: str, deterministic: bool):
        if self.layer_scale is not None:
            scale = self.param(
                scale_name, nn.initializers.constant(self.layer_scale), (x.shape[-1],)
            )
            branch = branch * scale.astype(branch.dtype)
        return x + layers.StochasticDepth(self.stochastic_depth)(branch, deterministic)

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        if x.ndim != 3:
            raise ValueError(f"MixerBlock expects [batch, tokens, channels], got {x.shape}.")
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_0")(x)
        y = self.mlp(self.tokens_mlp_dim, "token_mixing")(
            jnp.swapaxes(y, 1, 2), deterministic=deterministic
        )
        x = self.residual(x, jnp.swapaxes(y, 1, 2), "token_mixing_scale", deterministic)
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_1")(x)
        y = self.mlp(self.channels_mlp_dim, "channel_mixing")(y, deterministic=deterministic)
        return self.residual(x, y, "channel_mixing_scale", deterministic)


class Mixer(nn.Module):
    """MLP-Mixer classifier (see the module docstring; `variant('B/16')` gives the sizes).

    Attributes:
      num_classes: output classes (0 or None: return the pooled representation [B, C]).
      patch_size: (height, width) of each patch; the image must divide into them.
      hidden_size: token width C.
      num_layers: Mixer blocks.
      tokens_mlp_dim, channels_mlp_dim: hidden widths D_S and D_C of the two MLPs.
      dropout_rate: dropout inside each MLP (after the GELU and after the output).
      stochastic_depth: drop-path rate of the last block; block i uses i / (L - 1) of it.
      layer_scale: initial per-channel branch scale (CaiT's LayerScale); None: no scale.
      head_bias_init: initial value of the classifier bias (-log(classes) suits a sigmoid
        loss, as big_vision's -6.9 for ImageNet).
      dtype: compute dtype (parameters stay float32; logits are float32).
    """

    num_classes: int | None
    patch_size: tuple[int, int] = (16, 16)
    hidden_size: int = 768
    num_layers: int = 12
    tokens_mlp_dim: int = 384
    channels_mlp_dim: int = 3072
    dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    layer_scale: float | None = None
    head_bias_init: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, images, *, train: bool = False):
        if not 0.0 <= self.stochastic_depth < 1.0:
            raise ValueError(
                f"Mixer stochastic_depth must be in [0, 1), got {self.stochastic_depth}."
            )
        if self.layer_scale is not None and self.layer_scale <= 0:
            raise ValueError(f"Mixer layer_scale must be None or > 0, got {self.layer_scale}.")
        x = vit_encoder.PatchEmbedding(
            tuple(self.patch_size), self.hidden_size, self.dtype, name="stem"
        )(images)
        batch, grid_h, grid_w, width = x.shape
        x = x.reshape(batch, grid_h * grid_w, width)  # row-major, as the conv's output
        for i in range(self.num_layers):
            x = MixerBlock(
                tokens_mlp_dim=self.tokens_mlp_dim,
                channels_mlp_dim=self.channels_mlp_dim,
                dropout_rate=self.dropout_rate,
                stochastic_depth=self.stochastic_depth * i / max(self.num_layers - 1, 1),
                layer_scale=self.layer_scale,
                dtype=self.dtype,
                name=f"MixerBlock_{i}",
            )(x, not train)
        x = nn.LayerNorm(dtype=self.dtype, name="pre_head_layer_norm")(x)
        return vit_encoder.classification_head(
            jnp.mean(x, axis=1), self.num_classes, bias_init=self.head_bias_init
        )


def mixer_config_keys() -> tuple[str, ...]:
    """Keys allowed in `config.model`: the constructor fields of `Mixer`."""
    excluded = ("num_classes", "parent", "name")
    return tuple(f.name for f in dataclasses.fields(Mixer) if f.name not in excluded)


def build_mixer(model_config: ml_collections.ConfigDict, num_classes: int) -> Mixer:
    kwargs = model_config.to_dict()
    if "patch_size" in kwargs:
        kwargs["patch_size"] = tuple(kwargs["patch_size"])
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    return Mixer(num_classes=num_classes, **kwargs)


class MixerClassificationModel(ClassificationModel):
    """Mixer with softmax cross-entropy; `config.model` holds the Mixer's constructor
    arguments."""

    def build_flax_model(self):
        return build_mixer(self.config.model, self.dataset_meta_data["num_classes"])

    @classmethod
    def model_config_keys(cls) -> tuple[str, ...]:
        return mixer_config_keys()


class MixerMultiLabelClassificationModel(MultiLabelClassificationModel):
    """Mixer with sigmoid cross-entropy over classes (multi-hot or soft targets)."""

    def build_flax_model(self):
        return build_mixer(self.config.model, self.dataset_meta_data["num_classes"])

    @classmethod
    def model_config_keys(cls) -> tuple[str, ...]:
        return mixer_config_keys()
