"""Video classification from SequenceExample TFRecords (Kinetics-style, one video a record).

The record layout is in core/docs/video_records.md (written by `write_video_records`). This
module holds the builder, `build_video_tfrecord`, and `read_clips`, the clip-reading core it
shares with `audiovisual_dataset` (which adds its spectrogram as an `ExtraModality`). The TF
ops on one clip are in `video_ops`, record reading in `record_io`, batching in
`record_batches`.

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

Errors: a bad argument raises ValueError naming it, before any file is read. A corrupt or
truncated file raises `CorruptRecordsError` naming the file (in memory: at build time, every
record's checksum and contents are checked; indexed: framing and length checksums at build
time, contents when the record is read).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from scenic.dataset_lib import dataset_utils, record_batches, record_io, video_ops

# Users catch it from here.
from scenic.dataset_lib.record_io import CorruptRecordsError as CorruptRecordsError


@dataclasses.dataclass
class VideoDataset(dataset_utils.Dataset):
    """A `Dataset` with a multi-view eval pass.

    multiview_eval_batches: `() -> iterator` of the same `num_eval_batches` batches as
      `eval_batches`, with `inputs` [B, V, T, H, W, C], V = clips x crops (clip-major), so a
      trainer can average logits over views; padded with `batch_mask`.
    """

    multiview_eval_batches: Callable[[], Iterator[dict[str, np.ndarray]]] = None


def check_at_least(minimum, **values) -> None:
    """Raises ValueError naming the first of `values` (argument name -> value) < minimum."""
    for name, value in values.items():
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class ClipArgs:
    """How clips are taken from a video and augmented: the arguments both builders share,
    checked when made (each error names its argument)."""

    num_frames: int
    stride: int
    image_size: int
    resize_size: int | None  # None or 0: image_size
    channels: int
    train_crop: str
    crop_area_range: tuple[float, float]
    crop_aspect_ratio_range: tuple[float, float]
    random_flip: bool
    num_test_clips: int
    num_test_crops: int
    random_wrap_shift: bool = False
    shift_pixels: int = 0

    def __post_init__(self):
        object.__setattr__(self, "resize_size", self.resize_size or self.image_size)
        check_at_least(0, shift_pixels=self.shift_pixels)
        check_at_least(
            1,
            num_frames=self.num_frames,
            stride=self.stride,
            image_size=self.image_size,
            num_test_clips=self.num_test_clips,
        )
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}.")
        if self.train_crop not in video_ops.TRAIN_CROPS:
            raise ValueError(
                f"train_crop must be one of {video_ops.TRAIN_CROPS}, got {self.train_crop!r}."
            )
        if self.num_test_crops not in (1, 3):
            raise ValueError(f"num_test_crops must be 1 or 3, got {self.num_test_crops!r}.")
        if self.resize_size < self.image_size:
            raise ValueError(
                f"resize_size must be >= image_size ({self.image_size}), got {self.resize_size}."
            )

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """One clip: (T, H, W, C)."""
        return (self.num_frames, self.image_size, self.image_size, self.channels)


@dataclasses.dataclass(frozen=True)
class ExtraModality:
    """A modality read from the same record as the frames and aligned with each clip (the
    audio-visual reader's spectrogram): what `read_clips` needs to know about it.

    features: the feature lists to parse, {key: tf.io feature}.
    clip: `(parsed, num_video_frames, clip_start) -> float [*shape]`, its input for the clip
      of frames starting at `clip_start`; `parsed` maps each of `features` to its values.
    augment: `(train input, key) -> train input`, or None; `key` is the example's key 3.
    """

    name: str
    shape: tuple[int, ...]
    features: dict
    clip: Callable
    augment: Callable | None = None


def read_clips(
    clips: ClipArgs,
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
    train_files: str | Sequence[str],
    eval_files: str | Sequence[str],
    num_classes: int,
    multi_label: bool,
    in_memory: bool,
    with_video_id: bool,
    decode_once: bool = False,
    modalities: Sequence[str] | None = None,
    extras: Sequence[ExtraModality] = (),
    check=record_io.check_record,
) -> VideoDataset:
    """The `VideoDataset` of clips of the records in `train_files` / `eval_files`.

    Checks the remaining arguments, then reads the records (`check` vets each one).
    `modalities`: None, inputs are the frames; else inputs are a dict of these names, 'rgb'
    (the frames, not decoded unless asked for) and the names of `extras`. Random keys of an
    example (`video_ops.example_keys(seed, position, 4)`): 0 clip start, 1 crop, 2 flip,
    3 the wrap shift or the extra modalities' augmentation.
    """
    import tensorflow as tf

    check_at_least(
        1, num_classes=num_classes, batch_size=batch_size, eval_batch_size=eval_batch_size
    )
    dataset_utils.host_batch_size(batch_size, process_count)
    dataset_utils.host_batch_size(eval_batch_size, process_count, "eval_batch_size")
    if decode_once and not in_memory:
        raise ValueError("decode_once=True needs in_memory=True, got in_memory=False.")
    names = ("rgb",) if modalities is None else tuple(modalities)
    if set(names) - {"rgb"} != {m.name for m in extras}:
        raise ValueError(f"modalities {names} need an ExtraModality for each but 'rgb'.")
    num_frames, stride = clips.num_frames, clips.stride
    with_rgb = "rgb" in names
    shapes = {"rgb": clips.shape, **{m.name: m.shape for m in extras}}
    features = {key: f for m in extras for key, f in m.features.items()}

    def pack(inputs: dict):
        return inputs["rgb"] if modalities is None else inputs

    train_records = record_io.read_records(
        train_files, "train_files", num_classes, in_memory, check
    )
    eval_records = record_io.read_records(eval_files, "eval_files", num_classes, in_memory, check)

    def open_video(serialized):
        """-> (number of frames, frames_at(indices, count) -> uint8 [count, H, W, C], label,
        video id, parsed extra features); only the frames asked for are decoded."""
        encoded, labels, video_id, parsed = video_ops.parse_video(serialized, features)

        def frames_at(indices, count):
            return video_ops.decode_frames(tf.gather(encoded, indices), count, clips.channels)

        label = video_ops.label_of(labels, num_classes, multi_label)
        return tf.shape(encoded)[0], frames_at, label, video_id, parsed

    if decode_once:
        decoded = [
            tf.constant(a)
            for a in video_ops.decode_all_frames(
                train_records, clips.channels, num_classes, multi_label
            )
        ]

    def open_decoded(index):
        """`open_video` for the train record at `index`, from the decoded frames."""
        all_frames, offsets, labels = decoded
        first = offsets[index]

        def frames_at(indices, count):
            return tf.gather(all_frames, first + indices)

        return offsets[index + 1] - first, frames_at, labels[index], None, {}

    def train_example(record, position):
        n, frames_at, label, _, parsed = (open_decoded if decode_once else open_video)(record)
        # start, crop, flip, wrap / extras, shift (salts: a new key leaves the others alone)
        keys = video_ops.example_keys(seed, position, 5)
        start = video_ops.random_clip_start(n, num_frames, stride, keys[0])
        inputs = {}
        if with_rgb:
            indices = video_ops.clip_frame_indices(n, num_frames, stride, start)
            frames = video_ops.augment_train_clip(
                frames_at(indices, num_frames),
                keys[1],
                keys[2],
                image_size=clips.image_size,
                resize_size=clips.resize_size,
                train_crop=clips.train_crop,
                crop_area_range=clips.crop_area_range,
                crop_aspect_ratio_range=clips.crop_aspect_ratio_range,
                random_flip=clips.random_flip,
                wrap_shift_key=keys[3] if clips.random_wrap_shift else None,
                shift_key=keys[4],
                shift_pixels=clips.shift_pixels,
            )
            inputs["rgb"] = tf.ensure_shape(frames, clips.shape)
        for m in extras:
            x = m.clip(parsed, n, start)
            inputs[m.name] = m.augment(x, keys[3]) if m.augment else x
        return {"inputs": pack(inputs), "label": label}

    def eval_example(serialized, views):
        """`views` (num_clips, num_crops) -> dict with inputs of a leading view axis
        [num_clips * num_crops], clip-major; None: the centred view, without a view axis."""
        num_clips, num_crops = views or (1, 1)
        n, frames_at, label, video_id, parsed = open_video(serialized)
        starts = video_ops.eval_clip_starts(n, num_frames, stride, num_clips)
        starts = tf.unstack(starts, num_clips)
        inputs = {}
        if with_rgb:
            indices = tf.concat(
                [video_ops.clip_frame_indices(n, num_frames, stride, s) for s in starts], 0
            )
            frames = frames_at(indices, num_clips * num_frames)
            inputs["rgb"] = video_ops.eval_clip_views(
                frames, num_clips, num_crops, clips.shape, clips.resize_size
            )
        for m in extras:  # the crops of one clip share its input
            per_clip = tf.stack([m.clip(parsed, n, s) for s in starts])
            inputs[m.name] = tf.repeat(per_clip, num_crops, axis=0)
        if views is None:
            inputs = {name: x[0] for name, x in inputs.items()}
        out = {"inputs": pack(inputs), "label": label, "batch_mask": 1.0}
        if with_video_id:
            out["video_id"] = video_id
        return out

    host_range, host_eval_batch, n_eval_batches = record_batches.record_eval_plan(
        len(eval_records), eval_batch_size, process_index, process_count
    )

    def padded_eval(views):
        view = () if views is None else (views[0] * views[1],)
        padding = {
            "inputs": pack({m: tf.zeros(view + shapes[m], tf.float32) for m in names}),
            "label": tf.zeros([num_classes], tf.float32) if multi_label else tf.constant(0),
            "batch_mask": tf.constant(0.0),
        }
        if with_video_id:
            padding["video_id"] = tf.constant(b"")
        return record_batches.record_eval_batches(
            eval_records,
            host_range,
            lambda serialized: eval_example(serialized, views),
            padding,
            host_eval_batch,
            n_eval_batches,
        )

    train_batches = record_batches.record_train_batches(
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
        "input_shape": pack({m: (-1, *shapes[m]) for m in names}),
        "input_dtype": np.float32,
        "num_train_examples": len(train_records),
        "num_eval_examples": len(eval_records),
        "num_test_views": clips.num_test_clips * clips.num_test_crops,
        "multi_label": multi_label,
    }
    if modalities is not None:
        meta_data["modalities"] = names
    return VideoDataset(
        meta_data,
        train_batches,
        lambda: padded_eval(None),
        n_eval_batches,
        lambda: padded_eval((clips.num_test_clips, clips.num_test_crops)),
    )


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
    shift_pixels: int = 0,
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
      shift_pixels: translate each train clip by up to this many pixels in each direction
        (uncovered pixels black), after the crop: small centred images such as digits.
      num_test_clips, num_test_crops (1 or 3): views of `multiview_eval_batches`.
      multi_label: `label` is a multi-hot float32 [num_classes] instead of the first index.
      in_memory: hold the records in memory (else read by offset, for data of any size).
      decode_once: decode every train frame once and sample clips from memory (small data
        sets; same batches as decoding each time).
      with_video_id: eval batches carry `video_id` (bytes; b'' for padding).
    """
    clips = ClipArgs(
        num_frames=num_frames,
        stride=stride,
        image_size=image_size,
        resize_size=resize_size,
        channels=channels,
        train_crop=train_crop,
        crop_area_range=crop_area_range,
        crop_aspect_ratio_range=crop_aspect_ratio_range,
        random_flip=random_flip,
        num_test_clips=num_test_clips,
        num_test_crops=num_test_crops,
        random_wrap_shift=random_wrap_shift,
        shift_pixels=shift_pixels,
    )
    return read_clips(
        clips,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        train_files=train_files,
        eval_files=eval_files,
        num_classes=num_classes,
        multi_label=multi_label,
        in_memory=in_memory,
        with_video_id=with_video_id,
        decode_once=decode_once,
    )
