"""DETR weights from and to Hugging Face `transformers` `DetrForObjectDetection`.

For the HF model with its own ResNet backbone (`DetrConfig(use_timm_backbone=False,
backbone_config=ResNetConfig(...))`): its backbone converts with
`resnet.params_from_hf_resnet` (under the prefix `model.backbone.model.`), and its
transformer and heads map one to one onto `detr.DETR`'s. Torch Linear weights are
`[out, in]`; ours are Dense kernels `[in, out]` and the attention projections
`layers.MultiHeadAttention`'s `[D, heads, head_dim]` (query / key / value) and
`[heads, head_dim, D]` (out). Values may be torch tensors or NumPy arrays; torch is not
imported here.
"""

from __future__ import annotations

import re

import numpy as np

from scenic_baselines import resnet

BACKBONE_PREFIX = "model.backbone.model."
#: HF module path -> ours, for the parts outside the encoder / decoder layers.
TOP_LEVEL = {
    "model.input_projection": ("input_proj",),
    "model.decoder.layernorm": ("decoder_norm",),
    "class_labels_classifier": ("class_head",),
    "bbox_predictor.layers.0": ("box_head", "Dense_0"),
    "bbox_predictor.layers.1": ("box_head", "Dense_1"),
    "bbox_predictor.layers.2": ("box_head", "Dense_2"),
}
#: HF sub-module of an encoder / decoder layer -> ours.
LAYER_PARTS = {
    "self_attn": "self_attn",
    "encoder_attn": "cross_attn",
    "self_attn_layer_norm": "self_attn_norm",
    "encoder_attn_layer_norm": "cross_attn_norm",
    "final_layer_norm": "mlp_norm",
    "mlp.fc1": ("mlp", "fc1"),
    "mlp.fc2": ("mlp", "fc2"),
}
ATTENTION = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "o_proj": "out"}
_LAYER = re.compile(r"model\.(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)")


def _numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, np.float32)


def params_from_hf_detr(state_dict, num_heads: int) -> dict:
    """Variables `{'params', 'batch_stats'}` of `detr.DETR` from a HF `DetrForObjectDetection`
    state dict (with `num_heads` attention heads). A key that is not a DETR weight raises
    ValueError naming it."""
    state_dict = {k: _numpy(v) for k, v in state_dict.items()}
    backbone = resnet.params_from_hf_resnet(
        {k: v for k, v in state_dict.items() if k.startswith(BACKBONE_PREFIX)}, BACKBONE_PREFIX
    )
    params: dict = {"backbone": backbone["params"]}

    def put(path, value):
        node = params
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value

    for key, value in state_dict.items():
        if key.startswith(BACKBONE_PREFIX) or key.endswith("num_batches_tracked"):
            continue
        if key == "model.query_position_embeddings.weight":
            put(("query_pos",), value)
            continue
        module, _, leaf = key.rpartition(".")
        if module in TOP_LEVEL:
            path = TOP_LEVEL[module]
            if module == "model.input_projection" and leaf == "weight":
                value = value[:, :, 0, 0]  # a 1x1 convolution is our Dense
            put((*path, _leaf(leaf, value.ndim)), value.T if value.ndim == 2 else value)
            continue
        match = _LAYER.fullmatch(key)
        if not match:
            raise ValueError(f"Not a Hugging Face DETR weight: {key!r}.")
        stack, index, part, leaf = match.groups()
        scope = f"{stack}_layer_{index}"
        attention, _, projection = part.rpartition(".")
        if attention in ("self_attn", "encoder_attn") and projection in ATTENTION:
            ours = ATTENTION[projection]
            put((scope, LAYER_PARTS[attention], ours, _leaf(leaf, value.ndim)),
                _attention(value, ours, num_heads))  # fmt: skip
        elif part in LAYER_PARTS:
            path = LAYER_PARTS[part]
            path = path if isinstance(path, tuple) else (path,)
            put((scope, *path, _leaf(leaf, value.ndim)), value.T if value.ndim == 2 else value)
        else:
            raise ValueError(f"Not a Hugging Face DETR weight: {key!r}.")
    return {"params": params, "batch_stats": {"backbone": backbone["batch_stats"]}}


def _leaf(name: str, ndim: int) -> str:
    """torch 'weight' -> Dense 'kernel' (2D) or LayerNorm 'scale' (1D); 'bias' stays."""
    if name == "bias":
        return "bias"
    return "kernel" if ndim == 2 else "scale"


def _attention(value: np.ndarray, ours: str, num_heads: int) -> np.ndarray:
    """A torch q / k / v / o projection weight or bias -> our attention parameter."""
    width = value.shape[0]
    head_dim = width // num_heads
    if ours == "out":
        return value.T.reshape(num_heads, head_dim, width) if value.ndim == 2 else value
    if value.ndim == 2:
        return value.T.reshape(width, num_heads, head_dim)
    return value.reshape(num_heads, head_dim)


def hf_detr_state_dict(variables) -> dict[str, np.ndarray]:
    """The inverse of `params_from_hf_detr`: arrays named as in `DetrForObjectDetection`
    (load each with `torch.from_numpy`; BatchNorm `num_batches_tracked` is not produced)."""
    params = variables["params"]
    backbone = {"params": params["backbone"], "batch_stats": variables["batch_stats"]["backbone"]}
    out = resnet.hf_resnet_state_dict(backbone, BACKBONE_PREFIX)
    out["model.query_position_embeddings.weight"] = np.asarray(params["query_pos"])
    for hf_module, path in TOP_LEVEL.items():
        node = params
        for name in path:
            node = node[name]
        kernel = np.asarray(node["kernel"] if "kernel" in node else node["scale"])
        weight = kernel.T if kernel.ndim == 2 else kernel
        if hf_module == "model.input_projection":
            weight = weight[:, :, None, None]
        out[f"{hf_module}.weight"], out[f"{hf_module}.bias"] = weight, np.asarray(node["bias"])
    for scope in sorted(k for k in params if k.startswith(("encoder_layer_", "decoder_layer_"))):
        stack, index = scope.split("_layer_")
        prefix = f"model.{stack}.layers.{index}"
        for hf_part, path in LAYER_PARTS.items():
            path = path if isinstance(path, tuple) else (path,)
            node = params[scope]
            if path[0] not in node:
                continue  # encoder layers have no cross-attention
            for name in path:
                node = node[name]
            if hf_part in ("self_attn", "encoder_attn"):
                for hf_projection, ours in ATTENTION.items():
                    kernel, bias = np.asarray(node[ours]["kernel"]), np.asarray(node[ours]["bias"])
                    if ours == "out":
                        weight = kernel.reshape(-1, kernel.shape[-1]).T
                    else:
                        weight = kernel.reshape(kernel.shape[0], -1).T
                    out[f"{prefix}.{hf_part}.{hf_projection}.weight"] = weight
                    out[f"{prefix}.{hf_part}.{hf_projection}.bias"] = bias.reshape(-1)
            else:
                leaf = "kernel" if "kernel" in node else "scale"
                value = np.asarray(node[leaf])
                out[f"{prefix}.{hf_part}.weight"] = value.T if value.ndim == 2 else value
                out[f"{prefix}.{hf_part}.bias"] = np.asarray(node["bias"])
    return out
