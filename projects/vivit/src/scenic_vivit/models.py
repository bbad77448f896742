"""The models this project registers: `config.model_name` -> base-model class.

`config.model` holds the constructor arguments of `scenic_vivit.model.ViViT`; any other key
is an error. The multi-head model (e.g. EPIC-Kitchens verb + noun) also reads the top-level
`class_splits` (classes per head) and optional `split_names`.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from scenic.model_lib import model_utils
from scenic.model_lib.base_models.base_model import BaseModel
from scenic.model_lib.base_models.classification_model import (
    ClassificationModel,
    MultiLabelClassificationModel,
    class_counts,
    per_class_metrics,
)
from scenic_vivit.model import ViViT, build_vivit


def _vivit_fields() -> tuple[str, ...]:
    excluded = ("num_classes", "parent", "name")
    return tuple(f.name for f in dataclasses.fields(ViViT) if f.name not in excluded)


INIT_FROM_VIT_KEYS = ("checkpoint", "kernel_init", "temporal_init")


def check_init_from_vit(config, keys: tuple[str, ...]) -> None:
    """`config.init_from_vit`, if set: only `keys`, and a checkpoint path that exists (a
    ConfigError otherwise). Shared by the projects that start from an image ViT."""
    import pathlib

    from scenic.common_lib.config_utils import ConfigError, check_keys

    settings = config.get("init_from_vit")
    if not settings:
        return
    check_keys(settings, keys, "init_from_vit")
    path = settings.get("checkpoint")
    if path and not pathlib.Path(path).exists():
        raise ConfigError(f"init_from_vit.checkpoint {path!r} does not exist.")


class InitFromViT:
    """Reads `config.init_from_vit` ({checkpoint: a published ViT .npz or a scenic-baselines
    ViT workdir, kernel_init: 'central_frame' | 'average' | 'arp', temporal_init: 'fresh' |
    'spatial'}) and inflates the image ViT into a fresh run's ViViT (`init_from_vit`)."""

    @classmethod
    def check_config(cls, config):
        check_init_from_vit(config, INIT_FROM_VIT_KEYS)

    def initialize_params(self, params):
        settings = self.config.get("init_from_vit")
        if not settings or not settings.get("checkpoint"):
            return params, None
        from scenic.common_lib.config_utils import check_keys
        from scenic.train_lib import pretrained_init
        from scenic_vivit.init_from_vit import init_from_vit, vit_params_from_npz

        check_keys(settings, INIT_FROM_VIT_KEYS, "init_from_vit")
        checkpoint = settings["checkpoint"]
        vit_params = vit_params_from_npz(pretrained_init.load_params(checkpoint))
        params = init_from_vit(
            self.flax_model,
            params,
            vit_params,
            tuple(self.dataset_meta_data["input_shape"]),
            kernel_init=settings.get("kernel_init", "central_frame"),
            temporal_init=settings.get("temporal_init", "fresh"),
        )
        return params, f"Initialised from the image ViT {checkpoint} ({settings.to_dict()})."


class ViViTClassification(InitFromViT, ClassificationModel):
    """ViViT with softmax cross-entropy (loss, accuracy)."""

    config_keys = (*ClassificationModel.config_keys, "init_from_vit")

    def build_flax_model(self):
        return build_vivit(self.config.model, self.dataset_meta_data["num_classes"])

    @classmethod
    def model_config_keys(cls):
        return _vivit_fields()


class ViViTMultiLabelClassification(InitFromViT, MultiLabelClassificationModel):
    """ViViT with sigmoid cross-entropy (loss, prec@1, eval-set mAP)."""

    config_keys = (*MultiLabelClassificationModel.config_keys, "init_from_vit")

    def build_flax_model(self):
        return build_vivit(self.config.model, self.dataset_meta_data["num_classes"])

    @classmethod
    def model_config_keys(cls):
        return _vivit_fields()


class ViViTMultiHeadClassification(InitFromViT, BaseModel):
    """Several softmax classifiers on one representation (e.g. verb and noun).

    The logits `[B, sum(class_splits)]` are split into one block per head. `batch['label']`
    is either integer classes `[B, num_heads]` or the heads' one-hot / soft targets side by
    side, `[B, sum(class_splits)]`. Loss: the sum over heads of each head's mean
    cross-entropy. Metrics: `accuracy_<head>`, `loss_<head>`, `loss` (their sum) and
    `accuracy`, the joint accuracy (every head correct); at eval also
    `mean_per_class_accuracy_<head>` and, with `config.per_class_accuracy`, each class's
    `per_class_accuracy_<head>/{class}`.
    """

    config_keys = (
        *BaseModel.config_keys,
        "label_smoothing",
        "per_class_accuracy",
        "class_splits",
        "split_names",
        "init_from_vit",
    )

    @classmethod
    def model_config_keys(cls):
        return _vivit_fields()

    @property
    def class_splits(self) -> tuple[int, ...]:
        splits = self.config.get("class_splits")
        if not splits or any(int(s) != s or s < 1 for s in splits):
            raise ValueError(
                f"The multi-head model needs config.class_splits, a list of positive class "
                f"counts per head; got {splits!r}."
            )
        num_classes = self.dataset_meta_data.get("num_classes")
        if num_classes is not None and num_classes != sum(splits):
            raise ValueError(
                f"config.class_splits {list(splits)} sum to {sum(splits)}, but the data set "
                f"has num_classes={num_classes}."
            )
        return tuple(int(s) for s in splits)

    @property
    def split_names(self) -> tuple[str, ...]:
        default = [f"head{i}" for i in range(len(self.class_splits))]
        names = self.config.get("split_names") or default
        if len(names) != len(self.class_splits):
            raise ValueError(
                f"config.split_names {list(names)} must name each of the "
                f"{len(self.class_splits)} heads in config.class_splits."
            )
        return tuple(names)

    def build_flax_model(self):
        return build_vivit(self.config.model, sum(self.class_splits))

    def split(self, logits) -> list[jnp.ndarray]:
        return jnp.split(logits, np.cumsum(self.class_splits)[:-1], axis=-1)

    def head_targets(self, batch) -> list[jnp.ndarray]:
        labels, splits = batch["label"], self.class_splits
        if labels.ndim == 2 and jnp.issubdtype(labels.dtype, jnp.integer):
            if labels.shape[-1] != len(splits):
                raise ValueError(
                    f"Integer labels {labels.shape} must be [batch, {len(splits)} heads]."
                )
            return [model_utils.one_hot_or_soft(labels[:, i], n) for i, n in enumerate(splits)]
        if labels.ndim != 2 or labels.shape[-1] != sum(splits):
            raise ValueError(
                f"Labels {labels.shape} ({labels.dtype}) must be integer [batch, {len(splits)}] "
                f"or one-hot [batch, {sum(splits)}] (the heads' targets side by side)."
            )
        return self.split(labels.astype(jnp.float32))

    def loss_function(self, logits, batch, model_params=None):
        loss = sum(
            model_utils.weighted_softmax_cross_entropy(
                head_logits,
                targets,
                batch.get("batch_mask"),
                label_smoothing=self.config.get("label_smoothing"),
            )
            for head_logits, targets in zip(self.split(logits), self.head_targets(batch))
        )
        return loss + self.l2_term(model_params)

    def per_example_metrics(self, logits, batch):
        metrics, correct, losses = {}, [], []
        for name, head_logits, targets in zip(
            self.split_names, self.split(logits), self.head_targets(batch)
        ):
            correct.append(model_utils.correctly_classified(head_logits, targets))
            losses.append(model_utils.softmax_cross_entropy(head_logits, targets))
            metrics[f"accuracy_{name}"], metrics[f"loss_{name}"] = correct[-1], losses[-1]
        metrics["accuracy"] = jnp.prod(jnp.stack(correct), axis=0)
        metrics["loss"] = sum(losses)
        return metrics

    def eval_totals(self, logits, batch, axis_name=None):
        """Per head: eval examples and correct predictions per class."""
        mask = batch.get("batch_mask")
        return {
            name: class_counts(head_logits, targets, mask, axis_name)
            for name, head_logits, targets in zip(
                self.split_names, self.split(logits), self.head_targets(batch)
            )
        }

    def global_metrics(self, totals, examples):
        listed = bool(self.config.get("per_class_accuracy"))
        metrics = {}
        for name in self.split_names:
            if name in totals:
                metrics.update(per_class_metrics(totals[name], f"_{name}", listed))
        return metrics


MODELS = {
    "vivit_classification": ViViTClassification,
    "vivit_multilabel_classification": ViViTMultiLabelClassification,
    "vivit_multihead_classification": ViViTMultiHeadClassification,
}


def get_models() -> dict[str, type]:
    return MODELS
