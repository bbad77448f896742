"""`moving_digits`: scikit-learn's real 8x8 digits moving across a 16x16 canvas, 8 frames.

A video task that needs no download and that a single frame cannot solve. Each video shows
one digit image drifting `speed` pixels a frame right, left, down or up on a torus (it wraps
around the edges); label = digit * 4 + direction (40 classes). Start positions are uniform
over the 256 canvas cells (balanced: within each split and direction the cell counts differ
by at most one), so every frame, taken alone, has the same distribution whatever the
direction: a frame-only model can name the digit but not the direction (<= ~25% of the 40
classes); a model that compares frames can get both.

The digit images follow `digits_dataset`'s fixed stratified split (test digits are never
seen in training); every train image appears in all four directions
(`train_clips_per_image` times each, with different starts), every test image once each.
Frames are grayscale (channels 1), stored as JPEG in the Kinetics-style SequenceExample
layout (core/docs/video_records.md) and read back through `video_dataset`.

Generated once (a few seconds), deterministically, into
`{data_dir}/{VERSION}/speed{speed}_clips{train_clips_per_image}/` (default data_dir
~/.cache/scenic/moving_digits): written to a temporary folder, then renamed into place, so an
interrupted run never leaves half a data set.
"""

from __future__ import annotations

import json
import os

import numpy as np

from scenic.dataset_lib import dataset_utils, digits_dataset, video_dataset, write_video_records

VERSION = "1.0.0"
CANVAS = 16
NUM_FRAMES = 8
DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # (dy, dx): right, left, down, up
NUM_CLASSES = 10 * len(DIRECTIONS)
DEFAULT_DATA_DIR = os.path.join("~", ".cache", "scenic", "moving_digits")
TEST_FRACTION = 0.2
JPEG_QUALITY = 95


def balanced_cells(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` canvas cells (y, x), each of the 256 used floor or ceil(count / 256) times."""
    cells = CANVAS * CANVAS
    order = np.concatenate([rng.permutation(cells) for _ in range(-(-count // cells))])[:count]
    return np.stack(np.divmod(order, CANVAS), axis=1)


def render(images: np.ndarray, starts: np.ndarray, directions: np.ndarray, speed: int):
    """Frames uint8 [N, NUM_FRAMES, CANVAS, CANVAS] and the digit's top-left cell per frame.

    images: [N, 8, 8] in [0, 1]; starts: [N, 2] cells; directions: [N] indices of DIRECTIONS.
    Frame t is the digit's canvas rolled (toroidally) to start + t * speed * direction.
    """
    n, size = len(images), images.shape[1]
    canvas = np.zeros((n, CANVAS, CANVAS), np.uint8)
    canvas[:, :size, :size] = np.round(images * 255.0).astype(np.uint8)
    steps = np.asarray(DIRECTIONS)[directions][:, None, :] * speed * np.arange(NUM_FRAMES)[:, None]
    positions = (starts[:, None, :] + steps) % CANVAS  # [N, T, 2]
    grid = np.arange(CANVAS)
    rows = (grid[None, None, :] - positions[..., :1]) % CANVAS  # [N, T, CANVAS]
    cols = (grid[None, None, :] - positions[..., 1:]) % CANVAS
    frames = canvas[np.arange(n)[:, None, None, None], rows[..., :, None], cols[..., None, :]]
    return frames, positions


def generate_split(images, digits, clips_per_image: int, speed: int, seed: int):
    """All videos of one split: frames [N, T, 16, 16], labels, positions [N, T, 2], meta."""
    rng = np.random.default_rng(seed)
    n = len(images)
    image_index, directions, starts = [], [], []
    for _ in range(clips_per_image):
        for d in range(len(DIRECTIONS)):
            image_index.append(np.arange(n))
            directions.append(np.full(n, d))
            starts.append(balanced_cells(rng, n))
    image_index, directions = np.concatenate(image_index), np.concatenate(directions)
    frames, positions = render(images[image_index], np.concatenate(starts), directions, speed)
    labels = digits[image_index] * len(DIRECTIONS) + directions
    return frames, labels.astype(np.int64), positions, image_index, directions


def load_digit_split():
    """(train images [N, 8, 8], train digits, test images, test digits), `digits` split."""
    train_x, train_y, test_x, test_y = digits_dataset.load_split(8, TEST_FRACTION)
    return train_x[..., 0], train_y, test_x[..., 0], test_y


def write_split(path: str, split: str, frames, labels, image_index, directions) -> int:
    num_frames = frames.shape[1]
    encoded = write_video_records.encode_frames(frames.reshape(-1, CANVAS, CANVAS, 1), JPEG_QUALITY)

    def examples():
        for k in range(len(labels)):
            yield {
                "video_id": f"{split}-{image_index[k]:04d}-{directions[k]}-{k}",
                "frames": encoded[k * num_frames : (k + 1) * num_frames],
                "labels": int(labels[k]),
            }

    write_video_records.write_video_records(examples(), path, quality=JPEG_QUALITY)
    return len(labels)


def prepare(data_dir: str | None = None, speed: int = 1, train_clips_per_image: int = 1) -> str:
    """The folder holding train.tfrecord and test.tfrecord, generated first if missing."""
    if speed < 1 or train_clips_per_image < 1:
        raise ValueError("speed and train_clips_per_image must be >= 1.")
    root = os.path.expanduser(data_dir or DEFAULT_DATA_DIR)
    final = os.path.join(root, VERSION, f"speed{speed}_clips{train_clips_per_image}")

    def write(folder):
        train_x, train_y, test_x, test_y = load_digit_split()
        info = {"version": VERSION, "speed": speed, "train_clips_per_image": train_clips_per_image}
        for split, images, digits, clips, seed in (
            ("train", train_x, train_y, train_clips_per_image, 1),
            ("test", test_x, test_y, 1, 2),
        ):
            frames, labels, _, image_index, directions = generate_split(
                images, digits, clips, speed, seed
            )
            path = os.path.join(folder, f"{split}.tfrecord")
            info[f"num_{split}"] = write_split(path, split, frames, labels, image_index, directions)
        with open(os.path.join(folder, "info.json"), "w") as f:
            json.dump(info, f, indent=1)

    return dataset_utils.write_once(final, write)


def build_moving_digits(
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    data_dir: str | None = None,
    num_frames: int = NUM_FRAMES,
    stride: int = 1,
    speed: int = 1,
    train_clips_per_image: int = 1,
    random_wrap_shift: bool = False,
    decode_once: bool = True,
    num_test_clips: int = 1,
    with_video_id: bool = False,
) -> video_dataset.VideoDataset:
    """Moving digits for this host: inputs [B, num_frames, 16, 16, 1] in [-1, 1], 40 classes."""
    if num_frames > NUM_FRAMES:
        raise ValueError(f"moving_digits videos have {NUM_FRAMES} frames, asked {num_frames}.")
    folder = prepare(data_dir, speed, train_clips_per_image)
    ds = video_dataset.build_video_tfrecord(
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        train_files=os.path.join(folder, "train.tfrecord"),
        eval_files=os.path.join(folder, "test.tfrecord"),
        num_classes=NUM_CLASSES,
        num_frames=num_frames,
        stride=stride,
        image_size=CANVAS,
        channels=1,
        train_crop="none",  # crops and flips would change the digit or the direction
        random_flip=False,
        random_wrap_shift=random_wrap_shift,
        decode_once=decode_once,
        num_test_clips=num_test_clips,
        with_video_id=with_video_id,
    )
    ds.meta_data.update(num_directions=len(DIRECTIONS), data_dir=folder)
    return ds
