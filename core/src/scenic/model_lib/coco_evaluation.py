"""COCO and LVIS box AP of a whole eval split, from the examples the eval step gathered.

The detection eval step (`DetectionModel.eval_examples`) keeps, for every eval image, its K
best detections and its ground truth, all in pixels of the original image; the trainer
gathers them from every host and drops the padding (`scenic.train_lib.evaluation`). Here
they become COCO-format ground truth and results, in memory, scored once:

- `coco_metrics`: pycocotools' `COCOeval` (bbox), the reference: AP, AP50, AP75, APs, APm,
  APl and AR100 (recall with at most 100 detections per image and class).
- `lvis_metrics`: the LVIS protocol. The `lvis` package (0.5.3, its last release) calls
  `np.float`, which NumPy removed, so this runs pycocotools' `COCOeval` with LVIS's
  federated rules added (`FederatedEval`): at most 300 detections per image; only boxes of
  positive area are scored (ground truth and detections); a detection
  of a class that is neither in the image's ground truth nor in its `neg_category_ids` is
  not scored; an unmatched detection of a class in its `not_exhaustive_category_ids` is
  ignored. Also APr / APc / APf over the rare / common / frequent classes.
- `write_coco_results`: the standard results JSON for offline scoring.

Examples (NumPy, n images; what `DetectionModel.eval_examples` returns, K detections and M
ground-truth slots per image, classes are label ids 0..C-1):

  image_id      [n] int            optional: row numbers when absent
  orig_size     [n, 2]             (height, width) of the original image
  det_boxes     [n, K, 4]          xyxy pixels of the original image
  det_scores    [n, K], det_labels [n, K]
  gt_boxes      [n, M, 4]          xyxy pixels; gt_labels [n, M]; gt_mask [n, M] (1 real)
  gt_is_crowd   [n, M]             optional; gt_area [n, M] optional (annotated area in
                                   pixels; the box area where it is absent or 0)
  neg_category_ids, not_exhaustive_category_ids
                [n, C] int         LVIS only: label ids padded with -1

`category_ids` maps label ids to the ids written in COCO records (labels themselves when
None): `COCO_2017_CATEGORY_IDS` for TFDS coco/2017, `label + 1` for TFDS lvis. pycocotools
is imported only inside these functions.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np

#: The official COCO category id of each TFDS coco/2017 label 0..79 (COCO uses 80 of 91 ids).
COCO_2017_CATEGORY_IDS = (
    *range(1, 12),
    *range(13, 26),
    27,
    28,
    *range(31, 45),
    *range(46, 66),
    67,
    70,
    *range(72, 83),
    *range(84, 91),
)

#: LVIS v1 frequency group of each category, in TFDS lvis label order (LVIS id - 1):
#: 'r' rare (in 1-10 training images), 'c' common (11-100), 'f' frequent (> 100);
#: 337 / 461 / 405 classes, from the `frequency` field of the LVIS v1 annotation files.
LVIS_V1_FREQUENCIES = (
    "cfffccccccffrrfcrcfrrcfcccfcfrrfcfffcrrrfrfcfccfrfrrfccffffffcrcffcfrcrcccfffrff"
    "frfcrfffffccrfffccfccccfrrccffcfrfffrfrcccrcfrfccrrffccrfffrcrfrcfrccfrfcfrcccrf"
    "rccrccrcfcfrfcfcffrcfrfcfcccfccfcffrcccccrffccffrrcccrrcffcccrrcffccffrfrrfrrrcr"
    "cccrrcrccrrffffcrrfcfrccrrccrrffccrffcccrrcffcrcccrrcrrffffrrrfrffrcfrccrccrrcfc"
    "rcrfcrcccfrcrccccfcccfcfcffrrffrrrrcrfccfrcrrrfrfccffrfrffffrrccfcfrrfcfcffcrrcr"
    "fccfrcrcfrfcrrfrcccrffcccrrrffrrccrcfcrfffcffrfcrcffcccrcrfcfcccccrcfccccfccfrrr"
    "rrcccrcrccrrcccfcfcfcfrccrcrrfccrffrfrccfccfccrfcccrcfrfcrcfrrrfrcfffcrccccfrcfr"
    "rcfcffrrffrrcrrcrfcrcrrcrfccfcffcrfcrcrccrrcfrccfrfccffrfrrrfccfrfffcffrfrrccrfr"
    "fffffrfrccrcfcfcrffcfrrrrccfffrrcrffcrfcccccfrfrfrrfrfcccfcffrffffcffrcrfrffccfc"
    "crcfcfrfrrccrffccffcccrcfccffcfrcrrffrrccccrcfccrcfrcccfcrrcffrrrcrrfccrfccrcfff"
    "ccrfrfcrrrfrcfrfffcrcrrrccffrcrfccffffccccccfccfrrrrrcrrcrrfcrcrfcccrcccrccfcccf"
    "fcrcfrrccrrrcrcfcfffcrffrccrcfffrrffrrfrfcffrcfcccrcccccrrrcrrfrrcfffcfrfcfrfrfc"
    "ffcfffffrccrcrrfccffffrcrfrccrrrfrfccrcfccrcrccfcrfrccrrfffffcfffffrrrrrfcfcfccc"
    "cffcfcrrrfcfrrffrrfffccfcccccfffcfrcfffrccfrccccccfcfcffffffcffffccfffcfcffrfrrc"
    "fffrcrccrcccffrfccfcffcrrrcrcrccccffrrrcffccrcrccccffcccffcccccccfcfcffcrcccffcc"
    "cfc"
)

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR300")
LVIS_MAX_DETECTIONS = 300  # per image, over all classes (LVIS's protocol)
FREQUENCY_GROUPS = ("r", "c", "f")


def image_ids(examples: Mapping) -> np.ndarray:
    """The images' ids (row numbers when the examples have none); they must be unique."""
    n = len(examples["det_scores"])
    ids = np.asarray(examples["image_id"]).astype(np.int64) if "image_id" in examples else None
    if ids is None:
        return np.arange(n, dtype=np.int64)
    if len(np.unique(ids)) != n:
        raise ValueError(
            f"Eval image ids are not unique ({n} images, {len(np.unique(ids))} ids): an "
            "image seen twice would be scored as one."
        )
    return ids


def category_id_map(category_ids: Sequence[int] | None):
    """Label id -> COCO category id (the label itself when `category_ids` is None)."""
    if category_ids is None:
        return lambda label: int(label)
    table = [int(c) for c in category_ids]

    def lookup(label):
        if not 0 <= label < len(table):
            raise ValueError(f"Label {label} has no category id ({len(table)} ids given).")
        return table[int(label)]

    return lookup


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """COCO's [x, y, width, height]; inverted boxes get width / height 0."""
    boxes = np.asarray(boxes, np.float64)
    wh = np.maximum(boxes[..., 2:] - boxes[..., :2], 0.0)
    return np.concatenate([boxes[..., :2], wh], axis=-1)


def category_lists(examples: Mapping, key: str, ids, category_id) -> dict[int, list[int]]:
    """Per image id, the category ids of an LVIS list (`neg_category_ids`, ...)."""
    lists = np.asarray(examples[key])
    return {int(image): [category_id(c) for c in row if c >= 0] for image, row in zip(ids, lists)}


def ground_truth(
    examples: Mapping,
    category_ids: Sequence[int] | None = None,
    frequencies: Sequence[str] | None = None,
) -> dict:
    """COCO-format ground truth (`images`, `annotations`, `categories`) of the examples.

    Categories are every label seen in the ground truth or the detections (a class without
    ground truth has no AP either way); with `frequencies` (one of 'r', 'c', 'f' per label),
    each carries LVIS's `frequency`. Images carry LVIS's lists when the examples have them.
    """
    ids = image_ids(examples)
    category_id = category_id_map(category_ids)
    orig_size = np.asarray(examples["orig_size"])
    boxes = xyxy_to_xywh(examples["gt_boxes"])
    labels = np.asarray(examples["gt_labels"])
    real = np.asarray(examples["gt_mask"]) > 0
    crowd = np.asarray(examples.get("gt_is_crowd", np.zeros(real.shape)), bool)
    area = np.asarray(examples.get("gt_area", np.zeros(real.shape)), np.float64)
    area = np.where(area > 0, area, boxes[..., 2] * boxes[..., 3])

    images = [
        {"id": int(i), "height": int(hw[0]), "width": int(hw[1])} for i, hw in zip(ids, orig_size)
    ]
    for key in ("neg_category_ids", "not_exhaustive_category_ids"):
        if key in examples:
            for image, cats in zip(
                images, category_lists(examples, key, ids, category_id).values()
            ):
                image[key] = cats
    annotations = []
    for row, col in zip(*np.nonzero(real)):
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": int(ids[row]),
                "category_id": category_id(labels[row, col]),
                "bbox": [float(v) for v in boxes[row, col]],
                "area": float(area[row, col]),
                "iscrowd": int(crowd[row, col]),
            }
        )
    seen = set(labels[real].tolist()) | set(np.asarray(examples["det_labels"]).ravel().tolist())
    categories = []
    for label in sorted(seen):
        category = {"id": category_id(label), "name": str(category_id(label))}
        if frequencies is not None:
            category["frequency"] = frequencies[label]
        categories.append(category)
    return {"images": images, "annotations": annotations, "categories": categories}


def detection_records(examples: Mapping, category_ids: Sequence[int] | None = None) -> list:
    """COCO results: `[{image_id, category_id, bbox: [x, y, w, h], score}]`, every image's
    detections in the order the examples hold them (best first)."""
    ids = image_ids(examples)
    category_id = category_id_map(category_ids)
    boxes = xyxy_to_xywh(examples["det_boxes"])
    scores = np.asarray(examples["det_scores"], np.float64)
    labels = np.asarray(examples["det_labels"])
    return [
        {
            "image_id": int(ids[row]),
            "category_id": category_id(labels[row, col]),
            "bbox": [float(v) for v in boxes[row, col]],
            "score": float(scores[row, col]),
        }
        for row in range(scores.shape[0])
        for col in range(scores.shape[1])
    ]


def write_coco_results(
    path: str | os.PathLike,
    detections: Mapping | list,
    category_ids: Sequence[int] | None = None,
) -> None:
    """Writes the standard COCO results JSON for offline scoring, atomically (a temporary
    file in the same folder, then a rename). `detections`: the eval examples (see the
    module docstring) or records from `detection_records`."""
    records = (
        detections if isinstance(detections, list) else detection_records(detections, category_ids)
    )
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".coco_results.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(records, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def quietly(fn, *args, **kwargs):
    """pycocotools prints progress on stdout; keep it out of the training log."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def coco_api(dataset: dict):
    """A pycocotools `COCO` over an in-memory dataset dict."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    quietly(coco.createIndex)
    return coco


def coco_results(gt, records: list):
    """`gt.loadRes(records)`, or an empty result set (loadRes cannot take none)."""
    if records:
        return quietly(gt.loadRes, records)
    return coco_api({**gt.dataset, "annotations": []})


def nan_if_missing(value: float) -> float:
    """COCO writes -1 where nothing was there to score (e.g. no large objects)."""
    return float("nan") if value < 0 else float(value)


def coco_metrics(examples: Mapping, category_ids: Sequence[int] | None = None) -> dict:
    """COCO box metrics (`COCO_METRICS`) of the examples with pycocotools' `COCOeval`."""
    from pycocotools.cocoeval import COCOeval

    if len(examples["det_scores"]) == 0:
        return dict.fromkeys(COCO_METRICS, float("nan"))
    gt = coco_api(ground_truth(examples, category_ids))
    evaluator = COCOeval(gt, coco_results(gt, detection_records(examples, category_ids)), "bbox")
    quietly(evaluator.evaluate)
    quietly(evaluator.accumulate)
    quietly(evaluator.summarize)
    stats = evaluator.stats  # AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ...
    values = (*stats[:6], stats[8])
    return {name: nan_if_missing(v) for name, v in zip(COCO_METRICS, values)}


def limit_per_image(records: list, max_detections: int) -> list:
    """Each image's `max_detections` best records (a stable sort, as LVIS's results do)."""
    by_image: dict[int, list] = {}
    for record in records:
        by_image.setdefault(record["image_id"], []).append(record)
    limited = []
    for image_records in by_image.values():
        if len(image_records) > max_detections:
            image_records = sorted(image_records, key=lambda r: r["score"], reverse=True)
            image_records = image_records[:max_detections]
        limited.extend(image_records)
    return limited


class SparseEvalImgs:
    """`COCOeval.evalImgs` as a dict: (class, area, image) cells without ground truth or
    detections are None without being stored (LVIS: 1,203 classes x 20k images)."""

    def __init__(self, cells: dict):
        self.cells = cells

    def __getitem__(self, index):
        return self.cells.get(index)

    def __bool__(self):
        return True


@functools.cache
def federated_eval_class():
    """`FederatedEval`: pycocotools' COCOeval with LVIS's rules (built on first use, so that
    pycocotools is imported only when LVIS is evaluated)."""
    from pycocotools.cocoeval import COCOeval

    class FederatedEval(COCOeval):
        """COCOeval (bbox) plus LVIS's rules that need the matching: an unmatched detection
        of a class in its image's `not_exhaustive` set is ignored. `max_detections` per
        image and class (the per-image limit and the negative / positive filter are applied
        to the results beforehand, by `lvis_metrics`). Only (image, class) cells with
        ground truth or detections are evaluated."""

        def __init__(self, gt, dt, not_exhaustive: dict, max_detections: int):
            super().__init__(gt, dt, "bbox")
            self.not_exhaustive = not_exhaustive
            self.params.maxDets = [max_detections]

        def evaluate(self):
            p = self.params
            p.imgIds = list(np.unique(p.imgIds))
            p.catIds = list(np.unique(p.catIds))
            p.maxDets = sorted(p.maxDets)
            self._prepare()
            known = set(p.catIds)
            cells = sorted(k for k in set(self._gts) | set(self._dts) if k[1] in known)
            self.ious = {cell: self.computeIoU(*cell) for cell in cells}
            image_index = {image: i for i, image in enumerate(p.imgIds)}
            class_index = {c: k for k, c in enumerate(p.catIds)}
            num_images, num_areas = len(p.imgIds), len(p.areaRng)
            evaluated = {}
            for image, category in cells:
                for a, area_range in enumerate(p.areaRng):
                    index = (class_index[category] * num_areas + a) * num_images
                    result = self.evaluateImg(image, category, area_range, p.maxDets[-1])
                    if result is not None:
                        evaluated[index + image_index[image]] = result
            self.evalImgs = SparseEvalImgs(evaluated)
            self._paramsEval = copy.deepcopy(self.params)

        def evaluateImg(self, imgId, catId, aRng, maxDet):
            result = super().evaluateImg(imgId, catId, aRng, maxDet)
            if result is not None and catId in self.not_exhaustive.get(imgId, ()):
                unmatched = result["dtMatches"] == 0
                result["dtIgnore"] = np.logical_or(result["dtIgnore"], unmatched)
            return result

    return FederatedEval


def mean_precision(precision: np.ndarray) -> float:
    """COCO's summary: the mean over the entries that were scored (not -1)."""
    scored = precision[precision > -1]
    return float(np.mean(scored)) if scored.size else float("nan")


def lvis_metrics(
    examples: Mapping,
    frequencies: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    max_detections: int = LVIS_MAX_DETECTIONS,
) -> dict:
    """LVIS box metrics (`LVIS_METRICS`) with the federated rules (module docstring).

    `frequencies`: 'r' / 'c' / 'f' per label (e.g. `LVIS_V1_FREQUENCIES`); without them
    APr, APc and APf are left out. The examples need `neg_category_ids` and
    `not_exhaustive_category_ids`.
    """
    missing = {"neg_category_ids", "not_exhaustive_category_ids"} - set(examples)
    if missing:
        raise ValueError(f"LVIS evaluation needs the examples' {', '.join(sorted(missing))}.")
    if len(examples["det_scores"]) == 0:
        names = ["AP", "AP50", "AP75", "APs", "APm", "APl", f"AR{max_detections}"]
        if frequencies is not None:
            names += [f"AP{group}" for group in FREQUENCY_GROUPS]
        return dict.fromkeys(names, float("nan"))
    dataset = ground_truth(examples, category_ids, frequencies)
    # LVIS scores only annotations and detections of positive area.
    dataset["annotations"] = [a for a in dataset["annotations"] if a["area"] > 0]
    positive: dict[int, set] = {image["id"]: set() for image in dataset["images"]}
    for annotation in dataset["annotations"]:
        positive[annotation["image_id"]].add(annotation["category_id"])
    negative = {image["id"]: set(image["neg_category_ids"]) for image in dataset["images"]}
    not_exhaustive = {
        image["id"]: set(image["not_exhaustive_category_ids"]) for image in dataset["images"]
    }
    records = limit_per_image(detection_records(examples, category_ids), max_detections)
    # Federated: a class neither present nor known absent in an image is not scored there.
    scored = {image: positive[image] | negative[image] for image in positive}
    records = [
        r
        for r in records
        if r["category_id"] in scored[r["image_id"]] and r["bbox"][2] * r["bbox"][3] > 0
    ]
    gt = coco_api(dataset)
    evaluator = federated_eval_class()(
        gt, coco_results(gt, records), not_exhaustive, max_detections
    )
    quietly(evaluator.evaluate)
    quietly(evaluator.accumulate)
    precision = evaluator.eval["precision"][..., -1]  # [IoU, recall, class, area]
    recall = evaluator.eval["recall"][..., -1]  # [IoU, class, area]
    iou = evaluator.params.iouThrs
    metrics = {
        "AP": mean_precision(precision[..., 0]),
        "AP50": mean_precision(precision[np.isclose(iou, 0.5), ..., 0]),
        "AP75": mean_precision(precision[np.isclose(iou, 0.75), ..., 0]),
        "APs": mean_precision(precision[..., 1]),
        "APm": mean_precision(precision[..., 2]),
        "APl": mean_precision(precision[..., 3]),
    }
    if frequencies is not None:
        group_of = {category["id"]: category["frequency"] for category in dataset["categories"]}
        for group in FREQUENCY_GROUPS:
            members = [k for k, c in enumerate(evaluator.params.catIds) if group_of[c] == group]
            metrics[f"AP{group}"] = mean_precision(precision[:, :, members, 0])
    metrics[f"AR{max_detections}"] = mean_precision(recall[..., 0])
    return metrics
