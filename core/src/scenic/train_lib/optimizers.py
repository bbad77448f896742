"""Optimizers from config: any optax optimizer by name, plus weight decay, clipping,
frozen parameters and per-parameter learning-rate multipliers.

`config.optimizer.name` names an optax function (`adamw`, `sgd`, `lamb`, ...); every other
key is passed to it by name and checked against its signature, except:
  - `grad_clip_norm`: clip gradients to this global norm first (over trainable params);
  - `per_example_clip_norm`: clip each example's gradient to this global norm before the
    batch's mean is taken (read by the trainer: `steps.per_example_clipped`);
  - `weight_decay`: decoupled decay for optimizers that take it (adamw, lamb, ...), else
    added to the gradients (coupled, as in SGD). Only parameters with >= 2 dimensions
    (kernels, embeddings) decay; biases and norm scales do not.
  - `frozen_params`: regexes (full match on '/'-joined parameter paths such as
    'Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel'); matching parameters get
    updates of -0.0 (x + -0.0 == x bitwise, also for x = -0.0) and hold no optimizer state.
  - `lr_multipliers`: ((regex, factor), ...); a parameter's update is multiplied by the
    factor of the first pattern that fully matches its path (the learning rate is applied
    last by every optax optimizer, so this is exactly a factor on its learning rate).

A pattern in `frozen_params` or `lr_multipliers` that matches no parameter is an error
raised by `tx.init(params)`, naming the pattern.
"""

from __future__ import annotations

import inspect
import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import optax

from scenic.common_lib.config_utils import ConfigError, check_keys_against_signature


def decay_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def param_path(path) -> str:
    """'Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel' for a key path."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def get_optimizer(
    optimizer_config: ml_collections.ConfigDict, learning_rate
) -> optax.GradientTransformation:
    """Builds the optax transformation named by `optimizer_config.name`."""
    config = optimizer_config.to_dict()
    name = config.pop("name", None)
    if not name or not hasattr(optax, name) or not callable(getattr(optax, name)):
        raise ConfigError(f"Unknown optimizer.name {name!r}: not an optax optimizer.")
    fn = getattr(optax, name)
    clip = config.pop("grad_clip_norm", None)
    per_example_clip = config.pop("per_example_clip_norm", None)
    if per_example_clip is not None and not (
        isinstance(per_example_clip, int | float) and per_example_clip > 0
    ):
        raise ConfigError(
            f"optimizer.per_example_clip_norm must be a number > 0, got {per_example_clip!r}."
        )
    weight_decay = config.pop("weight_decay", None)
    frozen = _patterns(config.pop("frozen_params", None) or ())
    multipliers = _multipliers(config.pop("lr_multipliers", None) or ())
    check_keys_against_signature(
        ml_collections.ConfigDict(config), fn, "optimizer", exclude=("learning_rate", "mask")
    )
    accepts = inspect.signature(fn).parameters
    chain = []
    if clip:
        chain.append(optax.clip_by_global_norm(clip))
    if weight_decay:
        if "weight_decay" in accepts:
            config["weight_decay"] = weight_decay
            if "mask" in accepts:
                config["mask"] = decay_mask
        else:
            chain.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
    elif "weight_decay" in accepts:
        config["weight_decay"] = 0.0
    chain.append(fn(learning_rate=learning_rate, **config))
    if multipliers:
        chain.append(scale_by_path(multipliers))
    tx = optax.chain(*chain)
    if frozen:
        tx = optax.multi_transform(
            {"trainable": tx, "frozen": negative_zero_updates()},
            lambda params: jax.tree_util.tree_map_with_path(
                lambda path, _: (
                    "trainable" if _first_match(param_path(path), frozen) is None else "frozen"
                ),
                params,
            ),
        )
    if frozen or multipliers:
        patterns = {
            "optimizer.frozen_params": frozen,
            "optimizer.lr_multipliers": [p for p, _ in multipliers],
        }
        tx = _check_patterns_on_init(tx, patterns)
    return tx


def scale_by_path(multipliers) -> optax.GradientTransformation:
    """Multiplies each update by the factor of the first (regex, factor) matching its path."""

    def update_fn(updates, state, params=None):
        del params

        def scale(path, u):
            index = _first_match(param_path(path), [p for p, _ in multipliers])
            return u if index is None else u * jnp.asarray(multipliers[index][1], u.dtype)

        return jax.tree_util.tree_map_with_path(scale, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def negative_zero_updates() -> optax.GradientTransformation:
    """Stateless updates of -0.0: adding them leaves every parameter bitwise unchanged
    (+0.0 updates would turn a -0.0 parameter into +0.0)."""

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: jnp.full_like(u, -0.0), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def _first_match(name: str, patterns) -> int | None:
    for i, pattern in enumerate(patterns):
        if re.fullmatch(pattern, name):
            return i
    return None


def _check_patterns_on_init(tx, patterns: dict[str, list[str]]):
    """Wraps `tx.init` to raise ConfigError for a pattern that matches no parameter."""

    def init_fn(params):
        names = [param_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        for where, group in patterns.items():
            for pattern in group:
                if not any(re.fullmatch(pattern, n) for n in names):
                    shown = ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")
                    raise ConfigError(
                        f"{where} pattern {pattern!r} matches no parameter (full match on "
                        f"'/'-joined paths such as: {shown})."
                    )
        return tx.init(params)

    return tx._replace(init=init_fn)


def _patterns(value) -> list[str]:
    if isinstance(value, str):
        value = (value,)
    patterns = list(value)
    for pattern in patterns:
        _compile(pattern, "optimizer.frozen_params")
    return patterns


def _multipliers(value) -> list[tuple[str, float]]:
    pairs = []
    for item in value:
        if isinstance(item, str) or len(item) != 2:
            raise ConfigError(
                f"optimizer.lr_multipliers entries must be (regex, factor) pairs, got {item!r}."
            )
        pattern, factor = item
        _compile(pattern, "optimizer.lr_multipliers")
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            raise ConfigError(f"optimizer.lr_multipliers factor for {pattern!r} is {factor!r}.")
        if not (math.isfinite(factor) and factor > 0):
            raise ConfigError(
                f"optimizer.lr_multipliers factor for {pattern!r} must be finite and > 0, got "
                f"{factor}; use optimizer.frozen_params to freeze parameters."
            )
        pairs.append((pattern, float(factor)))
    return pairs


def _compile(pattern, where: str) -> None:
    if not isinstance(pattern, str):
        raise ConfigError(f"{where}: pattern {pattern!r} is not a string.")
    try:
        re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{where}: invalid regex {pattern!r}: {e}.") from e
