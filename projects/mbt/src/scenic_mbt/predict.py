"""`scenic-mbt predict --workdir DIR INPUT...`: a trained model on new video files or records.

Every input goes through the run's own eval pipeline (`eval_pipeline` in the workdir's
`dataset_meta_data.json`, written by the `audiovisual_tfrecord` reader): a video file is
decoded with PyAV (frames, and the sound track mixed to mono and resampled to the run's
sample rate), written to a temporary record in the documented layout and read back by the
same reader, so clips, crops and the log-mel spectrogram are made exactly as in evaluation.
(A run trained on precomputed log-mel records gets, from video files, log-mels of the
reader's STFT settings.) Record files are read as they are. The prediction of each video is
the average over its clips (`--num-clips`, default the run's `num_test_clips`) and crops.

Prints one JSON object per video (`input`, `video_id`, `top_k` of {class, name, score});
`--output FILE` also writes them as one JSON list. A file that cannot be read, has no video
stream or no sound track (for a model that listens) is named in one line, exit code 2,
before any prediction is made.
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import numpy as np

from scenic.dataset_lib.dataset_utils import DataError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")


def add_arguments(parser) -> None:
    parser.add_argument("--workdir", required=True, help="the training run's workdir")
    parser.add_argument(
        "inputs", nargs="+", metavar="VIDEO_OR_RECORDS", help="video files or TFRecord files"
    )
    parser.add_argument("--top-k", type=int, default=5, help="labels per video (default 5)")
    parser.add_argument("--num-clips", type=int, help="clips averaged per video")
    parser.add_argument("--class-names", help="text file, one class name per line")
    parser.add_argument("--output", help="also write the predictions here, as a JSON list")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--batch-size", type=int, default=8)


def split_inputs(paths) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
    """(video files, record files); a missing or unknown file is a DataError naming it."""
    videos, records = [], []
    for raw in paths:
        path = pathlib.Path(raw)
        if not path.is_file():
            raise DataError(f"{path}: no such file.")
        if path.suffix.lower() in VIDEO_SUFFIXES:
            videos.append(path)
        elif "tfrecord" in path.name:
            records.append(path)
        else:
            raise DataError(
                f"{path}: not a video file ({', '.join(VIDEO_SUFFIXES)}) or a .tfrecord file."
            )
    return videos, records


def video_examples(videos, pipeline: dict) -> list[dict]:
    """Decoded examples (frames, and the waveform if the model listens), all read before
    anything is predicted, so a bad file stops the command at once."""
    from scenic.dataset_lib import write_video_records as writer

    listens = "spectrogram" in pipeline["modalities"]
    examples = []
    for path in videos:
        try:
            example = {"video_id": str(path), "frames": writer.decode_video_file(path), "labels": 0}
            if listens:
                rate = int(pipeline["sample_rate"])
                example["waveform"] = writer.decode_audio_track(path, rate)
                example["sample_rate"] = rate
        except (ValueError, OSError) as error:
            message = str(error)
            raise DataError(message if str(path) in message else f"{path}: {message}") from None
        examples.append(example)
    return examples


def reader_arguments(pipeline: dict, audio_feature: str, num_clips: int | None) -> dict:
    keys = (
        "modalities", "num_frames", "stride", "image_size", "resize_size", "channels",
        "num_spec_frames", "num_mel_bins", "sample_rate", "stft_frame_length",
        "stft_frame_step", "fft_length", "lower_edge_hertz", "upper_edge_hertz", "log_offset",
        "num_test_crops", "multi_label",
    )  # fmt: skip
    arguments = {k: pipeline[k] for k in keys}
    arguments["num_test_clips"] = num_clips or pipeline["num_test_clips"]
    arguments["audio_feature"] = audio_feature
    return arguments


def predict_records(trained, files, arguments: dict, num_classes: int, batch_size: int):
    """Yields (video_id, averaged logits [K]) for every video in the record `files`."""
    from scenic.dataset_lib import audiovisual_dataset

    files = [str(f) for f in files]
    ds = audiovisual_dataset.build_audiovisual_tfrecord(
        batch_size=1,
        eval_batch_size=batch_size,
        seed=0,
        train_files=files,
        eval_files=files,
        num_classes=num_classes,
        spec_augment=False,
        with_video_id=True,
        **arguments,
    )
    for batch in ds.multiview_eval_batches():
        inputs = batch["inputs"]
        views = next(iter(inputs.values())).shape[1]
        flat = {m: x.reshape(-1, *x.shape[2:]) for m, x in inputs.items()}
        outputs = trained(flat)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs
        logits = np.asarray(logits).reshape(-1, views, logits.shape[-1]).mean(axis=1)
        for k in np.flatnonzero(batch["batch_mask"] > 0):
            yield batch["video_id"][k].decode(), logits[k]


def top_k(logits, model, k: int, names: list[str]) -> list[dict] | dict[str, list[dict]]:
    """Scores (softmax per head, or sigmoid for multi-label) and the k best of each head."""

    def best(scores, offset=0):
        order = np.argsort(-scores, kind="stable")[:k]
        return [
            {
                "class": int(c),
                "name": names[offset + c] if offset + c < len(names) else None,
                "score": float(scores[c]),
            }
            for c in order
        ]

    def softmax(x):
        e = np.exp(x - x.max())
        return e / e.sum()

    if hasattr(model, "class_splits"):
        heads, offset = {}, 0
        for name, size in zip(model.split_names, model.class_splits):
            heads[name] = best(softmax(logits[offset : offset + size]), offset)
            offset += size
        return heads
    if model.dataset_meta_data.get("multi_label"):
        return best(1.0 / (1.0 + np.exp(-logits)))
    return best(softmax(logits))


def run(args, context) -> int:
    from scenic.train_lib import trainer

    if args.top_k < 1 or args.batch_size < 1 or (args.num_clips is not None and args.num_clips < 1):
        raise DataError("--top-k, --batch-size and --num-clips must be positive.")
    workdir = pathlib.Path(args.workdir)
    meta = trainer.load_meta_data(workdir)
    pipeline = meta.get("eval_pipeline")
    if not pipeline or pipeline.get("reader") != "audiovisual_tfrecord":
        raise DataError(
            f"{workdir}: the run's data set recorded no audio-visual eval pipeline "
            "(dataset_meta_data.json has no eval_pipeline from audiovisual_tfrecord)."
        )
    names = []
    if args.class_names:
        names = [n.strip() for n in open(args.class_names) if n.strip()]
    videos, records = split_inputs(args.inputs)
    examples = video_examples(videos, pipeline)
    trained = context.load_trained_model(workdir, step=args.step)
    model, num_classes = trained.model, meta["num_classes"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        if examples:
            from scenic.dataset_lib.write_video_records import write_video_records

            path = str(pathlib.Path(tmp) / "videos.tfrecord")
            write_video_records(examples, path)
            jobs.append(({e["video_id"]: e["video_id"] for e in examples}, [path], "waveform"))
        for record in records:
            jobs.append((None, [record], pipeline["audio_feature"]))
        for sources, files, audio_feature in jobs:
            arguments = reader_arguments(pipeline, audio_feature, args.num_clips)
            for video_id, logits in predict_records(
                trained, files, arguments, num_classes, args.batch_size
            ):
                source = sources[video_id] if sources else str(files[0])
                result = {
                    "input": source,
                    "video_id": video_id,
                    "top_k": top_k(logits, model, args.top_k, names),
                }
                print(json.dumps(result), flush=True)
                results.append(result)
    if args.output:
        pathlib.Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    return 0
