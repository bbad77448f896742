"""The video-record writer's sound tracks taken from real video files (PyAV): small videos
with a known tone are written here with PyAV, decoded by `decode_audio_track` (length, range,
frequency, channel mean), written by the command-line tool with `--audio-from-video` and read
back through `audiovisual_dataset`; silent, corrupt and audio-only files and bad flags are
errors naming the file."""

import re
import sys

import numpy as np
import pytest

from scenic.dataset_lib import audiovisual_dataset as avds
from scenic.dataset_lib import write_video_records as wvr

RATE = 22050  # the source files' audio sample rate


def tone(freq: float, seconds: float, rate: int = RATE) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)


def write_video(path, channels=None, *, codec="pcm_s16le", rate=RATE, frames=4, video=True):
    """A tiny 16x16 mpeg4 video (4 frames/s) with one audio stream of `channels` (float
    [channels, samples]) in `codec`; no audio stream when `channels` is None (an empty one
    when it has no samples)."""
    av = pytest.importorskip("av")
    if codec not in av.codecs_available:
        pytest.skip(f"this FFmpeg cannot encode {codec}")
    with av.open(str(path), "w") as container:  # every stream is added before any muxing
        if video:
            stream = container.add_stream("mpeg4", rate=4)
            stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        if channels is not None:
            channels = np.atleast_2d(np.asarray(channels, np.float32))
            layout = "mono" if len(channels) == 1 else "stereo"
            audio = container.add_stream(codec, rate=rate, layout=layout)
        if video:
            for t in range(frames):
                frame = np.full((16, 16, 3), 40 * t + 20, np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        if channels is not None and channels.shape[-1]:  # else: an audio stream, no packets
            frame = av.AudioFrame.from_ndarray(channels, format="fltp", layout=layout)
            frame.sample_rate, frame.pts = rate, 0
            for packet in [*audio.encode(frame), *audio.encode()]:
                container.mux(packet)
    return path


def amplitude(x: np.ndarray) -> float:
    """A sine's amplitude from the RMS of the middle half (clear of codec edge effects)."""
    n = len(x)
    return float(np.sqrt(2 * np.mean(np.square(x[n // 4 : 3 * n // 4], dtype=np.float64))))


# --- decode_audio_track -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix, codec, max_padding",
    [(".mkv", "pcm_s16le", 0), (".mp4", "aac", 800)],  # aac: ~350 extra samples (last frame)
)
def test_sound_track_is_resampled_and_the_channels_are_averaged(
    tmp_path, suffix, codec, max_padding
):
    path = write_video(
        tmp_path / f"clip{suffix}", [0.6 * tone(440, 1), 0.2 * tone(440, 1)], codec=codec
    )
    x = wvr.decode_audio_track(path, 16000)
    assert x.dtype == np.float32 and x.ndim == 1
    assert 16000 <= len(x) <= 16000 + max_padding, len(x)
    assert np.abs(x).max() <= 1.0
    spectrum = np.abs(np.fft.rfft(x))
    peak_hz = spectrum.argmax() * 16000 / len(x)
    assert abs(peak_hz - 440) <= 16000 / len(x), peak_hz
    # The mean of the channels (0.4), not FFmpeg's mono downmix (L + R) / sqrt(2) (0.57).
    assert amplitude(x) == pytest.approx(0.4, abs=0.02)
    if codec == "pcm_s16le":  # lossless: the resampled mean itself
        t = np.arange(len(x)) / 16000
        want = 0.4 * np.sin(2 * np.pi * 440 * t)
        np.testing.assert_allclose(x[200:-200], want[200:-200], atol=5e-3)


def test_full_scale_mono_and_stereo_stay_within_full_scale(tmp_path):
    loud = 0.99 * tone(440, 0.5, 44100)
    for name, channels in (("mono", [loud]), ("stereo", [loud, loud])):
        path = write_video(tmp_path / f"{name}.mkv", channels, rate=44100)
        x = wvr.decode_audio_track(path, 8000)
        assert len(x) == 4000 and np.abs(x).max() <= 1.0, name
        assert amplitude(x) == pytest.approx(0.99, abs=0.02), name


def test_silent_corrupt_and_audio_only_files_are_errors_naming_the_file(tmp_path):
    silent = write_video(tmp_path / "silent.mp4")
    with pytest.raises(ValueError, match=re.escape(str(silent)) + r".*no audio stream"):
        wvr.decode_audio_track(silent, 16000)
    assert wvr.decode_video_file(silent).shape == (4, 16, 16, 3)  # control: the video reads
    empty = write_video(tmp_path / "empty.mkv", np.zeros((2, 0)))
    with pytest.raises(ValueError, match=re.escape(str(empty)) + r" decodes to no samples"):
        wvr.decode_audio_track(empty, 16000)

    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    for decode in (wvr.decode_video_file, lambda p: wvr.decode_audio_track(p, 16000)):
        with pytest.raises(ValueError, match=re.escape(str(corrupt)) + ".*cannot be decoded"):
            decode(corrupt)

    audio_only = write_video(tmp_path / "audio_only.mkv", [tone(440, 0.2)], video=False)
    with pytest.raises(ValueError, match=re.escape(str(audio_only)) + ".*no video stream"):
        wvr.decode_video_file(audio_only)
    assert len(wvr.decode_audio_track(audio_only, 8000)) == 1600  # control: its sound reads

    with pytest.raises(ValueError, match="sample_rate must be a positive integer, got 0"):
        wvr.decode_audio_track(audio_only, 0)


def test_without_pyav_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match="pip install av"):
        wvr.decode_audio_track(tmp_path / "clip.mp4", 16000)


# --- the command-line tool ------------------------------------------------------------------


def htk_band(freq: float, num_bins: int, lower: float, upper: float) -> int:
    """The mel band (HTK scale, as tf.signal's weight matrix) whose centre is nearest `freq`."""
    mel = lambda f: 1127.0 * np.log1p(np.asarray(f) / 700.0)
    centres = np.linspace(mel(lower), mel(upper), num_bins + 2)[1:-1]
    return int(np.abs(centres - mel(freq)).argmin())


def test_cli_takes_the_sound_track_of_each_video_file(tmp_path):
    import tensorflow as tf

    source = tmp_path / "videos"
    source.mkdir()
    freqs = [440, 1500]
    for v, freq in enumerate(freqs):
        write_video(source / f"clip{v}.mkv", [0.5 * tone(freq, 1), 0.3 * tone(freq, 1)])
    (tmp_path / "labels.csv").write_text("clip0,0\nclip1,1\n")
    out = tmp_path / "out" / "rec"
    args = ["--input", str(source), "--output", str(out), "--labels", str(tmp_path / "labels.csv")]
    assert wvr.main([*args, "--audio-from-video", "--sample-rate", "8000"]) == 0

    for record in tf.data.TFRecordDataset(str(out)).as_numpy_iterator():
        example = tf.train.SequenceExample.FromString(record)
        assert example.context.feature[wvr.SAMPLE_RATE_KEY].int64_list.value == [8000]
        chunks = example.feature_lists.feature_list[wvr.WAVEFORM_KEY].feature
        assert len(chunks) == 4  # one chunk per video frame
        assert sum(len(c.float_list.value) for c in chunks) == 8000

    mel = dict(num_mel_bins=16, lower_edge_hertz=125.0, upper_edge_hertz=4000.0)
    ds = avds.build_audiovisual_tfrecord(
        batch_size=2, eval_batch_size=2, seed=0, train_files=str(out), eval_files=str(out),
        num_classes=2, num_frames=2, image_size=16, train_crop="none", random_flip=False,
        audio_feature="waveform", sample_rate=8000, num_spec_frames=8, stft_frame_length=256,
        stft_frame_step=128, spec_augment=False, with_video_id=True, **mel,
    )  # fmt: skip
    batch = next(ds.eval_batches())
    assert list(batch["video_id"]) == [b"clip0", b"clip1"]
    spec = np.asarray(batch["inputs"]["spectrogram"])
    assert spec.shape == (2, 8, 16, 1) and np.isfinite(spec).all()
    bands = spec[..., 0].mean(axis=1)  # [video, mel band]
    for v, freq in enumerate(freqs):
        want = htk_band(freq, 16, 125.0, 4000.0)
        assert bands[v].argmax() == want, (freq, bands[v])
        others = np.delete(bands[v], [want - 1, want, want + 1])  # neighbours overlap the tone
        assert bands[v, want] > others.max() + 3.0  # e^3 = 20x the energy of a far band


def test_cli_audio_from_video_rejects_frame_folders_and_conflicting_flags(tmp_path):
    import tensorflow as tf

    source = tmp_path / "videos"
    (source / "clip0").mkdir(parents=True)
    for t in range(2):
        frame = np.full((16, 16, 3), 50 * t, np.uint8)
        (source / "clip0" / f"frame_{t:04d}.jpg").write_bytes(tf.io.encode_jpeg(frame).numpy())
    (tmp_path / "labels.csv").write_text("clip0,0\n")
    args = ["--input", str(source), "--output", str(tmp_path / "rec")]
    args += ["--labels", str(tmp_path / "labels.csv")]
    with pytest.raises(ValueError, match=re.escape(str(source / "clip0")) + ".*frame folder"):
        wvr.main([*args, "--audio-from-video"])
    assert not (tmp_path / "rec").exists()  # nothing written
    for bad in (["--audio", str(tmp_path), "--audio-from-video"], ["--sample-rate", "8000"]):
        with pytest.raises(SystemExit) as error:
            wvr.main([*args, *bad])
        assert error.value.code == 2, bad
