"""Trainer registry: `config.trainer_name` -> a module with `train` and `evaluate_checkpoint`."""

from __future__ import annotations

import importlib
from types import ModuleType

from scenic.common_lib.config_utils import ConfigError, did_you_mean

TRAINERS = {
    "classification_trainer": "scenic.train_lib.classification_trainer",
}


def get_trainer(name: str) -> ModuleType:
    if name not in TRAINERS:
        raise ConfigError(
            f"Unknown trainer_name {name!r}.{did_you_mean(name, TRAINERS)} "
            f"Known: {', '.join(sorted(TRAINERS))}."
        )
    return importlib.import_module(TRAINERS[name])
