"""DetectionModel specifics: matchers, invariances, gradients, empty targets and errors.

Loss and metrics against a SciPy / NumPy float64 reference, padding and the 2-device
normalisation are in test_base_models_reference.py.
"""

import functools

import jax
import ml_collections
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from scenic.common_lib.config_utils import ConfigError
from scenic.model_lib import matchers
from scenic.model_lib.base_models import DetectionModel
from scenic.model_lib.base_models.detection_model import DEFAULTS

EXACT = ["hungarian_matcher", "hungarian_tpu_matcher", "hungarian_scan_tpu_matcher"]


class Model(DetectionModel):
    def build_flax_model(self):
        return None


def make(**config):
    return Model(ml_collections.ConfigDict(config), {})


def example(seed, batch=2, queries=5, slots=3, classes=4):
    rng = np.random.default_rng(seed)
    boxes = lambda *shape: np.concatenate(
        [rng.uniform(0.2, 0.8, (*shape, 2)), rng.uniform(0.05, 0.4, (*shape, 2))], -1
    ).astype(np.float32)
    outputs = {
        "pred_logits": rng.normal(size=(batch, queries, classes)).astype(np.float32),
        "pred_boxes": boxes(batch, queries),
    }
    box_mask = np.ones((batch, slots), np.float32)
    box_mask[0, 1] = 0.0
    label = {
        "labels": rng.integers(0, classes - 1, (batch, slots)).astype(np.int32),
        "boxes": boxes(batch, slots),
        "box_mask": box_mask,
    }
    return outputs, {"label": label, "batch_mask": np.ones(batch, np.float32)}


@functools.cache
def jitted_default_loss():
    return jax.jit(make().loss_function)


def default_loss(outputs, batch):
    return jitted_default_loss()(outputs, batch)


def test_config_keys_defaults_and_errors():
    assert set(DEFAULTS) <= set(DetectionModel.config_keys)
    model = make()
    assert [model.option(k) for k in ("class_loss_coef", "bbox_loss_coef", "giou_loss_coef")] == [
        1.0,
        5.0,
        2.0,
    ]
    assert model.matcher is matchers.hungarian_matcher
    with pytest.raises(ConfigError, match="hungarian_matcher"):
        make(matcher="hungarian_matchr")
    with pytest.raises(ConfigError, match="class_loss"):
        make(class_loss="softmax_focal")


@pytest.mark.parametrize("name", sorted(matchers.MATCHERS))
def test_every_matcher_runs_jitted_and_exact_ones_agree(name):
    outputs, batch = example(0)
    loss = float(jax.jit(make(matcher=name).loss_function)(outputs, batch))
    assert np.isfinite(loss)
    if name in EXACT:
        np.testing.assert_allclose(loss, float(default_loss(outputs, batch)), rtol=1e-5)


@pytest.mark.parametrize("class_loss", ["softmax", "sigmoid_focal"])
def test_permuting_queries_or_target_slots_changes_nothing(class_loss):
    model = make(class_loss=class_loss)
    run = jax.jit(model.loss_and_metrics)
    outputs, batch = example(1, batch=2, queries=6, slots=4)
    loss, metrics = run(outputs, batch)
    rng = np.random.default_rng(1)
    queries, slots = rng.permutation(6), rng.permutation(4)
    outputs2 = {k: v[:, queries] for k, v in outputs.items()}
    label2 = {k: v[:, slots] for k, v in batch["label"].items()}
    loss2, metrics2 = run(outputs2, dict(batch, label=label2))
    np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-5)
    for key in metrics:
        np.testing.assert_allclose(metrics2[key], metrics[key], rtol=1e-5, err_msg=key)


def test_box_gradient_flows_only_through_the_matched_l1_terms():
    """With class and GIoU weights 0 the loss is 5 * L1 / num_boxes of the L1-optimal
    matching, so d loss / d pred_boxes is 5 * sign(pred - target) / num_boxes on matched
    queries and 0 elsewhere: nothing comes through the matching itself."""
    model = make(class_loss_coef=0.0, giou_loss_coef=0.0)
    outputs, batch = example(2)
    label = batch["label"]
    label["boxes"][label["box_mask"] == 0] = np.nan
    loss = lambda b: model.loss_function(dict(outputs, pred_boxes=b), batch)
    grad = np.asarray(jax.jit(jax.grad(loss))(outputs["pred_boxes"]))
    num_boxes = label["box_mask"].sum()
    expected = np.zeros_like(grad)
    for b in range(2):
        keep = label["box_mask"][b] > 0
        pred, true = outputs["pred_boxes"][b].astype(np.float64), label["boxes"][b][keep]
        rows, cols = linear_sum_assignment(np.abs(pred[:, None] - true[None]).sum(-1))
        expected[b, rows] = 5.0 * np.sign(pred[rows] - true[cols]) / num_boxes
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)


def test_class_accuracy_counts_matched_targets_with_their_class_on_top():
    """Against SciPy's assignment of the same float64 cost (class 1, L1 5, GIoU 2)."""
    from scenic.model_lib import box_utils

    model = make()
    outputs, batch = example(6, batch=3, queries=6, slots=4, classes=5)
    label = batch["label"]
    # Half of the real targets get a query whose top class is theirs.
    for b in range(3):
        for j in range(0, 4, 2):
            outputs["pred_logits"][b, j, label["labels"][b, j]] += 6.0
    _, metrics = jax.jit(model.loss_and_metrics)(outputs, batch)
    logits = outputs["pred_logits"].astype(np.float64)
    prob = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    correct = 0
    for b in range(3):
        keep = label["box_mask"][b] > 0
        labels, true = label["labels"][b][keep], label["boxes"][b][keep]
        pred = outputs["pred_boxes"][b]
        giou = np.asarray(
            box_utils.generalized_box_iou(
                box_utils.cxcywh_to_xyxy(pred), box_utils.cxcywh_to_xyxy(true)
            )
        )
        cost = -prob[b][:, labels] + 5 * np.abs(pred[:, None] - true[None]).sum(-1) - 2 * giou
        rows, cols = linear_sum_assignment(cost)
        correct += int(np.sum(logits[b, rows].argmax(-1) == labels[cols]))
    value, normalizer = metrics["class_accuracy"]
    assert float(normalizer) == label["box_mask"].sum() == 11
    assert 0 < correct < 11
    assert float(value) == correct


def test_gradients_are_finite_with_garbage_in_padded_targets():
    model = make()
    outputs, batch = example(3)
    outputs["aux_outputs"] = [dict(outputs)]
    label = batch["label"]
    label["boxes"][label["box_mask"] == 0] = np.nan
    label["labels"][label["box_mask"] == 0] = -7
    grads = jax.jit(jax.grad(model.loss_function))(outputs, batch)
    for g in jax.tree.leaves(grads):
        assert np.all(np.isfinite(np.asarray(g)))


def test_no_targets_normalises_by_one_and_only_no_object_remains():
    model = make()
    outputs, batch = example(4)
    batch["label"]["box_mask"][:] = 0.0
    loss, metrics = jax.jit(model.loss_and_metrics)(outputs, batch)
    assert all(float(norm) == 1.0 for _, norm in metrics.values())
    assert float(metrics["loss_bbox"][0]) == 0.0 and float(metrics["loss_giou"][0]) == 0.0
    logits = outputs["pred_logits"].astype(np.float64)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(
        float(metrics["loss_class"][0]), -0.1 * log_p[..., -1].sum(), rtol=1e-5
    )
    np.testing.assert_allclose(float(loss), float(metrics["loss"][0]), rtol=1e-6)


def test_bad_inputs_name_what_is_wrong():
    model = make()
    outputs, batch = example(5)
    with pytest.raises(ValueError, match="must be a dict"):
        model.loss_function(outputs, dict(batch, label=batch["label"]["labels"]))
    bad_boxes = dict(batch["label"], boxes=batch["label"]["boxes"][..., :3])
    with pytest.raises(ValueError, match=r"label\['boxes'\]"):
        model.loss_function(outputs, dict(batch, label=bad_boxes))
    bad_mask = dict(batch["label"], box_mask=batch["label"]["box_mask"][:, :2])
    with pytest.raises(ValueError, match="box_mask"):
        model.loss_function(outputs, dict(batch, label=bad_mask))
    with pytest.raises(ValueError, match="pred_boxes"):
        model.loss_function(dict(outputs, pred_boxes=outputs["pred_boxes"][..., :2]), batch)
