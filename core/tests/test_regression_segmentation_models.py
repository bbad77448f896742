"""Regression and segmentation base models against NumPy float64 references."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scenic.model_lib.base_models.regression_model import RegressionModel
from scenic.model_lib.base_models.segmentation_model import SegmentationModel, iou_from_confusion

RNG = np.random.default_rng(0)


def make(cls, **config):
    class Model(cls):
        def build_flax_model(self):
            return None

    return Model(ml_collections.ConfigDict(config), {"num_classes": 4})


def test_regression_loss_and_metrics_ignore_padding():
    model = make(RegressionModel, l2_decay_factor=None)
    preds = RNG.normal(size=(6, 3))
    targets = RNG.normal(size=(6, 3))
    targets[4:] = 1e4  # padded rows hold garbage
    mask = np.array([1, 1, 1, 1, 0, 0], np.float32)
    batch = {"targets": jnp.asarray(targets), "batch_mask": jnp.asarray(mask)}
    sq = ((preds - targets) ** 2).sum(-1)
    np.testing.assert_allclose(
        model.loss_function(jnp.asarray(preds, jnp.float32), batch), sq[:4].mean(), rtol=1e-5
    )
    metrics = model.get_metrics(jnp.asarray(preds, jnp.float32), batch)
    mse_sum, norm = metrics["mean_squared_error"]
    np.testing.assert_allclose(mse_sum, (sq[:4] / 3).sum(), rtol=1e-5)
    assert float(norm) == 4.0
    mae = np.abs(preds - targets).sum(-1)[:4] / 3
    np.testing.assert_allclose(metrics["mean_absolute_error"][0], mae.sum(), rtol=1e-5)


def reference_segmentation_loss(logits, labels, pixel_weights, factor):
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(log_p, labels[..., None], -1)[..., 0]
    weights = pixel_weights.copy()
    if factor:
        counts = np.array([(pixel_weights * (labels == c)).sum() for c in range(4)])
        freq = counts / counts.sum()
        w = np.where(counts > 0, 1 / np.maximum(freq, 1e-8), 0.0)
        w = w / (w * freq).sum()
        weights = weights * ((1 - factor) + factor * w[labels])
    return (ce * weights).sum() / pixel_weights.sum()


@pytest.mark.parametrize("factor", [0.0, 0.5, 1.0])
def test_segmentation_loss_with_rebalancing_and_padding(factor):
    model = make(SegmentationModel, l2_decay_factor=None, class_rebalancing_factor=factor)
    logits = RNG.normal(size=(3, 5, 5, 4))
    labels = RNG.integers(0, 4, (3, 5, 5))
    mask = np.array([1.0, 1.0, 0.0], np.float32)
    batch = {"label": jnp.asarray(labels), "batch_mask": jnp.asarray(mask)}
    pixel_weights = np.broadcast_to(mask[:, None, None], labels.shape).astype(np.float64)
    expected = reference_segmentation_loss(logits, labels, pixel_weights, factor)
    got = model.loss_function(jnp.asarray(logits, jnp.float32), batch)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_segmentation_metrics_confusion_and_iou():
    model = make(SegmentationModel, l2_decay_factor=None, class_rebalancing_factor=None)
    logits = RNG.normal(size=(2, 4, 4, 4))
    labels = RNG.integers(0, 4, (2, 4, 4))
    pixel_mask = (RNG.random((2, 4, 4)) < 0.8).astype(np.float32)  # per-pixel ignore
    batch = {"label": jnp.asarray(labels), "batch_mask": jnp.asarray(pixel_mask)}
    preds = logits.argmax(-1)
    acc_sum, acc_norm = model.get_metrics(jnp.asarray(logits, jnp.float32), batch)[
        "pixel_accuracy"
    ]
    assert float(acc_norm) == pixel_mask.sum()
    assert float(acc_sum) == ((preds == labels) * pixel_mask).sum()
    confusion = np.asarray(model.confusion_matrix(jnp.asarray(logits, jnp.float32), batch))
    expected = np.zeros((4, 4))
    np.add.at(expected, (labels.ravel(), preds.ravel()), pixel_mask.ravel())
    np.testing.assert_array_equal(confusion, expected)
    ious = iou_from_confusion(confusion)
    for c in range(4):
        tp = expected[c, c]
        denom = expected[c].sum() + expected[:, c].sum() - tp
        if denom:
            assert ious["per_class_iou"][c] == pytest.approx(tp / denom)
    assert ious["mean_iou"] == pytest.approx(np.nanmean(ious["per_class_iou"]))
    summed = jax.vmap(
        lambda lg, lb, m: model.confusion_matrix(lg, {"label": lb, "batch_mask": m}, "d"),
        axis_name="d",
    )(jnp.asarray(logits, jnp.float32)[:, None], jnp.asarray(labels)[:, None],
      jnp.asarray(pixel_mask)[:, None])
    np.testing.assert_array_equal(summed[0], expected)
