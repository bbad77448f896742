"""Load a Hugging Face `VivitForVideoClassification` checkpoint into a scenic-vivit model.

The Hugging Face ViViT is model 1 (spatio-temporal attention) with tubelets and a class
token. A checkpoint is a local directory with `config.json` and `model.safetensors` (read
with `safetensors`, no torch), a sharded `model.safetensors.index.json`, or
`pytorch_model.bin` (needs torch). Nothing is downloaded.

Name and layout mapping (PyTorch `Linear` weights are `[out, in]`, Flax kernels `[in, out]`):

  vivit.embeddings.patch_embeddings.projection  Conv3d [D, C, t, p, p] -> embedding [t, p, p, C, D]
  vivit.embeddings.cls_token / position_embeddings -> cls / Transformer/posembed_input
  vivit.encoder.layer.i.layernorm_before / layernorm_after -> encoderblock_i/LayerNorm_0 / _2
  ...attention.attention.{query,key,value} [D, D] -> MultiHeadDotProductAttention_1/* [D, H, d]
  ...attention.output.dense [D, D]             -> MultiHeadDotProductAttention_1/out [H, d, D]
  ...intermediate.dense / output.dense         -> MlpBlock_3/Dense_0 / Dense_1
  vivit.layernorm -> Transformer/encoder_norm;  classifier -> head

(transformers >= 5 names its modules vivit.layers.i.attention.{q,k,v,o}_proj and
mlp.fc1/fc2 but `save_pretrained` writes the names above; both are accepted.) Videos go in
as `[B, T, H, W, C]`; Hugging Face takes `pixel_values` as `[B, T, C, H, W]`.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
from flax import traverse_util

from scenic_vivit.model import ViViT

# Activations that are the tanh approximation of GELU, which `flax.linen.gelu` computes.
_TANH_GELU = ("gelu_fast", "gelu_new", "gelu_pytorch_tanh")
_V5_NAMES = {  # transformers >= 5 module names -> the names checkpoints carry
    "vivit.layers.": "vivit.encoder.layer.",
    "attention.q_proj.": "attention.attention.query.",
    "attention.k_proj.": "attention.attention.key.",
    "attention.v_proj.": "attention.attention.value.",
    "attention.o_proj.": "attention.output.dense.",
    "mlp.fc1.": "intermediate.dense.",
    "mlp.fc2.": "output.dense.",
}


def read_state_dict(directory: pathlib.Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as float32 NumPy arrays, by their PyTorch names."""
    if (directory / "model.safetensors").exists():
        from safetensors.numpy import load_file

        return load_file(directory / "model.safetensors")
    index = directory / "model.safetensors.index.json"
    if index.exists():
        from safetensors.numpy import load_file

        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(directory / shard).items()}
    if (directory / "pytorch_model.bin").exists():
        import torch

        state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}
    raise FileNotFoundError(
        f"No model.safetensors, model.safetensors.index.json or pytorch_model.bin in {directory}."
    )


def vivit_from_hf_config(config: dict) -> ViViT:
    """The scenic-vivit model a Hugging Face ViViT config describes (errors on settings
    scenic-vivit does not reproduce)."""
    if config.get("model_type") != "vivit":
        raise ValueError(f"Not a ViViT config: model_type={config.get('model_type')!r}.")
    if config.get("hidden_act", "gelu_fast") not in _TANH_GELU:
        raise ValueError(
            f"hidden_act={config['hidden_act']!r} is not supported: scenic-vivit's MLP uses the "
            f"tanh-approximate GELU ({', '.join(_TANH_GELU)})."
        )
    if abs(config.get("layer_norm_eps", 1e-6) - 1e-6) > 1e-12:
        raise ValueError(f"layer_norm_eps={config['layer_norm_eps']} (scenic-vivit uses 1e-6).")
    num_labels = len(config["id2label"]) if "id2label" in config else config.get("num_labels", 2)
    return ViViT(
        num_classes=num_labels,
        variant="spatio_temporal",
        tokenizer="tubelet",
        patch_size=tuple(config["tubelet_size"]),
        hidden_size=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        mlp_dim=config["intermediate_size"],
        classifier="token",
    )


def convert_state_dict(state: dict[str, np.ndarray], model: ViViT) -> dict:
    """PyTorch-named ViViT tensors -> the scenic-vivit params tree of `model`.

    Every tensor must be used exactly once; leftovers are an error naming them.
    """
    renamed = {}
    for key, value in state.items():
        for new, old in _V5_NAMES.items():
            key = key.replace(new, old)
        renamed[key] = value
    state = renamed
    heads, width = model.num_heads, model.hidden_size
    head_dim = width // heads
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in state:
            raise KeyError(f"Hugging Face ViViT checkpoint lacks {name!r}.")
        used.add(name)
        return np.asarray(state[name], np.float32)

    def dense(name: str) -> dict:
        return {"kernel": take(name + ".weight").T, "bias": take(name + ".bias")}

    def norm(name: str) -> dict:
        return {"scale": take(name + ".weight"), "bias": take(name + ".bias")}

    def qkv(name: str) -> dict:
        kernel = take(name + ".weight").T.reshape(width, heads, head_dim)
        bias_key = name + ".bias"
        bias = take(bias_key) if bias_key in state else np.zeros(width, np.float32)
        return {"kernel": kernel, "bias": bias.reshape(heads, head_dim)}

    transformer = {
        "posembed_input": {"pos_embedding": take("vivit.embeddings.position_embeddings")},
        "encoder_norm": norm("vivit.layernorm"),
    }
    for i in range(model.num_layers):
        layer = f"vivit.encoder.layer.{i}."
        attention = {n: qkv(layer + "attention.attention." + n) for n in ("query", "key", "value")}
        out_kernel = take(layer + "attention.output.dense.weight").T
        attention["out"] = {
            "kernel": out_kernel.reshape(heads, head_dim, width),
            "bias": take(layer + "attention.output.dense.bias"),
        }
        transformer[f"encoderblock_{i}"] = {
            "LayerNorm_0": norm(layer + "layernorm_before"),
            "MultiHeadDotProductAttention_1": attention,
            "LayerNorm_2": norm(layer + "layernorm_after"),
            "MlpBlock_3": {
                "Dense_0": dense(layer + "intermediate.dense"),
                "Dense_1": dense(layer + "output.dense"),
            },
        }
    params = {
        "embedding": {
            "kernel": take("vivit.embeddings.patch_embeddings.projection.weight").transpose(
                2, 3, 4, 1, 0
            ),
            "bias": take("vivit.embeddings.patch_embeddings.projection.bias"),
        },
        "cls": take("vivit.embeddings.cls_token"),
        "Transformer": transformer,
        "head": dense("classifier"),
    }
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"Unmapped tensors in the Hugging Face checkpoint: {unused}.")
    return params


def load_hf_vivit(directory: str | os.PathLike) -> tuple[ViViT, dict, tuple[int, ...]]:
    """Reads a local Hugging Face ViViT checkpoint directory.

    Returns (model, params, video_shape): the scenic-vivit model, its params, and the
    `[1, T, H, W, C]` input shape the checkpoint's position embeddings were made for.
    Shapes are checked against the model's own (no arrays allocated for that).
    """
    import jax
    import jax.numpy as jnp

    directory = pathlib.Path(directory)
    config = json.loads((directory / "config.json").read_text())
    model = vivit_from_hf_config(config)
    size = config["image_size"]
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    video_shape = (1, config["num_frames"], height, width, config.get("num_channels", 3))
    params = convert_state_dict(read_state_dict(directory), model)
    expected = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(video_shape))["params"]
    )
    flat_expected = traverse_util.flatten_dict(expected)
    flat = traverse_util.flatten_dict(params)
    if set(flat) != set(flat_expected):
        raise ValueError(
            f"Converted parameters differ from the model's: "
            f"{sorted(set(flat) ^ set(flat_expected))}."
        )
    for key, value in flat.items():
        if value.shape != flat_expected[key].shape:
            raise ValueError(
                f"{'/'.join(key)}: checkpoint gives {value.shape}, model expects "
                f"{flat_expected[key].shape}."
            )
    return model, jax.tree.map(jnp.asarray, params), video_shape
