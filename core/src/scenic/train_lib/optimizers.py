"""Optimizers from config: any optax optimizer by name, plus weight decay and clipping.

`config.optimizer.name` names an optax function (`adamw`, `sgd`, `lamb`, ...); every other
key is passed to it by name and checked against its signature, except:
  - `grad_clip_norm`: clip gradients to this global norm first;
  - `weight_decay`: decoupled decay for optimizers that take it (adamw, lamb, ...), else
    added to the gradients (coupled, as in SGD). Only parameters with >= 2 dimensions
    (kernels, embeddings) decay; biases and norm scales do not.
"""

from __future__ import annotations

import inspect

import jax
import ml_collections
import optax

from scenic.common_lib.config_utils import ConfigError, check_keys_against_signature


def decay_mask(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


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
    weight_decay = config.pop("weight_decay", None)
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
    return optax.chain(*chain)
