"""COCO and LVIS box AP of the gathered eval split.

- COCO: the metrics built in memory from eval examples equal pycocotools run the usual way,
  on a ground-truth JSON file this test writes itself and the results file
  `write_coco_results` writes (random cases with crowd boxes and empty images; exact);
  a perfect detector scores 1.0 and one with shuffled labels less.
- LVIS: the `lvis` package (0.5.3) calls `np.float`, gone from NumPy, so `lvis_metrics`
  runs COCOeval with the federated rules added; it equals COCOeval where the rules change
  nothing, and hand-computed values where each rule matters.
- DetectionModel: `eval_examples` inside `jax.pmap` with the trainer's axis, and
  `global_metrics` end to end through `scenic.train_lib.evaluation.evaluate` on padded
  batches, whose padding never counts.
"""

import contextlib
import functools
import io
import json
import pathlib

import jax
import ml_collections
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from scenic.common_lib.config_utils import ConfigError
from scenic.model_lib import coco_evaluation as ce
from scenic.model_lib import detection_postprocess
from scenic.model_lib.base_models import DetectionModel
from scenic.train_lib import evaluation, steps
from scenic.train_lib.train_state import TrainState, replicate

# ----------------------------------------------------------------------------- cases


def random_case(seed, n=10, m=6, k=30, classes=5, crowd=True, zero_area=True):
    """Eval examples with integer pixel boxes (exact in float32 and float64): some images
    without ground truth, some crowd boxes, detections near the ground truth or anywhere,
    scores on a coarse grid (ties), some of zero area where clipped. Returns (examples,
    truth): the ground truth as COCO lists, written independently of `ce.ground_truth`."""
    rng = np.random.default_rng(seed)
    orig = rng.integers(40, 400, (n, 2))
    ex = {
        "image_id": rng.permutation(10_000)[:n] + 1,
        "orig_size": orig,
        "gt_boxes": np.zeros((n, m, 4), np.float32),
        "gt_labels": np.zeros((n, m), np.int32),
        "gt_mask": np.zeros((n, m), np.float32),
        "gt_is_crowd": np.zeros((n, m), np.int32),
        "gt_area": np.zeros((n, m), np.float32),
        "det_boxes": np.zeros((n, k, 4), np.float32),
        "det_scores": np.zeros((n, k), np.float32),
        "det_labels": np.zeros((n, k), np.int32),
    }
    truth = []
    for i in range(n):
        h, w = orig[i]
        num = 0 if i % 4 == 0 else int(rng.integers(1, m + 1))  # every 4th image empty
        for j in range(num):
            x0, y0 = rng.integers(0, w - 8), rng.integers(0, h - 8)
            x1, y1 = rng.integers(x0 + 2, w + 1), rng.integers(y0 + 2, h + 1)
            label, is_crowd = int(rng.integers(classes)), bool(crowd and rng.random() < 0.15)
            area = float((x1 - x0) * (y1 - y0) * rng.uniform(0.4, 1.0)) // 1  # a mask's area
            ex["gt_boxes"][i, j] = [x0, y0, x1, y1]
            ex["gt_labels"][i, j], ex["gt_mask"][i, j] = label, 1
            ex["gt_is_crowd"][i, j], ex["gt_area"][i, j] = is_crowd, area
            truth.append((i, [x0, y0, x1 - x0, y1 - y0], label, area, is_crowd))
        for j in range(k):
            if num and rng.random() < 0.6:
                g = int(rng.integers(num))
                box = ex["gt_boxes"][i, g] + rng.integers(-6, 7, 4)
                label = ex["gt_labels"][i, g] if rng.random() < 0.8 else rng.integers(classes)
            else:
                x0, y0 = rng.integers(0, w - 2), rng.integers(0, h - 2)
                box = np.array([x0, y0, rng.integers(x0 + 1, w + 1), rng.integers(y0 + 1, h + 1)])
                label = rng.integers(classes)
            box = np.clip(box, 0, [w, h, w, h])
            if not zero_area and (box[2] <= box[0] or box[3] <= box[1]):
                box = np.array([0, 0, 3, 3])
            ex["det_boxes"][i, j] = box
            ex["det_labels"][i, j] = label
            ex["det_scores"][i, j] = rng.integers(1, 40) / 40
    return ex, truth


def pycocotools_reference(tmp_path, examples, truth, category_ids=None):
    """COCOeval the usual way: a ground-truth JSON file and a results JSON file."""
    cat = (lambda c: int(c)) if category_ids is None else (lambda c: category_ids[c])
    ids = examples["image_id"]
    gt = {
        "images": [
            {"id": int(ids[i]), "height": int(h), "width": int(w)}
            for i, (h, w) in enumerate(examples["orig_size"])
        ],
        "annotations": [
            {
                "id": a + 1,
                "image_id": int(ids[i]),
                "category_id": cat(label),
                "bbox": [float(v) for v in bbox],
                "area": area,
                "iscrowd": int(crowd),
            }
            for a, (i, bbox, label, area, crowd) in enumerate(truth)
        ],
        "categories": [{"id": cat(c), "name": f"class {c}"} for c in range(5)],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    ce.write_coco_results(tmp_path / "results.json", examples, category_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(tmp_path / "gt.json"))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(str(tmp_path / "results.json")), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return dict(zip(ce.COCO_METRICS, (*stats[:6], stats[8])))


def assert_metrics_equal(ours, reference, keys=None):
    for key in keys or reference:
        ref = float("nan") if reference[key] == -1 else reference[key]
        assert ours[key] == pytest.approx(ref, abs=1e-12, nan_ok=True), key


# ----------------------------------------------------------------------------- COCO


@pytest.mark.parametrize("seed", range(4))
def test_coco_metrics_equal_pycocotools_on_json_files(tmp_path, seed):
    examples, truth = random_case(seed)
    category_ids = list(ce.COCO_2017_CATEGORY_IDS[10:15]) if seed % 2 else None
    reference = pycocotools_reference(tmp_path, examples, truth, category_ids)
    ours = ce.coco_metrics(examples, category_ids)
    assert set(ours) == set(ce.COCO_METRICS)
    assert 0.05 < ours["AP"] < 0.95  # a case where the figures say something
    assert_metrics_equal(ours, reference)


def test_perfect_detections_score_one_and_shuffled_labels_less():
    examples, _ = random_case(7, crowd=False)
    k, m = examples["det_scores"].shape[1], examples["gt_labels"].shape[1]
    perfect = dict(examples)
    perfect["det_boxes"] = np.zeros_like(examples["det_boxes"])
    perfect["det_boxes"][:, :m] = examples["gt_boxes"]
    perfect["det_labels"] = np.zeros_like(examples["det_labels"])
    perfect["det_labels"][:, :m] = examples["gt_labels"]
    perfect["det_scores"] = np.zeros((len(examples["det_scores"]), k), np.float32)
    perfect["det_scores"][:, :m] = examples["gt_mask"]
    metrics = ce.coco_metrics(perfect)
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert metrics[key] == pytest.approx(1.0), key
    shuffled = dict(perfect)
    rng = np.random.default_rng(0)
    shuffled["det_labels"] = rng.permutation(perfect["det_labels"].ravel()).reshape(
        perfect["det_labels"].shape
    )
    assert ce.coco_metrics(shuffled)["AP"] < 0.7


def test_empty_split_and_no_detections():
    examples, _ = random_case(3, n=4)
    assert all(
        np.isnan(v) for v in ce.coco_metrics({k: v[:0] for k, v in examples.items()}).values()
    )
    none = {**examples, "det_boxes": examples["det_boxes"][:, :0]}
    none.update(det_scores=examples["det_scores"][:, :0], det_labels=examples["det_labels"][:, :0])
    assert ce.coco_metrics(none)["AP"] == 0.0


def test_duplicate_image_ids_are_an_error():
    examples, _ = random_case(3, n=4)
    examples["image_id"] = np.array([5, 6, 5, 7])
    with pytest.raises(ValueError, match="not unique"):
        ce.coco_metrics(examples)


def test_write_coco_results_standard_json(tmp_path):
    examples = {
        "image_id": np.array([397133, 37777]),
        "det_boxes": np.array([[[10, 20, 50, 60], [0, 0, 5, 5]], [[1, 2, 3, 4], [7, 8, 7, 8]]]),
        "det_scores": np.array([[0.75, 0.5], [0.25, 0.125]], np.float32),
        "det_labels": np.array([[0, 79], [11, 25]]),
    }
    path = tmp_path / "out" / "results.json"
    ce.write_coco_results(path, examples, ce.COCO_2017_CATEGORY_IDS)
    records = json.loads(path.read_text())
    assert records[0] == {
        "image_id": 397133,
        "category_id": 1,
        "bbox": [10, 20, 40, 40],
        "score": 0.75,
    }
    assert [r["category_id"] for r in records] == [1, 90, 13, 28]
    assert records[3]["bbox"] == [7, 8, 0, 0] and records[2]["score"] == 0.25
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temporary left


def test_category_tables():
    ids = ce.COCO_2017_CATEGORY_IDS
    assert len(ids) == 80 and list(ids) == sorted(set(ids))
    assert set(range(1, 91)) - set(ids) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    freq = ce.LVIS_V1_FREQUENCIES
    assert len(freq) == 1203 and [freq.count(g) for g in "rcf"] == [337, 461, 405]
    # LVIS ids 1 aerosol_can (c), 2 air_conditioner (f), 13 applesauce (r), 1203 zucchini (c)
    assert (freq[0], freq[1], freq[12], freq[1202]) == ("c", "f", "r", "c")


# ----------------------------------------------------------------------------- LVIS


def federated_case():
    """Three images, three classes (rare, common, frequent), medium boxes.

    image 1: a class-0 object found (0.9, TP); class 1 is known absent (negative) and
        detected (0.8): a false positive; class 2 is not annotated either way and
        detected (0.7): not scored.
    image 2: a class-1 object; class 1 is not exhaustively annotated: an unmatched
        detection (0.95) is ignored, the matched one (0.6) is a TP.
    image 3: a class-2 object, found (0.5), and an unmatched class-2 detection (0.99): FP.

    AP per class: 0 -> 1; 1 -> 1/2 (FP 0.8 before TP 0.6; the ignored 0.95 does not count);
    2 -> 1/2 (FP 0.99 before TP 0.5; image 1's 0.7 does not count). Dropping the negative
    list's FP would give class 1 AP 1; counting the not-exhaustive detection 1/3; scoring
    the unannotated class-2 detection 1/3 for class 2.
    """
    a, b, c = [10, 10, 60, 60], [100, 100, 150, 150], [200, 10, 250, 60]
    pad = [0, 0, 0, 0]
    return {
        "image_id": np.array([1, 2, 3]),
        "orig_size": np.array([[300, 300]] * 3),
        "gt_boxes": np.array([[a], [b], [c]], np.float32),
        "gt_labels": np.array([[0], [1], [2]]),
        "gt_mask": np.ones((3, 1), np.float32),
        "det_boxes": np.array([[a, b, c], [a, b, pad], [c, a, pad]], np.float32),
        "det_labels": np.array([[0, 1, 2], [1, 1, 0], [2, 2, 0]]),
        "det_scores": np.array([[0.9, 0.8, 0.7], [0.95, 0.6, 0.0], [0.5, 0.99, 0.0]]),
        "neg_category_ids": np.array([[1, -1, -1], [-1, -1, -1], [-1, -1, -1]]),
        "not_exhaustive_category_ids": np.array([[-1, -1, -1], [1, -1, -1], [-1, -1, -1]]),
    }


def test_lvis_federated_rules_on_a_hand_computed_case():
    metrics = ce.lvis_metrics(federated_case(), frequencies="rcf")
    expected = {"AP": 2 / 3, "AP50": 2 / 3, "AP75": 2 / 3, "APm": 2 / 3}
    expected.update({"APr": 1.0, "APc": 0.5, "APf": 0.5, "AR300": 1.0})
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-12), key
    assert np.isnan(metrics["APs"]) and np.isnan(metrics["APl"])
    assert set(metrics) == set(ce.LVIS_METRICS)


def test_lvis_per_image_limit_drops_the_lowest_scores():
    """300 detections per image: a true positive ranked 301st is gone."""
    case = federated_case()
    n = 301
    boxes = np.tile(np.array([[[280, 280, 290, 290]]], np.float32), (3, n, 1))  # all FPs
    boxes[0, -1] = case["gt_boxes"][0, 0]
    scores = np.full((3, n), 0.5, np.float32)
    scores[0, -1] = 0.1
    labels = np.zeros((3, n), np.int64)
    negatives = np.array([[1, 2, -1]] * 3)
    case.update(det_boxes=boxes, det_scores=scores, det_labels=labels, neg_category_ids=negatives)
    case["not_exhaustive_category_ids"][:] = -1
    assert ce.lvis_metrics(case)["AP"] == 0.0
    assert ce.lvis_metrics(case, max_detections=n)["AP"] > 0.0


@pytest.mark.parametrize("seed", range(3))
def test_lvis_equals_cocoeval_where_nothing_is_federated(seed):
    """Every absent class in the negative list, no not-exhaustive class, no crowd and no
    zero-area box (LVIS does not score those): the LVIS rules change nothing, and the
    result is COCOeval's (AR300 = AR100 with K <= 100)."""
    examples, _ = random_case(10 + seed, crowd=False, zero_area=False)
    n, classes = len(examples["det_scores"]), 5
    examples["neg_category_ids"] = np.full((n, classes), -1)
    for i in range(n):
        absent = sorted(
            set(range(classes)) - set(examples["gt_labels"][i][examples["gt_mask"][i] > 0])
        )
        examples["neg_category_ids"][i, : len(absent)] = absent
    examples["not_exhaustive_category_ids"] = np.full((n, classes), -1)
    coco = ce.coco_metrics(examples)
    lvis = ce.lvis_metrics(examples, frequencies="rrcff")
    assert 0.05 < coco["AP"] < 0.95
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert lvis[key] == pytest.approx(coco[key], abs=1e-12, nan_ok=True), key
    assert lvis["AR300"] == pytest.approx(coco["AR100"], abs=1e-12)
    # A federated control: marking every class not exhaustive ignores all unmatched
    # detections, which raises AP.
    examples["not_exhaustive_category_ids"] = np.tile(np.arange(classes), (n, 1))
    assert ce.lvis_metrics(examples)["AP"] > lvis["AP"] + 0.05


# ----------------------------------------------------------------------------- the model


class FixedOutputs:
    """A stand-in flax module: the outputs are the inputs (a dict of pred_logits, pred_boxes)."""

    def apply(self, variables, inputs, train=False):
        return dict(inputs)


class FixedDetector(DetectionModel):
    def build_flax_model(self):
        return FixedOutputs()


def make_model(meta=None, **config):
    return FixedDetector(ml_collections.ConfigDict(config), meta or {"num_classes": 3})


def detection_batch(rng, batch=4, queries=6, slots=3, classes=3, canvas=32, lvis=False):
    """A detection pipeline batch (see detection_dataset) with model outputs as inputs."""
    size = rng.integers(8, canvas + 1, (batch, 2)).astype(np.int32)
    size[:, rng.integers(2)] = canvas
    orig = (size * rng.integers(1, 4, (batch, 1))).astype(np.int32)
    frac = size[:, None, ::-1] / canvas

    def boxes(*shape):
        centre = rng.uniform(0.2, 0.8, (*shape, 2)) * frac
        return np.concatenate([centre, rng.uniform(0.1, 0.5, (*shape, 2)) * frac], -1)

    label = {
        "labels": rng.integers(0, classes, (batch, slots)).astype(np.int32),
        "boxes": boxes(batch, slots).astype(np.float32),
        "box_mask": (rng.random((batch, slots)) < 0.7).astype(np.float32),
        "is_crowd": rng.random((batch, slots)) < 0.2,
        "area": rng.uniform(10, 100, (batch, slots)).astype(np.float32),
        "image/id": rng.permutation(1000)[:batch].astype(np.int64) + 1,
        "orig_size": orig,
        "size": size,
    }
    if lvis:
        label["neg_category_ids"] = np.tile(np.array([2, -1, -1], np.int32), (batch, 1))
        label["not_exhaustive_category_ids"] = np.full((batch, classes), -1, np.int32)
    inputs = {
        "pred_logits": rng.normal(size=(batch, queries, classes + 1)).astype(np.float32),
        "pred_boxes": boxes(batch, queries).astype(np.float32),
    }
    return {
        "inputs": inputs,
        "padding_mask": np.zeros((batch, canvas, canvas), np.float32),
        "label": label,
        "batch_mask": np.ones(batch, np.float32),
    }


def shard(batch, devices):
    return jax.tree.map(lambda x: x.reshape(devices, -1, *x.shape[1:]), batch)


def test_eval_examples_inside_pmap():
    devices = jax.local_device_count()
    rng = np.random.default_rng(0)
    batch = detection_batch(rng, batch=4 * devices)
    model = make_model(eval_top_k=5)
    step = jax.pmap(lambda b: model.eval_examples(b["inputs"], b), axis_name=steps.AXIS)
    got = step(shard(batch, devices))
    got = jax.tree.map(lambda x: np.asarray(x).reshape(-1, *x.shape[2:]), got)
    label = batch["label"]
    scores, labels, boxes = detection_postprocess.top_k_detections(
        batch["inputs"]["pred_logits"], batch["inputs"]["pred_boxes"], 5, softmax=True
    )
    to_pixels = lambda b: detection_postprocess.boxes_to_original_pixels(
        b, 32, label["size"], label["orig_size"]
    )
    np.testing.assert_allclose(got["det_scores"], scores, rtol=1e-6)
    np.testing.assert_array_equal(got["det_labels"], labels)
    np.testing.assert_allclose(got["det_boxes"], to_pixels(boxes), rtol=1e-6, atol=1e-4)
    real = label["box_mask"] > 0  # padded slots hold a placeholder box
    gt_pixels = np.asarray(to_pixels(label["boxes"]))
    np.testing.assert_allclose(got["gt_boxes"][real], gt_pixels[real], rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(got["gt_mask"], label["box_mask"])
    np.testing.assert_array_equal(got["gt_is_crowd"], label["is_crowd"])
    np.testing.assert_array_equal(got["image_id"], label["image/id"])
    np.testing.assert_array_equal(got["orig_size"], label["orig_size"])
    assert "neg_category_ids" not in got and "not_exhaustive_category_ids" not in got
    # Pixel boxes reproduce the ground truth's original-image coordinates.
    assert got["gt_boxes"].shape == (4 * devices, 3, 4) and got["det_scores"].shape == (
        4 * devices,
        5,
    )


def fixed_state():
    return TrainState(
        step=np.zeros((), np.int32), params={}, opt_state={}, model_state={}, rng=np.zeros(2)
    )


@functools.cache
def pmapped_eval_step(model):
    return jax.pmap(functools.partial(steps.eval_step, model=model), axis_name=steps.AXIS)


def run_evaluate(model, batches):
    """The trainer's evaluation pass (one compiled eval step per model)."""
    return evaluation.evaluate(
        pmapped_eval_step(model), replicate(fixed_state()), batches, 1, model
    )


def padded_batches(rng, real_batches=2, batch=4, pad=2, lvis=False):
    """Batches of `batch` examples; the last `pad` of the last batch are padding that repeats
    the first batch's image ids and boxes, with perfect detections of other classes: if they
    counted, ids would clash and AP would change."""
    batches = [detection_batch(rng, batch=batch, lvis=lvis) for _ in range(real_batches)]
    last = batches[-1]
    for key in ("image/id", "boxes", "labels", "box_mask"):
        last["label"][key][-pad:] = batches[0]["label"][key][:pad]
    last["label"]["box_mask"][-pad:] = 1.0
    last["batch_mask"][-pad:] = 0.0
    return batches


def real_examples(model, batches):
    """What evaluate should score: eval_examples of every batch, padding rows dropped."""
    parts = []
    for b in batches:
        ex = jax.tree.map(np.asarray, jax.jit(model.eval_examples)(b["inputs"], b))
        parts.append({k: v[b["batch_mask"] > 0] for k, v in ex.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.fixture(scope="module")
def coco_model(tmp_path_factory):
    """One model (so one compiled eval step) for the COCO tests through `evaluate`."""
    path = tmp_path_factory.mktemp("results") / "coco.json"
    return make_model(coco_results_path=str(path))


def test_global_metrics_through_evaluate_without_padding(coco_model):
    rng = np.random.default_rng(1)
    batches = padded_batches(rng)
    model = coco_model
    path = pathlib.Path(model.option("coco_results_path"))
    metrics = run_evaluate(model, batches)
    examples = real_examples(model, batches)
    assert len(examples["image_id"]) == 6
    expected = ce.coco_metrics(examples)
    for key in ce.COCO_METRICS:
        assert metrics[key] == pytest.approx(expected[key], abs=1e-12, nan_ok=True), key
    assert "loss" in metrics and 0.0 <= metrics["AP"] < 1.0
    records = json.loads(path.read_text())
    assert len(records) == 6 * 18 and {r["image_id"] for r in records} == set(
        examples["image_id"].tolist()
    )
    # Negative control: the same batches with the padding counted clash on image ids.
    for b in batches:
        b["batch_mask"][:] = 1.0
    with pytest.raises(ValueError, match="not unique"):
        run_evaluate(model, batches)


def test_perfect_detector_through_evaluate_scores_one(coco_model):
    """Queries that are the ground truth boxes with their labels: AP 1 over the real
    examples, while the padded ones carry ground truth nobody detected."""
    rng = np.random.default_rng(2)
    batches = padded_batches(rng)
    for i, b in enumerate(batches):
        label = b["label"]
        label["is_crowd"][:] = False
        queries = b["inputs"]["pred_boxes"].shape[1]
        slots = label["boxes"].shape[1]
        b["inputs"]["pred_boxes"][:, :slots] = label["boxes"]
        logits = np.full((len(label["labels"]), queries, 4), -10.0, np.float32)
        logits[:, :, 3] = 10.0  # no object
        rows, cols = np.nonzero(label["box_mask"] > 0)
        logits[rows, cols, 3] = -10.0
        logits[rows, cols, label["labels"][rows, cols]] = 10.0
        if i == len(batches) - 1:  # the padding's objects are not detected
            logits[-2:, :slots] = -10.0
            logits[-2:, :slots, 3] = 10.0
            b["inputs"]["pred_boxes"][-2:] = [0.01, 0.01, 0.02, 0.02]
        b["inputs"]["pred_logits"] = logits
    model = coco_model
    metrics = run_evaluate(model, batches)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    for b in batches:
        b["batch_mask"][:] = 1.0
        b["label"]["image/id"] = b["label"]["image/id"] + 5000 * (b is batches[-1])
    assert run_evaluate(model, batches)["AP"] < 0.9  # counted, the padding lowers AP


def test_lvis_through_evaluate():
    rng = np.random.default_rng(3)
    batches = padded_batches(rng, lvis=True)
    meta = {"num_classes": 3, "category_frequencies": "rcf"}
    model = make_model(meta)
    metrics = run_evaluate(model, batches)
    examples = real_examples(model, batches)
    assert {"neg_category_ids", "not_exhaustive_category_ids"} <= set(examples)
    expected = ce.lvis_metrics(examples, "rcf", [1, 2, 3])
    assert set(expected) == set(ce.LVIS_METRICS)
    for key in ce.LVIS_METRICS:
        assert metrics[key] == pytest.approx(expected[key], abs=1e-12, nan_ok=True), key
    assert "AR100" not in metrics
    # eval_metrics='coco' scores the same batches as COCO: the lists are not kept.
    coco_model = make_model(meta, eval_metrics="coco")
    shapes = jax.eval_shape(coco_model.eval_examples, batches[0]["inputs"], batches[0])
    assert "neg_category_ids" not in shapes and "image_id" in shapes
    lists = ("neg_category_ids", "not_exhaustive_category_ids")
    coco = coco_model.global_metrics({}, {k: v for k, v in examples.items() if k not in lists})
    assert set(coco) == set(ce.COCO_METRICS)


def test_eval_config_keys_and_errors():
    model = make_model()
    assert model.option("eval_metrics") == "auto" and model.eval_top_k(False) == 100
    assert model.eval_top_k(True) == 300
    assert model.eval_category_ids(False) is None
    assert model.eval_category_ids(True) == [1, 2, 3]
    coco = FixedDetector(
        ml_collections.ConfigDict({"dataset_name": "coco", "dataset_configs": {}}),
        {"num_classes": 80},
    )
    assert coco.eval_category_ids(False) == list(ce.COCO_2017_CATEGORY_IDS)
    own = make_model({"num_classes": 3, "category_ids": [7, 3, 9]})
    assert own.eval_category_ids(False) == [7, 3, 9]
    assert make_model({"num_classes": 1203}).category_frequencies() == list(ce.LVIS_V1_FREQUENCIES)
    for bad in ({"eval_metrics": "voc"}, {"eval_top_k": 0}, {"eval_category_ids": "coco"}):
        with pytest.raises(ConfigError):
            make_model(**bad)
    batch = detection_batch(np.random.default_rng(0))
    assert make_model(eval_metrics="none").eval_examples(batch["inputs"], batch) == {}
    with pytest.raises(ValueError, match="neg_category_ids"):
        make_model(eval_metrics="lvis").eval_examples(batch["inputs"], batch)
