"""Single-label and multi-label classification base models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from scenic.model_lib import model_utils
from scenic.model_lib.base_models.base_model import BaseModel


class ClassificationModel(BaseModel):
    """Softmax cross-entropy with optional label smoothing; reports loss and accuracy.

    `batch['label']` holds integer classes `[B]` or soft / one-hot targets `[B, C]` (the
    class is their arg-max). Eval also reports `mean_per_class_accuracy` (the mean over
    classes with eval examples: what matters on imbalanced data such as Epic-Kitchens), and
    with `config.per_class_accuracy` each class's accuracy as `per_class_accuracy/{class}`.
    """

    config_keys = (*BaseModel.config_keys, "label_smoothing", "per_class_accuracy")

    @property
    def num_classes(self) -> int:
        return self.dataset_meta_data["num_classes"]

    def targets(self, batch) -> jnp.ndarray:
        return model_utils.one_hot_or_soft(batch["label"], self.num_classes)

    def loss_function(self, logits, batch, model_params=None):
        loss = model_utils.weighted_softmax_cross_entropy(
            logits,
            self.targets(batch),
            batch.get("batch_mask"),
            label_smoothing=self.config.get("label_smoothing"),
        )
        return loss + self.l2_term(model_params)

    def per_example_metrics(self, logits, batch):
        targets = self.targets(batch)
        metrics = {
            "accuracy": model_utils.correctly_classified(logits, targets),
            "loss": model_utils.softmax_cross_entropy(logits, targets),
        }
        if self.num_classes > 5:
            metrics["accuracy_top5"] = model_utils.topk_correct(logits, targets, 5)
        return metrics

    def eval_totals(self, logits, batch, axis_name=None):
        """Eval examples and correct predictions per class (summed over the eval set)."""
        return class_counts(logits, self.targets(batch), batch.get("batch_mask"), axis_name)

    def global_metrics(self, totals, examples):
        return per_class_metrics(totals, listed=bool(self.config.get("per_class_accuracy")))


def class_counts(logits, targets, batch_mask=None, axis_name=None) -> dict[str, jnp.ndarray]:
    """`class_examples` and `class_correct` [C] of one batch (class = arg-max of `targets`;
    padding excluded), summed over `axis_name`: eval totals for `per_class_metrics`."""
    weights = jnp.ones(logits.shape[0]) if batch_mask is None else batch_mask.astype(jnp.float32)
    per_class = jax.nn.one_hot(jnp.argmax(targets, -1), logits.shape[-1]) * weights[:, None]
    correct = model_utils.correctly_classified(logits, targets)
    totals = {
        "class_examples": jnp.sum(per_class, axis=0),
        "class_correct": jnp.sum(per_class * correct[:, None], axis=0),
    }
    return jax.lax.psum(totals, axis_name) if axis_name is not None else totals


def per_class_metrics(totals: dict, suffix: str = "", listed: bool = False) -> dict[str, float]:
    """`mean_per_class_accuracy{suffix}` over the classes with eval examples and, if
    `listed`, `per_class_accuracy{suffix}/{class}` for each, from summed `class_counts`."""
    if "class_examples" not in totals:
        return {}
    accuracy = per_class_accuracy(totals["class_correct"], totals["class_examples"])
    present = np.flatnonzero(np.isfinite(accuracy))
    if not present.size:  # an empty eval set
        return {}
    metrics = {f"mean_per_class_accuracy{suffix}": float(np.mean(accuracy[present]))}
    if listed:
        for index in present:
            metrics[f"per_class_accuracy{suffix}/{index}"] = float(accuracy[index])
    return metrics


def per_class_accuracy(correct, examples) -> np.ndarray:
    """Accuracy of each class (NaN for classes without examples), from summed counts."""
    correct, examples = np.asarray(correct, np.float64), np.asarray(examples, np.float64)
    return np.where(examples > 0, correct / np.maximum(examples, 1.0), np.nan)


class MultiLabelClassificationModel(BaseModel):
    """Sigmoid cross-entropy over classes; reports loss and precision@1.

    `batch['label']` holds multi-hot targets `[B, C]`.
    """

    config_keys = (*BaseModel.config_keys, "label_smoothing")

    def loss_function(self, logits, batch, model_params=None):
        loss = model_utils.weighted_sigmoid_cross_entropy(
            logits,
            batch["label"].astype(logits.dtype),
            batch.get("batch_mask"),
            label_smoothing=self.config.get("label_smoothing"),
        )
        return loss + self.l2_term(model_params)

    def eval_examples(self, logits, batch):
        return {"scores": logits, "labels": batch["label"]}

    def global_metrics(self, totals, examples):
        """AudioSet's metrics over the whole eval set: mean average precision over classes
        with a positive (`mAP`), mean ROC AUC over classes with a positive and a negative
        (`AUC`) and its `d_prime`."""
        if not examples:
            return {}
        return multilabel_metrics(examples["scores"], examples["labels"])

    def per_example_metrics(self, logits, batch):
        targets = batch["label"].astype(jnp.float32)
        return {
            "prec@1": model_utils.top1_is_positive(logits, targets),
            "loss": model_utils.sigmoid_cross_entropy(logits, targets),
        }


def multilabel_metrics(scores, labels) -> dict[str, float]:
    """`mAP`, `AUC` and `d_prime` of scores `[N, C]` against multi-hot labels `[N, C]`."""
    auc = model_utils.mean_roc_auc(scores, labels)
    return {
        "mAP": model_utils.mean_average_precision(scores, labels),
        "AUC": auc,
        "d_prime": model_utils.d_prime(auc) if np.isfinite(auc) else float("nan"),
    }
