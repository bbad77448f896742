"""The command-line runner every project's console script is built from.

    scenic-<name> train --config NAME_OR_PATH[:arg] --workdir DIR [--config.a.b=value ...]
    scenic-<name> eval  --workdir DIR [--config ...]   (default: the run's config.json)
    scenic-<name> list-configs

Multi-host: start the same command on every host with `--coordinator_address HOST:PORT
--num_processes N --process_id I` (or JAX's `JAX_COORDINATOR_ADDRESS` environment, or
`--multihost` for JAX's cluster auto-detection: SLURM, Open MPI, Kubernetes, Cloud TPU).

Exit codes: 0 done; 2 a problem with the command line, config or inputs (one line on
stderr); 1 a training failure such as a NaN loss; 130 / 143 stopped by SIGINT / SIGTERM
after checkpointing (run the same command again to resume).

The whole config is checked before anything is written to the workdir: unknown keys,
model, data set, trainer, optimizer or schedule names are errors that name the problem.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
from collections.abc import Callable, Sequence

import ml_collections

from scenic.common_lib import allocator, config_utils
from scenic.common_lib.config_utils import ConfigError

TRAINER_PROVIDED = ("batch_size", "eval_batch_size", "seed", "process_index", "process_count")


class UsageError(Exception):
    """A problem with the command line or its inputs: reported in one line, exit code 2."""


def expected_errors() -> tuple[type[Exception], ...]:
    from scenic.dataset_lib.datasets import UnknownDatasetError
    from scenic.train_lib.checkpoints import CheckpointMismatchError

    return (
        ConfigError,
        UsageError,
        UnknownDatasetError,
        CheckpointMismatchError,
        FileNotFoundError,
    )


def resolve_config(
    config: ml_collections.ConfigDict, models: dict[str, type], overrides: Sequence[str] = ()
):
    """Checks every key and name in `config`; returns (full config with defaults, model_cls).

    `overrides` ("a.b=v") may also set keys the config file leaves at their defaults (every
    key is then checked like the file's own).
    """
    from scenic.dataset_lib import datasets
    from scenic.train_lib import (
        ema,
        lr_schedules,
        mixup,
        optimizers,
        precision,
        pretrained_init,
        trainer_config,
        trainers,
    )

    config_utils.apply_overrides(
        config, overrides, trainer_config.FREE_SECTIONS, open_top_level=True
    )
    name = config.get("model_name", "")
    if name not in models:
        hint = config_utils.did_you_mean(str(name), models)
        known = ", ".join(sorted(models))
        raise ConfigError(f"Unknown model_name {name!r}.{hint} Known: {known}.")
    model_cls = models[name]
    schema = trainer_config.default_config()
    with schema.unlocked():
        for key in model_cls.config_keys:
            schema[key] = ml_collections.FieldReference(None, field_type=object)
    config_utils.check_schema(config, schema, free_sections=trainer_config.FREE_SECTIONS)
    config = config_utils.with_defaults(config, schema)
    trainer_config.check_values(config)
    config_utils.check_keys(config.model, model_cls.model_config_keys(), "model")
    model_cls.check_config(config)
    builder = datasets.get_dataset_builder(config.dataset_name)
    config_utils.check_keys_against_signature(
        config.dataset_configs, builder, "dataset_configs", exclude=TRAINER_PROVIDED
    )
    trainers.get_trainer(config.trainer_name)
    steps = config.num_training_steps or 1 << 30  # epochs: checked again once data is known
    schedule = lr_schedules.compound_schedule(config.lr_configs, steps)
    optimizers.get_optimizer(config.optimizer, schedule)
    mixup.from_config(config.mixup, None)
    ema.from_config(config.ema)
    precision.compute_dtype(config.compute_dtype)
    pretrained_init.check_config(config.init_from)
    return config, model_cls


def build_dataset(config: ml_collections.ConfigDict):
    import jax

    from scenic.dataset_lib import datasets

    return datasets.get_dataset(
        config.dataset_name,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        seed=config.rng_seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        **config.dataset_configs.to_dict(),
    )


def make_main(
    *, prog: str, config_package: str, models: Callable[[], dict[str, type]], description: str
) -> Callable[[Sequence[str] | None], int]:
    """Builds `main(argv) -> exit code` for a project's console script.

    `models` is called lazily and maps `config.model_name` values to BaseModel classes.
    Run as a console script (`argv` None), it first re-executes itself with glibc malloc on
    huge pages where that helps (`allocator.reexec_with_huge_pages`).
    """

    def main(argv: Sequence[str] | None = None) -> int:
        if argv is None:
            allocator.reexec_with_huge_pages()
        parser = argparse.ArgumentParser(prog=prog, description=description)
        sub = parser.add_subparsers(dest="command", required=True)
        train_p = sub.add_parser("train", help="train (or resume) a model in --workdir")
        train_p.add_argument("--config", required=True, help="config name or .py path[:arg]")
        train_p.add_argument("--workdir", required=True, help="checkpoints, summaries, metrics")
        eval_p = sub.add_parser("eval", help="evaluate the latest checkpoint in --workdir")
        eval_p.add_argument("--config", help="default: the config.json the run saved")
        eval_p.add_argument("--workdir", required=True)
        for p in (train_p, eval_p):
            add_distributed_flags(p)
        train_p.add_argument(
            "--profile",
            action="store_true",
            help="capture a JAX profiler trace of a few steps into WORKDIR/profile",
        )
        sub.add_parser("list-configs", help="list the configs this project ships")
        args, extra = parser.parse_known_args(argv)
        try:
            overrides = parse_overrides(extra)
            if args.command == "list-configs":
                print("\n".join(config_utils.list_configs(config_package)))
                return 0
            setup_logging()
            from scenic.train_lib import distributed

            distributed.initialize(
                args.coordinator_address, args.num_processes, args.process_id, args.multihost
            )
            if args.command == "train":
                return run_train(args, overrides, config_package, models())
            return run_eval(args, overrides, config_package, models())
        except expected_errors() as error:
            print(f"{prog}: error: {error}", file=sys.stderr)
            return 2
        except FloatingPointError as error:  # NonFiniteLossError: the run diverged
            print(f"{prog}: training failed: {error}", file=sys.stderr)
            return 1

    return main


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("multi-host (jax.distributed)")
    group.add_argument("--coordinator_address", help="HOST:PORT of process 0's coordinator")
    group.add_argument("--num_processes", type=int, help="number of processes in the run")
    group.add_argument("--process_id", type=int, help="this process's index, 0..N-1")
    group.add_argument(
        "--multihost", action="store_true", help="let JAX detect the cluster (SLURM, MPI, ...)"
    )


def parse_overrides(extra: Sequence[str]) -> list[str]:
    overrides, items = [], list(extra)
    while items:
        item = items.pop(0)
        if not item.startswith("--config."):
            raise UsageError(f"Unrecognised argument {item!r}; overrides look like --config.a.b=v.")
        item = item[len("--config.") :]
        if "=" not in item:
            if not items:
                raise UsageError(f"Override --config.{item} has no value.")
            item = f"{item}={items.pop(0)}"
        overrides.append(item)
    return overrides


def run_train(args, overrides, config_package, models) -> int:
    from scenic.train_lib import trainers

    config = config_utils.load_config(args.config, config_package)
    if args.profile:
        overrides = [*overrides, "profile_steps=5"]
    config, model_cls = resolve_config(config, models, overrides)
    logging.getLogger(__name__).info("Allocator: %s", allocator.describe())
    workdir = pathlib.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = build_dataset(config)
    trainer = trainers.get_trainer(config.trainer_name)
    _, final = trainer.train(model_cls=model_cls, dataset=dataset, config=config, workdir=workdir)
    if final.get("stopped_by"):
        print(
            f"Stopped by {final['stopped_by']} at step {final['step']}; checkpoint saved. "
            "Run the same command again to resume."
        )
        return int(final["exit_code"])
    print(summary_line("test", final))
    return 0


def run_eval(args, overrides, config_package, models) -> int:
    from scenic.train_lib import trainers

    workdir = pathlib.Path(args.workdir)
    if args.config:
        config = config_utils.load_config(args.config, config_package)
    else:
        saved = workdir / "config.json"
        if not saved.is_file():
            raise UsageError(f"{saved} does not exist; pass --config or a workdir of a run.")
        config = ml_collections.ConfigDict(json.loads(saved.read_text()))
    config, model_cls = resolve_config(config, models, overrides)
    dataset = build_dataset(config)
    trainer = trainers.get_trainer(config.trainer_name)
    metrics = trainer.evaluate_checkpoint(
        model_cls=model_cls, dataset=dataset, config=config, workdir=workdir
    )
    print(summary_line("eval", metrics))
    return 0


def summary_line(what: str, metrics: dict) -> str:
    parts = [f"{what} {k}: {v:.2%}" for k, v in sorted(metrics.items()) if k == "accuracy"]
    parts += [
        f"{k}: {v:.4f}"
        for k, v in sorted(metrics.items())
        if k not in ("accuracy", "step") and "/" not in k and isinstance(v, int | float)
    ]  # per-class values ('per_class_accuracy/7', 'iou/class_3') are in the metrics JSON
    return f"step {metrics.get('step')} | " + " | ".join(parts)


def setup_logging() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    for noisy in ("absl", "jax", "orbax", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
