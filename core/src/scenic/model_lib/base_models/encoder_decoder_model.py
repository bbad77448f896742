"""Encoder-decoder (sequence output) base model: token cross-entropy over real tokens.

Logits `[B, L, V]` (any `[B, ..., V]`), `batch['label']` integer tokens `[B, L]`. A token
counts when its example is real (`batch_mask`, per example `[B]` or per token `[B, L]`), its
`batch['label_mask']` entry (if given) is non-zero, and its label is not `pad_token_id` (if
configured). The loss and every metric are means over counted tokens, not over sequences.

Perplexity is exp of the mean token NLL, and an exp of a mean is not a mean, so it cannot be
a (sum, normalizer) pair itself. `get_metrics` reports `log_perplexity` as the pair (summed
token NLL, token count): summed across devices, hosts and batches and then divided, it is the
global mean NLL, so perplexity is exp of the normalized `log_perplexity`. The eval loop
reports it as `perplexity`: `eval_totals` hands the trainer the same pair, summed over the
whole eval set, and `global_metrics` takes exp of its ratio. Averaging per-batch perplexities
would be wrong (exp is convex: it over-weights bad batches).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from scenic.common_lib import config_utils
from scenic.model_lib import model_utils
from scenic.model_lib.base_models.base_model import BaseModel


class EncoderDecoderModel(BaseModel):
    """Reads `label_smoothing` (uniform mix over the vocabulary, as `apply_label_smoothing`)
    and `pad_token_id` (tokens with this label never count; None: rely on masks)."""

    config_keys = (*BaseModel.config_keys, "label_smoothing", "pad_token_id")

    def __init__(self, config, dataset_meta_data):
        super().__init__(config, dataset_meta_data)
        smoothing = self.config.get("label_smoothing") or 0.0
        if not 0.0 <= smoothing < 1.0:
            raise config_utils.ConfigError(f"label_smoothing must be in [0, 1); got {smoothing}.")

    def token_weights(self, logits, batch) -> jnp.ndarray:
        """1.0 for counted tokens, 0.0 for padding; shape of `batch['label']`."""
        labels = batch["label"]
        if labels.shape != logits.shape[:-1]:
            raise ValueError(
                f"EncoderDecoderModel: label {labels.shape} must be logits {logits.shape} "
                "without the vocabulary axis."
            )
        weights = jnp.ones(labels.shape, jnp.float32)
        for key in ("batch_mask", "label_mask"):
            mask = batch.get(key)
            if mask is None:
                continue
            allowed = {labels.shape} if key == "label_mask" else {labels.shape[:1], labels.shape}
            if mask.shape not in allowed:
                raise ValueError(
                    f"EncoderDecoderModel: batch[{key!r}] {mask.shape} does not fit label "
                    f"{labels.shape}."
                )
            weights = weights * mask.reshape(mask.shape + (1,) * (labels.ndim - mask.ndim))
        pad = self.config.get("pad_token_id")
        if pad is not None:
            weights = jnp.where(labels == pad, 0.0, weights)
        return weights

    def token_losses(self, logits, batch, label_smoothing=None):
        """(per-token cross-entropy, token weights); smoothing mixes in the uniform target."""
        weights = self.token_weights(logits, batch)
        log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        labels = jnp.where(weights > 0, batch["label"], 0)  # padded labels may be out of range
        nll = -jnp.take_along_axis(log_p, labels[..., None], axis=-1)[..., 0]
        if label_smoothing:  # == CE with apply_label_smoothing's targets, without a one-hot
            nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_p, axis=-1)
        return nll, weights

    def loss_function(self, logits, batch, model_params=None):
        losses, weights = self.token_losses(logits, batch, self.config.get("label_smoothing"))
        return model_utils.weighted_mean(losses.reshape(-1), weights.reshape(-1)) + self.l2_term(
            model_params
        )

    def get_metrics(self, logits, batch, axis_name=None):
        """Token accuracy, token NLL (`loss`, no label smoothing) and `log_perplexity`, as
        (sum over counted tokens, number of counted tokens) pairs."""
        nll, weights = self.token_losses(logits, batch)
        per_token = {
            "token_accuracy": (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32),
            "loss": nll,
            "log_perplexity": nll,
        }
        return {
            name: model_utils.sum_and_normalizer(values.reshape(-1), weights.reshape(-1), axis_name)
            for name, values in per_token.items()
        }

    def eval_totals(self, logits, batch, axis_name=None):
        """The `log_perplexity` pair as one array, summed over the eval set by the trainer."""
        total, count = self.get_metrics(logits, batch, axis_name)["log_perplexity"]
        return {"log_perplexity": jnp.stack([total, count])}

    def global_metrics(self, totals, examples):
        """`perplexity = exp(summed token NLL / token count)` over the whole eval set."""
        if "log_perplexity" not in totals:
            return {}
        total, count = np.asarray(totals["log_perplexity"], np.float64)
        return {"perplexity": float(np.exp(min(total / max(count, 1e-12), 700.0)))}
