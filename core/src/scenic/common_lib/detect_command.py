"""The `detect` verb: a trained detector on image files, for any project with a
`DetectionModel` (`make_main(commands={"detect": detect_command.command()})`).

    scenic-<name> detect --workdir DIR IMAGE_OR_FOLDER... [--threshold T] [--out DIR]
        [--checkpoint STEP_OR_PATH] [--batch N] [--top-k K]

Each image is resized (longer side to the training canvas, bilinear) into the top-left of
the canvas with a padding mask, exactly as the evaluation pipeline does, and the model runs
jitted at that one fixed size in batches of `--batch` (the last one padded): one compile,
any number of images. Per image, `OUT/<name>.json` holds the detections above the threshold
(boxes as pixel xyxy of the original image, score, label and its name) and `OUT/<name>.png`
the image with them drawn. Needs no TensorFlow (PIL and NumPy read the images).

Exit codes: 0 all images done; 2 bad input found before any work (a path that does not
exist, no images in a folder, a workdir without a trained model): one line, nothing
written; 3 done, but some files could not be read as images: each is named in one line and
skipped, the others are written.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
EXIT_SKIPPED = 3


def command():
    """The `detect` `runner.Command`."""
    from scenic.common_lib.runner import Command

    return Command(run=run, help="detect objects in image files", add_arguments=add_arguments)


def add_arguments(parser) -> None:
    parser.add_argument("images", nargs="+", help="image files and / or folders of images")
    parser.add_argument("--workdir", required=True, help="the training run's workdir")
    parser.add_argument("--out", default=None, help="output folder (default WORKDIR/detect)")
    parser.add_argument("--threshold", type=float, default=0.5, help="minimum score kept")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="a step, or its folder WORKDIR/checkpoints/STEP (default: the latest)",
    )
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass")
    parser.add_argument("--top-k", type=int, default=100, help="detections kept per image")


def image_paths(arguments: list[str]) -> list[pathlib.Path]:
    """Files named, and the image files (by suffix, sorted) of folders named; UsageError
    naming the first path that does not exist or a folder without images."""
    from scenic.common_lib.runner import UsageError

    paths = []
    for argument in arguments:
        path = pathlib.Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}).")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise UsageError(f"{path} does not exist.")
    return paths


def checkpoint_step(value: str | None, workdir: str) -> int | None:
    """`--checkpoint` as a step: a number, or a step folder `WORKDIR/checkpoints/STEP` of
    this workdir; UsageError for anything else."""
    from scenic.common_lib.runner import UsageError

    if value is None or value.isdigit():
        return None if value is None else int(value)
    path = pathlib.Path(value)
    checkpoints = (pathlib.Path(workdir) / "checkpoints").resolve()
    if not (path.is_dir() and path.name.isdigit() and path.resolve().parent == checkpoints):
        raise UsageError(
            f"--checkpoint {value}: expected a step number or a step folder in {checkpoints}."
        )
    return int(path.name)


def load_image(path: pathlib.Path) -> np.ndarray:
    """uint8 RGB [H, W, 3]; ValueError with the reason if the file is not a readable image."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as error:
        raise ValueError(str(error) or type(error).__name__) from None


#: The normalisation of the data pipelines here: pixels / 127.5 - 1, i.e. mean and std 0.5
#: on [0, 1] pixels. Imported weights may expect others (CLIP's, for OWL-ViT).
PIPELINE_MEAN = PIPELINE_STD = (0.5, 0.5, 0.5)
PAD_VALUE = 0.5  # grey on [0, 1] pixels, before normalisation: 0 after the pipelines' scaling


def letterbox(image: np.ndarray, canvas: int, mean=PIPELINE_MEAN, std=PIPELINE_STD):
    """The eval pipeline's input: the longer side resized to `canvas` (bilinear), the image
    in the top-left of a grey square, pixels normalised by `mean` and `std` (on [0, 1]).
    Returns (image [S, S, 3] float32, padding mask [S, S] float32, (height, width) inside
    the canvas)."""
    from PIL import Image

    height, width = image.shape[:2]
    scale = canvas / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR)
    out = np.full((canvas, canvas, 3), PAD_VALUE, np.float32)
    out[:new_h, :new_w] = np.asarray(resized, np.float32) / 255.0
    out = (out - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    mask = np.zeros((canvas, canvas), np.float32)
    mask[:new_h, :new_w] = 1.0
    return out, mask, (new_h, new_w)


def padded_batch(arrays: list[np.ndarray], batch: int) -> np.ndarray:
    """`arrays` stacked and padded with zeros to `batch` rows (one compiled size)."""
    stacked = np.stack(arrays)
    return np.concatenate([stacked, np.zeros((batch - len(arrays), *stacked.shape[1:]),
                                             stacked.dtype)])  # fmt: skip


def as_detections(scores, labels, boxes, count: int) -> list[list[dict]]:
    """Top-k arrays [B, K] / [B, K, 4] (pixels) as per-image lists of detection records,
    for the first `count` (real, not padding) images."""
    scores, labels, boxes = (np.asarray(x) for x in (scores, labels, boxes))
    return [
        [
            {
                "box_xyxy": [round(float(v), 2) for v in boxes[i, j]],
                "score": float(scores[i, j]),
                "label": int(labels[i, j]),
            }
            for j in range(scores.shape[1])
        ]
        for i in range(count)
    ]


def detect_files(paths, detect_batch, *, batch: int, out: pathlib.Path, threshold: float,
                 label_name, prog: str) -> int:  # fmt: skip
    """Runs `detect_batch(images)` (uint8 images, at most `batch`; returns each one's
    detections) over the image files in batches, keeps detections scoring >= `threshold`,
    names their labels by `label_name(label)`, writes `out/<name>.json` and `.png` per
    image (a repeated file name gets a suffix), and prints the summary line. Unreadable
    files are named on stderr and skipped. Returns the exit code: 0, or EXIT_SKIPPED."""
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(paths))
    pending: list[tuple[pathlib.Path, np.ndarray]] = []
    stems: dict[str, int] = {}
    done = skipped = 0

    def flush():
        nonlocal done
        for (path, image), detections in zip(pending, detect_batch([im for _, im in pending])):
            kept = [d for d in detections if d["score"] >= threshold]
            for d in kept:
                d["label_name"] = label_name(d["label"])
            stems[path.stem] = stems.get(path.stem, 0) + 1
            stem = path.stem if stems[path.stem] == 1 else f"{path.stem}_{stems[path.stem]}"
            write_outputs(out / stem, path, image, kept)
            done += 1
            progress.update(done + skipped)
        pending.clear()

    for path in paths:
        try:
            pending.append((path, load_image(path)))
        except ValueError as error:
            skipped += 1
            progress.clear()
            print(f"{prog}: skipped {path}: not a readable image ({error}).", file=sys.stderr)
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    progress.clear()
    print(f"{done} image(s) -> {out}" + (f"; {skipped} skipped" if skipped else "") + ".")
    return EXIT_SKIPPED if skipped else 0


def run(args, context) -> int:
    from scenic.common_lib.runner import UsageError

    paths = image_paths(args.images)
    if args.batch < 1 or args.top_k < 1 or not 0.0 <= args.threshold <= 1.0:
        raise UsageError("--batch and --top-k must be >= 1 and --threshold in [0, 1].")
    step = checkpoint_step(args.checkpoint, args.workdir)
    trained = context.load_trained_model(args.workdir, step=step)
    if not hasattr(trained.model, "softmax"):
        raise UsageError(
            f"--workdir {args.workdir} holds a {trained.config.model_name}, not a detector."
        )
    detector = Detector(trained, args.batch, args.top_k)
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.workdir) / "detect"
    names = trained.model.dataset_meta_data.get("class_names")
    return detect_files(
        paths,
        detector,
        batch=args.batch,
        out=out,
        threshold=args.threshold,
        label_name=lambda label: names[label] if names else str(label),
        prog=context.prog,
    )


class Detector:
    """The model jitted once at the canvas size, on batches of `batch` images."""

    def __init__(self, trained, batch: int, top_k: int):
        import jax

        from scenic.model_lib import detection_postprocess

        self.trained, self.batch = trained, batch
        shape = trained.model.dataset_meta_data["input_shape"]
        shape = shape["image"] if isinstance(shape, dict) else shape
        self.canvas = int(shape[1])
        self.dict_inputs = isinstance(trained.model.dataset_meta_data["input_shape"], dict)
        softmax = trained.model.softmax

        def detect(variables, inputs, size, orig_size):
            outputs = trained.model.flax_model.apply(variables, inputs, train=False)
            scores, labels, boxes = detection_postprocess.top_k_detections(
                outputs["pred_logits"].astype("float32"),
                outputs["pred_boxes"].astype("float32"),
                top_k,
                softmax=softmax,
            )
            boxes = detection_postprocess.boxes_to_original_pixels(
                boxes, (self.canvas, self.canvas), size, orig_size
            )
            return scores, labels, boxes

        self._detect = jax.jit(detect)

    def __call__(self, images: list[np.ndarray]) -> list[list[dict]]:
        if not images:
            return []
        canvases, masks, sizes = zip(*(letterbox(image, self.canvas) for image in images))
        stack = lambda xs: padded_batch(list(xs), self.batch)
        image_batch, mask_batch = stack(canvases), stack(masks)
        size = stack([np.asarray(s, np.int32) for s in sizes])
        orig = stack([np.asarray(im.shape[:2], np.int32) for im in images])
        inputs = (
            {"image": image_batch, "padding_mask": mask_batch} if self.dict_inputs else image_batch
        )
        outputs = self._detect(self.trained.variables, inputs, size, orig)
        return as_detections(*outputs, count=len(images))


def write_outputs(stem: pathlib.Path, path: pathlib.Path, image: np.ndarray, detections) -> None:
    """`<stem>.json` and `<stem>.png` (the image with its boxes and labels)."""
    from PIL import Image, ImageDraw

    record = {
        "image": str(path),
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "detections": detections,
    }
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    drawn = Image.fromarray(image)
    draw = ImageDraw.Draw(drawn)
    for d in detections:
        draw.rectangle(
            d["box_xyxy"], outline=(255, 64, 64), width=max(1, min(image.shape[:2]) // 64)
        )
        draw.text(
            (d["box_xyxy"][0] + 2, d["box_xyxy"][1] + 1),
            f"{d['label_name']} {d['score']:.2f}",
            fill=(255, 255, 0),
        )
    drawn.save(stem.with_suffix(".png"))


class Progress:
    """`[#####.....] 12/40 images` on a terminal's stderr; silent otherwise."""

    def __init__(self, total: int):
        self.total, self.shown = total, sys.stderr.isatty()

    def update(self, done: int) -> None:
        if self.shown:
            filled = int(30 * done / max(self.total, 1))
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} images")
            sys.stderr.flush()

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
