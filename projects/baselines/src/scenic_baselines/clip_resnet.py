"""CLIP's ResNet image towers (RN50, RN101, RN50x4, RN50x16, RN50x64): OpenAI's "modified
ResNet" (Radford et al., 2021, section 2.4).

What differs from the classification ResNet (`scenic_baselines.resnet`): a stem of three 3x3
convolutions (the first with stride 2) and a 2x2 average pool instead of one 7x7 convolution
and a max pool; anti-aliased downsampling (a stride-s average pool after the bottleneck's 3x3
convolution, and before the shortcut's 1x1 one, whose convolutions all have stride 1); and an
attention pool in place of the global average pool: the feature map's mean token, plus a
learned position embedding, attends over all positions, and its projected output is the image
embedding. Batch norms are PyTorch's (epsilon 1e-5, running averages updated by 0.1 a step).

Parameters (OpenAI's / OpenCLIP's names in brackets; `clip_weights.openai_resnet_tower`
converts them):

  conv1..3, bn1..3                     the stem (conv1..3, bn1..3)
  layer{i}_{j}/conv1..3, bn1..3        bottleneck j of stage i (layer{i}.{j}.conv1..3)
  layer{i}_{j}/downsample_conv, _bn    its shortcut (layer{i}.{j}.downsample.0 and .1)
  attnpool/positional_embedding        [HW + 1, C]  (attnpool.positional_embedding)
  attnpool/q_proj, k_proj, v_proj      [C, C]       (attnpool.q_proj, ...)
  attnpool/c_proj                      [C, E]       the output projection (attnpool.c_proj)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

#: Bottleneck output channels per input plane.
EXPANSION = 4


def avg_pool(x, stride: int):
    """PyTorch's `AvgPool2d(stride)`: stride x stride windows, no padding."""
    return nn.avg_pool(x, (stride, stride), strides=(stride, stride)) if stride > 1 else x


def batch_norm(train: bool, dtype, **kwargs) -> nn.BatchNorm:
    """PyTorch's BatchNorm2d: epsilon 1e-5, running averages moved 0.1 of the way a step;
    batch statistics in training, the running ones otherwise."""
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, **kwargs
    )


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> (average pool) -> 1x1 with a shortcut; `planes * 4` channels out."""

    planes: int
    stride: int = 1
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = functools.partial(batch_norm, train, self.dtype)
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
        out = nn.relu(norm(name="bn1")(conv(self.planes, (1, 1), name="conv1")(x)))
        out = conv(self.planes, (3, 3), padding=1, name="conv2")(out)
        out = avg_pool(nn.relu(norm(name="bn2")(out)), self.stride)
        out = conv(self.planes * EXPANSION, (1, 1), name="conv3")(out)
        # OpenAI zero-initialises the last norm's scale: each block starts as the identity.
        out = norm(scale_init=nn.initializers.zeros, name="bn3")(out)
        shortcut = x
        if self.stride > 1 or x.shape[-1] != self.planes * EXPANSION:
            shortcut = conv(self.planes * EXPANSION, (1, 1), name="downsample_conv")(
                avg_pool(x, self.stride)
            )
            shortcut = norm(name="downsample_bn")(shortcut)
        return nn.relu(out + shortcut)


class AttentionPool(nn.Module):
    """`[B, H, W, C]` -> `[B, output_dim]`: the mean token (with a learned position
    embedding, as every position has) attends over itself and all H x W positions."""

    num_heads: int
    output_dim: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x):
        batch, height, width, channels = x.shape
        x = x.reshape(batch, height * width, channels)
        x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
        position = self.param(
            "positional_embedding",
            nn.initializers.normal(channels**-0.5),
            (height * width + 1, channels),
        )
        x = x + position.astype(x.dtype)
        dense = functools.partial(
            nn.Dense, kernel_init=nn.initializers.normal(channels**-0.5), dtype=self.dtype
        )
        head_dim = channels // self.num_heads

        def heads(y):
            return y.reshape(batch, y.shape[1], self.num_heads, head_dim)

        query = heads(dense(channels, name="q_proj")(x[:, :1])) * head_dim**-0.5
        key = heads(dense(channels, name="k_proj")(x))
        value = heads(dense(channels, name="v_proj")(x))
        weights = nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", query, key).astype(jnp.float32))
        out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(value.dtype), value)
        out = dense(self.output_dim, name="c_proj")(out.reshape(batch, channels))
        return out


class ResNetImageEncoder(nn.Module):
    """CLIP's modified ResNet: `(embedding [B, E], features [B, h * w, C])` of images
    `[B, H, W, 3]`, H and W multiples of 32; the features are the last stage's map
    (row-major), the embedding the attention pool's output (not normalised).

    `layers`: bottlenecks per stage (RN50: (3, 4, 6, 3)); `width`: the stem's output
    channels, doubled each stage (`width * 32` channels reach the attention pool).
    """

    layers: Sequence[int]
    width: int
    num_heads: int
    embed_dim: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, images, train: bool = False):
        norm = functools.partial(batch_norm, train, self.dtype)
        conv = functools.partial(nn.Conv, kernel_size=(3, 3), padding=1, use_bias=False,
                                 dtype=self.dtype)  # fmt: skip
        x = images
        for i, (features, stride) in enumerate(
            [(self.width // 2, 2), (self.width // 2, 1), (self.width, 1)], start=1
        ):
            x = conv(features, strides=(stride, stride), name=f"conv{i}")(x)
            x = nn.relu(norm(name=f"bn{i}")(x))
        x = avg_pool(x, 2)
        for stage, blocks in enumerate(self.layers):
            for block in range(blocks):
                x = Bottleneck(
                    planes=self.width * 2**stage,
                    stride=2 if stage > 0 and block == 0 else 1,
                    dtype=self.dtype,
                    name=f"layer{stage + 1}_{block}",
                )(x, train)
        batch, height, width, channels = x.shape
        embedding = AttentionPool(self.num_heads, self.embed_dim, self.dtype, name="attnpool")(x)
        return embedding, x.reshape(batch, height * width, channels)
