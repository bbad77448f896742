"""The keys the trainers read at the top level of a config, with their defaults.

`model` is checked against the model's constructor, `dataset_configs` against the data set
builder, `optimizer` against the optax function and `lr_configs` by the schedule.
"""

from __future__ import annotations

import ml_collections


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "experiment_name": "",
            "trainer_name": "classification_trainer",
            "model_name": "",
            "dataset_name": "",
            "dataset_configs": {},
            "model": {},
            "rng_seed": 0,
            "batch_size": 128,
            "eval_batch_size": 256,
            "num_training_steps": 0,
            "num_training_epochs": 0.0,
            "optimizer": {"name": "adamw"},
            "lr_configs": {"factors": "constant", "base_learning_rate": 1e-3},
            "log_summary_steps": 100,
            "log_eval_steps": 1000,
            "checkpoint_steps": 1000,
            "max_checkpoints_to_keep": 3,
            "prefetch_to_device": 2,
            "grad_accumulation_steps": 1,
            "profile_steps": 0,
            "compute_dtype": "float32",
            "multiview_test": False,
            "mixup": {},
            "ema": {},
            "init_from": {},
        }
    )


#: Sections whose keys are checked by whatever consumes them, not by the schema.
FREE_SECTIONS = ("model", "dataset_configs", "optimizer", "lr_configs", "mixup", "ema", "init_from")
