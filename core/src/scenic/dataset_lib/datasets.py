"""The data set registry: names -> builder functions, imported lazily.

Built-in data sets are listed by module path so that nothing (and no TensorFlow) is
imported until a data set is built. Projects add their own with `register_dataset`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from scenic.common_lib.config_utils import did_you_mean

_BUILTIN = {
    "audiovisual_digits": "scenic.dataset_lib.audiovisual_digits:build_audiovisual_digits",
    "audiovisual_tfrecord": "scenic.dataset_lib.audiovisual_dataset:build_audiovisual_tfrecord",
    "cifar10": "scenic.dataset_lib.tfds_classification:build_cifar10",
    "cifar100": "scenic.dataset_lib.tfds_classification:build_cifar100",
    "cityscapes": "scenic.dataset_lib.segmentation_dataset:build_cityscapes",
    "coco": "scenic.dataset_lib.detection_dataset:build_coco_detection",
    "coco_json": "scenic.dataset_lib.coco_json:build_coco_json",
    "digits": "scenic.dataset_lib.digits_dataset:build_digits",
    "digits_detection": "scenic.dataset_lib.digits_detection:build_digits_detection",
    "digits_segmentation": "scenic.dataset_lib.digits_segmentation:build_digits_segmentation",
    "fashion_mnist": "scenic.dataset_lib.tfds_classification:build_fashion_mnist",
    "imagenet2012": "scenic.dataset_lib.tfds_classification:build_imagenet2012",
    "mnist": "scenic.dataset_lib.tfds_classification:build_mnist",
    "moving_digits": "scenic.dataset_lib.moving_digits:build_moving_digits",
    "oxford_iiit_pet": "scenic.dataset_lib.segmentation_dataset:build_oxford_iiit_pet",
    "video_tfrecord": "scenic.dataset_lib.video_dataset:build_video_tfrecord",
}
_REGISTERED: dict[str, Callable] = {}


class UnknownDatasetError(KeyError):
    def __str__(self):
        return self.args[0]


def register_dataset(name: str):
    """Decorator registering a builder `fn(*, batch_size, eval_batch_size, seed, ..., **config)`."""

    def wrap(fn):
        if name in _REGISTERED or name in _BUILTIN:
            raise ValueError(f"Data set {name!r} is already registered.")
        _REGISTERED[name] = fn
        return fn

    return wrap


def list_datasets() -> list[str]:
    return sorted({*_BUILTIN, *_REGISTERED})


def get_dataset_builder(name: str) -> Callable:
    """The builder function registered under `name`; a clear error if there is none."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILTIN:
        module_name, attr = _BUILTIN[name].split(":")
        return getattr(importlib.import_module(module_name), attr)
    raise UnknownDatasetError(
        f"Unknown data set {name!r}.{did_you_mean(name, list_datasets())} "
        f"Registered: {', '.join(list_datasets())}."
    )


def get_dataset(name: str, **kwargs):
    """Builds the data set `name` (see `scenic.dataset_lib.dataset_utils.Dataset`)."""
    return get_dataset_builder(name)(**kwargs)
