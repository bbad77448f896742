"""UNet (Ronneberger, Fischer and Brox, 2015) for semantic segmentation, with the usual modern
choices: 'SAME' padding (the output has the input's size, and skip connections need no
cropping), a normalisation layer after every 3x3 convolution (configurable), and a
configurable number of levels and base width.

Layout, for `num_levels` L and `base_width` w (level l has w * 2^l channels):
  - contracting path: at each level l < L two 3x3 convolutions (each followed by the
    normalisation and a ReLU), kept as the skip connection, then a 2x2 max-pool;
  - bottleneck: the same pair of convolutions at level L (w * 2^L channels);
  - expanding path: at each level l, from L - 1 down to 0, a 2x2 up-convolution with stride 2
    (a transposed convolution) to w * 2^l channels, the skip connection concatenated before
    it on the channel axis, and a pair of 3x3 convolutions;
  - head: a 1x1 convolution to `num_classes` logits per pixel.
The paper's network is L = 4, w = 64 with unpadded convolutions and no normalisation
(`norm='none'`, which also gives every 3x3 convolution a bias). Inputs need a height and
width divisible by 2^L; the logits are `[B, H, W, num_classes]`.

Parameter names: `down_{l}` (l from 0), `bottleneck` and `up_{l}` blocks holding `conv1`,
`conv2` (kernels `[3, 3, in, out]`) and `norm1`, `norm2`; `upconv_{l}` (kernel
`[2, 2, in, out]` and bias, `out[2y + i, 2x + j] = bias + in[y, x] @ kernel[i, j]`, i.e.
PyTorch's `ConvTranspose2d(in, out, 2, stride=2)`); `head` (the 1x1 convolution as a
Dense layer: kernel `[w, classes]`, bias). Kernels are He-initialised (normal, variance
2 / fan-in, as in the paper). With L = 4, w = 64, one input channel and 2 classes the
network has the paper's 31,030,658 parameters (`norm='none'`; padding adds none).

Speed on XLA:CPU: the 3x3 convolutions go through `scenic_baselines.resnet.conv2d`
(`conv_impl`; 'auto' picks XLA's convolution on a UNet's maps, never smaller than the
kernel: measured 2-4x faster than the matrix-multiply formulation on 16x16 and 32x32 maps,
about equal on 8x8 and 4x4 ones); the up-convolution (non-overlapping, so one matrix multiply and a
reshape) and the max-pool (a reshape and a maximum) avoid XLA's transposed convolution and
pooling. Timings: docs/experiments/unet_digits_segmentation.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from scenic.common_lib.config_utils import ConfigError
from scenic.model_lib.base_models.segmentation_model import SegmentationModel
from scenic_baselines import resnet

NORMS = ("batch", "group", "none")
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# The paper's initialisation: normal with standard deviation sqrt(2 / fan-in).
kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class Conv3x3(nn.Module):
    """A 3x3 convolution, 'SAME' padding, stride 1, optional bias (see `resnet.conv2d`)."""

    features: int
    use_bias: bool
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", kernel_init, (3, 3, x.shape[-1], self.features), jnp.float32)
        bias = (
            self.param("bias", nn.initializers.zeros, (self.features,)) if self.use_bias else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = resnet.conv2d(x, kernel, 1, self.conv_impl)
        return y if bias is None else y + bias


class UpConv(nn.Module):
    """2x2 transposed convolution with stride 2: every input pixel becomes a 2x2 block.

    The blocks do not overlap, so it is one matrix multiply followed by a depth-to-space
    reshape (`out[2y + i, 2x + j] = bias + x[y, x] @ kernel[i, j]`)."""

    features: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", kernel_init, (2, 2, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        b, h, w, _ = x.shape
        y = jnp.einsum("bhwc,ijco->bhiwjo", x, kernel).reshape(b, 2 * h, 2 * w, self.features)
        return y + bias


def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 max-pool with stride 2 (even height and width), as a reshape and a maximum."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class ConvBlock(nn.Module):
    """Two 3x3 convolutions, each followed by the normalisation (if any) and a ReLU."""

    features: int
    norm: str
    train: bool
    num_groups: int = 8
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        for index in (1, 2):
            x = Conv3x3(
                self.features, self.norm == "none", self.conv_impl, self.dtype, name=f"conv{index}"
            )(x)
            if self.norm == "batch":
                x = nn.BatchNorm(
                    use_running_average=not self.train,
                    momentum=BN_MOMENTUM,
                    epsilon=BN_EPSILON,
                    axis_name=self.bn_axis_name if self.train else None,
                    dtype=self.dtype,
                    name=f"norm{index}",
                )(x)
            elif self.norm == "group":
                x = nn.GroupNorm(
                    num_groups=min(self.num_groups, self.features),
                    dtype=self.dtype,
                    name=f"norm{index}",
                )(x)
            x = nn.relu(x)
        return x


class UNet(nn.Module):
    """UNet segmenter (see the module docstring for the layout and parameter names).

    Attributes:
      num_classes: classes of the per-pixel logits.
      num_levels: number of 2x2 poolings (4 in the paper); inputs need a height and width
        divisible by 2^num_levels.
      base_width: channels of the first level (64 in the paper), doubled at each level.
      norm: 'batch' (BatchNorm, momentum 0.9, epsilon 1e-5), 'group' (GroupNorm with
        min(`num_groups`, channels) groups) or 'none' (the paper: biases instead).
      num_groups: groups of `norm='group'`; must divide every level's width.
      bn_axis_name: device axis over which training BatchNorm statistics are averaged
        (synchronised BatchNorm); None: per device.
      conv_impl: 'auto', 'xla' or 'im2col' (how 3x3 convolutions are computed, see
        `scenic_baselines.resnet.conv2d`).
      dtype: compute dtype (parameters stay float32).
    """

    num_classes: int
    num_levels: int = 4
    base_width: int = 64
    norm: str = "batch"
    num_groups: int = 8
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, images, *, train: bool = False):
        check_settings(self.num_levels, self.base_width, self.norm, self.num_groups)
        multiple = 2**self.num_levels
        if images.shape[1] % multiple or images.shape[2] % multiple:
            raise ValueError(
                f"UNet with num_levels={self.num_levels} needs an input height and width "
                f"divisible by {multiple}, got {images.shape[1]}x{images.shape[2]}."
            )

        def block(level, name):
            return ConvBlock(
                features=self.base_width * 2**level,
                norm=self.norm,
                train=train,
                num_groups=self.num_groups,
                bn_axis_name=self.bn_axis_name,
                conv_impl=self.conv_impl,
                dtype=self.dtype,
                name=name,
            )

        x, skips = images, []
        for level in range(self.num_levels):
            x = block(level, f"down_{level}")(x)
            skips.append(x)
            x = max_pool_2x2(x)
        x = block(self.num_levels, "bottleneck")(x)
        for level in reversed(range(self.num_levels)):
            up = UpConv(self.base_width * 2**level, self.dtype, name=f"upconv_{level}")(x)
            x = block(level, f"up_{level}")(jnp.concatenate([skips[level], up], axis=-1))
        return nn.Dense(self.num_classes, kernel_init=kernel_init, dtype=self.dtype, name="head")(x)


def check_settings(num_levels: int, base_width: int, norm: str, num_groups: int) -> None:
    """Raises ValueError for a UNet setting no model can use, naming it."""
    if norm not in NORMS:
        raise ValueError(f"UNet norm must be one of {NORMS}, got {norm!r}.")
    if num_levels < 1 or base_width < 1:
        raise ValueError(
            f"UNet num_levels and base_width must be >= 1, got {num_levels}, {base_width}."
        )
    if norm == "group":
        widths = [base_width * 2**level for level in range(num_levels + 1)]
        if num_groups < 1 or any(w % min(num_groups, w) for w in widths):
            raise ValueError(
                f"UNet num_groups={num_groups} must divide every level's width {widths}."
            )


class UNetSegmentationModel(SegmentationModel):
    """UNet with pixel-wise cross-entropy, pixel accuracy, and mean and per-class IoU over
    the whole eval set (`SegmentationModel`). `config.model` holds the UNet's constructor
    arguments; with BatchNorm, training averages batch statistics over the trainer's device
    axis unless `config.model.bn_axis_name` says otherwise (None: per device)."""

    def build_flax_model(self):
        return build_unet(self.config.model, self.dataset_meta_data["num_classes"])

    @classmethod
    def model_config_keys(cls) -> tuple[str, ...]:
        excluded = ("num_classes", "parent", "name")
        return tuple(f.name for f in dataclasses.fields(UNet) if f.name not in excluded)

    @classmethod
    def check_config(cls, config: ml_collections.ConfigDict) -> None:
        defaults = {f.name: f.default for f in dataclasses.fields(UNet)}
        model = {**defaults, **(config.model.to_dict() if config.get("model") else {})}
        try:
            check_settings(
                model["num_levels"], model["base_width"], model["norm"], model["num_groups"]
            )
            resnet.conv_formulation((8, 8), (3, 3), 1, model["conv_impl"])
        except ValueError as error:
            raise ConfigError(f"model: {error}") from None


def build_unet(model_config: ml_collections.ConfigDict, num_classes: int) -> UNet:
    """The UNet of `config.model`, with `bn_axis_name` defaulting to the core trainer's
    device axis (synchronised BatchNorm)."""
    from scenic.train_lib.steps import AXIS

    kwargs = model_config.to_dict()
    kwargs.setdefault("bn_axis_name", AXIS)
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    return UNet(num_classes=num_classes, **kwargs)
