"""ResNet v1.5 (He et al., 2016; the stride of a bottleneck on its 3x3 convolution), with
per-stage feature maps for detection and segmentation backbones.

Depths 18 and 34 use basic blocks (two 3x3 convolutions), 26, 50, 101, 152 and 200
bottleneck blocks (1x1, 3x3, 1x1 with 4x expansion); depth 10 (one basic block a stage) is
a small variant for tests and demos, not from the paper. BatchNorm has momentum 0.9 and
epsilon 1e-5, and the last BatchNorm scale of every residual block starts at zero, so each
residual branch starts as zero (Goyal et al., 2017). With `num_filters=64` and a 1000-way
head ResNet-50 has 25,557,032 parameters (torchvision's count; batch statistics aside).

Outputs (`ResNet.__call__`):
  - `return_features=False`: logits `[B, num_classes]`, or the pooled representation
    `[B, C4]` when `num_classes` is 0 or None;
  - `return_features=True`: a dict of feature maps, keyed and strided as
    `FEATURE_STRIDES`, plus the pooled `pre_logits` `[B, C4]` and, with a head, `logits`:

    | key | stride | channels (basic / bottleneck blocks) |
    |---|---|---|
    | `stem` | 4 | `num_filters` (7x7/2 convolution, BatchNorm, ReLU, 3x3/2 max-pool) |
    | `stage_1` | 4 | `num_filters` / 4 `num_filters` |
    | `stage_2` | 8 | 2 `num_filters` / 8 `num_filters` |
    | `stage_3` | 16 | 4 `num_filters` / 16 `num_filters` |
    | `stage_4` | 32 | 8 `num_filters` / 32 `num_filters` (2048 for ResNet-50) |

    An input of H x W gives maps of ceil(H / stride) x ceil(W / stride) (each stride-2
    layer rounds up). The parameters are the same in both modes, so one checkpoint serves
    classification and a backbone.

Parameter names: `stem_conv`, `stem_bn`, `stage_{s}_block_{b}` (s from 1, b from 0) holding
`conv1`, `bn1`, `conv2`, `bn2` (and `conv3`, `bn3` in a bottleneck; the zero-initialised
scale is the block's last BatchNorm) and, where the shape changes, the shortcut projection
`proj_conv`, `proj_bn`; the classifier is `head`. Kernels are `[kh, kw, in, out]`
(`flax.linen.Conv`'s layout) whatever `conv_impl` computes them with.

BatchNorm in training:
  - `bn_axis_name`: the batch statistics of a training step are computed over the global
    batch, averaged over this pmap / shard_map axis (synchronised BatchNorm). The
    classification model sets it to the core trainer's axis (`scenic.train_lib.steps.AXIS`);
    `config.model.bn_axis_name = None` keeps per-device statistics.
  - `freeze_batch_norm=True`: always normalise with the running averages and never update
    them (DETR's FrozenBatchNorm2d). Their scale and bias are still parameters; freeze them
    too with `config.optimizer.frozen_params = (FROZEN_BATCH_NORM_PARAMS,)`, the regex
    `.*bn\\d?/(scale|bias)` (it matches `stem_bn`, every `bn1`..`bn3` and `proj_bn`, and
    nothing else). `(stem_.*|stage_1_.*)` freezes the stem and the first stage as well, as
    DETR does with torchvision's ResNet-50.

Hugging Face `transformers` ResNets (v1.5 too) convert both ways with
`params_from_hf_resnet` and `hf_resnet_state_dict`; that includes the backbone inside HF's
`DetrForObjectDetection` with `use_timm_backbone=False` (pass its key prefix).

Convolutions (`conv_impl`, measured in tools/README.md): XLA:CPU's convolution is mostly
slower than a matrix multiply for 1x1 kernels (up to 2.7x) and 10-100x slower when the
output map is smaller than the kernel, e.g. a 3x3 convolution on ResNet-50's 1x1 or 2x2
last stage at 32x32 or 64x64 input. `'auto'` computes 1x1 convolutions as a matrix
multiply of the strided input, kxk ones with XLA's convolution unless the output is smaller
than the kernel, then as a matrix multiply of the kernel's shifted slices (im2col);
`'xla'` uses XLA's convolution everywhere (what `flax.linen.Conv` does) and `'im2col'`
matrix multiplies everywhere. A ResNet-50 forward + backward pass with `'auto'` took 1.3x,
4.0x and 5.9x less time than with `'xla'` at 224x224, 64x64 and 32x32 on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scenic.common_lib.config_utils import ConfigError
from scenic.model_lib.base_models.classification_model import ClassificationModel

#: depth -> (residual blocks per stage, bottleneck blocks?)
BLOCK_SIZES = {
    10: ((1, 1, 1, 1), False),  # not in the paper: one block a stage, for tests and demos
    18: ((2, 2, 2, 2), False),
    26: ((2, 2, 2, 2), True),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
    200: ((3, 24, 36, 3), True),
}
#: Feature map -> its stride with respect to the input (`return_features=True`).
FEATURE_STRIDES = {"stem": 4, "stage_1": 4, "stage_2": 8, "stage_3": 16, "stage_4": 32}
CONV_IMPLS = ("auto", "xla", "im2col")
#: `optimizer.frozen_params` regex for every BatchNorm scale and bias.
FROZEN_BATCH_NORM_PARAMS = r".*bn\d?/(scale|bias)"
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# He et al.'s initialisation as torchvision does it (normal, fan-out, gain 2).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv2d(x: jnp.ndarray, kernel: jnp.ndarray, stride: int = 1, impl: str = "auto"):
    """`x` [B, H, W, in] convolved with `kernel` [kh, kw, in, out] at `stride`, zero
    padding of kh // 2, kw // 2 on each side (PyTorch's, not 'SAME': symmetric also at
    stride 2), computed as `conv_formulation` says for `impl` (`ResNet.conv_impl`)."""
    kh, kw = kernel.shape[:2]
    pads = ((kh // 2, kh // 2), (kw // 2, kw // 2))
    if conv_formulation(x.shape[1:3], (kh, kw), stride, impl) == "xla":
        return jax.lax.conv_general_dilated(
            x, kernel, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    if kh == kw == 1:
        return jnp.dot(x[:, ::stride, ::stride], kernel[0, 0])
    out_h, out_w = _output_size(x.shape[1:3], (kh, kw), stride)
    x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    columns = jnp.concatenate(
        [
            x[
                :,
                i : i + stride * (out_h - 1) + 1 : stride,
                j : j + stride * (out_w - 1) + 1 : stride,
            ]
            for i in range(kh)
            for j in range(kw)
        ],
        axis=-1,
    )  # [B, out_h, out_w, kh * kw * in], ordered like the kernel's leading axes
    return jnp.dot(columns, kernel.reshape(-1, kernel.shape[-1]))


def conv_formulation(in_size, kernel_size, stride: int, impl: str = "auto") -> str:
    """'xla' (`lax.conv_general_dilated`) or 'matmul' (im2col: a matrix multiply of the
    kernel's shifted slices; for 1x1 kernels of the strided input): how `conv2d` computes a
    convolution of an `in_size` (H, W) map with a `kernel_size` (kh, kw) kernel under
    `impl`. 'auto': matmul for 1x1 kernels and where the output is smaller than the kernel
    (XLA:CPU's convolution is 10-100x slower there), else XLA."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}.")
    if impl != "auto":
        return "xla" if impl == "xla" else "matmul"
    (kh, kw), (out_h, out_w) = kernel_size, _output_size(in_size, kernel_size, stride)
    if kh == kw == 1 or out_h < kh or out_w < kw:
        return "matmul"
    return "xla"


def _output_size(in_size, kernel_size, stride: int) -> tuple[int, int]:
    (h, w), (kh, kw) = in_size, kernel_size
    return (h + 2 * (kh // 2) - kh) // stride + 1, (w + 2 * (kw // 2) - kw) // stride + 1


def max_pool_3x3_s2(x: jnp.ndarray, impl: str = "auto") -> jnp.ndarray:
    """3x3 max-pool at stride 2 with one pixel of -inf padding (PyTorch's MaxPool2d(3, 2, 1)).
    Except for `impl='xla'` (`flax.linen.max_pool`), computed as the maximum of the nine
    shifted slices: 3-5x faster forward + backward on XLA:CPU (tools/README.md)."""
    if impl == "xla":
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    out_h, out_w = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    slices = [
        x[:, i : i + 2 * (out_h - 1) + 1 : 2, j : j + 2 * (out_w - 1) + 1 : 2]
        for i in range(3)
        for j in range(3)
    ]
    out = slices[0]
    for piece in slices[1:]:
        out = jnp.maximum(out, piece)
    return out


class Conv(nn.Module):
    """A bias-free 2D convolution with a `kernel` [k, k, in, out] (see `conv2d`)."""

    features: int
    kernel_size: int
    strides: int = 1
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel",
            conv_kernel_init,
            (self.kernel_size, self.kernel_size, x.shape[-1], self.features),
            jnp.float32,
        )
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        return conv2d(x, kernel, self.strides, self.conv_impl)


class ResidualBlock(nn.Module):
    """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 x4) residual block, v1.5: the stride
    is on the (first) 3x3 convolution; a 1x1 projection (strided) where the shape changes."""

    filters: int
    strides: int = 1
    bottleneck: bool = True
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, x, norm):
        out_features = 4 * self.filters if self.bottleneck else self.filters

        def conv(features, size, strides=1, *, name):
            return Conv(features, size, strides, self.conv_impl, self.dtype, name=name)

        if self.bottleneck:
            layers = [(self.filters, 1, 1), (self.filters, 3, self.strides), (out_features, 1, 1)]
        else:
            layers = [(self.filters, 3, self.strides), (out_features, 3, 1)]
        y = x
        for index, (features, size, strides) in enumerate(layers, start=1):
            y = conv(features, size, strides, name=f"conv{index}")(y)
            last = index == len(layers)
            y = norm(name=f"bn{index}", scale_init=nn.initializers.zeros if last else None)(y)
            if not last:
                y = nn.relu(y)
        shortcut = x
        if x.shape[-1] != out_features or self.strides != 1:
            shortcut = conv(out_features, 1, self.strides, name="proj_conv")(x)
            shortcut = norm(name="proj_bn")(shortcut)
        return nn.relu(shortcut + y)


class ResNet(nn.Module):
    """ResNet v1.5 classifier or backbone (see the module docstring for outputs and names).

    Attributes:
      num_classes: classes of the linear head (0 or None: no head).
      num_layers: depth, one of `BLOCK_SIZES` (10, 18, 26, 34, 50, 101, 152, 200).
      num_filters: width of the stem and the first stage (64 in the paper).
      return_features: return the dict of feature maps (`FEATURE_STRIDES`) and pooled
        outputs instead of the logits.
      freeze_batch_norm: normalise with the running averages also in training, and never
        update them.
      bn_axis_name: device axis over which training batch statistics are averaged
        (synchronised BatchNorm); None: per device.
      conv_impl: 'auto', 'xla' or 'im2col' (how convolutions are computed; see `conv2d`).
      dtype: compute dtype (parameters stay float32).
    """

    num_classes: int | None
    num_layers: int = 50
    num_filters: int = 64
    return_features: bool = False
    freeze_batch_norm: bool = False
    bn_axis_name: str | None = None
    conv_impl: str = "auto"
    dtype: Any = None

    @nn.compact
    def __call__(self, images, *, train: bool = False):
        if self.num_layers not in BLOCK_SIZES:
            raise ValueError(
                f"ResNet num_layers must be one of {sorted(BLOCK_SIZES)}, got {self.num_layers}."
            )
        if self.conv_impl not in CONV_IMPLS:
            raise ValueError(
                f"ResNet conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}."
            )
        block_sizes, bottleneck = BLOCK_SIZES[self.num_layers]
        use_running_average = not train or self.freeze_batch_norm

        def norm(*, name, scale_init=None):
            return nn.BatchNorm(
                use_running_average=use_running_average,
                momentum=BN_MOMENTUM,
                epsilon=BN_EPSILON,
                axis_name=None if use_running_average else self.bn_axis_name,
                scale_init=scale_init or nn.initializers.ones,
                dtype=self.dtype,
                name=name,
            )

        x = Conv(self.num_filters, 7, 2, self.conv_impl, self.dtype, name="stem_conv")(images)
        x = nn.relu(norm(name="stem_bn")(x))
        x = max_pool_3x3_s2(x, self.conv_impl)
        features = {"stem": x}
        for stage, num_blocks in enumerate(block_sizes):
            for block in range(num_blocks):
                x = ResidualBlock(
                    filters=self.num_filters * 2**stage,
                    strides=2 if stage > 0 and block == 0 else 1,
                    bottleneck=bottleneck,
                    conv_impl=self.conv_impl,
                    dtype=self.dtype,
                    name=f"stage_{stage + 1}_block_{block}",
                )(x, norm)
            features[f"stage_{stage + 1}"] = x
        pooled = jnp.mean(x, axis=(1, 2))
        logits = None
        if self.num_classes:
            logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(pooled)
        if self.return_features:
            features["pre_logits"] = pooled
            if logits is not None:
                features["logits"] = logits
            return features
        return pooled if logits is None else logits


class ResNetClassificationModel(ClassificationModel):
    """ResNet with softmax cross-entropy; `config.model` holds the ResNet's constructor
    arguments. Training uses synchronised BatchNorm over the trainer's device axis unless
    `config.model.bn_axis_name` says otherwise (None: per-device statistics)."""

    def build_flax_model(self):
        return build_resnet(self.config.model, self.dataset_meta_data["num_classes"])

    @classmethod
    def model_config_keys(cls) -> tuple[str, ...]:
        excluded = ("num_classes", "parent", "name")
        return tuple(f.name for f in dataclasses.fields(ResNet) if f.name not in excluded)

    @classmethod
    def check_config(cls, config: ml_collections.ConfigDict) -> None:
        if (config.get("model") or {}).get("return_features"):
            raise ConfigError(
                "model.return_features=True makes the ResNet return feature maps, not the "
                "logits resnet_classification trains on; leave it False."
            )


def build_resnet(model_config: ml_collections.ConfigDict, num_classes: int) -> ResNet:
    """The ResNet of `config.model`, with `bn_axis_name` defaulting to the core trainer's
    device axis (synchronised BatchNorm)."""
    from scenic.train_lib.steps import AXIS

    kwargs = model_config.to_dict()
    kwargs.setdefault("bn_axis_name", AXIS)
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    return ResNet(num_classes=num_classes, **kwargs)


# --- Hugging Face transformers ResNet weights -------------------------------------------

_HF_BN = {"weight": ("params", "scale"), "bias": ("params", "bias")}
_HF_STATS = {"running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_HF_BLOCK = re.compile(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(layer\.(\d+)|shortcut)\.(.+)")


def params_from_hf_resnet(state_dict, prefix: str | None = None) -> dict:
    """Variables `{'params', 'batch_stats'}` of `ResNet` from a Hugging Face `transformers`
    ResNet state dict (`ResNetModel`, `ResNetForImageClassification`, `ResNetBackbone`,
    or DETR's backbone with its FrozenBatchNorm2d buffers).

    `prefix` is what precedes `embedder.` / `encoder.stages.` in the keys: '' for
    `ResNetModel` and `ResNetBackbone`, 'resnet.' for `ResNetForImageClassification`
    (found by itself when None), 'model.backbone.model.' inside `DetrForObjectDetection`
    (transformers 5; 'model.backbone.conv_encoder.model.' in 4.x). Keys outside it are
    ignored, except the classifier `classifier.1.*` of `ResNetForImageClassification`,
    which becomes `head`. Values may be torch tensors or arrays. A key under the prefix
    that is not a ResNet weight raises ValueError. The model must match: HF's
    `embedding_size` is `num_filters`, its `depths` and `layer_type` are
    `BLOCK_SIZES[num_layers]`.
    """
    if prefix is None:
        prefix = "resnet." if any(k.startswith("resnet.embedder.") for k in state_dict) else ""
    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}

    def put(collection, path, value):
        node = variables[collection]
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value

    def put_layer(module, kind, name, value):
        """`kind` 'convolution' or 'normalization' of our conv / BN `module` path."""
        conv_path, bn_path = module
        if kind == "convolution" and name == "weight":
            put("params", (*conv_path, "kernel"), value.transpose(2, 3, 1, 0))
        elif kind == "normalization" and name in _HF_BN:
            collection, leaf = _HF_BN[name]
            put(collection, (*bn_path, leaf), value)
        elif kind == "normalization" and name in _HF_STATS:
            collection, leaf = _HF_STATS[name]
            put(collection, (*bn_path, leaf), value)
        elif name != "num_batches_tracked":
            return False
        return True

    for key, value in state_dict.items():
        value = _to_numpy(value)
        if key in ("classifier.1.weight", "classifier.1.bias"):
            leaf = "kernel" if key.endswith("weight") else "bias"
            put("params", ("head", leaf), value.T if leaf == "kernel" else value)
            continue
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if not rest.startswith(("embedder.", "encoder.")):
            continue
        known = False
        if rest.startswith("embedder.embedder."):
            kind, _, name = rest[len("embedder.embedder.") :].partition(".")
            known = put_layer((("stem_conv",), ("stem_bn",)), kind, name, value)
        elif match := _HF_BLOCK.fullmatch(rest):
            stage, block, _, layer, tail = match.groups()
            scope = f"stage_{int(stage) + 1}_block_{block}"
            if layer is None:
                names = ((scope, "proj_conv"), (scope, "proj_bn"))
            else:
                number = int(layer) + 1
                names = ((scope, f"conv{number}"), (scope, f"bn{number}"))
            kind, _, name = tail.partition(".")
            known = put_layer(names, kind, name, value)
        if not known:
            raise ValueError(f"Not a Hugging Face ResNet weight: {key!r}.")
    if not variables["params"]:
        raise ValueError(f"No Hugging Face ResNet weights under the prefix {prefix!r}.")
    return variables


def hf_resnet_state_dict(variables, prefix: str = "") -> dict[str, np.ndarray]:
    """The inverse of `params_from_hf_resnet`: NumPy arrays named as in a `transformers`
    ResNet (`prefix` 'resnet.' for `ResNetForImageClassification`, whose `head` becomes
    `classifier.1`). Load with `torch.from_numpy` on each; HF's BatchNorm layers also hold
    a `num_batches_tracked` counter, not produced here."""
    params, stats = variables["params"], variables.get("batch_stats", {})
    out: dict[str, np.ndarray] = {}

    def layer(hf_name, conv_scope, bn_scope):
        out[f"{prefix}{hf_name}.convolution.weight"] = np.asarray(
            _lookup(params, conv_scope)["kernel"]
        ).transpose(3, 2, 0, 1)
        bn, bn_stats = _lookup(params, bn_scope), _lookup(stats, bn_scope)
        out[f"{prefix}{hf_name}.normalization.weight"] = np.asarray(bn["scale"])
        out[f"{prefix}{hf_name}.normalization.bias"] = np.asarray(bn["bias"])
        if bn_stats is not None:
            out[f"{prefix}{hf_name}.normalization.running_mean"] = np.asarray(bn_stats["mean"])
            out[f"{prefix}{hf_name}.normalization.running_var"] = np.asarray(bn_stats["var"])

    layer("embedder.embedder", ("stem_conv",), ("stem_bn",))
    for scope in sorted(k for k in params if k.startswith("stage_")):
        stage, block = (int(n) for n in scope.removeprefix("stage_").split("_block_"))
        hf_block = f"encoder.stages.{stage - 1}.layers.{block}"
        convs = sorted(k for k in params[scope] if re.fullmatch(r"conv\d", k))
        for conv in convs:
            number = int(conv[-1])
            layer(f"{hf_block}.layer.{number - 1}", (scope, conv), (scope, f"bn{number}"))
        if "proj_conv" in params[scope]:
            layer(f"{hf_block}.shortcut", (scope, "proj_conv"), (scope, "proj_bn"))
    if "head" in params:
        out["classifier.1.weight"] = np.asarray(params["head"]["kernel"]).T
        out["classifier.1.bias"] = np.asarray(params["head"]["bias"])
    return out


def _lookup(tree, path):
    for name in path:
        if tree is None or name not in tree:
            return None
        tree = tree[name]
    return tree


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; torch is not imported here
        value = value.detach().cpu().numpy()
    return np.asarray(value)
