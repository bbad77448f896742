"""Trainer registry: `config.trainer_name` -> a module with `train` and `evaluate_checkpoint`."""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType

from scenic.common_lib.config_utils import ConfigError

TRAINERS = {
    "classification_trainer": "scenic.train_lib.classification_trainer",
}


def get_trainer(name: str) -> ModuleType:
    if name not in TRAINERS:
        close = difflib.get_close_matches(name, list(TRAINERS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"Unknown trainer_name {name!r}.{hint} Known: {', '.join(sorted(TRAINERS))}."
        )
    return importlib.import_module(TRAINERS[name])
