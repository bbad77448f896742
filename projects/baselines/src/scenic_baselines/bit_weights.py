"""Readers for the published BiT and ViT-hybrid `.npz` files, as `bit.BiT` / `ViTHybrid` params.

Both are flat NumPy archives of '/'-joined names, read without unpickling anything:

- `bit_npz` (google-research/big_transfer, e.g. BiT-M-R50x1.npz; the names bit_pytorch's
  and bit_jax's loaders read): `resnet/root_block/standardized_conv2d/kernel`,
  `resnet/block{s}/unit{uu}/{a,b,c}/standardized_conv2d/kernel` (units numbered 01, 02, ..),
  `resnet/block{s}/unit{uu}/{a,b,c}/group_norm/{gamma,beta}` ([C]), the projection
  `resnet/block{s}/unit{uu}/a/proj/standardized_conv2d/kernel`, the final
  `resnet/group_norm/{gamma,beta}` and the head, a 1x1 convolution
  `resnet/head/conv2d/{kernel [1, 1, C, classes], bias}`. Group a is a unit's first
  GN -> ReLU -> 1x1 conv, b the 3x3 and c the last 1x1: our gn1/conv1 .. gn3/conv3.
- `vit_hybrid_npz` (google-research/vision_transformer, e.g. R50+ViT-B_16.npz): our own
  names (`conv_root`, `gn_root`, `block{s}/unit{u}/...`, `embedding`, `cls`,
  `Transformer/...`, `head`), except that GroupNorm scales and biases were saved by
  pre-0.3.6 Flax as [1, 1, 1, C] (vit_jax's `checkpoint._fix_groupnorm` squeezes them; flax
  issue #1721). An ImageNet-21k `pre_logits` layer is dropped when the model being
  initialised has none (vit_jax's `load_pretrained`, "drop-head variant").

Training from them: importing this module (`bit` and `vit_hybrid` do) registers both
formats with the core's `init_from`, which detects them from their array names, so

    scenic-baselines train --config bit_m_r50x1_imagenet \\
        --config.init_from.checkpoint=BiT-M-R50x1.npz

loads every trunk weight, and the config's `init_from.reinit = ('head/.*',)` keeps the new
zero head. The core resamples the hybrid's position embedding to the new patch grid
(224 -> 384 px) and reports, in one `PretrainedInitError` (a ValueError), every model
parameter the file lacks or has with another shape and every array of the file the model
does not use (in our names; `bit_name` maps BiT's).
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Mapping

import numpy as np

from scenic.train_lib import pretrained_init

#: Format name -> how messages describe it.
FORMATS = {
    "bit_npz": "official BiT .npz (big_transfer)",
    "vit_hybrid_npz": "official ViT-hybrid .npz (vision_transformer)",
}
_BIT_ROOT = "resnet/root_block/standardized_conv2d/kernel"
_BIT_UNIT = re.compile(
    r"resnet/(block\d+)/unit(\d+)/([abc])/(?:(proj)/)?"
    r"(standardized_conv2d/kernel|group_norm/gamma|group_norm/beta)"
)
_BIT_FIXED = {
    _BIT_ROOT: "conv_root/kernel",
    "resnet/group_norm/gamma": "gn_pre_head/scale",
    "resnet/group_norm/beta": "gn_pre_head/bias",
    "resnet/head/conv2d/kernel": "head/kernel",
    "resnet/head/conv2d/bias": "head/bias",
}
_BIT_LEAF = {
    "standardized_conv2d/kernel": "kernel",
    "group_norm/gamma": "scale",
    "group_norm/beta": "bias",
}
_HYBRID_GROUP_NORM = re.compile(r"(.*/)?gn(\d+|_root|_proj)/(scale|bias)")


def read_npz(source: str | os.PathLike | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flat {name: array} of an .npz file (no pickles) or of a mapping already in memory."""
    if isinstance(source, Mapping):
        return {name: np.asarray(value) for name, value in source.items()}
    with np.load(source, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def bit_name(name: str) -> str | None:
    """Our parameter name for an official BiT .npz name, or None if it is not one."""
    if name in _BIT_FIXED:
        return _BIT_FIXED[name]
    match = _BIT_UNIT.fullmatch(name)
    if not match:
        return None
    block, unit, group, proj, leaf = match.groups()
    if proj and leaf != "standardized_conv2d/kernel":
        return None
    layer = "abc".index(group) + 1
    if proj:
        module = "conv_proj"
    else:
        module = f"conv{layer}" if leaf.startswith("standardized") else f"gn{layer}"
    return f"{block}/unit{int(unit)}/{module}/{_BIT_LEAF[leaf]}"


def read_bit_npz(source) -> dict[str, np.ndarray]:
    """`bit.BiT`'s flat params from an official BiT .npz (path or mapping). The head's 1x1
    convolution kernel becomes a dense one; names that are not BiT's are kept as they are
    (`init_from` then reports them as unused)."""
    out = {}
    for name, value in read_npz(source).items():
        ours = bit_name(name)
        if ours == "head/kernel" and value.ndim == 4 and value.shape[:2] == (1, 1):
            value = value[0, 0]
        out[ours or name] = value
    return out


def read_hybrid_npz(source, model_shapes: Mapping[str, tuple] | None = None):
    """`ViTHybrid`'s flat params from an official ViT-hybrid .npz (path or mapping):
    GroupNorm scales and biases saved as [1, 1, 1, C] become [C]; `pre_logits` is left out
    when `model_shapes` ({name: shape} of the model being initialised) has none."""
    drop_pre_logits = model_shapes is not None and not any(
        name.startswith("pre_logits/") for name in model_shapes
    )
    out = {}
    for name, value in read_npz(source).items():
        if drop_pre_logits and name.startswith("pre_logits/"):
            continue
        if _HYBRID_GROUP_NORM.fullmatch(name) and value.ndim > 1:
            if all(d == 1 for d in value.shape[:-1]):
                value = value.reshape(value.shape[-1])
        out[name] = value
    return out


def _npz_names(path: pathlib.Path) -> list[str]:
    if not (path.is_file() and path.suffix == ".npz"):
        return []
    with np.load(path, allow_pickle=False) as data:
        return list(data.files)


def is_bit_npz(path: str | os.PathLike) -> bool:
    return _BIT_ROOT in _npz_names(pathlib.Path(path))


def is_hybrid_npz(path: str | os.PathLike) -> bool:
    names = _npz_names(pathlib.Path(path))
    return "conv_root/kernel" in names and "embedding/kernel" in names


def _never_raises(detect):
    def safe(path) -> bool:
        try:
            return detect(path)
        except (OSError, ValueError, KeyError):
            return False

    return safe


INIT_FROM_FORMATS = {
    "bit_npz": pretrained_init.CheckpointFormat(
        "bit_npz",
        FORMATS["bit_npz"],
        _never_raises(is_bit_npz),
        lambda path, model_shapes: read_bit_npz(path),
    ),
    "vit_hybrid_npz": pretrained_init.CheckpointFormat(
        "vit_hybrid_npz", FORMATS["vit_hybrid_npz"], _never_raises(is_hybrid_npz), read_hybrid_npz
    ),
}
for _format in INIT_FROM_FORMATS.values():
    pretrained_init.register_format(_format)
