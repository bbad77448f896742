"""Every base model in `scenic.model_lib.base_models` against a NumPy float64 reference.

For each model: the jitted loss and every (sum, normalizer) metric on a padded batch (padded
examples, tokens and targets hold adversarial values) equal a reference written here from
the definitions; padded examples do not change the metrics; and the metrics psum'ed over a
2-device pmap (a subprocess with 2 host devices, running this file as a script) equal the
metrics of the concatenated batch on one device. Detection's reference matches with SciPy's
`linear_sum_assignment` on a float64 cost with float64 box maths.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from scenic.model_lib import base_models
from scenic.model_lib.base_models import BaseModel

RTOL, ATOL = 2e-5, 2e-5


# --- NumPy float64 building blocks ---------------------------------------------------------


def f64(x):
    return np.asarray(x, np.float64)


def np_log_softmax(x):
    x = f64(x) - f64(x).max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -f64(x))


def np_xyxy(b):
    b = f64(b)
    return np.stack(
        [
            b[..., 0] - b[..., 2] / 2,
            b[..., 1] - b[..., 3] / 2,
            b[..., 0] + b[..., 2] / 2,
            b[..., 1] + b[..., 3] / 2,
        ],
        -1,
    )


def np_giou(a, b):
    """Pairwise GIoU of cxcywh boxes `[N, 4]` x `[M, 4]`, float64, from the definition."""
    a, b = np_xyxy(a)[:, None], np_xyxy(b)[None, :]
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
    inter_wh = np.clip(
        np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None
    )
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = area(a) + area(b) - inter
    hull_wh = np.maximum(a[..., 2:], b[..., 2:]) - np.minimum(a[..., :2], b[..., :2])
    hull = hull_wh[..., 0] * hull_wh[..., 1]
    return inter / union - (hull - union) / hull


def pair(values, weights):
    weights = f64(weights)
    return float((f64(values) * weights).sum()), float(weights.sum())


def padding_mask(batch_size, num_real):
    mask = np.zeros(batch_size, np.float32)
    mask[:num_real] = 1.0
    return mask


# --- Cases: a batch maker and a reference per base model ------------------------------------


@dataclasses.dataclass
class Case:
    base: type  # the base model class under test
    config: dict
    make: Callable  # seed -> (model outputs, batch); padded examples come last
    reference: Callable  # (outputs, batch, config) -> (loss, {metric: (sum, normalizer)})
    meta: dict = dataclasses.field(default_factory=dict)

    def model(self):
        class Model(self.base):
            def build_flax_model(self):
                return None

        return Model(ml_collections.ConfigDict(self.config), self.meta)


def classification_make(seed, batch=8, num_real=5, classes=5):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, classes)).astype(np.float32)
    logits[num_real:] = 1e4 * rng.choice([-1, 1], (batch - num_real, classes))
    labels = rng.integers(0, classes, batch).astype(np.int32)
    labels[num_real:] = -1  # garbage in padding
    return logits, {"label": labels, "batch_mask": padding_mask(batch, num_real)}


def classification_reference(logits, batch, config):
    mask, labels = batch["batch_mask"], batch["label"]
    one_hot = np.eye(logits.shape[-1])[np.clip(labels, 0, None)]
    s = config["label_smoothing"]
    log_p = np_log_softmax(logits)
    smoothed = -((one_hot * (1 - s) + s / logits.shape[-1]) * log_p).sum(-1)
    metrics = {
        "accuracy": pair(log_p.argmax(-1) == labels, mask),
        "loss": pair(-(one_hot * log_p).sum(-1), mask),
    }
    return (smoothed * mask).sum() / mask.sum(), metrics


def multilabel_make(seed, batch=8, num_real=6, classes=4):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, classes)).astype(np.float32)
    logits[num_real:] = 1e4
    labels = (rng.random((batch, classes)) < 0.5).astype(np.float32)
    return logits, {"label": labels, "batch_mask": padding_mask(batch, num_real)}


def multilabel_reference(logits, batch, config):
    mask, targets = batch["batch_mask"], f64(batch["label"])
    s = config["label_smoothing"]

    def bce(t):
        return -(t * np_log_sigmoid(logits) + (1 - t) * np_log_sigmoid(-f64(logits))).sum(-1)

    smoothed = bce(targets * (1 - s) + s / targets.shape[-1])
    top = f64(logits).argmax(-1)
    metrics = {
        "prec@1": pair(targets[np.arange(len(top)), top], mask),
        "loss": pair(bce(targets), mask),
    }
    return (smoothed * mask).sum() / mask.sum(), metrics


def regression_make(seed, batch=8, num_real=5):
    rng = np.random.default_rng(seed)
    preds = rng.normal(size=(batch, 3)).astype(np.float32)
    targets = rng.normal(size=(batch, 3)).astype(np.float32)
    targets[num_real:] = 1e4
    return preds, {"targets": targets, "batch_mask": padding_mask(batch, num_real)}


def regression_reference(preds, batch, config):
    mask, diff = batch["batch_mask"], f64(preds) - f64(batch["targets"])
    squared = (diff**2).sum(-1)
    metrics = {
        "mean_squared_error": pair(squared / 3, mask),
        "mean_absolute_error": pair(np.abs(diff).sum(-1) / 3, mask),
    }
    return (squared * mask).sum() / mask.sum(), metrics


def segmentation_make(seed, batch=4, num_real=3, classes=4):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, 3, 3, classes)).astype(np.float32)
    logits[num_real:] = 1e4
    labels = rng.integers(0, classes, (batch, 3, 3)).astype(np.int32)
    return logits, {"label": labels, "batch_mask": padding_mask(batch, num_real)}


def segmentation_reference(logits, batch, config):
    labels, classes = batch["label"], logits.shape[-1]
    weights = np.broadcast_to(f64(batch["batch_mask"])[:, None, None], labels.shape)
    log_p = np_log_softmax(logits)
    ce = -np.take_along_axis(log_p, labels[..., None], -1)[..., 0]
    factor = config["class_rebalancing_factor"]
    counts = np.array([weights[labels == c].sum() for c in range(classes)])
    freq = counts / counts.sum()
    inverse = np.where(counts > 0, 1 / np.where(counts > 0, freq, 1), 0.0)
    inverse = inverse / (inverse * freq).sum()  # mean pixel weight stays 1
    pixel_weight = weights * ((1 - factor) + factor * inverse[labels])
    metrics = {
        "pixel_accuracy": pair(log_p.argmax(-1) == labels, weights),
        "loss": pair(ce, weights),
    }
    return (ce * pixel_weight).sum() / weights.sum(), metrics


def sequence_make(seed, use_label_mask=False, batch=4, num_real=3, length=6, vocab=7):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, length, vocab)).astype(np.float32)
    labels = rng.integers(1, vocab, (batch, length)).astype(np.int32)
    lengths = rng.integers(1, length + 1, batch)
    padded = np.arange(length)[None] >= lengths[:, None]
    logits[padded] = 1e4 * rng.choice([-1, 1], (padded.sum(), vocab))
    logits[num_real:] = -1e4
    out = {"batch_mask": padding_mask(batch, num_real)}
    if use_label_mask:
        labels[padded] = -1  # out of range: must never be looked up
        out["label_mask"] = (~padded).astype(np.float32)
    else:
        labels[padded] = 0  # pad_token_id
    return logits, {"label": labels, **out}


def sequence_reference(logits, batch, config):
    labels, vocab = batch["label"], logits.shape[-1]
    weights = f64(batch["batch_mask"])[:, None] * np.ones(labels.shape)
    if "label_mask" in batch:
        weights = weights * batch["label_mask"]
    if config.get("pad_token_id") is not None:
        weights = weights * (labels != config["pad_token_id"])
    one_hot = np.eye(vocab)[np.clip(labels, 0, None)]
    s = config["label_smoothing"]
    log_p = np_log_softmax(logits)
    smoothed = -((one_hot * (1 - s) + s / vocab) * log_p).sum(-1)
    nll = -(one_hot * log_p).sum(-1)
    metrics = {
        "token_accuracy": pair(log_p.argmax(-1) == labels, weights),
        "loss": pair(nll, weights),
        "log_perplexity": pair(nll, weights),
    }
    return (smoothed * weights).sum() / weights.sum(), metrics


def detection_make(seed, focal=False, batch=3, queries=6, slots=4, classes=4, num_aux=1):
    """Example 0: non-contiguous real targets; 1: all real; 2: padding with 'real' targets.
    Padded targets carry label -1 and NaN boxes. With queries < slots, example 1 has more
    real targets than queries (only the best `queries` of them are matched)."""
    rng = np.random.default_rng(seed)
    logit_classes = classes if focal else classes + 1  # softmax: trailing no-object class

    def output():
        return {
            "pred_logits": rng.normal(size=(batch, queries, logit_classes)).astype(np.float32),
            "pred_boxes": np.concatenate(
                [
                    rng.uniform(0.2, 0.8, (batch, queries, 2)),
                    rng.uniform(0.05, 0.4, (batch, queries, 2)),
                ],
                -1,
            ).astype(np.float32),
        }

    outputs = output()
    outputs["aux_outputs"] = [output() for _ in range(num_aux)]
    box_mask = (rng.random((batch, slots)) < 0.6).astype(np.float32)
    box_mask[0, [0, 2]] = 1.0
    box_mask[0, [1, 3]] = 0.0
    box_mask[1] = 1.0
    box_mask[2] = 1.0
    labels = rng.integers(0, classes, (batch, slots)).astype(np.int32)
    boxes = np.concatenate(
        [rng.uniform(0.2, 0.8, (batch, slots, 2)), rng.uniform(0.05, 0.4, (batch, slots, 2))], -1
    ).astype(np.float32)
    labels[box_mask == 0] = -1
    boxes[box_mask == 0] = np.nan
    return outputs, {
        "label": {"labels": labels, "boxes": boxes, "box_mask": box_mask},
        "batch_mask": padding_mask(batch, batch - 1),
    }


def detection_reference(outputs, batch, config):
    focal = config.get("class_loss") == "sigmoid_focal"
    coef = {"class": 1.0, "bbox": 5.0, "giou": 2.0}
    alpha, gamma, eos = 0.25, 2.0, 0.1
    label, mask = batch["label"], batch["batch_mask"]
    real = [b for b in range(len(mask)) if mask[b] > 0]
    num_boxes = sum(int(label["box_mask"][b].sum()) for b in real)
    sums, correct = {}, 0
    for suffix, out in [
        ("", outputs),
        *((f"_aux{i}", o) for i, o in enumerate(outputs["aux_outputs"])),
    ]:
        total = {"class": 0.0, "bbox": 0.0, "giou": 0.0}
        for b in real:
            keep = label["box_mask"][b] > 0
            labels, boxes = label["labels"][b][keep], f64(label["boxes"][b][keep])
            logits, pred = f64(out["pred_logits"][b]), f64(out["pred_boxes"][b])
            p = 1 / (1 + np.exp(-logits))
            if focal:
                pos = alpha * (1 - p) ** gamma * -np_log_sigmoid(logits)
                neg = (1 - alpha) * p**gamma * -np_log_sigmoid(-logits)
                class_cost = (pos - neg)[:, labels]
            else:
                class_cost = -np.exp(np_log_softmax(logits))[:, labels]
            l1 = np.abs(pred[:, None] - boxes[None]).sum(-1)
            giou = np_giou(pred, boxes)
            rows, cols = linear_sum_assignment(
                coef["class"] * class_cost + coef["bbox"] * l1 - coef["giou"] * giou
            )
            if focal:
                target = np.zeros_like(logits)
                target[rows, labels[cols]] = 1.0
                bce = -(target * np_log_sigmoid(logits) + (1 - target) * np_log_sigmoid(-logits))
                p_t = p * target + (1 - p) * (1 - target)
                weight = alpha * target + (1 - alpha) * (1 - target)
                total["class"] += (bce * (1 - p_t) ** gamma * weight).sum()
            else:
                target = np.full(len(logits), logits.shape[-1] - 1)
                target[rows] = labels[cols]
                nll = -np_log_softmax(logits)[np.arange(len(logits)), target]
                total["class"] += (nll * np.where(target == logits.shape[-1] - 1, eos, 1)).sum()
            total["bbox"] += l1[rows, cols].sum()
            total["giou"] += (1 - giou[rows, cols]).sum()
            if not suffix:
                correct += np.sum(logits[rows].argmax(-1) == labels[cols])
        for name, value in total.items():
            sums[f"loss_{name}{suffix}"] = value
    sums["loss"] = sum(coef[name.split("_")[1]] * value for name, value in sums.items())
    sums["class_accuracy"] = float(correct)
    norm = max(num_boxes, 1)
    return sums["loss"] / norm, {name: (value, float(norm)) for name, value in sums.items()}


CASES = {
    "classification": Case(
        base_models.ClassificationModel,
        {"label_smoothing": 0.1, "l2_decay_factor": None},
        classification_make,
        classification_reference,
        {"num_classes": 5},
    ),
    "multilabel": Case(
        base_models.MultiLabelClassificationModel,
        {"label_smoothing": 0.1, "l2_decay_factor": None},
        multilabel_make,
        multilabel_reference,
    ),
    "regression": Case(
        base_models.RegressionModel,
        {"l2_decay_factor": None},
        regression_make,
        regression_reference,
    ),
    "segmentation": Case(
        base_models.SegmentationModel,
        {"class_rebalancing_factor": 0.5, "l2_decay_factor": None},
        segmentation_make,
        segmentation_reference,
        {"num_classes": 4},
    ),
    "encoder_decoder_pad_id": Case(
        base_models.EncoderDecoderModel,
        {"label_smoothing": 0.1, "pad_token_id": 0},
        sequence_make,
        sequence_reference,
    ),
    "encoder_decoder_label_mask": Case(
        base_models.EncoderDecoderModel,
        {"label_smoothing": 0.0, "pad_token_id": None},
        lambda seed: sequence_make(seed, use_label_mask=True),
        sequence_reference,
    ),
    "detection_softmax": Case(base_models.DetectionModel, {}, detection_make, detection_reference),
    "detection_focal_few_queries": Case(
        base_models.DetectionModel,
        {"class_loss": "sigmoid_focal"},
        lambda seed: detection_make(seed, focal=True, queries=4, slots=6),
        detection_reference,
    ),
}


def take(tree, index):
    return jax.tree.map(lambda x: np.asarray(x)[index], tree)


@functools.cache
def compiled(name):
    """The case's model and one jitted (loss, metrics) function (compiled once per shape)."""
    model = CASES[name].model()
    return model, jax.jit(lambda o, b: (model.loss_function(o, b), model.get_metrics(o, b)))


def loss_and_metrics(name, outputs, batch):
    loss, metrics = jax.device_get(compiled(name)[1](outputs, batch))
    return float(loss), metrics


# --- Tests ---------------------------------------------------------------------------------


def test_every_base_model_has_a_case():
    exported = {getattr(base_models, name) for name in base_models.__all__}
    models = {c for c in exported if issubclass(c, BaseModel) and c is not BaseModel}
    assert models == {case.base for case in CASES.values()}
    assert {"DetectionModel", "EncoderDecoderModel"} <= set(base_models.__all__)


@pytest.mark.parametrize("name", CASES)
def test_loss_and_metrics_equal_the_float64_reference(name):
    case = CASES[name]
    for seed in (1, 2):
        outputs, batch = case.make(seed)
        ref_loss, ref_metrics = case.reference(outputs, batch, case.config)
        loss, metrics = loss_and_metrics(name, outputs, batch)
        np.testing.assert_allclose(loss, ref_loss, RTOL, ATOL, err_msg=f"{name} loss")
        assert set(metrics) == set(ref_metrics)
        for key, (total, norm) in ref_metrics.items():
            np.testing.assert_allclose(metrics[key][0], total, RTOL, ATOL, err_msg=f"{name} {key}")
            np.testing.assert_allclose(metrics[key][1], norm, err_msg=f"{name} {key} normalizer")


@pytest.mark.parametrize("name", CASES)
def test_padded_examples_do_not_change_loss_or_metrics(name):
    outputs, batch = CASES[name].make(3)
    real = np.flatnonzero(batch["batch_mask"] > 0)
    assert len(real) < len(batch["batch_mask"])
    full_loss, full = loss_and_metrics(name, outputs, batch)
    real_loss, alone = loss_and_metrics(name, take(outputs, real), take(batch, real))
    np.testing.assert_allclose(full_loss, real_loss, RTOL, ATOL)
    assert set(full) == set(alone)
    for key in full:
        np.testing.assert_allclose(full[key], alone[key], RTOL, ATOL, err_msg=f"{name} {key}")


PMAP_SEEDS = (4, 5)  # one batch per device


def concatenated(name):
    parts = [CASES[name].make(seed) for seed in PMAP_SEEDS]
    return parts, jax.tree.map(lambda *x: np.concatenate(x), *parts)


def run_pmap_cases() -> dict:
    """In a 2-device process: per case, the psum'ed metrics and pmean'ed loss of each device."""
    assert jax.local_device_count() == 2, jax.devices()
    results = {}
    for name in CASES:
        model = compiled(name)[0]
        parts, _ = concatenated(name)

        def step(outputs, batch, model=model):  # what the trainer does with every model
            loss, metrics = model.loss_and_metrics(outputs, batch, axis_name="d")
            return jax.lax.pmean(loss, "d"), metrics

        stacked = jax.tree.map(lambda *x: np.stack(x), *parts)
        loss, metrics = jax.device_get(jax.pmap(step, axis_name="d")(*stacked))
        results[name] = {
            "metrics": {k: np.asarray(v).tolist() for k, v in metrics.items()},
            "loss": np.asarray(loss).tolist(),
        }
    return results


@pytest.fixture(scope="module")
def pmap_results():
    env = dict(
        os.environ,
        XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
    )
    done = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", CASES)
def test_two_device_pmap_metrics_equal_the_concatenated_batch(name, pmap_results):
    """Every device holds the metrics of the whole (concatenated) batch, as computed by the
    float64 reference (which the single-device model equals, tested above)."""
    case, result = CASES[name], pmap_results[name]
    ref_loss, ref_metrics = case.reference(*concatenated(name)[1], case.config)
    assert set(result["metrics"]) == set(ref_metrics)
    for key, per_device in result["metrics"].items():
        per_device = np.asarray(per_device)  # [2 (sum, normalizer), 2 devices]
        for device in range(2):
            np.testing.assert_allclose(
                per_device[:, device],
                ref_metrics[key],
                RTOL,
                ATOL,
                err_msg=f"{name} {key} device {device}",
            )
    if name.startswith("detection"):  # the num-boxes normalisation spans devices
        np.testing.assert_allclose(result["loss"], [ref_loss] * 2, RTOL, ATOL)


if __name__ == "__main__":  # the 2-device half of the pmap test
    print(json.dumps(run_pmap_cases()))
