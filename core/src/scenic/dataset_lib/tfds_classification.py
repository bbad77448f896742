"""Image classification from TensorFlow Datasets (first: `imagenet2012`).

Train: inception crop (random area 8%-100%, aspect 3/4-4/3) to `image_size`, random
horizontal flip, shuffled with the run's seed. Eval: resize the shorter side to
`resize_size`, central crop `image_size`, padded to full batches with `batch_mask`.
Pixels are scaled to [-1, 1]. Each host reads an even share of each split.

Resuming skips `start_step` batches of the (seeded) stream: exact, but it reads what it
skips; iterator checkpointing that avoids the re-read is future train_lib work.
"""

from __future__ import annotations

import numpy as np

from scenic.dataset_lib import dataset_utils

IMAGENET_MANUAL_HINT = (
    "imagenet2012 must be prepared by hand: put ILSVRC2012_img_train.tar and "
    "ILSVRC2012_img_val.tar in {data_dir}/downloads/manual/ and run "
    "`tfds build imagenet2012 --data_dir {data_dir}` (or pass "
    "--config.dataset_configs.data_dir=DIR where it is prepared)."
)


class DatasetNotPreparedError(FileNotFoundError):
    """The data set's files are not where TFDS looks for them."""


def load_builder(name: str, data_dir: str | None, hint: str = ""):
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        where = builder.data_dir
        root = data_dir or str(tfds.core.constants.DATA_DIR)
        raise DatasetNotPreparedError(
            f"TFDS data set {name!r} is not prepared at {where}. "
            + (hint.format(data_dir=root) if hint else f"Run `tfds build {name}` first.")
        )
    return builder


def inception_crop(image, size: int, seed):
    """A random crop of 8%-100% of the area, aspect ratio 3/4-4/3, resized to `size`."""
    import tensorflow as tf

    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=seed,
        area_range=(0.08, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3),
        min_object_covered=0.0,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, crop_size)
    return tf.image.resize(crop, (size, size), method="bilinear")


def resize_and_central_crop(image, resize_size: int, size: int):
    """Resizes the shorter side to `resize_size`, then crops the central `size` square."""
    import tensorflow as tf

    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize_size / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, new_shape, method="bilinear")
    top = (new_shape[0] - size) // 2
    left = (new_shape[1] - size) // 2
    return tf.image.crop_to_bounding_box(image, top, left, size, size)


def build_tfds_classification(
    name: str,
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    data_dir: str | None = None,
    image_size: int = 224,
    resize_size: int = 256,
    train_split: str = "train",
    eval_split: str = "validation",
    shuffle_buffer: int = 10_000,
    hint: str = "",
) -> dataset_utils.Dataset:
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = load_builder(name, data_dir, hint)
    info = builder.info
    num_classes = info.features["label"].num_classes
    host_batch = dataset_utils.host_batch_size(batch_size, process_count)
    host_eval_batch = dataset_utils.host_batch_size(
        eval_batch_size, process_count, "eval_batch_size"
    )
    num_train = info.splits[train_split].num_examples
    num_eval = info.splits[eval_split].num_examples
    host_train_split = tfds.even_splits(train_split, process_count, drop_remainder=True)[
        process_index
    ]
    host_eval_split = tfds.even_splits(eval_split, process_count, drop_remainder=False)[
        process_index
    ]

    def to_float(image):
        return tf.cast(image, tf.float32) / 127.5 - 1.0

    def train_example(index, example):
        crop_seed = tf.stack([tf.cast(seed, tf.int64), index])
        image = example["image"]
        if image.shape.rank == 3 and image.shape[-1] is None:
            image = tf.ensure_shape(image, [None, None, 3])
        image = inception_crop(image, image_size, crop_seed)
        image = tf.image.stateless_random_flip_left_right(image, crop_seed + 1)
        return {"inputs": to_float(image), "label": tf.cast(example["label"], tf.int32)}

    def train_batches(start_step: int = 0):
        read_config = tfds.ReadConfig(shuffle_seed=seed)
        ds = builder.as_dataset(
            split=host_train_split, shuffle_files=True, read_config=read_config
        )
        ds = ds.repeat().shuffle(shuffle_buffer, seed=seed)
        ds = ds.enumerate().map(train_example, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(host_batch, drop_remainder=True).skip(start_step)
        return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()

    n_eval_batches = dataset_utils.num_eval_batches(num_eval, host_eval_batch, process_count)

    def eval_example(example):
        image = resize_and_central_crop(example["image"], resize_size, image_size)
        return {
            "inputs": to_float(image),
            "label": tf.cast(example["label"], tf.int32),
            "batch_mask": tf.constant(1.0, tf.float32),
        }

    def eval_batches():
        ds = builder.as_dataset(split=host_eval_split, shuffle_files=False)
        ds = ds.map(eval_example, num_parallel_calls=tf.data.AUTOTUNE)
        padding = tf.data.Dataset.from_tensors(
            {
                "inputs": tf.zeros((image_size, image_size, 3), tf.float32),
                "label": tf.constant(0, tf.int32),
                "batch_mask": tf.constant(0.0, tf.float32),
            }
        ).repeat()
        ds = ds.concatenate(padding).take(n_eval_batches * host_eval_batch)
        return ds.batch(host_eval_batch).prefetch(2).as_numpy_iterator()

    meta_data = {
        "num_classes": num_classes,
        "input_shape": (-1, image_size, image_size, 3),
        "input_dtype": np.float32,
        "num_train_examples": num_train,
        "num_eval_examples": num_eval,
    }
    return dataset_utils.Dataset(meta_data, train_batches, eval_batches, n_eval_batches)


def build_imagenet2012(
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    data_dir: str | None = None,
    image_size: int = 224,
    resize_size: int = 256,
    shuffle_buffer: int = 250_000,
) -> dataset_utils.Dataset:
    """ImageNet-1k (ILSVRC 2012): train on `train`, evaluate on `validation`."""
    return build_tfds_classification(
        "imagenet2012",
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        data_dir=data_dir,
        image_size=image_size,
        resize_size=resize_size,
        shuffle_buffer=shuffle_buffer,
        hint=IMAGENET_MANUAL_HINT,
    )
