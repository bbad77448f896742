"""A whole project built from scenic's public API alone (no core file touched): its own data
set, trainer (the core one plus a config key), model and a `detect` verb.

    python -m quadrants.cli train --config quadrants_demo --workdir DIR
    python -m quadrants.cli detect --workdir DIR --images images.npy
"""

from __future__ import annotations

import json
import pathlib
import sys

import flax.linen as nn
import numpy as np

from scenic.common_lib.config_utils import ConfigError
from scenic.common_lib.runner import Command, UsageError, make_main
from scenic.dataset_lib import Dataset, dataset_utils, register_dataset
from scenic.model_lib.base_models import ClassificationModel
from scenic.train_lib import trainer as core_trainer
from scenic.train_lib.trainers import register_trainer

SIZE = 8


def make_images(labels: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """A bright 4x4 square in quadrant `label` (0-3) of an 8x8 image, plus noise."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, noise, (len(labels), SIZE, SIZE, 1)).astype(np.float32)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 2)
        images[i, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4] += 1.0
    return images


@register_dataset("quadrants")
def build_quadrants(
    *,
    batch_size,
    eval_batch_size,
    seed,
    process_index=0,
    process_count=1,
    num_train=256,
    num_eval=50,
    noise=0.3,
):
    if noise < 0:
        raise ValueError(f"quadrants noise must be >= 0, got {noise}.")
    labels = np.arange(num_train) % 4
    train_images = make_images(labels, noise, seed=1)
    eval_labels = np.arange(num_eval) % 4
    eval_arrays = {"inputs": make_images(eval_labels, noise, seed=2), "label": eval_labels}
    host_eval = eval_batch_size // process_count
    num_eval_batches = dataset_utils.num_eval_batches(num_eval, host_eval, process_count)

    def train_batches(start_step=0):
        step = start_step
        while True:
            indices, _ = dataset_utils.train_example_indices(
                step,
                num_examples=num_train,
                global_batch_size=batch_size,
                seed=seed,
                process_index=process_index,
                process_count=process_count,
            )
            yield {"inputs": train_images[indices], "label": labels[indices]}
            step += 1

    def eval_batches():
        return dataset_utils.padded_eval_batches(eval_arrays, host_eval, num_eval_batches)

    meta_data = {
        "num_classes": 4,
        "input_shape": (-1, SIZE, SIZE, 1),
        "input_dtype": np.float32,
        "num_train_examples": num_train,
        "num_eval_examples": num_eval,
    }
    return Dataset(meta_data, train_batches, eval_batches, num_eval_batches)


class NotesTrainer:
    """The core trainer plus one key, `notes`, written to WORKDIR/notes.txt after training."""

    FREE_SECTIONS = core_trainer.FREE_SECTIONS

    @staticmethod
    def default_config():
        config = core_trainer.default_config()
        config.notes = ""
        return config

    @staticmethod
    def check_config(config):
        core_trainer.check_config(config)
        if len(config.notes) > 40:
            raise ConfigError(f"notes must be at most 40 characters, got {len(config.notes)}.")

    @staticmethod
    def train(*, config, workdir, **kwargs):
        result = core_trainer.train(config=config, workdir=workdir, **kwargs)
        if result.completed:
            (pathlib.Path(workdir) / "notes.txt").write_text(config.notes + "\n")
        return result

    evaluate_checkpoint = staticmethod(core_trainer.evaluate_checkpoint)


register_trainer("notes_trainer", NotesTrainer)


class QuadrantNet(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, images, train: bool = False):
        return nn.Dense(self.num_classes)(images.reshape(images.shape[0], -1))


class QuadrantClassifier(ClassificationModel):
    def build_flax_model(self):
        return QuadrantNet(self.num_classes)


def detect(args, context) -> int:
    """Prints the quadrant of each image in an .npy file [N, 8, 8, 1]."""
    model = context.load_trained_model(args.workdir)
    images = np.load(args.images)
    if images.shape[1:] != (SIZE, SIZE, 1):
        expected = f"[N, {SIZE}, {SIZE}, 1]"
        raise UsageError(f"{args.images}: images must be {expected}, got {images.shape}.")
    quadrants = np.asarray(model(images)).argmax(-1)
    print(json.dumps({"step": model.step, "quadrants": quadrants.tolist()}))
    return 0


def detect_arguments(parser):
    parser.add_argument("--workdir", required=True, help="a training run's workdir")
    parser.add_argument("--images", required=True, help=".npy file of [N, 8, 8, 1] images")


main = make_main(
    prog="quadrants",
    config_package="quadrants.configs",
    models=lambda: {"quadrant_classifier": QuadrantClassifier},
    description="A project made of scenic's public API.",
    commands={"detect": Command(detect, "print the quadrant of each image", detect_arguments)},
)

if __name__ == "__main__":
    sys.exit(main())
