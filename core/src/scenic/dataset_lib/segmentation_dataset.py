"""Semantic segmentation from TensorFlow Datasets: oxford_iiit_pet, Cityscapes, and any data
set with an image and an integer mask (the built-in `digits_segmentation` is read here too).

A data set's raw mask values become class ids through its `label_map`; every value the map
leaves out is ignored (Cityscapes' void classes, 255). Ignored pixels, the canvas padding
around an image and the padded examples of eval batches carry a per-pixel `batch_mask` of
0, so they count in neither the loss nor any metric (`SegmentationModel` reads it).

Batch format (NumPy; B host batch, (H, W) = `image_size`, C classes):

  inputs      [B, H, W, 3] float32  pixels in [-1, 1]; the image sits in the top-left corner
                                    of the H x W canvas, the rest is 0.
  label       [B, H, W] int32       class ids in [0, C); 0 wherever `batch_mask` is 0.
  batch_mask  [B, H, W] float32     1 on labelled image pixels, 0 on ignored pixels, canvas
                                    padding and eval padding examples.

Geometry. An image and its mask are resized together (the image bilinearly, the mask by
nearest neighbour) by the largest factor that fits the image inside the H x W canvas,
keeping its aspect ratio. Training multiplies that factor by a uniform random scale in
[`min_scale`, `max_scale`], mirrors both at random (`flip`), takes a random crop of at most
H x W and pads it to H x W. Eval fits and pads. So eval metrics are computed at canvas
resolution on the nearest-neighbour resized mask, not on the original pixels (a canvas of
the data's native size, e.g. Cityscapes' (1024, 2048), evaluates at full resolution).

The randomness is a function of (seed, host, position in the host's stream), so
`train_batches(start_step)` is the same stream resumed; resuming reads the skipped batches,
as in `detection_dataset`. Eval batches are padded to full size (`num_eval_batches` on
every host).

Data sets:
- `oxford_iiit_pet`: the trimap `segmentation_mask` holds 1 (pet), 2 (background) and 3
  (the pet's outline, an uncertain border); they become classes 0, 1, 2 (`PET_CLASSES`),
  as the original Scenic did. Train on `train`, evaluate on `test`.
- `cityscapes` (TFDS `cityscapes/semantic_segmentation`, prepared by hand): the 34 label ids
  of `segmentation_label` map to the 19 train ids of the Cityscapes benchmark
  (`CITYSCAPES_TRAIN_IDS`, cityscapesScripts' `labels.py`); all others are ignored. Train
  on `train`, evaluate on `validation`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from scenic.dataset_lib import dataset_utils

#: Raw mask value of pixels that count nowhere (before the per-pixel `batch_mask`).
IGNORE_LABEL = 255

PET_CLASSES = ("pet", "background", "outline")
PET_LABEL_MAP = {1: 0, 2: 1, 3: 2}

#: Cityscapes label id -> train id (cityscapesScripts `helpers/labels.py`).
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
    "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_MANUAL_HINT = (
    "Cityscapes must be prepared by hand: put leftImg8bit_trainvaltest.zip and "
    "gtFine_trainvaltest.zip (from https://www.cityscapes-dataset.com) in "
    "{data_dir}/downloads/manual/ and run `tfds build cityscapes/semantic_segmentation "
    "--data_dir {data_dir}` (or pass --config.dataset_configs.data_dir=DIR where it is "
    "prepared)."
)


def canvas_size(image_size) -> tuple[int, int]:
    """`image_size` (an int for a square, or (height, width)) as (height, width)."""
    if isinstance(image_size, int | np.integer) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    elif (
        isinstance(image_size, Sequence)
        and not isinstance(image_size, str)
        and len(image_size) == 2
    ):
        size = tuple(int(s) for s in image_size)
    else:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}.")
    if min(size) < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}.")
    return size


def label_table(label_map: Mapping[int, int], num_classes: int) -> np.ndarray:
    """A lookup table [256] int32: raw uint8 mask value -> class id, IGNORE_LABEL elsewhere."""
    table = np.full(256, IGNORE_LABEL, np.int32)
    for raw, class_id in label_map.items():
        if not 0 <= raw < 256 or not 0 <= class_id < num_classes:
            raise ValueError(
                f"label_map entry {raw} -> {class_id} is out of range: raw mask values are "
                f"0..255 and class ids 0..{num_classes - 1}."
            )
        table[raw] = class_id
    return table


def resize_pair(image, label, scale):
    """Image (bilinear, float32 out) and label map [h, w] (nearest) resized by `scale`."""
    import tensorflow as tf

    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new_hw = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), 1)
    image = tf.image.resize(image, new_hw, method="bilinear")
    label = tf.image.resize(label[..., None], new_hw, method="nearest")[..., 0]
    return image, label


def fit_scale(image, canvas):
    """The largest factor that fits `image` inside the (height, width) `canvas`."""
    import tensorflow as tf

    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    return tf.reduce_min(tf.constant(canvas, tf.float32) / hw)


def pad_to_canvas(image, label, canvas) -> dict:
    """Float image (0..255) and label map onto the canvas -> `inputs`, `label`, `batch_mask`."""
    import tensorflow as tf

    hw = tf.shape(image)[:2]
    padding = [[0, canvas[0] - hw[0]], [0, canvas[1] - hw[1]]]
    inputs = tf.pad(image / 127.5 - 1.0, [*padding, [0, 0]])
    label = tf.pad(label, padding, constant_values=IGNORE_LABEL)
    real = label != IGNORE_LABEL
    return {
        "inputs": tf.ensure_shape(inputs, [*canvas, 3]),
        "label": tf.ensure_shape(tf.where(real, label, 0), canvas),
        "batch_mask": tf.ensure_shape(tf.cast(real, tf.float32), canvas),
    }


def train_transform(image, label, u, *, canvas, min_scale, max_scale, flip) -> dict:
    """Train augmentation of a decoded image (uint8 [h, w, 3]) and its class map (int32
    [h, w], IGNORE_LABEL for ignored pixels) -> a padded example.

    `u` holds 4 uniform numbers in [0, 1) (flip, scale, crop top, crop left), so the caller
    decides where the randomness comes from. See the module docstring for the geometry.
    """
    import tensorflow as tf

    scale = fit_scale(image, canvas) * (min_scale + u[1] * (max_scale - min_scale))
    image, label = resize_pair(image, label, scale)
    if flip:
        image, label = tf.cond(
            u[0] < 0.5, lambda: (image[:, ::-1], label[:, ::-1]), lambda: (image, label)
        )
    hw = tf.shape(image)[:2]
    crop_hw = tf.minimum(hw, canvas)
    top_left = tf.cast(tf.floor(u[2:] * tf.cast(hw - crop_hw + 1, tf.float32)), tf.int32)
    top, left = tf.unstack(tf.minimum(top_left, hw - crop_hw))
    image = image[top : top + crop_hw[0], left : left + crop_hw[1]]
    label = label[top : top + crop_hw[0], left : left + crop_hw[1]]
    return pad_to_canvas(image, label, canvas)


def eval_transform(image, label, *, canvas) -> dict:
    """A decoded image and class map fitted into the canvas (no randomness) and padded."""
    image, label = resize_pair(image, label, fit_scale(image, canvas))
    return pad_to_canvas(image, label, canvas)


def check_args(min_scale: float, max_scale: float, shuffle_buffer: int) -> None:
    if not 0 < min_scale <= max_scale:
        raise ValueError(f"Need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}.")
    if shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}.")


def build_tfds_segmentation(
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    data_dir: str | None = None,
    tfds_name: str,
    class_names: Sequence[str],
    label_map: Mapping[int, int],
    image_key: str = "image",
    mask_key: str = "segmentation_mask",
    image_size: int | Sequence[int],
    train_split: str = "train",
    eval_split: str = "validation",
    min_scale: float = 0.5,
    max_scale: float = 2.0,
    flip: bool = True,
    shuffle_buffer: int = 1000,
    hint: str = "",
) -> dataset_utils.Dataset:
    """Builds the segmentation pipeline of TFDS data set `tfds_name` for this host
    (`process_index` of `process_count`); see the module docstring."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from scenic.dataset_lib.detection_dataset import split_size, tfds_eval_batches
    from scenic.dataset_lib.tfds_classification import load_builder

    canvas = canvas_size(image_size)
    check_args(min_scale, max_scale, shuffle_buffer)
    table = tf.constant(label_table(label_map, len(class_names)))
    builder = load_builder(tfds_name, data_dir, hint)
    info = builder.info
    missing = [key for key in (image_key, mask_key) if key not in info.features.keys()]
    if missing:
        raise ValueError(
            f"TFDS data set {tfds_name!r} has no feature {', '.join(map(repr, missing))} "
            f"(features: {', '.join(info.features.keys())})."
        )
    image_feature, mask_feature = info.features[image_key], info.features[mask_key]
    host_batch = dataset_utils.host_batch_size(batch_size, process_count)
    host_eval_batch = dataset_utils.host_batch_size(
        eval_batch_size, process_count, "eval_batch_size"
    )
    num_train = split_size(info, train_split, tfds_name)
    num_eval = split_size(info, eval_split, tfds_name)
    # Decoded after the shuffle buffer, which so holds encoded images only.
    decoders = {image_key: tfds.decode.SkipDecoding(), mask_key: tfds.decode.SkipDecoding()}

    def decode(example):
        image = image_feature.decode_example(example[image_key])
        raw = mask_feature.decode_example(example[mask_key])[..., 0]
        return image, tf.gather(table, tf.cast(raw, tf.int32))

    # Without tf.data's autotuning thread: destroying an iterator waits for that thread's
    # next wake-up, which held processes up to ~50 s at exit here (TF 2.21). Parallel maps
    # then use one call per CPU core.
    options = tf.data.Options()
    options.autotune.enabled = False

    def train_example(index, example):
        stream_seed = tf.stack([tf.cast(seed, tf.int64), index * process_count + process_index])
        u = tf.random.stateless_uniform([4], seed=stream_seed)
        image, label = decode(example)
        return train_transform(
            image, label, u, canvas=canvas, min_scale=min_scale, max_scale=max_scale, flip=flip
        )

    def train_batches(start_step: int = 0):
        return dataset_utils.tfds_train_batches(
            builder,
            train_split,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            shuffle_buffer=shuffle_buffer,
            host_batch=host_batch,
            train_example=train_example,
            start_step=start_step,
            decoders=decoders,
            options=options,
        )

    def eval_example(example):
        image, label = decode(example)
        return eval_transform(image, label, canvas=canvas)

    n_eval_batches, eval_batches = tfds_eval_batches(
        builder,
        eval_split,
        num_examples=num_eval,
        process_index=process_index,
        process_count=process_count,
        host_batch=host_eval_batch,
        eval_example=eval_example,
        decoders=decoders,
        options=options,
    )

    meta_data = {
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "input_shape": (-1, *canvas, 3),
        "input_dtype": np.float32,
        "num_train_examples": num_train,
        "num_eval_examples": num_eval,
    }
    return dataset_utils.Dataset(meta_data, train_batches, eval_batches, n_eval_batches)


def build_oxford_iiit_pet(
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    data_dir: str | None = None,
    image_size: int | Sequence[int] = 128,
    min_scale: float = 0.75,
    max_scale: float = 1.25,
    flip: bool = True,
    shuffle_buffer: int = 1000,
) -> dataset_utils.Dataset:
    """Oxford-IIIT Pet trimaps: pet / background / outline (`PET_CLASSES`); train on
    `train` (3,680 images), evaluate on `test` (3,669)."""
    return build_tfds_segmentation(
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        data_dir=data_dir,
        tfds_name="oxford_iiit_pet",
        class_names=PET_CLASSES,
        label_map=PET_LABEL_MAP,
        image_size=image_size,
        train_split="train",
        eval_split="test",
        min_scale=min_scale,
        max_scale=max_scale,
        flip=flip,
        shuffle_buffer=shuffle_buffer,
    )


def build_cityscapes(
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    data_dir: str | None = None,
    tfds_name: str = "cityscapes/semantic_segmentation",
    image_size: int | Sequence[int] = (512, 1024),
    min_scale: float = 0.5,
    max_scale: float = 2.0,
    flip: bool = True,
    shuffle_buffer: int = 500,
    train_split: str = "train",
    eval_split: str = "validation",
) -> dataset_utils.Dataset:
    """Cityscapes fine annotations with the benchmark's 19 classes (`CITYSCAPES_CLASSES`);
    `image_left` and `segmentation_label` of TFDS's `cityscapes/semantic_segmentation`
    (`tfds_name` may name another data set with those features)."""
    return build_tfds_segmentation(
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        data_dir=data_dir,
        tfds_name=tfds_name,
        class_names=CITYSCAPES_CLASSES,
        label_map=CITYSCAPES_TRAIN_IDS,
        image_key="image_left",
        mask_key="segmentation_label",
        image_size=image_size,
        train_split=train_split,
        eval_split=eval_split,
        min_scale=min_scale,
        max_scale=max_scale,
        flip=flip,
        shuffle_buffer=shuffle_buffer,
        hint=CITYSCAPES_MANUAL_HINT,
    )
