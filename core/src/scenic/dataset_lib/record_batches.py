"""Host batches from indexed records: the endless train stream and the padded eval pass.

Apart from the builders because this is where the Dataset contract is kept for any per-record
example function: batch k depends only on (seed, k), host p of P gets the p-th slice of the
global batch, and every host yields the same number of eval batches, padded with
`batch_mask` 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import numpy as np

from scenic.dataset_lib import dataset_utils
from scenic.dataset_lib.record_io import raise_named_errors


def record_train_batches(
    records, example_fn, *, batch_size, seed, process_index, process_count, by_index=False
) -> Callable[[int], Iterator[dict[str, np.ndarray]]]:
    """`start_step -> iterator` of host batches of `example_fn(serialized, position)`, or of
    `example_fn(index, position)` with `by_index` (the record's index, for decoded data).

    Records are taken in `dataset_utils.train_example_indices` order, so batch k depends only
    on (seed, k) and host p of P gets the p-th slice of the global batch.
    """
    import tensorflow as tf

    host_batch = dataset_utils.host_batch_size(batch_size, process_count)

    def stream(start_step):
        for step in itertools.count(start_step):
            indices, positions = dataset_utils.train_example_indices(
                step,
                num_examples=len(records),
                global_batch_size=batch_size,
                seed=seed,
                process_index=process_index,
                process_count=process_count,
            )
            yield (
                (np.asarray(indices, np.int64) if by_index else [records[int(i)] for i in indices]),
                positions,
            )

    def train_batches(start_step: int = 0):
        signature = (
            tf.TensorSpec([host_batch], tf.int64 if by_index else tf.string),
            tf.TensorSpec([host_batch], tf.int64),
        )
        ds = tf.data.Dataset.from_generator(
            lambda: stream(start_step), output_signature=signature
        ).unbatch()
        ds = ds.map(example_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return raise_named_errors(ds.batch(host_batch).prefetch(2).as_numpy_iterator())

    return train_batches


def record_eval_plan(num_records: int, eval_batch_size, process_index, process_count):
    """(this host's record range, host batch size, batches per pass on every host)."""
    host_batch = dataset_utils.host_batch_size(eval_batch_size, process_count, "eval_batch_size")
    host_range = dataset_utils.host_eval_slice(num_records, process_index, process_count)
    return (
        host_range,
        host_batch,
        dataset_utils.num_eval_batches(num_records, host_batch, process_count),
    )


def record_eval_batches(records, host_range, example_fn, padding, host_batch, num_batches):
    """One pass of `example_fn` over `records[host_range]`, then `padding` to fill
    `num_batches` batches of `host_batch` (padding carries batch_mask 0)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_generator(
        lambda: (records[i] for i in host_range),
        output_signature=tf.TensorSpec([], tf.string),
    )
    ds = ds.map(example_fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
    ds = ds.take(num_batches * host_batch).batch(host_batch)
    return raise_named_errors(ds.prefetch(2).as_numpy_iterator())
