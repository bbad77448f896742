"""The train state: everything a checkpoint must hold to continue a run exactly."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class TrainState:
    """step, parameters, optimizer state, mutable model state (e.g. batch_stats), the
    base RNG key (raw uint32 data) from which every step's randomness is folded, and the
    exponential moving average of the parameters when the run keeps one."""

    step: jnp.ndarray
    params: Any
    opt_state: Any
    model_state: Any
    rng: jnp.ndarray
    ema_params: Any = None

    def to_dict(self) -> dict:
        d = {
            "step": self.step,
            "params": self.params,
            "opt_state": self.opt_state,
            "model_state": self.model_state,
            "rng": self.rng,
        }
        if self.ema_params is not None:
            d["ema_params"] = self.ema_params
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        return cls(**d)


def replicate(tree, devices=None, axis_name: str = "batch"):
    """Copies every array to each local device, stacked on a leading device axis.

    The mesh axis is named like the pmap axis (`axis_name`): the pmapped step returns its
    outputs on such a mesh, so an input placed the same way is not compiled a second time.
    Each device's copy is transferred from the host: broadcasting on a device would compile
    one small program per distinct array shape.
    """
    devices = list(devices or jax.local_devices())
    mesh = jax.sharding.Mesh(devices, (axis_name,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis_name))

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback((len(devices), *x.shape), sharding, lambda _: x[None])

    return jax.tree.map(put, tree)


def unreplicate(tree):
    """The first device's copy of a replicated tree, as host NumPy arrays (read from that
    device's shard: indexing the array would compile a program per distinct shape)."""

    def first(x):
        if isinstance(x, jax.Array):
            shard = min(x.addressable_shards, key=lambda s: s.index[0].start or 0)
            return np.asarray(shard.data)[0]
        return np.asarray(x)[0]

    return jax.tree.map(first, tree)
