"""Post-processing shared by every detector: top-k detections and boxes in original pixels.

Detectors predict `pred_logits` `[B, N, C]` and `pred_boxes` `[B, N, 4]` (cxcywh, normalised
to the padded canvas that the input pipeline put the image on; see
`scenic.dataset_lib.detection_dataset`). Two steps turn them into detections:

- `top_k_detections`: class probabilities (softmax whose last class is "no object", which is
  dropped; or independent sigmoids without one, as with a sigmoid focal loss), then the K
  best (box, class) pairs of each image over all N x C' of them, so one box may be reported
  under several classes, as Deformable DETR does;
- `boxes_to_original_pixels`: canvas-normalised cxcywh -> xyxy in pixels of the original
  image, `box * canvas_size * orig_size / size` per axis, clipped to the image.

Both are pure JAX (NumPy arrays in, device arrays out) with static shapes, so they run
inside a jitted or pmapped eval step and only K detections per image leave the device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scenic.model_lib import box_utils


def class_probabilities(pred_logits, softmax: bool):
    """`[B, N, C]` logits -> `[B, N, C']` probabilities of the real classes.

    `softmax=True`: softmax over all C, then the last ("no object") class is dropped
    (C' = C - 1). `softmax=False`: an independent sigmoid per class (C' = C).
    """
    logits = jnp.asarray(pred_logits, jnp.float32)
    if softmax:
        if logits.shape[-1] < 2:
            raise ValueError(
                f"A softmax detector needs at least one class plus 'no object'; got "
                f"{logits.shape[-1]} logits."
            )
        return jax.nn.softmax(logits, axis=-1)[..., :-1]
    return jax.nn.sigmoid(logits)


def top_k_detections(pred_logits, pred_boxes, k: int, softmax: bool):
    """The `k` highest-scoring (box, class) pairs of each image.

    Args:
      pred_logits: `[B, N, C]`.
      pred_boxes: `[B, N, 4]`, any box format (returned as given).
      k: detections per image; at most N x C' are returned when there are fewer pairs.
      softmax: see `class_probabilities`.

    Returns:
      `(scores [B, K], labels [B, K] int32, boxes [B, K, 4])`, best first; equal scores
      keep the order of (query, class) pairs (query-major).
    """
    probs = class_probabilities(pred_logits, softmax)
    batch, num_queries, num_classes = probs.shape
    if pred_boxes.shape != (batch, num_queries, 4):
        raise ValueError(
            f"pred_boxes {pred_boxes.shape} do not match pred_logits {pred_logits.shape}."
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    k = min(int(k), num_queries * num_classes)
    scores, flat = jax.lax.top_k(probs.reshape(batch, num_queries * num_classes), k)
    query, labels = flat // num_classes, flat % num_classes
    boxes = jnp.take_along_axis(jnp.asarray(pred_boxes), query[..., None], axis=1)
    return scores, labels.astype(jnp.int32), boxes


def boxes_to_original_pixels(boxes, canvas_size, size, orig_size, clip: bool = True):
    """Canvas-normalised cxcywh `[B, ..., 4]` -> xyxy pixels of each original image.

    Args:
      boxes: `[B, ..., 4]` cx, cy, w, h as fractions of the canvas.
      canvas_size: the canvas (height, width) in pixels, or one int for a square canvas.
      size: `[B, 2]` (height, width) of the resized image inside the canvas.
      orig_size: `[B, 2]` (height, width) of the original image.
      clip: clip the boxes to the original image.

    An example whose `size` is 0 (eval padding) gets a scale of `orig_size` instead of a
    division by zero; padded examples are dropped before they are scored anyway.
    """
    canvas_hw = jnp.broadcast_to(jnp.asarray(canvas_size, jnp.float32), (2,))
    size = jnp.asarray(size, jnp.float32)
    orig = jnp.asarray(orig_size, jnp.float32)
    scale_hw = canvas_hw * orig / jnp.maximum(size, 1.0)  # [B, 2] pixels per canvas unit
    extra = (1,) * (boxes.ndim - 2)
    scale_xyxy = jnp.stack([scale_hw[:, 1], scale_hw[:, 0]] * 2, axis=-1)
    xyxy = box_utils.cxcywh_to_xyxy(jnp.asarray(boxes, jnp.float32))
    pixels = xyxy * scale_xyxy.reshape(scale_xyxy.shape[0], *extra, 4)
    if clip:
        limit = jnp.stack([orig[:, 1], orig[:, 0]] * 2, axis=-1).reshape(orig.shape[0], *extra, 4)
        pixels = jnp.clip(pixels, 0.0, limit)
    return pixels
