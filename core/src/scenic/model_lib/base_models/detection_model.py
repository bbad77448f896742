"""DETR-style set-prediction base model: bipartite matching, then class, L1 and GIoU losses.

The one shared criterion for set-prediction detectors (DETR, OWL-ViT): subclass it and add
`build_flax_model`; never copy it.

Model outputs are a dict:
  - `pred_logits` `[B, N, C]`: with `class_loss='softmax'` the last class is "no object";
    with `class_loss='sigmoid_focal'` there is no background class.
  - `pred_boxes` `[B, N, 4]`: cxcywh in [0, 1].
  - `aux_outputs` (optional): a list of such dicts, one per earlier decoder layer; each is
    matched on its own and gets the same losses with the same weights.
`batch['label']` is a dict: `labels` `[B, M]` int, `boxes` `[B, M, 4]` cxcywh and
`box_mask` `[B, M]` (1 real target, 0 padding; all real if absent). Targets of examples
with `batch_mask` 0 never count. Padded targets may hold any label and box (even NaN).

Federated label spaces (`federated_loss`, LVIS / Objects365 as in OWL-ViT): such data sets
annotate each image for only some classes, so a missing box is no evidence of absence. The
sigmoid focal class term of (image, query, class) then counts only if the class is in the
image's label space: its positives and its `neg_category_ids` (verified absent), or an
explicit `label['label_space']` `[B, C]` of 0/1 (which always applies). Classes in
`not_exhaustive_category_ids` may have unannotated instances, so only their matched queries
count. A matched query always counts for its target's class. Matching and normalisation
are unchanged (`federated_label_space`).

Normalisation: every loss term is a sum over the matched real targets (class term: over all
queries of real examples), divided by the number of real targets in the *global* batch
(`lax.psum` over `axis_name`, at least 1), as in DETR. `loss_function` returns the device's
share times the device count, so the trainer's `pmean` over devices yields the loss (and
gradient) of the concatenated batch. Metrics are the pairs (summed term, global target
count), psum'ed, so they sum across devices, hosts and batches to target-weighted means.

Evaluation: `eval_examples` keeps each eval image's top-k detections (over queries x
classes, `detection_postprocess`) and its ground truth, both in pixels of the original
image, so only K detections per image leave the device; `global_metrics` scores the whole
gathered split once with pycocotools (`coco_evaluation`): COCO AP, AP50, AP75, APs, APm,
APl, AR100, or, when the batch carries LVIS's `neg_category_ids` and
`not_exhaustive_category_ids`, LVIS's federated AP (plus APr, APc, APf and AR300).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from scenic.common_lib import config_utils
from scenic.model_lib import (
    box_utils,
    coco_evaluation,
    detection_postprocess,
    matchers,
    model_utils,
)
from scenic.model_lib.base_models.base_model import BaseModel

CLASS_LOSSES = ("softmax", "sigmoid_focal")
EVAL_METRICS = ("auto", "coco", "lvis", "none")
CATEGORY_ID_MAPS = ("labels", "coco2017", "lvis")
LVIS_LIST_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")
#: Defaults for the top-level config keys this model reads (DETR's weights).
DEFAULTS = {
    "matcher": "hungarian_matcher",
    "class_loss": "softmax",
    "class_loss_coef": 1.0,
    "bbox_loss_coef": 5.0,
    "giou_loss_coef": 2.0,
    "eos_coef": 0.1,
    "focal_alpha": 0.25,
    "focal_gamma": 2.0,
    # Federated label spaces for the sigmoid focal class loss (LVIS, Objects365): count a
    # class of an image only if it is annotated there (module docstring); needs batches with
    # label['neg_category_ids'] (and optionally 'not_exhaustive_category_ids') or an
    # explicit label['label_space'] [B, C].
    "federated_loss": False,
    # Detections kept per eval image (top-k over queries x classes); None: 100, or 300
    # when scoring LVIS (its protocol).
    "eval_top_k": None,
    # Eval-set metrics: 'coco' (COCO box AP), 'lvis' (federated LVIS AP), 'auto' (LVIS
    # when the eval batches carry LVIS's category lists, else COCO) or 'none'.
    "eval_metrics": "auto",
    # If set, process 0 writes the detections of every eval pass there as COCO results JSON
    # (each pass replaces the file; with extra eval splits, the last split's remain).
    "coco_results_path": None,
    # Category ids written for each label: 'labels' (as they are), 'coco2017' (TFDS
    # coco/2017's 80 labels -> COCO's ids 1..90), 'lvis' (label + 1) or a list; None: the
    # data set's `category_ids` meta data, else 'lvis' for LVIS, 'coco2017' for the
    # 'coco' data set on coco/2017, else 'labels'.
    "eval_category_ids": None,
}


class DetectionModel(BaseModel):
    """Set prediction with a pluggable matcher (`matchers.MATCHERS`) and DETR's criterion.

    The matching cost is `class_loss_coef * class cost + bbox_loss_coef * L1(cxcywh)
    - giou_loss_coef * GIoU`; the class cost is -p(class) (softmax) or the focal cost
    (sigmoid focal, as Deformable DETR and OWL-ViT). No gradient flows through the matching.
    """

    config_keys = (*BaseModel.config_keys, *DEFAULTS)

    def __init__(self, config, dataset_meta_data):
        super().__init__(config, dataset_meta_data)
        matcher, class_loss = self.option("matcher"), self.option("class_loss")
        if matcher not in matchers.MATCHERS:
            hint = config_utils.did_you_mean(str(matcher), matchers.MATCHERS)
            raise config_utils.ConfigError(
                f"Unknown matcher {matcher!r}.{hint} Known: {', '.join(matchers.MATCHERS)}."
            )
        if class_loss not in CLASS_LOSSES:
            raise config_utils.ConfigError(
                f"Unknown class_loss {class_loss!r}; expected one of {CLASS_LOSSES}."
            )
        if class_loss == "softmax" and self.option("federated_loss"):
            raise config_utils.ConfigError(
                "federated_loss=True needs class_loss='sigmoid_focal': federated label spaces "
                "weight the per-class sigmoid focal loss (a softmax has no per-class terms)."
            )
        self.matcher = matchers.MATCHERS[matcher]
        eval_metrics, top_k = self.option("eval_metrics"), self.option("eval_top_k")
        if eval_metrics not in EVAL_METRICS:
            raise config_utils.ConfigError(
                f"Unknown eval_metrics {eval_metrics!r}; expected one of {EVAL_METRICS}."
            )
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise config_utils.ConfigError(f"eval_top_k must be an int >= 1, got {top_k!r}.")
        category_ids = self.option("eval_category_ids")
        if isinstance(category_ids, str) and category_ids not in CATEGORY_ID_MAPS:
            raise config_utils.ConfigError(
                f"Unknown eval_category_ids {category_ids!r}; expected one of "
                f"{CATEGORY_ID_MAPS} or a list of ids."
            )

    def option(self, key: str):
        value = self.config.get(key)
        return DEFAULTS[key] if value is None else value

    @property
    def softmax(self) -> bool:
        return self.option("class_loss") == "softmax"

    # --- Matching --------------------------------------------------------------------------

    def class_cost(self, logits, labels):
        """`[B, N, C]` logits, `[B, M]` labels -> `[B, N, M]` class cost."""
        one_hot = jax.nn.one_hot(labels, logits.shape[-1])
        if self.softmax:
            per_class = -jax.nn.softmax(logits, axis=-1)
        else:
            alpha, gamma = self.option("focal_alpha"), self.option("focal_gamma")
            p = jax.nn.sigmoid(logits)
            positive = alpha * (1 - p) ** gamma * -jax.nn.log_sigmoid(logits)
            negative = (1 - alpha) * p**gamma * -jax.nn.log_sigmoid(-logits)
            per_class = positive - negative
        return jnp.einsum("bnc,bmc->bnm", per_class, one_hot)

    def matching_cost(self, logits, pred_boxes, labels, boxes):
        l1 = jnp.sum(jnp.abs(pred_boxes[:, :, None, :] - boxes[:, None, :, :]), axis=-1)
        giou = box_utils.generalized_box_iou(
            box_utils.cxcywh_to_xyxy(pred_boxes), box_utils.cxcywh_to_xyxy(boxes)
        )
        return (
            self.option("class_loss_coef") * self.class_cost(logits, labels)
            + self.option("bbox_loss_coef") * l1
            - self.option("giou_loss_coef") * giou
        )

    def match(self, cost, valid):
        """Optimal (query, target) pairs for the real targets of each example.

        Returns `rows`, `cols` `[B, K]` (K = min(N, M)) and `matched` `[B, K]`, False for pairs
        that use a padded target. Real targets are moved to the front first, so any target
        mask works with the matchers' `num_valid_cols`; with fewer queries than target slots
        (N < M) padded columns are forbidden (+inf) instead, so they are used only by
        queries left over once every real target has one.
        """
        cost = jax.lax.stop_gradient(cost)
        num_queries, num_slots = cost.shape[-2:]
        order = jnp.argsort(jnp.logical_not(valid).astype(jnp.int32), axis=-1, stable=True)
        cost = jnp.take_along_axis(cost, order[:, None, :], axis=-1)
        num_valid = jnp.sum(valid, axis=-1).astype(jnp.int32)
        if num_queries >= num_slots:
            indices = self.matcher(cost, num_valid)
        else:
            real = jnp.arange(num_slots)[None, None, :] < num_valid[:, None, None]
            indices = self.matcher(jnp.where(real, cost, jnp.inf))
        rows, sorted_cols = indices[:, 0], indices[:, 1]
        return rows, jnp.take_along_axis(order, sorted_cols, -1), sorted_cols < num_valid[:, None]

    # --- Losses ----------------------------------------------------------------------------

    def federated_label_space(self, label, labels, valid, num_classes):
        """Per-image class weights `[B, C]` of the focal class loss, or None (all count).

        An image annotated for only some classes (LVIS's federated design) says nothing
        about the others, so penalising a query there would teach the model to suppress
        real, unannotated objects. The space is `label['label_space']` if given, else
        (with `federated_loss`) the image's positive classes and its `neg_category_ids`;
        `not_exhaustive_category_ids` are then removed. `loss_sums` adds the matched
        (query, class of its target) entries back.
        """
        explicit = label.get("label_space")
        if self.softmax:
            if explicit is not None:
                raise ValueError(
                    "DetectionModel: label['label_space'] needs class_loss='sigmoid_focal'."
                )
            return None
        if explicit is None and not self.option("federated_loss"):
            return None
        batch = labels.shape[0]

        def in_lists(ids, keep=None):  # [B, K] class ids (-1: padding) -> [B, C] 0/1
            one_hot = jax.nn.one_hot(jnp.asarray(ids), num_classes)
            if keep is not None:
                one_hot = one_hot * keep[..., None]
            return (jnp.sum(one_hot, axis=-2) > 0).astype(jnp.float32)

        if explicit is not None:
            space = jnp.asarray(explicit, jnp.float32)
            if space.shape != (batch, num_classes):
                raise ValueError(
                    f"DetectionModel: label['label_space'] must be [B, C] = "
                    f"{(batch, num_classes)}; got {space.shape}."
                )
        elif label.get("neg_category_ids") is None:
            raise ValueError(
                "DetectionModel: federated_loss=True needs batches with "
                "label['neg_category_ids'] (and optionally 'not_exhaustive_category_ids'), "
                "as the TFDS lvis data set has, or an explicit label['label_space'] [B, C]; "
                f"this label has {sorted(label)}."
            )
        else:
            space = jnp.maximum(in_lists(labels, valid), in_lists(label["neg_category_ids"]))
        if label.get("not_exhaustive_category_ids") is not None:
            space = space * (1.0 - in_lists(label["not_exhaustive_category_ids"]))
        return space

    def loss_sums(self, outputs, labels, boxes, valid, example_mask, label_space=None):
        """Unnormalised class, L1 and GIoU sums of one output dict on this device.

        `label_space` `[B, C]`: the class weights of `federated_label_space` (None: all 1).
        """
        logits = jnp.asarray(outputs["pred_logits"], jnp.float32)
        pred_boxes = jnp.asarray(outputs["pred_boxes"], jnp.float32)
        check_outputs(logits, pred_boxes, labels)
        rows, cols, matched = self.match(
            self.matching_cost(logits, pred_boxes, labels, boxes), valid
        )
        batch, num_queries, num_classes = logits.shape
        example = jnp.arange(batch)[:, None]
        matched_labels = jnp.take_along_axis(labels, cols, -1)

        if self.softmax:
            no_object = num_classes - 1
            target = jnp.full((batch, num_queries), no_object, jnp.int32)
            target = target.at[example, rows].set(jnp.where(matched, matched_labels, no_object))
            nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), target[..., None], -1)[..., 0]
            weight = jnp.where(target == no_object, self.option("eos_coef"), 1.0)
            class_sum = jnp.sum(jnp.where(example_mask[:, None], nll * weight, 0.0))
        else:
            target = (
                jnp.zeros_like(logits)
                .at[example, rows]
                .set(jax.nn.one_hot(matched_labels, num_classes) * matched[..., None])
            )
            focal = model_utils.sigmoid_focal_loss(
                logits, target, self.option("focal_alpha"), self.option("focal_gamma")
            )
            if label_space is not None:  # matched (query, target class) entries always count
                focal = focal * jnp.maximum(label_space[:, None, :], target)
            class_sum = jnp.sum(jnp.where(example_mask[:, None, None], focal, 0.0))

        pred = jnp.take_along_axis(pred_boxes, rows[..., None], 1)
        true = jnp.take_along_axis(boxes, cols[..., None], 1)
        l1 = jnp.sum(jnp.abs(pred - true), -1)
        giou = box_utils.generalized_box_iou(
            box_utils.cxcywh_to_xyxy(pred[..., None, :]),
            box_utils.cxcywh_to_xyxy(true[..., None, :]),
        )[..., 0, 0]
        matched_logits = jnp.take_along_axis(logits, rows[..., None], 1)
        correct = jnp.argmax(matched_logits, -1) == matched_labels
        return {
            "class": class_sum,
            "bbox": jnp.sum(jnp.where(matched, l1, 0.0)),
            "giou": jnp.sum(jnp.where(matched, 1.0 - giou, 0.0)),
        }, jnp.sum(jnp.where(matched, correct, False)).astype(jnp.float32)

    def loss_terms(self, outputs, batch):
        """Every unnormalised loss term on this device and its number of real targets.

        Names: `loss_class`, `loss_bbox`, `loss_giou`, then `loss_class_aux{i}` ... for
        `aux_outputs[i]`; `loss` is their weighted total. `class_accuracy` counts the real
        targets whose matched query (final output) has the target's class as its top class
        (DETR's `class_error` is 100 x (1 - class_accuracy)).
        """
        labels, boxes, valid, example_mask = targets_of(batch)
        space = self.federated_label_space(
            batch["label"], labels, valid, outputs["pred_logits"].shape[-1]
        )
        aux = outputs.get("aux_outputs") or []
        terms, total = {}, 0.0
        for suffix, output in [("", outputs), *((f"_aux{i}", o) for i, o in enumerate(aux))]:
            sums, correct = self.loss_sums(output, labels, boxes, valid, example_mask, space)
            for name, value in sums.items():
                terms[f"loss_{name}{suffix}"] = value
                total = total + self.option(f"{name}_loss_coef") * value
            if not suffix:
                terms["class_accuracy"] = correct
        terms["loss"] = total
        return terms, jnp.sum(valid).astype(jnp.float32)

    def loss_and_metrics(self, outputs, batch, model_params=None, axis_name=None):
        """Both from one matching per output dict: what the trainer calls every step."""
        terms, num_boxes = self.loss_terms(outputs, batch)
        local_total = terms["loss"]
        num_devices = 1.0
        if axis_name is not None:
            terms, num_boxes = jax.lax.psum((terms, num_boxes), axis_name)
            num_devices = jax.lax.psum(1.0, axis_name)
        normalizer = jnp.maximum(num_boxes, 1.0)
        loss = local_total * num_devices / normalizer + self.l2_term(model_params)
        return loss, {name: (value, normalizer) for name, value in terms.items()}

    def loss_function(self, outputs, batch, model_params=None, axis_name=None):
        return self.loss_and_metrics(outputs, batch, model_params, axis_name)[0]

    def get_metrics(self, outputs, batch, axis_name=None):
        return self.loss_and_metrics(outputs, batch, axis_name=axis_name)[1]

    # --- Evaluation: COCO / LVIS AP of the whole eval split ---------------------------------

    def scores_lvis(self, has_lvis_lists: bool) -> bool:
        """Whether eval scores LVIS (federated) rather than COCO."""
        eval_metrics = self.option("eval_metrics")
        if eval_metrics == "lvis" and not has_lvis_lists:
            raise ValueError(
                "eval_metrics='lvis' needs eval batches with label['neg_category_ids'] and "
                "label['not_exhaustive_category_ids'] (the TFDS lvis data set has them)."
            )
        return eval_metrics == "lvis" or (eval_metrics == "auto" and has_lvis_lists)

    def eval_top_k(self, lvis: bool) -> int:
        top_k = self.option("eval_top_k")
        if top_k is None:
            return coco_evaluation.LVIS_MAX_DETECTIONS if lvis else 100
        return top_k

    def eval_examples(self, outputs, batch):
        """Per image: the top-k detections and the ground truth, in original pixels.

        Runs inside the pmapped eval step (static shapes). Keys: `det_scores` / `det_labels`
        `[B, K]`, `det_boxes` `[B, K, 4]` (xyxy pixels of the original image, clipped to
        it), `gt_boxes` `[B, M, 4]` (the same conversion), `gt_labels`, `gt_mask`,
        `gt_is_crowd`, `gt_area` `[B, M]`, `orig_size` `[B, 2]`, `image_id` `[B]` when the
        batch has `image/id`, and LVIS's two category lists `[B, C]` when it has them.
        Batches without `orig_size` / `size` are taken as unpadded canvases.
        """
        if self.option("eval_metrics") == "none":
            return {}
        label = batch["label"]
        lvis = self.scores_lvis(all(key in label for key in LVIS_LIST_KEYS))
        logits = outputs["pred_logits"].astype(jnp.float32)
        pred_boxes = outputs["pred_boxes"].astype(jnp.float32)
        labels, boxes, valid, _ = targets_of(batch)
        check_outputs(logits, pred_boxes, labels)
        scores, classes, top_boxes = detection_postprocess.top_k_detections(
            logits, pred_boxes, self.eval_top_k(lvis), softmax=self.softmax
        )
        canvas = canvas_size(batch)
        size = label.get("size")
        size = (
            jnp.broadcast_to(jnp.asarray(canvas, jnp.int32), (labels.shape[0], 2))
            if size is None
            else size
        )
        orig_size = label.get("orig_size", size)
        to_pixels = functools.partial(
            detection_postprocess.boxes_to_original_pixels,
            canvas_size=canvas,
            size=size,
            orig_size=orig_size,
        )
        zeros = jnp.zeros(labels.shape, jnp.float32)
        examples = {
            "det_scores": scores,
            "det_labels": classes,
            "det_boxes": to_pixels(top_boxes),
            "gt_boxes": to_pixels(boxes),
            "gt_labels": labels,
            "gt_mask": valid.astype(jnp.float32),
            "gt_is_crowd": jnp.asarray(label.get("is_crowd", zeros)).astype(jnp.int32),
            "gt_area": jnp.asarray(label.get("area", zeros), jnp.float32),
            "orig_size": jnp.asarray(orig_size, jnp.int32),
        }
        if "image/id" in label:
            examples["image_id"] = jnp.asarray(label["image/id"])
        if lvis:
            examples.update({key: jnp.asarray(label[key], jnp.int32) for key in LVIS_LIST_KEYS})
        return examples

    def global_metrics(self, totals, examples):
        """COCO (or LVIS) box metrics of the whole gathered eval split; with
        `coco_results_path`, process 0 also writes the detections there."""
        if not examples or "det_scores" not in examples:
            return {}
        lvis = all(key in examples for key in LVIS_LIST_KEYS)
        category_ids = self.eval_category_ids(lvis)
        if lvis:
            metrics = coco_evaluation.lvis_metrics(
                examples, self.category_frequencies(), category_ids
            )
        else:
            metrics = coco_evaluation.coco_metrics(examples, category_ids)
        path = self.option("coco_results_path")
        if path and jax.process_index() == 0:
            coco_evaluation.write_coco_results(path, examples, category_ids)
        return metrics

    def eval_category_ids(self, lvis: bool):
        """The COCO category id of each label (None: the labels themselves)."""
        choice = self.option("eval_category_ids")
        if choice is None:
            if self.dataset_meta_data.get("category_ids") is not None:
                return list(self.dataset_meta_data["category_ids"])
            dataset_configs = self.config.get("dataset_configs") or {}
            tfds_name = dataset_configs.get("tfds_name") or "coco/2017"
            if lvis:
                choice = "lvis"
            elif self.config.get("dataset_name") == "coco" and tfds_name.startswith("coco/2017"):
                choice = "coco2017"
            else:
                choice = "labels"
        if choice == "labels":
            return None
        if choice == "coco2017":
            return list(coco_evaluation.COCO_2017_CATEGORY_IDS)
        if choice == "lvis":
            return list(range(1, self.dataset_meta_data["num_classes"] + 1))
        return [int(c) for c in choice]

    def category_frequencies(self):
        """LVIS frequency group ('r', 'c', 'f') of each label: the data set's
        `category_frequencies` meta data, else LVIS v1's for its 1,203 classes, else None
        (no APr / APc / APf)."""
        frequencies = self.dataset_meta_data.get("category_frequencies")
        if frequencies is not None:
            return list(frequencies)
        if self.dataset_meta_data.get("num_classes") == len(coco_evaluation.LVIS_V1_FREQUENCIES):
            return list(coco_evaluation.LVIS_V1_FREQUENCIES)
        return None


def targets_of(batch):
    """(labels, boxes, valid, example_mask) with padded targets made harmless."""
    label = batch["label"]
    if not isinstance(label, dict) or not {"labels", "boxes"} <= set(label):
        raise ValueError("DetectionModel: batch['label'] must be a dict with 'labels' and 'boxes'.")
    labels, boxes = jnp.asarray(label["labels"]), jnp.asarray(label["boxes"], jnp.float32)
    if labels.ndim != 2 or boxes.shape != (*labels.shape, 4):
        raise ValueError(
            f"DetectionModel: expected label['labels'] [B, M] and label['boxes'] [B, M, 4]; "
            f"got {labels.shape} and {boxes.shape}."
        )
    valid = jnp.ones(labels.shape, bool)
    if label.get("box_mask") is not None:
        if label["box_mask"].shape != labels.shape:
            raise ValueError(
                f"DetectionModel: label['box_mask'] {label['box_mask'].shape} must match "
                f"label['labels'] {labels.shape}."
            )
        valid = jnp.asarray(label["box_mask"]) > 0
    example_mask = jnp.ones(labels.shape[:1], bool)
    if batch.get("batch_mask") is not None:
        example_mask = jnp.asarray(batch["batch_mask"]) > 0
    valid = valid & example_mask[:, None]
    labels = jnp.where(valid, labels, 0).astype(jnp.int32)
    boxes = jnp.where(valid[..., None], boxes, jnp.asarray([0.5, 0.5, 1.0, 1.0], jnp.float32))
    return labels, boxes, valid, example_mask


def canvas_size(batch) -> tuple[int, int]:
    """(height, width) of the canvas the boxes are normalised to: of `padding_mask`
    `[B, H, W]` if the batch has one, else of the image inputs `[B, H, W, C]`."""
    if batch.get("padding_mask") is not None:
        return tuple(batch["padding_mask"].shape[1:3])
    inputs = batch["inputs"]
    if isinstance(inputs, dict):
        inputs = inputs.get("image", inputs.get("rgb"))
    if inputs is None or inputs.ndim != 4:
        raise ValueError(
            "DetectionModel eval: cannot tell the canvas size; give the batch a "
            "padding_mask [B, H, W] or image inputs [B, H, W, C]."
        )
    return tuple(inputs.shape[1:3])


def check_outputs(logits, pred_boxes, labels):
    if logits.ndim != 3 or pred_boxes.shape != (*logits.shape[:2], 4):
        raise ValueError(
            f"DetectionModel: expected pred_logits [B, N, C] and pred_boxes [B, N, 4]; got "
            f"{logits.shape} and {pred_boxes.shape}."
        )
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"DetectionModel: {logits.shape[0]} predictions for {labels.shape[0]} examples."
        )
