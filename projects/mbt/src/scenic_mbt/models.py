"""The models this project registers: `config.model_name` -> base-model class.

`config.model` holds the constructor arguments of `scenic_mbt.model.MBT` (any other key is an
error); the modalities come from the data set (`input_shape`, a dict of them).
`config.init_from_vit` ({checkpoint, kernel_init}) starts a fresh run from an image ViT.

Training: each modality is classified on its own and the loss is, per example, the mean of
the losses of the modalities that took part (all of them, or one under modality dropout).
Eval: the averaged logits give the usual metrics, and with `eval_single_modality` every
metric is also reported for each modality alone, prefixed `{modality}_only_` (e.g.
`rgb_only_accuracy`, `spectrogram_only_mAP`): one checkpoint, audio-only, video-only and
fused numbers.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from scenic.model_lib import model_utils
from scenic.model_lib.base_models.classification_model import (
    ClassificationModel,
    MultiLabelClassificationModel,
    multilabel_metrics,
)
from scenic_mbt.model import MBT, build_model
from scenic_vivit.models import ViViTMultiHeadClassification, check_init_from_vit

INIT_FROM_VIT_KEYS = ("checkpoint", "kernel_init")
EXCLUDED_FIELDS = ("num_classes", "modalities", "parent", "name")


def model_fields() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(MBT) if f.name not in EXCLUDED_FIELDS)


class _MBTModel:
    """What every MBT head shares: the module, per-modality losses, single-modality metrics
    and init from a ViT. Subclasses give `example_losses(logits, batch) -> [B]`."""

    config_keys = ("init_from_vit",)

    @classmethod
    def model_config_keys(cls):
        return model_fields()

    @classmethod
    def check_config(cls, config):
        check_init_from_vit(config, INIT_FROM_VIT_KEYS)

    @property
    def modalities(self) -> tuple[str, ...]:
        shapes = self.dataset_meta_data["input_shape"]
        if not isinstance(shapes, dict):
            raise ValueError(
                "MBT needs a data set of named modalities (input_shape a dict, e.g. "
                f"audiovisual_tfrecord's rgb and spectrogram); got input_shape {shapes}."
            )
        return tuple(m for m in ("rgb", "spectrogram") if m in shapes) + tuple(
            m for m in shapes if m not in ("rgb", "spectrogram")
        )

    def build_flax_model(self):
        return build_model(self.config.model, self.output_width(), self.modalities)

    def output_width(self) -> int:
        return self.dataset_meta_data["num_classes"]

    def inference_apply(self, variables, inputs):
        """The fused prediction only: the single-modality passes are eval diagnostics."""
        return self.flax_model.apply(variables, inputs, train=False, single_modality=False)

    def initialize_params(self, params):
        settings = self.config.get("init_from_vit")
        if not settings or not settings.get("checkpoint"):
            return params, None
        from scenic.train_lib import pretrained_init
        from scenic_mbt.init_from_vit import init_from_vit
        from scenic_vivit.init_from_vit import vit_params_from_npz

        checkpoint = settings["checkpoint"]
        params = init_from_vit(
            self.flax_model,
            params,
            vit_params_from_npz(pretrained_init.load_params(checkpoint)),
            {m: tuple(s) for m, s in self.dataset_meta_data["input_shape"].items()},
            kernel_init=settings.get("kernel_init", "central_frame"),
        )
        return params, f"Initialised from the image ViT {checkpoint} ({settings.to_dict()})."

    # --- loss -----------------------------------------------------------------------------

    def loss_function(self, outputs, batch, model_params=None):
        """Per example, the mean loss of the modalities present; then the batch mean."""
        if "modality_logits" in outputs:
            present = outputs["present"]
            losses = jnp.stack(
                [
                    self.example_losses(outputs["modality_logits"][:, j], batch)
                    for j in range(present.shape[1])
                ],
                axis=1,
            )
            per_example = jnp.sum(losses * present, 1) / jnp.sum(present, 1)
        else:  # eval outputs: the averaged logits
            per_example = self.example_losses(outputs["logits"], batch)
        loss = model_utils.weighted_mean(per_example, batch.get("batch_mask"))
        return loss + self.l2_term(model_params)

    # --- metrics: fused and each modality alone --------------------------------------------

    def views(self, outputs) -> list[tuple[str, jnp.ndarray]]:
        """(metric prefix, logits): '' the fused logits, '{m}_only_' each modality alone."""
        views = [("", outputs["logits"])]
        for m in self.modalities:
            if f"logits_{m}_only" in outputs:
                views.append((f"{m}_only_", outputs[f"logits_{m}_only"]))
        return views

    def per_example_metrics(self, outputs, batch):
        metrics = {}
        for prefix, logits in self.views(outputs):
            for name, value in super().per_example_metrics(logits, batch).items():
                metrics[prefix + name] = value
        return metrics

    def eval_totals(self, outputs, batch, axis_name=None):
        return {
            prefix or "fused": super(_MBTModel, self).eval_totals(logits, batch, axis_name)
            for prefix, logits in self.views(outputs)
        }

    def global_metrics(self, totals, examples):
        metrics = {}
        for prefix in ["", *(f"{m}_only_" for m in self.modalities)]:
            if (prefix or "fused") in totals:
                view = super().global_metrics(totals[prefix or "fused"], {})
                metrics.update({prefix + k: v for k, v in view.items()})
        return metrics


class MBTClassification(_MBTModel, ClassificationModel):
    """Softmax cross-entropy (accuracy, top-5, mean per-class accuracy): VGGSound,
    Kinetics-Sounds, the demo."""

    config_keys = (*ClassificationModel.config_keys, *_MBTModel.config_keys)

    def example_losses(self, logits, batch):
        targets = model_utils.apply_label_smoothing(
            self.targets(batch), self.config.get("label_smoothing")
        )
        return model_utils.softmax_cross_entropy(logits, targets)


class MBTMultiLabelClassification(_MBTModel, MultiLabelClassificationModel):
    """Sigmoid cross-entropy (AudioSet): prec@1, and over the whole eval set mAP, AUC and
    d-prime, fused and per modality alone; set `head_bias_init=-10`."""

    config_keys = (*MultiLabelClassificationModel.config_keys, *_MBTModel.config_keys)

    def example_losses(self, logits, batch):
        targets = model_utils.apply_label_smoothing(
            batch["label"].astype(logits.dtype), self.config.get("label_smoothing")
        )
        return model_utils.sigmoid_cross_entropy(logits, targets)

    def eval_totals(self, outputs, batch, axis_name=None):
        return {}

    def eval_examples(self, outputs, batch):
        examples = {"labels": batch["label"]}
        for prefix, logits in self.views(outputs):
            examples[f"{prefix}scores"] = logits
        return examples

    def global_metrics(self, totals, examples):
        if not examples:
            return {}
        metrics = {}
        for prefix in ["", *(f"{m}_only_" for m in self.modalities)]:
            if f"{prefix}scores" in examples:
                view = multilabel_metrics(examples[f"{prefix}scores"], examples["labels"])
                metrics.update({prefix + k: v for k, v in view.items()})
        return metrics


class MBTMultiHeadClassification(_MBTModel, ViViTMultiHeadClassification):
    """Several softmax heads on one representation (EPIC-Kitchens verb + noun; `class_splits`
    and `split_names` as in scenic-vivit's multi-head model): `accuracy_<head>` and the joint
    `accuracy` (every head right: EPIC's action accuracy)."""

    config_keys = (
        *(k for k in ViViTMultiHeadClassification.config_keys if k != "init_from_vit"),
        *_MBTModel.config_keys,
    )

    @classmethod
    def model_config_keys(cls):
        return model_fields()

    def output_width(self) -> int:
        return sum(self.class_splits)

    def build_flax_model(self):
        return _MBTModel.build_flax_model(self)

    def initialize_params(self, params):
        return _MBTModel.initialize_params(self, params)

    def example_losses(self, logits, batch):
        smoothing = self.config.get("label_smoothing")
        return sum(
            model_utils.softmax_cross_entropy(
                head_logits, model_utils.apply_label_smoothing(targets, smoothing)
            )
            for head_logits, targets in zip(self.split(logits), self.head_targets(batch))
        )


MODELS = {
    "mbt_classification": MBTClassification,
    "mbt_multilabel_classification": MBTMultiLabelClassification,
    "mbt_multihead_classification": MBTMultiHeadClassification,
}


def get_models() -> dict[str, type]:
    return MODELS
