"""Optimizers from config: names, decay masks, clipping, argument checking."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from scenic.common_lib.config_utils import ConfigError
from scenic.train_lib.optimizers import get_optimizer

PARAMS = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
ZERO_GRADS = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros((2,))}


def step(config, grads=ZERO_GRADS, lr=0.1):
    tx = get_optimizer(ml_collections.ConfigDict(config), lr)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    return optax.apply_updates(PARAMS, updates)


def test_adamw_decays_kernels_not_biases():
    new = step({"name": "adamw", "weight_decay": 0.5})
    np.testing.assert_allclose(new["kernel"], 1 - 0.1 * 0.5)
    np.testing.assert_allclose(new["bias"], 1.0)


def test_sgd_weight_decay_is_added_to_gradients():
    new = step({"name": "sgd", "weight_decay": 0.5, "momentum": 0.9})
    np.testing.assert_allclose(new["kernel"], 1 - 0.1 * 0.5)
    np.testing.assert_allclose(new["bias"], 1.0)


def test_gradient_clipping_bounds_the_update():
    grads = {"kernel": jnp.full((2, 2), 100.0), "bias": jnp.zeros((2,))}
    new = step({"name": "sgd", "grad_clip_norm": 1.0}, grads=grads, lr=1.0)
    # clipped to global norm 1: each of the 4 entries becomes 0.5
    np.testing.assert_allclose(new["kernel"], 0.5, rtol=1e-6)


def test_unknown_optimizer_and_argument_are_named():
    with pytest.raises(ConfigError, match="Unknown optimizer.name 'adamm'"):
        get_optimizer(ml_collections.ConfigDict({"name": "adamm"}), 0.1)
    with pytest.raises(ConfigError, match="optimizer.beta1: nothing reads it"):
        get_optimizer(ml_collections.ConfigDict({"name": "adamw", "beta1": 0.9}), 0.1)
