"""CLIP weights from a Hugging Face `CLIPModel` folder or an OpenAI-layout state dict, as
`clip.CLIP` and its parameters.

    model, params = load_hf_clip("clip-vit-base-patch32/")   # a local folder
    out = model.apply({"params": params}, images_nhwc, token_ids)

The folder holds config.json and model.safetensors (or a sharded index, or a
pytorch_model.bin, read with `torch.load(weights_only=True)`: tensors only, never code).
The model's settings come from config.json (`clip_kwargs_from_hf_config`), with the
conventions HF CLIP computes with set explicitly: LayerNorm epsilon from `layer_norm_eps`
(1e-5), the MLP activation from `hidden_act` ('quick_gelu' for OpenAI's models, 'gelu' the
exact one), and the text pooling from `eos_token_id` (below). Every tensor is checked
against the layout the config implies; ONE `PretrainedInitError` names all that are
missing, mis-shaped or unexpected.

Layout changes (torch -> ours): Linear weights `[out, in]` -> Dense kernels `[in, out]`;
q/k/v projections -> `[D, heads, head_dim]` kernels and `[heads, head_dim]` biases, the
output projection -> `[heads, head_dim, D]`; the patch convolution `[D, C, p, p]` ->
`[p, p, C, D]`; the class embedding `[D]` -> `[1, 1, D]`; position embeddings `[L, D]` ->
`[1, L, D]`; LayerNorm `weight` -> `scale`.

Text pooling: Hugging Face pools at the highest token id when the text config's
`eos_token_id` is 2 (the value OpenAI's hub configs carry from before transformers PR
#24773; OpenAI's own rule) and at the first `eos_token_id` otherwise. Both give the same
result for OpenAI's tokenizer, whose end-of-text id (49407) is the vocabulary's highest;
`eos_token_id` of our model is set to match (None for the legacy 2).

OpenAI's layout (`load_openai_clip`; init_from format 'openai_clip'): the names of OpenAI's
CLIP code, which OpenCLIP keeps (its hub files `open_clip_model.safetensors`,
`open_clip_pytorch_model.bin`), for ViT and ResNet towers (`openai_resnet_tower`, batch
statistics included); the settings are read off the tensors as OpenAI's `build_model` does.

Not in the weights but in Hugging Face's forward: no clip of the logit scale. Ours clips
it at 100 (CLIP's rule); OpenAI's released scale is exactly log(100), so the two agree.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Mapping, Sequence

import flax.traverse_util
import numpy as np

from scenic.train_lib.pretrained_init import PretrainedInitError
from scenic_baselines import clip, vit_weights

#: transformers' CLIPTextConfig / CLIPVisionConfig / CLIPConfig defaults, for config.json
#: files that leave them out (the test checks they are still transformers').
TEXT_DEFAULTS = {
    "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048,
    "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "eos_token_id": 49407,
}  # fmt: skip
VISION_DEFAULTS = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "num_channels": 3, "image_size": 224, "patch_size": 32,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}  # fmt: skip
PROJECTION_DIM = 512
#: Hugging Face's text `eos_token_id` of configs written before PR #24773: pool at the
#: highest id instead.
LEGACY_EOS_TOKEN_ID = 2
#: Encoder-layer parts: Hugging Face's name -> ours under `encoderblock_i`.
_NORMS = {"layer_norm1": "LayerNorm_0", "layer_norm2": "LayerNorm_2"}
_ATTENTION = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "out_proj": "out"}
_MLP = {"mlp.fc1": "Dense_0", "mlp.fc2": "Dense_1"}
_TOWERS = {"text": "text_model", "visual": "vision_model"}
#: Non-persistent buffers that older transformers versions wrote to files: read, then dropped.
_BUFFERS = re.compile(r"(text|vision)_model\.embeddings\.position_ids")


def load_hf_clip(path: str | pathlib.Path) -> tuple[clip.CLIP, dict]:
    """`(clip.CLIP, params)` of the Hugging Face `CLIPModel` folder at `path`, so that
    `model.apply({'params': params}, images, tokens)` gives its embeddings and logits."""
    folder = pathlib.Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise PretrainedInitError(f"{folder} holds no config.json of a Hugging Face CLIPModel.")
    kwargs = clip_kwargs_from_hf_config(json.loads(config_file.read_text()))
    try:
        params = params_from_hf_clip(read_hf_state_dict(folder), kwargs)
    except PretrainedInitError as error:
        raise PretrainedInitError(f"{folder} read as Hugging Face CLIPModel: {error}") from None
    return clip.CLIP(**kwargs), params


def read_hf_state_dict(folder: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Every tensor of a Hugging Face model folder (model.safetensors, a sharded index, or
    pytorch_model.bin read with `torch.load(weights_only=True)`), by name, as NumPy arrays;
    for models built on CLIP (OWL-ViT) as well."""
    state: dict = {}
    for file in vit_weights._hf_weight_files(pathlib.Path(folder)):
        if file.suffix == ".bin":
            state.update(vit_weights._read_torch_bin(file))
        else:
            state.update(vit_weights.read_safetensors(file))
    return {name: vit_weights._numpy(value) for name, value in state.items()}


def clip_kwargs_from_hf_config(config: Mapping) -> dict:
    """`clip.CLIP`'s constructor arguments from a Hugging Face CLIPConfig (config.json)."""
    if config.get("model_type") != "clip":
        raise PretrainedInitError(
            f"config.json is of model_type {config.get('model_type')!r}, not 'clip' (CLIPModel)."
        )
    # Configs from transformers < 4.28 may hold the settings in `*_config_dict` instead.
    text = {**TEXT_DEFAULTS, **config.get("text_config", {}), **config.get("text_config_dict", {})}
    vision = {**VISION_DEFAULTS, **config.get("vision_config", {}),
              **config.get("vision_config_dict", {})}  # fmt: skip
    for key in ("hidden_act", "layer_norm_eps"):
        if text[key] != vision[key]:
            raise PretrainedInitError(
                f"the text and vision towers differ in {key} ({text[key]!r} and "
                f"{vision[key]!r}); clip.CLIP uses one for both."
            )
    if text["hidden_act"] not in clip.ACTIVATIONS:
        raise PretrainedInitError(
            f"hidden_act {text['hidden_act']!r} is not one of {sorted(clip.ACTIVATIONS)}."
        )
    if vision["num_channels"] != 3:
        raise PretrainedInitError(f"num_channels is {vision['num_channels']}, not 3.")
    eos = text["eos_token_id"]
    return dict(
        embed_dim=config.get("projection_dim", PROJECTION_DIM),
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        vision_width=vision["hidden_size"],
        vision_layers=vision["num_hidden_layers"],
        vision_heads=vision["num_attention_heads"],
        vision_mlp_dim=vision["intermediate_size"],
        vocab_size=text["vocab_size"],
        context_length=text["max_position_embeddings"],
        text_width=text["hidden_size"],
        text_layers=text["num_hidden_layers"],
        text_heads=text["num_attention_heads"],
        text_mlp_dim=text["intermediate_size"],
        hidden_act=text["hidden_act"],
        layer_norm_epsilon=float(text["layer_norm_eps"]),
        eos_token_id=None if eos == LEGACY_EOS_TOKEN_ID else eos,
    )


def hf_layout(kwargs: Mapping) -> dict[str, tuple[int, ...]]:
    """Every tensor name of a Hugging Face CLIPModel with `clip.CLIP(**kwargs)`'s settings
    (as `clip_kwargs_from_hf_config` gives them), and its shape."""
    k = kwargs
    width = {"text": k["text_width"], "visual": k["vision_width"]}
    layout = {"logit_scale": ()}
    for tower, prefix in _TOWERS.items():
        D, prefix = width[tower], f"{prefix}."
        mlp = k["text_mlp_dim"] if tower == "text" else k["vision_mlp_dim"]
        num_layers = k["text_layers"] if tower == "text" else k["vision_layers"]
        for i in range(num_layers):
            p = f"{prefix}encoder.layers.{i}."
            for norm in _NORMS:
                layout[f"{p}{norm}.weight"] = layout[f"{p}{norm}.bias"] = (D,)
            for projection in _ATTENTION:
                layout[f"{p}self_attn.{projection}.weight"] = (D, D)
                layout[f"{p}self_attn.{projection}.bias"] = (D,)
            layout[f"{p}mlp.fc1.weight"], layout[f"{p}mlp.fc1.bias"] = (mlp, D), (mlp,)
            layout[f"{p}mlp.fc2.weight"], layout[f"{p}mlp.fc2.bias"] = (D, mlp), (D,)
    Dt, Dv, P = width["text"], width["visual"], k["patch_size"]
    tokens = (k["image_size"] // P) ** 2 + 1
    layout.update({
        "text_model.embeddings.token_embedding.weight": (k["vocab_size"], Dt),
        "text_model.embeddings.position_embedding.weight": (k["context_length"], Dt),
        "text_model.final_layer_norm.weight": (Dt,),
        "text_model.final_layer_norm.bias": (Dt,),
        "text_projection.weight": (k["embed_dim"], Dt),
        "vision_model.embeddings.class_embedding": (Dv,),
        "vision_model.embeddings.patch_embedding.weight": (Dv, 3, P, P),
        "vision_model.embeddings.position_embedding.weight": (tokens, Dv),
        "vision_model.pre_layrnorm.weight": (Dv,),  # sic: Hugging Face's spelling
        "vision_model.pre_layrnorm.bias": (Dv,),
        "vision_model.post_layernorm.weight": (Dv,),
        "vision_model.post_layernorm.bias": (Dv,),
        "visual_projection.weight": (k["embed_dim"], Dv),
    })  # fmt: skip
    return layout


def check_state_dict(state: Mapping[str, np.ndarray], kwargs: Mapping) -> None:
    """One PretrainedInitError naming every tensor of the layout `kwargs` implies that
    `state` lacks or has in another shape, and every tensor of `state` it does not expect."""
    layout = hf_layout(kwargs)
    problems = []
    for name, shape in layout.items():
        if name not in state:
            problems.append(f"{name}: missing (expected {shape})")
        elif tuple(np.shape(state[name])) != shape:
            problems.append(f"{name}: {tuple(np.shape(state[name]))}, expected {shape}")
    problems += [
        f"{name}: not part of a CLIPModel"
        for name in state
        if name not in layout and not _BUFFERS.fullmatch(name)
    ]
    if problems:
        plural = "s" if len(problems) > 1 else ""
        raise PretrainedInitError(f"{len(problems)} problem{plural}:\n  " + "\n  ".join(problems))


def params_from_hf_clip(state_dict: Mapping, kwargs: Mapping) -> dict:
    """`clip.CLIP(**kwargs)`'s parameters (nested, float32) from a Hugging Face CLIPModel
    state dict (NumPy arrays or torch tensors), checked first (`check_state_dict`)."""
    state = {k: np.asarray(vit_weights._numpy(v), np.float32) for k, v in state_dict.items()}
    check_state_dict(state, kwargs)
    k = kwargs
    heads = {"text": k["text_heads"], "visual": k["vision_heads"]}
    layers = {"text": k["text_layers"], "visual": k["vision_layers"]}
    out = {"logit_scale": state["logit_scale"]}

    def norm(name):
        return {"scale": state[f"{name}.weight"], "bias": state[f"{name}.bias"]}

    for tower, prefix in _TOWERS.items():
        for i in range(layers[tower]):
            p, ours = f"{prefix}.encoder.layers.{i}.", f"{tower}/Transformer/encoderblock_{i}/"
            for hf, name in _NORMS.items():
                out.update(_prefixed(f"{ours}{name}/", norm(p + hf)))
            for hf, name in _ATTENTION.items():
                weight, bias = state[f"{p}self_attn.{hf}.weight"], state[f"{p}self_attn.{hf}.bias"]
                D, H = weight.shape[1], heads[tower]
                if name == "out":  # [D_out, H*hd] -> [H, hd, D_out]
                    kernel, bias = weight.T.reshape(H, D // H, -1), bias
                else:  # [H*hd, D_in] -> [D_in, H, hd]
                    kernel, bias = weight.T.reshape(D, H, -1), bias.reshape(H, -1)
                attention = f"{ours}MultiHeadDotProductAttention_1/{name}/"
                out[f"{attention}kernel"], out[f"{attention}bias"] = kernel, bias
            for hf, name in _MLP.items():
                out[f"{ours}MlpBlock_3/{name}/kernel"] = state[f"{p}{hf}.weight"].T
                out[f"{ours}MlpBlock_3/{name}/bias"] = state[f"{p}{hf}.bias"]
    embeddings = "vision_model.embeddings."
    out.update({
        "text/token_embedding/embedding": state["text_model.embeddings.token_embedding.weight"],
        "text/posembed_input/pos_embedding":
            state["text_model.embeddings.position_embedding.weight"][None],
        "text/projection/kernel": state["text_projection.weight"].T,
        "visual/embedding/kernel": state[f"{embeddings}patch_embedding.weight"].transpose(
            2, 3, 1, 0
        ),
        "visual/cls": state[f"{embeddings}class_embedding"][None, None],
        "visual/posembed_input/pos_embedding": state[f"{embeddings}position_embedding.weight"][
            None
        ],
        "visual/projection/kernel": state["visual_projection.weight"].T,
    })  # fmt: skip
    out.update(_prefixed("text/Transformer/encoder_norm/", norm("text_model.final_layer_norm")))
    out.update(_prefixed("visual/ln_pre/", norm("vision_model.pre_layrnorm")))
    out.update(_prefixed("visual/Transformer/encoder_norm/", norm("vision_model.post_layernorm")))
    return flax.traverse_util.unflatten_dict(out, sep="/")


_BN = "weight|bias|running_mean|running_var"
#: OpenAI's / OpenCLIP's ResNet-tower tensor names (after `visual.`), as regexes -> ours.
_RESNET_NAMES = [
    (r"conv(\d)\.weight", r"conv\1/kernel"),
    (rf"bn(\d)\.({_BN})", r"bn\1/\2"),
    (r"layer(\d)\.(\d+)\.conv(\d)\.weight", r"layer\1_\2/conv\3/kernel"),
    (rf"layer(\d)\.(\d+)\.bn(\d)\.({_BN})", r"layer\1_\2/bn\3/\4"),
    (r"layer(\d)\.(\d+)\.downsample\.0\.weight", r"layer\1_\2/downsample_conv/kernel"),
    (rf"layer(\d)\.(\d+)\.downsample\.1\.({_BN})", r"layer\1_\2/downsample_bn/\3"),
    (r"attnpool\.positional_embedding", r"attnpool/positional_embedding"),
    (r"attnpool\.([qkvc])_proj\.(weight|bias)", r"attnpool/\1_proj/\2"),
]
#: BatchNorm tensors: torch's name -> (collection, ours).
_BATCH_NORM = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def openai_resnet_tower(state_dict: Mapping, prefix: str = "visual.") -> dict:
    """`{'params': ..., 'batch_stats': ...}` of `clip_resnet.ResNetImageEncoder` from the
    tensors under `prefix` of an OpenAI / OpenCLIP CLIP state dict (NumPy arrays or torch
    tensors): convolutions `[O, I, kh, kw]` -> `[kh, kw, I, O]`, Linear weights transposed,
    BatchNorm weight / bias / running statistics -> scale / bias / mean / var (PyTorch's
    `num_batches_tracked` counters are dropped). A tensor of no known name is an error."""
    out: dict[str, np.ndarray] = {}
    unknown = []
    for name, value in state_dict.items():
        if not name.startswith(prefix) or name.endswith("num_batches_tracked"):
            continue
        key = name[len(prefix) :]
        ours = next(
            (re.sub(f"^{p}$", r, key) for p, r in _RESNET_NAMES if re.fullmatch(p, key)), None
        )
        if ours is None:
            unknown.append(name)
            continue
        array = np.array(vit_weights._numpy(value), np.float32)  # a copy: torch's may move
        path, _, leaf = ours.rpartition("/")
        collection = "params"
        module = path.rpartition("/")[2]
        if module.startswith("bn") or module == "downsample_bn":
            collection, leaf = _BATCH_NORM[leaf]
        elif leaf == "kernel" and array.ndim == 4:
            array = array.transpose(2, 3, 1, 0)
        elif leaf == "weight":  # the attention pool's Linear layers
            leaf, array = "kernel", array.T
        out[f"{collection}/{path}/{leaf}"] = array
    if unknown or not out:
        raise PretrainedInitError(
            f"not a CLIP ResNet tower under {prefix!r}: "
            + (f"unknown tensors {unknown[:5]}" if unknown else "no tensors there")
        )
    return flax.traverse_util.unflatten_dict(out, sep="/")


def _prefixed(prefix: str, tree: Mapping) -> dict:
    return {f"{prefix}{name}": value for name, value in tree.items()}


# ---------------------------------------------------------------- init_from

TEXT_POSEMB = "text/posembed_input/pos_embedding"


def read_hf_clip_for_init(
    path: pathlib.Path, model_shapes: Mapping[str, tuple]
) -> dict[str, np.ndarray]:
    """A Hugging Face `CLIPModel` folder's parameters, '/'-joined, float32, for `init_from`:
    the text position embedding is cut to the model's context length when that is shorter
    (CLIP's first positions: what a shorter text tower, e.g. OWL-ViT's 16, reads)."""
    folder = pathlib.Path(path)
    kwargs = clip_kwargs_from_hf_config(read_hf_config(folder))
    params = params_from_hf_clip(read_hf_state_dict(folder), kwargs)
    flat = {
        name: np.asarray(value, np.float32)
        for name, value in flax.traverse_util.flatten_dict(params, sep="/").items()
    }
    wanted = model_shapes.get(TEXT_POSEMB)
    have = flat[TEXT_POSEMB]
    if wanted is not None and len(wanted) == 3 and wanted[1] < have.shape[1]:
        flat[TEXT_POSEMB] = have[:, : wanted[1]]
    return flat


def read_hf_config(folder: pathlib.Path) -> dict:
    """A Hugging Face folder's config.json; PretrainedInitError says what is wrong."""
    config_file = pathlib.Path(folder) / "config.json"
    if not config_file.is_file():
        raise PretrainedInitError("the folder holds no config.json.")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as error:
        raise PretrainedInitError(f"config.json is not JSON: {error}") from None
    if not isinstance(config, dict):
        raise PretrainedInitError("config.json does not hold a JSON object.")
    return config


def _register_init_format() -> None:
    from scenic.train_lib import pretrained_init

    pretrained_init.register_format(
        pretrained_init.CheckpointFormat(
            "hf_clip",
            "a Hugging Face CLIPModel folder, for model 'clip' (set init_from.format)",
            # Never detected: OWL-ViT's 'hf_clip_for_owl_vit' reads the same folders.
            lambda path: False,
            read_hf_clip_for_init,
        )
    )


_register_init_format()


# ---------------------------------------------------------------- OpenAI / OpenCLIP layout

#: OpenCLIP's weight-file names (its hub copies of OpenAI's and LAION's models).
OPENCLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
#: Metadata OpenAI's state dicts carry beside the tensors.
_OPENAI_METADATA = ("input_resolution", "context_length", "vocab_size")
_OPENAI_BLOCK = {"ln_1": "LayerNorm_0", "ln_2": "LayerNorm_2"}
_OPENAI_MLP = {"mlp.c_fc": "Dense_0", "mlp.c_proj": "Dense_1"}


def read_openai_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """The tensors of a CLIP state dict in OpenAI's layout: OpenCLIP's hub files
    (`OPENCLIP_FILES`), or any .safetensors / .bin / .pt state dict with those names (.bin
    and .pt read with `torch.load(weights_only=True)`: never code). OpenAI's own .pt
    downloads are TorchScript archives, which hold code: those are refused (load one with
    `torch.jit.load` yourself and save its `state_dict()`)."""
    path = pathlib.Path(path)
    if path.is_dir():
        files = [path / name for name in OPENCLIP_FILES if (path / name).is_file()]
        if not files:
            raise PretrainedInitError(f"the folder holds neither of {', '.join(OPENCLIP_FILES)}.")
        path = files[0]
    if not path.is_file():
        raise PretrainedInitError(f"{path} does not exist.")
    if path.suffix == ".safetensors":
        state = vit_weights.read_safetensors(path)
    else:
        if _is_torchscript(path):
            raise PretrainedInitError(
                f"{path.name} is a TorchScript archive (OpenAI's own download), which holds "
                "code; load it with torch.jit.load yourself and torch.save its state_dict(), "
                "or use OpenCLIP's copy (open_clip_model.safetensors)."
            )
        state = vit_weights._read_torch_bin(path)
    return {
        name: vit_weights._numpy(value)
        for name, value in state.items()
        if name not in _OPENAI_METADATA
    }


def _is_torchscript(path: pathlib.Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def _count(state: Mapping, prefix: str) -> int:
    """How many numbered children `prefix<i>.` the state dict has."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for name in state if (m := pattern.match(name))})


def clip_kwargs_from_openai_state(state: Mapping[str, np.ndarray]) -> dict:
    """`clip.CLIP`'s constructor arguments read off an OpenAI-layout state dict, as OpenAI's
    `build_model` does: a ViT tower when `visual.proj` is there, else the ResNet; attention
    heads of 64 channels (ResNet: width * 32 // 64). Not in the weights: the activation
    (OpenAI's QuickGELU by default; OpenCLIP's LAION models use 'gelu')."""
    try:
        kwargs = dict(
            embed_dim=state["text_projection"].shape[1],
            context_length=state["positional_embedding"].shape[0],
            vocab_size=state["token_embedding.weight"].shape[0],
            text_width=state["ln_final.weight"].shape[0],
            text_layers=_count(state, "transformer.resblocks."),
            text_mlp_dim=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        )
        kwargs["text_heads"] = kwargs["text_width"] // 64
        if "visual.proj" in state:
            width, _, patch, _ = state["visual.conv1.weight"].shape
            grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            kwargs.update(
                image_size=patch * grid, patch_size=patch, vision_width=width,
                vision_layers=_count(state, "visual.transformer.resblocks."),
                vision_heads=width // 64,
                vision_mlp_dim=state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            )  # fmt: skip
        else:
            width = state["visual.layer1.0.conv1.weight"].shape[0]
            grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            kwargs.update(
                image_size=grid * 32, vision_width=width, vision_heads=width * 32 // 64,
                vision_layers=tuple(_count(state, f"visual.layer{i}.") for i in range(1, 5)),
            )  # fmt: skip
    except KeyError as error:
        raise PretrainedInitError(f"not an OpenAI-layout CLIP state dict: no {error}") from None
    return kwargs


def _openai_encoder(take, prefix, ours, layers, heads, out) -> None:
    """One tower's residual blocks (`{prefix}resblocks.i.`) into `{ours}encoderblock_i/`:
    the fused q/k/v projection split, every Linear weight transposed. `take(name)`: a
    tensor as float32, marked as read."""
    for i in range(layers):
        p, o = f"{prefix}resblocks.{i}.", f"{ours}encoderblock_{i}/"
        for theirs, name in _OPENAI_BLOCK.items():
            out[f"{o}{name}/scale"] = take(f"{p}{theirs}.weight")
            out[f"{o}{name}/bias"] = take(f"{p}{theirs}.bias")
        weight, bias = take(f"{p}attn.in_proj_weight"), take(f"{p}attn.in_proj_bias")
        width = weight.shape[1]
        attention = f"{o}MultiHeadDotProductAttention_1/"
        for j, name in enumerate(("query", "key", "value")):
            w = weight[j * width : (j + 1) * width]
            out[f"{attention}{name}/kernel"] = w.T.reshape(width, heads, -1)
            out[f"{attention}{name}/bias"] = bias[j * width : (j + 1) * width].reshape(heads, -1)
        out[f"{attention}out/kernel"] = take(f"{p}attn.out_proj.weight").T.reshape(heads, -1, width)
        out[f"{attention}out/bias"] = take(f"{p}attn.out_proj.bias")
        for theirs, name in _OPENAI_MLP.items():
            out[f"{o}MlpBlock_3/{name}/kernel"] = take(f"{p}{theirs}.weight").T
            out[f"{o}MlpBlock_3/{name}/bias"] = take(f"{p}{theirs}.bias")


def params_from_openai_clip(state: Mapping, kwargs: Mapping) -> dict:
    """`{'params': ..., 'batch_stats': ...}` (batch statistics for ResNet towers only) of
    `clip.CLIP(**kwargs)` from an OpenAI-layout state dict; a tensor left unread is an
    error (PretrainedInitError names them)."""
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def take(name):
        used.add(name)
        return np.asarray(state[name], np.float32)

    def norm(ours, theirs):
        out[f"{ours}/scale"], out[f"{ours}/bias"] = take(f"{theirs}.weight"), take(f"{theirs}.bias")

    try:
        out["logit_scale"] = take("logit_scale").reshape(())
        out["text/token_embedding/embedding"] = take("token_embedding.weight")
        out["text/posembed_input/pos_embedding"] = take("positional_embedding")[None]
        out["text/projection/kernel"] = take("text_projection")
        norm("text/Transformer/encoder_norm", "ln_final")
        _openai_encoder(
            take, "transformer.", "text/Transformer/", kwargs["text_layers"],
            kwargs["text_heads"], out,
        )  # fmt: skip
        variables = {}
        if isinstance(kwargs["vision_layers"], Sequence):
            visual = {k: v for k, v in state.items() if k.startswith("visual.")}
            used.update(visual)
            variables = openai_resnet_tower(visual)
        else:
            out["visual/embedding/kernel"] = take("visual.conv1.weight").transpose(2, 3, 1, 0)
            out["visual/cls"] = take("visual.class_embedding")[None, None]
            out["visual/posembed_input/pos_embedding"] = take("visual.positional_embedding")[None]
            out["visual/projection/kernel"] = take("visual.proj")
            norm("visual/ln_pre", "visual.ln_pre")
            norm("visual/Transformer/encoder_norm", "visual.ln_post")
            _openai_encoder(
                take, "visual.transformer.", "visual/Transformer/", kwargs["vision_layers"],
                kwargs["vision_heads"], out,
            )  # fmt: skip
    except KeyError as error:
        raise PretrainedInitError(f"missing tensor {error}") from None
    unread = sorted(set(state) - used)
    if unread:
        raise PretrainedInitError(f"{len(unread)} tensors of no CLIP part: {', '.join(unread[:8])}")
    params = flax.traverse_util.unflatten_dict(out, sep="/")
    if variables:
        params["visual"] = variables["params"]
        return {"params": params, "batch_stats": {"visual": variables["batch_stats"]}}
    return {"params": params}


def load_openai_clip(path: str | pathlib.Path, **overrides) -> tuple[clip.CLIP, dict]:
    """`(clip.CLIP, variables)` of an OpenAI-layout CLIP file (`read_openai_state_dict`),
    its settings read off the tensors (`clip_kwargs_from_openai_state`) and then
    `overrides` (e.g. `hidden_act='gelu'` for OpenCLIP's LAION models)."""
    state = read_openai_state_dict(path)
    kwargs = {**clip_kwargs_from_openai_state(state), **overrides}
    return clip.CLIP(**kwargs), params_from_openai_clip(state, kwargs)


def _flat_openai(path: pathlib.Path, model_shapes: Mapping[str, tuple]) -> dict:
    state = read_openai_state_dict(path)
    kwargs = clip_kwargs_from_openai_state(state)
    for tower in ("text", "visual"):  # heads as the model has them, when it says
        shape = model_shapes.get(
            f"{tower}/Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"
        )
        if shape is not None and len(shape) == 3:
            kwargs["text_heads" if tower == "text" else "vision_heads"] = shape[1]
    variables = params_from_openai_clip(state, kwargs)
    return flax.traverse_util.flatten_dict(variables, sep="/")


def read_openai_clip_for_init(
    path: pathlib.Path, model_shapes: Mapping[str, tuple]
) -> dict[str, np.ndarray]:
    """An OpenAI-layout CLIP file's parameters, '/'-joined, for `init_from` (format
    'openai_clip'); the text position embedding cut to a shorter context as with 'hf_clip'."""
    flat = {
        name.removeprefix("params/"): value
        for name, value in _flat_openai(path, model_shapes).items()
        if name.startswith("params/")
    }
    wanted, have = model_shapes.get(TEXT_POSEMB), flat[TEXT_POSEMB]
    if wanted is not None and len(wanted) == 3 and wanted[1] < have.shape[1]:
        flat[TEXT_POSEMB] = have[:, : wanted[1]]
    return flat


def read_openai_clip_model_state(path: pathlib.Path) -> dict[str, np.ndarray]:
    """The ResNet tower's batch statistics ('batch_stats/visual/...'), for `init_from`."""
    return {
        name: value
        for name, value in _flat_openai(path, {}).items()
        if name.startswith("batch_stats/")
    }


def _register_openai_format() -> None:
    from scenic.train_lib import pretrained_init

    pretrained_init.register_format(
        pretrained_init.CheckpointFormat(
            "openai_clip",
            "an OpenAI-layout CLIP state dict (OpenCLIP's open_clip_model.safetensors or "
            "open_clip_pytorch_model.bin), for model 'clip'",
            lambda path: path.name in OPENCLIP_FILES,
            read_openai_clip_for_init,
            read_openai_clip_model_state,
        )
    )


_register_openai_format()
