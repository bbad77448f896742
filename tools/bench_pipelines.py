"""Input pipeline throughput next to the matching trainer's: does the input keep up?

    hatch run python tools/bench_pipelines.py [--pipelines NAME ...] [--batches 20]
        [--trainer-steps N] [--skip-trainer] [--videos 64] [--data-dir DIR]

For each input pipeline of `scenic.dataset_lib` it builds the data set, pulls one warm-up
batch from `train_batches(0)` (or one eval pass's first batch in eval mode), then times
`--batches` more and prints examples/s (images or clips). Next to it, the examples/s of the
trainer for the matching model on synthetic in-memory data of the same shape (the machinery
of tools/bench_trainer.py), and input / trainer: above 1 the pipeline alone outruns the
training step. On a CPU the two share the cores in a real run, so > 1 is needed, not enough.

Data: no downloads. mnist, fashion_mnist, cifar10/100 come from `tfds.testing.mock_data`
(random examples, real feature specs and split sizes from core/tests/testdata/tfds_metadata);
imagenet2012 and coco from mock_data serving a pool of 64 JPEG-encoded images at their data
sets' usual sizes (375x500; 480x640 with 7 boxes each); digits, digits_detection,
moving_digits and audiovisual_digits are the built-in data sets (written once to their
default cache folders, or under --data-dir); video is `--videos` Kinetics-style records of 40
frames of 256x340 textured noise (JPEG, ~Kinetics frame sizes; `--video-noise white` for
incompressible worst-case frames), written to a temporary folder and read as
vivit_b16x2_fe_k400 reads Kinetics (stride 2, multi-scale crops, flip, 224 px, records read
by offset; eval: short side 256, central 224 crop, one view).

The trainers run first, before any TensorFlow is imported, so they are timed as
tools/bench_trainer.py times them. Trainer steps default to 10 (3 for ViViT-B/16x2, which
takes seconds a clip on a CPU); --trainer-steps sets them all.

--end-to-end adds a last column: the same trainer fed by the pipeline itself (tf.data on the
same cores, the way a real run trains), at the pipeline's batch, for every train pipeline
with a matching trainer except ViViT-B/16x2 (a batch of 8 clips of 32 frames takes minutes
a step on a CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
TFDS_METADATA = ROOT / "core" / "tests" / "testdata" / "tfds_metadata"
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_trainer  # noqa: E402  (tools/ is not a package)

SEED = 0
MOCK_EXAMPLES = 512  # mock_data examples per split for the in-memory TFDS data sets
POOL = 64  # JPEG images served by the imagenet2012 and coco mocks
VIDEO_FRAMES, VIDEO_HW, VIDEO_CLASSES = 40, (256, 340), 400


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """build(batch, data_dir, tmp, **video_args) -> Dataset; trainer: (bench_trainer model,
    input shape or None for the bench's own) timed for comparison, or None where there is no
    match; mock: `tfds.testing.mock_data` arguments to build and read under; video: the
    build takes the synthetic video settings."""

    build: Callable
    batch: int
    mode: str = "train"
    trainer: tuple[str, tuple | None] | None = None
    mock: dict | None = None
    video: bool = False


# --- builders -----------------------------------------------------------------------------------


def registered(name: str, writes_data: bool = False, **extra):
    """Builds data set `name` from the registry; `writes_data`: a built-in data set written
    on first use, under --data-dir when given (else its default cache folder)."""

    def build(batch, data_dir, tmp):
        from scenic.dataset_lib import datasets

        kwargs = dict(extra)
        if writes_data and data_dir:
            kwargs["data_dir"] = os.path.join(data_dir, name)
        return datasets.get_dataset(
            name, batch_size=batch, eval_batch_size=batch, seed=SEED, **kwargs
        )

    return build


def textured_images(rng, count: int, height: int, width: int, noise: str = "smooth"):
    """uint8 [count, H, W, 3]: bilinear-upsampled coarse noise plus fine grain, which JPEG
    compresses to roughly the size of natural photos; 'white' is incompressible noise."""
    import numpy as np
    import tensorflow as tf

    if noise == "white":
        return rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
    coarse = rng.uniform(0, 255, (count, height // 16 + 1, width // 16 + 1, 3))
    smooth = tf.image.resize(coarse, (height, width), method="bilinear").numpy()
    grain = rng.normal(0, 6, smooth.shape)
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


def jpeg_pool(rng, height: int, width: int) -> list[bytes]:
    from scenic.dataset_lib.write_video_records import encode_frames

    return encode_frames(textured_images(rng, POOL, height, width), quality=90)


def mock_as_dataset(builder, split, decoders=None, read_config=None, **kwargs):
    """`builder.as_dataset` under mock_data for imagenet2012 and coco/2017: a pool of JPEGs
    (decoded here unless the reader skips decoding, as TFDS does) with labels / boxes."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(SEED)
    if builder.name == "imagenet2012":
        examples = {"image": jpeg_pool(rng, 375, 500), "label": rng.integers(0, 1000, POOL)}
    elif builder.name == "coco":
        num_boxes = 7
        corner = rng.uniform(0.0, 0.7, (POOL, num_boxes, 2))
        size = rng.uniform(0.05, 0.3, (POOL, num_boxes, 2))
        examples = {
            "image": jpeg_pool(rng, 480, 640),
            "image/id": np.arange(POOL, dtype=np.int64),
            "image/filename": [f"{i}.jpg" for i in range(POOL)],
            "objects": {
                "bbox": np.concatenate([corner, corner + size], -1).astype(np.float32),
                "label": rng.integers(0, 80, (POOL, num_boxes)),
                "is_crowd": np.zeros((POOL, num_boxes), bool),
                "area": rng.integers(100, 50_000, (POOL, num_boxes)),
                "id": np.arange(POOL * num_boxes, dtype=np.int64).reshape(POOL, num_boxes),
            },
        }
    else:
        raise ValueError(f"No benchmark mock for TFDS data set {builder.name!r}.")
    ds = tf.data.Dataset.from_tensor_slices(examples)
    if isinstance((decoders or {}).get("image"), tfds.decode.SkipDecoding):
        return ds

    def decode(example):
        return {**example, "image": tf.io.decode_jpeg(example["image"], channels=3)}

    return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def write_videos(folder: str, count: int, noise: str) -> str:
    """`count` Kinetics-style records (40 JPEG frames of 256x340) in one file; its path."""
    import numpy as np

    from scenic.dataset_lib.write_video_records import write_video_records

    path = os.path.join(folder, f"videos_{count}_{noise}.tfrecord")
    if os.path.exists(path):
        return path
    rng = np.random.default_rng(SEED)

    def examples():
        for i in range(count):
            frames = textured_images(rng, VIDEO_FRAMES, *VIDEO_HW, noise)
            yield {"video_id": f"v{i}", "frames": frames, "labels": int(rng.integers(400))}

    write_video_records(examples(), path, quality=90)
    size = os.path.getsize(path) / (count * VIDEO_FRAMES * 1024)
    print(
        f"wrote {count} videos x {VIDEO_FRAMES} frames ({noise}, {size:.0f} KB a frame) to {path}",
        flush=True,
    )
    return path


def build_video(num_frames: int):
    def build(batch, data_dir, tmp, videos=64, noise="smooth"):
        from scenic.dataset_lib import video_dataset

        path = write_videos(tmp, videos, noise)
        return video_dataset.build_video_tfrecord(
            batch_size=batch,
            eval_batch_size=batch,
            seed=SEED,
            train_files=path,
            eval_files=path,
            num_classes=VIDEO_CLASSES,
            num_frames=num_frames,
            stride=2,
            image_size=224,
            resize_size=256,
            train_crop="multi_scale",
            random_flip=True,
            in_memory=False,
        )

    return build


VIVIT = "vivit_b16x2_fe"
RANDOM_TFDS = {"num_examples": MOCK_EXAMPLES}
JPEG_TFDS = {"as_dataset_fn": mock_as_dataset}
PIPELINES = {
    "digits": Pipeline(registered("digits"), 128, trainer=("digits", None)),
    "mnist": Pipeline(registered("mnist"), 128, mock=RANDOM_TFDS),
    "fashion_mnist": Pipeline(registered("fashion_mnist"), 128, mock=RANDOM_TFDS),
    "cifar10": Pipeline(registered("cifar10"), 128, trainer=("reference", None), mock=RANDOM_TFDS),
    "cifar100": Pipeline(
        registered("cifar100"), 128, trainer=("reference", None), mock=RANDOM_TFDS
    ),
    "imagenet2012": Pipeline(
        registered("imagenet2012", shuffle_buffer=POOL),
        32,
        trainer=("vit_s16", None),
        mock=JPEG_TFDS,
    ),
    "coco": Pipeline(
        registered("coco", image_size=640, max_boxes=100, shuffle_buffer=POOL),
        16,
        mock=JPEG_TFDS,
    ),
    "digits_detection": Pipeline(registered("digits_detection", writes_data=True), 64),
    "video16_train": Pipeline(build_video(16), 8, trainer=(VIVIT, (16, 224, 224, 3)), video=True),
    "video16_eval": Pipeline(build_video(16), 8, mode="eval", video=True),
    "video32_train": Pipeline(build_video(32), 8, trainer=(VIVIT, None), video=True),
    "video32_eval": Pipeline(build_video(32), 8, mode="eval", video=True),
    "moving_digits": Pipeline(
        registered("moving_digits", True, num_frames=8, train_clips_per_image=4),
        128,
        trainer=("vivit_moving_digits", None),
    ),
    "audiovisual_digits": Pipeline(registered("audiovisual_digits", writes_data=True), 128),
}


# --- timing ---------------------------------------------------------------------------------------


def leading_dim(batch) -> int:
    while isinstance(batch, dict):
        batch = next(iter(batch.values()))
    return len(batch)


def time_batches(batches, num_batches: int) -> float:
    """Examples/s over `num_batches` batches after one warm-up batch (graph building, first
    reads). Batches prefetched during the warm-up make this a slight overestimate for few
    batches."""
    next(batches)
    examples, start = 0, time.perf_counter()
    for batch in itertools.islice(batches, num_batches):
        examples += leading_dim(batch)
    return examples / (time.perf_counter() - start)


def pipeline_rate(name: str, args, tmp: str) -> float:
    pipeline = PIPELINES[name]
    batch = args.batch or pipeline.batch
    extra = {"videos": args.videos, "noise": args.video_noise} if pipeline.video else {}
    with mock_tfds(pipeline.mock):
        dataset = pipeline.build(batch, args.data_dir, tmp, **extra)
        if pipeline.mode == "train":
            batches = dataset.train_batches(0)
        else:  # eval passes, one after another
            batches = itertools.chain.from_iterable(
                dataset.eval_batches() for _ in itertools.count()
            )
        return time_batches(batches, args.batches)


def mock_tfds(settings: dict | None):
    import contextlib

    if settings is None:
        return contextlib.nullcontext()
    import tensorflow_datasets as tfds

    return tfds.testing.mock_data(data_dir=str(TFDS_METADATA), **settings)


def end_to_end_rate(name: str, args, tmp: str) -> float | None:
    """The matching trainer's examples/s fed by the pipeline itself (None where there is no
    trainer, in eval mode, and for ViViT-B/16x2)."""
    pipeline = PIPELINES[name]
    if pipeline.trainer is None or pipeline.mode != "train" or pipeline.trainer[0] == VIVIT:
        return None
    batch = args.batch or pipeline.batch
    extra = {"videos": args.videos, "noise": args.video_noise} if pipeline.video else {}
    bench_trainer.setup()  # also with --skip-trainer
    with mock_tfds(pipeline.mock):
        dataset = pipeline.build(batch, args.data_dir, tmp, **extra)
        result = bench_trainer.measure(
            pipeline.trainer[0], steps=args.trainer_steps or 10, batch=batch, dataset=dataset
        )
    return result["examples_per_sec"]


def trainer_rates(names, steps: int | None) -> dict:
    """(bench_trainer model, input shape) -> examples/s, for the trainers `names` need."""
    bench_trainer.setup()
    rates = {}
    for name in names:
        key = PIPELINES[name].trainer
        if key is None or key in rates:
            continue
        model, shape = key
        n = steps or (3 if model == VIVIT else 10)
        print(f"timing trainer {model} {shape or ''} ({n} steps) ...", flush=True)
        result = bench_trainer.measure(model, steps=n, input_shape=shape)
        rates[key] = result["examples_per_sec"]
    return rates


def main() -> None:
    from scenic.common_lib import allocator

    allocator.reexec_with_huge_pages()  # as bench_trainer and the scenic-* commands do
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=list(PIPELINES))
    parser.add_argument("--batches", type=int, default=20, help="timed batches per pipeline")
    parser.add_argument("--batch", type=int, default=None, help="override every pipeline's batch")
    parser.add_argument("--skip-trainer", action="store_true", help="time the pipelines only")
    parser.add_argument(
        "--end-to-end", action="store_true", help="also train each matching model on the pipeline"
    )
    parser.add_argument(
        "--trainer-steps", type=int, default=None, help="trainer steps (default 10; 3 for ViViT-B)"
    )
    parser.add_argument("--videos", type=int, default=64, help="synthetic videos to write")
    parser.add_argument("--video-noise", choices=("smooth", "white"), default="smooth")
    parser.add_argument(
        "--data-dir", default=None, help="where built-in data sets are written (default: cache)"
    )
    args = parser.parse_args()

    rates = {} if args.skip_trainer else trainer_rates(args.pipelines, args.trainer_steps)
    print(
        f"\n{os.cpu_count()} CPUs, allocator {allocator.describe()}; "
        f"{args.batches} timed batches after 1 warm-up\n"
    )
    header = (
        f"{'pipeline':20s} {'mode':5s} {'batch':>5s} {'input ex/s':>10s}  "
        f"{'trainer':22s} {'ex/s':>8s} {'input/trainer':>13s}"
        + (f" {'end-to-end ex/s':>15s}" if args.end_to_end else "")
    )
    with tempfile.TemporaryDirectory(prefix="bench_pipelines_") as tmp:
        if any(PIPELINES[name].video for name in args.pipelines):
            write_videos(tmp, args.videos, args.video_noise)  # before the table: it prints
        print(header)
        for name in args.pipelines:
            pipeline = PIPELINES[name]
            rate = pipeline_rate(name, args, tmp)
            trainer, trainer_rate = "-", None
            if pipeline.trainer is not None:
                model, shape = pipeline.trainer
                trainer = model + (f" {shape[0]}fr" if shape and len(shape) == 4 else "")
                trainer_rate = rates.get(pipeline.trainer)
            line = (
                f"{name:20s} {pipeline.mode:5s} {args.batch or pipeline.batch:5d} {rate:10.1f}  "
                f"{trainer:22s}"
            )
            if trainer_rate:
                line += f" {trainer_rate:8.2f} {rate / trainer_rate:13.2f}"
            if args.end_to_end:
                both = end_to_end_rate(name, args, tmp)
                if both:
                    line = f"{line:{len(header) - 16}s} {both:15.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
