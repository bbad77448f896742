"""Video classification from SequenceExample TFRecords (Kinetics-style, one video a record).

The record layout is in core/docs/video_records.md (written by `write_video_records`).

Train: `num_frames` frames `stride` apart from a random start (clips wrap around videos that
are too short), one spatial augmentation for the whole clip — `random_resized` (random area
and aspect ratio), `multi_scale` (TSN-style: a square of 100/87.5/75/66% of the short side at
a corner or the centre) or `none` (like eval) — then a random horizontal flip. Eval: the
centred clip, short side resized to `resize_size`, central `image_size` crop. Multi-view eval
(`VideoDataset.multiview_eval_batches`): `num_test_clips` evenly spaced clips x
`num_test_crops` (1 centre, or 3: start / centre / end of the long side), views clip-major.
Pixels are scaled to [-1, 1].

Determinism: examples are read by index, so batch k depends only on (seed, k): the order
comes from `dataset_utils.train_example_indices` and every random choice from stateless ops
keyed by (seed, the example's position in the global stream). Records are either held in
memory (`in_memory=True`, for data that fits) or read one by one through an offset index
built by scanning the record headers (`in_memory=False`, any size; the same batches). Either
way resuming at step k is exact and costs nothing.

Errors: a corrupt or truncated file raises `CorruptRecordsError` naming the file (in memory:
at build time, every record's checksum and contents are checked; indexed: framing and length
checksums at build time, contents when the record is read).
"""

from __future__ import annotations

import dataclasses
import itertools
import struct
import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from scenic.dataset_lib import dataset_utils
from scenic.dataset_lib.write_video_records import IMAGE_KEY, LABEL_INDEX_KEY, VIDEO_ID_KEY

TRAIN_CROPS = ("random_resized", "multi_scale", "none")
MULTI_SCALES = (1.0, 0.875, 0.75, 0.66)


class CorruptRecordsError(ValueError):
    """A TFRecord file that cannot be read, or a record not in the documented layout."""


@dataclasses.dataclass
class VideoDataset(dataset_utils.Dataset):
    """A `Dataset` with a multi-view eval pass.

    multiview_eval_batches: `() -> iterator` of the same `num_eval_batches` batches as
      `eval_batches`, with `inputs` [B, V, T, H, W, C], V = clips x crops (clip-major), so a
      trainer can average logits over views; padded with `batch_mask`.
    """

    multiview_eval_batches: Callable[[], Iterator[dict[str, np.ndarray]]] = None


# --- reading records by index ---------------------------------------------------------------


def resolve_files(patterns: str | Sequence[str], what: str) -> list[str]:
    import tensorflow as tf

    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    files = []
    for pattern in patterns:
        matched = sorted(tf.io.gfile.glob(pattern))
        if not matched:
            raise FileNotFoundError(f"{what} pattern {pattern!r} matches no files.")
        files.extend(matched)
    return files


def check_record(serialized: bytes, where: str, num_classes: int) -> None:
    """Raises CorruptRecordsError unless `serialized` is a video in the documented layout."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    try:
        example = tf.train.SequenceExample.FromString(serialized)
    except DecodeError as e:
        raise CorruptRecordsError(f"{where}: not a tf.train.SequenceExample ({e}).") from None
    video_id = example.context.feature[VIDEO_ID_KEY].bytes_list.value
    name = f"{where} (video {video_id[0].decode(errors='replace')!r})" if video_id else where
    labels = example.context.feature[LABEL_INDEX_KEY].int64_list.value
    if not labels or min(labels) < 0 or max(labels) >= num_classes:
        raise CorruptRecordsError(
            f"{name}: {LABEL_INDEX_KEY} must hold labels in [0, {num_classes}), got {list(labels)}."
        )
    if not example.feature_lists.feature_list[IMAGE_KEY].feature:
        raise CorruptRecordsError(f"{name}: no frames in feature list {IMAGE_KEY!r}.")


def load_records(files: list[str], num_classes: int, check=check_record) -> list[bytes]:
    """Every record of `files` in memory, checksums and contents checked.

    `check(serialized, where, num_classes)` raises CorruptRecordsError for a record not in
    the layout (`check_record`; the audio-visual reader adds its audio fields).
    """
    import tensorflow as tf

    records = []
    for path in files:
        try:
            batches = tf.data.TFRecordDataset(path).batch(4096).as_numpy_iterator()
            chunk = [record for batch in batches for record in batch]
        except tf.errors.OpError as e:
            raise CorruptRecordsError(
                f"Corrupt or truncated TFRecord file {path}: {e.message}"
            ) from None
        for i, serialized in enumerate(chunk):
            check(serialized, f"{path} record {i}", num_classes)
        records.extend(chunk)
    return records


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
        table.append(n)
    return table


_CRC32C_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum (CRC-32C, rotated and offset); pure Python, for short headers."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class IndexedRecords(Sequence):
    """Records of TFRecord files read one at a time by index, through an offset index.

    Building the index reads each record's 12-byte header (length + its checksum) and seeks
    over the payload, so truncation and broken framing are found at once. The payload's own
    checksum is not verified (that would read everything); a damaged payload is reported,
    naming the file, when the record is read and fails to parse.
    """

    def __init__(self, files: list[str], num_classes: int, check=check_record):
        import tensorflow as tf

        self.files, self.num_classes, self.check, self.index = files, num_classes, check, []
        for f, path in enumerate(files):
            size = tf.io.gfile.stat(path).length
            with tf.io.gfile.GFile(path, "rb") as fh:
                offset = 0
                while offset < size:
                    header = fh.read(12)
                    (length,) = struct.unpack("<Q", header[:8]) if len(header) == 12 else (0,)
                    if len(header) < 12 or struct.unpack("<I", header[8:])[0] != masked_crc32c(
                        header[:8]
                    ):
                        raise CorruptRecordsError(
                            f"Corrupt or truncated TFRecord file {path}: bad record header at "
                            f"byte {offset}."
                        )
                    if offset + 16 + length > size:
                        raise CorruptRecordsError(
                            f"Corrupt or truncated TFRecord file {path}: record at byte "
                            f"{offset} needs {length + 16} bytes, the file ends after "
                            f"{size - offset}."
                        )
                    self.index.append((f, offset + 12, length))
                    offset += 16 + length
                    fh.seek(offset)
        self._handles, self._lock = {}, threading.Lock()  # iterators may share this object

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        import tensorflow as tf

        f, offset, length = self.index[i]
        with self._lock:
            if f not in self._handles:
                self._handles[f] = tf.io.gfile.GFile(self.files[f], "rb")
            fh = self._handles[f]
            fh.seek(offset)
            data = fh.read(length)
        self.check(data, f"{self.files[f]} record at byte {offset - 12}", self.num_classes)
        return data


def raise_named_errors(iterator):
    """Re-raises a CorruptRecordsError that tf.data wrapped (indexed reading) as itself."""
    import tensorflow as tf

    try:
        yield from iterator
    except tf.errors.OpError as e:
        marker = f"{CorruptRecordsError.__name__}: "
        if marker not in e.message:
            raise
        raise CorruptRecordsError(e.message.split(marker, 1)[1].split("\n")[0]) from None


def decode_all_frames(records, channels: int, num_classes: int, multi_label: bool):
    """Every frame of `records` decoded once: (frames uint8 [F, H, W, C], offsets [N + 1] int32
    (video i is frames[offsets[i]:offsets[i + 1]]), labels [N] as `label_of` gives them).

    For small data sets read many times (moving_digits: 47 MB decoded), where decoding JPEGs
    again for every clip would cost more CPU than the model. Every frame must have one size.
    """
    import tensorflow as tf

    def parse(serialized):
        encoded, labels, _ = parse_video(serialized)
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


# --- TF ops on one video ----------------------------------------------------------------------


def parse_video(serialized):
    """-> (encoded frames [N] string, label indices [L] int64, video id string)."""
    import tensorflow as tf

    context, sequence = tf.io.parse_single_sequence_example(
        serialized,
        context_features={
            VIDEO_ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
            LABEL_INDEX_KEY: tf.io.VarLenFeature(tf.int64),
        },
        sequence_features={IMAGE_KEY: tf.io.FixedLenSequenceFeature([], tf.string)},
    )
    labels = tf.sparse.to_dense(context[LABEL_INDEX_KEY])
    return sequence[IMAGE_KEY], labels, context[VIDEO_ID_KEY]


def clip_frame_indices(num_available, num_frames: int, stride: int, start):
    """`num_frames` indices `stride` apart from `start`, wrapping around short videos."""
    import tensorflow as tf

    start = tf.cast(start, tf.int32)
    return tf.math.floormod(start + tf.range(num_frames) * stride, num_available)


def max_clip_start(num_available, num_frames: int, stride: int):
    import tensorflow as tf

    return tf.maximum(num_available - ((num_frames - 1) * stride + 1), 0)


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


# --- pieces shared with the audio-visual reader ---------------------------------------------


def example_keys(seed: int, position, count: int):
    """`count` stateless RNG keys of the example at `position` of the global stream."""
    import tensorflow as tf

    key = tf.stack([tf.cast(seed, tf.int64), position])
    return [tf.random.experimental.stateless_fold_in(key, salt) for salt in range(count)]


def label_of(labels, num_classes: int, multi_label: bool):
    """Label indices [L] -> multi-hot float32 [num_classes], or the first index (int32)."""
    import tensorflow as tf

    if multi_label:
        return tf.reduce_max(tf.one_hot(labels, num_classes, dtype=tf.float32), axis=0)
    return tf.cast(labels[0], tf.int32)


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


def check_clip_args(
    num_frames,
    stride,
    image_size,
    resize_size,
    channels,
    train_crop,
    num_test_clips,
    num_test_crops,
):
    if train_crop not in TRAIN_CROPS:
        raise ValueError(f"train_crop must be one of {TRAIN_CROPS}, got {train_crop!r}.")
    if num_test_crops not in (1, 3):
        raise ValueError(f"num_test_crops must be 1 or 3, got {num_test_crops}.")
    if min(num_frames, stride, num_test_clips) < 1 or channels not in (1, 3):
        raise ValueError("num_frames, stride, num_test_clips must be >= 1; channels 1 or 3.")
    if resize_size < image_size:
        raise ValueError(f"resize_size ({resize_size}) must be >= image_size ({image_size}).")


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
):
    """uint8 [T, H, W, C] -> float [T, S, S, C] in [-1, 1]: one crop and flip for the clip,
    then, given `wrap_shift_key`, one uniform toroidal shift (rows, columns) of the clip."""
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
    if wrap_shift_key is not None:
        shift = tf.random.stateless_uniform(
            [2], seed=wrap_shift_key, maxval=image_size, dtype=tf.int32
        )
        frames = tf.roll(frames, shift, axis=[1, 2])
    return to_float(frames)


def eval_clip_views(frames, num_clips: int, num_crops: int, clip_shape, resize_size: int):
    """uint8 [num_clips * T, H, W, C] -> float views [num_clips * num_crops, T, S, S, C],
    clip-major (view c * num_crops + s)."""
    import tensorflow as tf

    frames = resize_short_side(frames, resize_size)
    crops = spatial_crops(frames, clip_shape[1], num_crops)  # [crops, clips * T, S, S, C]
    crops = tf.reshape(crops, [num_crops, num_clips, *clip_shape])
    return to_float(tf.reshape(tf.transpose(crops, [1, 0, 2, 3, 4, 5]), [-1, *clip_shape]))


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
                np.asarray(indices, np.int64) if by_index else [records[int(i)] for i in indices]
            ), positions

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


# --- the builder --------------------------------------------------------------------------------


def build_video_tfrecord(
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    train_files: str | Sequence[str],
    eval_files: str | Sequence[str],
    num_classes: int,
    num_frames: int = 8,
    stride: int = 1,
    image_size: int = 224,
    resize_size: int | None = None,
    channels: int = 3,
    train_crop: str = "random_resized",
    crop_area_range: tuple[float, float] = (0.3, 1.0),
    crop_aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
    random_flip: bool = True,
    random_wrap_shift: bool = False,
    num_test_clips: int = 1,
    num_test_crops: int = 1,
    multi_label: bool = False,
    in_memory: bool = True,
    decode_once: bool = False,
    with_video_id: bool = False,
) -> VideoDataset:
    """Builds a video classification data set for this host from TFRecord files.

    Args (beyond the Dataset contract's):
      train_files, eval_files: glob pattern(s) of TFRecord files; read in sorted order.
      num_frames, stride: frames per clip and the step between them.
      image_size: output height and width; resize_size: short side before the eval crop
        (default image_size).
      channels: 3 (RGB, Kinetics) or 1 (grayscale).
      train_crop: 'random_resized', 'multi_scale' or 'none'; random_flip: horizontal flip.
      random_wrap_shift: shift each train clip by a uniform random (rows, columns), wrapping
        around the edges; only for videos drawn on a torus, such as moving_digits.
      num_test_clips, num_test_crops (1 or 3): views of `multiview_eval_batches`.
      multi_label: `label` is a multi-hot float32 [num_classes] instead of the first index.
      in_memory: hold the records in memory (else read by offset, for data of any size).
      decode_once: decode every train frame once and sample clips from memory (small data
        sets; same batches as decoding each time).
      with_video_id: eval batches carry `video_id` (bytes; b'' for padding).
    """
    import tensorflow as tf

    resize_size = resize_size or image_size
    check_clip_args(
        num_frames,
        stride,
        image_size,
        resize_size,
        channels,
        train_crop,
        num_test_clips,
        num_test_crops,
    )
    dataset_utils.host_batch_size(batch_size, process_count)
    dataset_utils.host_batch_size(eval_batch_size, process_count, "eval_batch_size")
    if decode_once and not in_memory:
        raise ValueError("decode_once needs in_memory=True.")
    read = load_records if in_memory else IndexedRecords
    train_records = read(resolve_files(train_files, "train_files"), num_classes)
    eval_records = read(resolve_files(eval_files, "eval_files"), num_classes)
    clip_shape = (num_frames, image_size, image_size, channels)

    def open_video(serialized):
        """-> (number of frames, frames_at(indices, count) -> uint8 [count, H, W, C], label,
        video id); only the frames asked for are decoded."""
        encoded, labels, video_id = parse_video(serialized)

        def frames_at(indices, count):
            return decode_frames(tf.gather(encoded, indices), count, channels)

        return tf.shape(encoded)[0], frames_at, label_of(labels, num_classes, multi_label), video_id

    if decode_once:
        decoded = [
            tf.constant(a)
            for a in decode_all_frames(train_records, channels, num_classes, multi_label)
        ]

    def open_decoded(index):
        """`open_video` for the record at `index`, from the decoded frames."""
        all_frames, offsets, labels = decoded
        first = offsets[index]

        def frames_at(indices, count):
            return tf.gather(all_frames, first + indices)

        return offsets[index + 1] - first, frames_at, labels[index], None

    def train_example(record, position):
        n, frames_at, label, _ = (open_decoded if decode_once else open_video)(record)
        keys = example_keys(seed, position, 4)
        start = random_clip_start(n, num_frames, stride, keys[0])
        frames = frames_at(clip_frame_indices(n, num_frames, stride, start), num_frames)
        frames = augment_train_clip(
            frames,
            keys[1],
            keys[2],
            image_size=image_size,
            resize_size=resize_size,
            train_crop=train_crop,
            crop_area_range=crop_area_range,
            crop_aspect_ratio_range=crop_aspect_ratio_range,
            random_flip=random_flip,
            wrap_shift_key=keys[3] if random_wrap_shift else None,
        )
        return {"inputs": tf.ensure_shape(frames, clip_shape), "label": label}

    def eval_views(serialized, num_clips, num_crops):
        """-> dict with inputs [num_clips * num_crops, T, S, S, C], clip-major."""
        n, frames_at, label, video_id = open_video(serialized)
        starts = eval_clip_starts(n, num_frames, stride, num_clips)
        indices = tf.concat(
            [clip_frame_indices(n, num_frames, stride, s) for s in tf.unstack(starts, num_clips)], 0
        )
        frames = frames_at(indices, num_clips * num_frames)
        views = eval_clip_views(frames, num_clips, num_crops, clip_shape, resize_size)
        out = {"inputs": views, "label": label, "batch_mask": 1.0}
        if with_video_id:
            out["video_id"] = video_id
        return out

    host_range, host_eval_batch, n_eval_batches = record_eval_plan(
        len(eval_records), eval_batch_size, process_index, process_count
    )

    def padded_eval(example_fn, inputs_shape):
        padding = {
            "inputs": tf.zeros(inputs_shape, tf.float32),
            "label": tf.zeros([num_classes], tf.float32) if multi_label else tf.constant(0),
            "batch_mask": tf.constant(0.0),
        }
        if with_video_id:
            padding["video_id"] = tf.constant(b"")
        return record_eval_batches(
            eval_records, host_range, example_fn, padding, host_eval_batch, n_eval_batches
        )

    def single_view(serialized):
        out = eval_views(serialized, 1, 1)
        out["inputs"] = out["inputs"][0]
        return out

    def eval_batches():
        return padded_eval(single_view, clip_shape)

    def multiview_eval_batches():
        def views(serialized):
            return eval_views(serialized, num_test_clips, num_test_crops)

        return padded_eval(views, (num_test_clips * num_test_crops, *clip_shape))

    train_batches = record_train_batches(
        train_records,
        train_example,
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        by_index=decode_once,
    )
    meta_data = {
        "num_classes": num_classes,
        "input_shape": (-1, *clip_shape),
        "input_dtype": np.float32,
        "num_train_examples": len(train_records),
        "num_eval_examples": len(eval_records),
        "num_test_views": num_test_clips * num_test_crops,
        "multi_label": multi_label,
    }
    return VideoDataset(
        meta_data, train_batches, eval_batches, n_eval_batches, multiview_eval_batches
    )
