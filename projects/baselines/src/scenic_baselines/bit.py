"""ResNets with GroupNorm and weight-standardised convolutions: BiT and the ViT hybrid's stem.

BiT (Kolesnikov et al., "Big Transfer", 2020; google-research/big_transfer) is a
pre-activation ResNet v2: every bottleneck unit is GN -> ReLU -> 1x1 conv, GN -> ReLU ->
3x3 conv (the stride is here), GN -> ReLU -> 1x1 conv (x4 channels), plus the input, and
where the shape changes the shortcut is a strided 1x1 conv of the first GN -> ReLU output.
The root is a 7x7/2 conv, one pixel of zero padding and a 3x3/2 max-pool without further
padding; the trunk ends with GN -> ReLU -> global average pool -> linear head. Depths 50,
101, 152 (`BLOCK_SIZES`; 14 is one unit a stage, not from the paper, for tests and demos),
widths 64 x `width_factor`. BiT-R50x1 with a 1000-way head has 25,549,352 parameters.

The R50+ViT-B/16 hybrid of the ViT paper (vit_jax `models_resnet.py`) uses the same family
post-activation: conv -> GN -> ReLU, conv -> GN -> ReLU, conv -> GN, added to the shortcut
(conv -> GN where the shape changes), then ReLU; its root has GN -> ReLU before the pool.
One trunk (`resnet_trunk`) builds both, so this file is the repo's only GN + weight-
standardised ResNet (`resnet.py` is the BatchNorm ResNet v1.5, whose `conv2d` does the
convolution arithmetic here too).

Where published implementations differ (checked in their sources):

  | | BiT (bit_jax, bit_pytorch, bit_tf2) | ViT hybrid (vit_jax) | HF `transformers` Bit |
  |---|---|---|---|
  | kernel w -> | (w - mean) / sqrt(var + 1e-10) | (w - mean) / (std + 1e-5) | BiT's, 1e-8 |
  | GroupNorm epsilon | 1e-5 | 1e-6 (flax default) | 1e-5 |
  | padding | symmetric k // 2 | 'SAME' (TF) | per `global_padding` |

Mean and variance are over each output channel's kernel `[kh, kw, in]`, variance biased.
`ws_formula` ('sqrt(var+eps)' or 'std+eps'), `ws_epsilon` and `gn_epsilon` select them;
`padding` is 'symmetric' (PyTorch's k // 2 on each side, also at stride 2) or 'same' (TF's:
at stride 2 on an even size one pixel less before than after). The root max-pool pads with
zeros, as BiT does (with 'same' padding it follows a ReLU, so zeros equal -inf padding).

Parameter names (the hybrid's are the published R50+ViT-B_16.npz's; `bit_weights` maps the
BiT .npz names onto them): `conv_root` (+ `gn_root` post-activation), `block{s}/unit{u}` (s,
u from 1) holding `conv1`..`conv3`, `gn1`..`gn3` and, where the shape changes, `conv_proj`
(+ `gn_proj`); BiT adds `gn_pre_head` and the classifier `head`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

import scenic_baselines.bit_weights  # noqa: F401  (registers the .npz formats with init_from)
from scenic.model_lib.base_models.classification_model import ClassificationModel
from scenic_baselines import resnet

#: depth -> bottleneck units per stage (BiT's R50, R101, R152; 14 for tests and demos).
BLOCK_SIZES = {
    14: (1, 1, 1, 1),  # not in the paper: one unit a stage, for tests and demos
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
PADDINGS = ("symmetric", "same")
WS_FORMULAS = ("sqrt(var+eps)", "std+eps")
#: Official BiT values (big_transfer: bit_jax/models.py, bit_pytorch/models.py).
BIT_GN_EPSILON = 1e-5
BIT_WS_EPSILON = 1e-10


@dataclasses.dataclass(frozen=True)
class Arithmetic:
    """How a unit computes, where implementations differ (see the module docstring)."""

    padding: str = "symmetric"
    num_groups: int = 32
    gn_epsilon: float = BIT_GN_EPSILON
    ws_epsilon: float = BIT_WS_EPSILON
    ws_formula: str = "sqrt(var+eps)"
    conv_impl: str = "auto"
    dtype: Any = None

    def check(self) -> None:
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}.")
        if self.ws_formula not in WS_FORMULAS:
            raise ValueError(f"ws_formula must be one of {WS_FORMULAS}, got {self.ws_formula!r}.")
        if self.conv_impl not in resnet.CONV_IMPLS:
            raise ValueError(
                f"conv_impl must be one of {resnet.CONV_IMPLS}, got {self.conv_impl!r}."
            )


def standardize_kernel(kernel, epsilon: float, formula: str = "sqrt(var+eps)"):
    """`kernel` [kh, kw, in, out] with each output channel's weights shifted to mean 0 and
    divided by sqrt(var + epsilon) or by std + epsilon (`formula`; biased variance)."""
    mean = jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
    centered = kernel - mean
    var = jnp.mean(jnp.square(centered), axis=(0, 1, 2), keepdims=True)
    if formula == "sqrt(var+eps)":
        return centered / jnp.sqrt(var + epsilon)
    if formula == "std+eps":
        return centered / (jnp.sqrt(var) + epsilon)
    raise ValueError(f"ws_formula must be one of {WS_FORMULAS}, got {formula!r}.")


def conv2d(x, kernel, stride: int, padding: str, impl: str = "auto"):
    """`resnet.conv2d` (symmetric k // 2 padding) or, with `padding='same'`, TF's 'SAME'.

    They differ only at stride 2 on an even size with a kernel over 1x1: 'SAME' pads one
    pixel less before. That is the symmetric convolution of the input with one more zero
    pixel on each side, minus its first output (the extra pixels shift the windows by one
    stride), which costs one extra output row / column instead of another convolution.
    """
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}.")
    if padding == "symmetric" or stride == 1 or kernel.shape[:2] == (1, 1):
        return resnet.conv2d(x, kernel, stride, impl)
    even = [size % 2 == 0 for size in x.shape[1:3]]
    x = jnp.pad(x, ((0, 0), *[(1, 1) if e else (0, 0) for e in even], (0, 0)))
    y = resnet.conv2d(x, kernel, stride, impl)
    return y[:, int(even[0]) :, int(even[1]) :]


def max_pool_3x3_s2(x, padding: str):
    """3x3 max-pool at stride 2 over zero padding: one pixel on each side ('symmetric', as
    BiT's root pads before a VALID pool) or TF's 'SAME' amounts. Nine strided slices (faster
    than `flax.linen.max_pool` on XLA:CPU, see `resnet.max_pool_3x3_s2`)."""
    pads = []
    for size in x.shape[1:3]:
        if padding == "symmetric":
            pads.append((1, 1))
        else:
            total = max((math.ceil(size / 2) - 1) * 2 + 3 - size, 0)
            pads.append((total // 2, total - total // 2))
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    out_h, out_w = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    out = None
    for i in range(3):
        for j in range(3):
            piece = x[:, i : i + 2 * (out_h - 1) + 1 : 2, j : j + 2 * (out_w - 1) + 1 : 2]
            out = piece if out is None else jnp.maximum(out, piece)
    return out


class StdConv(nn.Module):
    """A bias-free convolution with a weight-standardised `kernel` [k, k, in, out]."""

    features: int
    kernel_size: int
    strides: int = 1
    arithmetic: Arithmetic = Arithmetic()

    @nn.compact
    def __call__(self, x):
        a = self.arithmetic
        kernel = self.param(
            "kernel",
            resnet.conv_kernel_init,
            (self.kernel_size, self.kernel_size, x.shape[-1], self.features),
            jnp.float32,
        )
        kernel = standardize_kernel(kernel, a.ws_epsilon, a.ws_formula)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=a.dtype)
        return conv2d(x, kernel, self.strides, a.padding, a.conv_impl)


def group_norm(arithmetic: Arithmetic, name: str, zero_scale: bool = False) -> nn.GroupNorm:
    return nn.GroupNorm(
        num_groups=arithmetic.num_groups,
        epsilon=arithmetic.gn_epsilon,
        dtype=arithmetic.dtype,
        use_fast_variance=False,  # two-pass variance, as PyTorch's group_norm
        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
        name=name,
    )


class BottleneckUnit(nn.Module):
    """1x1 (`features`), 3x3 (`features`, stride `strides`), 1x1 (4 x `features`), pre- or
    post-activation (see the module docstring); a 1x1 projection where the shape changes.
    Post-activation, the last GroupNorm scale starts at zero (vit_jax's `gn3`)."""

    features: int
    strides: int = 1
    preactivation: bool = True
    arithmetic: Arithmetic = Arithmetic()

    @nn.compact
    def __call__(self, x):
        a, out_features = self.arithmetic, 4 * self.features
        needs_projection = x.shape[-1] != out_features or self.strides != 1

        def conv(features, size, strides=1, *, name):
            return StdConv(features, size, strides, a, name=name)

        if self.preactivation:
            y = nn.relu(group_norm(a, "gn1")(x))
            shortcut = x
            if needs_projection:  # of the pre-activated input, as BiT does
                shortcut = conv(out_features, 1, self.strides, name="conv_proj")(y)
            y = conv(self.features, 1, name="conv1")(y)
            y = conv(self.features, 3, self.strides, name="conv2")(nn.relu(group_norm(a, "gn2")(y)))
            y = conv(out_features, 1, name="conv3")(nn.relu(group_norm(a, "gn3")(y)))
            return y + shortcut
        shortcut = x
        if needs_projection:
            shortcut = conv(out_features, 1, self.strides, name="conv_proj")(x)
            shortcut = group_norm(a, "gn_proj")(shortcut)
        y = nn.relu(group_norm(a, "gn1")(conv(self.features, 1, name="conv1")(x)))
        y = nn.relu(group_norm(a, "gn2")(conv(self.features, 3, self.strides, name="conv2")(y)))
        y = group_norm(a, "gn3", zero_scale=True)(conv(out_features, 1, name="conv3")(y))
        return nn.relu(shortcut + y)


class Stage(nn.Module):
    """`num_units` bottleneck units `unit1`, `unit2`, ...; the first has `first_stride`."""

    num_units: int
    features: int
    first_stride: int
    preactivation: bool
    arithmetic: Arithmetic

    @nn.compact
    def __call__(self, x):
        for u in range(self.num_units):
            x = BottleneckUnit(
                self.features,
                self.first_stride if u == 0 else 1,
                self.preactivation,
                self.arithmetic,
                name=f"unit{u + 1}",
            )(x)
        return x


def resnet_trunk(
    images, block_sizes, width: int, preactivation: bool, arithmetic: Arithmetic
) -> jnp.ndarray:
    """Root and stages, `[B, H, W, C] -> [B, H / 2^(1 + #stages), ..., 4 * width * 2^(#stages
    - 1)]` (each stride-2 layer rounds up); `width` channels after the root if no stages.

    Call it from a module's compact method: the layers are that module's children
    (`conv_root`, `gn_root`, `block1`, ...), as in the published hybrid checkpoints.
    """
    arithmetic.check()
    x = StdConv(width, 7, 2, arithmetic, name="conv_root")(images)
    if not preactivation:
        x = nn.relu(group_norm(arithmetic, "gn_root")(x))
    x = max_pool_3x3_s2(x, arithmetic.padding)
    for stage, num_units in enumerate(block_sizes):
        x = Stage(
            num_units,
            width * 2**stage,
            2 if stage > 0 else 1,
            preactivation,
            arithmetic,
            name=f"block{stage + 1}",
        )(x)
    return x


class BiT(nn.Module):
    """BiT classifier: the pre-activation ResNet v2 with GroupNorm and weight standardisation.

    Attributes:
      num_classes: classes of the linear head (0 or None: return the pooled representation).
      num_layers: depth, one of `BLOCK_SIZES` (50, 101, 152; 14 for tests).
      width_factor: channel multiplier (BiT-R50x1 .. x4; the root has 64 x this).
      num_filters: root width before `width_factor` (64 in the paper; smaller for tests).
      num_groups: GroupNorm groups (32 in the paper).
      gn_epsilon, ws_epsilon, ws_formula: GroupNorm epsilon and the weight standardisation
        (defaults: big_transfer's; Hugging Face's `Bit*` use ws_epsilon=1e-8).
      conv_impl: 'auto', 'xla' or 'im2col' (how convolutions are computed, `resnet.conv2d`).
      dtype: compute dtype (parameters stay float32).
    """

    num_classes: int | None
    num_layers: int = 50
    width_factor: int = 1
    num_filters: int = 64
    num_groups: int = 32
    gn_epsilon: float = BIT_GN_EPSILON
    ws_epsilon: float = BIT_WS_EPSILON
    ws_formula: str = "sqrt(var+eps)"
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, images, *, train: bool = False):
        del train  # no dropout or batch statistics
        if self.num_layers not in BLOCK_SIZES:
            raise ValueError(
                f"BiT num_layers must be one of {sorted(BLOCK_SIZES)}, got {self.num_layers}."
            )
        arithmetic = Arithmetic(
            "symmetric",
            self.num_groups,
            self.gn_epsilon,
            self.ws_epsilon,
            self.ws_formula,
            self.conv_impl,
            self.dtype,
        )
        width = self.num_filters * self.width_factor
        x = resnet_trunk(images, BLOCK_SIZES[self.num_layers], width, True, arithmetic)
        x = nn.relu(group_norm(arithmetic, "gn_pre_head")(x))
        pooled = jnp.mean(x, axis=(1, 2))
        if not self.num_classes:
            return pooled
        head = nn.Dense(
            self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype, name="head"
        )
        return head(pooled).astype(jnp.float32)


class BiTClassificationModel(ClassificationModel):
    """BiT with softmax cross-entropy; `config.model` holds the BiT's constructor arguments.
    `config.init_from.checkpoint` may be an official BiT .npz (`bit_weights`); with
    `config.init_from.reinit = ('head/.*',)` the head is new and zero (BiT-HyperRule)."""

    def build_flax_model(self):
        return build_bit(self.config.model, self.dataset_meta_data["num_classes"])

    @classmethod
    def model_config_keys(cls) -> tuple[str, ...]:
        excluded = ("num_classes", "parent", "name")
        return tuple(f.name for f in dataclasses.fields(BiT) if f.name not in excluded)


def build_bit(model_config: ml_collections.ConfigDict, num_classes: int) -> BiT:
    kwargs = model_config.to_dict()
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    return BiT(num_classes=num_classes, **kwargs)
