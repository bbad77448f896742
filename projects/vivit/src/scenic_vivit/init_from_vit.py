"""Initialise a ViViT from an image ViT (Arnab et al., 2021, Sec. 3.4).

The source is a scenic-baselines ViT params tree or a published ViT `.npz` checkpoint (flat
keys such as 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel',
'embedding/kernel', 'cls', 'Transformer/posembed_input/pos_embedding'); both share one
layout. What is transferred:

* Patch embedding: copied for the 'frames' tokenizer; for tubelets the `[p, p, C, D]` kernel
  is inflated to `[t, p, p, C, D]` by `inflate_kernel` ('central_frame', 'average' or
  'arp').
* Position embeddings: the ViT's `[gh, gw]` grid is bilinearly resized to the ViViT's
  spatial token grid when they differ (`resize_grid`) and tiled over the t temporal
  indices; the class-token row moves with the class token.
* Encoder blocks map one to one (models 1, 2's spatial transformer and 4 use the ViT block
  names). Model 3's spatial attention and MLP come from the ViT block; its temporal
  attention is set to zero, so each block starts as a residual identity over time (the
  paper's choice). Model 2's temporal transformer is kept as initialised ('fresh') or takes
  the ViT's first `temporal_num_layers` blocks and final norm ('spatial').
* The classifier head only with `restore_head=True` (a new data set usually has other
  classes).

What this buys, exactly (tests/test_init_from_vit.py): on a static clip (all frames equal)
a 'central_frame' or 'average' tubelet embeds every tubelet as the ViT embeds its patch, so
every frame's tokens equal the image tokens. Then
  - model 1 with GAP gives the ViT's (GAP) logits: joint attention sees each key t times,
    which leaves softmax-weighted averages unchanged. With a class token it does not hold
    for t > 1 (the class key is seen once, patch keys t times: their logits gain log t);
  - model 2's spatial transformer outputs the ViT representation for each frame (the fresh
    temporal transformer then changes the logits);
  - model 3 (GAP) gives the ViT's logits (zero temporal attention);
  - 'arp' weights sum to zero over time, so a static clip embeds to the bias alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from flax import traverse_util

from scenic_vivit.model import ViViT

KERNEL_INITS = ("central_frame", "average", "arp")
TEMPORAL_INITS = ("fresh", "spatial")


def vit_params_from_npz(checkpoint: str | os.PathLike | Mapping[str, np.ndarray]) -> dict:
    """Published ViT `.npz` (flat '/'-separated keys) -> nested params tree."""
    if isinstance(checkpoint, Mapping):
        flat = dict(checkpoint)
    else:
        with np.load(checkpoint) as data:
            flat = {key: data[key] for key in data.files}
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def arp_coefficients(num_frames: int) -> np.ndarray:
    """Approximate rank pooling weights (Bilen et al., PAMI 2017, Eq. 3; after Fernando et
    al.'s rank pooling): alpha_t = 2 (T - t + 1) - (T + 1) (H_T - H_{t-1}) for t = 1..T,
    with H_t the t-th harmonic number (H_0 = 0). They sum to zero: a static input maps to 0.
    E.g. T = 2: (-1/2, 1/2); T = 4: (-29/12, 7/12, 13/12, 3/4)."""
    t = np.arange(1, num_frames + 1, dtype=np.float64)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / t)])
    return 2.0 * (num_frames - t + 1) - (num_frames + 1) * (harmonic[-1] - harmonic[:-1])


def inflate_kernel(kernel: np.ndarray, frames: int, method: str) -> np.ndarray:
    """2D patch kernel `[p, p, C, D]` -> tubelet kernel `[frames, p, p, C, D]`.

    'central_frame': the kernel on frame frames // 2, zeros elsewhere; 'average': the kernel
    / frames on every frame (I3D's filter inflation); 'arp': the kernel * alpha_t / frames
    (approximate rank pooling, `arp_coefficients`; the 1/frames scaling follows the
    original Scenic).
    """
    kernel = np.asarray(kernel)
    if method == "central_frame":
        out = np.zeros((frames, *kernel.shape), kernel.dtype)
        out[frames // 2] = kernel
        return out
    if method == "average":
        weights = np.full(frames, 1.0 / frames)
    elif method == "arp":
        weights = arp_coefficients(frames) / frames
    else:
        raise ValueError(f"kernel_init must be one of {KERNEL_INITS}, got {method!r}.")
    return (weights[:, None, None, None, None] * kernel[None]).astype(kernel.dtype)


def resize_grid(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a `[gh, gw, D]` grid to `[h, w, D]`, corners aligned (the mapping
    of `scipy.ndimage.zoom(order=1)`, which the original Scenic uses)."""
    grid = np.asarray(grid, np.float64)

    def axis_weights(n_in: int, n_out: int) -> np.ndarray:  # [n_out, n_in] interpolation
        pos = np.zeros(n_out) if n_out == 1 else np.arange(n_out) * (n_in - 1) / (n_out - 1)
        low = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
        high = np.minimum(low + 1, n_in - 1)
        frac = pos - low
        weights = np.zeros((n_out, n_in))
        np.add.at(weights, (np.arange(n_out), low), 1.0 - frac)
        np.add.at(weights, (np.arange(n_out), high), frac)
        return weights

    rows, cols = axis_weights(grid.shape[0], size[0]), axis_weights(grid.shape[1], size[1])
    return np.einsum("hi,wj,ijd->hwd", rows, cols, grid)


def video_posemb(
    vit_posemb: np.ndarray,
    vit_has_cls: bool,
    grid: tuple[int, int, int],
    target_cls_row: np.ndarray | None,
) -> np.ndarray:
    """ViT position embedding `[1, (1 +) gh*gw, D]` -> ViViT's `[1, (1 +) t*h*w, D]`.

    The spatial grid is resized to (h, w) if it differs, then tiled over t. A target class
    token (`target_cls_row` given: the target's own initial row) takes the ViT's class row
    if the ViT has one.
    """
    vit_posemb = np.asarray(vit_posemb)
    rows = vit_posemb[0, 1:] if vit_has_cls else vit_posemb[0]
    side = round(np.sqrt(len(rows)))
    if side * side != len(rows):
        raise ValueError(f"ViT position embedding has {len(rows)} patch rows, not a square grid.")
    time, height, width = grid
    spatial = rows.reshape(side, side, -1)
    if (side, side) != (height, width):
        spatial = resize_grid(spatial, (height, width))
    tokens = np.tile(spatial.reshape(height * width, -1), (time, 1)).astype(vit_posemb.dtype)
    if target_cls_row is not None:
        cls_row = vit_posemb[0, :1] if vit_has_cls else np.asarray(target_cls_row)[0, :1]
        tokens = np.concatenate([cls_row.astype(tokens.dtype), tokens], axis=0)
    return tokens[None]


_MODEL3_BLOCK = {  # ViT block -> factorised self-attention block
    "LayerNorm_0": "LayerNorm_space",
    "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_space",
    "LayerNorm_2": "LayerNorm_mlp",
    "MlpBlock_3": "MlpBlock",
}


def init_from_vit(
    model: ViViT,
    params,
    vit_params,
    video_shape: tuple[int, ...],
    *,
    kernel_init: str = "central_frame",
    temporal_init: str = "fresh",
    restore_head: bool = False,
):
    """Returns `params` (of `model`, e.g. from `model.init`) with the ViT's weights in.

    `video_shape` is the `[B, T, H, W, C]` input shape (it fixes the token grid).
    Raises ValueError naming the first parameter whose shape does not fit.
    """
    model.check()
    if temporal_init not in TEMPORAL_INITS:
        raise ValueError(f"temporal_init must be one of {TEMPORAL_INITS}, got {temporal_init!r}.")
    if kernel_init not in KERNEL_INITS:
        raise ValueError(f"kernel_init must be one of {KERNEL_INITS}, got {kernel_init!r}.")
    src = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(vit_params).items()}
    out = {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}

    def put(key: str, value) -> None:
        if key not in out:
            raise ValueError(f"ViViT has no parameter {key!r} to initialise from the ViT.")
        value = np.asarray(value)
        if value.shape != out[key].shape:
            raise ValueError(
                f"ViT weight for {key!r} has shape {value.shape}, ViViT expects {out[key].shape}."
            )
        out[key] = value.astype(out[key].dtype)

    # Patch embedding.
    kernel = src["embedding/kernel"]
    if model.tokenizer == "tubelet":
        kernel = inflate_kernel(kernel, model.patch_size[0], kernel_init)
    put("embedding/kernel", kernel)
    put("embedding/bias", src["embedding/bias"])

    grid = model.token_grid(video_shape)
    has_token = model.classifier == "token"
    vit_has_cls = "cls" in src
    encoder = "SpatialTransformer" if model.variant == "factorised_encoder" else "Transformer"
    if has_token and vit_has_cls:
        put("cls_SpatialTransformer" if encoder == "SpatialTransformer" else "cls", src["cls"])
    posemb_key = f"{encoder}/posembed_input/pos_embedding"
    if encoder == "SpatialTransformer":
        grid = (1, *grid[1:])  # one frame per spatial transformer call
    put(
        posemb_key,
        video_posemb(
            src["Transformer/posembed_input/pos_embedding"],
            vit_has_cls,
            grid,
            out[posemb_key] if has_token else None,
        ),
    )

    vit_layers = sorted(
        {k.split("/")[1] for k in src if k.startswith("Transformer/encoderblock_")},
        key=lambda name: int(name.rsplit("_", 1)[1]),
    )
    if len(vit_layers) != model.num_layers:
        raise ValueError(
            f"The ViT has {len(vit_layers)} encoder blocks, the ViViT "
            f"num_layers={model.num_layers}."
        )
    for key, value in src.items():
        parts = key.split("/")
        if parts[0] != "Transformer" or parts[1] == "posembed_input":
            continue
        if parts[1] == "encoder_norm" or model.variant != "factorised_self_attention":
            put("/".join([encoder, *parts[1:]]), value)
        elif parts[2] in _MODEL3_BLOCK:
            put("/".join([encoder, parts[1], _MODEL3_BLOCK[parts[2]], *parts[3:]]), value)
    if model.variant == "factorised_self_attention":
        for key in out:
            if "/MultiHeadDotProductAttention_time/" in key:
                out[key] = np.zeros_like(out[key])
    if model.variant == "factorised_encoder" and temporal_init == "spatial":
        for key, value in src.items():
            parts = key.split("/")
            is_block = parts[0] == "Transformer" and parts[1].startswith("encoderblock_")
            if is_block and int(parts[1].rsplit("_", 1)[1]) < model.temporal_num_layers:
                put("/".join(["TemporalTransformer", *parts[1:]]), value)
            elif parts[:2] == ["Transformer", "encoder_norm"]:
                put("/".join(["TemporalTransformer", *parts[1:]]), value)

    for prefix in ("pre_logits", "head") if restore_head else ("pre_logits",):
        for key, value in src.items():
            if key.startswith(prefix + "/") and key in out:
                put(key, value)
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in out.items()})
