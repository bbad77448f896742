"""Orbax checkpoints of the train state, with a shape check before anything is restored.

Orbax writes each checkpoint to a temporary directory and renames it when complete, so
an interrupted write never replaces the last good checkpoint. A checkpoint that cannot be
read (damaged files) is reported by name and left alone: the run stops instead of starting
over or writing over it.
"""

from __future__ import annotations

import contextlib
import pathlib
import sys

import jax
import numpy as np


class CheckpointMismatchError(ValueError):
    """The workdir holds a checkpoint of a differently shaped model."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint in the workdir cannot be read. It is left as it is, never deleted or
    written over: the user decides what to do with it."""


def _path_name(path) -> str:
    """'opt_state/0/mu/head/kernel': the same for a namedtuple and the dict Orbax stores."""
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
    return "/".join(parts)


def _flat(tree) -> dict[str, tuple]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {_path_name(path): tuple(np.shape(leaf)) for path, leaf in flat}


class Checkpointer:
    """Saves and restores train-state dicts under `workdir/checkpoints/<step>`."""

    def __init__(self, workdir: str | pathlib.Path, max_to_keep: int = 3):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_handlers=ocp.StandardCheckpointHandler(),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: dict) -> None:
        self._manager.save(step, args=self._ocp.args.StandardSave(state))
        self._manager.wait_until_finished()

    def restore(self, target: dict, step: int | None = None) -> dict:
        """Restores `step` (default: latest) into the structure and shapes of `target`.

        Raises CheckpointMismatchError naming the differing arrays when the stored tree
        does not match `target`.
        """
        step = self.latest_step() if step is None else step
        with self._unreadable(step):
            stored = self._manager.item_metadata(step)
        stored_shapes = {k: tuple(getattr(v, "shape", ())) for k, v in _flat_meta(stored).items()}
        wanted = _flat(target)
        problems = []
        params_first = lambda key: (not key.startswith("params/"), key)
        for key in sorted(set(stored_shapes) | set(wanted), key=params_first):
            if key not in stored_shapes:
                problems.append(f"{key}: missing in checkpoint, model has {wanted[key]}")
            elif key not in wanted:
                problems.append(f"{key}: in checkpoint {stored_shapes[key]}, not in model")
            elif stored_shapes[key] != wanted[key]:
                problems.append(f"{key}: checkpoint {stored_shapes[key]} != model {wanted[key]}")
        if problems:
            shown = "\n  ".join(problems[:8])
            more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
            raise CheckpointMismatchError(
                f"Checkpoint {self.directory / str(step)} does not match this model "
                f"({len(problems)} differences):\n  {shown}{more}\n"
                "Use a new --workdir for a different model; nothing was overwritten."
            )
        abstract = jax.tree.map(abstract_array, target)
        with self._unreadable(step):
            return self._manager.restore(step, args=self._ocp.args.StandardRestore(abstract))

    @contextlib.contextmanager
    def _unreadable(self, step: int):
        """Any failure to read checkpoint `step` -> one CorruptCheckpointError naming it."""
        try:
            yield
        except CheckpointMismatchError:
            raise
        except Exception as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]
            reason = reason if len(reason) <= 300 else reason[:297] + "..."
            others = [s for s in self._manager.all_steps() if s != step]
            earlier = f" (other checkpoints here: steps {others})" if others else ""
            ignore_late_read_callbacks()
            self.close()  # the run cannot go on
            raise CorruptCheckpointError(
                f"Checkpoint {self.directory / str(step)} cannot be read ({reason}). "
                f"Nothing was deleted or overwritten: move that folder away to resume from an "
                f"earlier checkpoint{earlier}, or use a new --workdir."
            ) from None

    def close(self) -> None:
        self._manager.close()


def abstract_array(x) -> jax.ShapeDtypeStruct:
    """The restore target of one array (or abstract array), always with a sharding: a
    target's own (a sharded state is read shard by shard onto its mesh), else this
    process's first device in a single-process run. Without one Orbax would put the array
    back on the devices that wrote it, which a run on another mesh may not have."""
    sharding = getattr(x, "sharding", None)
    if isinstance(x, jax.Array) and len(x.sharding.device_set) == 1:
        sharding = None  # a host-side copy: placed below like a NumPy array
    if sharding is None and jax.process_count() == 1:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.ShapeDtypeStruct(np.shape(x), np.dtype(x.dtype), sharding=sharding)


def _flat_meta(tree) -> dict:
    flat, _ = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, dict)
    )
    return {_path_name(path): leaf for path, leaf in flat}


def ignore_late_read_callbacks() -> None:
    """After a failed restore, TensorStore reads still in flight call back into Orbax's
    event loop, which the failure already closed; Python would print each as an
    'Exception ignored ... Event loop is closed' traceback under the one-line error. Only
    that RuntimeError is dropped; every other unraisable exception is reported as before."""
    previous = sys.unraisablehook

    def hook(unraisable):
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(unraisable)

    sys.unraisablehook = hook
