"""Pretrained init: name matching, renames, reinit, posemb resampling (vs SciPy), sources."""

import re

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.ndimage

from scenic.common_lib.config_utils import ConfigError
from scenic.train_lib import pretrained_init as pi
from scenic.train_lib.checkpoints import Checkpointer

RNG = np.random.default_rng(0)


def model_params(grid=4, classes=3, dtype=jnp.float32):
    return {
        "embedding": {"kernel": jnp.zeros((2, 2, 3, 8), dtype), "bias": jnp.zeros((8,), dtype)},
        "Transformer": {
            "posembed_input": {"pos_embedding": jnp.zeros((1, 1 + grid * grid, 8), dtype)},
            "encoderblock_0": {"Dense_0": {"kernel": jnp.zeros((8, 8), dtype)}},
        },
        "head": {"kernel": jnp.zeros((8, classes), dtype), "bias": jnp.zeros((classes,), dtype)},
    }


def checkpoint_arrays(grid=4, classes=10):
    """Flat '/'-joined arrays, as a published ViT .npz holds them."""
    shapes = {
        "embedding/kernel": (2, 2, 3, 8),
        "embedding/bias": (8,),
        "Transformer/posembed_input/pos_embedding": (1, 1 + grid * grid, 8),
        "Transformer/encoderblock_0/Dense_0/kernel": (8, 8),
        "head/kernel": (8, classes),
        "head/bias": (classes,),
    }
    return {k: RNG.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def scipy_resample(posemb, new_grid, prefix):
    """big_vision's resample_posemb, generalised to non-square grids and prefix tokens."""
    grid = posemb[0, prefix:]
    side = int(np.sqrt(grid.shape[0]))
    old = (side, side) if side * side == grid.shape[0] else OLD_GRIDS[grid.shape[0]]
    grid = grid.reshape(*old, -1)
    zoom = (new_grid[0] / old[0], new_grid[1] / old[1], 1)
    grid = scipy.ndimage.zoom(grid, zoom, order=1)
    return np.concatenate([posemb[:, :prefix], grid.reshape(1, -1, grid.shape[-1])], axis=1)


OLD_GRIDS = {12: (3, 4)}


@pytest.mark.parametrize(
    "old_grid, new_grid, prefix",
    [((2, 2), (7, 7), 0), ((3, 3), (5, 5), 1), ((7, 7), (3, 3), 1), ((4, 4), (1, 1), 0),
     ((5, 5), (5, 5), 1), ((1, 1), (3, 3), 0), ((3, 4), (5, 2), 1), ((14, 14), (24, 24), 1)],
)  # fmt: skip
def test_resample_posemb_matches_scipy_zoom(old_grid, new_grid, prefix):
    posemb = RNG.normal(size=(1, prefix + old_grid[0] * old_grid[1], 6))
    out = pi.resample_posemb(posemb, new_grid, prefix, old_grid=old_grid)
    assert out.shape == (1, prefix + new_grid[0] * new_grid[1], 6)
    np.testing.assert_allclose(out, scipy_resample(posemb, new_grid, prefix), atol=1e-12)
    np.testing.assert_array_equal(out[:, :prefix], posemb[:, :prefix])


def test_loads_matching_names_and_keeps_the_new_head_fresh():
    source = checkpoint_arrays()
    fresh = model_params(dtype=jnp.bfloat16)
    params, summary = pi.init_from(fresh, source, reinit=("head/.*",))
    np.testing.assert_array_equal(
        params["embedding"]["kernel"], source["embedding/kernel"].astype(jnp.bfloat16)
    )
    assert params["embedding"]["kernel"].dtype == jnp.bfloat16
    assert params["head"]["kernel"].shape == (8, 3) and not np.any(params["head"]["kernel"])
    assert summary.reinitialised == ["head/kernel", "head/bias"]
    assert summary.skipped == ["head/kernel", "head/bias"]
    assert len(summary.loaded) == 4 and not summary.missing and not summary.unused
    assert "loaded 4 arrays" in str(summary)


def test_posemb_is_resampled_when_the_grid_changes():
    source = checkpoint_arrays(grid=4)
    params, summary = pi.init_from(model_params(grid=6), source, reinit=("head/.*",))
    name = "Transformer/posembed_input/pos_embedding"
    expected = scipy_resample(source[name].astype(np.float64), (6, 6), prefix=1)
    got = params["Transformer"]["posembed_input"]["pos_embedding"]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got[:, 0], source[name][:, 0])  # class token kept
    assert summary.resized == {name: ((1, 17, 8), (1, 37, 8))}


def test_every_problem_is_listed_in_one_error():
    source = checkpoint_arrays()
    source["pre_logits/kernel"] = np.zeros((8, 8), np.float32)
    del source["embedding/bias"]
    with pytest.raises(pi.PretrainedInitError) as info:
        pi.init_from(model_params(), source)
    message = str(info.value)
    assert "(4 problems)" in message
    assert "head/kernel: checkpoint (8, 10) != model (8, 3)" in message
    assert "head/bias: checkpoint (10,) != model (3,)" in message
    assert "embedding/bias: missing in checkpoint (model (8,))" in message
    assert "pre_logits/kernel: in checkpoint, not used by the model" in message


def test_allow_missing_and_unused_and_reinit_of_checkpoint_only_names():
    source = checkpoint_arrays(classes=3)
    source["pre_logits/kernel"] = np.zeros((8, 8), np.float32)
    source["extra"] = np.zeros((2,), np.float32)
    del source["embedding/bias"]
    _, summary = pi.init_from(
        model_params(), source, reinit=("pre_logits/.*",), allow_missing=True, allow_unused=True
    )
    assert summary.missing == ["embedding/bias"]
    assert summary.skipped == ["pre_logits/kernel"] and summary.unused == ["extra"]


def test_rename_rules_apply_in_order():
    source = {f"params/old_body/{k}": v for k, v in checkpoint_arrays(classes=3).items()}
    params, summary = pi.init_from(
        model_params(), source, rename=(("^params/", ""), ("^old_body/", ""))
    )
    assert len(summary.loaded) == 6
    np.testing.assert_array_equal(params["head"]["bias"], source["params/old_body/head/bias"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rename": (("^model/", ""),)}, "rename pattern '^model/' matches no checkpoint name"),
        ({"rename": (("kernel|bias", "x"),)}, "maps two checkpoint names to one"),
        ({"reinit": ("heads/.*",)}, "reinit pattern 'heads/.*' matches no model parameter"),
    ],
)
def test_typos_in_rules_are_errors(kwargs, message):
    with pytest.raises(pi.PretrainedInitError, match=re.escape(message)):
        pi.init_from(model_params(), checkpoint_arrays(classes=3), **kwargs)


def test_non_square_posemb_mismatch_is_an_error():
    fresh = model_params()
    fresh["Transformer"]["posembed_input"]["pos_embedding"] = jnp.zeros((1, 1 + 12, 8))
    with pytest.raises(pi.PretrainedInitError, match=r"pos_embedding: checkpoint \(1, 17, 8\)"):
        pi.init_from(fresh, checkpoint_arrays(classes=3))


def test_npz_file_from_config(tmp_path):
    source = checkpoint_arrays()
    path = tmp_path / "vit.npz"
    np.savez(path, **source)
    config = ml_collections.ConfigDict({"checkpoint": str(path), "reinit": ("head/.*",)})
    params, summary = pi.from_config(model_params(grid=2), config)
    assert list(summary.resized) == ["Transformer/posembed_input/pos_embedding"]
    enc = params["Transformer"]["encoderblock_0"]["Dense_0"]["kernel"]
    np.testing.assert_array_equal(enc, source["Transformer/encoderblock_0/Dense_0/kernel"])
    with pytest.raises(ConfigError, match="init_from.renam: nothing reads it"):
        pi.from_config(model_params(), ml_collections.ConfigDict({"checkpoint": "x", "renam": 1}))
    fresh = model_params()
    assert pi.from_config(fresh, None) == (fresh, None)


def test_orbax_checkpoint_of_a_scenic_train_state(tmp_path):
    """Only `params` of the latest step is read (the optimizer state is not loaded)."""
    first, latest = checkpoint_arrays(classes=3), checkpoint_arrays(classes=3)
    nested = [pi.flax.traverse_util.unflatten_dict(a, sep="/") for a in (first, latest)]
    checkpointer = Checkpointer(tmp_path)
    for step, params in enumerate(nested, start=1):
        checkpointer.save(step, {"params": params, "opt_state": {"mu": params}, "step": step})
    checkpointer.close()
    for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "2"):
        loaded = pi.load_params(path)
        assert sorted(loaded) == sorted(latest)
        for name, value in latest.items():
            np.testing.assert_array_equal(loaded[name], value)
    params, _ = pi.init_from(model_params(), pi.load_params(tmp_path / "checkpoints" / "1"))
    np.testing.assert_array_equal(params["head"]["kernel"], first["head/kernel"])
    with pytest.raises(pi.PretrainedInitError, match="does not exist"):
        pi.load_params(tmp_path / "nowhere")


def test_model_state_loads_with_the_parameters_rename_rules(tmp_path):
    """A scenic checkpoint's BatchNorm statistics follow its parameters into a model that
    holds the same network under a new scope (a ResNet as DETR's `backbone`)."""
    stats = {"batch_stats": {"bn": {"mean": np.full(3, 2.0, np.float32), "var": np.ones(3)}}}
    state = {"params": {"bn": {"scale": np.ones(3, np.float32)}}, "model_state": stats}
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(5, state)
    checkpointer.close()
    fresh = {
        "batch_stats": {
            "backbone": {"bn": {"mean": np.zeros(3, np.float32), "var": np.ones(3)}},
            "other": {"mean": np.zeros(2, np.float32)},
        }
    }
    config = ml_collections.ConfigDict(
        {"checkpoint": str(tmp_path), "rename": ((r"^(.*)", r"backbone/\1"),)}
    )
    loaded_state, loaded = pi.model_state_from_config(fresh, config)
    assert loaded == ["batch_stats/backbone/bn/mean", "batch_stats/backbone/bn/var"]
    np.testing.assert_array_equal(loaded_state["batch_stats"]["backbone"]["bn"]["mean"], 2.0)
    np.testing.assert_array_equal(loaded_state["batch_stats"]["other"]["mean"], 0.0)  # kept fresh
    params = pi.load_params(tmp_path)  # the parameters alone, as before
    assert list(params) == ["bn/scale"]
    np.testing.assert_array_equal(params["bn/scale"], 1.0)


def test_a_registered_format_may_bring_model_state(tmp_path, monkeypatch):
    """A registered format's `read_model_state` feeds `model_state_from_config` as a scenic
    checkpoint's model state would (same names and shapes only); without one, the model
    state stays fresh; its errors name the file and the format."""
    weights = tmp_path / "stats.bin"
    weights.write_bytes(b"")

    def read_state(path):
        if path.stat().st_size:
            raise pi.PretrainedInitError("not a stats file")
        return {"batch_stats/bn/mean": np.full(3, 2.0), "batch_stats/bn/var": np.ones(2)}

    with_state = pi.CheckpointFormat("stats", "a stats file", lambda p: False, None, read_state)
    monkeypatch.setitem(pi._FORMATS, "stats", with_state)
    monkeypatch.setitem(
        pi._FORMATS, "params_only", pi.CheckpointFormat("params_only", "x", lambda p: False, None)
    )
    fresh = {"batch_stats": {"bn": {"mean": np.zeros(3, np.float32), "var": np.zeros(3)}}}
    config = ml_collections.ConfigDict({"checkpoint": str(weights), "format": "stats"})
    state, loaded = pi.model_state_from_config(fresh, config)
    assert loaded == ["batch_stats/bn/mean"]  # var's shape differs: kept fresh
    np.testing.assert_array_equal(state["batch_stats"]["bn"]["mean"], 2.0)
    assert state["batch_stats"]["bn"]["mean"].dtype == np.float32
    config.format = "params_only"
    assert pi.model_state_from_config(fresh, config) == (fresh, [])
    weights.write_bytes(b"x")
    config.format = "stats"
    with pytest.raises(pi.PretrainedInitError, match=r"stats.bin read as .*not a stats file"):
        pi.model_state_from_config(fresh, config)
