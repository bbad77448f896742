"""OWL-ViT / OWLv2 weights from Hugging Face `OwlViTForObjectDetection` and
`Owlv2ForObjectDetection` folders, as `model.OWLViT` and its parameters.

    model, params = load_hf_owl_vit("owlv2-base-patch16-ensemble/")   # a local folder
    out = model.apply({"params": params}, images_nhwc, text_tokens)

The folder holds config.json and model.safetensors (or a sharded index, or a
pytorch_model.bin, read with `torch.load(weights_only=True)`: tensors only, never code).
The CLIP towers (`owlvit.*` / `owlv2.*`) are read by `scenic_baselines.clip_weights`; the
heads here. Every tensor is checked against the layout the config implies, and ONE
`PretrainedInitError` names all that are missing, mis-shaped or unexpected.

The model gets Hugging Face's conventions (`HF_CONVENTIONS`, see `model`'s docstring): the
merged-token LayerNorm's epsilon from the vision config's `layer_norm_eps` (1e-5; the
original's is 1e-6), the exact GELU in the box and objectness heads (the original's is the
tanh approximation), padded queries at float32's minimum (the original's -1e6), and text
pooled at the highest token id (Hugging Face's OWL-ViT text tower ignores `eos_token_id`).
Hugging Face's OWLv2 image processor pads images with 0.0 (the original: 0.5 grey); feed
the same padded images to both when comparing.

Layout changes beyond CLIP's (torch -> ours): Linear weights `[out, in]` -> Dense kernels
`[in, out]`; the merged-token `layer_norm` -> `merged_norm`; `box_head.dense{0,1,2}`,
`class_head.{dense0,logit_shift,logit_scale}` and `objectness_head.dense{0,1,2}` keep their
names.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Mapping

import flax.traverse_util
import numpy as np

from scenic.train_lib.pretrained_init import PretrainedInitError
from scenic_baselines import clip_weights
from scenic_owl_vit import model as owl_model

#: transformers' OwlViT/Owlv2 text and vision config defaults where they differ from
#: CLIP's (`clip_weights.TEXT_DEFAULTS` / `VISION_DEFAULTS`), for configs that omit them.
TEXT_DEFAULTS = {**clip_weights.TEXT_DEFAULTS, "max_position_embeddings": 16}
VISION_DEFAULTS = {
    "owlvit": {**clip_weights.VISION_DEFAULTS, "image_size": 768, "patch_size": 32},
    "owlv2": {**clip_weights.VISION_DEFAULTS, "image_size": 768, "patch_size": 16},
}
#: Hugging Face's conventions (the vision config's `layer_norm_eps` is added per folder).
HF_CONVENTIONS = dict(gelu_approximate=False,
                      padded_query_logit=float(np.finfo(np.float32).min))  # fmt: skip
_HEADS = {
    "box_head": ("dense0", "dense1", "dense2"),
    "class_head": ("dense0", "logit_shift", "logit_scale"),
    "objectness_head": ("dense0", "dense1", "dense2"),
}
#: Non-persistent buffers older transformers versions may have written: read, then dropped.
_BUFFERS = re.compile(r"box_bias|(owlvit|owlv2)\.(text|vision)_model\.embeddings\.position_ids")


def load_hf_owl_vit(path: str | pathlib.Path) -> tuple[owl_model.OWLViT, dict]:
    """`(model.OWLViT, params)` of the Hugging Face OwlViT/Owlv2ForObjectDetection folder at
    `path`, with Hugging Face's conventions."""
    folder = pathlib.Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise PretrainedInitError(f"{folder} holds no config.json of a Hugging Face OWL-ViT.")
    config = json.loads(config_file.read_text())
    kwargs = owl_kwargs_from_hf_config(config)
    try:
        state = clip_weights.read_hf_state_dict(folder)
        params = params_from_hf_owl_vit(state, kwargs, config["model_type"])
    except PretrainedInitError as error:
        raise PretrainedInitError(
            f"{folder} read as Hugging Face {config['model_type']} detection model: {error}"
        ) from None
    return owl_model.OWLViT(**kwargs), params


def owl_kwargs_from_hf_config(config: Mapping) -> dict:
    """`model.OWLViT`'s constructor arguments from a Hugging Face OwlViTConfig/Owlv2Config."""
    kind = config.get("model_type")
    if kind not in VISION_DEFAULTS:
        raise PretrainedInitError(
            f"config.json is of model_type {kind!r}, not 'owlvit' or 'owlv2'."
        )
    text = {**TEXT_DEFAULTS, **config.get("text_config", {})}
    vision = {**VISION_DEFAULTS[kind], **config.get("vision_config", {})}
    clip_config = {"model_type": "clip", "text_config": text, "vision_config": vision,
                   "projection_dim": config.get("projection_dim", 512)}  # fmt: skip
    kwargs = clip_weights.clip_kwargs_from_hf_config(clip_config)
    if kwargs["embed_dim"] != kwargs["text_width"]:
        raise PretrainedInitError(
            f"projection_dim ({kwargs['embed_dim']}) differs from the text hidden_size "
            f"({kwargs['text_width']}): the class head projects to the latter, the text "
            "queries have the former."
        )
    return {
        **kwargs,
        "eos_token_id": None,  # Hugging Face's OWL-ViT pools at the highest id, always
        "objectness": kind == "owlv2",
        "merged_norm_epsilon": float(vision["layer_norm_eps"]),
        **HF_CONVENTIONS,
    }


def hf_layout(kwargs: Mapping, kind: str) -> dict[str, tuple[int, ...]]:
    """Every tensor name of a Hugging Face OWL-ViT / OWLv2 detection model with
    `model.OWLViT(**kwargs)`'s settings, and its shape."""
    layout = {_hf_clip_name(name, kind): shape
              for name, shape in clip_weights.hf_layout(kwargs).items()}  # fmt: skip
    D, E = kwargs["vision_width"], kwargs["embed_dim"]
    outputs = {"box_head": (D, D, 4), "class_head": (E, 1, 1), "objectness_head": (D, D, 1)}
    for head, names in _HEADS.items():
        if head == "objectness_head" and not kwargs["objectness"]:
            continue
        for name, out in zip(names, outputs[head]):
            layout[f"{head}.{name}.weight"], layout[f"{head}.{name}.bias"] = (out, D), (out,)
    layout["layer_norm.weight"] = layout["layer_norm.bias"] = (D,)
    return layout


def params_from_hf_owl_vit(state_dict: Mapping, kwargs: Mapping, kind: str) -> dict:
    """`model.OWLViT(**kwargs)`'s parameters (nested, float32) from a Hugging Face
    OwlViT/Owlv2ForObjectDetection state dict of NumPy arrays (`clip_weights.read_hf_state_dict`;
    `kind` "owlvit" or "owlv2"), checked first."""
    state = {k: np.asarray(np.asarray(v), np.float32) for k, v in state_dict.items()}
    layout = hf_layout(kwargs, kind)
    problems = []
    for name, shape in layout.items():
        if name not in state:
            problems.append(f"{name}: missing (expected {shape})")
        elif state[name].shape != shape:
            problems.append(f"{name}: {state[name].shape}, expected {shape}")
    problems += [f"{name}: not part of a {kind} detection model" for name in state
                 if name not in layout and not _BUFFERS.fullmatch(name)]  # fmt: skip
    if problems:
        plural = "s" if len(problems) > 1 else ""
        raise PretrainedInitError(f"{len(problems)} problem{plural}:\n  " + "\n  ".join(problems))
    clip_state = {}
    for name in clip_weights.hf_layout(kwargs):
        clip_state[name] = state[_hf_clip_name(name, kind)]
    out = {"clip": clip_weights.params_from_hf_clip(clip_state, kwargs)}
    heads = {}
    for head, names in _HEADS.items():
        if head == "objectness_head" and not kwargs["objectness"]:
            continue
        heads[head] = {name: {"kernel": state[f"{head}.{name}.weight"].T,
                              "bias": state[f"{head}.{name}.bias"]} for name in names}  # fmt: skip
    out.update(heads)
    out["merged_norm"] = {"scale": state["layer_norm.weight"], "bias": state["layer_norm.bias"]}
    return flax.traverse_util.unflatten_dict(flax.traverse_util.flatten_dict(out))


def _hf_clip_name(clip_name: str, kind: str) -> str:
    """A CLIPModel tensor's name in an OWL-ViT detection model: under `owlvit.` / `owlv2.`,
    with the vision tower's `pre_layernorm` spelled correctly."""
    return f"{kind}." + clip_name.replace("pre_layrnorm", "pre_layernorm")
