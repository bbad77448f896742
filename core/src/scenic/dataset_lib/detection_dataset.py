"""COCO-style object detection from TensorFlow Datasets (coco/2017, LVIS, digits_detection).

Reads any TFDS data set with coco/2017's features (`image`, `image/id`, `objects/bbox` in
normalised yxyx, `objects/label`, optionally `objects/is_crowd`, `objects/area`) and, where
present, LVIS's per-image `not_exhaustive_category_ids` and `neg_category_ids`.

Batch format (NumPy; B host batch, S = `image_size`, N = `max_boxes`, C = number of classes):

  inputs:
    image        [B, S, S, 3] float32  pixels in [-1, 1]; the image sits in the top-left
                                       corner of the S x S canvas, the rest is 0.
    padding_mask [B, S, S] float32     1 on image pixels, 0 on canvas padding (a model
                                       input: DETR masks padding out of attention).
  label:
    labels       [B, N] int32          class ids; 0 in padding rows.
    boxes        [B, N, 4] float32     cxcywh, normalised by the canvas size S (so they
                                       address `inputs` directly); 0 in padding rows.
    box_mask     [B, N] float32        1 for a real box, 0 for padding.
    is_crowd     [B, N] bool           COCO crowd annotations (False where the data has none).
    area         [B, N] float32        annotated area in pixels of the original image, as
                                       read (train augmentation does not update it).
    image/id     [B] int64
    orig_size    [B, 2] int32          (height, width) of the original image.
    size         [B, 2] int32          (height, width) of the image inside the canvas.
    not_exhaustive_category_ids, neg_category_ids
                 [B, C] int32          class ids padded with -1; only if the data set has them.
  batch_mask     [B] float32           1 for a real example, 0 for eval padding.

Boxes are clipped to the image; boxes narrower or shorter than `MIN_BOX_SIZE` of the image
(degenerate annotations, or boxes a crop cut away) are dropped, and only the first N kept.
In eval, a box maps back to original pixels as `box * S * orig_size / size` (per axis).

Train: random horizontal flip, scale jitter (the longer side resized to S times a uniform
factor in [min_scale, max_scale]), a random crop of at most S x S, then padding to S x S.
The randomness is a function of (seed, host, position in the host's stream), so
`train_batches(start_step)` is the same stream resumed. Resuming skips `start_step`
batches by reading them, as in `tfds_classification`. Eval: resize the longer side to S,
pad, and pad to full batches with `batch_mask` (every host yields `num_eval_batches`).

`coco_json` makes the same batches from COCO annotation files with these functions
(`clean_objects`, `train_transform`, `eval_transform`, `padded_eval_batches`).
"""

from __future__ import annotations

import functools

import numpy as np

from scenic.dataset_lib import dataset_utils
from scenic.dataset_lib.tfds_classification import load_builder

MIN_BOX_SIZE = 1e-4  # box width / height below this fraction of the image count as empty
OBJECT_KEYS = ("boxes", "labels", "is_crowd", "area")
CATEGORY_LIST_KEYS = ("not_exhaustive_category_ids", "neg_category_ids")


def has_area(boxes):
    """Which normalised yxyx boxes `[n, 4]` have both sides of at least MIN_BOX_SIZE."""
    return (boxes[:, 2] - boxes[:, 0] >= MIN_BOX_SIZE) & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX_SIZE)


def keep_objects(example: dict, keep) -> dict:
    import tensorflow as tf

    return {k: tf.boolean_mask(v, keep) if k in OBJECT_KEYS else v for k, v in example.items()}


def decode_example(example: dict, image_feature) -> dict:
    """TFDS example (image still encoded) -> image (uint8), clipped yxyx boxes, labels, ...

    Images are decoded here, after the shuffle buffer, which so holds encoded images only.
    """
    import tensorflow as tf

    objects = example["objects"]
    boxes = tf.reshape(tf.cast(objects["bbox"], tf.float32), [-1, 4])
    num = tf.shape(boxes)[0]
    image = image_feature.decode_example(example["image"])
    decoded = {
        "image": image,
        "boxes": boxes,
        "labels": tf.cast(objects["label"], tf.int32),
        "is_crowd": tf.cast(objects["is_crowd"], tf.bool)
        if "is_crowd" in objects
        else tf.zeros([num], tf.bool),
        "area": tf.cast(objects["area"], tf.float32)
        if "area" in objects
        else tf.zeros([num], tf.float32),
        "image/id": tf.cast(example["image/id"], tf.int64),
        "orig_size": tf.shape(image)[:2],
    }
    for key in CATEGORY_LIST_KEYS:
        if key in example:
            decoded[key] = tf.cast(example[key], tf.int32)
    return clean_objects(decoded)


def clean_objects(example: dict) -> dict:
    """Clips the normalised yxyx `boxes` to the image and drops the objects without area."""
    import tensorflow as tf

    boxes = tf.clip_by_value(example["boxes"], 0.0, 1.0)
    return keep_objects({**example, "boxes": boxes}, has_area(boxes))


def exclude_labels(example: dict, excluded) -> dict:
    """Drops the objects whose label is in `excluded` (a 1-D int tensor) and removes those
    ids from the per-image category lists, so the excluded classes are never positives nor
    negatives: a federated loss then never trains them (LVIS rare classes, held out to
    measure zero-shot APr)."""
    import tensorflow as tf

    def kept(ids):
        return tf.reduce_all(tf.not_equal(ids[:, None], excluded[None, :]), axis=1)

    example = keep_objects(example, kept(example["labels"]))
    for key in CATEGORY_LIST_KEYS:
        if key in example:
            example[key] = tf.boolean_mask(example[key], kept(example[key]))
    return example


def add_random_negatives(example: dict, total: int, num_classes: int, seed, excluded=()) -> dict:
    """Tops up the image's `neg_category_ids` to `total` ids with classes drawn uniformly
    without replacement (stateless, from `seed`) among those the image does not annotate
    (not a positive, not already a negative, not in `not_exhaustive_category_ids`) and not
    `excluded`. The original OWL-ViT's random negative labels (50 per image): with a
    federated loss, more classes get a negative signal than LVIS verified absent."""
    import tensorflow as tf

    negatives = example["neg_category_ids"]
    taken = tf.concat(
        [
            example["labels"],
            negatives,
            example.get("not_exhaustive_category_ids", tf.zeros([0], tf.int32)),
            tf.constant(excluded, tf.int32, [len(excluded)]),
        ],
        0,
    )
    candidate = tf.tensor_scatter_nd_update(
        tf.ones([num_classes], tf.bool), taken[:, None], tf.zeros_like(taken, tf.bool)
    )
    scores = tf.where(candidate, tf.random.stateless_uniform([num_classes], seed=seed), -1.0)
    count = tf.clip_by_value(
        total - tf.size(negatives), 0, tf.reduce_sum(tf.cast(candidate, tf.int32))
    )
    drawn = tf.math.top_k(scores, k=num_classes).indices[:count]
    return {**example, "neg_category_ids": tf.concat([negatives, drawn], 0)}


def excluded_label_ids(exclude, num_classes: int) -> tuple[int, ...]:
    """`exclude_train_labels` as label ids: a list of ids, or 'lvis_rare' (LVIS v1's 337
    rare classes, `coco_evaluation.LVIS_V1_FREQUENCIES`)."""
    if isinstance(exclude, str):
        from scenic.model_lib.coco_evaluation import LVIS_V1_FREQUENCIES

        if exclude != "lvis_rare":
            raise ValueError(
                f"exclude_train_labels={exclude!r}: expected 'lvis_rare' or a list of label ids."
            )
        if num_classes != len(LVIS_V1_FREQUENCIES):
            raise ValueError(
                f"exclude_train_labels='lvis_rare' needs LVIS v1's {len(LVIS_V1_FREQUENCIES)} "
                f"classes; this data set has {num_classes}."
            )
        return tuple(i for i, group in enumerate(LVIS_V1_FREQUENCIES) if group == "r")
    ids = tuple(int(i) for i in exclude)
    bad = [i for i in ids if not 0 <= i < num_classes]
    if bad:
        raise ValueError(f"exclude_train_labels: label ids {bad} are not in [0, {num_classes}).")
    return ids


def flip_left_right(image, boxes):
    """Mirrors the image and its normalised yxyx boxes (x -> 1 - x)."""
    import tensorflow as tf

    y0, x0, y1, x1 = tf.unstack(boxes, axis=-1)
    return image[:, ::-1], tf.stack([y0, 1.0 - x1, y1, 1.0 - x0], axis=-1)


def resize_longer_side(image, size):
    """Bilinear resize keeping the aspect ratio, longer side to `size` pixels (float32 out).

    Normalised boxes stay valid: they are relative to the image, whatever its size.
    """
    import tensorflow as tf

    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new_hw = tf.cast(tf.round(hw * tf.cast(size, tf.float32) / tf.reduce_max(hw)), tf.int32)
    return tf.image.resize(image, tf.maximum(new_hw, 1), method="bilinear")


def crop(image, boxes, top, left, height, width):
    """Crops `image[top:top+height, left:left+width]` and re-expresses its boxes.

    Boxes (normalised yxyx of the uncropped image) become normalised to the crop, clipped
    to it; also returns which of them keep an area (`has_area`).
    """
    import tensorflow as tf

    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.stack([hw[0], hw[1], hw[0], hw[1]])
    offset = tf.cast(tf.stack([top, left, top, left]), tf.float32)
    size = tf.cast(tf.stack([height, width, height, width]), tf.float32)
    boxes = tf.clip_by_value((boxes * scale - offset) / size, 0.0, 1.0)
    return image[top : top + height, left : left + width], boxes, has_area(boxes)


def pad_to_canvas(image, example: dict, image_size: int, max_boxes: int, num_classes: int):
    """Float image (0..255) inside an S x S canvas; boxes to canvas-normalised cxcywh, padded."""
    import tensorflow as tf

    hw = tf.shape(image)[:2]
    inputs = tf.image.pad_to_bounding_box(image / 127.5 - 1.0, 0, 0, image_size, image_size)
    padding_mask = tf.image.pad_to_bounding_box(
        tf.ones(tf.concat([hw, [1]], 0), tf.float32), 0, 0, image_size, image_size
    )[..., 0]
    fraction = tf.cast(hw, tf.float32) / image_size
    y0, x0, y1, x1 = tf.unstack(example["boxes"] * tf.tile(fraction, [2]), axis=-1)
    boxes = tf.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)
    num = tf.shape(boxes)[0]

    def pad_objects(x, value=0):
        return pad_rows(x, max_boxes, value)

    label = {
        "labels": pad_objects(example["labels"]),
        "boxes": pad_objects(boxes),
        "box_mask": pad_objects(tf.ones([num], tf.float32)),
        "is_crowd": pad_objects(example["is_crowd"], False),
        "area": pad_objects(example["area"]),
        "image/id": example["image/id"],
        "orig_size": tf.cast(example["orig_size"], tf.int32),
        "size": tf.cast(hw, tf.int32),
    }
    for key in CATEGORY_LIST_KEYS:
        if key in example:
            ids = example[key][:num_classes]
            ids = tf.pad(ids, [[0, num_classes - tf.shape(ids)[0]]], constant_values=-1)
            label[key] = tf.ensure_shape(ids, [num_classes])
    return {
        "inputs": {
            "image": tf.ensure_shape(inputs, [image_size, image_size, 3]),
            "padding_mask": tf.ensure_shape(padding_mask, [image_size, image_size]),
        },
        "label": label,
    }


def pad_rows(x, count: int, value=0):
    """The first `count` rows of `x`, padded with `value` to exactly `count`."""
    import tensorflow as tf

    x = x[:count]
    pad = [[0, count - tf.shape(x)[0]]] + [[0, 0]] * (x.shape.rank - 1)
    return tf.ensure_shape(tf.pad(x, pad, constant_values=value), [count, *x.shape[1:]])


def assemble_mosaic(tiles: dict, n: int, image_size: int, max_boxes: int) -> dict:
    """n x n padded examples (`pad_to_canvas`'s layout at tile size t = image_size // n,
    stacked row-major on a leading axis of n * n) -> one example of `image_size`: the tiles
    side by side (the canvas's remaining rows and columns are padding), each tile's boxes
    moved into it, the real objects of all tiles in tile order (the first `max_boxes`), and
    the category lists merged: not exhaustive in any tile; negative in some tile and neither
    a positive nor not exhaustive anywhere in the mosaic. `image/id` and `orig_size` are
    the first tile's, `size` the tiles' extent (n * t). n = 1 returns the example as is.
    """
    import tensorflow as tf

    inputs, label = tiles["inputs"], tiles["label"]
    tile = inputs["image"].shape[1]
    extent = n * tile

    def grid(x):  # [n * n, t, t, ...] -> [S, S, ...]
        rest = list(x.shape[3:])
        x = tf.reshape(x, [n, n, tile, tile, *rest])
        x = tf.transpose(x, [0, 2, 1, 3, *range(4, 4 + len(rest))])
        x = tf.reshape(x, [extent, extent, *rest])
        pad = image_size - extent
        return tf.pad(x, [[0, pad], [0, pad]] + [[0, 0]] * len(rest))

    index = tf.range(n * n)
    offsets = tf.cast(tf.stack([index % n, index // n], axis=1), tf.float32) * tile / image_size
    scale = tile / image_size
    boxes = label["boxes"]
    boxes = tf.concat([boxes[..., :2] * scale + offsets[:, None, :], boxes[..., 2:] * scale], -1)
    real = tf.reshape(label["box_mask"] > 0, [-1])

    def objects(x, value=0):
        flat = tf.reshape(x, [-1, *x.shape[2:]])
        return pad_rows(tf.boolean_mask(flat, real), max_boxes, value)

    merged = {
        "labels": objects(label["labels"]),
        "boxes": objects(boxes),
        "box_mask": objects(label["box_mask"]),
        "is_crowd": objects(label["is_crowd"], False),
        "area": objects(label["area"]),
        "image/id": label["image/id"][0],
        "orig_size": label["orig_size"][0],
        "size": tf.constant([extent, extent], tf.int32),
    }
    if "neg_category_ids" in label or "not_exhaustive_category_ids" in label:
        num_classes = next(label[k] for k in CATEGORY_LIST_KEYS if k in label).shape[-1]

        def present(ids):  # ids [..., k] padded with -1 -> [C] bool: in any row
            ids = tf.reshape(ids, [-1])
            ids = tf.boolean_mask(ids, ids >= 0)
            return tf.scatter_nd(ids[:, None], tf.ones_like(ids), [num_classes]) > 0

        positives = present(tf.where(tf.reshape(real, tf.shape(label["labels"])),
                                     label["labels"], -1))  # fmt: skip
        not_exhaustive = (
            present(label["not_exhaustive_category_ids"])
            if "not_exhaustive_category_ids" in label
            else tf.zeros([num_classes], tf.bool)
        )
        lists = {"not_exhaustive_category_ids": not_exhaustive}
        if "neg_category_ids" in label:
            lists["neg_category_ids"] = (
                present(label["neg_category_ids"]) & ~positives & ~not_exhaustive
            )
        for key, mask in lists.items():
            if key in label:
                ids = tf.cast(tf.where(mask)[:, 0], tf.int32)
                merged[key] = pad_rows(ids, num_classes, -1)
    return {
        "inputs": {
            "image": tf.ensure_shape(grid(inputs["image"]), [image_size, image_size, 3]),
            "padding_mask": tf.ensure_shape(grid(inputs["padding_mask"]), [image_size, image_size]),
        },
        "label": merged,
    }


def check_mosaics(sizes, weights, image_size: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """`mosaic_sizes` (n for n x n mosaics) and `mosaic_weights` (their probabilities, any
    positive scale) checked; ValueError names the bad value."""
    sizes = tuple(int(n) for n in sizes)
    weights = tuple(float(w) for w in (weights if weights is not None else [1.0] * len(sizes)))
    if not sizes or any(not 1 <= n <= image_size for n in sizes) or len(set(sizes)) != len(sizes):
        raise ValueError(
            f"mosaic_sizes={sizes}: expected distinct sizes n in [1, image_size={image_size}]."
        )
    if len(weights) != len(sizes) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(
            f"mosaic_weights={weights}: expected one weight >= 0 per mosaic size {sizes}, "
            "not all zero."
        )
    return sizes, tuple(w / sum(weights) for w in weights)


def input_meta_data(image_size: int) -> dict:
    """`input_shape` and `input_dtype` of the batches `pad_to_canvas` makes."""
    return {
        "input_shape": {
            "image": (-1, image_size, image_size, 3),
            "padding_mask": (-1, image_size, image_size),
        },
        "input_dtype": np.float32,
    }


def train_transform(
    example: dict,
    u,
    *,
    image_size: int,
    max_boxes: int,
    num_classes: int,
    min_scale: float,
    max_scale: float,
    flip: bool,
) -> dict:
    """Train augmentation of a decoded example (`decode_example`'s layout) -> padded example.

    `u` holds 4 uniform numbers in [0, 1) (flip, scale, crop top, crop left), so the caller
    decides where the randomness comes from. Random horizontal flip, the longer side resized
    to `image_size` times a scale in [min_scale, max_scale], a random crop of at most
    `image_size` x `image_size`, then `pad_to_canvas`.
    """
    import tensorflow as tf

    image, boxes = example["image"], example["boxes"]
    if flip:
        image, boxes = tf.cond(
            u[0] < 0.5, lambda: flip_left_right(image, boxes), lambda: (image, boxes)
        )
    scale = min_scale + u[1] * (max_scale - min_scale)
    image = resize_longer_side(image, image_size * scale)
    hw = tf.shape(image)[:2]
    crop_hw = tf.minimum(hw, image_size)
    top_left = tf.cast(tf.floor(u[2:] * tf.cast(hw - crop_hw + 1, tf.float32)), tf.int32)
    top_left = tf.minimum(top_left, hw - crop_hw)
    image, boxes, keep = crop(image, boxes, top_left[0], top_left[1], crop_hw[0], crop_hw[1])
    example = keep_objects({**example, "boxes": boxes}, keep)
    return pad_to_canvas(image, example, image_size, max_boxes, num_classes)


def eval_transform(example: dict, image_size: int, max_boxes: int, num_classes: int) -> dict:
    """A decoded example resized (longer side to `image_size`) onto the canvas, batch_mask 1."""
    import tensorflow as tf

    image = resize_longer_side(example["image"], image_size)
    batch = pad_to_canvas(image, example, image_size, max_boxes, num_classes)
    return {**batch, "batch_mask": tf.constant(1.0, tf.float32)}


def padded_eval_batches(ds, host_batch: int, num_batches: int):
    """NumPy batches of the `eval_transform`ed examples of `ds`, then all-zero examples
    (`batch_mask` 0) up to `num_batches` full batches of `host_batch`."""
    import tensorflow as tf

    padding = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
    padding = tf.data.Dataset.from_tensors(padding).repeat()
    ds = ds.concatenate(padding).take(num_batches * host_batch)
    return ds.batch(host_batch).prefetch(2).as_numpy_iterator()


def tfds_eval_batches(
    builder,
    split: str,
    *,
    num_examples: int,
    process_index: int,
    process_count: int,
    host_batch: int,
    eval_example,
    decoders=None,
    options=None,
):
    """(number of eval batches, `() -> iterator`): this host's even share of `split`, in
    order, each example mapped by `eval_example(example)`, padded to that many full batches
    (the same number on every host) by `padded_eval_batches`."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    num_batches = dataset_utils.num_eval_batches(num_examples, host_batch, process_count)
    host_split = tfds.even_splits(split, process_count, drop_remainder=False)[process_index]
    # Plain TF code without Python control flow on tensors: skip autograph (faster tracing).
    map_fn = tf.autograph.experimental.do_not_convert(eval_example)

    def batches():
        ds = builder.as_dataset(split=host_split, shuffle_files=False, decoders=decoders)
        ds = ds.map(map_fn, num_parallel_calls=tf.data.AUTOTUNE)
        if options is not None:
            ds = ds.with_options(options)
        return padded_eval_batches(ds, host_batch, num_batches)

    return num_batches, batches


def check_shape_args(image_size: int, max_boxes: int, min_scale: float, max_scale: float):
    """Raises ValueError for canvas / box-count / scale-jitter arguments out of range."""
    if image_size < 1 or max_boxes < 1:
        raise ValueError(f"image_size and max_boxes must be >= 1, got {image_size}, {max_boxes}.")
    if not 0 < min_scale <= max_scale:
        raise ValueError(f"Need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}.")


def split_size(info, split: str, tfds_name: str) -> int:
    try:
        return info.splits[split].num_examples
    except KeyError:
        raise ValueError(
            f"TFDS data set {tfds_name!r} has no split {split!r} in its dataset_info.json "
            f"(splits: {', '.join(info.splits.keys()) or 'none'})."
        ) from None


def build_coco_detection(
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    data_dir: str | None = None,
    tfds_name: str = "coco/2017",
    image_size: int,
    max_boxes: int,
    train_split: str = "train",
    eval_split: str = "validation",
    min_scale: float = 0.5,
    max_scale: float = 1.5,
    flip: bool = True,
    shuffle_buffer: int = 1000,
    exclude_train_labels=(),
    random_negatives: int = 0,
    mosaic_sizes=(1,),
    mosaic_weights=None,
    hint: str = "",
) -> dataset_utils.Dataset:
    """Builds the detection pipeline for this host (`process_index` of `process_count`).

    Training examples only (evaluation keeps every class and list as annotated):
    `exclude_train_labels` (label ids, or 'lvis_rare') are removed (`exclude_labels`);
    `random_negatives` > 0 tops up each image's `neg_category_ids` to that many with random
    classes (`add_random_negatives`; needs a data set with LVIS's category lists);
    `mosaic_sizes` (n) with `mosaic_weights` (probabilities; default equal) make each
    training example an n x n mosaic of n * n images, each augmented at the tile size
    `image_size // n` (`assemble_mosaic`; OWL-ViT's (1, 2, 3) with (0.4, 0.3, 0.3)). Each
    size reads its own shuffled stream of the split; which size an example is, is drawn
    from (seed, host, position), so the stream resumes exactly."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    check_shape_args(image_size, max_boxes, min_scale, max_scale)
    builder = load_builder(tfds_name, data_dir, hint)
    info = builder.info
    label_feature = info.features["objects"]["label"]
    num_classes = label_feature.num_classes
    host_batch = dataset_utils.host_batch_size(batch_size, process_count)
    host_eval_batch = dataset_utils.host_batch_size(
        eval_batch_size, process_count, "eval_batch_size"
    )
    excluded = excluded_label_ids(exclude_train_labels, num_classes)
    if random_negatives < 0:
        raise ValueError(f"random_negatives must be >= 0, got {random_negatives}.")
    if random_negatives and "neg_category_ids" not in info.features:
        raise ValueError(
            f"random_negatives={random_negatives} tops up LVIS's per-image "
            f"neg_category_ids, which TFDS data set {tfds_name!r} does not have."
        )
    mosaic_sizes, mosaic_weights = check_mosaics(mosaic_sizes, mosaic_weights, image_size)
    num_train = split_size(info, train_split, tfds_name)
    num_eval = split_size(info, eval_split, tfds_name)
    decoders = {"image": tfds.decode.SkipDecoding()}  # decoded in `decode_example`
    if "segmentation" in info.features["objects"].feature.keys():  # LVIS masks: not needed
        decoders["objects"] = {"segmentation": tfds.decode.SkipDecoding()}

    def decode(example):
        return decode_example(example, info.features["image"])

    def transform(index, example, size: int, stream: int = 0):
        """One augmented example at canvas `size`; `stream` > 0 names a mosaic stream."""
        stream_seed = tf.stack([tf.cast(seed, tf.int64), index * process_count + process_index])
        if stream:
            stream_seed = tf.random.experimental.stateless_fold_in(stream_seed, 10 + stream)
        u = tf.random.stateless_uniform([4], seed=stream_seed)
        decoded = decode(example)
        if excluded:
            decoded = exclude_labels(decoded, tf.constant(excluded, tf.int32))
        if random_negatives:
            negatives_seed = tf.random.experimental.stateless_fold_in(stream_seed, 1)
            decoded = add_random_negatives(
                decoded, random_negatives, num_classes, negatives_seed, excluded
            )
        return train_transform(
            decoded,
            u,
            image_size=size,
            max_boxes=max_boxes,
            num_classes=num_classes,
            min_scale=min_scale,
            max_scale=max_scale,
            flip=flip,
        )

    def examples(train_example, stream_seed):
        return dataset_utils.tfds_train_examples(
            builder,
            train_split,
            seed=stream_seed,
            process_index=process_index,
            process_count=process_count,
            shuffle_buffer=shuffle_buffer,
            train_example=train_example,
            decoders=decoders,
        )

    def mosaics():
        """Examples drawn from one stream per mosaic size (`assemble_mosaic`)."""
        streams = []
        for k, n in enumerate(mosaic_sizes):
            tile_example = functools.partial(transform, size=image_size // n, stream=k + 1)
            assemble = functools.partial(
                assemble_mosaic, n=n, image_size=image_size, max_boxes=max_boxes
            )
            tiles = examples(tile_example, seed + k + 1).batch(n * n, drop_remainder=True)
            streams.append(tiles.map(assemble, num_parallel_calls=tf.data.AUTOTUNE))
        logits = tf.math.log(tf.constant([mosaic_weights], tf.float32))

        def choose(i):
            draw_seed = tf.stack([tf.cast(seed, tf.int64), i * process_count + process_index])
            draw_seed = tf.random.experimental.stateless_fold_in(draw_seed, 2)
            return tf.random.stateless_categorical(logits, 1, seed=draw_seed)[0, 0]

        choices = tf.data.Dataset.range(2**62).map(choose)
        return tf.data.Dataset.choose_from_datasets(streams, choices)

    def train_batches(start_step: int = 0):
        if mosaic_sizes == (1,):
            stream = examples(functools.partial(transform, size=image_size), seed)
        else:
            stream = mosaics()
        return dataset_utils.batched_stream(stream, host_batch, start_step)

    def eval_example(example):
        return eval_transform(decode(example), image_size, max_boxes, num_classes)

    n_eval_batches, eval_batches = tfds_eval_batches(
        builder,
        eval_split,
        num_examples=num_eval,
        process_index=process_index,
        process_count=process_count,
        host_batch=host_eval_batch,
        eval_example=eval_example,
        decoders=decoders,
    )

    meta_data = {
        "num_classes": num_classes,
        "class_names": list(label_feature.names),
        **input_meta_data(image_size),
        "num_train_examples": num_train,
        "num_eval_examples": num_eval,
        "max_boxes": max_boxes,
    }
    return dataset_utils.Dataset(meta_data, train_batches, eval_batches, n_eval_batches)
