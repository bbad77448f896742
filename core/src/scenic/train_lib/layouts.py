"""Where the train state and batches live, and how steps are compiled: `config.parallelism`.

- `PmapLayout` ('pmap', the default): plain data parallelism with `jax.pmap`. Every local
  device holds the whole state; each gets a slice of the host batch; gradients and metrics
  are averaged / summed over the pmap axis.
- `MeshLayout` ('mesh'): `jax.jit` over a (data, fsdp, model) device mesh (`partitioning`).
  Parameters, optimizer state and EMA are sharded by the partition rules, the global batch
  over data x fsdp, and XLA inserts the collectives. The same step functions run with
  `axis_name=None`; the randomness (dropout, mixup) is drawn over the global batch, so it
  differs from the pmap path's per-device draws.

The trainer's loop, evaluation and checkpointing see only this interface, so both modes share
one loop.
"""

from __future__ import annotations

import functools

import jax
import ml_collections
import numpy as np

from scenic.dataset_lib import dataset_utils
from scenic.train_lib import partitioning, steps
from scenic.train_lib.train_state import TrainState, replicate, unreplicate

PARALLELISMS = ("pmap", "mesh")


class PmapLayout:
    """The whole state on every local device; batches `[devices, per_device, ...]`."""

    name = "pmap"

    def place_state(self, state: TrainState) -> TrainState:
        return replicate(state, axis_name=steps.AXIS)

    def restore_target(self, state: TrainState) -> dict:
        """Host copies of the state's arrays (abstract shapes stay as they are)."""
        return jax.tree.map(
            lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else jax.device_get(x),
            state.to_dict(),
        )

    def checkpoint_state(self, state: TrainState) -> dict:
        return unreplicate(state).to_dict()

    def host_state(self, state: TrainState) -> dict:
        return unreplicate(state).to_dict()

    def train_step(self, fn):
        return jax.pmap(
            functools.partial(fn, axis_name=steps.AXIS), axis_name=steps.AXIS, donate_argnums=(0,)
        )

    def eval_step(self, fn):
        return jax.pmap(functools.partial(fn, axis_name=steps.AXIS), axis_name=steps.AXIS)

    def all_finite(self):
        return jax.pmap(steps.all_finite, axis_name=steps.AXIS)

    def device_batches(self, iterator, prefetch: int):
        return dataset_utils.prefetch_to_device(iterator, prefetch)

    def scalar(self, x):
        """A host value of an output that every device holds alike (psum'ed)."""
        return np.asarray(x)[0]

    def host_totals(self, totals):
        return jax.tree.map(lambda x: np.asarray(x[0], np.float64), jax.device_get(totals))

    def host_examples(self, examples) -> dict:
        """Per-example eval outputs of one batch, `[host_batch, ...]` of this host."""
        return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), jax.device_get(examples))

    examples_are_global = False


class MeshLayout:
    """State sharded by partition rules over a (data, fsdp, model) mesh; global batches."""

    name = "mesh"
    examples_are_global = True

    def __init__(self, mesh: jax.sharding.Mesh, rules=None):
        self.mesh = mesh
        self.rules = rules
        self.sizes = dict(mesh.shape)
        self.batch_sharding = partitioning.batch_sharding(mesh)
        self.replicated = partitioning.replicated(mesh)
        self._state_shardings = None

    def state_shardings(self, state: TrainState) -> TrainState:
        """The shardings of `state` (arrays or abstract shapes) under the partition rules;
        ConfigError names a bad rule and the parameter."""
        state_dict = state.to_dict()
        specs = partitioning.param_specs(state_dict["params"], self.sizes, self.rules)
        shardings = partitioning.shardings(self.mesh, partitioning.state_specs(state_dict, specs))
        return TrainState.from_dict(shardings)

    def place_state(self, state: TrainState) -> TrainState:
        self._state_shardings = self.state_shardings(state)
        return jax.tree.map(place, state, self._state_shardings)

    def restore_target(self, state: TrainState) -> dict:
        """Abstract arrays carrying their shardings: Orbax reads each device's shards only,
        whatever mesh the checkpoint was written from."""
        shardings = self.state_shardings(state)
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
            state.to_dict(),
            shardings.to_dict(),
        )

    def checkpoint_state(self, state: TrainState) -> dict:
        return state.to_dict()  # sharded arrays: each process writes its own shards

    def host_state(self, state: TrainState) -> dict:
        return gather_to_host(state.to_dict())

    def train_step(self, fn, state_shardings: TrainState | None = None):
        """`fn` jitted for the state's shardings: those `place_state` gave, or
        `state_shardings` (`state_shardings(...)` of an abstract state, to compile without
        placing one)."""
        state_shardings = state_shardings or self._state_shardings
        if state_shardings is None:
            raise RuntimeError("place_state (or pass state_shardings) before compiling.")
        return jax.jit(
            functools.partial(fn, axis_name=None),
            out_shardings=(state_shardings, self.replicated, self.replicated),
            donate_argnums=(0,),
        )

    def eval_step(self, fn):
        # Per-example outputs come back replicated: every host holds the global batch's.
        return jax.jit(functools.partial(fn, axis_name=None), out_shardings=self.replicated)

    def all_finite(self):
        return jax.jit(steps.all_finite, out_shardings=self.replicated)

    def put_batch(self, batch: dict) -> dict:
        """This host's rows of the global batch -> one global array per leaf."""
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(x)),
            batch,
        )

    def device_batches(self, iterator, prefetch: int):
        return dataset_utils.prefetch_to_device(iterator, prefetch, put=self.put_batch)

    def scalar(self, x):
        return np.asarray(x.addressable_data(0))

    def host_totals(self, totals):
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0), np.float64), totals)

    def host_examples(self, examples) -> dict:
        """Per-example eval outputs of one batch, `[global_batch, ...]` (every host's)."""
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), examples)


def place(x, sharding):
    """`x` (host or single-device) as a global array laid out by `sharding`, built from
    each process's own slices, so it works across hosts (every process holds `x` whole)."""
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def gather_to_host(tree):
    """Host NumPy copies of (possibly sharded, possibly multi-host) arrays."""
    if all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(tree)):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def from_config(config: ml_collections.ConfigDict):
    """The layout `config.parallelism` names (checked by `check_config`)."""
    if config.parallelism == "mesh":
        mesh = partitioning.make_mesh(config.mesh.to_dict())
        return MeshLayout(mesh, tuple(config.partition_rules) or None)
    return PmapLayout()


PMAP = PmapLayout()
