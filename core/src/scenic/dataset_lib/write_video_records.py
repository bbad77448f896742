"""Writes videos as SequenceExample TFRecords in the layout `video_dataset` reads.

One `tf.train.SequenceExample` per video (DMVR / original-Scenic Kinetics layout, described
in core/docs/video_records.md): context `video_id`, `clip/label/index` (one or more),
optional `clip/label/text`; feature list `image/encoded`, one JPEG per frame. Optional audio
(read by `audiovisual_dataset`): feature list `melspec/feature/floats` (log-mel, one list of
mel bins per time step) and/or `WAVEFORM/feature/floats` (samples, one chunk per video frame)
with context `WAVEFORM/sample_rate`.

Library: `write_video_records(examples, path, num_shards=1)`. Command line, from a folder
holding one sub-folder of frame images per video (`frame_0000.jpg`, ...) and/or video files
(decoded with PyAV or imageio, whichever is installed):

    python -m scenic.dataset_lib.write_video_records --input DIR --output PREFIX \
        --labels labels.csv [--class-names classes.txt] [--num-shards 4] \
        [--audio AUDIO_DIR | --audio-from-video [--sample-rate 16000]]

`labels.csv` has one `video_id,label` row per video (`video_id` is the sub-folder or file name
without extension); a label is a class index or a class name, several separated by `;`.
`--audio` names a folder with `<video_id>.wav` (PCM, read with Python's `wave`; channels are
averaged) or `<video_id>.npy` (a float log-mel array [time steps, mel bins]) per video.
`--audio-from-video` (instead of `--audio`; needs PyAV) stores each video file's own sound track
as the waveform, decoded, averaged to mono and resampled to `--sample-rate` Hz (default 16000),
as for AudioSet / VGGSound-style audio-visual records; then every input must be a video file
with an audio stream (a frame folder or a silent video is an error naming it).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import os
import pathlib
import sys
from collections.abc import Iterable, Sequence

import numpy as np

VIDEO_ID_KEY = "video_id"
LABEL_INDEX_KEY = "clip/label/index"
LABEL_TEXT_KEY = "clip/label/text"
IMAGE_KEY = "image/encoded"
MELSPEC_KEY = "melspec/feature/floats"
WAVEFORM_KEY = "WAVEFORM/feature/floats"
SAMPLE_RATE_KEY = "WAVEFORM/sample_rate"

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")


ENCODE_CHUNK = 64


@functools.cache
def _chunk_encoder(quality: int):
    """A compiled encoder of ENCODE_CHUNK frames: ~2x faster than eager calls per frame."""
    import tensorflow as tf

    @tf.function
    def encode(chunk):
        return tf.stack([tf.io.encode_jpeg(chunk[i], quality=quality) for i in range(ENCODE_CHUNK)])

    return encode


def encode_frames(frames: np.ndarray, quality: int = 95) -> list[bytes]:
    """uint8 frames [T, H, W, C] (C = 1 or 3) -> one JPEG bytes string per frame."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise ValueError(
            f"frames must be uint8 [T, H, W, 1 or 3], got {frames.dtype} {frames.shape}."
        )
    encode, out = _chunk_encoder(quality), []
    for lo in range(0, len(frames), ENCODE_CHUNK):
        chunk = frames[lo : lo + ENCODE_CHUNK]
        padded = np.zeros((ENCODE_CHUNK, *frames.shape[1:]), np.uint8)
        padded[: len(chunk)] = chunk
        out.extend(encode(padded).numpy()[: len(chunk)].tolist())
    return out


def sequence_example(
    video_id: str,
    frames: Sequence[bytes] | np.ndarray,
    labels: int | Sequence[int],
    label_texts: Sequence[str] = (),
    quality: int = 95,
    melspec: np.ndarray | None = None,
    waveform: np.ndarray | None = None,
    sample_rate: int | None = None,
):
    """One video as a `tf.train.SequenceExample`; `frames` are JPEG bytes or uint8 pixels.

    Optional audio: `melspec` float [time steps, mel bins]; `waveform` float samples [N]
    (conventionally in [-1, 1]), stored as one chunk per frame, with `sample_rate` in Hz.
    """
    import tensorflow as tf

    if isinstance(frames, np.ndarray):
        frames = encode_frames(frames, quality)
    frames = list(frames)
    labels = [int(labels)] if np.ndim(labels) == 0 else [int(x) for x in labels]
    if not frames:
        raise ValueError(f"Video {video_id!r} has no frames.")
    if not labels or min(labels) < 0:
        raise ValueError(f"Video {video_id!r} needs one or more labels >= 0, got {labels}.")
    example = tf.train.SequenceExample()
    context = example.context.feature
    context[VIDEO_ID_KEY].bytes_list.value.append(str(video_id).encode())
    context[LABEL_INDEX_KEY].int64_list.value.extend(labels)
    if label_texts:
        context[LABEL_TEXT_KEY].bytes_list.value.extend(t.encode() for t in label_texts)
    image_list = example.feature_lists.feature_list[IMAGE_KEY]
    for frame in frames:
        image_list.feature.add().bytes_list.value.append(frame)
    if melspec is not None:
        melspec = np.asarray(melspec, np.float32)
        if melspec.ndim != 2 or 0 in melspec.shape or not np.isfinite(melspec).all():
            raise ValueError(
                f"Video {video_id!r}: melspec must be finite floats [time steps >= 1, mel bins "
                f">= 1], got shape {melspec.shape}."
            )
        mel_list = example.feature_lists.feature_list[MELSPEC_KEY]
        for step in melspec:
            mel_list.feature.add().float_list.value.extend(step.tolist())
    if waveform is not None:
        waveform = np.asarray(waveform, np.float32)
        if waveform.ndim != 1 or not waveform.size or not np.isfinite(waveform).all():
            raise ValueError(
                f"Video {video_id!r}: waveform must be finite floats [samples >= 1], got shape "
                f"{waveform.shape}."
            )
        wave_list = example.feature_lists.feature_list[WAVEFORM_KEY]
        for chunk in np.array_split(waveform, len(frames)):
            wave_list.feature.add().float_list.value.extend(chunk.tolist())
    if sample_rate is not None:
        if waveform is None or int(sample_rate) <= 0:
            raise ValueError(f"Video {video_id!r}: sample_rate needs a waveform and must be > 0.")
        context[SAMPLE_RATE_KEY].int64_list.value.append(int(sample_rate))
    return example


def shard_paths(path: str, num_shards: int) -> list[str]:
    """`path` itself for one shard, else `path-00000-of-00004`, ..."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}.")
    if num_shards == 1:
        return [str(path)]
    return [f"{path}-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]


def write_video_records(
    examples: Iterable[dict], path: str, num_shards: int = 1, quality: int = 95
) -> list[str]:
    """Writes `examples` to `num_shards` TFRecord files; returns their paths.

    Each example is a dict with `video_id` (str), `frames` (JPEG bytes per frame, or uint8
    [T, H, W, C] pixels to be encoded), `labels` (int or ints) and optionally `label_texts`
    and audio: `melspec` [steps, bins], `waveform` [samples], `sample_rate` (Hz).
    Example k goes to shard k % num_shards (round robin, so an iterator need not be sized).
    """
    import tensorflow as tf

    paths = shard_paths(path, num_shards)
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(tf.io.TFRecordWriter(p)) for p in paths]
        for k, ex in enumerate(examples):
            record = sequence_example(
                ex["video_id"],
                ex["frames"],
                ex["labels"],
                ex.get("label_texts", ()),
                quality,
                melspec=ex.get("melspec"),
                waveform=ex.get("waveform"),
                sample_rate=ex.get("sample_rate"),
            )
            writers[k % num_shards].write(record.SerializeToString())
    return paths


# --- reading a folder of videos (the command-line tool) ------------------------------------


def read_frame_folder(folder: pathlib.Path, quality: int = 95) -> list[bytes]:
    """JPEG bytes of the frame images in `folder`, in file-name order (PNGs are re-encoded)."""
    import tensorflow as tf

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} holds no frame images ({', '.join(FRAME_SUFFIXES)}).")
    frames = []
    for f in files:
        data = f.read_bytes()
        if f.suffix.lower() == ".png":
            data = tf.io.encode_jpeg(tf.io.decode_png(data), quality=quality).numpy()
        frames.append(data)
    return frames


def _av_error(av):
    """PyAV's base error class (`av.FFmpegError`; `av.AVError` in old versions)."""
    for owner, name in ((av, "FFmpegError"), (getattr(av, "error", None), "FFmpegError")):
        if getattr(owner, name, None) is not None:
            return getattr(owner, name)
    return av.AVError


def decode_video_file(path: pathlib.Path) -> np.ndarray:
    """uint8 RGB frames [T, H, W, 3] of a video file, through PyAV or else imageio."""
    try:
        import av
    except ImportError:
        av = None
    if av is not None:
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise ValueError(f"Video file {path} has no video stream.")
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        except _av_error(av) as e:
            raise ValueError(f"Video file {path} cannot be decoded by PyAV: {e}") from None
    else:
        try:
            import imageio.v3 as iio
        except ImportError:
            raise ImportError(
                f"Reading the video file {path} needs PyAV (`pip install av`) or imageio "
                "with a video plugin (`pip install imageio[pyav]`); or extract its frames "
                "into a folder of frame_0000.jpg, ... images."
            ) from None
        frames = list(iio.imiter(path))
    if not frames:
        raise ValueError(f"Video file {path} has no frames.")
    return np.stack(frames).astype(np.uint8)


def decode_audio_track(path: str | pathlib.Path, sample_rate: int) -> np.ndarray:
    """float32 mono samples in [-1, 1] at `sample_rate` Hz of a video file's sound track.

    Decodes the file's first audio stream with PyAV, resamples it to `sample_rate` (keeping the
    channels) and averages the channels, as `read_wav` does. (Averaging here, not FFmpeg's mono
    downmix: that one sums stereo as (L + R) / sqrt(2), which can pass full scale.) Lossy codecs
    can overshoot full scale a little; such samples are clipped to [-1, 1]. The length can
    exceed the stream's nominal duration by the codec's padding (e.g. up to one AAC frame).
    Raises ValueError naming the file when PyAV cannot open or decode it, when it has no audio
    stream or when the stream decodes to no samples.
    """
    try:
        import av
    except ImportError:
        raise ImportError(
            f"Reading the sound track of {path} needs PyAV (`pip install av`)."
        ) from None
    is_int = isinstance(sample_rate, (int, np.integer)) and not isinstance(sample_rate, bool)
    if not is_int or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}.")
    chunks = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ValueError(
                    f"Video file {path} has no audio stream (a silent video): no sound track "
                    "to take."
                )
            resampler = av.AudioResampler(format="fltp", layout=None, rate=int(sample_rate))
            for frame in container.decode(container.streams.audio[0]):
                chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray() for f in resampler.resample(None))  # flush
    except _av_error(av) as e:
        raise ValueError(f"Video file {path} cannot be decoded by PyAV: {e}") from None
    if not chunks or not sum(c.shape[-1] for c in chunks):
        raise ValueError(f"The audio stream of video file {path} decodes to no samples.")
    samples = np.concatenate(chunks, axis=-1).astype(np.float32).mean(axis=0)
    return np.clip(samples, -1.0, 1.0).astype(np.float32)


def read_wav(path: str | pathlib.Path) -> tuple[np.ndarray, int]:
    """(float32 mono samples in [-1, 1], sample rate) of a PCM .wav file (8/16/24/32-bit)."""
    import wave

    with wave.open(str(path), "rb") as f:
        width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
        data = f.readframes(f.getnframes())
    if width == 1:  # unsigned 8-bit
        samples = (np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width in (2, 4):
        dtype = np.int16 if width == 2 else np.int32
        samples = np.frombuffer(data, dtype).astype(np.float32) / float(2 ** (8 * width - 1))
    elif width == 3:  # little-endian 24-bit: sign-extend into int32
        raw = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
        value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        samples = (np.where(value >= 1 << 23, value - (1 << 24), value) / float(1 << 23)).astype(
            np.float32
        )
    else:
        raise ValueError(f"{path}: unsupported sample width of {width} bytes.")
    samples = samples.reshape(-1, channels).mean(axis=1)
    if not samples.size:
        raise ValueError(f"{path} holds no audio samples.")
    return samples.astype(np.float32), rate


def read_audio(audio_dir: str, video_id: str) -> dict:
    """Audio fields of one example from `audio_dir/<video_id>.wav` or `.npy` (log-mels)."""
    folder = pathlib.Path(audio_dir)
    wav, npy = folder / f"{video_id}.wav", folder / f"{video_id}.npy"
    if wav.exists():
        samples, rate = read_wav(wav)
        return {"waveform": samples, "sample_rate": rate}
    if npy.exists():
        return {"melspec": np.load(npy)}
    raise ValueError(f"No audio for video {video_id!r}: neither {wav} nor {npy} exists.")


def read_labels(
    labels_csv: str, class_names_file: str | None
) -> tuple[dict[str, list[int]], list[str]]:
    """video_id -> label indices, and the class names (from the file, or sorted names)."""
    rows = {}
    with open(labels_csv, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), 1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) != 2:
                raise ValueError(f"{labels_csv}:{line_no}: expected `video_id,label`, got {row}.")
            rows[row[0].strip()] = [x.strip() for x in row[1].split(";") if x.strip()]
    names = []
    if class_names_file:
        names = [n.strip() for n in open(class_names_file) if n.strip()]
    elif not all(x.isdigit() for labels in rows.values() for x in labels):
        names = sorted({x for labels in rows.values() for x in labels})
    index = {n: i for i, n in enumerate(names)}

    def to_index(video, x):
        if x.isdigit():
            return int(x)
        if x not in index:
            raise ValueError(f"{labels_csv}: video {video!r} has unknown class name {x!r}.")
        return index[x]

    return {v: [to_index(v, x) for x in labels] for v, labels in rows.items()}, names


def folder_examples(
    input_dir: str,
    labels: dict[str, list[int]],
    names: list[str],
    quality,
    audio_dir: str | None = None,
    audio_from_video_rate: int | None = None,
):
    """Examples for every frame folder / video file in `input_dir`, in name order (with the
    audio of `audio_dir/<video_id>.wav|.npy` when `audio_dir` is given, or with each video
    file's own sound track at `audio_from_video_rate` Hz when that is given).

    The folder, labels and audio source are checked on the call, before any file is written;
    the videos are then read one by one as the returned iterator is consumed."""
    if audio_dir and audio_from_video_rate is not None:
        raise ValueError("Give audio_dir or audio_from_video_rate, not both.")
    entries = sorted(pathlib.Path(input_dir).iterdir())
    videos = [p for p in entries if p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES]
    if not videos:
        raise ValueError(f"{input_dir} holds no frame folders or video files.")
    missing = [p.stem for p in videos if p.stem not in labels]
    if missing:
        raise ValueError(f"No label for {len(missing)} videos, e.g. {missing[:3]}.")
    if audio_from_video_rate is not None:
        if audio_from_video_rate <= 0:
            raise ValueError(f"audio_from_video_rate must be > 0, got {audio_from_video_rate}.")
        folders = [p for p in videos if p.is_dir()]
        if folders:
            raise ValueError(
                f"{folders[0]} is a frame folder, with no sound track to take the audio from "
                f"({len(folders)} such folder(s)); --audio-from-video needs video files (or "
                "use --audio with a folder of .wav / .npy files)."
            )
    return _read_examples(videos, labels, names, quality, audio_dir, audio_from_video_rate)


def _read_examples(videos, labels, names, quality, audio_dir, audio_from_video_rate):
    for p in videos:
        if p.is_dir():
            frames = read_frame_folder(p, quality)
        else:
            frames = decode_video_file(p)
        label = labels[p.stem]
        example = {
            "video_id": p.stem,
            "frames": frames,
            "labels": label,
            "label_texts": [names[i] for i in label] if names else (),
        }
        if audio_dir:
            example.update(read_audio(audio_dir, p.stem))
        elif audio_from_video_rate is not None:
            example["waveform"] = decode_audio_track(p, audio_from_video_rate)
            example["sample_rate"] = int(audio_from_video_rate)
        yield example


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="folder of frame folders / video files")
    parser.add_argument("--output", required=True, help="output path prefix")
    parser.add_argument("--labels", required=True, help="CSV of `video_id,label[;label]` rows")
    parser.add_argument("--class-names", help="text file, one class name per line (index order)")
    parser.add_argument("--num-shards", type=int, default=1)
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality for re-encoding")
    audio = parser.add_mutually_exclusive_group()
    audio.add_argument(
        "--audio", help="folder of <video_id>.wav (PCM) or <video_id>.npy (log-mel [T, bins])"
    )
    audio.add_argument(
        "--audio-from-video",
        action="store_true",
        help="store each video file's own sound track (PyAV) as the waveform",
    )
    parser.add_argument(
        "--sample-rate",
        type=int,
        help="Hz of the --audio-from-video waveform (default 16000)",
    )
    args = parser.parse_args(argv)
    if args.sample_rate is not None and not args.audio_from_video:
        parser.error("--sample-rate applies only with --audio-from-video")
    if args.sample_rate is not None and args.sample_rate <= 0:
        parser.error(f"--sample-rate must be > 0, got {args.sample_rate}")
    rate = (args.sample_rate or 16000) if args.audio_from_video else None
    labels, names = read_labels(args.labels, args.class_names)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    examples = folder_examples(args.input, labels, names, args.quality, args.audio, rate)
    paths = write_video_records(examples, args.output, args.num_shards, args.quality)
    if names and not args.class_names:
        with open(f"{args.output}.classes.txt", "w") as f:
            f.write("".join(f"{n}\n" for n in names))
    print(f"Wrote {len(paths)} file(s): {', '.join(paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
