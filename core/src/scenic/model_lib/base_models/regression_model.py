"""Regression base model: weighted mean squared error; reports MSE and MAE."""

from __future__ import annotations

import math

from scenic.model_lib import model_utils
from scenic.model_lib.base_models.base_model import BaseModel


class RegressionModel(BaseModel):
    """`batch['targets']` `[B, ...]` real values; the loss is the per-example squared error
    summed over target dimensions, averaged over real (batch_mask) examples."""

    def loss_function(self, predictions, batch, model_params=None):
        per_example = model_utils.l2_loss(predictions, batch["targets"].astype(predictions.dtype))
        return model_utils.weighted_mean(per_example, batch.get("batch_mask")) + self.l2_term(
            model_params
        )

    def per_example_metrics(self, predictions, batch):
        targets = batch["targets"].astype(predictions.dtype)
        size = math.prod(targets.shape[1:])
        return {
            "mean_squared_error": model_utils.l2_loss(predictions, targets) / size,
            "mean_absolute_error": model_utils.l1_loss(predictions, targets) / size,
        }
