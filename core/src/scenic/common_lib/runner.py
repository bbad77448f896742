"""The command-line runner every project's console script is built from.

    scenic-<name> train --config NAME_OR_PATH[:arg] --workdir DIR [--config.a.b=value ...]
    scenic-<name> eval  --workdir DIR [--config ...]   (default: the run's config.json)
    scenic-<name> list-configs
    scenic-<name> export --workdir DIR --format {stablehlo,savedmodel,onnx} --out DIR
                  [--batch N | --dynamic-batch] [--checkpoint STEP]   (`export_command`)
    scenic-<name> VERB ...        a project's own verbs (`make_main(commands=...)`)

Multi-host: start the same command on every host with `--coordinator_address HOST:PORT
--num_processes N --process_id I` (or JAX's `JAX_COORDINATOR_ADDRESS` environment, or
`--multihost` for JAX's cluster auto-detection: SLURM, Open MPI, Kubernetes, Cloud TPU).

Exit codes: 0 done; 2 a problem with the command line, config or inputs (one line on
stderr); 1 a training failure such as a NaN loss; 130 / 143 stopped by SIGINT / SIGTERM
after checkpointing (run the same command again to resume).

Everything is checked before the workdir is created or written to: unknown keys and
model, data set, trainer, optimizer or schedule names, values the trainer cannot use
(asked of the trainer, which owns its config schema), the data set builder's arguments
(the data set is built first), a config file that does not load, a workdir that is a
file. Each is one line on stderr naming the key or file, exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    from scenic.dataset_lib.dataset_utils import DataError
    from scenic.dataset_lib.datasets import UnknownDatasetError
    from scenic.train_lib.checkpoints import CheckpointMismatchError, CorruptCheckpointError
    from scenic.train_lib.pretrained_init import PretrainedInitError

    return (
        ConfigError,
        UsageError,
        UnknownDatasetError,
        DataError,
        CheckpointMismatchError,
        CorruptCheckpointError,
        PretrainedInitError,
        FileNotFoundError,
    )


def resolve_config(
    config: ml_collections.ConfigDict, models: dict[str, type], overrides: Sequence[str] = ()
):
    """Checks every key and value in `config`; returns (full config with defaults, model_cls).

    The trainer named by `trainer_name` owns the top-level schema (its `default_config`,
    `FREE_SECTIONS` and `check_config`); the model adds its own top-level keys and checks
    `config.model`; the data set builder's signature checks `dataset_configs`. `overrides`
    ("a.b=v") may also set keys the config file leaves at their defaults (every key is then
    checked like the file's own).
    """
    from scenic.dataset_lib import datasets
    from scenic.train_lib import trainers

    trainer_name = config.get("trainer_name", trainers.DEFAULT_TRAINER)
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "trainer_name":
            trainer_name = config_utils.parse_override_value(value)
    trainer = trainers.get_trainer(trainer_name)
    free_sections = tuple(getattr(trainer, "FREE_SECTIONS", ()))
    config_utils.apply_overrides(config, overrides, free_sections, open_top_level=True)
    name = config.get("model_name", "")
    if name not in models:
        hint = config_utils.did_you_mean(str(name), models)
        known = ", ".join(sorted(models))
        raise ConfigError(f"Unknown model_name {name!r}.{hint} Known: {known}.")
    model_cls = models[name]
    schema = trainer.default_config()
    with schema.unlocked():
        schema["trainer_name"] = trainer_name
        for key in model_cls.config_keys:
            schema[key] = ml_collections.FieldReference(None, field_type=object)
    config_utils.check_schema(config, schema, free_sections=free_sections)
    config = config_utils.with_defaults(config, schema)
    trainer.check_config(config)
    config_utils.check_keys(config.model, model_cls.model_config_keys(), "model")
    model_cls.check_config(config)
    builder = datasets.get_dataset_builder(config.dataset_name)
    config_utils.check_keys_against_signature(
        config.dataset_configs, builder, "dataset_configs", exclude=TRAINER_PROVIDED
    )
    return config, model_cls


def build_dataset(config: ml_collections.ConfigDict):
    """The data set of `config` for this host. A builder's ValueError (an argument out of
    range, a corrupt file) becomes a ConfigError naming the data set: bad input, exit 2."""
    import jax

    from scenic.dataset_lib import datasets

    try:
        return datasets.get_dataset(
            config.dataset_name,
            batch_size=config.batch_size,
            eval_batch_size=config.eval_batch_size,
            seed=config.rng_seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            **config.dataset_configs.to_dict(),
        )
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f"data set {config.dataset_name!r} (dataset_configs): {error}") from None


@dataclasses.dataclass(frozen=True)
class Command:
    """A project's own CLI verb (`make_main(commands={"detect": Command(...)})`).

    Attributes:
      run: `run(args, context) -> exit code`; raise ConfigError / UsageError /
        FileNotFoundError for bad input (one line on stderr, exit code 2).
      help: one line for `--help`.
      add_arguments: `fn(parser)` adding the verb's own arguments.
      distributed: add the multi-host flags and initialise `jax.distributed` first.
    """

    run: Callable[[argparse.Namespace, CommandContext], int]
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    distributed: bool = False


@dataclasses.dataclass
class CommandContext:
    """What a verb needs from its project: configs, models, data sets, trained models."""

    prog: str
    config_package: str
    models: dict[str, type]
    overrides: list[str]

    def load_config(self, spec: str | None = None, workdir: str | pathlib.Path | None = None):
        """(resolved config, model_cls) from `--config` (a name or path) or, without one,
        the config.json a training run left in `workdir`; the overrides applied."""
        config = read_config(spec, workdir, self.config_package)
        return resolve_config(config, self.models, self.overrides)

    def build_dataset(self, config):
        return build_dataset(config)

    def load_trained_model(self, workdir: str | pathlib.Path, config=None, step=None):
        """A `TrainedModel` (module, EMA or raw parameters, jitted predict) from the latest
        checkpoint (or `step`'s) in `workdir`."""
        from scenic.train_lib import trained_model

        if config is None:
            config, model_cls = self.load_config(None, workdir)
        else:
            model_cls = self.models[config.model_name]
        return trained_model.load_trained_model(model_cls, config, workdir, step)


def make_main(
    *,
    prog: str,
    config_package: str,
    models: Callable[[], dict[str, type]],
    description: str,
    commands: dict[str, Command] | None = None,
) -> Callable[[Sequence[str] | None], int]:
    """Builds `main(argv) -> exit code` for a project's console script.

    `models` is called lazily and maps `config.model_name` values to BaseModel classes (a
    project may register its data sets and trainers there, or at import). `commands` adds
    the project's own verbs (e.g. `detect`, `predict`) beside train, eval and list-configs.
    Run as a console script (`argv` None), it first re-executes itself with glibc malloc on
    huge pages where that helps (`allocator.reexec_with_huge_pages`).
    """
    commands = dict(commands or {})
    clash = set(commands) & set(BUILTIN_COMMANDS)
    if clash:
        raise ValueError(f"{prog}: commands {sorted(clash)} would replace built-in verbs.")

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
        for name, command in {**builtin_verbs(), **commands}.items():
            command_p = sub.add_parser(name, help=command.help)
            if command.add_arguments:
                command.add_arguments(command_p)
            if command.distributed:
                add_distributed_flags(command_p)
        args, extra = parser.parse_known_args(argv)
        try:
            overrides = parse_overrides(extra)
            if args.command == "list-configs":
                print("\n".join(config_utils.list_configs(config_package)))
                return 0
            setup_logging()
            verbs = {**builtin_verbs(), **commands}
            if args.command in ("train", "eval") or verbs[args.command].distributed:
                from scenic.train_lib import distributed

                distributed.initialize(
                    args.coordinator_address, args.num_processes, args.process_id, args.multihost
                )
            if args.command == "train":
                return run_train(args, overrides, config_package, models())
            if args.command == "eval":
                return run_eval(args, overrides, config_package, models())
            context = CommandContext(prog, config_package, models(), overrides)
            return int(verbs[args.command].run(args, context) or 0)
        except expected_errors() as error:
            print(f"{prog}: error: {error}", file=sys.stderr)
            return 2
        except FloatingPointError as error:  # NonFiniteLossError: the run diverged
            print(f"{prog}: training failed: {error}", file=sys.stderr)
            return 1

    return main


BUILTIN_COMMANDS = ("train", "eval", "list-configs", "export")


def builtin_verbs() -> dict[str, Command]:
    """The built-in verbs that are `Command`s like a project's own (`export`)."""
    from scenic.common_lib import export_command

    return {
        "export": Command(
            export_command.run,
            help="export the trained model for serving (StableHLO, SavedModel, ONNX)",
            add_arguments=export_command.add_arguments,
        )
    }


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


def read_config(
    spec: str | None, workdir: str | pathlib.Path | None, config_package: str
) -> ml_collections.ConfigDict:
    """`--config NAME_OR_PATH[:arg]`, or without one the config.json of the run in `workdir`."""
    if spec:
        return config_utils.load_config(spec, config_package)
    if workdir is None:
        raise UsageError("Pass --config or the --workdir of a training run.")
    saved = pathlib.Path(workdir) / "config.json"
    if not saved.is_file():
        raise UsageError(f"{saved} does not exist; pass --config or a workdir of a run.")
    try:
        return ml_collections.ConfigDict(json.loads(saved.read_text()))
    except json.JSONDecodeError as error:
        raise ConfigError(f"{saved} is not valid JSON: {error}.") from None


def check_workdir(workdir: pathlib.Path) -> None:
    """A workdir must be a directory or not exist yet (it is created only once all is checked)."""
    if workdir.exists() and not workdir.is_dir():
        raise UsageError(f"--workdir {workdir} exists and is not a directory.")
    parent = next((p for p in workdir.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"--workdir {workdir}: {parent} is not a directory.")


def run_train(args, overrides, config_package, models) -> int:
    from scenic.train_lib import trainers

    workdir = pathlib.Path(args.workdir)
    check_workdir(workdir)
    config = config_utils.load_config(args.config, config_package)
    if args.profile:
        overrides = [*overrides, "profile_steps=5"]
    config, model_cls = resolve_config(config, models, overrides)
    trainer = trainers.get_trainer(config.trainer_name)
    dataset = build_dataset(config)  # its argument checks too come before the workdir
    logging.getLogger(__name__).info("Allocator: %s", allocator.describe())
    created = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = trainer.train(model_cls=model_cls, dataset=dataset, config=config, workdir=workdir)
    except Exception:
        # An error the trainer finds before writing (a partition rule that fits no
        # parameter) leaves no trace: the workdir this run created goes if still empty.
        if created and workdir.is_dir() and not any(workdir.iterdir()):
            workdir.rmdir()
        raise
    if result.stopped_by:
        print(
            f"Stopped by {result.stopped_by} at step {result.step}; checkpoint saved. "
            "Run the same command again to resume."
        )
        return result.exit_code
    print(summary_line("test", result.metrics))
    return 0


def run_eval(args, overrides, config_package, models) -> int:
    from scenic.train_lib import trainers

    workdir = pathlib.Path(args.workdir)
    if not workdir.is_dir():
        raise UsageError(f"--workdir {workdir} is not a directory of a training run.")
    config = read_config(args.config, workdir, config_package)
    config, model_cls = resolve_config(config, models, overrides)
    trainer = trainers.get_trainer(config.trainer_name)
    dataset = build_dataset(config)
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
