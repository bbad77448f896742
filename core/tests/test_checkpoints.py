"""Orbax checkpoints: round trip, keep-last-K, and the shape-mismatch error."""

import numpy as np
import optax
import pytest

from scenic.train_lib.checkpoints import Checkpointer, CheckpointMismatchError


def state_for(width):
    params = {"dense": {"kernel": np.arange(3 * width, dtype=np.float32).reshape(3, width)}}
    return {"step": np.int32(4), "params": params, "opt_state": optax.adam(0.1).init(params),
            "model_state": {}, "rng": np.array([1, 2], np.uint32)}


def test_round_trip_and_keep_last(tmp_path):
    checkpointer = Checkpointer(tmp_path, max_to_keep=2)
    for step in (1, 2, 3):
        state = state_for(2)
        state["step"] = np.int32(step)
        checkpointer.save(step, state)
    assert checkpointer.latest_step() == 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "3"]
    restored = checkpointer.restore(state_for(2))
    assert int(restored["step"]) == 3
    np.testing.assert_array_equal(restored["params"]["dense"]["kernel"],
                                  state_for(2)["params"]["dense"]["kernel"])
    assert type(restored["opt_state"][0]).__name__ == "ScaleByAdamState"


def test_mismatched_model_is_named(tmp_path):
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(1, state_for(2))
    with pytest.raises(CheckpointMismatchError, match=r"params/dense/kernel: checkpoint \(3, 2\)"):
        checkpointer.restore(state_for(5))
