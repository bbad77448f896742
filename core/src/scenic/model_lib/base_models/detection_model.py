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

Normalisation: every loss term is a sum over the matched real targets (class term: over all
queries of real examples), divided by the number of real targets in the *global* batch
(`lax.psum` over `axis_name`, at least 1), as in DETR. `loss_function` returns the device's
share times the device count, so the trainer's `pmean` over devices yields the loss (and
gradient) of the concatenated batch. Metrics are the pairs (summed term, global target
count), psum'ed, so they sum across devices, hosts and batches to target-weighted means.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from scenic.common_lib import config_utils
from scenic.model_lib import box_utils, matchers, model_utils
from scenic.model_lib.base_models.base_model import BaseModel

CLASS_LOSSES = ("softmax", "sigmoid_focal")
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
        self.matcher = matchers.MATCHERS[matcher]

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

    def loss_sums(self, outputs, labels, boxes, valid, example_mask):
        """Unnormalised class, L1 and GIoU sums of one output dict on this device."""
        logits = outputs["pred_logits"].astype(jnp.float32)
        pred_boxes = outputs["pred_boxes"].astype(jnp.float32)
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
            class_sum = jnp.sum(jnp.where(example_mask[:, None, None], focal, 0.0))

        pred = jnp.take_along_axis(pred_boxes, rows[..., None], 1)
        true = jnp.take_along_axis(boxes, cols[..., None], 1)
        l1 = jnp.sum(jnp.abs(pred - true), -1)
        giou = box_utils.generalized_box_iou(
            box_utils.cxcywh_to_xyxy(pred[..., None, :]),
            box_utils.cxcywh_to_xyxy(true[..., None, :]),
        )[..., 0, 0]
        return {
            "class": class_sum,
            "bbox": jnp.sum(jnp.where(matched, l1, 0.0)),
            "giou": jnp.sum(jnp.where(matched, 1.0 - giou, 0.0)),
        }

    def loss_terms(self, outputs, batch):
        """Every unnormalised loss term on this device and its number of real targets.

        Names: `loss_class`, `loss_bbox`, `loss_giou`, then `loss_class_aux{i}` ... for
        `aux_outputs[i]`; `loss` is their weighted total.
        """
        labels, boxes, valid, example_mask = targets_of(batch)
        aux = outputs.get("aux_outputs") or []
        terms, total = {}, 0.0
        for suffix, output in [("", outputs), *((f"_aux{i}", o) for i, o in enumerate(aux))]:
            for name, value in self.loss_sums(output, labels, boxes, valid, example_mask).items():
                terms[f"loss_{name}{suffix}"] = value
                total = total + self.option(f"{name}_loss_coef") * value
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
