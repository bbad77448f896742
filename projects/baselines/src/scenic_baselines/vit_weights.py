"""ViT weights from the files people actually have, as `vit.ViT`'s parameters.

Pretrained ViTs are published in five layouts, and the original Scenic's loaders failed on
most of them (a KeyError on a raw ViT `.npz`, position-embedding shape mismatches).
`load_vit_params(path)` reads any of them into our ViT's flat {'/'-joined name: array}:

  vit_npz         the original ViT / AugReg `.npz` (google-research/vision_transformer):
                  '/'-joined Flax names with the pre-linen numbering `LayerNorm_0`,
                  `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`. These ARE
                  our names, so for training the core reads such a file itself
                  (`init_from` format 'npz'); this module only checks it.
  big_vision_npz  big_vision: a `params/` prefix (optimizer state beside it is ignored),
                  linen numbering (`MultiHeadDotProductAttention_0`, `LayerNorm_1`,
                  `MlpBlock_0`), `encoderblock_{i}` or SCANNED `encoderblock` blocks with a
                  leading layer axis, the top-level `pos_embedding` (added before the class
                  token: its class-token row is zero here) and the MAP head `MAPHead_0`.
  timm            timm's VisionTransformer `.safetensors` (a file or a hub folder): fused
                  `attn.qkv`, torch layouts ([out, in] Linear, [out, in, kh, kw] conv).
  hf_vit          a Hugging Face `ViTForImageClassification` / `ViTModel` folder
                  (config.json + model.safetensors, a sharded index, or pytorch_model.bin)
                  or its .safetensors file (a lone .bin file: give the format); the
                  pooler of a `ViTModel` is `pre_logits`. Names as transformers writes
                  its files (`vit.encoder.layer.{i}.attention.attention.query`, ...).
  scenic_flax     the original Scenic's `checkpoint_<step>` (Flax msgpack of a TrainState:
                  `params`, or `optimizer/target` in older ones; head `output_projection`),
                  or a workdir holding them (the latest step).

Local files only, and nothing that can run code is unpickled: `.bin` files go through
`torch.load(weights_only=True)`, msgpack through `flax.serialization.msgpack_restore`,
`.safetensors` through the small reader below (no extra dependency). Each file is first
checked against its format's layout: a file that does not fit raises ONE
`PretrainedInitError` naming every missing, mis-shaped or unexpected array, in the file's
own names, and the format it was read as. timm and Hugging Face files do not record the
number of attention heads in their weights: it comes from config.json, from the model
being initialised, or from `num_heads=`.

Training from them: importing this module (scenic_baselines.models does) registers the
formats, except vit_npz, with the core's `init_from`, so

    scenic-baselines train --config vit_b16_imagenet --config.init_from.checkpoint=PATH \\
        --config.init_from.reinit='head/.*'

works for any of these files: the core replaces the head (`reinit`), resizes position
embeddings to the new image size (224 -> 384) and reports whatever does not fit the model.
The format is DETECTED from the arrays' names, which the five layouts do not share, so no
guess is involved; `init_from.format=NAME` forces one (a file of another layout is then
reported as not being in it). Detection is the default because a user holding a file
rarely knows which of these layouts it is in.

One difference is not in the weights: timm and Hugging Face ViTs use the exact (erf) GELU
(and Hugging Face a LayerNorm epsilon of 1e-12), our ViT by default the tanh GELU and 1e-6,
as the JAX originals do. With the same weights their logits differ from ours by about 2e-4
relative (measured on a random 4-layer ViT; the epsilon's share was below 1e-6); for the
same logits set `config.model.exact_gelu = True` (timm, Hugging Face) and
`config.model.layer_norm_epsilon = 1e-12` (Hugging Face), as the golden tests do.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import pathlib
import re
import struct
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from scenic.train_lib import pretrained_init
from scenic.train_lib.pretrained_init import PretrainedInitError

#: Format name -> how messages describe it.
FORMATS = {
    "vit_npz": "original ViT / AugReg .npz",
    "big_vision_npz": "big_vision ViT .npz",
    "timm": "timm ViT .safetensors",
    "hf_vit": "Hugging Face ViT",
    "scenic_flax": "original Scenic ViT checkpoint (Flax msgpack)",
}
POSEMB = "Transformer/posembed_input/pos_embedding"
SCANNED = "Transformer/encoderblock/"
#: Our block's children (the pre-linen numbering) and big_vision / Scenic's (linen's).
BLOCK = ("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2", "MlpBlock_3")
LINEN_BLOCK = ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "MlpBlock_0")
_LINEN = re.compile(
    r"^Transformer/encoderblock(_\d+)?/(MultiHeadDotProductAttention_0|MlpBlock_0)/"
)
_FLAX_BLOCK_INDEX = re.compile(r"^Transformer/encoderblock_(\d+)/")

Shape = tuple[int | None, ...]  # None: any size
Layout = dict[str, tuple[Shape, str | None]]  # name: (shape, optional group or None)


def detect_format(path: str | pathlib.Path) -> str | None:
    """The FORMATS name of the ViT weights at `path`, from their names; None if none fits."""
    path = pathlib.Path(path)
    for name, detect in _DETECT.items():
        try:
            if detect(path):
                return name
        except (OSError, ValueError, KeyError):
            continue
    return None


def load_vit_params(
    path: str | pathlib.Path, format: str | None = None, *, num_heads: int | None = None
) -> dict[str, np.ndarray]:
    """`vit.ViT`'s flat {'/'-joined name: array} from the ViT weights at `path`, read as
    `format` (one of FORMATS; None: detected). `num_heads` is needed for a timm file (and a
    Hugging Face weight file without its config.json)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise PretrainedInitError(f"ViT weights {path} do not exist.")
    name = format or detect_format(path)
    if name is None:
        raise PretrainedInitError(
            f"{path} is in none of the ViT weight formats ({', '.join(FORMATS)}); "
            "pass format= if it is one of them."
        )
    if name not in FORMATS:
        raise PretrainedInitError(
            f"Unknown ViT weight format {name!r}; known: {', '.join(FORMATS)}."
        )
    try:
        return _READ[name](path, num_heads)
    except PretrainedInitError as error:
        raise PretrainedInitError(f"{path} read as {FORMATS[name]} ({name}): {error}") from None


# ---------------------------------------------------------------- Flax layouts (npz, msgpack)


def _npz_names(path: pathlib.Path) -> list[str]:
    if not (path.is_file() and path.suffix == ".npz"):
        return []
    with np.load(path, allow_pickle=False) as data:
        return list(_strip_prefix(dict.fromkeys(data.files)))


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
    if path.suffix != ".npz" or not path.is_file():
        raise PretrainedInitError("not an .npz file.")
    with np.load(path, allow_pickle=False) as data:
        return _strip_prefix({name: data[name] for name in data.files})


def _strip_prefix(arrays: dict) -> dict:
    """The model's arrays of a checkpoint that also holds optimizer state: those under
    `params/` (big_vision) or `opt/target/` (flax.optim), without the prefix."""
    for prefix in ("params/", "opt/target/"):
        if any(name.startswith(prefix) for name in arrays):
            return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
    return arrays


def _is_vit_npz(path: pathlib.Path) -> bool:
    names = _npz_names(path)
    return "embedding/kernel" in names and not _is_linen_layout(names)


def _is_big_vision_npz(path: pathlib.Path) -> bool:
    names = _npz_names(path)
    return "embedding/kernel" in names and _is_linen_layout(names)


def _is_linen_layout(names: Iterable[str]) -> bool:
    """big_vision's (and Scenic's) ViT layout rather than the original one: linen's block
    names, scanned or not (a scanned block in this library's names is not big_vision's)."""
    names = list(names)
    return "pos_embedding" in names or any(_LINEN.match(name) for name in names)


def _is_scenic_checkpoint(path: pathlib.Path) -> bool:
    if path.is_file():
        return re.fullmatch(r"checkpoint_\d+", path.name) is not None
    return path.is_dir() and any(re.fullmatch(r"checkpoint_\d+", p.name) for p in path.iterdir())


def _read_scenic(path: pathlib.Path) -> dict[str, np.ndarray]:
    """The parameters of an original Scenic `checkpoint_<step>` (latest in a folder)."""
    from flax import serialization

    if path.is_dir():
        steps = [
            (int(p.name.split("_")[1]), p)
            for p in path.iterdir()
            if p.is_file() and re.fullmatch(r"checkpoint_\d+", p.name)
        ]
        if not steps:
            raise PretrainedInitError("the folder holds no checkpoint_<step> file.")
        path = max(steps)[1]
    try:
        state = serialization.msgpack_restore(path.read_bytes())
    except Exception as error:  # msgpack raises its own exception types
        raise PretrainedInitError(
            f"{path.name} is not a Flax msgpack checkpoint ({error})."
        ) from None
    if not isinstance(state, dict):
        raise PretrainedInitError(f"{path.name} holds no state dict.")
    params = state.get("params") or (state.get("optimizer") or {}).get("target")
    if not params:
        raise PretrainedInitError(
            f"{path.name} holds neither `params` (a Scenic TrainState) nor "
            f"`optimizer/target` (an older one); its top-level keys: {sorted(state)}."
        )
    return pretrained_init.flatten(params)


def _flax_block(D, H, hd, M, children) -> dict[str, Shape]:
    """A pre-LN encoder block's arrays under the given child names (`ln2` may be None)."""
    ln1, attention, ln2, mlp = children
    shapes = {f"{ln1}/scale": (D,), f"{ln1}/bias": (D,)}
    for projection in ("query", "key", "value"):
        shapes[f"{attention}/{projection}/kernel"] = (D, H, hd)
        shapes[f"{attention}/{projection}/bias"] = (H, hd)
    shapes[f"{attention}/out/kernel"] = (H, hd, D)
    shapes[f"{attention}/out/bias"] = (D,)
    if ln2:
        shapes[f"{ln2}/scale"], shapes[f"{ln2}/bias"] = (D,), (D,)
    shapes[f"{mlp}/Dense_0/kernel"], shapes[f"{mlp}/Dense_0/bias"] = (D, M), (M,)
    shapes[f"{mlp}/Dense_1/kernel"], shapes[f"{mlp}/Dense_1/bias"] = (M, D), (D,)
    return shapes


def _flax_layout(arrays: Mapping[str, np.ndarray]) -> Layout:
    """Every array a Flax ViT of this file's layout and sizes has (`_check` compares)."""
    D = _mode(v.shape[-1] for k, v in arrays.items() if k.endswith("/scale") and v.ndim)
    heads = _mode(
        v.shape[-2:] for k, v in arrays.items() if k.endswith("query/kernel") and v.ndim > 2
    )
    H, hd = heads or (None, None)
    M = _mode(
        v.shape[-1] for k, v in arrays.items() if re.search(r"MlpBlock_\d/Dense_0/kernel$", k)
    )
    block = _flax_block(D, H, hd, M, LINEN_BLOCK if _is_linen_layout(arrays) else BLOCK)
    layout: Layout = {}
    if any(name.startswith(SCANNED) for name in arrays):
        L = _mode(v.shape[0] for k, v in arrays.items() if k.startswith(SCANNED) and v.ndim)
        layout.update({SCANNED + k: ((L, *shape), None) for k, shape in block.items()})
    else:
        indices = [int(m.group(1)) for k in arrays if (m := _FLAX_BLOCK_INDEX.match(k))]
        for i in range(max(indices, default=-1) + 1):
            layout.update(
                {f"Transformer/encoderblock_{i}/{k}": (s, None) for k, s in block.items()}
            )
    layout["embedding/kernel"] = ((None, None, None, D), None)
    layout["embedding/bias"] = ((D,), None)
    layout["cls"] = ((1, 1, D), "cls")
    layout["pos_embedding" if "pos_embedding" in arrays else POSEMB] = ((1, None, D), "posemb")
    layout["Transformer/encoder_norm/scale"] = ((D,), None)
    layout["Transformer/encoder_norm/bias"] = ((D,), None)
    R = _size(arrays, "pre_logits/bias")
    layout["pre_logits/kernel"] = ((D, R), "pre_logits")
    layout["pre_logits/bias"] = ((R,), "pre_logits")
    head = (
        "output_projection" if any(k.startswith("output_projection/") for k in arrays) else "head"
    )
    K = _size(arrays, f"{head}/bias")
    layout[f"{head}/kernel"] = ((R if "pre_logits/bias" in arrays else D, K), "head")
    layout[f"{head}/bias"] = ((K,), "head")
    layout["MAPHead_0/probe"] = ((1, 1, D), "map")
    map_children = ("LayerNorm_0", "MultiHeadDotProductAttention_0", None, "MlpBlock_0")
    for name, shape in _flax_block(D, H, hd, M, map_children).items():
        layout[f"MAPHead_0/{name}"] = (shape, "map")
    return layout


def _from_flax(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A Flax ViT's arrays (original, big_vision or Scenic layout), checked, in our names."""
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    _check(arrays, _flax_layout(arrays))
    linen = _is_linen_layout(arrays)
    renames = dict(zip(LINEN_BLOCK, BLOCK, strict=True)) if linen else {}
    child = re.compile(r"^(Transformer/encoderblock_\d+/)([A-Za-z]+_\d+)/")
    out = {}
    for name, value in arrays.items():
        if name.startswith(SCANNED):  # unstack the leading layer axis
            for i, layer in enumerate(value):
                out[f"Transformer/encoderblock_{i}/{name[len(SCANNED) :]}"] = layer
        else:
            out[name] = value
    out = {child.sub(lambda m: m[1] + renames.get(m[2], m[2]) + "/", k): v for k, v in out.items()}
    out = {re.sub(r"^output_projection/", "head/", k): v for k, v in out.items()}
    out = {
        k.replace("MAPHead_0/MultiHeadDotProductAttention_0/", "MAPHead_0/MultiHeadAttention_0/"): v
        for k, v in out.items()
    }
    if "pos_embedding" in out:  # big_vision adds it to the patches before the class token
        posemb = out.pop("pos_embedding")
        tokens = posemb.shape[1]
        combined = math.isqrt(tokens) ** 2 + 1 == tokens  # its oldest layout had a class row
        if "cls" in out and not combined:
            posemb = np.concatenate([np.zeros_like(posemb[:, :1]), posemb], axis=1)
        out[POSEMB] = posemb
    return out


# ---------------------------------------------------------------- torch layouts (timm, HF)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _TorchNames:
    """Where a torch ViT keeps each array: module paths, `{i}` the block index."""

    block: str
    patch: str
    cls: str
    posemb: str
    norm1: str
    qkv: str | None  # one fused [q; k; v] projection ...
    qkv_split: tuple[str, str, str] | None  # ... or three
    out: str
    norm2: str
    fc1: str
    fc2: str
    norm: str
    head: str
    pre_logits: str | None = None
    ignored: tuple[str, ...] = ()  # read, then dropped
    embeddings_required: bool = False  # the class token and position embedding


TIMM = _TorchNames(
    block="blocks.{i}.",
    patch="patch_embed.proj",
    cls="cls_token",
    posemb="pos_embed",
    norm1="norm1",
    qkv="attn.qkv",
    qkv_split=None,
    out="attn.proj",
    norm2="norm2",
    fc1="mlp.fc1",
    fc2="mlp.fc2",
    norm="norm",
    head="head",
)
#: Hugging Face's names as its files hold them (the `vit.` prefix of a
#: ViTForImageClassification is stripped first; a ViTModel's files have none).
HF = _TorchNames(
    block="encoder.layer.{i}.",
    patch="embeddings.patch_embeddings.projection",
    cls="embeddings.cls_token",
    posemb="embeddings.position_embeddings",
    norm1="layernorm_before",
    qkv=None,
    qkv_split=("attention.attention.query", "attention.attention.key", "attention.attention.value"),
    out="attention.output.dense",
    norm2="layernorm_after",
    fc1="intermediate.dense",
    fc2="output.dense",
    norm="layernorm",
    head="classifier",
    pre_logits="pooler.dense",
    ignored=("embeddings.mask_token",),
    embeddings_required=True,
)


def _torch_layout(arrays: Mapping[str, np.ndarray], names: _TorchNames) -> Layout:
    norm_weights = (f".{names.norm1}.weight", f".{names.norm2}.weight", f"{names.norm}.weight")
    D = _mode(v.shape[-1] for k, v in arrays.items() if k.endswith(norm_weights) and v.ndim)
    M = _mode(
        v.shape[0] for k, v in arrays.items() if k.endswith(f".{names.fc1}.weight") and v.ndim
    )
    index = re.compile("^" + re.escape(names.block).replace(r"\{i\}", r"(\d+)"))
    indices = [int(m.group(1)) for k in arrays if (m := index.match(k))]
    layout: Layout = {}

    def linear(name, out_size, in_size, group=None):
        layout[f"{name}.weight"] = ((out_size, in_size), group)
        layout[f"{name}.bias"] = ((out_size,), group)

    for i in range(max(indices, default=-1) + 1):
        p = names.block.format(i=i)
        for norm in (names.norm1, names.norm2):
            layout[f"{p}{norm}.weight"] = layout[f"{p}{norm}.bias"] = ((D,), None)
        if names.qkv:
            linear(p + names.qkv, 3 * D if D else None, D)
        for projection in names.qkv_split or ():
            linear(p + projection, D, D)
        linear(p + names.out, D, D)
        linear(p + names.fc1, M, D)
        linear(p + names.fc2, D, M)
    required = None if names.embeddings_required else "cls"
    layout[f"{names.patch}.weight"] = ((D, None, None, None), None)
    layout[f"{names.patch}.bias"] = ((D,), None)
    layout[names.cls] = ((1, 1, D), required)
    layout[names.posemb] = ((1, None, D), None if names.embeddings_required else "posemb")
    layout[f"{names.norm}.weight"] = layout[f"{names.norm}.bias"] = ((D,), None)
    R = _size(arrays, f"{names.pre_logits}.bias") if names.pre_logits else None
    if names.pre_logits:
        linear(names.pre_logits, R, D, "pre_logits")
    linear(names.head, _size(arrays, f"{names.head}.bias"), R or D, "head")
    for name in names.ignored:  # read, then dropped
        layout[name] = ((1, 1, D), "ignored")
    return layout


def _from_torch(state_dict, names: _TorchNames, num_heads: int | None) -> dict[str, np.ndarray]:
    """A torch ViT state dict (NumPy or torch values), checked, in our names and layouts."""
    arrays = {k: _numpy(v) for k, v in state_dict.items()}
    _check(arrays, _torch_layout(arrays, names))
    D = arrays[f"{names.patch}.weight"].shape[0]
    if not num_heads:
        raise PretrainedInitError(
            "the number of attention heads is not in the weights: initialise a ViT with it, "
            "keep config.json beside the weights, or pass num_heads."
        )
    if D % num_heads:
        raise PretrainedInitError(f"width {D} does not split into {num_heads} heads.")
    H, hd = num_heads, D // num_heads

    def dense(name):  # torch Linear [out, in] -> Flax Dense kernel [in, out]
        return {"kernel": arrays[f"{name}.weight"].T, "bias": arrays[f"{name}.bias"]}

    def norm(name):
        return {"scale": arrays[f"{name}.weight"], "bias": arrays[f"{name}.bias"]}

    out = {
        "embedding": {
            "kernel": arrays[f"{names.patch}.weight"].transpose(2, 3, 1, 0),  # -> [kh, kw, in, out]
            "bias": arrays[f"{names.patch}.bias"],
        },
        "Transformer": {"encoder_norm": norm(names.norm)},
    }
    if names.cls in arrays:
        out["cls"] = arrays[names.cls]
    if names.posemb in arrays:
        out["Transformer"]["posembed_input"] = {"pos_embedding": arrays[names.posemb]}
    for i in range(len([k for k in arrays if k.endswith(f".{names.norm1}.weight")])):
        p = names.block.format(i=i)
        if names.qkv:  # rows: [q; k; v], each head-major
            weights = np.split(arrays[f"{p}{names.qkv}.weight"], 3)
            biases = np.split(arrays[f"{p}{names.qkv}.bias"], 3)
        else:
            weights = [arrays[f"{p}{name}.weight"] for name in names.qkv_split]
            biases = [arrays[f"{p}{name}.bias"] for name in names.qkv_split]
        attention = {
            projection: {"kernel": w.T.reshape(D, H, hd), "bias": b.reshape(H, hd)}
            for projection, w, b in zip(("query", "key", "value"), weights, biases, strict=True)
        }
        attention["out"] = {
            "kernel": arrays[f"{p}{names.out}.weight"].T.reshape(H, hd, D),
            "bias": arrays[f"{p}{names.out}.bias"],
        }
        out["Transformer"][f"encoderblock_{i}"] = {
            BLOCK[0]: norm(p + names.norm1),
            BLOCK[1]: attention,
            BLOCK[2]: norm(p + names.norm2),
            BLOCK[3]: {"Dense_0": dense(p + names.fc1), "Dense_1": dense(p + names.fc2)},
        }
    if f"{names.head}.weight" in arrays:
        out["head"] = dense(names.head)
    if names.pre_logits and f"{names.pre_logits}.weight" in arrays:
        out["pre_logits"] = dense(names.pre_logits)
    return pretrained_init.flatten(out)


def _numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (from a .bin file)
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def _is_timm(path: pathlib.Path) -> bool:
    file = path / "model.safetensors" if path.is_dir() else path
    return (
        file.suffix == ".safetensors" and "patch_embed.proj.weight" in _safetensors_header(file)[0]
    )


def _read_timm(path: pathlib.Path, num_heads: int | None) -> dict[str, np.ndarray]:
    file = path / "model.safetensors" if path.is_dir() else path
    if file.suffix != ".safetensors" or not file.is_file():
        raise PretrainedInitError("timm weights are read from a .safetensors file.")
    return _from_torch(read_safetensors(file), TIMM, num_heads)


def _is_hf(path: pathlib.Path) -> bool:
    if path.is_dir():
        config = path / "config.json"
        return config.is_file() and json.loads(config.read_text()).get("model_type") == "vit"
    if path.suffix != ".safetensors":
        return False
    return any(re.fullmatch(r"(vit\.)?embeddings\.patch_embeddings\.projection\.weight", name)
               for name in _safetensors_header(path)[0])  # fmt: skip


def _read_hf(path: pathlib.Path, num_heads: int | None) -> dict[str, np.ndarray]:
    folder = path if path.is_dir() else path.parent
    config = folder / "config.json"
    if config.is_file():
        num_heads = json.loads(config.read_text()).get("num_attention_heads", num_heads)
    state: dict = {}
    for file in _hf_weight_files(path):
        state.update(_read_torch_bin(file) if file.suffix == ".bin" else read_safetensors(file))
    if any(name.startswith("vit.") for name in state):
        state = {name.removeprefix("vit."): value for name, value in state.items()}
    return _from_torch(state, HF, num_heads)


def _hf_weight_files(path: pathlib.Path) -> list[pathlib.Path]:
    """The weight file(s) of a Hugging Face folder (or the given file itself)."""
    if path.is_file():
        return [path]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return [path / name]
    for name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / name).is_file():
            weight_map = json.loads((path / name).read_text()).get("weight_map") or {}
            if not weight_map:
                raise PretrainedInitError(f"{name} has no weight_map.")
            return [path / shard for shard in sorted(set(weight_map.values()))]
    raise PretrainedInitError(
        "the folder holds no model.safetensors, pytorch_model.bin or sharded index of them."
    )


def _read_torch_bin(path: pathlib.Path) -> dict:
    try:
        import torch
    except ImportError:
        raise PretrainedInitError(
            f"reading {path.name} needs PyTorch (pip install torch), or convert it to .safetensors."
        ) from None
    try:  # weights_only: tensors and plain containers, never code
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, ...
        raise PretrainedInitError(f"{path.name} is not a PyTorch state dict ({error}).") from None
    if not isinstance(state, Mapping):
        raise PretrainedInitError(f"{path.name} holds a {type(state).__name__}, not a state dict.")
    return dict(state)


# ---------------------------------------------------------------- safetensors


def _safetensors_dtypes() -> dict[str, np.dtype]:
    import ml_dtypes  # a JAX dependency: NumPy's bfloat16

    codes = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
             "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}  # fmt: skip
    return {**{k: np.dtype(v) for k, v in codes.items()}, "BF16": np.dtype(ml_dtypes.bfloat16)}


def _safetensors_header(path: pathlib.Path) -> tuple[dict, int]:
    """(header {name: {dtype, shape, data_offsets}}, offset of the data) of a .safetensors
    file: an 8-byte little-endian header length, the JSON header, then the raw data."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < length <= min(size - 8, 100 << 20):
            raise ValueError(f"{path.name} is not a .safetensors file.")
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    return header, 8 + length


def read_safetensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Every array of a .safetensors file, as NumPy (bfloat16 as ml_dtypes.bfloat16)."""
    path = pathlib.Path(path)
    try:
        header, start = _safetensors_header(path)
    except (ValueError, UnicodeDecodeError) as error:
        raise PretrainedInitError(str(error)) from None
    dtypes = _safetensors_dtypes()
    data = path.read_bytes()[start:]
    out = {}
    for name, info in header.items():
        dtype = dtypes.get(info.get("dtype"))
        begin, end = info.get("data_offsets", (0, -1))
        shape = tuple(info.get("shape", ()))
        if dtype is None:
            raise PretrainedInitError(f"{name}: unsupported safetensors dtype {info.get('dtype')}.")
        if not 0 <= begin <= end <= len(data) or end - begin != math.prod(shape) * dtype.itemsize:
            raise PretrainedInitError(f"{name}: data offsets {begin}..{end} do not fit {shape}.")
        out[name] = np.frombuffer(data, dtype, math.prod(shape), begin).reshape(shape)
    return out


# ---------------------------------------------------------------- checks


def _check(arrays: Mapping[str, np.ndarray], layout: Layout) -> None:
    """One PretrainedInitError naming every array of `layout` that is missing or
    mis-shaped in `arrays` and every array of `arrays` that `layout` lacks. An optional
    group (the head, the class token, ...) is required whole once one of its arrays is there."""
    present = {group for name, (_, group) in layout.items() if group and name in arrays}
    problems = []
    for name, (shape, group) in layout.items():
        if group is not None and group not in present:
            continue
        if name not in arrays:
            problems.append(f"{name}: missing (expected {_show(shape)})")
        elif not _fits(np.shape(arrays[name]), shape):
            problems.append(f"{name}: {_show(np.shape(arrays[name]))}, expected {_show(shape)}")
    unexpected = [name for name in arrays if name not in layout]
    if arrays and len(unexpected) == len(arrays):
        raise PretrainedInitError(
            f"none of its {len(arrays)} arrays belongs to this format (it holds e.g. "
            f"{', '.join(sorted(arrays)[:4])})."
        )
    problems += [f"{name}: not part of this format's ViT" for name in unexpected]
    if problems:
        plural = "s" if len(problems) > 1 else ""
        raise PretrainedInitError(f"{len(problems)} problem{plural}:\n  " + "\n  ".join(problems))


def _fits(shape: tuple, expected: Shape) -> bool:
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))


def _show(shape: Shape) -> str:
    """A shape as Python prints tuples, '*' for any size: (32,), (3, *, 16)."""
    sizes = ["*" if s is None else str(s) for s in shape]
    return "(" + ", ".join(sizes) + ("," if len(sizes) == 1 else "") + ")"


def _mode(values: Iterable):
    """The most common value (None if there is none): sizes are read off the arrays that
    agree, so one mis-shaped array is reported instead of every other one."""
    counts = collections.Counter(tuple(v) if isinstance(v, tuple) else v for v in values)
    return counts.most_common(1)[0][0] if counts else None


def _size(arrays: Mapping[str, np.ndarray], name: str) -> int | None:
    value = arrays.get(name)
    return value.shape[0] if value is not None and np.ndim(value) == 1 else None


# ---------------------------------------------------------------- registry


_READ: dict[str, Callable[[pathlib.Path, int | None], dict[str, np.ndarray]]] = {
    "vit_npz": lambda path, num_heads: _from_flax(_read_npz(path)),
    "big_vision_npz": lambda path, num_heads: _from_flax(_read_npz(path)),
    "timm": _read_timm,
    "hf_vit": _read_hf,
    "scenic_flax": lambda path, num_heads: _from_flax(_read_scenic(path)),
}
_DETECT: dict[str, Callable[[pathlib.Path], bool]] = {
    "vit_npz": _is_vit_npz,
    "big_vision_npz": _is_big_vision_npz,
    "timm": _is_timm,
    "hf_vit": _is_hf,
    "scenic_flax": _is_scenic_checkpoint,
}


def num_heads_of(model_shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """The number of attention heads of a ViT from its parameter shapes (None if none)."""
    for name, shape in model_shapes.items():
        if name.endswith(f"{BLOCK[1]}/query/kernel") and len(shape) == 3:
            return shape[1]
    return None


def _init_from_format(name: str) -> pretrained_init.CheckpointFormat:
    def detect(path: pathlib.Path) -> bool:
        try:
            return _DETECT[name](path)
        except (OSError, ValueError, KeyError):
            return False

    def read(path: pathlib.Path, model_shapes) -> dict[str, np.ndarray]:
        return _READ[name](path, num_heads_of(model_shapes))

    return pretrained_init.CheckpointFormat(name, FORMATS[name], detect, read)


# vit_npz holds our names: the core's own 'npz' format reads it.
INIT_FROM_FORMATS = {name: _init_from_format(name) for name in FORMATS if name != "vit_npz"}
for _format in INIT_FROM_FORMATS.values():
    pretrained_init.register_format(_format)
