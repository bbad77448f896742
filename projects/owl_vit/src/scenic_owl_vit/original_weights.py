"""OWL-ViT / OWLv2 weights from the original Scenic JAX checkpoints
(google-research/scenic, `scenic/projects/owl_vit`), as `model.OWLViT` and its parameters.

    model, params = load_original_owl_vit("owl2-b16-960-st-ngrams_c7e1b9a")
    out = model.apply({"params": params}, images_nhwc, text_tokens)

The released checkpoints are single Flax msgpack files (`flax.training.checkpoints`); they
are read with `flax.serialization.msgpack_restore`, which decodes arrays and never runs
code. A directory is read as `checkpoints.restore_checkpoint` reads one: its newest
`checkpoint_<step>` file. The parameters are found as the original's `load_variables`
finds them: under `optimizer/target` (pre-Optax trainers: the OWL-ViT v1 releases), else
under `params` (the OWLv2 releases); a bare parameter tree is read as well.

The model's settings are inferred from the arrays' shapes (patch size and width from
`conv1`, image size from the position embedding, layers from the blocks, heads from the
attention kernels, OWLv2 from an `objectness_head`), and the model gets the original's
conventions (`model.ORIGINAL_CONVENTIONS`); a shape set that is one of `model.VARIANTS`
builds that variant. Every array is checked against the layout the settings imply, and
ONE `PretrainedInitError` names all that are missing, mis-shaped or unexpected.

The original's names (`backbone/clip/...` is `clip_layers.CLIP`; the heads are in
`models.TextZeroShotDetectionModule`), ours in brackets:

  backbone/clip/visual/conv1/kernel            [p, p, 3, D]  (clip/visual/embedding)
  backbone/clip/visual/class_embedding         [D]           (visual/cls [1, 1, D])
  backbone/clip/visual/positional_embedding    [1+N, D]      (visual/posembed_input)
  backbone/clip/visual/ln_pre, ln_post                       (ln_pre, Transformer/encoder_norm)
  backbone/clip/{visual,text}/transformer/resblocks.i/       (Transformer/encoderblock_i/)
      attn/{query,key,value}  [D, H, D/H] + [H, D/H]; attn/out [H, D/H, D] + [D]
                                                  (MultiHeadDotProductAttention_1: as is)
      mlp/c_fc, mlp/c_proj                                   (MlpBlock_3/Dense_0, Dense_1)
      the attention's and the MLP's LayerNorms: see the namings below
                                                             (LayerNorm_0, LayerNorm_2)
  backbone/clip/text/token_embedding/embedding [V, W]        (text/token_embedding)
  backbone/clip/text/positional_embedding      [16, W]       (text/posembed_input)
  backbone/clip/text/ln_final                                (text/Transformer/encoder_norm)
  backbone/clip/text/text_projection/kernel    [W, E]        (text/projection)
  backbone/clip/logit_scale                    []            (clip/logit_scale)
  backbone/merged_class_token                  LayerNorm     (merged_norm)
  class_head/{Dense_0,logit_shift,logit_scale}               (class_head/{dense0,...})
  obj_box_head/Dense_{0,1,2}                                 (box_head/dense{0,1,2})
  objectness_head/Dense_{0,1,2}  OWLv2 only                  (objectness_head/dense{0,1,2})

Block namings: the original's `models._fix_old_checkpoints` converts two older ones to its
current module names, and all three are read here (detected per tower):

  OWL-ViT v1 releases (e.g. clip_vit_b32_b0203fc)  resblocks.i/  ln_1 (attention), ln_2 (MLP)
  OWLv2 releases (e.g. owl2-b16-960-st-ngrams)     resblocks.i/  ln_0 (attention), ln_1 (MLP)
  the current code (`clip/layers.py`)              resblocks_i/  ln_0 (attention), ln_1 (MLP)

Left out or filled in: `class_head/padding` and `class_head/padding_bias` of the v1
releases are unused (the original pops them on load) and dropped. The original's image
tower has no projection (`vision_return_map=True`; no `visual/proj`): ours, which the
detection outputs never use, is filled with zeros, so `clip.encode_image` gives zeros.

One computation differs: the original's text tower also masks attention to token id 0
(`text > 0`) on top of the causal mask; ours is causal only. Both give the same query
embeddings when zeros only follow the end-of-text token (as the tokenizer pads).
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping

import flax.serialization
import flax.traverse_util
import numpy as np

from scenic.train_lib.pretrained_init import PretrainedInitError
from scenic_owl_vit import model as owl_model

#: The settings a checkpoint's shapes give, as `model.OWLViT`'s attribute names.
SETTINGS = (
    "embed_dim", "image_size", "patch_size", "vision_width", "vision_layers", "vision_heads",
    "vision_mlp_dim", "vocab_size", "context_length", "text_width", "text_layers",
    "text_heads", "text_mlp_dim", "objectness",
)  # fmt: skip
#: Block namings: name -> (separator after `resblocks`, attention LayerNorm, MLP LayerNorm).
NAMINGS = {
    "v1": (".", "ln_1", "ln_2"),  # OWL-ViT v1 releases
    "v2": (".", "ln_0", "ln_1"),  # OWLv2 releases
    "current": ("_", "ln_0", "ln_1"),  # the original's current module names
}
#: Arrays of the v1 releases that the original drops on load.
UNUSED = ("class_head/padding", "class_head/padding_bias")
_CLIP = "backbone/clip"
_TOWERS = {"visual": "vision", "text": "text"}
_HEADS = {  # original head -> (ours, the original's layer names -> ours)
    "class_head": ("class_head", {"Dense_0": "dense0", "logit_shift": "logit_shift",
                                  "logit_scale": "logit_scale"}),
    "obj_box_head": ("box_head", {f"Dense_{i}": f"dense{i}" for i in range(3)}),
    "objectness_head": ("objectness_head", {f"Dense_{i}": f"dense{i}" for i in range(3)}),
}  # fmt: skip
_BLOCK = re.compile(r"resblocks([._])(\d+)/")


def load_original_owl_vit(
    path: str | pathlib.Path, variant: str | None = None
) -> tuple[owl_model.OWLViT, dict]:
    """`(model.OWLViT, params)` of the original Scenic OWL-ViT / OWLv2 checkpoint at `path`
    (a msgpack file, or a directory of `checkpoint_<step>` files), with the original's
    conventions. `variant` (one of `model.VARIANTS`): check the file against it; None:
    infer the settings from the arrays' shapes."""
    file = checkpoint_file(path)
    try:
        flat = read_original_params(file)
        if variant is None:
            kwargs = infer_original_kwargs(flat)
            network = build_model(kwargs)
        else:
            network = owl_model.owl_vit(variant)
            kwargs = {name: getattr(network, name) for name in SETTINGS}
        params = params_from_original(flat, kwargs)
    except PretrainedInitError as error:
        raise PretrainedInitError(
            f"{file} read as an original Scenic OWL-ViT checkpoint: {error}"
        ) from None
    return network, params


def checkpoint_file(path: str | pathlib.Path) -> pathlib.Path:
    """The msgpack file at `path`, or a directory's newest `checkpoint_<step>` file."""
    path = pathlib.Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        steps = {}
        for candidate in path.iterdir():
            match = re.fullmatch(r"checkpoint_(\d+)", candidate.name)
            if match and candidate.is_file():
                steps[int(match.group(1))] = candidate
        if steps:
            return steps[max(steps)]
        raise PretrainedInitError(f"{path} holds no checkpoint_<step> file.")
    raise PretrainedInitError(f"{path} does not exist.")


def read_original_params(file: str | pathlib.Path) -> dict[str, np.ndarray]:
    """The parameters of an original checkpoint file, flat ('/'-joined names), as stored
    (under `optimizer/target`, else `params`, else the whole tree)."""
    try:
        tree = flax.serialization.msgpack_restore(pathlib.Path(file).read_bytes())
    except Exception as error:  # msgpack raises several types for bytes it cannot decode
        raise PretrainedInitError(
            f"not a Flax msgpack checkpoint ({type(error).__name__}: {error})."
        ) from None
    if not isinstance(tree, dict):
        raise PretrainedInitError(
            f"not a Flax checkpoint: it decodes to a {type(tree).__name__}, not a dict."
        )
    if isinstance(tree.get("optimizer"), dict) and "target" in tree["optimizer"]:
        params = tree["optimizer"]["target"]  # pre-Optax trainers (the v1 releases)
    elif "params" in tree:
        params = tree["params"]
    else:
        params = tree
    if not isinstance(params, dict) or "backbone" not in params:
        raise PretrainedInitError(
            "no OWL-ViT parameters (a 'backbone' under 'optimizer/target', 'params' or the "
            f"top level); its top-level keys: {sorted(tree)}."
        )
    return flax.traverse_util.flatten_dict(params, sep="/")


def detect_naming(flat: Mapping[str, object], tower: str) -> str:
    """The block naming (a NAMINGS key) of one tower ('visual' or 'text') of an original
    checkpoint: `resblocks_` -> 'current'; else an `ln_2` -> 'v1', else 'v2'."""
    prefix = f"{_CLIP}/{tower}/transformer/"
    names = [name.removeprefix(prefix) for name in flat if name.startswith(prefix)]
    if any(name.startswith("resblocks_") for name in names):
        return "current"
    if any(re.match(r"resblocks\.\d+/ln_2/", name) for name in names):
        return "v1"
    return "v2"


def infer_original_kwargs(flat: Mapping[str, object]) -> dict:
    """`model.OWLViT`'s settings (`SETTINGS`) from the shapes of an original checkpoint's
    arrays (flat '/'-joined names; anything with a `.shape`)."""
    kwargs, missing = {}, []

    def shape(name, ndim):
        value = flat.get(name)
        if value is None or len(np.shape(value)) != ndim:
            missing.append(f"{name} ({ndim}-D)")
            return (0,) * ndim
        return tuple(np.shape(value))

    for tower, ours in _TOWERS.items():
        separator, _, _ = NAMINGS[detect_naming(flat, tower)]
        transformer = f"{_CLIP}/{tower}/transformer/"
        blocks = [_BLOCK.match(name.removeprefix(transformer)) for name in flat
                  if name.startswith(transformer)]  # fmt: skip
        indices = {int(match.group(2)) for match in blocks if match}
        block = f"{transformer}resblocks{separator}0/"
        width, heads, _ = shape(f"{block}attn/query/kernel", 3)
        kwargs[f"{ours}_layers"] = max(indices, default=-1) + 1
        kwargs[f"{ours}_heads"] = heads
        kwargs[f"{ours}_mlp_dim"] = shape(f"{block}mlp/c_fc/kernel", 2)[1]
        kwargs[f"{ours}_width"] = width
    patch, _, _, _ = shape(f"{_CLIP}/visual/conv1/kernel", 4)
    tokens, _ = shape(f"{_CLIP}/visual/positional_embedding", 2)
    kwargs["vocab_size"], _ = shape(f"{_CLIP}/text/token_embedding/embedding", 2)
    kwargs["context_length"], _ = shape(f"{_CLIP}/text/positional_embedding", 2)
    _, kwargs["embed_dim"] = shape(f"{_CLIP}/text/text_projection/kernel", 2)
    if missing:
        raise PretrainedInitError(
            "cannot infer the model's settings (name a variant instead): missing or of "
            "another rank: " + ", ".join(missing)
        )
    grid = round((tokens - 1) ** 0.5)
    if tokens < 2 or grid * grid != tokens - 1:
        raise PretrainedInitError(
            f"{_CLIP}/visual/positional_embedding has {tokens} rows, not 1 + a square grid."
        )
    kwargs["patch_size"], kwargs["image_size"] = patch, grid * patch
    kwargs["objectness"] = any(name.startswith("objectness_head/") for name in flat)
    return {name: kwargs[name] for name in SETTINGS}


def build_model(kwargs: Mapping) -> owl_model.OWLViT:
    """`model.owl_vit(name)` if `kwargs` (SETTINGS) are one of `model.VARIANTS`', else an
    `OWLViT` with them and the original's conventions."""
    for name in owl_model.VARIANTS:
        candidate = owl_model.owl_vit(name)
        if all(getattr(candidate, key) == kwargs[key] for key in SETTINGS):
            return candidate
    return owl_model.OWLViT(**kwargs, **owl_model.ORIGINAL_CONVENTIONS, eos_token_id=None)


def original_layout(kwargs: Mapping, namings: Mapping[str, str] | None = None) -> dict:
    """Every array name of an original checkpoint of `model.OWLViT(**kwargs)`'s settings
    (flat, '/'-joined), with the block naming of each tower (`{'visual': 'v1', ...}`,
    default 'current'), mapped to `(shape, our name)`."""
    k, namings = kwargs, {"visual": "current", "text": "current", **(namings or {})}
    layout = {}
    for tower, ours in _TOWERS.items():
        separator, attention_norm, mlp_norm = NAMINGS[namings[tower]]
        D, H, M = k[f"{ours}_width"], k[f"{ours}_heads"], k[f"{ours}_mlp_dim"]
        for i in range(k[f"{ours}_layers"]):
            block = f"{_CLIP}/{tower}/transformer/resblocks{separator}{i}/"
            mine = f"clip/{tower}/Transformer/encoderblock_{i}/"
            for norm, our_norm in ((attention_norm, "LayerNorm_0"), (mlp_norm, "LayerNorm_2")):
                for part in ("scale", "bias"):
                    layout[f"{block}{norm}/{part}"] = ((D,), f"{mine}{our_norm}/{part}")
            attention = f"{mine}MultiHeadDotProductAttention_1/"
            for projection in ("query", "key", "value"):
                kernel, bias = f"{projection}/kernel", f"{projection}/bias"
                layout[f"{block}attn/{kernel}"] = ((D, H, D // H), f"{attention}{kernel}")
                layout[f"{block}attn/{bias}"] = ((H, D // H), f"{attention}{bias}")
            layout[f"{block}attn/out/kernel"] = ((H, D // H, D), f"{attention}out/kernel")
            layout[f"{block}attn/out/bias"] = ((D,), f"{attention}out/bias")
            for name, our_name, shapes in (("c_fc", "Dense_0", ((D, M), (M,))),
                                           ("c_proj", "Dense_1", ((M, D), (D,)))):  # fmt: skip
                for part, part_shape in zip(("kernel", "bias"), shapes):
                    layout[f"{block}mlp/{name}/{part}"] = (
                        part_shape, f"{mine}MlpBlock_3/{our_name}/{part}")  # fmt: skip
    D, W, E, P = k["vision_width"], k["text_width"], k["embed_dim"], k["patch_size"]
    tokens = (k["image_size"] // P) ** 2 + 1
    norms = {
        "visual/ln_pre": ("clip/visual/ln_pre", D),
        "visual/ln_post": ("clip/visual/Transformer/encoder_norm", D),
        "text/ln_final": ("clip/text/Transformer/encoder_norm", W),
    }
    for name, (our_name, width) in norms.items():
        for part in ("scale", "bias"):
            layout[f"{_CLIP}/{name}/{part}"] = ((width,), f"{our_name}/{part}")
    for part in ("scale", "bias"):
        layout[f"backbone/merged_class_token/{part}"] = ((D,), f"merged_norm/{part}")
    layout.update({
        f"{_CLIP}/visual/conv1/kernel": ((P, P, 3, D), "clip/visual/embedding/kernel"),
        f"{_CLIP}/visual/class_embedding": ((D,), "clip/visual/cls"),
        f"{_CLIP}/visual/positional_embedding":
            ((tokens, D), "clip/visual/posembed_input/pos_embedding"),
        f"{_CLIP}/text/token_embedding/embedding":
            ((k["vocab_size"], W), "clip/text/token_embedding/embedding"),
        f"{_CLIP}/text/positional_embedding":
            ((k["context_length"], W), "clip/text/posembed_input/pos_embedding"),
        f"{_CLIP}/text/text_projection/kernel": ((W, E), "clip/text/projection/kernel"),
        f"{_CLIP}/logit_scale": ((), "clip/logit_scale"),
    })  # fmt: skip
    outputs = {"class_head": (E, 1, 1), "obj_box_head": (D, D, 4), "objectness_head": (D, D, 1)}
    for head, (our_head, names) in _HEADS.items():
        if head == "objectness_head" and not k["objectness"]:
            continue
        for (name, our_name), out in zip(names.items(), outputs[head]):
            layout[f"{head}/{name}/kernel"] = ((D, out), f"{our_head}/{our_name}/kernel")
            layout[f"{head}/{name}/bias"] = ((out,), f"{our_head}/{our_name}/bias")
    return layout


def check_original_params(flat: Mapping[str, object], kwargs: Mapping) -> dict:
    """The layout (`original_layout`, each tower's naming detected) that `flat` fits; ONE
    PretrainedInitError naming every array it lacks, has in another shape or does not
    expect, if any."""
    layout = original_layout(kwargs, {tower: detect_naming(flat, tower) for tower in _TOWERS})
    problems = []
    for name, (shape, _) in layout.items():
        if name not in flat:
            problems.append(f"{name}: missing (expected {shape})")
        elif not _is_numeric(flat[name]):
            problems.append(f"{name}: a {type(flat[name]).__name__}, not a numeric array")
        elif np.shape(flat[name]) != shape:
            problems.append(f"{name}: {np.shape(flat[name])}, expected {shape}")
    kind = "an OWLv2" if kwargs["objectness"] else "an OWL-ViT (v1)"
    problems += [f"{name}: not part of {kind} model of these settings" for name in flat
                 if name not in layout and name not in UNUSED]  # fmt: skip
    if problems:
        plural = "s" if len(problems) > 1 else ""
        raise PretrainedInitError(f"{len(problems)} problem{plural}:\n  " + "\n  ".join(problems))
    return layout


def params_from_original(flat: Mapping[str, object], kwargs: Mapping) -> dict:
    """`model.OWLViT(**kwargs)`'s parameters (nested, float32 NumPy) from an original
    checkpoint's arrays (flat '/'-joined names, as `read_original_params` gives them),
    checked first (`check_original_params`)."""
    layout = check_original_params(flat, kwargs)
    out = {}
    for name, (_, our_name) in layout.items():
        value = np.asarray(flat[name], np.float32)
        if our_name == "clip/visual/cls":
            value = value[None, None]
        elif our_name.endswith("posembed_input/pos_embedding"):
            value = value[None]
        out[our_name] = value
    out["clip/visual/projection/kernel"] = np.zeros(
        (kwargs["vision_width"], kwargs["embed_dim"]), np.float32
    )  # the original's image tower has none; unused by the detection outputs
    return flax.traverse_util.unflatten_dict(out, sep="/")


def _is_numeric(value) -> bool:
    """A number array (bfloat16 and the other ml_dtypes floats included)."""
    try:
        dtype = np.asarray(value).dtype
    except (TypeError, ValueError):
        return False
    return dtype.kind in "iuf" or dtype.name.startswith(("bfloat16", "float8"))
