"""`digits_detection`: scikit-learn's digits scattered on small canvases, a real TFDS data set.

A detection data set that needs no download, for demos (OWL-ViT, DETR) and tests. Each
64x64 canvas holds 1 to 4 handwritten digits, upsampled to 12-28 px squares at random
non-overlapping positions on a black background. Boxes enclose each digit's non-zero
pixels exactly; labels are the digits 0-9, named "zero".."nine" for open-vocabulary
detection. Train canvases use only the digit images of the train part of the same
stratified split as the `digits` classification data set, test canvases only the rest.

The canvases are a fixed function of `VERSION` and are written once, as a TFDS data set with
coco/2017's feature names (`image`, `image/id`, `objects/{bbox, label, is_crowd, area, id}`;
images are PNG so the pixels read back exactly), to `data_dir` (default
`~/.cache/scenic/digits_detection/<VERSION>`), via a temporary directory and a rename, so
concurrent builders never see a half-written data set. They are then read back through the
COCO reader, `detection_dataset.build_coco_detection`.
"""

from __future__ import annotations

import functools
import io
import os

import numpy as np

from scenic.dataset_lib import dataset_utils

NAME = "digits_detection"
VERSION = "1.0.0"
CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CANVAS_SIZE = 64
MAX_DIGITS = 4
DIGIT_SIZES = (12, 28)  # inclusive range of the upsampled digit squares, in pixels
SPLIT_SIZES = {"train": 2000, "test": 500}
_FIRST_IMAGE_ID = {"train": 1, "test": 1_000_001}
_SPLIT_SALT = {"train": 0, "test": 1}


def default_data_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "scenic", NAME, VERSION)


@functools.lru_cache(maxsize=1)
def digit_pools():
    """(images uint8 [1797, 8, 8] in 0..255, labels, {split: indices of its digit images})."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    # The same split as `digits_dataset.load_split` (same arguments), on indices.
    train, test = train_test_split(
        np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0
    )
    return images, labels, {"train": np.sort(train), "test": np.sort(test)}


def make_canvas(split: str, index: int) -> dict:
    """Canvas `index` of `split`: image [64, 64, 3] uint8 and per-digit layout (NumPy).

    Returns `image`, `boxes` (pixel yxyx, [k, 4], exclusive upper edges), `labels`,
    `areas` (number of non-zero pixels of each digit) and `digit_indices` (which
    scikit-learn digit image each one is). A fixed function of (split, index).
    """
    from PIL import Image

    images, labels, pools = digit_pools()
    rng = np.random.default_rng([2024, _SPLIT_SALT[split], index])
    canvas = np.zeros((CANVAS_SIZE, CANVAS_SIZE), np.uint8)
    squares, boxes, chosen, areas = [], [], [], []
    for _ in range(rng.integers(1, MAX_DIGITS + 1)):
        size = int(rng.integers(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1))
        for _attempt in range(20):
            top, left = rng.integers(0, CANVAS_SIZE - size + 1, size=2)
            square = (top, left, top + size, left + size)
            if not any(_overlap(square, other) for other in squares):
                break
        else:
            continue  # no free spot for this digit: the canvas keeps fewer digits
        digit = int(rng.choice(pools[split]))
        patch = np.asarray(
            Image.fromarray(images[digit]).resize((size, size), Image.Resampling.BILINEAR)
        )
        canvas[top : top + size, left : left + size] = patch
        rows, cols = np.nonzero(patch)
        boxes.append(
            [top + rows.min(), left + cols.min(), top + rows.max() + 1, left + cols.max() + 1]
        )
        squares.append(square)
        chosen.append(digit)
        areas.append(len(rows))
    return {
        "image": np.repeat(canvas[..., None], 3, axis=-1),
        "boxes": np.array(boxes, np.int64).reshape(-1, 4),
        "labels": labels[chosen],
        "areas": np.array(areas, np.int64),
        "digit_indices": np.array(chosen, np.int64),
    }


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def tfds_examples(split: str, num_examples: int):
    """The first `num_examples` (key, example) pairs of `split`, in coco/2017's layout."""
    from PIL import Image

    for index in range(num_examples):
        canvas = make_canvas(split, index)
        image_id = _FIRST_IMAGE_ID[split] + index
        png = io.BytesIO()
        Image.fromarray(canvas["image"]).save(png, format="PNG", compress_level=1)
        k = len(canvas["labels"])
        yield (
            index,
            {
                "image": png.getvalue(),
                "image/id": image_id,
                "objects": {
                    "bbox": (canvas["boxes"] / CANVAS_SIZE).astype(np.float32),
                    "label": canvas["labels"],
                    "is_crowd": np.zeros(k, bool),
                    "area": canvas["areas"],
                    "id": image_id * MAX_DIGITS + np.arange(k),
                },
            },
        )


def features():
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "image/id": np.int64,
            "objects": tfds.features.Sequence(
                {
                    "bbox": tfds.features.BBoxFeature(),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                    "is_crowd": np.bool_,
                    "area": np.int64,
                    "id": np.int64,
                }
            ),
        }
    )


def write_tfds_dataset(name: str, version: str, features, split_examples, data_dir: str):
    """Writes Python `(key, example)` iterables as a prepared TFDS data set under `data_dir`.

    The data set is read back with `tfds.builder(name, data_dir=data_dir)`, like any other.
    """
    import tensorflow_datasets as tfds

    class Builder(tfds.dataset_builders.AdhocBuilder, skip_registration=True):
        # Nothing is downloaded. Also sidesteps TFDS 4.9.10's checksum-file lookup, which
        # imports the `importlib_resources` package that newer etils no longer installs.
        url_infos = None

    builder = Builder(
        name=name,
        version=version,
        features=features,
        split_datasets=split_examples,
        data_dir=data_dir,
        disable_shuffling=True,  # keep the written order: the data set is a fixed function
    )
    builder.download_and_prepare()
    return builder


def prepare_tfds_dataset(
    name: str, version: str, features, split_examples, data_dir: str, split_sizes: dict[str, int]
) -> str:
    """Writes a built-in TFDS data set to `data_dir` once (`write_tfds_dataset` of
    `split_examples(split, count)` for each split in `split_sizes`, via a temporary
    directory and a rename); returns `data_dir`. A non-empty `data_dir` that holds no
    prepared `name` `version` is refused rather than written into."""
    data_dir = os.path.abspath(data_dir)

    def is_prepared(folder: str) -> bool:
        return os.path.exists(os.path.join(folder, name, version, "dataset_info.json"))

    if is_prepared(data_dir):
        return data_dir
    if os.path.exists(data_dir) and os.listdir(data_dir):
        raise FileExistsError(
            f"{data_dir} exists but holds no prepared {name} {version}; remove it or pass "
            "another data_dir."
        )

    def write(folder):
        splits = {split: split_examples(split, n) for split, n in split_sizes.items()}
        write_tfds_dataset(name, version, features, splits, folder)

    return dataset_utils.write_once(data_dir, write, is_complete=is_prepared)


def prepare(data_dir: str | None = None, split_sizes: dict[str, int] | None = None) -> str:
    """Writes the data set to `data_dir` unless it is there; returns `data_dir`.

    Smaller `split_sizes` write a prefix of each split (for tests; use a dir of their own).
    """
    return prepare_tfds_dataset(
        NAME, VERSION, features(), tfds_examples, data_dir or default_data_dir(),
        split_sizes or SPLIT_SIZES,
    )  # fmt: skip


def build_digits_detection(
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    data_dir: str | None = None,
    image_size: int = CANVAS_SIZE,
    max_boxes: int = MAX_DIGITS,
    min_scale: float = 0.5,
    max_scale: float = 1.5,
    flip: bool = False,
    shuffle_buffer: int = 1000,
) -> dataset_utils.Dataset:
    """Writes the data set on first use, then reads it like coco/2017 (train / test).

    `flip` (random horizontal flips in training) is off by default: a mirrored digit is
    not the same digit (or not a digit), unlike COCO's objects.
    """
    from scenic.dataset_lib import detection_dataset

    return detection_dataset.build_coco_detection(
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        data_dir=prepare(data_dir),
        tfds_name=NAME,
        image_size=image_size,
        max_boxes=max_boxes,
        eval_split="test",
        min_scale=min_scale,
        max_scale=max_scale,
        flip=flip,
        shuffle_buffer=shuffle_buffer,
    )
