"""TensorFlow ops on one video: parsing its record, choosing clip frames, crops, flips, keys.

Separate from the builders so that the video and the audio-visual reader share one
definition of every sampling and augmentation rule (their `rgb` must be equal bit for bit),
and so that each rule can be tested on its own. Every random choice is a stateless op keyed
by `example_keys(seed, position, ...)`, which is what makes batches deterministic.
"""

from __future__ import annotations

import numpy as np

from scenic.dataset_lib.write_video_records import IMAGE_KEY, LABEL_INDEX_KEY, VIDEO_ID_KEY

TRAIN_CROPS = ("random_resized", "multi_scale", "none")
MULTI_SCALES = (1.0, 0.875, 0.75, 0.66)


# --- a record -----------------------------------------------------------------------------------


def parse_video(serialized, extra_features=None):
    """-> (encoded frames [N] string, label indices [L] int64, video id string, extras).

    `extra_features`: more feature lists to parse ({key: tf.io feature}, e.g. the audio);
    `extras` maps each of their keys to its parsed value ({} without them).
    """
    import tensorflow as tf

    context, sequence = tf.io.parse_single_sequence_example(
        serialized,
        context_features={
            VIDEO_ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
            LABEL_INDEX_KEY: tf.io.VarLenFeature(tf.int64),
        },
        sequence_features={
            IMAGE_KEY: tf.io.FixedLenSequenceFeature([], tf.string),
            **(extra_features or {}),
        },
    )
    labels = tf.sparse.to_dense(context[LABEL_INDEX_KEY])
    extras = {key: sequence[key] for key in extra_features or {}}
    return sequence[IMAGE_KEY], labels, context[VIDEO_ID_KEY], extras


def label_of(labels, num_classes: int, multi_label: bool):
    """Label indices [L] -> multi-hot float32 [num_classes], or the first index (int32)."""
    import tensorflow as tf

    if multi_label:
        return tf.reduce_max(tf.one_hot(labels, num_classes, dtype=tf.float32), axis=0)
    return tf.cast(labels[0], tf.int32)


def decode_frames(encoded, num: int, channels: int):
    """JPEG (or PNG) strings [num] -> uint8 [num, H, W, channels].

    Unrolled over the static `num` frames: ~2.5x faster than tf.map_fn on small frames.
    """
    import tensorflow as tf

    return tf.stack(
        [
            tf.io.decode_image(encoded[i], channels=channels, expand_animations=False)
            for i in range(num)
        ]
    )


def decode_all_frames(records, channels: int, num_classes: int, multi_label: bool):
    """Every frame of `records` decoded once: (frames uint8 [F, H, W, C], offsets [N + 1] int32
    (video i is frames[offsets[i]:offsets[i + 1]]), labels [N] as `label_of` gives them).

    For small data sets read many times (moving_digits: 47 MB decoded), where decoding JPEGs
    again for every clip would cost more CPU than the model. Every frame must have one size.
    """
    import tensorflow as tf

    def parse(serialized):
        encoded, labels, _, _ = parse_video(serialized)
        return tf.shape(encoded)[0], label_of(labels, num_classes, multi_label)

    def decode(serialized, count):
        encoded = parse_video(serialized)[0]
        if count:  # every video has `count` frames: unrolled, ~5x faster on small frames
            return decode_frames(encoded, count, channels)
        return tf.map_fn(
            lambda frame: tf.io.decode_image(frame, channels=channels, expand_animations=False),
            encoded,
            fn_output_signature=tf.uint8,
        )

    def batched(ds):  # whole batches cross into Python: per-element iteration is slow
        return list(ds.batch(512).as_numpy_iterator())

    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    source = tf.data.Dataset.from_tensor_slices(tf.constant(records, tf.string))
    counts, labels = map(np.concatenate, zip(*batched(source.map(parse, **parallel))))
    count = int(counts[0]) if len(set(counts.tolist())) == 1 else None
    videos = source.map(lambda serialized: decode(serialized, count), **parallel)
    try:
        frames = np.concatenate(batched(videos if count else videos.unbatch()))
    except tf.errors.InvalidArgumentError as e:
        raise ValueError(f"decode_once needs frames of one size: {e.message}") from None
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return frames.reshape(-1, *frames.shape[-3:]), offsets, labels


# --- which frames -------------------------------------------------------------------------------


def example_keys(seed: int, position, count: int):
    """`count` stateless RNG keys of the example at `position` of the global stream."""
    import tensorflow as tf

    key = tf.stack([tf.cast(seed, tf.int64), position])
    return [tf.random.experimental.stateless_fold_in(key, salt) for salt in range(count)]


def clip_frame_indices(num_available, num_frames: int, stride: int, start):
    """`num_frames` indices `stride` apart from `start`, wrapping around short videos."""
    import tensorflow as tf

    start = tf.cast(start, tf.int32)
    return tf.math.floormod(start + tf.range(num_frames) * stride, num_available)


def max_clip_start(num_available, num_frames: int, stride: int):
    import tensorflow as tf

    return tf.maximum(num_available - ((num_frames - 1) * stride + 1), 0)


def random_clip_start(num_available, num_frames: int, stride: int, key):
    """A train clip start, uniform in [0, max_clip_start]."""
    import tensorflow as tf

    u = tf.random.stateless_uniform([], seed=key)
    max_start = max_clip_start(num_available, num_frames, stride)
    return tf.minimum(tf.cast(u * tf.cast(max_start + 1, tf.float32), tf.int32), max_start)


def eval_clip_starts(num_available, num_frames: int, stride: int, num_clips: int):
    """[num_clips] starts: the centred one, or `num_clips` evenly spaced over the range."""
    import tensorflow as tf

    max_start = max_clip_start(num_available, num_frames, stride)
    if num_clips == 1:
        return tf.reshape(max_start // 2, [1])
    starts = tf.linspace(0.0, tf.cast(max_start, tf.float32), num_clips)
    return tf.cast(tf.round(starts), tf.int32)


# --- pixels -------------------------------------------------------------------------------------


def resize_short_side(frames, size: int):
    import tensorflow as tf

    shape = tf.cast(tf.shape(frames)[1:3], tf.float32)
    new_shape = tf.cast(tf.round(shape * (size / tf.reduce_min(shape))), tf.int32)
    return tf.image.resize(frames, tf.maximum(new_shape, size), method="bilinear")


def spatial_crops(frames, size: int, num_crops: int):
    """[T, H, W, C] (short side >= size) -> [num_crops, T, size, size, C].

    One crop: the centre. Three: start, centre and end of the long side, centred across it.
    """
    import tensorflow as tf

    height, width = tf.shape(frames)[1], tf.shape(frames)[2]
    center_y, center_x = (height - size) // 2, (width - size) // 2
    if num_crops == 1:
        offsets = [(center_y, center_x)]
    else:
        landscape = width >= height
        offsets = [
            (
                tf.where(landscape, center_y, along * (height - size) // 2),
                tf.where(landscape, along * (width - size) // 2, center_x),
            )
            for along in range(3)
        ]
    return tf.stack([frames[:, y : y + size, x : x + size] for y, x in offsets])


def random_resized_crop(frames, size: int, key, area_range, aspect_ratio_range):
    """One random box (area and aspect ratio ranges) for all frames, resized to `size`."""
    import tensorflow as tf

    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(frames)[1:],
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=key,
        area_range=area_range,
        aspect_ratio_range=aspect_ratio_range,
        min_object_covered=0.0,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(frames, tf.concat([[0], begin], 0), tf.concat([[-1], crop_size], 0))
    return tf.image.resize(crop, (size, size), method="bilinear")


def multi_scale_crop(frames, size: int, key):
    """A square of a random MULTI_SCALES fraction of the short side, at a corner or centre."""
    import tensorflow as tf

    u = tf.random.stateless_uniform([2], seed=key)
    height, width = tf.shape(frames)[1], tf.shape(frames)[2]
    scales = tf.constant(MULTI_SCALES, tf.float32)
    scale = scales[tf.cast(u[0] * len(MULTI_SCALES), tf.int32)]
    side = tf.cast(tf.cast(tf.minimum(height, width), tf.float32) * scale, tf.int32)
    spots = tf.constant([[0, 0], [0, 2], [2, 0], [2, 2], [1, 1]], tf.int32)  # halves of slack
    spot = spots[tf.cast(u[1] * 5, tf.int32)]
    y, x = spot[0] * (height - side) // 2, spot[1] * (width - side) // 2
    crop = frames[:, y : y + side, x : x + side]
    return tf.image.resize(crop, (size, size), method="bilinear")


def to_float(frames):
    import tensorflow as tf

    return tf.cast(frames, tf.float32) / 127.5 - 1.0


def augment_train_clip(
    frames,
    crop_key,
    flip_key,
    *,
    image_size: int,
    resize_size: int,
    train_crop: str,
    crop_area_range,
    crop_aspect_ratio_range,
    random_flip: bool,
    wrap_shift_key=None,
    shift_key=None,
    shift_pixels: int = 0,
):
    """uint8 [T, H, W, C] -> float [T, S, S, C] in [-1, 1]: one crop and flip for the clip,
    then, given `shift_key`, one translation of the clip by (rows, columns) each uniform in
    [-shift_pixels, shift_pixels] (uncovered pixels black), and given `wrap_shift_key`, one
    uniform toroidal shift (rows, columns) of the clip."""
    import tensorflow as tf

    if train_crop == "random_resized":
        frames = random_resized_crop(
            frames, image_size, crop_key, crop_area_range, crop_aspect_ratio_range
        )
    elif train_crop == "multi_scale":
        frames = multi_scale_crop(frames, image_size, crop_key)
    else:
        frames = spatial_crops(resize_short_side(frames, resize_size), image_size, 1)[0]
    if random_flip:
        flip = tf.random.stateless_uniform([], seed=flip_key) < 0.5
        frames = tf.cond(flip, lambda: tf.reverse(frames, [2]), lambda: frames)
    if shift_key is not None and shift_pixels:
        frames = random_translate(frames, shift_key, shift_pixels)
    if wrap_shift_key is not None:
        shift = tf.random.stateless_uniform(
            [2], seed=wrap_shift_key, maxval=image_size, dtype=tf.int32
        )
        frames = tf.roll(frames, shift, axis=[1, 2])
    return to_float(frames)


def random_translate(frames, key, pixels: int):
    """[T, H, W, C] shifted by (rows, columns) each uniform in [-pixels, pixels], the same for
    every frame; pixels moved in from outside are 0 (the small-shift augmentation that
    makes small ViTs generalise on digits, as `digits_dataset.shift_pixels`)."""
    import tensorflow as tf

    height, width = tf.shape(frames)[1], tf.shape(frames)[2]
    offset = tf.random.stateless_uniform([2], seed=key, maxval=2 * pixels + 1, dtype=tf.int32)
    padded = tf.pad(frames, [[0, 0], [pixels, pixels], [pixels, pixels], [0, 0]])
    moved = tf.slice(padded, [0, offset[0], offset[1], 0], [-1, height, width, -1])
    return tf.ensure_shape(moved, frames.shape)


def eval_clip_views(frames, num_clips: int, num_crops: int, clip_shape, resize_size: int):
    """uint8 [num_clips * T, H, W, C] -> float views [num_clips * num_crops, T, S, S, C],
    clip-major (view c * num_crops + s)."""
    import tensorflow as tf

    frames = resize_short_side(frames, resize_size)
    crops = spatial_crops(frames, clip_shape[1], num_crops)  # [crops, clips * T, S, S, C]
    crops = tf.reshape(crops, [num_crops, num_clips, *clip_shape])
    return to_float(tf.reshape(tf.transpose(crops, [1, 0, 2, 3, 4, 5]), [-1, *clip_shape]))
