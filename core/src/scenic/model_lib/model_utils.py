"""Losses and metrics shared by the base models.

Metrics follow one contract: each returns per-example values, and the base models
reduce them to a (sum, normalizer) pair weighted by `batch_mask`, so padded examples
never count and pairs can be summed across devices, hosts and batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
