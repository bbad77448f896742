"""What every input pipeline shares: the Dataset contract, deterministic per-host example
order, eval padding with `batch_mask`, and sharding / prefetching host batches to devices.

Batches are dicts of NumPy arrays: `inputs` and `label` (each an array or a dict of arrays)
and `batch_mask` (1 real, 0 padding); see core/docs/batch_contract.md.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from scenic.common_lib import allocator


class DataError(ValueError):
    """Input data that cannot be read as documented (a corrupt record, a broken annotation
    file, an unreadable image). The message names the file and record; the CLI reports it
    in one line with exit code 2, also when it is found in the middle of training."""


@dataclasses.dataclass
class Dataset:
    """A built data set.

    Attributes:
      meta_data: `num_classes`, `input_shape` (one example, with a leading -1 batch axis)
        and `input_dtype` (each a dict of named modalities when `inputs` is a dict),
        `num_train_examples`, `num_eval_examples`, and data-set specifics.
      train_batches: `start_step -> iterator` of this host's training batches, endless;
        batch k of the stream is the same whatever `start_step` it was started from.
      eval_batches: `() -> iterator` over one pass of this host's eval batches, padded to
        full size with `batch_mask`; every host yields `num_eval_batches` of them.
      num_eval_batches: batches per eval pass (identical on every host).
      extra_eval_splits: more named eval splits, `name -> () -> iterator` of padded batches
        like `eval_batches` (e.g. a held-out set beside the test set); the trainer reports
        each split's metrics under its name (`{name}/{metric}`).
    """

    meta_data: dict[str, Any]
    train_batches: Callable[[int], Iterator[dict[str, np.ndarray]]]
    eval_batches: Callable[[], Iterator[dict[str, np.ndarray]]]
    num_eval_batches: int
    extra_eval_splits: dict[str, Callable[[], Iterator[dict[str, np.ndarray]]]] = dataclasses.field(
        default_factory=dict, kw_only=True
    )


def host_batch_size(global_batch_size: int, process_count: int, what: str = "batch_size") -> int:
    if global_batch_size % process_count:
        raise ValueError(
            f"{what}={global_batch_size} must be divisible by the number of hosts "
            f"({process_count})."
        )
    return global_batch_size // process_count


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of the examples in `epoch`: a fixed function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_example_indices(
    step: int,
    *,
    num_examples: int,
    global_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Example indices (and global stream positions) of this host's share of batch `step`.

    The global stream visits a fresh permutation of the examples each epoch; batch `step`
    is positions [step * B, (step + 1) * B) of it and host p takes the p-th contiguous
    slice. So the data order depends only on (seed, step), never on where a run resumed
    or how many devices it has.
    """
    per_host = host_batch_size(global_batch_size, process_count)
    positions = step * global_batch_size + process_index * per_host + np.arange(per_host)
    epochs, offsets = np.divmod(positions, num_examples)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
        chosen = epochs == epoch
        indices[chosen] = epoch_permutation(num_examples, seed, int(epoch))[offsets[chosen]]
    return indices, positions


def tfds_train_batches(
    builder, split: str, *, host_batch: int, start_step: int = 0, options=None, **stream
) -> Iterator[dict]:
    """This host's training batches from a TFDS `builder`: `tfds_train_examples(builder,
    split, **stream)` (seed, process_index, process_count, shuffle_buffer, train_example,
    decoders) batched to `host_batch` and resumed at `start_step` by skipping the batches
    before it."""
    return batched_stream(tfds_train_examples(builder, split, **stream), host_batch, start_step,
                          options)  # fmt: skip


def tfds_train_examples(
    builder,
    split: str,
    *,
    seed: int,
    process_index: int,
    process_count: int,
    shuffle_buffer: int,
    train_example: Callable,
    decoders=None,
):
    """This host's stream of training examples (a `tf.data.Dataset`): its even share of
    `split`, repeated and shuffled (files and a `shuffle_buffer`) by `seed`, each example
    mapped by `train_example(index, example)` (the index seeds per-example randomness)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    host_split = tfds.even_splits(split, process_count, drop_remainder=True)[process_index]
    # The ordering guard refuses shuffled reads of data sets written in a fixed order.
    read_config = tfds.ReadConfig(shuffle_seed=seed, enable_ordering_guard=False)
    ds = builder.as_dataset(
        split=host_split, shuffle_files=True, read_config=read_config, decoders=decoders
    )
    ds = ds.repeat().shuffle(shuffle_buffer, seed=seed)
    map_fn = tf.autograph.experimental.do_not_convert(train_example)
    return ds.enumerate().map(map_fn, num_parallel_calls=tf.data.AUTOTUNE)


def batched_stream(ds, host_batch: int, start_step: int = 0, options=None) -> Iterator[dict]:
    """NumPy batches of `host_batch` from the example stream `ds`, from batch `start_step`
    on (the ones before it are read and skipped, so a resumed run sees the same stream)."""
    ds = ds.batch(host_batch, drop_remainder=True).skip(start_step).prefetch(2)
    return (ds.with_options(options) if options is not None else ds).as_numpy_iterator()


def host_eval_slice(num_examples: int, process_index: int, process_count: int) -> range:
    """The contiguous range of eval examples this host evaluates (hosts differ by <= 1)."""
    start = num_examples * process_index // process_count
    stop = num_examples * (process_index + 1) // process_count
    return range(start, stop)


def num_eval_batches(num_examples: int, host_batch: int, process_count: int) -> int:
    """Batches per eval pass, the same on every host, enough for the largest host slice."""
    largest_slice = math.ceil(num_examples / process_count)
    return max(1, math.ceil(largest_slice / host_batch))


def padded_eval_batches(arrays: dict, host_batch: int, num_batches: int) -> Iterator[dict]:
    """Yields `num_batches` batches of `host_batch` from `arrays` (a dict whose values are
    arrays or dicts of arrays, e.g. modalities, all of one length), zero-padded at the end.

    Adds `batch_mask` (1.0 real, 0.0 padding). Nothing is dropped or repeated.
    """
    num_real = len(jax.tree.leaves(arrays)[0])
    if num_real > host_batch * num_batches:
        raise ValueError(f"{num_real} examples do not fit {num_batches} batches of {host_batch}.")
    for b in range(num_batches):
        lo, hi = b * host_batch, min((b + 1) * host_batch, num_real)
        count = max(hi - lo, 0)

        def chunk(values, lo=lo, count=count):
            out = np.zeros((host_batch, *values.shape[1:]), values.dtype)
            out[:count] = values[lo : lo + count]
            return out

        batch = jax.tree.map(chunk, dict(arrays))
        mask = np.zeros((host_batch,), np.float32)
        mask[:count] = 1.0
        batch["batch_mask"] = mask
        yield batch


def shard(batch: dict, num_devices: int) -> dict:
    """Reshapes every host array `[B, ...]` of a batch (any nesting of dicts) to
    `[num_devices, B / num_devices, ...]` for pmap."""

    def split(x):
        if x.shape[0] % num_devices:
            raise ValueError(
                f"Host batch of {x.shape[0]} does not split over {num_devices} devices."
            )
        return x.reshape(num_devices, x.shape[0] // num_devices, *x.shape[1:])

    return jax.tree.map(split, batch)


def prefetch_to_device(
    iterator: Iterator[dict[str, np.ndarray]], size: int = 2, devices=None, put=None
) -> Iterator[dict[str, jax.Array]]:
    """Shards each host batch over the local devices and keeps `size` batches in flight
    (0 and 1 alike: each batch is transferred when it is asked for).

    Arrays arrive on the devices as `[num_devices, per_device, ...]`, split along the
    leading axis, the layout pmap consumes without another copy; or as `put(batch)` places
    them (a mesh's global batch).
    """
    devices = list(devices or jax.local_devices())
    mesh = jax.sharding.Mesh(np.array(devices), ("devices",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("devices"))

    def to_device(batch):
        if put is not None:
            return put(batch)
        return jax.device_put(shard(batch, len(devices)), sharding)

    queue = collections.deque()
    for batch in itertools.islice(iterator, max(size, 1)):
        queue.append(to_device(batch))
    # The host pipeline has started (and TensorFlow, if it feeds it, has lowered glibc's
    # malloc thresholds): put them back where large per-step buffers stay mapped.
    allocator.pin_malloc_thresholds()
    while queue:
        yield queue.popleft()
        for batch in itertools.islice(iterator, 1):
            queue.append(to_device(batch))


def per_example_uniform(seed: int, positions: np.ndarray, salt: int = 0) -> np.ndarray:
    """Uniform floats in [0, 1), one per stream position, a fixed function of (seed, salt, pos).

    Augmentation randomness keyed by the example's position in the global stream (a
    SplitMix64 hash) is the same on resume and on any device or host layout.
    """
    mask = np.uint64(0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        z = (
            positions.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            + np.uint64(seed & 0xFFFFFFFF) * np.uint64(0xD1B54A32D192ED03)
            + np.uint64(salt) * np.uint64(0x94D049BB133111EB)
        ) & mask
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def write_once(final: str, write: Callable[[str], None], is_complete=os.path.isdir) -> str:
    """Creates the folder `final` with `write(tmp)` into a temporary sibling folder and an
    atomic rename, unless `is_complete(final)` already.

    An interrupted write never leaves a partial data set behind, and when several
    processes generate the same data at once, the first complete copy wins.
    """
    if is_complete(final):
        return final
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=parent)
    try:
        write(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final):  # not another process finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
