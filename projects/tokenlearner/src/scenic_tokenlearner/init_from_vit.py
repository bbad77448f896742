"""Initialise a TokenLearner model from an image ViT (a scenic-baselines ViT params tree or
a published ViT `.npz`, as `scenic_vivit.init_from_vit` reads them).

The patch embedding is copied (images) or inflated to tubelets (videos: 'central_frame',
'average' or 'arp', ViViT's options); the position embedding grid is resized to the
model's and tiled over time (a ViT class-token row is dropped: this model pools by GAP or
MAP); the encoder blocks and final norm map one to one, block i to block i, so the blocks
after the TokenLearner start from the ViT's too. The TokenLearner, TokenFuser and head
start fresh (pre-logits and the MAP head are copied when both models have them).
"""

from __future__ import annotations

import numpy as np
from flax import traverse_util

from scenic_tokenlearner.model import TokenLearnerViT
from scenic_vivit.init_from_vit import KERNEL_INITS, inflate_kernel, video_posemb

__all__ = ["KERNEL_INITS", "init_from_vit"]


def init_from_vit(
    model: TokenLearnerViT,
    params,
    vit_params,
    input_shape: tuple[int, ...],
    *,
    kernel_init: str = "central_frame",
):
    """Returns `params` (of `model`) with the ViT's weights in; `input_shape` is the model's
    `[B, H, W, C]` or `[B, T, H, W, C]` input shape. Raises ValueError naming the first
    parameter whose shape does not fit."""
    model.check()
    if kernel_init not in KERNEL_INITS:
        raise ValueError(f"kernel_init must be one of {KERNEL_INITS}, got {kernel_init!r}.")
    src = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(vit_params).items()}
    out = {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}

    def put(key: str, value) -> None:
        if key not in out:
            raise ValueError(f"The TokenLearner model has no parameter {key!r} to initialise.")
        value = np.asarray(value)
        if value.shape != out[key].shape:
            raise ValueError(
                f"ViT weight for {key!r} has shape {value.shape}, the TokenLearner model "
                f"expects {out[key].shape}."
            )
        out[key] = value.astype(out[key].dtype)

    kernel = src["embedding/kernel"]
    is_video = len(model.patch_size) == 3
    if is_video:
        kernel = inflate_kernel(kernel, model.patch_size[0], kernel_init)
    put("embedding/kernel", kernel)
    put("embedding/bias", src["embedding/bias"])

    spatial = input_shape[-3:-1]
    time = input_shape[1] // model.patch_size[0] if is_video else 1
    grid = (time, *(s // p for s, p in zip(spatial, model.patch_size[-2:])))
    put(
        "Transformer/posembed_input/pos_embedding",
        video_posemb(src["Transformer/posembed_input/pos_embedding"], "cls" in src, grid, None),
    )

    vit_layers = {k.split("/")[1] for k in src if k.startswith("Transformer/encoderblock_")}
    if len(vit_layers) != model.num_layers:
        raise ValueError(
            f"The ViT has {len(vit_layers)} encoder blocks, the TokenLearner model "
            f"num_layers={model.num_layers}."
        )
    for key, value in src.items():
        parts = key.split("/")
        if parts[0] == "Transformer" and parts[1] != "posembed_input":
            put(key, value)
        elif parts[0] in ("pre_logits", "MAPHead_0") and key in out:
            put(key, value)
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in out.items()})
