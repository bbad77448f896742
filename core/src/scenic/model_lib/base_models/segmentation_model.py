"""Semantic segmentation base model: pixel-wise cross-entropy with optional class rebalancing.

`batch['label']` holds integer class maps `[B, H, W]`; `batch_mask` may be per example
`[B]` or per pixel `[B, H, W]` (0 for padding and ignored pixels). Besides the (sum,
normalizer) metrics, `confusion_matrix` gives counts that sum across devices, hosts and
batches; `iou_from_confusion` turns the total into per-class and mean IoU (global metrics
cannot be averaged per batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from scenic.model_lib import model_utils
from scenic.model_lib.base_models.base_model import BaseModel


class SegmentationModel(BaseModel):
    """Reads `class_rebalancing_factor` (0: none, 1: inverse frequency within the batch)."""

    config_keys = (*BaseModel.config_keys, "class_rebalancing_factor")

    @property
    def num_classes(self) -> int:
        return self.dataset_meta_data["num_classes"]

    def pixel_weights(self, batch, dtype=jnp.float32):
        labels = batch["label"]
        mask = batch.get("batch_mask")
        if mask is None:
            return jnp.ones(labels.shape, dtype)
        mask = mask.astype(dtype)
        return jnp.broadcast_to(
            mask.reshape(mask.shape + (1,) * (labels.ndim - mask.ndim)), labels.shape
        )

    def loss_function(self, logits, batch, model_params=None):
        labels = batch["label"]
        real = self.pixel_weights(batch)
        weights = real
        factor = self.config.get("class_rebalancing_factor") or 0.0
        if factor:
            counts = jnp.sum(
                jax.nn.one_hot(labels, self.num_classes) * weights[..., None],
                axis=tuple(range(labels.ndim)),
            )
            freq = counts / jnp.maximum(jnp.sum(counts), 1.0)
            class_weight = jnp.where(counts > 0, 1.0 / jnp.maximum(freq, 1e-8), 0.0)
            class_weight = class_weight / jnp.maximum(
                jnp.sum(class_weight * freq), 1e-8
            )  # mean weight over pixels stays 1
            class_weight = (1.0 - factor) + factor * class_weight
            weights = weights * class_weight[labels]
        per_pixel = model_utils.softmax_cross_entropy(
            logits, jax.nn.one_hot(labels, self.num_classes)
        )
        loss = jnp.sum(per_pixel * weights) / jnp.maximum(jnp.sum(real), 1e-8)
        return loss + self.l2_term(model_params)

    def get_metrics(self, logits, batch, axis_name=None):
        """Pixel accuracy and loss as (sum, normalizer) over real pixels."""
        weights = self.pixel_weights(batch).reshape(-1)
        labels = batch["label"]
        per_pixel = {
            "pixel_accuracy": (jnp.argmax(logits, -1) == labels).astype(jnp.float32),
            "loss": model_utils.softmax_cross_entropy(
                logits, jax.nn.one_hot(labels, self.num_classes)
            ),
        }
        return {
            name: model_utils.sum_and_normalizer(values.reshape(-1), weights, axis_name)
            for name, values in per_pixel.items()
        }

    def eval_totals(self, logits, batch, axis_name=None):
        return {"confusion": self.confusion_matrix(logits, batch, axis_name)}

    def global_metrics(self, totals, examples):
        if "confusion" not in totals:
            return {}
        iou = iou_from_confusion(totals["confusion"])
        metrics = {"mean_iou": iou["mean_iou"]}
        for index, value in enumerate(iou["per_class_iou"]):
            if np.isfinite(value):
                metrics[f"iou/class_{index}"] = float(value)
        return metrics

    def confusion_matrix(self, logits, batch, axis_name=None):
        matrix = model_utils.confusion_matrix(
            batch["label"], jnp.argmax(logits, -1), self.num_classes, self.pixel_weights(batch)
        )
        return jax.lax.psum(matrix, axis_name) if axis_name is not None else matrix


def iou_from_confusion(confusion) -> dict:
    """Per-class IoU = TP / (TP + FP + FN) and their mean over classes that occur."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    denominator = confusion.sum(0) + confusion.sum(1) - tp
    present = denominator > 0
    per_class = np.where(present, tp / np.where(present, denominator, 1.0), np.nan)
    return {
        "mean_iou": float(np.nanmean(per_class)) if present.any() else 0.0,
        "per_class_iou": per_class,
    }
