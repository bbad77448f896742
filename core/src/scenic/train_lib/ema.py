"""Exponential moving average (EMA) of parameters, updated inside the train step.

The EMA is kept in float32 whatever the parameters' dtype, and evaluated instead of the raw
parameters when `config.ema` is set. Warmup choices for the decay at update t = 1, 2, ...:
  - None:      decay (constant);
  - 'debias':  the Adam-style bias correction of an EMA started at zero (optax.ema with
               debias=True), stored already corrected: decay_t = d (1 - d^(t-1)) / (1 - d^t),
               so the first update copies the parameters;
  - 'tf':      min(decay, (1 + t) / (10 + t)), as TensorFlow's ExponentialMovingAverage
               with num_updates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from scenic.common_lib.config_utils import ConfigError, check_keys

WARMUPS = (None, "debias", "tf")


def init_ema(params):
    """The EMA starts as a float32 copy of the parameters."""
    return jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)


def ema_decay(count, decay: float, warmup: str | None = None) -> jnp.ndarray:
    """The decay used by update number `count` (1 for the first update)."""
    count = jnp.asarray(count, jnp.float32)
    decay = jnp.asarray(decay, jnp.float32)
    if warmup is None:
        return decay
    if warmup == "tf":
        return jnp.minimum(decay, (1.0 + count) / (10.0 + count))
    if warmup == "debias":  # 1 - d^t computed as -expm1(t log d) to keep float32 precision
        log_d = jnp.log(decay)
        debiased = decay * jnp.expm1((count - 1) * log_d) / jnp.expm1(count * log_d)
        return jnp.where(count <= 1, 0.0, debiased)
    raise ValueError(f"Unknown EMA warmup {warmup!r}; known: {WARMUPS}.")


def update_ema(ema_params, params, count, *, decay: float, warmup: str | None = None):
    """ema <- decay_t * ema + (1 - decay_t) * params, in float32."""
    d = ema_decay(count, decay, warmup)
    return jax.tree.map(
        lambda e, p: d * e + (1.0 - d) * jnp.asarray(p, jnp.float32), ema_params, params
    )


def from_config(config: ml_collections.ConfigDict | None) -> dict | None:
    """`config.ema` ({'decay': 0.9999, 'warmup': None}) -> kwargs of `update_ema`, or None."""
    if not config:
        return None
    check_keys(config, ("decay", "warmup"), "ema")
    decay, warmup = config.get("decay"), config.get("warmup")
    if decay is None or not 0.0 <= decay < 1.0:
        raise ConfigError(f"ema.decay must be in [0, 1), got {decay!r}.")
    if warmup not in WARMUPS:
        raise ConfigError(f"ema.warmup must be one of {WARMUPS}, got {warmup!r}.")
    return {"decay": float(decay), "warmup": warmup}
