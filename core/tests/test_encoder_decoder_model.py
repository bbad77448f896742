"""EncoderDecoderModel specifics: perplexity over an eval set, masks, errors, gradients.

Loss and metrics against a NumPy float64 reference are in test_base_models_reference.py.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scenic.common_lib.config_utils import ConfigError
from scenic.model_lib.base_models import EncoderDecoderModel
from scenic.train_lib import summaries


class Model(EncoderDecoderModel):
    def build_flax_model(self):
        return None


def make(**config):
    return Model(
        ml_collections.ConfigDict(
            {"label_smoothing": None, "pad_token_id": None, "l2_decay_factor": None, **config}
        ),
        {},
    )


def batch_of(seed, batch, length, vocab=6):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, length, vocab)).astype(np.float32) * 2
    labels = rng.integers(1, vocab, (batch, length)).astype(np.int32)
    lengths = rng.integers(1, length + 1, batch)
    labels[np.arange(length)[None] >= lengths[:, None]] = 0  # pad id 0
    return logits, {"label": labels, "batch_mask": np.ones(batch, np.float32)}


def np_nll(logits, labels):
    x = np.asarray(logits, np.float64)
    log_p = x - x.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    return -np.take_along_axis(log_p, labels[..., None], -1)[..., 0]


def test_perplexity_is_exp_of_the_global_token_mean_not_a_mean_of_perplexities():
    model = make(pad_token_id=0)
    batches = [batch_of(0, 2, 3), batch_of(1, 5, 9)]  # very different token counts
    pairs, totals = [], None
    for logits, batch in batches:
        pairs.append(jax.device_get(model.get_metrics(logits, batch)))
        batch_totals = jax.device_get(model.eval_totals(logits, batch))
        totals = batch_totals if totals is None else jax.tree.map(np.add, totals, batch_totals)
    normalized = summaries.normalize_metrics(pairs)
    perplexity = model.global_metrics(totals, {})["perplexity"]

    nll = np.concatenate([np_nll(lg, b["label"])[b["label"] != 0] for lg, b in batches])
    assert normalized["log_perplexity"] == pytest.approx(nll.mean(), rel=1e-5)
    assert normalized["loss"] == pytest.approx(nll.mean(), rel=1e-5)
    assert perplexity == pytest.approx(np.exp(nll.mean()), rel=1e-5)
    per_batch = [np.exp(np_nll(lg, b["label"])[b["label"] != 0].mean()) for lg, b in batches]
    assert abs(np.mean(per_batch) - perplexity) > 1e-3  # the wrong way differs here
    assert model.global_metrics({}, {}) == {}


def test_per_token_batch_mask_and_label_mask_combine_with_pad_id():
    model = make(pad_token_id=0)
    logits, batch = batch_of(2, 3, 5)
    token_mask = (np.random.default_rng(2).random((3, 5)) < 0.7).astype(np.float32)
    label_mask = np.ones((3, 5), np.float32)
    label_mask[:, -1] = 0
    batch = dict(batch, batch_mask=token_mask, label_mask=label_mask)
    weights = token_mask * label_mask * (batch["label"] != 0)
    total, count = model.get_metrics(logits, batch)["loss"]
    assert float(count) == weights.sum()
    np.testing.assert_allclose(
        float(total), (np_nll(logits, batch["label"]) * weights).sum(), rtol=1e-5
    )
    np.testing.assert_allclose(
        float(model.loss_function(logits, batch)), float(total) / float(count), rtol=1e-5
    )


def test_padded_tokens_get_no_gradient_and_loss_stays_finite():
    model = make(pad_token_id=0, label_smoothing=0.2)
    logits, batch = batch_of(3, 3, 6)
    logits[batch["label"] == 0] = 1e4
    grad = np.asarray(jax.grad(model.loss_function)(jnp.asarray(logits), batch))
    assert np.all(np.isfinite(grad))
    assert np.all(grad[batch["label"] == 0] == 0)
    assert np.any(grad[batch["label"] != 0] != 0)


def test_no_counted_tokens_gives_zero_loss_and_zero_normalizer():
    model = make(pad_token_id=0)
    logits, batch = batch_of(4, 2, 3)
    batch["label"][:] = 0
    assert float(model.loss_function(logits, batch)) == 0.0
    assert float(model.get_metrics(logits, batch)["token_accuracy"][1]) == 0.0


def test_l2_term_is_added():
    model = make(l2_decay_factor=0.1)
    logits, batch = batch_of(5, 2, 3)
    params = {"w": jnp.full((2, 2), 2.0)}
    diff = model.loss_function(logits, batch, params) - model.loss_function(logits, batch)
    np.testing.assert_allclose(float(diff), 0.1 * 0.5 * 16.0, rtol=1e-6)


def test_bad_inputs_name_what_is_wrong():
    model = make()
    logits, batch = batch_of(6, 2, 3)
    with pytest.raises(ValueError, match="label"):
        model.loss_function(logits[:, :2], batch)
    with pytest.raises(ValueError, match="label_mask"):
        model.get_metrics(logits, dict(batch, label_mask=np.ones((2,), np.float32)))
    with pytest.raises(ValueError, match="batch_mask"):
        model.get_metrics(logits, dict(batch, batch_mask=np.ones((3,), np.float32)))
    with pytest.raises(ConfigError, match="label_smoothing"):
        make(label_smoothing=1.5)
