"""The multi-view eval step: logits are averaged over the views of each example before the
loss and metrics, and padded examples never count. Checked against NumPy in float64 with a
stand-in module whose logits are a fixed linear map of the input (so each view's logits are
known)."""

import functools

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from scenic.model_lib.base_models.classification_model import ClassificationModel
from scenic.train_lib import steps, summaries
from scenic.train_lib.train_state import TrainState, replicate

NUM_CLASSES, FEATURES, VIEWS, BATCH, NUM_REAL = 4, 3, 5, 6, 4


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(NUM_CLASSES, bias_init=nn.initializers.normal(1.0))(x)


class LinearClassifier(ClassificationModel):
    def build_flax_model(self):
        return Linear()


def test_multiview_eval_averages_view_logits_and_ignores_padding():
    model = LinearClassifier(ml_collections.ConfigDict(), {"num_classes": NUM_CLASSES})
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(BATCH, VIEWS, FEATURES)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32)
    mask = (np.arange(BATCH) < NUM_REAL).astype(np.float32)
    params = model.flax_model.init(jax.random.key(0), inputs[0])["params"]
    state = TrainState(step=np.int32(0), params=params, opt_state=(), model_state={}, rng=())
    step = jax.pmap(
        functools.partial(steps.multiview_eval_step, model=model),
        axis_name=steps.AXIS,
    )
    batch = {"inputs": inputs[None], "label": labels[None], "batch_mask": mask[None]}
    pairs, _, _ = step(replicate(state), batch)
    metrics = summaries.normalize_metrics([pairs])

    kernel = np.float64(params["Dense_0"]["kernel"])
    bias = np.float64(params["Dense_0"]["bias"])
    logits = (np.float64(inputs) @ kernel + bias).mean(axis=1)  # [B, classes]: view mean
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    real = slice(0, NUM_REAL)
    np.testing.assert_allclose(
        metrics["loss"], -log_p[real][np.arange(NUM_REAL), labels[real]].mean(), rtol=1e-5
    )
    np.testing.assert_allclose(
        metrics["accuracy"], (logits[real].argmax(-1) == labels[real]).mean(), rtol=1e-6
    )
    # Not the mean of the per-view losses: averaging logits is what the step must do.
    per_view = np.float64(inputs) @ kernel + bias
    per_view_log_p = per_view - np.log(np.exp(per_view).sum(-1, keepdims=True))
    per_view_loss = -per_view_log_p[real][np.arange(NUM_REAL), :, labels[real]].mean()
    assert abs(per_view_loss - metrics["loss"]) > 1e-3


class TwoModalities(nn.Module):
    """Dict inputs -> dict outputs (logits, and a per-example score that is not a loss input)."""

    @nn.compact
    def __call__(self, inputs, train: bool = False):
        a = nn.Dense(NUM_CLASSES, name="a")(inputs["a"])
        b = nn.Dense(NUM_CLASSES, name="b")(inputs["b"].reshape(inputs["b"].shape[0], -1))
        return {"logits": a + b, "score": a.sum(-1)}


class DictClassifier(ClassificationModel):
    def build_flax_model(self):
        return TwoModalities()

    def per_example_metrics(self, outputs, batch):
        metrics = super().per_example_metrics(outputs["logits"], batch)
        metrics["score"] = outputs["score"]
        return metrics

    def eval_totals(self, outputs, batch, axis_name=None):
        return super().eval_totals(outputs["logits"], batch, axis_name)


def test_multiview_eval_with_dict_inputs_averages_every_output_over_views():
    model = DictClassifier(ml_collections.ConfigDict(), {"num_classes": NUM_CLASSES})
    rng = np.random.default_rng(1)
    a = rng.normal(size=(BATCH, VIEWS, FEATURES)).astype(np.float32)
    b = rng.normal(size=(BATCH, VIEWS, 2, 2)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32)
    mask = (np.arange(BATCH) < NUM_REAL).astype(np.float32)
    params = model.flax_model.init(jax.random.key(0), {"a": a[:, 0], "b": b[:, 0]})["params"]
    state = TrainState(step=np.int32(0), params=params, opt_state=(), model_state={}, rng=())
    step = jax.pmap(functools.partial(steps.multiview_eval_step, model=model), axis_name=steps.AXIS)
    batch = {
        "inputs": {"a": a[None], "b": b[None]},
        "label": labels[None],
        "batch_mask": mask[None],
    }
    pairs, _, _ = step(replicate(state), batch)
    metrics = summaries.normalize_metrics([pairs])

    def dense(name, x):
        return x @ np.float64(params[name]["kernel"]) + np.float64(params[name]["bias"])

    per_view_a = dense("a", np.float64(a))  # [B, V, classes]
    per_view = per_view_a + dense("b", np.float64(b).reshape(BATCH, VIEWS, -1))
    logits = per_view.mean(axis=1)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    real = slice(0, NUM_REAL)
    np.testing.assert_allclose(
        metrics["loss"], -log_p[real][np.arange(NUM_REAL), labels[real]].mean(), rtol=1e-5
    )
    score = per_view_a.sum(-1).mean(axis=1)  # the second output, averaged over views too
    np.testing.assert_allclose(metrics["score"], score[real].mean(), rtol=1e-5, atol=1e-6)
