"""Focal losses, top-k, precision@k, Dice, L1/L2, confusion matrix vs NumPy float64."""

import jax.numpy as jnp
import numpy as np
import pytest

from scenic.model_lib import model_utils

RNG = np.random.default_rng(0)


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("alpha", [None, 0.25])
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_sigmoid_focal_loss(alpha, gamma):
    logits = RNG.normal(size=(6, 5)) * 3
    targets = (RNG.random((6, 5)) < 0.4).astype(np.float64)
    p = np_sigmoid(logits)
    p_t = np.where(targets == 1, p, 1 - p)
    expected = -np.log(p_t) * (1 - p_t) ** gamma
    if alpha is not None:
        expected *= np.where(targets == 1, alpha, 1 - alpha)
    got = model_utils.sigmoid_focal_loss(jnp.asarray(logits, jnp.float32), targets, alpha, gamma)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_softmax_focal_loss_reduces_to_cross_entropy_at_gamma_zero():
    logits = RNG.normal(size=(4, 6))
    targets = np.eye(6)[RNG.integers(0, 6, 4)]
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    for gamma in (0.0, 1.5):
        expected = -(targets * (1 - np.exp(log_p)) ** gamma * log_p).sum(-1)
        got = model_utils.softmax_focal_loss(jnp.asarray(logits, jnp.float32), targets, gamma)
        np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_topk_and_precision_at_k():
    logits = RNG.normal(size=(50, 10))
    labels = RNG.integers(0, 10, 50)
    order = np.argsort(-logits, axis=-1)
    for k in (1, 3, 10):
        expected = np.array([labels[i] in order[i, :k] for i in range(50)], np.float32)
        got = model_utils.topk_correct(jnp.asarray(logits), jnp.eye(10)[labels], k)
        np.testing.assert_array_equal(got, expected)
    multi_hot = (RNG.random((50, 10)) < 0.3).astype(np.float32)
    for k in (1, 4):
        expected = np.array([multi_hot[i, order[i, :k]].mean() for i in range(50)])
        got = model_utils.precision_at_k(jnp.asarray(logits), jnp.asarray(multi_hot), k)
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_dice_l1_l2():
    logits = RNG.normal(size=(3, 4, 4))
    targets = (RNG.random((3, 4, 4)) < 0.5).astype(np.float64)
    p = np_sigmoid(logits).reshape(3, -1)
    t = targets.reshape(3, -1)
    expected = 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)
    np.testing.assert_allclose(
        model_utils.dice_loss(jnp.asarray(logits, jnp.float32), targets), expected, rtol=1e-5
    )
    a, b = RNG.normal(size=(3, 2, 5)), RNG.normal(size=(3, 2, 5))
    np.testing.assert_allclose(model_utils.l1_loss(a, b), np.abs(a - b).sum((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(model_utils.l2_loss(a, b), ((a - b) ** 2).sum((1, 2)), rtol=1e-5)


def test_confusion_matrix_ignores_padding():
    labels = RNG.integers(0, 4, 40)
    preds = RNG.integers(0, 4, 40)
    mask = (RNG.random(40) < 0.7).astype(np.float32)
    expected = np.zeros((4, 4))
    for y, p, m in zip(labels, preds, mask):
        expected[y, p] += m
    labels, preds = jnp.asarray(labels), jnp.asarray(preds)
    got = model_utils.confusion_matrix(labels, preds, 4, jnp.asarray(mask))
    np.testing.assert_array_equal(got, expected)
    assert float(model_utils.confusion_matrix(labels, preds, 4).sum()) == 40
