"""Initialise both MBT encoders from one image ViT (a scenic-baselines ViT params tree or a
published ViT `.npz`, as `scenic_vivit.init_from_vit` reads them).

- RGB: the patch kernel is inflated to the tubelet depth as in ViViT ('central_frame',
  'average' or 'arp'); the position-embedding grid is resized to the model's and tiled
  over time.
- Spectrogram: the grid is resized to the (time, frequency) patch grid.
- A modality with other than the ViT's 3 input channels (a spectrogram, grayscale frames)
  gets the kernel summed over the ViT's channels (the same input repeated three times
  would give the same response), spread evenly over its own channels.
- Class tokens take the ViT's class token; every encoder (each modality's, the shared one,
  the joint one) takes the ViT's block i for its block i, and its final norm.
- The bottleneck tokens start from the ViT's position embedding rows, interpolated linearly
  along the token axis to `n_bottlenecks` rows (as the original MBT did).
The head (and anything the ViT lacks) starts fresh.
"""

from __future__ import annotations

import numpy as np
from flax import traverse_util

from scenic_mbt.model import MBT
from scenic_vivit.init_from_vit import KERNEL_INITS, inflate_kernel, resize_grid, video_posemb

__all__ = ["KERNEL_INITS", "init_from_vit"]


def interpolate_rows(rows: np.ndarray, count: int) -> np.ndarray:
    """`[N, D]` -> `[count, D]`, linear along the first axis, end points kept."""
    rows = np.asarray(rows, np.float64)
    position = np.linspace(0.0, len(rows) - 1, count) if count > 1 else np.zeros(1)
    return np.stack(
        [np.interp(position, np.arange(len(rows)), rows[:, d]) for d in range(rows.shape[1])], 1
    )


def adapt_channels(kernel: np.ndarray, channels: int) -> np.ndarray:
    """A patch kernel `[..., C_vit, D]` for `channels` inputs: kept when they agree, else
    summed over the ViT's channels (a one-channel input repeated C_vit times gives the same
    response) and spread evenly over `channels`."""
    if kernel.shape[-2] == channels:
        return kernel
    summed = kernel.sum(axis=-2, keepdims=True)
    return np.repeat(summed / channels, channels, axis=-2)


def spectrogram_posemb(vit_posemb, vit_has_cls: bool, grid: tuple[int, int], cls_row):
    """ViT position embedding -> `[1, (1 +) t*f, D]` for a (time, frequency) patch grid."""
    rows = vit_posemb[0, 1:] if vit_has_cls else vit_posemb[0]
    side = round(np.sqrt(len(rows)))
    if side * side != len(rows):
        raise ValueError(f"ViT position embedding has {len(rows)} patch rows, not a square grid.")
    tokens = resize_grid(rows.reshape(side, side, -1), grid).reshape(grid[0] * grid[1], -1)
    if cls_row is not None:
        cls = vit_posemb[0, :1] if vit_has_cls else np.asarray(cls_row)[0, :1]
        tokens = np.concatenate([cls, tokens], axis=0)
    return tokens[None]


def init_from_vit(
    model: MBT,
    params,
    vit_params,
    input_shapes: dict[str, tuple[int, ...]],
    *,
    kernel_init: str = "central_frame",
):
    """`params` (of `model`) with the ViT's weights in; `input_shapes` maps each modality to
    its `[B, ...]` input shape. Raises ValueError naming the first parameter that does not
    fit."""
    model.check()
    if kernel_init not in KERNEL_INITS:
        raise ValueError(f"kernel_init must be one of {KERNEL_INITS}, got {kernel_init!r}.")
    src = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(vit_params).items()}
    out = {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}

    def put(key: str, value) -> None:
        if key not in out:
            raise ValueError(f"The MBT model has no parameter {key!r} to initialise.")
        value = np.asarray(value)
        if value.shape != out[key].shape:
            raise ValueError(
                f"ViT weight for {key!r} has shape {value.shape}, the MBT model expects "
                f"{out[key].shape}."
            )
        out[key] = value.astype(out[key].dtype)

    vit_posemb = src["Transformer/posembed_input/pos_embedding"]
    has_cls = "cls" in src
    token = model.classifier == "token"
    for m in model.modalities:
        kernel, shape = src["embedding/kernel"], input_shapes[m]
        cls_row = out[f"posembed_{m}/pos_embedding"] if token else None
        if m == "rgb":
            pt, ph, pw = model.rgb_patch_size
            kernel = inflate_kernel(adapt_channels(kernel, shape[-1]), pt, kernel_init)
            grid = (shape[1] // pt, shape[2] // ph, shape[3] // pw)
            posemb = video_posemb(vit_posemb, has_cls, grid, cls_row)
        else:
            pt, pf = model.spectrogram_patch_size
            kernel = adapt_channels(kernel, shape[-1])
            posemb = spectrogram_posemb(
                vit_posemb, has_cls, (shape[1] // pt, shape[2] // pf), cls_row
            )
        put(f"embedding_{m}/kernel", kernel)
        put(f"embedding_{m}/bias", src["embedding/bias"])
        put(f"posembed_{m}/pos_embedding", posemb)
        if token and has_cls:
            put(f"cls_{m}", src["cls"])

    vit_layers = {k.split("/")[1] for k in src if k.startswith("Transformer/encoderblock_")}
    if len(vit_layers) != model.num_layers:
        raise ValueError(
            f"The ViT has {len(vit_layers)} encoder blocks, the MBT model "
            f"num_layers={model.num_layers}."
        )
    encoders = {k.split("/")[0] for k in out if k.startswith("encoder")}
    for key, value in src.items():
        parts = key.split("/")
        if parts[0] == "Transformer" and parts[1] != "posembed_input":
            for encoder in sorted(encoders):
                target = "/".join([encoder, *parts[1:]])
                if target in out:
                    put(target, value)
        elif parts[0] == "pre_logits" and key in out:
            put(key, value)
    if "bottleneck" in out:
        rows = vit_posemb[0, 1:] if has_cls else vit_posemb[0]
        put("bottleneck", interpolate_rows(rows, model.n_bottlenecks)[None])
    return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in out.items()})
