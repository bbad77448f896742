"""Audio-visual classification (MBT-style) from SequenceExample TFRecords.

The video side is `video_dataset`'s, unchanged (same temporal sampling, crops, flips, views
and random keys: the `rgb` of a batch equals `build_video_tfrecord`'s for the same seed). The
audio comes from the same record (layout in core/docs/video_records.md), either precomputed
log-mels (`melspec/feature/floats`) or a raw waveform (`WAVEFORM/feature/floats`) turned
into a log-mel spectrogram here: |STFT| (periodic Hann window) -> mel filterbank
(`tf.signal.linear_to_mel_weight_matrix`, HTK mel scale) -> log(mel + log_offset).

Alignment: audio and video are assumed to span the same time (a record's audio covers its
whole video). A clip of frames [start, start + span) has its centre at the fraction
(start + span / 2) / num_video_frames of the video; the audio window of `num_spec_frames`
spectrogram frames (for a waveform: the samples those frames need) is centred on the same
fraction, shifted to lie inside the audio, and wraps around audio shorter than the window
(as clips wrap around short videos). Multi-view eval aligns each clip's audio to that clip;
the `num_test_crops` spatial views of one clip share its spectrogram.

Train-time SpecAugment: `spec_time_masks` time bands of width uniform in
[0, spec_time_mask_max] and `spec_freq_masks` mel bands of width in [0, spec_freq_mask_max],
each at a uniform position, set to the spectrogram's mean. Its randomness is keyed by (seed,
stream position) like every other augmentation, so batches stay deterministic and
resumable; eval spectrograms are never masked. (No time warping.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scenic.dataset_lib import dataset_utils, video_dataset
from scenic.dataset_lib.video_dataset import CorruptRecordsError
from scenic.dataset_lib.write_video_records import (
    IMAGE_KEY,
    LABEL_INDEX_KEY,
    MELSPEC_KEY,
    SAMPLE_RATE_KEY,
    VIDEO_ID_KEY,
    WAVEFORM_KEY,
)

MODALITIES = ("rgb", "spectrogram")
AUDIO_FEATURES = ("melspec", "waveform")


# --- audio ops ----------------------------------------------------------------------------------


def log_mel_spectrogram(
    waveform,
    *,
    sample_rate: int,
    frame_length: int,
    frame_step: int,
    fft_length: int,
    num_mel_bins: int,
    lower_edge_hertz: float,
    upper_edge_hertz: float,
    log_offset: float,
):
    """float samples [N] -> log-mel [1 + (N - frame_length) // frame_step, num_mel_bins]."""
    import tensorflow as tf

    stft = tf.signal.stft(
        waveform,
        frame_length=frame_length,
        frame_step=frame_step,
        fft_length=fft_length,
        window_fn=tf.signal.hann_window,
        pad_end=False,
    )
    weights = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins, fft_length // 2 + 1, sample_rate, lower_edge_hertz, upper_edge_hertz
    )
    return tf.math.log(tf.matmul(tf.abs(stft), weights) + log_offset)


def aligned_window_start(clip_start, num_video_frames, clip_span: int, audio_len, window: int):
    """First audio index of a `window` centred on the clip's centre (as fractions of the
    video and of the audio), moved inside [0, audio_len - window] where the audio is long
    enough (else 0: the window wraps around)."""
    import tensorflow as tf

    centre = (tf.cast(clip_start, tf.float64) + clip_span / 2) / tf.cast(
        num_video_frames, tf.float64
    )
    start = tf.cast(tf.round(centre * tf.cast(audio_len, tf.float64) - window / 2), tf.int32)
    return tf.clip_by_value(start, 0, tf.maximum(audio_len - window, 0))


def spec_augment_bands(key, size: int, count: int, max_width: int):
    """[count, 2] int32 (start, width): width uniform in [0, min(max_width, size)], start
    uniform in [0, size - width]."""
    import tensorflow as tf

    u = tf.random.stateless_uniform([count, 2], seed=key, dtype=tf.float64)
    max_width = min(max_width, size)
    widths = tf.minimum(tf.floor(u[:, 0] * (max_width + 1)), max_width)
    starts = tf.minimum(tf.floor(u[:, 1] * (size - widths + 1)), size - widths)
    return tf.cast(tf.stack([starts, widths], 1), tf.int32)


def bands_to_mask(bands, size: int):
    """[count, 2] (start, width) -> bool [size], True inside any band."""
    import tensorflow as tf

    r = tf.range(size)[None, :]
    inside = (r >= bands[:, :1]) & (r < bands[:, :1] + bands[:, 1:])
    return tf.reduce_any(inside, axis=0)


def spec_augment_mask(key, shape, time_masks, time_mask_max, freq_masks, freq_mask_max):
    """bool [time, mel bins]: True where SpecAugment masks (union of time and mel bands)."""
    import tensorflow as tf

    time_key, freq_key = (tf.random.experimental.stateless_fold_in(key, s) for s in (0, 1))
    time = bands_to_mask(
        spec_augment_bands(time_key, shape[0], time_masks, time_mask_max), shape[0]
    )
    freq = bands_to_mask(
        spec_augment_bands(freq_key, shape[1], freq_masks, freq_mask_max), shape[1]
    )
    return time[:, None] | freq[None, :]


# --- records ------------------------------------------------------------------------------------


def audio_record_check(audio_feature: str | None, num_mel_bins: int, sample_rate: int):
    """A `check(serialized, where, num_classes)` for `video_dataset.load_records` that also
    checks the audio field the reader will use (None: video only)."""
    import tensorflow as tf

    def check(serialized, where, num_classes):
        video_dataset.check_record(serialized, where, num_classes)
        if audio_feature is None:
            return
        example = tf.train.SequenceExample.FromString(serialized)
        video_id = example.context.feature[VIDEO_ID_KEY].bytes_list.value
        name = f"{where} (video {video_id[0].decode(errors='replace')!r})" if video_id else where
        lists = example.feature_lists.feature_list
        if audio_feature == "melspec":
            steps = lists[MELSPEC_KEY].feature
            sizes = {len(step.float_list.value) for step in steps}
            if not steps or sizes != {num_mel_bins}:
                raise CorruptRecordsError(
                    f"{name}: {MELSPEC_KEY!r} must hold >= 1 steps of num_mel_bins="
                    f"{num_mel_bins} floats, got {len(steps)} steps of sizes {sorted(sizes)}."
                )
        else:
            if not any(step.float_list.value for step in lists[WAVEFORM_KEY].feature):
                raise CorruptRecordsError(f"{name}: no audio samples in {WAVEFORM_KEY!r}.")
            rate = example.context.feature[SAMPLE_RATE_KEY].int64_list.value
            if rate and rate[0] != sample_rate:
                raise CorruptRecordsError(
                    f"{name}: {SAMPLE_RATE_KEY} is {rate[0]} Hz, the reader's sample_rate is "
                    f"{sample_rate} Hz (resample the audio or set sample_rate)."
                )

    return check


def parse_audiovisual(serialized, audio_feature: str | None, num_mel_bins: int):
    """-> (encoded frames [N], label indices [L], video id, audio: log-mel [A, bins] or
    samples [A], or None)."""
    import tensorflow as tf

    sequence_features = {IMAGE_KEY: tf.io.FixedLenSequenceFeature([], tf.string)}
    if audio_feature == "melspec":
        sequence_features[MELSPEC_KEY] = tf.io.FixedLenSequenceFeature([num_mel_bins], tf.float32)
    elif audio_feature == "waveform":
        sequence_features[WAVEFORM_KEY] = tf.io.VarLenFeature(tf.float32)
    context, sequence = tf.io.parse_single_sequence_example(
        serialized,
        context_features={
            VIDEO_ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
            LABEL_INDEX_KEY: tf.io.VarLenFeature(tf.int64),
        },
        sequence_features=sequence_features,
    )
    audio = None
    if audio_feature == "melspec":
        audio = sequence[MELSPEC_KEY]
    elif audio_feature == "waveform":
        audio = sequence[WAVEFORM_KEY].values  # the steps' chunks, concatenated
    labels = tf.sparse.to_dense(context[LABEL_INDEX_KEY])
    return sequence[IMAGE_KEY], labels, context[VIDEO_ID_KEY], audio


# --- the builder --------------------------------------------------------------------------------


def build_audiovisual_tfrecord(
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    train_files: str | Sequence[str],
    eval_files: str | Sequence[str],
    num_classes: int,
    modalities: Sequence[str] = MODALITIES,
    num_frames: int = 8,
    stride: int = 1,
    image_size: int = 224,
    resize_size: int | None = None,
    channels: int = 3,
    train_crop: str = "random_resized",
    crop_area_range: tuple[float, float] = (0.3, 1.0),
    crop_aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
    random_flip: bool = True,
    audio_feature: str = "melspec",
    num_spec_frames: int = 100,
    num_mel_bins: int = 128,
    sample_rate: int = 16000,
    stft_frame_length: int = 400,
    stft_frame_step: int = 160,
    fft_length: int | None = None,
    lower_edge_hertz: float = 125.0,
    upper_edge_hertz: float = 7500.0,
    log_offset: float = 1e-6,
    spec_augment: bool = True,
    spec_time_masks: int = 2,
    spec_time_mask_max: int = 20,
    spec_freq_masks: int = 2,
    spec_freq_mask_max: int = 16,
    num_test_clips: int = 1,
    num_test_crops: int = 1,
    multi_label: bool = False,
    in_memory: bool = True,
    with_video_id: bool = False,
) -> video_dataset.VideoDataset:
    """Builds an audio-visual data set for this host from TFRecord files.

    Batches: {'inputs': {'rgb': [B, T, H, W, C], 'spectrogram': [B, num_spec_frames,
    num_mel_bins, 1]} (the `modalities` asked for), 'label', 'batch_mask'};
    `multiview_eval_batches` adds a view axis after B to every modality.

    Args beyond `video_dataset.build_video_tfrecord`'s (which the video ones match):
      modalities: a non-empty subset of ('rgb', 'spectrogram').
      audio_feature: 'melspec' (records hold log-mels of `num_mel_bins`) or 'waveform'
        (samples at `sample_rate` Hz; a record's WAVEFORM/sample_rate, if set, must match).
      num_spec_frames: spectrogram time steps per clip (for a waveform, STFT frames).
      stft_frame_length, stft_frame_step, fft_length (default: the next power of 2),
        lower_edge_hertz, upper_edge_hertz, log_offset: the waveform's log-mel transform.
      spec_augment, spec_time_masks, spec_time_mask_max, spec_freq_masks,
        spec_freq_mask_max: train-time SpecAugment (masked values set to the mean).
    """
    import tensorflow as tf

    modalities = tuple(modalities)
    if not modalities or len(set(modalities)) != len(modalities) or set(modalities) - {*MODALITIES}:
        raise ValueError(
            f"modalities must be a non-empty subset of {MODALITIES}, got {modalities}."
        )
    if audio_feature not in AUDIO_FEATURES:
        raise ValueError(f"audio_feature must be one of {AUDIO_FEATURES}, got {audio_feature!r}.")
    fft_length = fft_length or 1 << (stft_frame_length - 1).bit_length()
    if min(num_spec_frames, num_mel_bins, stft_frame_length, stft_frame_step) < 1:
        raise ValueError("num_spec_frames, num_mel_bins and the STFT sizes must be >= 1.")
    if fft_length < stft_frame_length or not 0 <= lower_edge_hertz < upper_edge_hertz:
        raise ValueError("Need fft_length >= stft_frame_length, 0 <= lower < upper edge Hz.")
    if upper_edge_hertz > sample_rate / 2:
        raise ValueError(f"upper_edge_hertz {upper_edge_hertz} > Nyquist ({sample_rate / 2} Hz).")
    if min(spec_time_masks, spec_time_mask_max, spec_freq_masks, spec_freq_mask_max) < 0:
        raise ValueError("SpecAugment mask counts and widths must be >= 0.")
    resize_size = resize_size or image_size
    video_dataset.check_clip_args(
        num_frames, stride, image_size, resize_size, channels, train_crop, num_test_clips,
        num_test_crops,
    )  # fmt: skip
    dataset_utils.host_batch_size(batch_size, process_count)
    with_audio = "spectrogram" in modalities
    parsed_audio = audio_feature if with_audio else None
    check = audio_record_check(parsed_audio, num_mel_bins, sample_rate)
    if in_memory:
        read = video_dataset.load_records
    else:
        read = video_dataset.IndexedRecords
    train_records = read(
        video_dataset.resolve_files(train_files, "train_files"), num_classes, check
    )
    eval_records = read(video_dataset.resolve_files(eval_files, "eval_files"), num_classes, check)

    clip_shape = (num_frames, image_size, image_size, channels)
    spec_shape = (num_spec_frames, num_mel_bins, 1)
    clip_span = (num_frames - 1) * stride + 1
    if audio_feature == "melspec":
        window = num_spec_frames
    else:
        window = (num_spec_frames - 1) * stft_frame_step + stft_frame_length

    def audio_clip(audio, n, clip_start):
        """log-mel [num_spec_frames, bins, 1] aligned with the clip starting at clip_start."""
        audio_len = tf.shape(audio)[0]
        start = aligned_window_start(clip_start, n, clip_span, audio_len, window)
        segment = tf.gather(audio, tf.math.floormod(start + tf.range(window), audio_len))
        if audio_feature == "waveform":
            segment = log_mel_spectrogram(
                segment,
                sample_rate=sample_rate,
                frame_length=stft_frame_length,
                frame_step=stft_frame_step,
                fft_length=fft_length,
                num_mel_bins=num_mel_bins,
                lower_edge_hertz=lower_edge_hertz,
                upper_edge_hertz=upper_edge_hertz,
                log_offset=log_offset,
            )
        return tf.ensure_shape(segment[..., None], spec_shape)

    def open_example(serialized):
        encoded, labels, video_id, audio = parse_audiovisual(serialized, parsed_audio, num_mel_bins)
        label = video_dataset.label_of(labels, num_classes, multi_label)
        return encoded, tf.shape(encoded)[0], label, video_id, audio

    def train_example(serialized, position):
        encoded, n, label, _, audio = open_example(serialized)
        keys = video_dataset.example_keys(seed, position, 4)  # 0-2: as the video reader
        start = video_dataset.random_clip_start(n, num_frames, stride, keys[0])
        inputs = {}
        if "rgb" in modalities:
            indices = video_dataset.clip_frame_indices(n, num_frames, stride, start)
            frames = video_dataset.decode_frames(tf.gather(encoded, indices), num_frames, channels)
            frames = video_dataset.augment_train_clip(
                frames,
                keys[1],
                keys[2],
                image_size=image_size,
                resize_size=resize_size,
                train_crop=train_crop,
                crop_area_range=crop_area_range,
                crop_aspect_ratio_range=crop_aspect_ratio_range,
                random_flip=random_flip,
            )
            inputs["rgb"] = tf.ensure_shape(frames, clip_shape)
        if with_audio:
            spec = audio_clip(audio, n, start)
            if spec_augment:
                mask = spec_augment_mask(
                    keys[3],
                    spec_shape[:2],
                    spec_time_masks,
                    spec_time_mask_max,
                    spec_freq_masks,
                    spec_freq_mask_max,
                )
                spec = tf.where(mask[..., None], tf.reduce_mean(spec), spec)
            inputs["spectrogram"] = spec
        return {"inputs": inputs, "label": label}

    def eval_views(serialized, num_clips, num_crops):
        """-> inputs with a leading view axis (num_clips * num_crops, clip-major)."""
        encoded, n, label, video_id, audio = open_example(serialized)
        starts = video_dataset.eval_clip_starts(n, num_frames, stride, num_clips)
        starts = tf.unstack(starts, num_clips)
        inputs = {}
        if "rgb" in modalities:
            indices = tf.concat(
                [video_dataset.clip_frame_indices(n, num_frames, stride, s) for s in starts], 0
            )
            frames = video_dataset.decode_frames(
                tf.gather(encoded, indices), num_clips * num_frames, channels
            )
            inputs["rgb"] = video_dataset.eval_clip_views(
                frames, num_clips, num_crops, clip_shape, resize_size
            )
        if with_audio:
            specs = tf.stack([audio_clip(audio, n, s) for s in starts])
            inputs["spectrogram"] = tf.repeat(specs, num_crops, axis=0)
        out = {"inputs": inputs, "label": label, "batch_mask": 1.0}
        if with_video_id:
            out["video_id"] = video_id
        return out

    host_range, host_eval_batch, n_eval_batches = video_dataset.record_eval_plan(
        len(eval_records), eval_batch_size, process_index, process_count
    )
    shapes = {"rgb": clip_shape, "spectrogram": spec_shape}

    def padded_eval(example_fn, num_views):
        view = (num_views,) if num_views else ()
        padding = {
            "inputs": {m: tf.zeros(view + shapes[m], tf.float32) for m in modalities},
            "label": tf.zeros([num_classes], tf.float32) if multi_label else tf.constant(0),
            "batch_mask": tf.constant(0.0),
        }
        if with_video_id:
            padding["video_id"] = tf.constant(b"")
        return video_dataset.record_eval_batches(
            eval_records, host_range, example_fn, padding, host_eval_batch, n_eval_batches
        )

    def single_view(serialized):
        out = eval_views(serialized, 1, 1)
        out["inputs"] = {m: x[0] for m, x in out["inputs"].items()}
        return out

    def eval_batches():
        return padded_eval(single_view, 0)

    def multiview_eval_batches():
        def views(serialized):
            return eval_views(serialized, num_test_clips, num_test_crops)

        return padded_eval(views, num_test_clips * num_test_crops)

    train_batches = video_dataset.record_train_batches(
        train_records,
        train_example,
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )
    meta_data = {
        "num_classes": num_classes,
        "input_shape": {m: (-1, *shapes[m]) for m in modalities},
        "input_dtype": np.float32,
        "num_train_examples": len(train_records),
        "num_eval_examples": len(eval_records),
        "num_test_views": num_test_clips * num_test_crops,
        "multi_label": multi_label,
        "modalities": modalities,
    }
    return video_dataset.VideoDataset(
        meta_data, train_batches, eval_batches, n_eval_batches, multiview_eval_batches
    )
