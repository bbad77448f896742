"""`init_from` formats for OWL-ViT training: start from the weights people have.

Importing this module (`scenic_owl_vit.models` does) registers three formats with the
core's `init_from` (`scenic.train_lib.pretrained_init`), so that a config says

    config.init_from = {"checkpoint": "/data/clip-vit-base-patch32",  # format detected
                        "reinit": HEAD_PATTERNS}

and training starts from those weights. Each `read` returns the file's arrays under our
OWL-ViT parameter names ({'/'-joined name: float32 array}); the core then matches them to
the model, resamples the image position embedding to the model's grid (bilinear, class
token kept) and names every array that does not fit.

  hf_clip_for_owl_vit  a Hugging Face `CLIPModel` folder (config.json with model_type
                       'clip' + model.safetensors / pytorch_model.bin), e.g.
                       openai/clip-vit-base-patch32: the two towers, read by
                       `scenic_baselines.clip_weights`, under 'clip/...'. The text position
                       embedding is cut to the model's context length (CLIP's first 16 of
                       77 positions, as OWL-ViT's text tower uses them). The detection heads
                       are not in the file: a config must keep them fresh with
                       `reinit=HEAD_PATTERNS` (chosen here rather than `allow_missing=True`,
                       which would also keep fresh, silently, any tower array the file
                       lacked: with `reinit` every other parameter must load).
  owl_vit_original     an original Scenic OWL-ViT / OWLv2 checkpoint (a Flax msgpack file
                       such as clip_vit_b32_b0203fc or owl2-b16-960-st-ngrams_c7e1b9a, or a
                       folder of checkpoint_<step> files), read by
                       `scenic_owl_vit.original_weights`: towers and heads. The original's
                       image tower has no projection; ours (unused by detection) gets zeros.
  hf_owl_vit           a Hugging Face `OwlViTForObjectDetection` / `Owlv2ForObjectDetection`
                       folder (model_type 'owlvit' / 'owlv2'), read by `scenic_owl_vit.weights`:
                       towers and heads, for fine-tuning a released detector. Those models
                       compute with Hugging Face's conventions (`weights.HF_CONVENTIONS`);
                       a config that wants them sets `model.merged_norm_epsilon=1e-5` and
                       `model.gelu_approximate=False`.

Detection looks at names only: a folder's config.json `model_type`; for an original
checkpoint, the first MiB of the msgpack file (its map keys 'backbone' and 'clip' come
first). An original checkpoint saved as `checkpoint_<step>` is also claimed by
`scenic_baselines`' 'scenic_flax' (ViT) format: set `init_from.format` to
'owl_vit_original' for it.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping

import flax.traverse_util
import numpy as np

from scenic.train_lib import pretrained_init
from scenic.train_lib.pretrained_init import PretrainedInitError
from scenic_baselines import clip_weights
from scenic_owl_vit import original_weights, weights

#: The parameters a CLIP checkpoint lacks: OWL-ViT's merged-token LayerNorm and heads
#: (`init_from.reinit` for 'hf_clip_for_owl_vit'); the objectness head is OWLv2's.
HEAD_PATTERNS = ("merged_norm/.*", "class_head/.*", "box_head/.*")
OBJECTNESS_PATTERN = "objectness_head/.*"
#: How many leading bytes of a msgpack file `detect` reads.
SNIFF_BYTES = 1 << 20
#: msgpack's encodings of the map keys 'backbone' and 'clip' (fixstr: 0xa0 + length).
_BACKBONE_KEY, _CLIP_KEY = b"\xa8backbone", b"\xa4clip"
_MSGPACK_MAP_BYTES = (*range(0x80, 0x90), 0xDE, 0xDF)  # fixmap, map16, map32

FORMATS = {
    "hf_clip_for_owl_vit": "Hugging Face CLIPModel folder (OWL-ViT towers)",
    "owl_vit_original": "original Scenic OWL-ViT checkpoint (Flax msgpack)",
    "hf_owl_vit": "Hugging Face OwlViT/Owlv2ForObjectDetection folder",
}


# ---------------------------------------------------------------- detect


def hf_model_type(path: pathlib.Path) -> str | None:
    """The `model_type` of the Hugging Face folder at `path` (its config.json), else None;
    never raises."""
    try:
        config_file = pathlib.Path(path) / "config.json"
        if not config_file.is_file():
            return None
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not a dict
        return None
    return model_type if isinstance(model_type, str) else None


def is_original_checkpoint(path: pathlib.Path) -> bool:
    """Whether `path` (a file, or a folder's newest checkpoint_<step>) is a msgpack map whose
    first MiB holds the keys 'backbone' and 'clip' (OWL-ViT's `backbone/clip/...`)."""
    try:
        path = pathlib.Path(path)
        if path.is_dir() and hf_model_type(path) is not None:
            return False
        with original_weights.checkpoint_file(path).open("rb") as f:
            head = f.read(SNIFF_BYTES)
    except (OSError, ValueError, PretrainedInitError):
        return False
    return (
        bool(head)
        and head[0] in _MSGPACK_MAP_BYTES
        and (_BACKBONE_KEY in head and _CLIP_KEY in head)
    )


# ---------------------------------------------------------------- read


def read_hf_clip(path: pathlib.Path, model_shapes: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    """A Hugging Face CLIPModel folder's towers under OWL-ViT's names ('clip/...'), read by
    `clip_weights.read_hf_clip_for_init` (which cuts the text position embedding)."""
    kwargs = clip_weights.clip_kwargs_from_hf_config(_hf_config(path))
    _check_towers(kwargs, model_shapes)
    tower_shapes = {name.removeprefix("clip/"): shape for name, shape in model_shapes.items()}
    flat = clip_weights.read_hf_clip_for_init(path, tower_shapes)
    return {f"clip/{name}": value for name, value in flat.items()}


def read_original(path: pathlib.Path, model_shapes: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    """An original Scenic OWL-ViT / OWLv2 checkpoint's parameters under our names."""
    flat = original_weights.read_original_params(original_weights.checkpoint_file(path))
    kwargs = original_weights.infer_original_kwargs(flat)
    _check_towers(kwargs, model_shapes)
    return _flat(original_weights.params_from_original(flat, kwargs))


def read_hf_owl_vit(path: pathlib.Path, model_shapes: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    """A Hugging Face OwlViT / Owlv2 detection folder's parameters under our names."""
    config = _hf_config(path)
    kwargs = weights.owl_kwargs_from_hf_config(config)
    _check_towers(kwargs, model_shapes)
    state = clip_weights.read_hf_state_dict(path)
    return _flat(weights.params_from_hf_owl_vit(state, kwargs, config["model_type"]))


def _hf_config(path: pathlib.Path) -> dict:
    return clip_weights.read_hf_config(path)


def _check_towers(kwargs: Mapping, model_shapes: Mapping[str, tuple]) -> None:
    """One clear error when the file's towers are another CLIP than the model's (patch size,
    widths), instead of one line per mis-shaped array."""
    patch = model_shapes.get("clip/visual/embedding/kernel")
    tokens = model_shapes.get("clip/text/token_embedding/embedding")
    mine, theirs = {}, {}
    if patch is not None and len(patch) == 4:
        mine.update(patch_size=patch[0], vision_width=patch[3])
        theirs.update(patch_size=kwargs["patch_size"], vision_width=kwargs["vision_width"])
    if tokens is not None and len(tokens) == 2:
        mine["text_width"], theirs["text_width"] = tokens[1], kwargs["text_width"]
    differ = [f"{key} {theirs[key]} (model: {mine[key]})" for key in mine
              if mine[key] != theirs[key]]  # fmt: skip
    if differ:
        raise PretrainedInitError(
            f"its towers are not the model's: {', '.join(differ)}. Pick the model.variant "
            "that matches the checkpoint."
        )


def _flat(params) -> dict[str, np.ndarray]:
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    return {name: np.asarray(value, np.float32) for name, value in flat.items()}


# ---------------------------------------------------------------- registry


def _detect_hf(*model_types: str):
    def detect(path: pathlib.Path) -> bool:
        return pathlib.Path(path).is_dir() and hf_model_type(path) in model_types

    return detect


INIT_FROM_FORMATS = {
    "hf_clip_for_owl_vit": pretrained_init.CheckpointFormat(
        "hf_clip_for_owl_vit", FORMATS["hf_clip_for_owl_vit"], _detect_hf("clip"), read_hf_clip
    ),
    "owl_vit_original": pretrained_init.CheckpointFormat(
        "owl_vit_original", FORMATS["owl_vit_original"], is_original_checkpoint, read_original
    ),
    "hf_owl_vit": pretrained_init.CheckpointFormat(
        "hf_owl_vit", FORMATS["hf_owl_vit"], _detect_hf("owlvit", "owlv2"), read_hf_owl_vit
    ),
}
for _format in INIT_FROM_FORMATS.values():
    pretrained_init.register_format(_format)
