"""Optimizers from config: names, decay masks, clipping, argument checking."""

import re

import jax
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


# --- frozen parameters and per-parameter learning-rate multipliers -------------------------

TREE = {
    "Transformer": {
        "encoderblock_0": {"Dense_0": {"kernel": None, "bias": None}},
        "encoderblock_1": {"Dense_0": {"kernel": None, "bias": None}},
    },
    "head": {"kernel": None, "bias": None},
}
SHAPES = {"kernel": (3, 4), "bias": (4,)}


def tree_params(seed=0):
    rng = np.random.default_rng(seed)
    flat, treedef = jax.tree_util.tree_flatten_with_path(TREE, is_leaf=lambda x: x is None)
    leaves = []
    for path, _ in flat:
        leaf = rng.normal(size=SHAPES[path[-1].key]).astype(np.float32)
        leaf.flat[0] = -0.0  # adversarial: +0.0 updates would flip its sign bit
        leaves.append(jnp.asarray(leaf))
    return jax.tree.unflatten(treedef, leaves)


def run_steps(config, params, num_steps=3, lr=0.1):
    tx = get_optimizer(ml_collections.ConfigDict(config), lr)
    opt_state = tx.init(params)

    @jax.jit
    def train_step(i, params, opt_state):
        grads = jax.tree.map(lambda p: jnp.sin(p * (i + 2.0)) + 0.1, params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for i in range(num_steps):
        params, opt_state = train_step(i, params, opt_state)
    return params, opt_state


def bits(x):
    return np.asarray(x).view(np.uint32)


def test_frozen_params_stay_bitwise_equal_and_hold_no_optimizer_state():
    params = tree_params()
    config = {
        "name": "adamw",
        "weight_decay": 0.1,
        "grad_clip_norm": 1.0,
        "frozen_params": ("Transformer/encoderblock_0/.*",),
    }
    new, opt_state = run_steps(config, params)
    frozen = new["Transformer"]["encoderblock_0"]["Dense_0"]
    original = params["Transformer"]["encoderblock_0"]["Dense_0"]
    for name in ("kernel", "bias"):
        np.testing.assert_array_equal(bits(frozen[name]), bits(original[name]))
    trained = new["Transformer"]["encoderblock_1"]["Dense_0"]["kernel"]
    assert np.all(trained != params["Transformer"]["encoderblock_1"]["Dense_0"]["kernel"])
    # Adam moments exist only for the 4 trainable arrays (mu and nu), none for frozen ones.
    moments = [x for x in jax.tree.leaves(opt_state) if np.ndim(x) > 0]
    assert len(moments) == 2 * 4
    assert sum(np.size(x) for x in moments) == 2 * 2 * (12 + 4)


def test_frozen_params_do_not_enter_gradient_clipping():
    params = tree_params()
    frozen_cfg = {"name": "sgd", "grad_clip_norm": 1.0, "frozen_params": ("head/.*",)}
    tx = get_optimizer(ml_collections.ConfigDict(frozen_cfg), 1.0)
    grads = jax.tree.map(jnp.ones_like, params)
    grads["head"] = jax.tree.map(lambda g: 1e6 * g, grads["head"])  # must not shrink the rest
    updates, _ = tx.update(grads, tx.init(params), params)
    trainable_count = 2 * (12 + 4)
    expected = -1.0 / np.sqrt(trainable_count)  # unit global norm over trainable grads
    np.testing.assert_allclose(
        updates["Transformer"]["encoderblock_0"]["Dense_0"]["kernel"], expected, rtol=1e-6
    )


def test_weight_decay_mask_still_applies_with_frozen_params():
    params = tree_params()
    config = {"name": "adamw", "weight_decay": 0.5, "frozen_params": ("head/.*",)}
    tx = get_optimizer(ml_collections.ConfigDict(config), 0.1)
    zero = jax.tree.map(jnp.zeros_like, params)
    new = optax.apply_updates(params, tx.update(zero, tx.init(params), params)[0])
    block = "Transformer", "encoderblock_1", "Dense_0"
    old_b, new_b = params[block[0]][block[1]][block[2]], new[block[0]][block[1]][block[2]]
    np.testing.assert_allclose(new_b["kernel"], old_b["kernel"] * (1 - 0.1 * 0.5), rtol=1e-6)
    np.testing.assert_array_equal(bits(new_b["bias"]), bits(old_b["bias"]))  # no decay
    np.testing.assert_array_equal(bits(new["head"]["kernel"]), bits(params["head"]["kernel"]))


@pytest.mark.parametrize("factor", [10.0, 3.0, 0.37])
def test_lr_multiplier_is_exactly_k_times_the_sgd_update(factor):
    params = tree_params()
    grads = jax.tree.map(lambda p: jnp.cos(3 * p), params)
    base = {"name": "sgd", "momentum": 0.9, "weight_decay": 0.01}
    tx = get_optimizer(ml_collections.ConfigDict(base), 0.1)
    tx_mult = get_optimizer(
        ml_collections.ConfigDict({**base, "lr_multipliers": (("head/.*", factor),)}), 0.1
    )
    state, state_mult = tx.init(params), tx_mult.init(params)
    for _ in range(2):  # second step exercises the momentum buffers
        updates, state = tx.update(grads, state, params)
        updates_mult, state_mult = tx_mult.update(grads, state_mult, params)
    for name in ("kernel", "bias"):
        expected = np.asarray(updates["head"][name]) * np.float32(factor)
        np.testing.assert_array_equal(updates_mult["head"][name], expected)
    same = updates["Transformer"]["encoderblock_1"]["Dense_0"]["kernel"]
    np.testing.assert_array_equal(
        updates_mult["Transformer"]["encoderblock_1"]["Dense_0"]["kernel"], same
    )
    # Same as an SGD whose learning rate is k times larger (up to float rounding).
    tx_k = get_optimizer(ml_collections.ConfigDict(base), 0.1 * factor)
    state_k = tx_k.init(params)
    for _ in range(2):
        updates_k, state_k = tx_k.update(grads, state_k, params)
    np.testing.assert_allclose(updates_mult["head"]["kernel"], updates_k["head"]["kernel"], 1e-6)


def test_first_matching_lr_multiplier_wins_and_schedules_work():
    params = tree_params()
    grads = jax.tree.map(jnp.ones_like, params)
    config = {"name": "sgd", "lr_multipliers": (("head/kernel", 2.0), ("head/.*", 10.0))}
    tx = get_optimizer(ml_collections.ConfigDict(config), optax.constant_schedule(0.5))
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(updates["head"]["kernel"], -0.5 * 2.0)
    np.testing.assert_array_equal(updates["head"]["bias"], -0.5 * 10.0)
    np.testing.assert_array_equal(updates["Transformer"]["encoderblock_0"]["Dense_0"]["bias"], -0.5)


def test_frozen_wins_over_lr_multiplier():
    params = tree_params()
    config = {
        "name": "sgd",
        "frozen_params": ("head/bias",),
        "lr_multipliers": (("head/.*", 10.0),),
    }
    new, _ = run_steps(config, params)
    np.testing.assert_array_equal(bits(new["head"]["bias"]), bits(params["head"]["bias"]))
    assert np.all(new["head"]["kernel"] != params["head"]["kernel"])


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("frozen_params", ("Transformer/encoderblock_9/.*",), "'Transformer/encoderblock_9/.*'"),
        ("frozen_params", ("head",), "frozen_params pattern 'head' matches no parameter"),
        ("lr_multipliers", (("heads/.*", 10.0),), "lr_multipliers pattern 'heads/.*'"),
    ],
)
def test_pattern_matching_no_parameter_is_an_error(key, value, message):
    tx = get_optimizer(ml_collections.ConfigDict({"name": "sgd", key: value}), 0.1)
    with pytest.raises(ConfigError, match=re.escape(message)):
        tx.init(tree_params())


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("lr_multipliers", (("head/.*",),), "must be (regex, factor) pairs"),
        ("lr_multipliers", (("head/.*", 0.0),), "must be finite and > 0"),
        ("lr_multipliers", (("head/.*", "10"),), "factor for 'head/.*' is '10'"),
        ("frozen_params", ("head/(",), "invalid regex 'head/('"),
    ],
)
def test_malformed_patterns_are_config_errors(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        get_optimizer(ml_collections.ConfigDict({"name": "sgd", key: value}), 0.1)


def test_frozen_optimizer_state_survives_a_checkpoint(tmp_path):
    from scenic.train_lib.checkpoints import Checkpointer

    params = tree_params()
    config = {"name": "adamw", "frozen_params": ("head/.*",), "lr_multipliers": (("T.*", 2.0),)}
    _, opt_state = run_steps(config, params, num_steps=1)
    checkpointer = Checkpointer(tmp_path)
    checkpointer.save(1, {"params": params, "opt_state": opt_state})
    restored = checkpointer.restore({"params": params, "opt_state": opt_state})
    checkpointer.close()
    assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(opt_state)
    expected = {"params": params, "opt_state": opt_state}
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)
