"""bfloat16 compute with float32 parameters and optimizer state."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scenic.common_lib.config_utils import ConfigError
from scenic.train_lib import precision


class TinyMLP(nn.Module):
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(32, dtype=self.dtype)(x))
        return nn.Dense(4, dtype=self.dtype)(x)


def test_compute_dtype_from_config():
    assert precision.compute_dtype("bfloat16") == jnp.bfloat16
    assert precision.compute_dtype("float32") == jnp.float32
    assert precision.compute_dtype(None) == jnp.float32
    with pytest.raises(ConfigError, match="Unknown compute dtype 'bf16'"):
        precision.compute_dtype("bf16")


def test_cast_inputs_casts_floating_inputs_only():
    batch = {
        "inputs": np.ones((2, 3), np.float32),
        "label": np.array([1, 2]),
        "batch_mask": np.ones(2, np.float32),
    }
    out = precision.cast_inputs(batch, jnp.bfloat16)
    assert out["inputs"].dtype == jnp.bfloat16
    assert out["label"].dtype == batch["label"].dtype
    assert out["batch_mask"].dtype == np.float32
    tokens = precision.cast_inputs({"inputs": np.ones((2, 3), np.int32)}, jnp.bfloat16)
    assert tokens["inputs"].dtype == jnp.int32
    assert precision.cast_inputs(np.ones(2, np.float32), jnp.bfloat16).dtype == jnp.bfloat16


def test_bfloat16_forward_keeps_float32_params_and_state_and_is_close_to_float32():
    x = jax.random.normal(jax.random.key(0), (8, 16))
    dtype = precision.compute_dtype("bfloat16")
    model = TinyMLP(dtype=dtype)
    params = model.init(jax.random.key(1), x)["params"]
    precision.check_float32(params)
    tx = optax.adamw(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x):
        def loss_fn(p):
            logits = model.apply({"params": p}, precision.cast_inputs(x, dtype))
            assert logits.dtype == jnp.bfloat16
            return jnp.mean(precision.to_float32(logits) ** 2), logits

        (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, grads, logits

    new_params, opt_state, grads, logits = step(params, opt_state, x)
    for tree, where in ((new_params, "params"), (opt_state, "opt_state"), (grads, "grads")):
        precision.check_float32(tree, where)
    reference = TinyMLP(dtype=jnp.float32).apply({"params": params}, x)
    np.testing.assert_allclose(np.asarray(logits, np.float32), reference, rtol=0.05, atol=0.05)
    assert not np.allclose(np.asarray(logits, np.float32), reference, rtol=1e-6, atol=1e-6)


def test_check_float32_names_the_offending_leaf():
    with pytest.raises(ValueError, match="params/Dense_0/kernel is bfloat16"):
        precision.check_float32({"Dense_0": {"kernel": jnp.zeros(2, jnp.bfloat16)}})
    precision.check_float32({"count": jnp.zeros((), jnp.int32)})
