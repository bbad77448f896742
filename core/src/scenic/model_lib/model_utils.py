"""Losses and metrics shared by the base models.

Metrics follow one contract: each returns per-example values, and the base models
reduce them to a (sum, normalizer) pair weighted by `batch_mask`, so padded examples
never count and pairs can be summed across devices, hosts and batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def one_hot_or_soft(labels: jnp.ndarray, num_classes: int) -> jnp.ndarray:
    """Class indices `[B]` -> one-hot `[B, C]`; targets `[B, C]` (one-hot or soft, any
    dtype) pass through as floats."""
    if labels.ndim == 1:
        return jax.nn.one_hot(labels, num_classes)
    if labels.shape[-1] != num_classes:
        raise ValueError(f"Labels {labels.shape} do not end in num_classes={num_classes}.")
    return labels.astype(jnp.float32)


def apply_label_smoothing(targets: jnp.ndarray, smoothing: float | None) -> jnp.ndarray:
    """Mixes one-hot targets with the uniform distribution (Szegedy et al., 2016)."""
    if not smoothing:
        return targets
    num_classes = targets.shape[-1]
    return targets * (1.0 - smoothing) + smoothing / num_classes


def softmax_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """Per-example cross-entropy between soft targets and softmax(logits)."""
    return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def sigmoid_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """Per-example binary cross-entropy summed over classes (numerically stable)."""
    log_p = jax.nn.log_sigmoid(logits)
    log_not_p = jax.nn.log_sigmoid(-logits)
    return -jnp.sum(targets * log_p + (1.0 - targets) * log_not_p, axis=-1)


def weighted_mean(values: jnp.ndarray, weights: jnp.ndarray | None) -> jnp.ndarray:
    """Mean of per-example values over examples whose weight is non-zero."""
    if weights is None:
        return jnp.mean(values)
    weights = weights.astype(values.dtype)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-8)


def weighted_softmax_cross_entropy(
    logits, targets, weights=None, label_smoothing=None
) -> jnp.ndarray:
    """Mean softmax cross-entropy over real (weight > 0) examples."""
    targets = apply_label_smoothing(targets, label_smoothing)
    return weighted_mean(softmax_cross_entropy(logits, targets), weights)


def weighted_sigmoid_cross_entropy(
    logits, targets, weights=None, label_smoothing=None
) -> jnp.ndarray:
    """Mean (over examples) of the per-example summed sigmoid cross-entropy."""
    targets = apply_label_smoothing(targets, label_smoothing)
    return weighted_mean(sigmoid_cross_entropy(logits, targets), weights)


def correctly_classified(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """1.0 where the arg-max class of `logits` is the arg-max of `targets`."""
    return (jnp.argmax(logits, axis=-1) == jnp.argmax(targets, axis=-1)).astype(jnp.float32)


def top1_is_positive(logits: jnp.ndarray, multi_hot: jnp.ndarray) -> jnp.ndarray:
    """Precision@1 per example: 1.0 where the top-scoring class is a positive label."""
    top = jnp.argmax(logits, axis=-1)
    return jnp.take_along_axis(multi_hot, top[..., None], axis=-1)[..., 0].astype(jnp.float32)


def l2_penalty(params) -> jnp.ndarray:
    """Half the squared L2 norm of every parameter array."""
    leaves = jax.tree.leaves(params)
    return 0.5 * sum(jnp.sum(jnp.square(p)) for p in leaves)


def sum_and_normalizer(values: jnp.ndarray, weights: jnp.ndarray | None, axis_name=None):
    """Reduces per-example values to (weighted sum, sum of weights), psum'ed over `axis_name`."""
    if weights is None:
        weights = jnp.ones(values.shape[:1], values.dtype)
    weights = weights.astype(jnp.float32)
    pair = (jnp.sum(values.astype(jnp.float32) * weights), jnp.sum(weights))
    if axis_name is not None:
        pair = jax.lax.psum(pair, axis_name)
    return pair


def sigmoid_focal_loss(logits, targets, alpha: float | None = 0.25, gamma: float = 2.0):
    """Per-element sigmoid focal loss (Lin et al., 2017): BCE scaled by (1 - p_t) ** gamma,
    weighted alpha for positives and 1 - alpha for negatives (no weighting if alpha is None)."""
    p = jax.nn.sigmoid(logits)
    bce = -(targets * jax.nn.log_sigmoid(logits) + (1 - targets) * jax.nn.log_sigmoid(-logits))
    p_t = p * targets + (1 - p) * (1 - targets)
    # gamma 0 is plain BCE: no (1 - p_t) ** 0 factor, whose gradient is NaN at p_t = 1.
    loss = bce if gamma == 0 else bce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def softmax_focal_loss(logits, targets, gamma: float = 2.0):
    """Per-example softmax focal loss: cross-entropy with each class term scaled by
    (1 - p_c) ** gamma."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(targets * (1 - jnp.exp(log_p)) ** gamma * log_p, axis=-1)


def topk_correct(logits, targets, k: int) -> jnp.ndarray:
    """1.0 where the arg-max class of `targets` is among the `k` highest logits."""
    label = jnp.argmax(targets, axis=-1)
    top = jax.lax.top_k(logits, k)[1]
    return jnp.any(top == label[..., None], axis=-1).astype(jnp.float32)


def precision_at_k(logits, multi_hot, k: int) -> jnp.ndarray:
    """Per example: the fraction of the `k` highest-scoring classes that are positives."""
    top = jax.lax.top_k(logits, k)[1]
    return jnp.mean(jnp.take_along_axis(multi_hot, top, axis=-1).astype(jnp.float32), axis=-1)


def dice_loss(logits, targets, eps: float = 1.0):
    """Per-example soft Dice loss on sigmoid probabilities, over all non-batch axes."""
    p = jax.nn.sigmoid(logits).reshape(logits.shape[0], -1)
    t = targets.reshape(targets.shape[0], -1).astype(p.dtype)
    return 1.0 - (2.0 * jnp.sum(p * t, -1) + eps) / (jnp.sum(p, -1) + jnp.sum(t, -1) + eps)


def l1_loss(predictions, targets):
    """Per-example sum of absolute differences over all non-batch axes."""
    diff = jnp.abs(predictions - targets)
    return diff.reshape(diff.shape[0], -1).sum(-1)


def l2_loss(predictions, targets):
    """Per-example sum of squared differences over all non-batch axes."""
    diff = jnp.square(predictions - targets)
    return diff.reshape(diff.shape[0], -1).sum(-1)


def confusion_matrix(labels, predictions, num_classes: int, weights=None) -> jnp.ndarray:
    """`[num_classes, num_classes]` counts, rows true class, columns predicted; entries with
    weight 0 (padding) are not counted. Sums across devices like the metric pairs."""
    labels, predictions = labels.reshape(-1), predictions.reshape(-1)
    w = jnp.ones(labels.shape, jnp.float32) if weights is None else weights.reshape(-1)
    flat = labels * num_classes + predictions
    counts = jnp.zeros((num_classes * num_classes,), jnp.float32).at[flat].add(w)
    return counts.reshape(num_classes, num_classes)


def average_precision(scores, labels) -> float:
    """Area under the precision-recall curve of one class, as a step function (each
    positive's precision at its rank, averaged over positives; ties share a threshold),
    matching scikit-learn's `average_precision_score`. NaN when there is no positive."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels) > 0
    if not labels.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    true_positives = np.cumsum(labels)
    # Evaluate only at the last index of each group of tied scores.
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    tp = true_positives[last_of_tie]
    predicted = (np.arange(1, len(scores) + 1))[last_of_tie]
    precision = tp / predicted
    recall = tp / labels.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores, labels) -> float:
    """Mean over classes (with at least one positive) of `average_precision`; `[N, C]`."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    per_class = [average_precision(scores[:, c], labels[:, c]) for c in range(scores.shape[1])]
    per_class = [ap for ap in per_class if not np.isnan(ap)]
    return float(np.mean(per_class)) if per_class else 0.0


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of one class: the probability that a random positive scores
    above a random negative, ties counting one half (the Mann-Whitney statistic, equal to
    scikit-learn's `roc_auc_score`). NaN without both a positive and a negative."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels) > 0
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return float("nan")
    ranks = rankdata(scores)  # average ranks: ties share
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def mean_roc_auc(scores, labels) -> float:
    """Mean over classes (with a positive and a negative) of `roc_auc`; `[N, C]`."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    per_class = [roc_auc(scores[:, c], labels[:, c]) for c in range(scores.shape[1])]
    per_class = [a for a in per_class if not np.isnan(a)]
    return float(np.mean(per_class)) if per_class else float("nan")


def d_prime(auc: float) -> float:
    """AudioSet's d-prime: the separation of two unit-variance Gaussians with this ROC AUC,
    sqrt(2) * Phi^-1(AUC) (Gemmeke et al., 2017; Hershey et al., 2017)."""
    from scipy.stats import norm

    return float(np.sqrt(2.0) * norm.ppf(auc))
