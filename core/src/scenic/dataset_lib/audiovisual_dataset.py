"""Audio-visual classification (MBT-style) from SequenceExample TFRecords.

The builder extends the video one: `video_dataset.read_clips` reads the records and makes the
clips, exactly as for `build_video_tfrecord` (same temporal sampling, crops, flips, views and
random keys: the `rgb` of a batch equals the video reader's for the same seed), and this module
adds the spectrogram as an `ExtraModality`: what to parse, the window of each clip, SpecAugment,
and the check of the audio fields.

The audio comes from the same record (layout in core/docs/video_records.md), either
precomputed log-mels (`melspec/feature/floats`) or a raw waveform (`WAVEFORM/feature/floats`)
turned into a log-mel spectrogram here: |STFT| (periodic Hann window) -> mel filterbank
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

from scenic.dataset_lib import record_io, video_dataset
from scenic.dataset_lib.record_io import CorruptRecordsError
from scenic.dataset_lib.write_video_records import MELSPEC_KEY, SAMPLE_RATE_KEY, WAVEFORM_KEY

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
    """A `check(serialized, where, num_classes)` for `record_io.load_records` that also
    checks the audio field the reader will use (None: video only)."""

    def check(serialized, where, num_classes):
        example, name = record_io.check_record(serialized, where, num_classes)
        if audio_feature is None:
            return
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


def audio_features(audio_feature: str, num_mel_bins: int) -> dict:
    """The feature list to parse for `audio_feature`, as `video_ops.parse_video` takes it."""
    import tensorflow as tf

    if audio_feature == "melspec":
        return {MELSPEC_KEY: tf.io.FixedLenSequenceFeature([num_mel_bins], tf.float32)}
    return {WAVEFORM_KEY: tf.io.VarLenFeature(tf.float32)}


def parsed_audio(parsed: dict, audio_feature: str):
    """The parsed `audio_features` -> log-mel [A, bins], or samples [A] (the steps' chunks,
    concatenated)."""
    if audio_feature == "melspec":
        return parsed[MELSPEC_KEY]
    return parsed[WAVEFORM_KEY].values


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
    shift_pixels: int = 0,
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
    video_dataset.check_at_least(
        1,
        num_spec_frames=num_spec_frames,
        num_mel_bins=num_mel_bins,
        sample_rate=sample_rate,
        stft_frame_length=stft_frame_length,
        stft_frame_step=stft_frame_step,
    )
    fft_length = fft_length or 1 << (stft_frame_length - 1).bit_length()
    if fft_length < stft_frame_length:
        raise ValueError(
            f"fft_length must be >= stft_frame_length ({stft_frame_length}), got {fft_length}."
        )
    video_dataset.check_at_least(0, lower_edge_hertz=lower_edge_hertz)
    if upper_edge_hertz <= lower_edge_hertz:
        raise ValueError(
            f"upper_edge_hertz must be > lower_edge_hertz ({lower_edge_hertz}), "
            f"got {upper_edge_hertz}."
        )
    if upper_edge_hertz > sample_rate / 2:
        raise ValueError(
            f"upper_edge_hertz must be <= the Nyquist frequency sample_rate / 2 "
            f"({sample_rate / 2} Hz), got {upper_edge_hertz}."
        )
    video_dataset.check_at_least(
        0,
        spec_time_masks=spec_time_masks,
        spec_time_mask_max=spec_time_mask_max,
        spec_freq_masks=spec_freq_masks,
        spec_freq_mask_max=spec_freq_mask_max,
    )
    clips = video_dataset.ClipArgs(
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
        shift_pixels=shift_pixels,
    )
    spec_shape = (num_spec_frames, num_mel_bins, 1)
    clip_span = (num_frames - 1) * stride + 1
    if audio_feature == "melspec":
        window = num_spec_frames
    else:
        window = (num_spec_frames - 1) * stft_frame_step + stft_frame_length

    def spectrogram(parsed, n, clip_start):
        """log-mel [num_spec_frames, bins, 1] aligned with the clip starting at clip_start."""
        audio = parsed_audio(parsed, audio_feature)
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

    def mask_spectrogram(spec, key):
        """SpecAugment: the masked time and mel bands set to the spectrogram's mean."""
        mask = spec_augment_mask(
            key,
            spec_shape[:2],
            spec_time_masks,
            spec_time_mask_max,
            spec_freq_masks,
            spec_freq_mask_max,
        )
        return tf.where(mask[..., None], tf.reduce_mean(spec), spec)

    with_audio = "spectrogram" in modalities
    audio = video_dataset.ExtraModality(
        name="spectrogram",
        shape=spec_shape,
        features=audio_features(audio_feature, num_mel_bins),
        clip=spectrogram,
        augment=mask_spectrogram if spec_augment else None,
    )
    ds = video_dataset.read_clips(
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
        modalities=modalities,
        extras=[audio] if with_audio else [],
        check=audio_record_check(audio_feature if with_audio else None, num_mel_bins, sample_rate),
    )
    # How a clip becomes model input, so that a trained model can be run on new records or
    # video files exactly as it was evaluated (e.g. `scenic-mbt predict`).
    ds.meta_data["eval_pipeline"] = {
        "reader": "audiovisual_tfrecord",
        "modalities": list(modalities),
        "num_frames": num_frames,
        "stride": stride,
        "image_size": image_size,
        "resize_size": resize_size,
        "channels": channels,
        "audio_feature": audio_feature,
        "num_spec_frames": num_spec_frames,
        "num_mel_bins": num_mel_bins,
        "sample_rate": sample_rate,
        "stft_frame_length": stft_frame_length,
        "stft_frame_step": stft_frame_step,
        "fft_length": fft_length,
        "lower_edge_hertz": lower_edge_hertz,
        "upper_edge_hertz": upper_edge_hertz,
        "log_offset": log_offset,
        "num_test_clips": num_test_clips,
        "num_test_crops": num_test_crops,
        "multi_label": multi_label,
    }
    return ds
