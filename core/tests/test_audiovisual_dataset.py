"""Audio-visual TFRecords: audio written in the documented layout and read back through
`audiovisual_dataset` (log-mel against a NumPy float64 reference, alignment with the frames,
SpecAugment, multi-label, 2-host eval, damaged files); the writer's audio; the built-in
`audiovisual_digits` and the property it is built for."""

import os
import re
import wave

import numpy as np
import pytest

from scenic.dataset_lib import audiovisual_dataset as avds
from scenic.dataset_lib import audiovisual_digits as avd
from scenic.dataset_lib import video_dataset, video_ops
from scenic.dataset_lib import write_video_records as wvr

BINS = 4


def frame_pixels(video: int, t: int, size: int = 16) -> np.ndarray:
    """uint8 [size, size, 3]: G encodes the frame index, B the video."""
    frame = np.empty((size, size, 3), np.uint8)
    frame[..., 0] = 128
    frame[..., 1] = 10 * t + 5
    frame[..., 2] = 20 * video + 5
    return frame


def frame_index(clip: np.ndarray) -> np.ndarray:
    return np.round(((clip[..., 1] + 1.0) * 127.5).mean(axis=(-1, -2)) / 10 - 0.5).astype(int)


def video_index(clip: np.ndarray) -> int:
    return int(np.round(((clip[..., 2] + 1.0) * 127.5).mean() / 20 - 0.25))


def melspec(video: int, steps: int) -> np.ndarray:
    """[steps, BINS]: value = 1000 * video + step + bin / 8 (exact in float32)."""
    return 1000.0 * video + np.arange(steps)[:, None] + np.arange(BINS)[None, :] / 8


def make_examples(lengths, audio_steps, labels=None):
    return [
        {
            "video_id": f"vid{v}",
            "frames": np.stack([frame_pixels(v, t) for t in range(n)]),
            "labels": v % 5 if labels is None else labels[v],
            "melspec": melspec(v, a),
        }
        for v, (n, a) in enumerate(zip(lengths, audio_steps))
    ]


def build(tmp_path, **kwargs):
    args = dict(
        batch_size=4,
        eval_batch_size=4,
        seed=0,
        train_files=str(tmp_path / "train*"),
        eval_files=str(tmp_path / "eval*"),
        num_classes=5,
        num_frames=3,
        stride=2,
        image_size=16,
        num_spec_frames=8,
        num_mel_bins=BINS,
        spec_augment=False,
    )
    args.update(kwargs)
    return avds.build_audiovisual_tfrecord(**args)


TRAIN_LENGTHS, TRAIN_AUDIO = [12, 9, 20, 6, 3, 15], [48, 37, 25, 30, 5, 61]
EVAL_LENGTHS, EVAL_AUDIO = [10, 7, 16, 4, 12], [40, 6, 64, 20, 13]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    path = tmp_path_factory.mktemp("av")
    wvr.write_video_records(make_examples(TRAIN_LENGTHS, TRAIN_AUDIO), str(path / "train"), 2)
    wvr.write_video_records(make_examples(EVAL_LENGTHS, EVAL_AUDIO), str(path / "eval"))
    return path


def reference_window(clip_start, n, span, audio_len, window):
    """Audio indices of the window centred like the clip (NumPy statement of the rule)."""
    start = int(np.round((clip_start + span / 2) / n * audio_len - window / 2))
    start = min(max(start, 0), max(audio_len - window, 0))
    return (start + np.arange(window)) % audio_len


def check_aligned(clip, spec, lengths, audio, span=5, window=8):
    """The spectrogram holds the audio window aligned with the clip's frames."""
    v = video_index(clip)
    start = int(frame_index(clip)[0])
    steps = reference_window(start, lengths[v], span, audio[v], window)
    np.testing.assert_array_equal(spec[..., 0], melspec(v, audio[v])[steps])
    if audio[v] >= window and 0 < steps[0] < audio[v] - window:  # not moved to fit: centred
        assert abs((steps[0] + window / 2) / audio[v] - (start + span / 2) / lengths[v]) <= (
            0.5 / audio[v] + 1e-9
        )
    return v


# --- reading and alignment -------------------------------------------------------------------


def test_eval_melspec_round_trip_and_alignment(records):
    ds = build(records, with_video_id=True)
    batches = list(ds.eval_batches())
    assert len(batches) == ds.num_eval_batches == 2
    assert ds.meta_data["input_shape"] == {"rgb": (-1, 3, 16, 16, 3), "spectrogram": (-1, 8, 4, 1)}
    rgb = np.concatenate([b["inputs"]["rgb"] for b in batches])
    spec = np.concatenate([b["inputs"]["spectrogram"] for b in batches])
    assert spec.shape == (8, 8, BINS, 1) and spec.dtype == np.float32
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:5], range(5))
    np.testing.assert_array_equal(
        np.concatenate([b["batch_mask"] for b in batches]), [1] * 5 + [0] * 3
    )
    for v, n in enumerate(EVAL_LENGTHS):
        centred = max(n - 5, 0) // 2
        np.testing.assert_array_equal(frame_index(rgb[v]), (centred + 2 * np.arange(3)) % n)
        assert check_aligned(rgb[v], spec[v], EVAL_LENGTHS, EVAL_AUDIO) == v
    np.testing.assert_array_equal(spec[5:], 0.0)
    # Audio shorter than the window (video 1: 6 steps, window 8) wraps around.
    np.testing.assert_array_equal(spec[1, :, 0, 0], 1000 + np.arange(8) % 6)


def test_train_audio_follows_the_random_clip(records):
    ds = build(records, train_crop="none", random_flip=False)
    it = ds.train_batches(0)
    seen = set()
    for _ in range(12):
        batch = next(it)
        for clip, spec, label in zip(
            batch["inputs"]["rgb"], batch["inputs"]["spectrogram"], batch["label"]
        ):
            v = check_aligned(clip, spec, TRAIN_LENGTHS, TRAIN_AUDIO)
            assert label == v % 5
            seen.add((v, int(frame_index(clip)[0])))
    assert len({s for v, s in seen if v == 2}) >= 4  # video 2 has 16 starts: random clips


def test_rgb_matches_the_video_reader_and_modalities_are_selectable(records):
    av = next(build(records).train_batches(2))
    video = next(
        video_dataset.build_video_tfrecord(
            batch_size=4, eval_batch_size=4, seed=0, train_files=str(records / "train*"),
            eval_files=str(records / "eval*"), num_classes=5, num_frames=3, stride=2,
            image_size=16,
        ).train_batches(2)
    )  # fmt: skip
    np.testing.assert_array_equal(av["inputs"]["rgb"], video["inputs"])
    audio_only = build(records, modalities=("spectrogram",))
    batch = next(audio_only.train_batches(2))
    assert list(batch["inputs"]) == ["spectrogram"]
    np.testing.assert_array_equal(batch["inputs"]["spectrogram"], av["inputs"]["spectrogram"])
    assert list(next(audio_only.eval_batches())["inputs"]) == ["spectrogram"]
    with pytest.raises(ValueError, match="modalities"):
        build(records, modalities=("rgb", "depth"))
    with pytest.raises(ValueError, match="audio_feature"):
        build(records, audio_feature="mfcc")


def test_multiview_spectrograms_follow_their_clips(records):
    ds = build(records, num_test_clips=3, num_test_crops=3, eval_batch_size=8)
    batch = next(ds.multiview_eval_batches())
    rgb, spec = batch["inputs"]["rgb"], batch["inputs"]["spectrogram"]
    assert rgb.shape == (8, 9, 3, 16, 16, 3) and spec.shape == (8, 9, 8, BINS, 1)
    for v, n in enumerate(EVAL_LENGTHS):
        starts = np.round(np.linspace(0, max(n - 5, 0), 3)).astype(int)
        for c in range(3):
            for s in range(3):
                view = c * 3 + s
                assert frame_index(rgb[v, view])[0] == starts[c]
                check_aligned(rgb[v, view], spec[v, view], EVAL_LENGTHS, EVAL_AUDIO)
    np.testing.assert_array_equal(spec[5:], 0.0)


def test_multi_label_targets(tmp_path):
    examples = make_examples([4, 5], [8, 9], labels=[[1, 3], [4]])
    wvr.write_video_records(examples, str(tmp_path / "train"))
    wvr.write_video_records(examples, str(tmp_path / "eval"))
    batch = next(build(tmp_path, multi_label=True, batch_size=2).train_batches(0))
    assert batch["label"].shape == (2, 5) and batch["label"].dtype == np.float32
    assert {tuple(np.flatnonzero(row)) for row in batch["label"]} <= {(1, 3), (4,)}
    eval_labels = next(build(tmp_path, multi_label=True).multiview_eval_batches())["label"]
    np.testing.assert_array_equal(eval_labels[:2], [[0, 1, 0, 1, 0], [0, 0, 0, 0, 1]])
    np.testing.assert_array_equal(eval_labels[2:], 0)


def test_two_host_eval_counts_every_video_once_with_a_partial_last_batch(tmp_path):
    wvr.write_video_records(make_examples([4], [8]), str(tmp_path / "train"))
    lengths = [4, 5, 6, 7, 5, 4, 6]
    wvr.write_video_records(make_examples(lengths, [9] * 7), str(tmp_path / "eval"), 3)
    seen, counts = [], []
    for p in (0, 1):
        ds = build(tmp_path, process_index=p, process_count=2, with_video_id=True)
        for views in (ds.eval_batches, ds.multiview_eval_batches):
            batches = list(views())
            counts.append(len(batches))
            masks = np.concatenate([b["batch_mask"] for b in batches])
            assert masks.tolist() == ([1.0] * (3 + p) + [0.0] * (1 - p))
            for b in batches:
                for x in b["inputs"].values():
                    assert x.shape[0] == 2
                    np.testing.assert_array_equal(x[b["batch_mask"] == 0], 0.0)
                if views == ds.eval_batches:
                    seen += [i.decode() for i, m in zip(b["video_id"], b["batch_mask"]) if m]
    assert counts == [2, 2, 2, 2]  # hosts hold 3 and 4 videos: 2 batches of 2 each
    assert sorted(seen) == [f"vid{v}" for v in range(7)]


# --- waveform -> log-mel against NumPy float64 --------------------------------------------------


def reference_log_mel(x, sr, frame_length, step, fft_length, bins, lo, hi, offset):
    """Periodic-Hann |STFT| -> HTK-mel triangles (DC bin excluded) -> log, in float64."""
    x = np.asarray(x, np.float64)
    count = 1 + (len(x) - frame_length) // step
    frames = np.stack([x[i * step : i * step + frame_length] for i in range(count)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(frame_length) / frame_length)
    magnitude = np.abs(np.fft.rfft(frames * window, n=fft_length))

    def mel(f):
        return 1127.0 * np.log1p(np.asarray(f) / 700.0)

    spectrum_mel = mel(np.linspace(0, sr / 2, fft_length // 2 + 1)[1:])[:, None]
    edges = np.linspace(mel(lo), mel(hi), bins + 2)
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]
    weights = np.maximum(
        0,
        np.minimum(
            (spectrum_mel - left) / (centre - left), (right - spectrum_mel) / (right - centre)
        ),
    )
    weights = np.vstack([np.zeros((1, bins)), weights])
    return np.log(magnitude @ weights + offset)


LOG_MEL = dict(sr=4000, frame_length=100, step=40, fft_length=128, bins=12, lo=60.0, hi=1800.0)


def assert_log_mel_close(got, want):
    """Tolerance: 2e-3 absolute in log units (float32 STFT/matmul against float64) where the
    mel energy is >= 1e-3 of the largest; below that, the float32 error (1e-6 of the peak)
    dominates log(mel + 1e-6), so there only the mel values are compared (1e-5 of the peak)."""
    mel_got, mel_want = np.exp(got) - 1e-6, np.exp(want) - 1e-6
    peak = mel_want.max()
    strong = mel_want >= 1e-3 * peak
    np.testing.assert_allclose(got[strong], want[strong], atol=2e-3)
    np.testing.assert_allclose(mel_got, mel_want, atol=1e-5 * max(peak, 1e-3))


def adversarial_waveforms(rng, n):
    t = np.arange(n) / LOG_MEL["sr"]
    impulse = np.zeros(n)
    impulse[n // 3] = 1.0
    return {
        "noise": rng.normal(0, 0.3, n),
        "silence": np.zeros(n),
        "clipped square": np.sign(np.sin(2 * np.pi * 440 * t)),
        "impulse": impulse,
        "tone at a mel edge": np.sin(2 * np.pi * 1800.0 * t),
        "dc": np.full(n, 0.7),
    }


def test_log_mel_op_matches_the_numpy_float64_reference():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for name, x in adversarial_waveforms(rng, 900).items():
        x = x.astype(np.float32)
        got = avds.log_mel_spectrogram(
            tf.constant(x), sample_rate=LOG_MEL["sr"], frame_length=100, frame_step=40,
            fft_length=128, num_mel_bins=12, lower_edge_hertz=60.0, upper_edge_hertz=1800.0,
            log_offset=1e-6,
        ).numpy()  # fmt: skip
        want = reference_log_mel(x, offset=1e-6, **LOG_MEL)
        assert got.shape == want.shape == (21, 12), name
        assert_log_mel_close(got, want)
    silent = reference_log_mel(np.zeros(900), offset=1e-6, **LOG_MEL)
    np.testing.assert_allclose(silent, np.log(1e-6))


def test_waveform_records_give_the_reference_log_mel_of_the_aligned_window(tmp_path):
    rng = np.random.default_rng(1)
    waves = list(adversarial_waveforms(rng, 2000).values())[:4]
    lengths = [8, 5, 12, 6]
    examples = [
        {
            "video_id": f"vid{v}",
            "frames": np.stack([frame_pixels(v, t) for t in range(n)]),
            "labels": v,
            "waveform": w[: 1400 + 150 * v],
            "sample_rate": LOG_MEL["sr"],
        }
        for v, (n, w) in enumerate(zip(lengths, waves))
    ]
    wvr.write_video_records(examples, str(tmp_path / "train"))
    wvr.write_video_records(examples, str(tmp_path / "eval"))
    kwargs = dict(
        audio_feature="waveform", sample_rate=4000, stft_frame_length=100, stft_frame_step=40,
        fft_length=128, num_mel_bins=12, lower_edge_hertz=60.0, upper_edge_hertz=1800.0,
        num_spec_frames=10, num_test_clips=2,
    )  # fmt: skip
    ds = build(tmp_path, **kwargs)
    batch = next(ds.multiview_eval_batches())
    window = 9 * 40 + 100
    for v, ex in enumerate(examples):
        samples = np.asarray(ex["waveform"], np.float32)
        for c in range(2):
            clip_start = int(frame_index(batch["inputs"]["rgb"][v, c])[0])
            indices = reference_window(clip_start, lengths[v], 5, len(samples), window)
            want = reference_log_mel(samples[indices], offset=1e-6, **LOG_MEL)
            assert_log_mel_close(batch["inputs"]["spectrogram"][v, c, ..., 0], want)
    # A record at another sample rate is an error that names file and video.
    examples[2]["sample_rate"] = 8000
    wvr.write_video_records(examples, str(tmp_path / "eval"))
    with pytest.raises(video_dataset.CorruptRecordsError, match=r"eval.*vid2.*8000 Hz"):
        build(tmp_path, **kwargs)


# --- SpecAugment ------------------------------------------------------------------------------


def test_spec_augment_bands_stay_within_the_configured_bounds():
    import tensorflow as tf

    bands = avds.spec_augment_bands(tf.constant([7, 1], tf.int64), 10, 600, 4).numpy()
    assert bands.shape == (600, 2) and bands.dtype == np.int32
    widths, starts = bands[:, 1], bands[:, 0]
    assert widths.min() >= 0 and widths.max() <= 4
    assert starts.min() >= 0 and (starts + widths).max() <= 10
    assert set(widths) == {0, 1, 2, 3, 4} and set(starts) == set(range(11))  # 10: empty band
    np.testing.assert_array_equal(  # deterministic in the key
        avds.spec_augment_bands(tf.constant([7, 1], tf.int64), 10, 600, 4).numpy(), bands
    )
    wide = avds.spec_augment_bands(tf.constant([0, 0], tf.int64), 5, 50, 99).numpy()
    assert wide[:, 1].max() <= 5 and (wide.sum(axis=1) <= 5).all()  # width clipped to size
    none = avds.spec_augment_mask(tf.constant([0, 1], tf.int64), (6, 4), 0, 3, 0, 3)
    assert not none.numpy().any()


def test_spec_augment_masks_train_batches_deterministically_and_never_eval(records):
    import tensorflow as tf

    aug_args = dict(
        spec_augment=True,
        spec_time_masks=2,
        spec_time_mask_max=3,
        spec_freq_masks=1,
        spec_freq_mask_max=2,
    )
    plain = build(records)
    augmented = build(records, **aug_args)
    step, batch_size = 1, 4
    a = next(augmented.train_batches(step))
    p = next(plain.train_batches(step))
    np.testing.assert_array_equal(a["inputs"]["rgb"], p["inputs"]["rgb"])
    masked_any = False
    for i in range(batch_size):
        position = step * batch_size + i
        key = video_ops.example_keys(0, tf.constant(position, tf.int64), 4)[3]
        mask = avds.spec_augment_mask(key, (8, BINS), 2, 3, 1, 2).numpy()
        orig = p["inputs"]["spectrogram"][i, ..., 0]
        want = np.where(mask, orig.mean(), orig)
        np.testing.assert_allclose(a["inputs"]["spectrogram"][i, ..., 0], want, rtol=1e-6)
        rows, cols = mask.all(axis=1), mask.all(axis=0)  # time bands, mel bands
        np.testing.assert_array_equal(mask, rows[:, None] | cols[None, :])
        assert rows.sum() <= 2 * 3 and cols.sum() <= 1 * 2
        masked_any |= bool(mask.any())
    assert masked_any
    again = next(build(records, **aug_args).train_batches(step))
    np.testing.assert_array_equal(again["inputs"]["spectrogram"], a["inputs"]["spectrogram"])
    for x, y in zip(augmented.eval_batches(), plain.eval_batches()):
        np.testing.assert_array_equal(x["inputs"]["spectrogram"], y["inputs"]["spectrogram"])


@pytest.mark.parametrize(
    "kwargs, name, value",
    [
        (dict(modalities=("rgb", "depth")), "modalities", "'depth'"),
        (dict(modalities=()), "modalities", "()"),
        (dict(audio_feature="mfcc"), "audio_feature", "'mfcc'"),
        (dict(num_spec_frames=0), "num_spec_frames", 0),
        (dict(num_mel_bins=0), "num_mel_bins", 0),
        (dict(sample_rate=0), "sample_rate", 0),
        (dict(stft_frame_length=0), "stft_frame_length", 0),
        (dict(stft_frame_step=0), "stft_frame_step", 0),
        (dict(fft_length=256), "fft_length", 256),
        (dict(lower_edge_hertz=-1.0), "lower_edge_hertz", -1.0),
        (dict(upper_edge_hertz=100.0), "upper_edge_hertz", 100.0),
        (dict(upper_edge_hertz=9000.0), "upper_edge_hertz", 9000.0),
        (dict(spec_time_masks=-1), "spec_time_masks", -1),
        (dict(spec_time_mask_max=-2), "spec_time_mask_max", -2),
        (dict(spec_freq_masks=-3), "spec_freq_masks", -3),
        (dict(spec_freq_mask_max=-4), "spec_freq_mask_max", -4),
        (dict(num_frames=0), "num_frames", 0),
        (dict(channels=4), "channels", 4),
        (dict(num_test_crops=5), "num_test_crops", 5),
        (dict(eval_batch_size=3, process_count=2), "eval_batch_size", 3),
    ],
)
def test_each_bad_argument_is_named_before_any_file_is_read(tmp_path, kwargs, name, value):
    with pytest.raises(FileNotFoundError):  # control: good arguments go on to read the files
        build(tmp_path / "no_such_folder")
    with pytest.raises(ValueError, match=rf"\b{name}\b.*(got |=).*{re.escape(str(value))}"):
        build(tmp_path / "no_such_folder", **kwargs)


# --- damaged and wrong records --------------------------------------------------------------


def test_damaged_files_and_bad_audio_raise_errors_naming_the_file(tmp_path):
    wvr.write_video_records(make_examples([4, 5, 6], [8, 8, 8]), str(tmp_path / "good"))
    data = (tmp_path / "good").read_bytes()
    (tmp_path / "truncated").write_bytes(data[:-10])
    good = str(tmp_path / "good")
    for in_memory in (True, False):
        path = str(tmp_path / "truncated")
        with pytest.raises(video_dataset.CorruptRecordsError, match=path):
            build(tmp_path, train_files=path, eval_files=good, in_memory=in_memory)
    wrong_bins = make_examples([4], [8])
    wrong_bins[0]["melspec"] = np.zeros((8, BINS + 1))
    wvr.write_video_records(wrong_bins, str(tmp_path / "wrong_bins"))
    no_audio = make_examples([4], [8])
    del no_audio[0]["melspec"]
    wvr.write_video_records(no_audio, str(tmp_path / "no_audio"))
    for name, message in (("wrong_bins", "sizes \\[5\\]"), ("no_audio", "0 steps")):
        for in_memory in (True, False):
            with pytest.raises(
                video_dataset.CorruptRecordsError, match=rf"{name}.*vid0.*{message}"
            ):
                ds = build(
                    tmp_path, train_files=good, eval_files=str(tmp_path / name), in_memory=in_memory
                )
                list(ds.eval_batches())
    # Video-only reading does not need the audio.
    ds = build(
        tmp_path, train_files=good, eval_files=str(tmp_path / "no_audio"), modalities=("rgb",)
    )
    assert next(ds.eval_batches())["inputs"]["rgb"].shape == (4, 3, 16, 16, 3)


# --- the writer's audio -------------------------------------------------------------------------


def test_writer_rejects_bad_audio():
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="melspec"):
        wvr.sequence_example("v", frames, 0, melspec=np.zeros(5))
    with pytest.raises(ValueError, match="melspec"):
        wvr.sequence_example("v", frames, 0, melspec=np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="waveform"):
        wvr.sequence_example("v", frames, 0, waveform=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="sample_rate"):
        wvr.sequence_example("v", frames, 0, sample_rate=16000)


def write_wav(path, samples_int16, rate):
    with wave.open(str(path), "wb") as f:
        f.setnchannels(samples_int16.shape[1])
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(samples_int16.astype("<i2").tobytes())


def test_writer_cli_with_wav_and_npy_audio(tmp_path):
    import tensorflow as tf

    source, audio = tmp_path / "videos", tmp_path / "audio"
    audio.mkdir()
    for v in range(2):
        folder = source / f"clip{v}"
        folder.mkdir(parents=True)
        for t in range(3):
            (folder / f"frame_{t:04d}.jpg").write_bytes(
                tf.io.encode_jpeg(frame_pixels(v, t)).numpy()
            )
    rng = np.random.default_rng(0)
    stereo = rng.integers(-32768, 32767, (700, 2)).astype(np.int16)
    stereo[0] = [-32768, -32768]  # full scale
    write_wav(audio / "clip0.wav", stereo, 4000)
    log_mel = rng.normal(size=(9, BINS)).astype(np.float32)
    np.save(audio / "clip1.npy", log_mel)
    (tmp_path / "labels.csv").write_text("clip0,1\nclip1,2\n")
    out = tmp_path / "out" / "rec"
    args = ["--input", str(source), "--output", str(out), "--labels", str(tmp_path / "labels.csv")]
    assert wvr.main([*args, "--audio", str(audio)]) == 0

    (record0, record1) = [
        tf.train.SequenceExample.FromString(r)
        for r in tf.data.TFRecordDataset(str(out)).as_numpy_iterator()
    ]
    steps = record0.feature_lists.feature_list[wvr.WAVEFORM_KEY].feature
    assert len(steps) == 3  # one chunk per frame
    samples = np.concatenate([s.float_list.value for s in steps])
    np.testing.assert_allclose(samples, stereo.astype(np.float64).mean(axis=1) / 32768, atol=1e-7)
    assert samples[0] == -1.0
    assert record0.context.feature[wvr.SAMPLE_RATE_KEY].int64_list.value == [4000]
    mel_steps = record1.feature_lists.feature_list[wvr.MELSPEC_KEY].feature
    np.testing.assert_array_equal([s.float_list.value for s in mel_steps], log_mel)

    (audio / "clip1.npy").unlink()
    with pytest.raises(ValueError, match="No audio for video 'clip1'"):
        wvr.main([*args, "--audio", str(audio)])


# --- audiovisual_digits ---------------------------------------------------------------------------


def test_paired_digits_have_identical_audio_and_tones_differ():
    digits = np.arange(200) % 10
    a = avd.render_audio(digits, np.random.default_rng(5))
    b = avd.render_audio((digits + 5) % 10, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)  # d and d + 5: the same function of the same draws
    spectrum = np.abs(np.fft.rfft(a, axis=1))
    peak_hz = spectrum.argmax(axis=1) * avd.SAMPLE_RATE / avd.NUM_SAMPLES
    np.testing.assert_allclose(peak_hz, np.asarray(avd.TONES_HZ)[digits % 5], atol=4)


def test_occlusion_is_as_designed_and_hides_the_digit():
    _, train_y, test_x, test_y = avd.load_digit_split()
    for digits, seed in ((train_y, 1), (test_y, 2)):
        occluded = avd.occlusion_mask(digits, np.random.default_rng(seed))
        for d in range(10):
            count = (digits == d).sum()
            want = round(0.75 * count) if d in avd.OCCLUDED_DIGITS else 0
            assert occluded[digits == d].sum() == want
    occluded = avd.occlusion_mask(test_y, np.random.default_rng(0))
    frames = avd.render_video(test_x, occluded, np.random.default_rng(3))
    shuffled = avd.render_video(test_x[::-1], occluded, np.random.default_rng(3))
    np.testing.assert_array_equal(frames[occluded], shuffled[occluded])  # image never used
    assert not np.array_equal(frames[~occluded], shuffled[~occluded])
    assert frames.shape == (360, 4, 16, 16) and frames.dtype == np.uint8


def test_each_modality_alone_is_ambiguous_and_fusion_is_not():
    """Linear probes (LDA) on the generated data reach the documented best accuracies:
    audio alone <= ~50%, video alone ~69%, both ~100% (measured: 47%, 69%, 99%)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    train_x, train_y, test_x, test_y = avd.load_digit_split()

    def features(images, digits, seed):
        frames, waves, _ = avd.generate_split(images, digits, seed)
        video = frames.mean(axis=1).reshape(len(frames), -1) / 255.0
        spectrum = np.abs(np.fft.rfft(waves, axis=1))[:, :1088]
        audio = np.log(spectrum.reshape(len(waves), -1, 16).mean(-1))  # 68 bands of 16 bins
        return {"video": video, "audio": audio, "both": np.hstack([video, audio])}

    train, test = features(train_x, train_y, 1), features(test_x, test_y, 2)
    acc = {}
    for k in train:
        probe = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(train[k], train_y)
        acc[k] = probe.score(test[k], test_y)
    assert 0.40 <= acc["audio"] <= 0.56, acc
    assert 0.60 <= acc["video"] <= 0.73, acc
    assert acc["both"] >= 0.95, acc


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("audiovisual_digits")


def test_audiovisual_digits_written_once_and_read_back(digits_dir):
    ds = avd.build_audiovisual_digits(
        batch_size=16, eval_batch_size=360, seed=0, data_dir=str(digits_dir), with_video_id=True
    )
    folder = ds.meta_data["data_dir"]
    assert folder == os.path.join(str(digits_dir), avd.VERSION)
    assert (ds.meta_data["num_train_examples"], ds.meta_data["num_eval_examples"]) == (1437, 360)
    assert ds.meta_data["input_shape"] == {
        "rgb": (-1, 4, 16, 16, 1),
        "spectrogram": (-1, 16, 32, 1),
    }
    mtime = os.path.getmtime(os.path.join(folder, "train.tfrecord"))
    assert avd.prepare(str(digits_dir)) == folder  # cached: not written again
    assert os.path.getmtime(os.path.join(folder, "train.tfrecord")) == mtime
    assert [p for p in os.listdir(digits_dir) if p.startswith(".tmp")] == []

    batch = next(ds.train_batches(0))
    assert batch["inputs"]["rgb"].shape == (16, 4, 16, 16, 1)
    assert batch["inputs"]["spectrogram"].shape == (16, 16, 32, 1)
    (eval_batch,) = list(ds.eval_batches())
    _, _, test_x, test_y = avd.load_digit_split()
    frames, _, occluded = avd.generate_split(test_x, test_y, 2)
    np.testing.assert_array_equal(eval_batch["label"], test_y)
    error = np.abs(eval_batch["inputs"]["rgb"][..., 0] - (frames / 127.5 - 1.0))
    assert error[~occluded].mean() < 0.03
    assert [b"occluded" in i for i in eval_batch["video_id"]] == occluded.tolist()
    # Through the real log-mel: the tone pairs share a spectrum, the 5 tones differ.
    mean_spec = eval_batch["inputs"]["spectrogram"][..., 0].mean(axis=1)  # [N, mel bins]
    per_digit = np.stack([mean_spec[test_y == d].mean(axis=0) for d in range(10)])
    peaks = per_digit.argmax(axis=1)
    np.testing.assert_array_equal(peaks[:5], peaks[5:])
    assert (np.diff(peaks[:5]) > 0).all()
    pair_gap = np.abs(per_digit[:5] - per_digit[5:]).max()
    tone_gap = min(np.abs(per_digit[i] - per_digit[j]).max() for i in range(5) for j in range(i))
    assert pair_gap < 0.25 * tone_gap


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(avd, "write_split", fail)
    with pytest.raises(KeyboardInterrupt):
        avd.prepare(str(tmp_path))
    assert os.listdir(tmp_path) == []
