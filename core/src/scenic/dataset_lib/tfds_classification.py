"""Image classification from TensorFlow Datasets: imagenet2012, mnist, fashion_mnist, cifar10/100.

Two ways to read a data set, one preprocessing:
- streamed (`imagenet2012`): each host reads an even share (`tfds.even_splits`) of the
  split, shuffled with the run's seed. Resuming skips `start_step` batches of that stream:
  exact, but it reads what it skips (iterator checkpointing is future train_lib work).
- in memory (`in_memory=True`: mnist, fashion_mnist, cifar10, cifar100 fit in a few hundred
  MB): every host loads the split as NumPy once; batch `step` is the slice of a seeded
  permutation given by `dataset_utils.train_example_indices`, and each host takes an even
  share of it. The order depends only on (seed, step), not on the host count, and resuming
  at any step costs nothing.
Augmentation randomness is a stateless function of (seed, example position), so a batch is
the same whatever step a run resumed from.

Train crops: `inception` (random 8%-100% of the area, aspect 3/4-4/3, resized to
`image_size`), `pad` (zero-pad `pad` pixels and crop back to the native size at random, the
CIFAR standard of He et al. 2016) or `none`; then an optional horizontal flip and optional
RandAugment (`randaugment_layers` > 0; see `randaugment.py`). Eval: resize the shorter side
to `resize_size` and crop the central `image_size` square after `inception` training,
native size otherwise; padded to full batches with `batch_mask`. Pixels are scaled to [-1, 1].
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from scenic.dataset_lib import dataset_utils, randaugment

CROPS = ("inception", "pad", "none")
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


def pad_and_random_crop(image, pad: int, seed):
    """Zero-pads `pad` pixels on every side, then crops the original size at random."""
    import tensorflow as tf

    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.stateless_random_crop(padded, tf.shape(image), seed)


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
    train_split: str = "train",
    eval_split: str = "validation",
    crop: str = "inception",
    image_size: int = 224,
    resize_size: int = 256,
    pad: int = 4,
    flip: bool = True,
    randaugment_layers: int = 0,
    randaugment_magnitude: float = 10.0,
    in_memory: bool = False,
    shuffle_buffer: int = 10_000,
    hint: str = "",
) -> dataset_utils.Dataset:
    """Builds TFDS data set `name` (features `image`, `label`) for this host; see the module doc."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    if crop not in CROPS:
        raise ValueError(f"crop must be one of {', '.join(CROPS)}; got {crop!r}.")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}.")
    randaugment.check_settings(randaugment_layers, randaugment_magnitude)
    builder = load_builder(name, data_dir, hint)
    info = builder.info
    native_shape = tuple(info.features["image"].shape)
    if crop == "inception":
        input_shape = (image_size, image_size, 3)
    elif None in native_shape:
        raise ValueError(
            f"crop={crop!r} keeps {name}'s images at their native size, which varies "
            f"({native_shape}); use crop='inception'."
        )
    else:
        input_shape = native_shape
    if in_memory and None in native_shape:
        raise ValueError(f"in_memory needs images of one size; {name}'s are {native_shape}.")
    num_classes = info.features["label"].num_classes
    host_batch = dataset_utils.host_batch_size(batch_size, process_count)
    host_eval_batch = dataset_utils.host_batch_size(
        eval_batch_size, process_count, "eval_batch_size"
    )
    num_train = info.splits[train_split].num_examples
    num_eval = info.splits[eval_split].num_examples
    seed64 = tf.constant(seed, tf.int64)

    def to_float(image):
        return tf.cast(image, tf.float32) / 127.5 - 1.0

    def train_example(position, image, label):
        example_seed = tf.stack([seed64, tf.cast(position, tf.int64)])
        crop_seed, flip_seed, augment_seed = tf.unstack(
            tf.random.experimental.stateless_split(example_seed, 3)
        )
        if crop == "inception":
            if image.shape.rank == 3 and image.shape[-1] is None:
                image = tf.ensure_shape(image, [None, None, 3])
            image = tf.ensure_shape(inception_crop(image, image_size, crop_seed), input_shape)
            if randaugment_layers:
                image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
        elif crop == "pad" and pad:
            image = pad_and_random_crop(image, pad, crop_seed)
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        if randaugment_layers:
            image = randaugment.randaugment(
                image, augment_seed, randaugment_layers, randaugment_magnitude
            )
        return {"inputs": to_float(image), "label": tf.cast(label, tf.int32)}

    def eval_example(image, label):
        if crop == "inception":
            image = resize_and_central_crop(image, resize_size, image_size)
        return {
            "inputs": to_float(image),
            "label": tf.cast(label, tf.int32),
            "batch_mask": tf.constant(1.0, tf.float32),
        }

    @functools.cache
    def load_arrays(split):
        data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
        return data["image"], data["label"]

    def in_memory_train_batches(start_step):
        images, labels = load_arrays(train_split)

        def examples():  # gathered in NumPy: the arrays never enter the tf.data graph
            for step in itertools.count(start_step):
                indices, positions = dataset_utils.train_example_indices(
                    step,
                    num_examples=len(labels),
                    global_batch_size=batch_size,
                    seed=seed,
                    process_index=process_index,
                    process_count=process_count,
                )
                yield positions, images[indices], labels[indices]

        signature = (
            tf.TensorSpec([host_batch], tf.int64),
            tf.TensorSpec([host_batch, *images.shape[1:]], tf.as_dtype(images.dtype)),
            tf.TensorSpec([host_batch], tf.as_dtype(labels.dtype)),
        )
        return tf.data.Dataset.from_generator(examples, output_signature=signature).unbatch()

    def streamed_train_batches(start_step):
        host_split = tfds.even_splits(train_split, process_count, drop_remainder=True)
        ds = builder.as_dataset(
            split=host_split[process_index],
            shuffle_files=True,
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
        ds = ds.repeat().shuffle(shuffle_buffer, seed=seed).enumerate()
        ds = ds.map(lambda index, ex: (index, ex["image"], ex["label"]))
        return ds.skip(start_step * host_batch)

    def train_batches(start_step: int = 0):
        if in_memory:
            ds = in_memory_train_batches(start_step)
        else:
            ds = streamed_train_batches(start_step)
        no_autograph = tf.autograph.experimental.do_not_convert
        ds = ds.map(no_autograph(train_example), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(host_batch, drop_remainder=True)
        return ds.prefetch(tf.data.AUTOTUNE).as_numpy_iterator()

    n_eval_batches = dataset_utils.num_eval_batches(num_eval, host_eval_batch, process_count)

    def eval_examples():
        if in_memory:
            images, labels = load_arrays(eval_split)
            if len(labels) > num_eval:
                raise ValueError(
                    f"{name} {eval_split!r} holds {len(labels)} examples, more than the "
                    f"{num_eval} of its split info: the TFDS metadata is stale."
                )
            host = dataset_utils.host_eval_slice(len(labels), process_index, process_count)
            return tf.data.Dataset.from_tensor_slices(
                (images[host.start : host.stop], labels[host.start : host.stop])
            )
        host_split = tfds.even_splits(eval_split, process_count, drop_remainder=False)
        ds = builder.as_dataset(split=host_split[process_index], shuffle_files=False)
        return ds.map(lambda ex: (ex["image"], ex["label"]))

    def eval_batches():
        ds = eval_examples().map(eval_example, num_parallel_calls=tf.data.AUTOTUNE)
        padding = tf.data.Dataset.from_tensors(
            {
                "inputs": tf.zeros(input_shape, tf.float32),
                "label": tf.constant(0, tf.int32),
                "batch_mask": tf.constant(0.0, tf.float32),
            }
        ).repeat()
        ds = ds.concatenate(padding).take(n_eval_batches * host_eval_batch)
        return ds.batch(host_eval_batch).prefetch(2).as_numpy_iterator()

    meta_data = {
        "num_classes": num_classes,
        "input_shape": (-1, *input_shape),
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
    randaugment_layers: int = 0,
    randaugment_magnitude: float = 10.0,
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
        randaugment_layers=randaugment_layers,
        randaugment_magnitude=randaugment_magnitude,
        shuffle_buffer=shuffle_buffer,
        hint=IMAGENET_MANUAL_HINT,
    )


def _small_image_builder(name: str, crop: str, flip: bool, doc: str):
    """A builder for a small TFDS data set held in memory: train on `train`, eval on `test`."""

    def build(
        *,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        data_dir: str | None = None,
        crop: str = crop,
        pad: int = 4,
        flip: bool = flip,
        randaugment_layers: int = 0,
        randaugment_magnitude: float = 10.0,
    ) -> dataset_utils.Dataset:
        if crop == "inception":
            raise ValueError(f"{name} keeps its native image size: crop must be 'pad' or 'none'.")
        return build_tfds_classification(
            name,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            data_dir=data_dir,
            train_split="train",
            eval_split="test",
            crop=crop,
            pad=pad,
            flip=flip,
            randaugment_layers=randaugment_layers,
            randaugment_magnitude=randaugment_magnitude,
            in_memory=True,
        )

    build.__name__ = build.__qualname__ = f"build_{name}"
    build.__doc__ = doc
    return build


build_mnist = _small_image_builder(
    "mnist", crop="none", flip=False, doc="MNIST digits, 28x28x1, 10 classes; no augmentation."
)
build_fashion_mnist = _small_image_builder(
    "fashion_mnist",
    crop="none",
    flip=False,
    doc="Fashion-MNIST, 28x28x1, 10 classes; no augmentation by default.",
)
build_cifar10 = _small_image_builder(
    "cifar10",
    crop="pad",
    flip=True,
    doc="CIFAR-10, 32x32x3, 10 classes; train: pad-4 random crop and horizontal flip.",
)
build_cifar100 = _small_image_builder(
    "cifar100",
    crop="pad",
    flip=True,
    doc="CIFAR-100 (fine labels), 32x32x3, 100 classes; train: pad-4 random crop and flip.",
)
