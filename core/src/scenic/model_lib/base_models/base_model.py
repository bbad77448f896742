"""The base model: a Flax module plus the loss and metrics the trainer optimises and reports.

Subclasses set how outputs become a loss (`loss_function`) and which per-example metrics are
reported (`per_example_metrics`); a task whose loss and metrics share costly work (a
matching) overrides `loss_and_metrics` instead. The trainer only talks to this interface
(see core/docs/batch_contract.md), so any model that fits it trains with the core trainer:
inputs and labels may be arrays or dicts, and outputs an array or a dict.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scenic.model_lib import model_utils


class BaseModel:
    """Wraps a Flax module with its loss and metrics.

    Args:
      config: the experiment config; `config.model` holds the module's constructor
        arguments, and base-model options (`label_smoothing`, `l2_decay_factor`) live at the
        top level.
      dataset_meta_data: what the model needs to know about the data (`num_classes`,
        `input_shape`, `input_dtype`; the shape and dtype may be dicts of named modalities).
    """

    #: Keys of the top-level config this class reads (checked by the trainer).
    config_keys: tuple[str, ...] = ("l2_decay_factor",)

    def __init__(self, config: ml_collections.ConfigDict, dataset_meta_data: dict[str, Any]):
        self.config = config
        self.dataset_meta_data = dataset_meta_data
        self.flax_model = self.build_flax_model()

    def build_flax_model(self) -> nn.Module:
        raise NotImplementedError

    def input_spec(self):
        """The module's input for a batch of one example: a `jax.ShapeDtypeStruct`, or a dict
        of them for named modalities. The trainer initialises parameters and counts FLOPs
        from it. Default: the data set's `input_shape` / `input_dtype`."""
        return input_spec_from_meta_data(self.dataset_meta_data)

    def inference_apply(self, variables, inputs):
        """One inference forward pass: what the logged FLOPs per example count and what a
        loaded `TrainedModel` runs. Default: the module in eval mode. A model whose eval pass
        also computes diagnostics (MBT's single-modality logits) leaves them out here."""
        return self.flax_model.apply(variables, inputs, train=False)

    def has_eval_constants(self) -> bool:
        """Whether `eval_constants` gives anything (the trainer then computes them once per
        evaluation pass; otherwise nothing is compiled or run for them). Default: False."""
        return False

    def eval_constants(self, variables):
        """What every eval batch's forward pass shares and no batch changes, computed once per
        evaluation pass from the evaluated variables and handed to `eval_apply` (OWL-ViT: the
        class names' query embeddings, prompt templates x classes through the text tower,
        which would otherwise run again for every batch). Used when `has_eval_constants()`.
        Default: None."""
        del variables
        return None

    def eval_apply(self, variables, inputs, constants=None):
        """The eval forward pass of one batch, given this pass's `eval_constants`. Default:
        the module in eval mode (`constants` unused)."""
        del constants
        return self.flax_model.apply(variables, inputs, train=False)

    def loss_and_metrics(self, outputs, batch, model_params=None, axis_name: str | None = None):
        """(loss, metrics) of one training step, from one pass over the outputs.

        The loss is this device's share (the trainer averages gradients over `axis_name`);
        metrics are (sum, normalizer) pairs summed over `axis_name`. Default:
        `loss_function` and `get_metrics`. Override it where both need the same work, e.g.
        detection's matching, which must then run once per step.
        """
        return (
            self.loss_function(outputs, batch, model_params),
            self.get_metrics(outputs, batch, axis_name=axis_name),
        )

    def per_example_metrics(self, logits, batch) -> dict[str, jnp.ndarray]:
        """Per-example metric values; reduced with `batch_mask` by `get_metrics`."""
        raise NotImplementedError

    def loss_function(self, logits, batch, model_params=None) -> jnp.ndarray:
        raise NotImplementedError

    def l2_term(self, model_params) -> jnp.ndarray:
        factor = self.config.get("l2_decay_factor")
        if not factor or model_params is None:
            return jnp.zeros((), jnp.float32)
        return factor * model_utils.l2_penalty(model_params)

    def get_metrics(self, logits, batch, axis_name: str | None = None):
        """Metric name -> (sum, normalizer), summed over `axis_name` (the device axis)."""
        weights = batch.get("batch_mask")
        return {
            name: model_utils.sum_and_normalizer(values, weights, axis_name)
            for name, values in self.per_example_metrics(logits, batch).items()
        }

    def initialize_params(self, params) -> tuple[dict, str | None]:
        """Model-specific initialisation of a fresh run's `params` (e.g. a video model
        inflated from an image checkpoint); returns (params, a line saying what was done,
        or None if nothing). Resumed runs keep their checkpoint instead."""
        return params, None

    def eval_totals(self, logits, batch, axis_name: str | None = None) -> dict[str, jnp.ndarray]:
        """Arrays summed over the whole eval set (devices, hosts, batches), e.g. a confusion
        matrix; turned into metrics by `global_metrics`. Sum over `axis_name` here."""
        return {}

    def eval_examples(self, logits, batch) -> dict[str, jnp.ndarray]:
        """Per-example arrays kept for every real eval example (padding dropped), e.g.
        scores and labels for mean average precision; see `global_metrics`."""
        return {}

    def global_metrics(self, totals: dict, examples: dict) -> dict[str, float]:
        """Metrics that are not per-batch means (mAP, IoU), from the whole eval set."""
        return {}

    @classmethod
    def check_config(cls, config: ml_collections.ConfigDict) -> None:
        """Checks the model's own top-level config sections before a run starts (raise
        `scenic.common_lib.config_utils.ConfigError` naming the problem)."""

    @classmethod
    def model_config_keys(cls) -> tuple[str, ...]:
        """Keys allowed in `config.model` (checked before training starts)."""
        return ()


def input_spec_from_meta_data(meta_data: dict[str, Any]):
    """`input_shape` (with a leading -1 batch axis) and `input_dtype` (float32 if absent),
    each an array's or a dict of named modalities', -> a batch-of-one ShapeDtypeStruct tree."""
    shapes = meta_data["input_shape"]
    dtypes = meta_data.get("input_dtype", np.float32)

    def spec(shape, dtype):
        return jax.ShapeDtypeStruct((1, *tuple(shape)[1:]), jnp.dtype(dtype))

    if isinstance(shapes, dict):
        return {
            name: spec(shape, dtypes[name] if isinstance(dtypes, dict) else dtypes)
            for name, shape in shapes.items()
        }
    return spec(shapes, dtypes)
