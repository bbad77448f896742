"""Compound learning-rate schedules: a product of named factors.

`config.lr_configs.factors = 'constant * linear_warmup * cosine_decay'` multiplies
`base_learning_rate` by a linear warmup over `warmup_steps` and a cosine decay that
reaches `end_factor` of the peak at `steps_per_cycle` (default: the run's last step).
`piecewise_constant` multiplies by `decay_factors[i]` from step `decay_events[i]` on
(cumulatively, as DETR's x0.1 at epoch 200: `decay_events=(200 * steps_per_epoch,)`,
`decay_factors=(0.1,)`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import ml_collections

from scenic.common_lib.config_utils import ConfigError, check_keys

FACTORS = (
    "constant",
    "linear_warmup",
    "rsqrt_decay",
    "linear_decay",
    "cosine_decay",
    "piecewise_constant",
)
KEYS = (
    "factors",
    "base_learning_rate",
    "warmup_steps",
    "steps_per_cycle",
    "end_factor",
    "decay_events",
    "decay_factors",
)


def compound_schedule(
    lr_configs: ml_collections.ConfigDict, total_steps: int
) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """Returns `step -> learning rate` for the factors named in `lr_configs.factors`."""
    check_keys(lr_configs, KEYS, "lr_configs")
    factors = [f.strip() for f in lr_configs.get("factors", "constant").split("*")]
    for factor in factors:
        if factor not in FACTORS:
            raise ConfigError(
                f"Unknown learning-rate factor {factor!r} in lr_configs.factors; "
                f"known: {', '.join(FACTORS)}."
            )
    base = float(lr_configs.get("base_learning_rate", 1e-3))
    warmup = int(lr_configs.get("warmup_steps", 0) or 0)
    cycle = int(lr_configs.get("steps_per_cycle") or total_steps)
    end_factor = float(lr_configs.get("end_factor", 0.0) or 0.0)
    if ("cosine_decay" in factors or "linear_decay" in factors) and cycle <= warmup:
        raise ConfigError(
            f"lr_configs.steps_per_cycle ({cycle}) must exceed warmup_steps ({warmup})."
        )
    events = tuple(int(e) for e in lr_configs.get("decay_events", ()) or ())
    decays = tuple(float(f) for f in lr_configs.get("decay_factors", ()) or ())
    if "piecewise_constant" in factors and (
        len(events) != len(decays) or list(events) != sorted(events) or min(events, default=1) < 1
    ):
        raise ConfigError(
            "lr_configs.decay_events (increasing steps >= 1) and lr_configs.decay_factors "
            f"must have one factor per event; got {events} and {decays}."
        )

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        lr = jnp.asarray(1.0, jnp.float32)
        progress = jnp.clip((step - warmup) / max(cycle - warmup, 1), 0.0, 1.0)
        for factor in factors:
            if factor == "constant":
                lr = lr * base
            elif factor == "linear_warmup" and warmup > 0:
                lr = lr * jnp.minimum(1.0, step / warmup)
            elif factor == "rsqrt_decay":
                lr = lr * jnp.sqrt(max(warmup, 1) / jnp.maximum(step, max(warmup, 1)))
            elif factor == "linear_decay":
                lr = lr * (1.0 - progress * (1.0 - end_factor))
            elif factor == "cosine_decay":
                cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
                lr = lr * (end_factor + (1.0 - end_factor) * cosine)
            elif factor == "piecewise_constant":
                for event, decay in zip(events, decays):
                    lr = lr * jnp.where(step >= event, decay, 1.0)
        return lr

    return schedule
