"""The train step's per-example gradient clipping (`optimizer.per_example_clip_norm`) against
a NumPy float64 reference: each example's gradient clipped to the norm, then averaged."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from scenic.common_lib.config_utils import ConfigError
from scenic.model_lib import model_utils
from scenic.model_lib.base_models import BaseModel
from scenic.train_lib import optimizers, steps
from scenic.train_lib.train_state import TrainState, replicate

B, D = 6, 3


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(1, name="dense")(x)[:, 0]


class SquaredError(BaseModel):
    """Loss: the batch mean of 0.5 (prediction - target)^2; metric: the same, as a pair."""

    def build_flax_model(self):
        return Linear()

    def loss_and_metrics(self, outputs, batch, model_params=None, axis_name=None):
        errors = 0.5 * (outputs - batch["label"]) ** 2
        metrics = {"loss": model_utils.sum_and_normalizer(errors, None, axis_name)}
        return errors.mean(), metrics


def problem(seed=0):
    """Parameters and a batch whose examples' gradient norms spread over two decades."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(D, 1)).astype(np.float32)
    b = rng.normal(size=(1,)).astype(np.float32)
    x = (rng.normal(size=(B, D)) * np.logspace(-1, 1, B)[:, None]).astype(np.float32)
    y = rng.normal(size=B).astype(np.float32)
    return {"dense": {"kernel": w, "bias": b}}, {"inputs": x, "label": y}


def reference_update(params, batch, clip_norm):
    """float64: the mean of the per-example gradients, each scaled to norm <= clip_norm."""
    w = params["dense"]["kernel"].astype(np.float64)[:, 0]
    b = float(params["dense"]["bias"][0])
    x, y = batch["inputs"].astype(np.float64), batch["label"].astype(np.float64)
    residual = x @ w + b - y
    grad_w, grad_b = residual[:, None] * x, residual
    norms = np.sqrt((grad_w**2).sum(1) + grad_b**2)
    scale = clip_norm / np.maximum(norms, clip_norm)
    return (grad_w * scale[:, None]).mean(0), (grad_b * scale).mean(), 0.5 * residual**2, scale


def one_step(params, batch, clip_norm, axis_name=None):
    model = SquaredError(ml_collections.ConfigDict(), {})
    tx = optax.sgd(1.0)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        model_state={},
        rng=jax.random.key_data(jax.random.key(0)),
    )
    step = functools.partial(
        steps.train_step,
        model=model,
        tx=tx,
        lr_fn=lambda s: 1.0,
        per_example_clip_norm=clip_norm,
        axis_name=axis_name,
    )
    if axis_name is None:
        return jax.jit(step)(state, batch)
    devices = jax.local_device_count()
    batch = jax.tree.map(lambda v: v.reshape(devices, -1, *v.shape[1:]), batch)
    new_state, metrics, finite = jax.pmap(step, axis_name=axis_name)(replicate(state), batch)
    return jax.tree.map(lambda v: v[0], (new_state, metrics, finite))


@pytest.mark.parametrize("axis_name", [None, steps.AXIS])
@pytest.mark.parametrize("clip_norm", [1.0, 10.0, 1e6])
def test_per_example_clipping_matches_a_float64_reference(clip_norm, axis_name):
    params, batch = problem()
    grad_w, grad_b, losses, scale = reference_update(params, batch, clip_norm)
    if clip_norm < 1e3:
        assert scale.min() < 0.5 and scale.max() == 1.0  # some examples clipped, some not
    new_state, metrics, finite = one_step(params, batch, clip_norm, axis_name)
    np.testing.assert_allclose(
        params["dense"]["kernel"][:, 0] - new_state.params["dense"]["kernel"][:, 0],
        grad_w,
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        params["dense"]["bias"][0] - new_state.params["dense"]["bias"][0], grad_b, rtol=1e-5
    )
    total, count = metrics["loss"]
    np.testing.assert_allclose(total, losses.sum(), rtol=1e-5)
    assert count == B and finite == 1


def test_an_unbinding_norm_gives_the_plain_step():
    params, batch = problem(1)
    clipped, _, _ = one_step(params, batch, 1e9)
    plain, _, _ = one_step(params, batch, None)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        clipped.params,
        plain.params,
    )


@pytest.mark.parametrize("value", [0, -1.0, "1.0"])
def test_bad_per_example_clip_norm_is_one_clear_error(value):
    config = ml_collections.ConfigDict({"name": "sgd", "per_example_clip_norm": value})
    with pytest.raises(ConfigError, match="per_example_clip_norm must be a number > 0"):
        optimizers.get_optimizer(config, 0.1)
