"""The core trainer: one training loop for any task whose model fits `BaseModel`.

One process drives its local devices with `jax.pmap` (steps in `steps`), gradients and
metrics averaged over the device axis; or, with `parallelism = 'mesh'`, with `jax.jit` over
a (data, fsdp, model) device mesh whose partition rules shard parameters and optimizer
state (`layouts`, `partitioning`). The loop trains, evaluates every eval split
every `log_eval_steps` (`evaluation`), checkpoints every `checkpoint_steps` (and at the end),
and resumes from the latest checkpoint in the workdir with the data stream positioned
exactly where it stopped. Tasks plug in through the model (input spec, outputs,
`loss_and_metrics`, eval totals) and the data set, never by forking this loop.

Faults: SIGTERM / SIGINT checkpoint the current step and stop (see `preemption`); a
non-finite loss stops the run with `NonFiniteLossError` naming the first bad step, and
parameters that are not finite are never checkpointed. With several processes
(`jax.distributed`), each feeds its local devices from its own data slice and the pmap
collectives span every device.

The trainer owns its config schema: `default_config()` (top-level keys and defaults),
`FREE_SECTIONS` and `check_config()` (values), which the runner asks before a run starts.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scenic.common_lib import debug_utils
from scenic.common_lib.config_utils import ConfigError
from scenic.train_lib import (
    checkpoints,
    ema,
    evaluation,
    layouts,
    lr_schedules,
    mixup,
    optimizers,
    partitioning,
    precision,
    preemption,
    pretrained_init,
    steps,
    summaries,
    trainer_config,
)
from scenic.train_lib.train_state import TrainState

logger = logging.getLogger("scenic")
AXIS = steps.AXIS
META_DATA_FILE = "dataset_meta_data.json"

# The trainer's config schema (see trainers.py for what a trainer provides).
default_config = trainer_config.default_config
FREE_SECTIONS = trainer_config.FREE_SECTIONS


class NonFiniteLossError(FloatingPointError):
    """The training loss (or gradient) became NaN or infinite."""


@dataclasses.dataclass
class TrainResult:
    """What a call of `train` ends with.

    Attributes:
      state: the final train state on the host (`TrainState.to_dict()`).
      metrics: the last evaluation's metrics (main split unprefixed, extra splits as
        `{split}/{metric}`, multi-view as `multiview_*`) plus `step`, `train_time_sec` and
        `train_examples_per_sec`; without eval metrics if the run stopped early.
      step: the last step trained (and checkpointed).
      num_steps: the run's total number of steps.
      signal_number: the signal (SIGTERM / SIGINT) that stopped the run early, or None.
    """

    state: dict[str, Any]
    metrics: dict[str, float]
    step: int
    num_steps: int
    signal_number: int | None = None

    @property
    def completed(self) -> bool:
        return self.step >= self.num_steps

    @property
    def stopped_by(self) -> str | None:
        """'SIGTERM' / 'SIGINT' when a signal stopped the run (it checkpointed first)."""
        return preemption.signal_name(self.signal_number) if self.signal_number else None

    @property
    def exit_code(self) -> int:
        """0, or the conventional 128 + signal number of the signal that stopped the run."""
        return preemption.EXIT_CODES.get(self.signal_number, 1) if self.signal_number else 0


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for a value this trainer cannot use, before anything is written:
    counts, accumulation vs the per-device batch, batch vs devices and hosts, the optimizer,
    schedule, mixup, EMA, compute dtype and init_from sections."""
    trainer_config.check_values(config)
    trainer_config.check_batch_split(config, jax.process_count(), jax.local_device_count())
    if config.parallelism == "mesh":
        partitioning.mesh_shape(config.mesh.to_dict(), jax.device_count())
        partitioning.check_rules(config.partition_rules)
    steps_for_check = config.num_training_steps or 1 << 30  # epochs: checked once data is known
    schedule = lr_schedules.compound_schedule(config.lr_configs, steps_for_check)
    optimizers.get_optimizer(config.optimizer, schedule)
    mixup.from_config(config.mixup, None)
    ema.from_config(config.ema)
    precision.compute_dtype(config.compute_dtype)
    pretrained_init.check_config(config.init_from)


def total_train_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
    if config.num_training_steps:
        return int(config.num_training_steps)
    if config.num_training_epochs:
        return math.ceil(config.num_training_epochs * num_train_examples / config.batch_size)
    raise ValueError("Set num_training_steps or num_training_epochs in the config.")


def initialize_state(model, config, rng, tx) -> TrainState:
    """Initialises parameters on the host (jit, one device) from the model's input spec
    (an array or a dict of modalities) and the optimizer state, in one program (eagerly,
    the optimizer's zeros would compile one small program per distinct parameter shape)."""
    spec = model.input_spec()

    @jax.jit
    def init(rng):
        init_rng, state_rng = jax.random.split(rng)
        dummy = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), spec)
        variables = model.flax_model.init(
            {"params": init_rng, "dropout": init_rng}, dummy, train=False
        )
        params = variables.pop("params")
        return params, variables, tx.init(params), jax.random.key_data(state_rng)

    params, model_state, opt_state, state_rng = init(rng)
    precision.check_float32(params)  # whatever the compute dtype
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt_state,
        model_state=dict(model_state),
        rng=state_rng,
    )


def build_model(model_cls, config: ml_collections.ConfigDict, meta_data: dict):
    """The base model, its Flax module computing in `config.compute_dtype` when it has a
    `dtype` field (parameters and optimizer state stay float32)."""
    model = model_cls(config, meta_data)
    dtype = precision.compute_dtype(config.compute_dtype)
    fields = {f.name for f in dataclasses.fields(model.flax_model)}
    if dtype != jnp.float32:
        if "dtype" not in fields:
            raise ValueError(
                f"compute_dtype={config.compute_dtype!r} needs a `dtype` field on "
                f"{type(model.flax_model).__name__}, which has none."
            )
        model.flax_model = model.flax_model.clone(dtype=dtype)
    return model, dtype


def make_optimizer(config: ml_collections.ConfigDict, num_steps: int):
    """(optax transformation, learning-rate schedule) of a run of `num_steps`."""
    lr_fn = lr_schedules.compound_schedule(config.lr_configs, num_steps)
    return optimizers.get_optimizer(config.optimizer, lr_fn), lr_fn


def restore_latest(
    checkpointer, state: TrainState, config, step: int | None = None, layout=layouts.PMAP
) -> TrainState:
    """The latest checkpoint (or `step`'s) restored into `state`'s structure (with the EMA
    if the run keeps one), on the host, or with a mesh layout straight onto its shardings
    (whatever mesh or mode wrote the checkpoint)."""
    if config.ema:  # the restore target must hold what the checkpoint holds
        state = state.replace(ema_params=jax.eval_shape(ema.init_ema, state.params))
    return TrainState.from_dict(checkpointer.restore(layout.restore_target(state), step))


def train(
    *,
    model_cls,
    dataset,
    config: ml_collections.ConfigDict,
    workdir: str,
    stop_after_step: int | None = None,
) -> TrainResult:
    """Trains (or resumes) in `workdir`.

    `stop_after_step` ends this run early after checkpointing that step, as a preemption
    would; running again resumes from there. A SIGTERM / SIGINT does the same at the
    current step; the result then names the signal (`stopped_by`, `exit_code`).
    """
    workdir = pathlib.Path(workdir)
    trainer_config.check_batch_split(config, jax.process_count(), jax.local_device_count())
    model, dtype = build_model(model_cls, config, dataset.meta_data)
    logger.info(
        "Experiment %s: model %s on %s in %s.",
        config.experiment_name or "(unnamed)",
        config.model_name,
        config.dataset_name,
        workdir,
    )
    num_steps = total_train_steps(config, dataset.meta_data["num_train_examples"])
    tx, lr_fn = make_optimizer(config, num_steps)
    state = initialize_state(model, config, jax.random.key(config.rng_seed), tx)
    per_example_clip_norm = config.optimizer.get("per_example_clip_norm")
    if per_example_clip_norm and state.model_state:
        raise ConfigError(
            f"optimizer.per_example_clip_norm: model {config.model_name!r} keeps mutable state "
            f"({', '.join(state.model_state)}), which one example at a time cannot update."
        )
    accumulation_steps = int(config.grad_accumulation_steps)
    mix_fn = mixup.from_config(config.mixup, dataset.meta_data.get("num_classes"))
    ema_settings = ema.from_config(config.ema)
    layout = layouts.from_config(config)
    if layout.name == "mesh":  # partition rule errors before anything is written
        layout.state_shardings(jax.eval_shape(lambda: state))
        logger.info(
            "Mesh %s, partition rules: %s.", dict(layout.mesh.shape), layout.rules or "default"
        )

    # A fresh run reads init_from before the checkpointer creates its folder, so that a
    # file init_from cannot read leaves nothing behind.
    fresh = not (workdir / "checkpoints").is_dir()
    if fresh:
        state = apply_init_from(state, config, tx, model)
    checkpointer = checkpoints.Checkpointer(workdir, config.max_checkpoints_to_keep)
    if checkpointer.latest_step() is not None:
        state = restore_latest(checkpointer, state, config, layout=layout)
        logger.info("Resumed from %s at step %d.", checkpointer.directory, host_int(state.step))
    elif not fresh:
        state = apply_init_from(state, config, tx, model)
    start_step = host_int(state.step)

    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
        write_meta_data(workdir, dataset.meta_data)
    forward_flops = log_model_size(model, state)

    train_fn = functools.partial(
        steps.train_step,
        model=model,
        tx=tx,
        lr_fn=lr_fn,
        accumulation_steps=accumulation_steps,
        mix_fn=mix_fn,
        ema_settings=ema_settings,
        dtype=dtype,
        per_example_clip_norm=per_example_clip_norm,
    )
    state = layout.place_state(state)
    p_train_step = layout.train_step(train_fn)
    p_eval_step = make_eval_step(model, dtype, layout)
    p_all_finite = layout.all_finite()
    writer = summaries.create_writer(str(workdir))
    # MFU estimate: training ~ 3x the forward FLOPs (forward + backward), against a matmul
    # in the compute dtype timed on one device (once per process), times the device count.
    progress = summaries.Progress(
        num_steps,
        start_step,
        config.batch_size,
        train_flops_per_example=3 * forward_flops if forward_flops else None,
        peak_flops=debug_utils.run_peak_matmul_flops(size=2048, dtype=dtype) * jax.device_count(),
    )
    train_batches = layout.device_batches(
        dataset.train_batches(start_step), config.prefetch_to_device
    )
    train_pairs, finite_flags, eval_metrics = [], [], {}
    if start_step >= num_steps:
        logger.info("Already trained for %d steps; evaluating only.", num_steps)
        eval_metrics = evaluation.final_evaluation(
            p_eval_step, state, dataset, config, model, dtype, layout
        )
    loop_start = time.perf_counter()
    first_step_time, paused = 0.0, 0.0  # compile time; time spent in eval / checkpoints
    stop = preemption.StopRequest()
    profiler = summaries.StepProfiler(workdir / "profile", start_step + 3, config.profile_steps)
    with stop:
        for step in range(start_step + 1, num_steps + 1):
            profiler.before_step(step)
            state, metrics, finite = p_train_step(state, next(train_batches))
            train_pairs.append(metrics)
            finite_flags.append((step, finite))
            progress.tick(step)
            if step == start_step + 1:
                jax.block_until_ready(state)
                first_step_time = time.perf_counter() - loop_start
            stopping = step == stop_after_step or stop.should_stop()
            is_last = step == num_steps or stopping
            profiler.after_step(step, state, stopping=is_last)
            if step % config.log_summary_steps == 0 or is_last:
                check_finite(finite_flags, layout)
                train_metrics = summaries.normalize_metrics(train_pairs)
                train_pairs = []
                train_metrics.update(progress.report(step, train_metrics))
                writer.write_scalars(step, {f"train/{k}": v for k, v in train_metrics.items()})
            do_eval = step % config.log_eval_steps == 0 or step == num_steps
            do_save = step % config.checkpoint_steps == 0 or is_last
            if do_eval or do_save:
                jax.block_until_ready(state)
                pause_start = time.perf_counter()
                if do_eval:
                    eval_metrics = run_eval(
                        p_eval_step, state, dataset, config, model, step, layout
                    )
                    if step == num_steps:
                        eval_metrics.update(
                            evaluation.multiview_test(state, dataset, config, model, dtype, layout)
                        )
                    writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
                if do_save:
                    check_finite(finite_flags, layout)
                    if not bool(layout.scalar(p_all_finite(state.params))):
                        raise NonFiniteLossError(
                            f"Parameters are not finite at step {step}; not checkpointing. "
                            f"The last good checkpoint ({checkpointer.latest_step()}) is kept."
                        )
                    checkpointer.save(step, layout.checkpoint_state(state))
                paused += time.perf_counter() - pause_start
            if stopping:
                break
    jax.block_until_ready(state)
    train_time = time.perf_counter() - loop_start - paused
    steps_run = int(layout.scalar(state.step)) - start_step
    writer.flush()
    checkpointer.close()

    host_state = layout.host_state(state)
    final = dict(eval_metrics)
    final["step"] = int(host_state["step"])
    final["train_time_sec"] = train_time
    if steps_run > 1:
        final["train_examples_per_sec"] = (
            (steps_run - 1) * config.batch_size / max(train_time - first_step_time, 1e-9)
        )
    result = TrainResult(host_state, final, final["step"], num_steps, stop.signal_number)
    if result.stopped_by:
        logger.warning(
            "Stopped by %s at step %d after saving a checkpoint; run the same command "
            "again to resume.",
            result.stopped_by,
            result.step,
        )
    if jax.process_index() == 0 and result.completed:
        write_json(workdir / "final_metrics.json", final)
    return result


def make_eval_step(model, dtype, layout=layouts.PMAP):
    return layout.eval_step(functools.partial(steps.eval_step, model=model, dtype=dtype))


def run_eval(
    p_eval_step, state, dataset, config, model, step: int, layout=layouts.PMAP
) -> dict[str, float]:
    """Every eval split at `step`, logged; returns the flat metrics."""
    results = evaluation.evaluate_splits(
        p_eval_step, state, dataset, config.prefetch_to_device, model, layout
    )
    evaluation.log_splits(step, results)
    return evaluation.flatten_splits(results)


def apply_init_from(state: TrainState, config: ml_collections.ConfigDict, tx, model) -> TrainState:
    """A fresh run's parameters from the model's own `initialize_params` and then
    `config.init_from` (with a matching optimizer state and EMA); a resumed run keeps its
    own checkpoint instead."""
    params, note = model.initialize_params(state.params)
    if note:
        logger.info("%s", note)
    params, summary = pretrained_init.from_config(params, config.init_from)
    if summary is not None:
        logger.info("init_from %s:\n%s", config.init_from.checkpoint, summary)
        model_state, loaded = pretrained_init.model_state_from_config(
            state.model_state, config.init_from
        )
        if loaded:
            logger.info("init_from: %d model state arrays (e.g. %s).", len(loaded), loaded[0])
            state = state.replace(model_state=model_state)
    if note or summary is not None:
        state = state.replace(params=params, opt_state=tx.init(params))
    if config.ema:
        state = state.replace(ema_params=ema.init_ema(state.params))
    return state


def host_int(x) -> int:
    """A scalar that every device holds alike (a host value, or any one device's copy)."""
    return int(np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x))


def check_finite(finite_flags: list, layout=layouts.PMAP) -> None:
    """Raises NonFiniteLossError naming the first step whose loss or gradient was not finite.

    The flags stay on the device until a log or checkpoint step, so this check does not
    stall the asynchronous dispatch of training steps.
    """
    for step, flag in finite_flags:
        if not int(layout.scalar(flag)):
            raise NonFiniteLossError(
                f"The training loss or gradient became NaN or infinite at step {step}. "
                "No checkpoint was written after it; lower the learning rate, add gradient "
                "clipping (optimizer.grad_clip_norm) or check the inputs."
            )
    finite_flags.clear()


def log_model_size(model, state: TrainState) -> float | None:
    """Logs the parameter count and forward GFLOPs per example; returns the FLOPs.

    The forward is `inference_apply`, or, for a model with `eval_constants`, `eval_apply`
    given them: work done once per pass (CLIP's and OWL-ViT's class-name text tower) is
    not a cost of each example."""
    params = state.params
    params_spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params)
    constants_spec = None
    if model.has_eval_constants():
        constants_spec = jax.eval_shape(
            lambda p: model.eval_constants({"params": p, **state.model_state}), params_spec
        )
    if constants_spec is None:
        flops = debug_utils.model_flops(
            lambda p, x: model.inference_apply({"params": p, **state.model_state}, x),
            params_spec,
            model.input_spec(),
        )
    else:
        flops = debug_utils.model_flops(
            lambda p, x, c: model.eval_apply({"params": p, **state.model_state}, x, c),
            params_spec,
            model.input_spec(),
            constants_spec,
        )
    logger.info(
        "Model: %s parameters, %s GFLOPs per example (forward).",
        f"{debug_utils.count_parameters(params):,}",
        f"{flops / 1e9:.4f}" if flops is not None else "unknown",
    )
    return flops


def write_json(path: pathlib.Path, data: dict) -> None:
    clean = {k: (float(v) if isinstance(v, np.floating | float) else v) for k, v in data.items()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def write_meta_data(workdir: pathlib.Path, meta_data: dict) -> None:
    """The data set's meta data (shapes, dtypes, classes), so a trained model can be rebuilt
    for inference without the data set (`load_meta_data`). Unserialisable values are left
    out."""

    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, type | np.dtype):
            return np.dtype(value).name
        if isinstance(value, np.generic):
            return value.item()
        return value

    clean = {}
    for key, value in meta_data.items():
        try:
            clean[key] = json.loads(json.dumps(plain(value)))
        except (TypeError, ValueError):
            continue
    tmp = workdir / (META_DATA_FILE + ".tmp")
    tmp.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
    tmp.replace(workdir / META_DATA_FILE)


def load_meta_data(workdir: pathlib.Path) -> dict:
    """`write_meta_data`'s file back, with shapes as tuples and dtypes as NumPy dtypes."""
    path = pathlib.Path(workdir) / META_DATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not the workdir of a training run.")
    meta = json.loads(path.read_text())

    def shape(value):
        return {k: tuple(v) for k, v in value.items()} if isinstance(value, dict) else tuple(value)

    def dtype(value):
        if isinstance(value, dict):
            return {k: np.dtype(v) for k, v in value.items()}
        return np.dtype(value)

    if "input_shape" in meta:
        meta["input_shape"] = shape(meta["input_shape"])
    if "input_dtype" in meta:
        meta["input_dtype"] = dtype(meta["input_dtype"])
    return meta


def evaluate_checkpoint(
    *, model_cls, dataset, config: ml_collections.ConfigDict, workdir: str
) -> dict[str, float]:
    """Evaluates the latest checkpoint in `workdir` on every eval split; writes
    `eval_metrics.json` there."""
    workdir = pathlib.Path(workdir)
    checkpointer = checkpoints.Checkpointer(workdir, config.max_checkpoints_to_keep)
    if checkpointer.latest_step() is None:
        raise FileNotFoundError(f"No checkpoint in {checkpointer.directory} to evaluate.")
    model, dtype = build_model(model_cls, config, dataset.meta_data)
    tx, _ = make_optimizer(
        config, total_train_steps(config, dataset.meta_data["num_train_examples"])
    )
    state = initialize_state(model, config, jax.random.key(config.rng_seed), tx)
    layout = layouts.from_config(config)
    state = restore_latest(checkpointer, state, config, layout=layout)
    checkpointer.close()
    state = layout.place_state(state)
    step = int(layout.scalar(state.step))
    metrics = evaluation.final_evaluation(
        make_eval_step(model, dtype, layout), state, dataset, config, model, dtype, layout
    )
    metrics["step"] = step
    if jax.process_index() == 0:
        write_json(workdir / "eval_metrics.json", metrics)
    return metrics
