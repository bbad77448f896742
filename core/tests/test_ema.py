"""Parameter EMA against NumPy float64 and optax.ema(debias=True)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from scenic.common_lib.config_utils import ConfigError
from scenic.train_lib import ema

STEPS = 40


def param_sequence(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.normal(size=(STEPS + 1, 3, 2)), axis=0)
    return [{"w": w.astype(dtype), "b": {"x": w[0].astype(dtype)}} for w in walk]


def run(seq, decay, warmup):
    """EMA over seq[1:], started from seq[0], one jitted update per step."""
    step = jax.jit(lambda e, p, t: ema.update_ema(e, p, t, decay=decay, warmup=warmup))
    state = ema.init_ema(seq[0])
    for t, params in enumerate(seq[1:], start=1):
        state = step(state, params, t)
    return state


def reference(seq, decay, warmup):
    e = seq[0]["w"].astype(np.float64)
    for t, params in enumerate(seq[1:], start=1):
        d = decay
        if warmup == "tf":
            d = min(decay, (1 + t) / (10 + t))
        elif warmup == "debias":
            d = decay * (1 - decay ** (t - 1)) / (1 - decay**t)
        e = d * e + (1 - d) * params["w"].astype(np.float64)
    return e


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("warmup", [None, "tf", "debias"])
def test_matches_numpy_float64(decay, warmup):
    seq = param_sequence()
    out = run(seq, decay, warmup)
    np.testing.assert_allclose(out["w"], reference(seq, decay, warmup), rtol=1e-5, atol=1e-5)
    assert out["w"].dtype == jnp.float32 and out["b"]["x"].dtype == jnp.float32


@pytest.mark.parametrize("decay", [0.9, 0.9999])
def test_debias_equals_a_zero_started_ema_divided_by_one_minus_decay_power(decay):
    """The two public definitions: NumPy (zero start, divide) and optax.ema(debias=True)."""
    seq = param_sequence(1)
    out = run(seq, decay, "debias")
    raw, tx = np.zeros((3, 2)), optax.ema(decay, debias=True)
    state = tx.init(seq[1])
    for params in seq[1:]:
        raw = decay * raw + (1 - decay) * params["w"].astype(np.float64)
        optax_ema, state = tx.update(params, state)
    np.testing.assert_allclose(out["w"], raw / (1 - decay**STEPS), rtol=2e-5, atol=1e-5)
    # optax forms 1 - d^t in float32 (d = 0.9999 rounds), so it is looser than float64 here.
    np.testing.assert_allclose(out["w"], optax_ema["w"], rtol=5e-4, atol=1e-5)


def test_first_debiased_update_copies_the_parameters():
    seq = param_sequence(2)
    out = ema.update_ema(ema.init_ema(seq[0]), seq[1], 1, decay=0.9999, warmup="debias")
    np.testing.assert_array_equal(out["w"], seq[1]["w"])


def test_bfloat16_params_give_a_float32_ema():
    seq = param_sequence(3)
    bf16 = [jax.tree.map(lambda p: jnp.asarray(p, jnp.bfloat16), s) for s in seq]
    out = run(bf16, 0.9, None)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(out))
    as_f32 = [jax.tree.map(lambda p: np.asarray(p, np.float32), s) for s in bf16]
    np.testing.assert_allclose(out["w"], reference(as_f32, 0.9, None), rtol=1e-5, atol=1e-5)


def test_config():
    assert ema.from_config(None) is None
    cfg = ml_collections.ConfigDict({"decay": 0.999, "warmup": "tf"})
    assert ema.from_config(cfg) == {"decay": 0.999, "warmup": "tf"}
    with pytest.raises(ConfigError, match="ema.decay must be in"):
        ema.from_config(ml_collections.ConfigDict({"decay": 1.0}))
    with pytest.raises(ConfigError, match="ema.warmup must be one of"):
        ema.from_config(ml_collections.ConfigDict({"decay": 0.9, "warmup": "timm"}))
    with pytest.raises(ConfigError, match="ema.decya: nothing reads it"):
        ema.from_config(ml_collections.ConfigDict({"decya": 0.9}))
