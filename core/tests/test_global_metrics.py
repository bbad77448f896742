"""Eval-set-wide metrics: mAP against scikit-learn, IoU from summed confusion matrices,
per-class accuracy against scikit-learn's recall, and the trainer's evaluate() dropping
padded examples before computing them."""

import functools

import jax
import ml_collections
import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    recall_score,
    roc_auc_score,
)

from scenic.model_lib import model_utils
from scenic.model_lib.base_models import (
    ClassificationModel,
    MultiLabelClassificationModel,
    SegmentationModel,
)
from scenic.train_lib import evaluation, steps
from scenic.train_lib.train_state import TrainState, replicate


@pytest.mark.parametrize("case", ["random", "ties", "one_positive", "all_positive"])
def test_average_precision_matches_sklearn(case):
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 40))
        scores = rng.normal(size=n)
        labels = rng.random(n) < 0.3
        if case == "ties":
            scores = rng.integers(0, 3, size=n).astype(float)
        elif case == "one_positive":
            labels = np.zeros(n, bool)
            labels[rng.integers(n)] = True
        elif case == "all_positive":
            labels = np.ones(n, bool)
        if not labels.any():
            assert np.isnan(model_utils.average_precision(scores, labels))
            continue
        expected = average_precision_score(labels, scores)
        assert model_utils.average_precision(scores, labels) == pytest.approx(expected, abs=1e-12)


def test_mean_average_precision_skips_classes_without_positives():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(30, 4))
    labels = rng.random((30, 4)) < 0.4
    labels[:, 2] = False
    expected = np.mean([average_precision_score(labels[:, c], scores[:, c]) for c in (0, 1, 3)])
    assert model_utils.mean_average_precision(scores, labels) == pytest.approx(expected)


class FixedLogits:
    """A stand-in flax module: logits are the inputs themselves."""

    def apply(self, variables, inputs, train=False):
        return inputs

    def init(self, *args, **kwargs):  # pragma: no cover - not used
        return {}


def with_fixed_logits(model_cls):
    return type(model_cls.__name__, (model_cls,), {"build_flax_model": lambda self: FixedLogits()})


def run_evaluate(model, batches):
    state = TrainState(
        step=np.zeros((), np.int32), params={}, opt_state={}, model_state={}, rng=np.zeros(2)
    )
    p_eval = jax.pmap(functools.partial(steps.eval_step, model=model), axis_name=steps.AXIS)
    return evaluation.evaluate(p_eval, replicate(state), batches, 1, model)


def test_evaluate_computes_map_without_padded_examples():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(10, 3)).astype(np.float32)
    labels = (rng.random((10, 3)) < 0.5).astype(np.int32)
    labels[0] = 1
    # Two batches of 6: the last two rows are padding with labels that would change mAP.
    padded_scores = np.concatenate([scores, np.full((2, 3), 9.0, np.float32)])
    padded_labels = np.concatenate([labels, np.zeros((2, 3), np.int32)])
    mask = np.r_[np.ones(10), np.zeros(2)].astype(np.float32)
    batches = [
        {
            "inputs": padded_scores[i : i + 6],
            "label": padded_labels[i : i + 6],
            "batch_mask": mask[i : i + 6],
        }
        for i in (0, 6)
    ]
    model = with_fixed_logits(MultiLabelClassificationModel)(
        ml_collections.ConfigDict(), {"num_classes": 3}
    )
    metrics = run_evaluate(model, batches)
    assert metrics["mAP"] == pytest.approx(model_utils.mean_average_precision(scores, labels))
    auc = np.mean([roc_auc_score(labels[:, c], scores[:, c]) for c in range(3)])
    assert metrics["AUC"] == pytest.approx(auc, rel=1e-12)
    assert metrics["d_prime"] == pytest.approx(np.sqrt(2) * scipy.stats.norm.ppf(auc), rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_roc_auc_matches_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    scores = np.round(rng.normal(size=n), 1)  # coarse: many ties, also across classes
    labels = rng.random(n) < rng.uniform(0.1, 0.9)
    labels[:2] = [True, False]
    assert model_utils.roc_auc(scores, labels) == pytest.approx(
        roc_auc_score(labels, scores), rel=1e-12
    )
    assert np.isnan(model_utils.roc_auc(scores, np.ones(n)))  # no negative
    assert np.isnan(model_utils.roc_auc(scores, np.zeros(n)))  # no positive


def test_evaluate_computes_iou_from_the_summed_confusion_matrix():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=(4, 5, 5))
    logits = rng.normal(size=(4, 5, 5, 3)).astype(np.float32)
    mask = np.array([1, 1, 1, 0], np.float32)
    batches = [
        {"inputs": logits[i : i + 2], "label": labels[i : i + 2], "batch_mask": mask[i : i + 2]}
        for i in (0, 2)
    ]
    model = with_fixed_logits(SegmentationModel)(ml_collections.ConfigDict(), {"num_classes": 3})
    metrics = run_evaluate(model, batches)
    predicted = logits.argmax(-1)[:3].reshape(-1)
    truth = labels[:3].reshape(-1)
    ious = []
    for c in range(3):
        tp = np.sum((predicted == c) & (truth == c))
        union = np.sum((predicted == c) | (truth == c))
        ious.append(tp / union)
        assert metrics[f"iou/class_{c}"] == pytest.approx(tp / union)
    assert metrics["mean_iou"] == pytest.approx(np.mean(ious))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("per_class", [False, True])
def test_evaluate_computes_per_class_accuracy_without_padded_examples(per_class):
    """Per-class accuracy is each class's recall; its mean over the classes that occur is
    balanced accuracy (scikit-learn, on the real examples only). Class 4 never occurs; the
    padding rows would change every figure if counted."""
    rng = np.random.default_rng(4)
    labels = rng.choice([0, 1, 2, 3, 5], size=23, p=[0.5, 0.2, 0.1, 0.1, 0.1])
    logits = rng.normal(size=(23, 6)).astype(np.float32)
    logits[np.arange(23), labels] += rng.random(23) < 0.6  # better than chance
    padded_logits = np.concatenate([logits, np.full((9, 6), -5.0, np.float32)])
    padded_logits[23:, 4] = 5.0
    padded_labels = np.r_[labels, np.full(9, 4)].astype(np.int32)
    mask = np.r_[np.ones(23), np.zeros(9)].astype(np.float32)
    batches = [
        {
            "inputs": padded_logits[i : i + 8],
            "label": padded_labels[i : i + 8],
            "batch_mask": mask[i : i + 8],
        }
        for i in range(0, 32, 8)
    ]
    config = ml_collections.ConfigDict({"per_class_accuracy": per_class})
    model = with_fixed_logits(ClassificationModel)(config, {"num_classes": 6})
    metrics = run_evaluate(model, batches)
    predicted = logits.argmax(-1)
    assert metrics["mean_per_class_accuracy"] == pytest.approx(
        balanced_accuracy_score(labels, predicted)
    )
    per_class_keys = sorted(k for k in metrics if k.startswith("per_class_accuracy/"))
    if not per_class:
        assert per_class_keys == []
        return
    assert per_class_keys == [f"per_class_accuracy/{c}" for c in (0, 1, 2, 3, 5)]
    recalls = recall_score(labels, predicted, labels=[0, 1, 2, 3, 5], average=None)
    for c, recall in zip((0, 1, 2, 3, 5), recalls, strict=True):
        assert metrics[f"per_class_accuracy/{c}"] == pytest.approx(recall)


def test_per_class_values_are_counted_not_listed_in_log_lines():
    from scenic.common_lib import runner

    metrics = {"accuracy": 0.5, "per_class_accuracy/0": 1.0, "per_class_accuracy/1": 0.0}
    line = evaluation.format_metrics(metrics)
    assert line == "accuracy=0.5000 (+2 per-class values)"
    assert "per_class" not in runner.summary_line("test", {**metrics, "step": 3})


def test_per_class_accuracy_of_an_empty_eval_set_is_absent_not_nan():
    model = with_fixed_logits(ClassificationModel)(ml_collections.ConfigDict(), {"num_classes": 3})
    zeros = np.zeros(3)
    assert model.global_metrics({"class_examples": zeros, "class_correct": zeros}, {}) == {}
