"""Trainer registry: `config.trainer_name` -> a trainer (a module or any object) providing

    default_config() -> ConfigDict   the top-level config keys it reads, with defaults
    FREE_SECTIONS                    (optional) sections whose keys their consumer checks
    check_config(config)             raises ConfigError for values it cannot use
    train(*, model_cls, dataset, config, workdir, stop_after_step=None) -> TrainResult
    evaluate_checkpoint(*, model_cls, dataset, config, workdir) -> dict of metrics

The runner asks the trainer for its schema and checks before anything is written. The core
trainer (`scenic.train_lib.trainer`) is registered as 'trainer' and, its former name,
'classification_trainer'. A project registers its own with `register_trainer`, usually by
extending the core one (its `default_config()` plus the project's keys, `train` calling
the core's); see core/docs/batch_contract.md.
"""

from __future__ import annotations

import importlib
from typing import Any

from scenic.common_lib.config_utils import ConfigError, did_you_mean

DEFAULT_TRAINER = "trainer"
_BUILTIN = {
    "trainer": "scenic.train_lib.trainer",
    "classification_trainer": "scenic.train_lib.trainer",
}
_REGISTERED: dict[str, Any] = {}
REQUIRED = ("default_config", "check_config", "train", "evaluate_checkpoint")


def register_trainer(name: str, trainer) -> None:
    """Registers `trainer` (a module, an import path 'pkg.module', or an object with the
    attributes above) under `name`; a name may be registered once."""
    if name in _BUILTIN or name in _REGISTERED:
        raise ValueError(f"Trainer {name!r} is already registered.")
    if not isinstance(trainer, str):
        check_trainer(name, trainer)
    _REGISTERED[name] = trainer


def list_trainers() -> list[str]:
    return sorted({*_BUILTIN, *_REGISTERED})


def get_trainer(name: str):
    """The trainer registered under `name`; ConfigError naming it if there is none."""
    if name in _REGISTERED:
        trainer = _REGISTERED[name]
    elif name in _BUILTIN:
        trainer = _BUILTIN[name]
    else:
        raise ConfigError(
            f"Unknown trainer_name {name!r}.{did_you_mean(str(name), list_trainers())} "
            f"Known: {', '.join(list_trainers())}."
        )
    if isinstance(trainer, str):
        trainer = importlib.import_module(trainer)
        check_trainer(name, trainer)
    return trainer


def check_trainer(name: str, trainer) -> None:
    missing = [attr for attr in REQUIRED if not callable(getattr(trainer, attr, None))]
    if missing:
        raise TypeError(
            f"Trainer {name!r} lacks {', '.join(missing)} (see scenic.train_lib.trainers)."
        )
