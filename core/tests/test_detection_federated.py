"""DetectionModel's federated label spaces (`federated_loss`, LVIS-style) for the sigmoid
focal class loss, against an independent NumPy / SciPy float64 reference."""

import jax
import ml_collections
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from scenic.common_lib.config_utils import ConfigError
from scenic.model_lib.base_models import DetectionModel
from scenic.model_lib.base_models.detection_model import DEFAULTS

ALPHA, GAMMA = 0.25, 2.0
B, N, M, C = 3, 6, 4, 7


class Model(DetectionModel):
    def build_flax_model(self):
        return None


def make(**config):
    return Model(ml_collections.ConfigDict({"class_loss": "sigmoid_focal", **config}), {})


def random_boxes(rng, *shape):
    return np.concatenate(
        [rng.uniform(0.2, 0.8, (*shape, 2)), rng.uniform(0.05, 0.4, (*shape, 2))], -1
    ).astype(np.float32)


def lvis_batch(seed=0):
    """Image 0: class 2 is both a positive and not exhaustive; image 1: no negatives (all
    -1); image 2: batch_mask 0. Padded targets hold garbage labels."""
    rng = np.random.default_rng(seed)
    outputs = {"pred_logits": rng.normal(size=(B, N, C)), "pred_boxes": random_boxes(rng, B, N)}
    outputs["pred_logits"] = outputs["pred_logits"].astype(np.float32)
    outputs["aux_outputs"] = [
        {
            "pred_logits": rng.normal(size=(B, N, C)).astype(np.float32),
            "pred_boxes": random_boxes(rng, B, N),
        }
    ]
    label = {
        "labels": np.array([[2, 0, 2, 5], [1, 4, 6, 6], [3, 0, 1, 2]], np.int32),
        "boxes": random_boxes(rng, B, M),
        "box_mask": np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], np.float32),
        "neg_category_ids": np.array([[3, 6, -1], [-1, -1, -1], [0, 5, 6]], np.int32),
        "not_exhaustive_category_ids": np.array([[2, 4, -1], [4, -1, -1], [3, -1, -1]], np.int32),
    }
    label["labels"][0, 3] = 99  # padding: any label
    return outputs, {"label": label, "batch_mask": np.array([1, 1, 0], np.float32)}


def giou(a, b):
    """Generalized IoU of cxcywh boxes `[n, 4]` x `[m, 4]` in float64."""
    xyxy = lambda x: np.concatenate([x[:, :2] - x[:, 2:] / 2, x[:, :2] + x[:, 2:] / 2], -1)
    a, b = xyxy(a.astype(np.float64))[:, None], xyxy(b.astype(np.float64))[None]
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
    wh = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area(a) + area(b) - inter
    hull = np.maximum(a[..., 2:], b[..., 2:]) - np.minimum(a[..., :2], b[..., :2])
    return inter / union - (hull[..., 0] * hull[..., 1] - union) / (hull[..., 0] * hull[..., 1])


def reference_class_sum(output, batch, federated=True, space=None):
    """Sum over real images, queries and classes of the (weighted) sigmoid focal loss after
    SciPy's matching on the focal + 5 L1 - 2 GIoU cost."""
    label = batch["label"]
    total = 0.0
    for b in range(B):
        if batch["batch_mask"][b] == 0:
            continue
        keep = label["box_mask"][b] > 0
        labels, boxes = label["labels"][b][keep], label["boxes"][b][keep]
        x = output["pred_logits"][b].astype(np.float64)
        p = 1 / (1 + np.exp(-x))
        pos = ALPHA * (1 - p) ** GAMMA * -np.log(p)
        neg = (1 - ALPHA) * p**GAMMA * -np.log(1 - p)
        pred = output["pred_boxes"][b]
        cost = (pos - neg)[:, labels] + 5 * np.abs(pred[:, None] - boxes[None]).sum(-1)
        rows, cols = linear_sum_assignment(cost - 2 * giou(pred, boxes))
        target = np.zeros((N, C))
        target[rows, labels[cols]] = 1.0
        weight = np.ones((N, C))
        if federated:
            for c in range(C):
                if space is not None:
                    in_space = space[b, c] > 0
                else:
                    in_space = c in labels or c in label["neg_category_ids"][b]
                if c in label["not_exhaustive_category_ids"][b]:
                    in_space = False
                weight[:, c] = float(in_space)
            weight[target > 0] = 1.0
        total += np.sum(weight * np.where(target > 0, pos, neg))
    return total


def test_federated_focal_class_loss_matches_a_float64_reference():
    outputs, batch = lvis_batch()
    assert DEFAULTS["federated_loss"] is False
    loss, metrics = jax.jit(make(federated_loss=True).loss_and_metrics)(outputs, batch)
    assert float(metrics["loss_class"][1]) == 5.0  # real targets of real images
    for key, output in [("loss_class", outputs), ("loss_class_aux0", outputs["aux_outputs"][0])]:
        np.testing.assert_allclose(
            float(metrics[key][0]), reference_class_sum(output, batch), rtol=1e-5, err_msg=key
        )
    assert np.isfinite(float(loss))
    # Negative control: the unweighted loss differs on this batch (and matches its reference).
    _, plain = jax.jit(make().loss_and_metrics)(outputs, batch)
    unweighted = reference_class_sum(outputs, batch, federated=False)
    np.testing.assert_allclose(float(plain["loss_class"][0]), unweighted, rtol=1e-5)
    assert float(metrics["loss_class"][0]) < 0.8 * unweighted
    for key in ("loss_bbox", "loss_giou", "class_accuracy"):
        np.testing.assert_allclose(metrics[key], plain[key], rtol=1e-6, err_msg=key)


def test_ignored_entries_get_no_gradient():
    outputs, batch = lvis_batch(1)
    model = make(federated_loss=True)
    loss = lambda logits: model.loss_function(dict(outputs, pred_logits=logits), batch)
    grad = np.asarray(jax.jit(jax.grad(loss))(outputs["pred_logits"]))
    assert np.all(grad[2] == 0.0)  # batch_mask 0
    # Image 1 (no negatives): positives 1 and 4, 4 not exhaustive; 6 only on padding.
    assert np.all(grad[1, :, [0, 2, 3, 5, 6]] == 0.0)
    assert np.sum(grad[1, :, 4] != 0) == 1  # only its matched query
    assert np.all(grad[1, :, 1] != 0.0)


def test_explicit_label_space_equals_the_lists():
    outputs, batch = lvis_batch(2)
    label = batch["label"]
    run = lambda model, label: jax.jit(model.loss_and_metrics)(outputs, dict(batch, label=label))
    _, expected = run(make(federated_loss=True), label)
    space = np.zeros((B, C), np.float32)  # positives and negatives
    for b in range(B):
        ids = [*label["labels"][b][label["box_mask"][b] > 0], *label["neg_category_ids"][b]]
        space[b, [i for i in ids if i >= 0]] = 1.0
    # Explicit spaces always apply; not-exhaustive lists still remove their classes.
    _, explicit = run(make(), dict(label, label_space=space))
    without_lists = {k: v for k, v in label.items() if not k.endswith("category_ids")}
    for b, ids in enumerate(label["not_exhaustive_category_ids"]):
        space[b, ids[ids >= 0]] = 0.0
    _, final = run(make(federated_loss=True), dict(without_lists, label_space=space))
    for key in ("loss_class", "loss_class_aux0"):
        np.testing.assert_allclose(explicit[key], expected[key], rtol=1e-6, err_msg=key)
        np.testing.assert_allclose(final[key], expected[key], rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(
        float(final["loss_class"][0]),
        reference_class_sum(outputs, batch, space=space),
        rtol=1e-5,
    )


def test_federated_errors_name_what_is_missing():
    outputs, batch = lvis_batch()
    label = {k: v for k, v in batch["label"].items() if k != "neg_category_ids"}
    with pytest.raises(ValueError, match=r"neg_category_ids.*label_space"):
        make(federated_loss=True).loss_function(outputs, dict(batch, label=label))
    with pytest.raises(ValueError, match=r"label_space.*\(3, 7\)"):
        make().loss_function(outputs, dict(batch, label=dict(label, label_space=np.ones((3, 6)))))
    with pytest.raises(ConfigError, match="federated_loss"):
        make(class_loss="softmax", federated_loss=True)
    softmax_batch = dict(batch, label=dict(label, label_space=np.ones((3, 7))))
    with pytest.raises(ValueError, match="label_space"):
        make(class_loss="softmax").loss_function(outputs, softmax_batch)
