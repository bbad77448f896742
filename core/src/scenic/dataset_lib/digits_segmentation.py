"""`digits_segmentation`: scikit-learn's digits on small canvases with per-pixel class masks,
a real TFDS data set.

A semantic segmentation data set that needs no download, for the UNet demo and for tests.
Each 32x32 canvas holds 1 to 3 handwritten digits, upsampled (bilinear) to 10-18 px squares
at random non-overlapping positions on a black background. The mask gives every pixel a
class: a pixel of a digit's square whose upsampled intensity is at least `INK_THRESHOLD`
(half of full scale: the digit's ink) is class `d + 1` for digit d; every other pixel,
including the faint rim of a stroke, is background, class 0. So 11 classes, and mean IoU
counts the background class too. Train canvases use only the digit images of the train part
of the same stratified split as the `digits` classification data set (and
`digits_detection`), test canvases only the rest.

The canvases are a fixed function of `VERSION` and are written once, as a TFDS data set with
oxford_iiit_pet's feature names (`image`, `segmentation_mask`; both PNG, so pixels and
classes read back exactly), to `data_dir` (default
`~/.cache/scenic/digits_segmentation/<VERSION>`), via a temporary directory and a rename,
so concurrent builders never see a half-written data set. They are then read back through
the TFDS segmentation reader, `segmentation_dataset.build_tfds_segmentation`.
"""

from __future__ import annotations

import io
import os

import numpy as np

from scenic.dataset_lib import dataset_utils
from scenic.dataset_lib.digits_detection import digit_pools, prepare_tfds_dataset

NAME = "digits_segmentation"
VERSION = "1.0.0"
CLASS_NAMES = (
    "background",
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
)
CANVAS_SIZE = 32
MAX_DIGITS = 3
DIGIT_SIZES = (10, 18)  # inclusive range of the upsampled digit squares, in pixels
INK_THRESHOLD = 128  # upsampled intensity (0..255) from which a pixel belongs to its digit
SPLIT_SIZES = {"train": 4000, "test": 1000}
_SPLIT_SALT = {"train": 0, "test": 1}


def default_data_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "scenic", NAME, VERSION)


def make_canvas(split: str, index: int) -> dict:
    """Canvas `index` of `split`: image [32, 32, 3] uint8, mask [32, 32] uint8 (NumPy).

    Also returns `squares` (pixel yxyx of each digit's square, exclusive upper edges),
    `labels` (its digit 0-9) and `digit_indices` (which scikit-learn digit image each one
    is). A fixed function of (split, index).
    """
    from PIL import Image

    images, labels, pools = digit_pools()
    rng = np.random.default_rng([2025, _SPLIT_SALT[split], index])
    canvas = np.zeros((CANVAS_SIZE, CANVAS_SIZE), np.uint8)
    mask = np.zeros((CANVAS_SIZE, CANVAS_SIZE), np.uint8)
    squares, chosen = [], []
    for _ in range(rng.integers(1, MAX_DIGITS + 1)):
        size = int(rng.integers(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1))
        for _attempt in range(20):
            top, left = (int(v) for v in rng.integers(0, CANVAS_SIZE - size + 1, size=2))
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
        mask[top : top + size, left : left + size] = np.where(
            patch >= INK_THRESHOLD, labels[digit] + 1, 0
        )
        squares.append(square)
        chosen.append(digit)
    return {
        "image": np.repeat(canvas[..., None], 3, axis=-1),
        "mask": mask,
        "squares": np.array(squares, np.int64).reshape(-1, 4),
        "labels": labels[chosen],
        "digit_indices": np.array(chosen, np.int64),
    }


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def tfds_examples(split: str, num_examples: int):
    """The first `num_examples` (key, example) pairs of `split`, PNG-encoded."""
    from PIL import Image

    def png(array):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    for index in range(num_examples):
        canvas = make_canvas(split, index)
        yield index, {"image": png(canvas["image"]), "segmentation_mask": png(canvas["mask"])}


def features():
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "segmentation_mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        }
    )


def prepare(data_dir: str | None = None, split_sizes: dict[str, int] | None = None) -> str:
    """Writes the data set to `data_dir` unless it is there; returns `data_dir`.

    Smaller `split_sizes` write a prefix of each split (for tests; use a dir of their own).
    """
    return prepare_tfds_dataset(
        NAME, VERSION, features(), tfds_examples, data_dir or default_data_dir(),
        split_sizes or SPLIT_SIZES,
    )  # fmt: skip


def build_digits_segmentation(
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    data_dir: str | None = None,
    image_size: int = CANVAS_SIZE,
    min_scale: float = 1.0,
    max_scale: float = 1.0,
    flip: bool = False,
    shuffle_buffer: int = SPLIT_SIZES["train"],
) -> dataset_utils.Dataset:
    """Writes the data set on first use, then reads it with the TFDS segmentation reader
    (train / test); `class_names` are `CLASS_NAMES`.

    `flip` (random horizontal flips in training) is off by default: a mirrored digit is not
    the same digit (or not a digit). `min_scale` / `max_scale` jitter the canvas size in
    training (see `segmentation_dataset.train_transform`); 1.0 keeps it.
    """
    from scenic.dataset_lib import segmentation_dataset

    return segmentation_dataset.build_tfds_segmentation(
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        data_dir=prepare(data_dir),
        tfds_name=NAME,
        class_names=CLASS_NAMES,
        label_map={c: c for c in range(len(CLASS_NAMES))},
        image_size=image_size,
        eval_split="test",
        min_scale=min_scale,
        max_scale=max_scale,
        flip=flip,
        shuffle_buffer=shuffle_buffer,
    )
