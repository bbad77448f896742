"""The base model: a Flax module plus the loss and metrics the trainer optimises and reports.

Subclasses set how logits become a loss (`loss_function`) and which per-example metrics are
reported (`per_example_metrics`). The trainer only talks to this interface, so any model
that fits it trains with the core trainer.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from scenic.model_lib import model_utils


class BaseModel:
    """Wraps a Flax module with its loss and metrics.

    Args:
      config: the experiment config; `config.model` holds the module's constructor
        arguments, and base-model options (`label_smoothing`, `l2_decay_factor`) live at the
        top level.
      dataset_meta_data: what the model needs to know about the data (`num_classes`,
        `input_shape`, `input_dtype`).
    """

    #: Keys of the top-level config this class reads (checked by the trainer).
    config_keys: tuple[str, ...] = ("l2_decay_factor",)

    def __init__(self, config: ml_collections.ConfigDict, dataset_meta_data: dict[str, Any]):
        self.config = config
        self.dataset_meta_data = dataset_meta_data
        self.flax_model = self.build_flax_model()

    def build_flax_model(self) -> nn.Module:
        raise NotImplementedError

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
