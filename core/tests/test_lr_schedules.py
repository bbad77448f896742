"""Compound learning-rate schedules against closed-form NumPy references."""

import math

import ml_collections
import numpy as np
import pytest

from scenic.common_lib.config_utils import ConfigError
from scenic.train_lib.lr_schedules import compound_schedule


def reference(step, factors, base, warmup, cycle, end):
    lr = 1.0
    progress = min(max((step - warmup) / max(cycle - warmup, 1), 0.0), 1.0)
    for f in factors:
        if f == "constant":
            lr *= base
        elif f == "linear_warmup" and warmup:
            lr *= min(1.0, step / warmup)
        elif f == "rsqrt_decay":
            lr *= math.sqrt(max(warmup, 1) / max(step, warmup, 1))
        elif f == "linear_decay":
            lr *= 1 - progress * (1 - end)
        elif f == "cosine_decay":
            lr *= end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))
    return lr


@pytest.mark.parametrize(
    "factors",
    [
        ["constant"],
        ["constant", "linear_warmup", "cosine_decay"],
        ["constant", "linear_warmup", "linear_decay"],
        ["constant", "linear_warmup", "rsqrt_decay"],
    ],
)
def test_schedule_matches_reference(factors):
    config = ml_collections.ConfigDict(
        {"factors": " * ".join(factors), "base_learning_rate": 0.3, "warmup_steps": 10,
         "end_factor": 0.1}
    )
    schedule = compound_schedule(config, total_steps=100)
    for step in [0, 1, 5, 10, 11, 50, 99, 100, 150]:
        expected = reference(step, factors, 0.3, 10, 100, 0.1)
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-9)


def test_cosine_reaches_end_and_peaks_after_warmup():
    config = ml_collections.ConfigDict(
        {"factors": "constant*linear_warmup*cosine_decay", "base_learning_rate": 1.0,
         "warmup_steps": 5}
    )
    schedule = compound_schedule(config, total_steps=20)
    assert float(schedule(5)) == pytest.approx(1.0)
    assert float(schedule(20)) == pytest.approx(0.0, abs=1e-7)


def test_unknown_factor_and_key_are_errors():
    with pytest.raises(ConfigError, match="Unknown learning-rate factor 'cosine'"):
        compound_schedule(ml_collections.ConfigDict({"factors": "constant*cosine"}), 10)
    with pytest.raises(ConfigError, match="lr_configs.warmup"):
        compound_schedule(ml_collections.ConfigDict({"warmup": 3}), 10)
    with pytest.raises(ConfigError, match="steps_per_cycle"):
        compound_schedule(
            ml_collections.ConfigDict({"factors": "cosine_decay", "warmup_steps": 10}), 10
        )


def test_piecewise_constant_decays_at_each_event_cumulatively():
    config = ml_collections.ConfigDict(
        {
            "factors": "constant * piecewise_constant",
            "base_learning_rate": 1e-4,
            "decay_events": (200, 300),
            "decay_factors": (0.1, 0.5),
        }
    )
    schedule = compound_schedule(config, 400)
    for step, expected in ((0, 1e-4), (199, 1e-4), (200, 1e-5), (299, 1e-5), (300, 5e-6)):
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6)
    config.decay_factors = (0.1,)
    with pytest.raises(ConfigError, match="one factor per event"):
        compound_schedule(config, 400)
