"""The keys the trainers read at the top level of a config, with their defaults.

`model` is checked against the model's constructor, `dataset_configs` against the data set
builder, `optimizer` against the optax function and `lr_configs` by the schedule.
"""

from __future__ import annotations

import ml_collections

from scenic.common_lib.config_utils import ConfigError

#: Integer top-level keys and their least usable value (the loop uses `step % key` for the
#: step counts, batches are split by the sizes; 0 steps means "use the epochs").
MINIMUMS = {
    "batch_size": 1,
    "eval_batch_size": 1,
    "log_summary_steps": 1,
    "log_eval_steps": 1,
    "checkpoint_steps": 1,
    "max_checkpoints_to_keep": 1,
    "grad_accumulation_steps": 1,
    "prefetch_to_device": 0,
    "num_training_steps": 0,
    "profile_steps": 0,
}


def default_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "experiment_name": "",
            "trainer_name": "trainer",
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
            # 'pmap' (data parallelism) or 'mesh' (jit over the mesh below, parameters and
            # optimizer state sharded by partition_rules; see train_lib/layouts.py).
            "parallelism": "pmap",
            "mesh": {"data": -1, "fsdp": 1, "model": 1},
            "partition_rules": (),
        }
    )


#: Sections whose keys are checked by whatever consumes them, not by the schema.
FREE_SECTIONS = (
    "model",
    "dataset_configs",
    "optimizer",
    "lr_configs",
    "mixup",
    "ema",
    "init_from",
    "mesh",  # checked by partitioning.mesh_shape: axes left out default there
)


def check_values(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for values no run can use, naming the key: counts below 1 (a
    `step % 0` or an empty batch later), negative prefetch or steps, and label smoothing set
    both for the model and for mixup's soft targets (it would smooth twice)."""
    for key, minimum in MINIMUMS.items():
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}.")
    if not config.num_training_steps and not config.num_training_epochs:
        raise ConfigError("Set num_training_steps or num_training_epochs (both are 0).")
    if config.num_training_epochs < 0:
        raise ConfigError(f"num_training_epochs must be >= 0, got {config.num_training_epochs}.")
    if config.parallelism not in ("pmap", "mesh"):
        raise ConfigError(f"parallelism must be 'pmap' or 'mesh', got {config.parallelism!r}.")
    if config.get("label_smoothing") and (config.mixup or {}).get("label_smoothing"):
        raise ConfigError(
            "label_smoothing and mixup.label_smoothing are both set: targets would be "
            "smoothed twice; set only mixup.label_smoothing when mixup is on."
        )


def check_batch_split(
    config: ml_collections.ConfigDict, process_count: int, local_device_count: int
) -> None:
    """Raises ConfigError unless the batches split evenly over every device and the
    per-device batch over `grad_accumulation_steps` micro-batches."""
    devices = process_count * local_device_count
    layout = f"{process_count} host(s) x {local_device_count} local device(s)"
    for key in ("batch_size", "eval_batch_size"):
        if config[key] % devices:
            raise ConfigError(f"{key}={config[key]} must be divisible by the {layout}.")
    per_device = config.batch_size // devices
    accumulation = config.grad_accumulation_steps
    if per_device % accumulation:
        raise ConfigError(
            f"grad_accumulation_steps={accumulation} must divide the per-device batch "
            f"(batch_size={config.batch_size} over {layout} = {per_device})."
        )
