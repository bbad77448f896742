"""Box conversions, IoU and generalized IoU, for NumPy and JAX arrays alike.

Boxes are `[..., 4]`: `cxcywh` (centre x, centre y, width, height), `xyxy` (x0, y0, x1, y1)
or `yxyx` (y0, x0, y1, x1). Every function takes the array module from its input, so the
same code serves host-side pre-processing (NumPy) and jitted losses (jax.numpy).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _xp(x):
    return np if isinstance(x, np.ndarray) else jnp


def cxcywh_to_xyxy(boxes):
    xp = _xp(boxes)
    cx, cy, w, h = (boxes[..., i] for i in range(4))
    return xp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def xyxy_to_cxcywh(boxes):
    xp = _xp(boxes)
    x0, y0, x1, y1 = (boxes[..., i] for i in range(4))
    return xp.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


def xyxy_to_yxyx(boxes):
    """Swaps x and y; the same function converts yxyx back to xyxy."""
    return boxes[..., [1, 0, 3, 2]]


yxyx_to_xyxy = xyxy_to_yxyx


def cxcywh_to_yxyx(boxes):
    return xyxy_to_yxyx(cxcywh_to_xyxy(boxes))


def yxyx_to_cxcywh(boxes):
    return xyxy_to_cxcywh(yxyx_to_xyxy(boxes))


def box_area(boxes_xyxy):
    return (boxes_xyxy[..., 2] - boxes_xyxy[..., 0]) * (boxes_xyxy[..., 3] - boxes_xyxy[..., 1])


def box_iou(boxes1, boxes2, eps: float = 1e-6):
    """Pairwise IoU and union of xyxy boxes: `[..., N, 4]` x `[..., M, 4]` -> `[..., N, M]`."""
    xp = _xp(boxes1)
    top_left = xp.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    bottom_right = xp.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = xp.clip(bottom_right - top_left, 0.0, None)
    intersection = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1)[..., :, None] + box_area(boxes2)[..., None, :] - intersection
    return intersection / (union + eps), union


def generalized_box_iou(boxes1, boxes2, eps: float = 1e-6):
    """Pairwise generalized IoU (Rezatofighi et al., 2019) of xyxy boxes, in [-1, 1]."""
    xp = _xp(boxes1)
    iou, union = box_iou(boxes1, boxes2, eps)
    top_left = xp.minimum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    bottom_right = xp.maximum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = xp.clip(bottom_right - top_left, 0.0, None)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / (enclosing + eps)
