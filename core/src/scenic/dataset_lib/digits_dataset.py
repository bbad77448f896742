"""`digits`: scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes).

Real data that needs no download, for the demo and for tests. The images are upsampled
bilinearly to `image_size` (16x16 by default, 4x4 patches -> 16 tokens); training shifts
each image by up to `shift_pixels` in each direction. The train/test split is stratified
and fixed (independent of the training seed), so accuracies are comparable across runs.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from scenic.dataset_lib import dataset_utils

NUM_CLASSES = 10


@functools.lru_cache(maxsize=4)
def load_split(image_size: int, test_fraction: float):
    """(train_images, train_labels, test_images, test_labels); images in [0, 1], NHWC."""
    import tensorflow as tf
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    if image_size != 8:
        images = tf.image.resize(images, (image_size, image_size), method="bilinear").numpy()
    labels = digits.target.astype(np.int32)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=test_fraction, stratify=labels, random_state=0
    )
    return train_x, train_y, test_x, test_y


def build_digits(
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    image_size: int = 16,
    shift_pixels: int = 1,
    test_fraction: float = 0.2,
    eval_on_train: bool = False,
    channels: int = 1,
    onehot_labels: bool = False,
) -> dataset_utils.Dataset:
    """Builds the digits data set for this host (`process_index` of `process_count`).

    `eval_on_train` adds the (unshifted) training images as an extra eval split, 'train',
    reported beside the test split's metrics as `train/accuracy`, ... `channels=3` repeats
    the gray level into RGB (for a backbone that later reads RGB images, e.g. a detector
    on `digits_detection`). `onehot_labels=True` gives float32 one-hot labels `[B, 10]`, the
    multi-hot targets of a multi-label (sigmoid) model, with one positive class each.
    """
    if image_size < 8:
        raise ValueError(f"digits image_size must be >= 8, got {image_size}.")
    if shift_pixels < 0:
        raise ValueError(f"digits shift_pixels must be >= 0, got {shift_pixels}.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"digits test_fraction must be in (0, 1), got {test_fraction}.")
    if channels not in (1, 3):
        raise ValueError(f"digits channels must be 1 or 3, got {channels}.")
    import tensorflow as tf

    train_x, train_y, test_x, test_y = load_split(image_size, test_fraction)
    if onehot_labels:
        train_y, test_y = (np.eye(NUM_CLASSES, dtype=np.float32)[y] for y in (train_y, test_y))
    host_batch = dataset_utils.host_batch_size(batch_size, process_count)
    host_eval_batch = dataset_utils.host_batch_size(
        eval_batch_size, process_count, "eval_batch_size"
    )
    train_images = tf.constant(train_x)
    train_labels = tf.constant(train_y)

    def index_stream(start_step):
        span = 2 * shift_pixels + 1
        for step in itertools.count(start_step):
            indices, positions = dataset_utils.train_example_indices(
                step,
                num_examples=len(train_y),
                global_batch_size=batch_size,
                seed=seed,
                process_index=process_index,
                process_count=process_count,
            )
            shifts = np.stack(
                [
                    (dataset_utils.per_example_uniform(seed, positions, salt) * span).astype(
                        np.int64
                    )
                    for salt in (1, 2)
                ],
                axis=1,
            )
            yield indices, shifts

    def make_batch(indices, shifts):
        images = tf.gather(train_images, indices)
        images = shift_images(images, shifts, shift_pixels)
        images = tf.repeat(images, channels, axis=-1) if channels > 1 else images
        return {"inputs": normalize(images), "label": tf.gather(train_labels, indices)}

    def train_batches(start_step: int = 0):
        signature = (
            tf.TensorSpec([host_batch], tf.int64),
            tf.TensorSpec([host_batch, 2], tf.int64),
        )
        ds = tf.data.Dataset.from_generator(
            lambda: index_stream(start_step), output_signature=signature
        )
        ds = ds.map(make_batch).prefetch(2)
        options = tf.data.Options()
        options.threading.max_intra_op_parallelism = 1
        return ds.with_options(options).as_numpy_iterator()

    def eval_split(images, labels):
        """(`() -> padded batches` of this host's slice, batches per pass)."""
        host_range = dataset_utils.host_eval_slice(len(labels), process_index, process_count)
        arrays = {
            "inputs": np.repeat(
                normalize(images[host_range.start : host_range.stop]), channels, -1
            ),
            "label": labels[host_range.start : host_range.stop],
        }
        count = dataset_utils.num_eval_batches(len(labels), host_eval_batch, process_count)
        return lambda: dataset_utils.padded_eval_batches(arrays, host_eval_batch, count), count

    eval_batches, n_eval_batches = eval_split(test_x, test_y)
    extra_eval_splits = {"train": eval_split(train_x, train_y)[0]} if eval_on_train else {}

    meta_data = {
        "num_classes": NUM_CLASSES,
        "input_shape": (-1, image_size, image_size, channels),
        "input_dtype": np.float32,
        "num_train_examples": len(train_y),
        "num_eval_examples": len(test_y),
    }
    return dataset_utils.Dataset(
        meta_data, train_batches, eval_batches, n_eval_batches, extra_eval_splits=extra_eval_splits
    )


def normalize(images):
    """[0, 1] pixels -> [-1, 1]."""
    return images * 2.0 - 1.0


def shift_images(images, shifts, max_shift: int):
    """Translates each image by (shifts - max_shift) pixels, filling with background (0)."""
    import tensorflow as tf

    if max_shift == 0:
        return images
    size = images.shape[1]
    padded = tf.pad(images, [[0, 0], [max_shift, max_shift], [max_shift, max_shift], [0, 0]])
    rows = shifts[:, :1] + tf.range(size, dtype=tf.int64)[None]
    cols = shifts[:, 1:] + tf.range(size, dtype=tf.int64)[None]
    images = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(images, cols, axis=2, batch_dims=1)
