"""The pmap trainer for classification-style models (any `BaseModel`).

One process drives its local devices with `jax.pmap`; gradients and metrics are averaged
over the device axis ('batch'). The loop trains, evaluates every `log_eval_steps`,
checkpoints every `checkpoint_steps` (and at the end), and resumes from the latest
checkpoint in the workdir with the data stream positioned exactly where it stopped.

Faults: SIGTERM / SIGINT checkpoint the current step and stop (see `preemption`); a
non-finite loss stops the run with `NonFiniteLossError` naming the first bad step, and
parameters that are not finite are never checkpointed. With several processes
(`jax.distributed`), each feeds its local devices from its own data slice and the pmap
collectives span every device.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import pathlib
import time
import types
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from scenic.common_lib import debug_utils
from scenic.dataset_lib import dataset_utils
from scenic.train_lib import (
    checkpoints,
    ema,
    lr_schedules,
    mixup,
    optimizers,
    precision,
    preemption,
    pretrained_init,
    summaries,
)
from scenic.train_lib.train_state import TrainState, replicate, unreplicate

logger = logging.getLogger("scenic")
AXIS = "batch"
MIXUP_STREAM = 0x6D6978  # folded into the step's key for mixup, apart from dropout's streams


class NonFiniteLossError(FloatingPointError):
    """The training loss (or gradient) became NaN or infinite."""


def total_train_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
    if config.num_training_steps:
        return int(config.num_training_steps)
    if config.num_training_epochs:
        return math.ceil(config.num_training_epochs * num_train_examples / config.batch_size)
    raise ValueError("Set num_training_steps or num_training_epochs in the config.")


def initialize_state(model, config, rng, tx) -> TrainState:
    """Initialises parameters on the host (jit, one device) and the optimizer state."""
    shape = tuple(model.dataset_meta_data["input_shape"])
    dummy = jnp.zeros((1, *shape[1:]), model.dataset_meta_data.get("input_dtype", jnp.float32))
    init_rng, state_rng = jax.random.split(rng)

    @jax.jit
    def init(key):
        variables = model.flax_model.init({"params": key, "dropout": key}, dummy, train=False)
        params = variables.pop("params")
        return params, variables

    params, model_state = init(init_rng)
    precision.check_float32(params)  # whatever the compute dtype
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        model_state=dict(model_state),
        rng=jax.random.key_data(state_rng),
    )


def train_step(
    state: TrainState,
    batch,
    *,
    model,
    tx,
    lr_fn,
    accumulation_steps: int = 1,
    mix_fn=None,
    ema_settings: dict | None = None,
    dtype=jnp.float32,
):
    """One optimisation step on each device's shard, gradients averaged over devices.

    With `accumulation_steps` > 1 the shard is split into that many micro-batches whose
    gradients are averaged before one update (mutable state such as batch statistics is
    threaded through the micro-batches in order). `mix_fn` applies mixup / cutmix on the
    device; inputs are cast to the compute `dtype` and logits back to float32 for the
    loss; `ema_settings` updates the parameter EMA. Returns (state, metrics, all_finite).
    """
    rng = jax.random.wrap_key_data(state.rng)
    dropout_rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(AXIS))
    mutable = list(state.model_state.keys())
    if mix_fn is not None:
        batch = mix_fn(jax.random.fold_in(dropout_rng, MIXUP_STREAM), batch)
    batch = precision.cast_inputs(batch, dtype)

    def loss_fn(params, model_state, micro_batch, micro_rng):
        variables = {"params": params, **model_state}
        out = model.flax_model.apply(
            variables,
            micro_batch["inputs"],
            train=True,
            mutable=mutable or False,
            rngs={"dropout": micro_rng},
        )
        logits, new_model_state = out if mutable else (out, {})
        logits = precision.to_float32(logits)
        loss = model.loss_function(logits, micro_batch, params)
        return loss, (logits, dict(new_model_state))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accumulation_steps == 1:
        (loss, (logits, new_model_state)), grads = grad_fn(
            state.params, state.model_state, batch, dropout_rng
        )
        metrics = model.get_metrics(logits, batch, axis_name=AXIS)
    else:
        micro_batches = jax.tree.map(
            lambda x: x.reshape(accumulation_steps, x.shape[0] // accumulation_steps, *x.shape[1:]),
            batch,
        )

        def accumulate(carry, inputs):
            grad_sum, loss_sum, model_state = carry
            index, micro_batch = inputs
            (loss, (logits, model_state)), grads = grad_fn(
                state.params, model_state, micro_batch, jax.random.fold_in(dropout_rng, index)
            )
            metrics = model.get_metrics(logits, micro_batch, axis_name=AXIS)
            grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
            return (grad_sum, loss_sum + loss, model_state), metrics

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (grads, loss, new_model_state), metrics = jax.lax.scan(
            accumulate,
            (zeros, jnp.zeros(()), state.model_state),
            (jnp.arange(accumulation_steps), micro_batches),
        )
        grads = jax.tree.map(lambda g: g / accumulation_steps, grads)
        loss = loss / accumulation_steps
        metrics = jax.tree.map(lambda x: x.sum(axis=0), metrics)
    grads = jax.lax.pmean(grads, AXIS)
    new_model_state = jax.lax.pmean(new_model_state, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    metrics["learning_rate"] = (lr_fn(state.step), jnp.ones(()))
    metrics["grad_norm"] = (grad_norm, jnp.ones(()))
    metrics["param_norm"] = (optax.global_norm(params), jnp.ones(()))
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)).astype(jnp.int32)
    all_finite = jax.lax.pmin(finite, AXIS)
    ema_params = state.ema_params
    if ema_settings is not None:
        ema_params = ema.update_ema(ema_params, params, state.step + 1, **ema_settings)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        model_state=dict(new_model_state),
        ema_params=ema_params,
    )
    return new_state, metrics, all_finite


def eval_step(state: TrainState, batch, *, model, dtype=jnp.float32):
    """(sum, normalizer) metrics, eval totals and per-example outputs of one batch.

    Uses the parameter EMA when the run keeps one."""
    params = state.params if state.ema_params is None else state.ema_params
    variables = {"params": params, **state.model_state}
    batch = precision.cast_inputs(batch, dtype)
    logits = precision.to_float32(model.flax_model.apply(variables, batch["inputs"], train=False))
    return eval_outputs(model, logits, batch)


def eval_outputs(model, logits, batch):
    """(metrics, totals, per-example outputs) of a batch's logits: what an eval step returns."""
    examples = model.eval_examples(logits, batch)
    if examples:
        examples["batch_mask"] = batch["batch_mask"]
    return (
        model.get_metrics(logits, batch, axis_name=AXIS),
        model.eval_totals(logits, batch, axis_name=AXIS),
        examples,
    )


def multiview_eval_step(state: TrainState, batch, *, model, dtype=jnp.float32):
    """Like `eval_step` for inputs [B, V, ...] (V views of each example, e.g. temporal
    clips x spatial crops of a video): logits are averaged over the views."""
    inputs = batch["inputs"]
    flat = {**batch, "inputs": inputs.reshape(-1, *inputs.shape[2:])}
    params = state.params if state.ema_params is None else state.ema_params
    variables = {"params": params, **state.model_state}
    flat = precision.cast_inputs(flat, dtype)
    logits = precision.to_float32(model.flax_model.apply(variables, flat["inputs"], train=False))
    logits = logits.reshape(inputs.shape[0], inputs.shape[1], *logits.shape[1:]).mean(axis=1)
    return eval_outputs(model, logits, batch)


def multiview_test(state, dataset, config, model, dtype) -> dict[str, float]:
    """The multi-view test pass (`config.multiview_test`), metrics prefixed 'multiview_'."""
    if not config.multiview_test:
        return {}
    if not hasattr(dataset, "multiview_eval_batches"):
        raise ValueError(
            f"multiview_test is set but data set {config.dataset_name!r} has no multi-view "
            "eval (multiview_eval_batches)."
        )
    step_fn = jax.pmap(
        functools.partial(multiview_eval_step, model=model, dtype=dtype), axis_name=AXIS
    )
    views = types.SimpleNamespace(eval_batches=dataset.multiview_eval_batches)
    metrics = evaluate(step_fn, state, views, config.prefetch_to_device, model)
    logger.info("multi-view test: %s", format_metrics(metrics))
    return {f"multiview_{k}": v for k, v in metrics.items()}


def final_evaluation(p_eval_step, state, dataset, config, model, dtype) -> dict[str, float]:
    """The eval pass plus, when configured, the multi-view test: a run's last word."""
    metrics = evaluate(p_eval_step, state, dataset, config.prefetch_to_device, model)
    metrics.update(multiview_test(state, dataset, config, model, dtype))
    return metrics


def evaluate(p_eval_step, state, dataset, prefetch: int, model) -> dict[str, float]:
    """One pass over the (padded) eval set; padded examples carry batch_mask 0.

    Besides the per-batch (sum, normalizer) metrics, the model's `global_metrics` get the
    eval totals (summed over devices by psum, and over batches here) and its per-example
    outputs from every host with the padding removed.
    """
    pairs, totals, examples = [], None, []
    for batch in dataset_utils.prefetch_to_device(dataset.eval_batches(), prefetch):
        batch_pairs, batch_totals, batch_examples = p_eval_step(state, batch)
        pairs.append(batch_pairs)
        batch_totals = jax.tree.map(
            lambda x: np.asarray(x[0], np.float64), jax.device_get(batch_totals)
        )
        totals = batch_totals if totals is None else jax.tree.map(np.add, totals, batch_totals)
        if batch_examples:
            # [devices, per_device, ...] -> [host_batch, ...]
            examples.append(
                jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), jax.device_get(batch_examples))
            )
    metrics = summaries.normalize_metrics(pairs)
    if examples:
        examples = jax.tree.map(lambda *xs: np.concatenate(xs), *examples)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            examples = jax.tree.map(
                np.asarray, multihost_utils.process_allgather(examples, tiled=True)
            )
        real = examples.pop("batch_mask").astype(bool)
        examples = {k: v[real] for k, v in examples.items()}
    metrics.update(model.global_metrics(totals or {}, examples or {}))
    return metrics


def train(
    *,
    model_cls,
    dataset,
    config: ml_collections.ConfigDict,
    workdir: str,
    stop_after_step: int | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Trains (or resumes) in `workdir`; returns (final host train state, final metrics).

    `stop_after_step` ends this run early after checkpointing that step, as a preemption
    would; running again resumes from there. A SIGTERM / SIGINT does the same at the
    current step; then `final["stopped_by"]` names the signal and `final["exit_code"]`
    is the conventional 128 + signal number.
    """
    workdir = pathlib.Path(workdir)
    model, dtype = build_model(model_cls, config, dataset.meta_data)
    logger.info(
        "Experiment %s: model %s on %s in %s.",
        config.experiment_name or "(unnamed)",
        config.model_name,
        config.dataset_name,
        workdir,
    )
    num_steps = total_train_steps(config, dataset.meta_data["num_train_examples"])
    lr_fn = lr_schedules.compound_schedule(config.lr_configs, num_steps)
    tx = optimizers.get_optimizer(config.optimizer, lr_fn)
    rng = jax.random.key(config.rng_seed)
    state = initialize_state(model, config, rng, tx)
    accumulation_steps = check_accumulation(config)
    mix_fn = mixup.from_config(config.mixup, dataset.meta_data.get("num_classes"))
    ema_settings = ema.from_config(config.ema)

    checkpointer = checkpoints.Checkpointer(workdir, config.max_checkpoints_to_keep)
    if checkpointer.latest_step() is not None:
        if ema_settings is not None:  # the restore target must hold what the checkpoint holds
            state = state.replace(ema_params=ema.init_ema(state.params))
        state = TrainState.from_dict(checkpointer.restore(jax.device_get(state.to_dict())))
        logger.info("Resumed from %s at step %d.", checkpointer.directory, int(state.step))
    else:
        state = apply_init_from(state, config, tx, model)
    start_step = int(state.step)

    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    forward_flops = log_model_size(model, state)

    train_fn = functools.partial(
        train_step,
        model=model,
        tx=tx,
        lr_fn=lr_fn,
        accumulation_steps=accumulation_steps,
        mix_fn=mix_fn,
        ema_settings=ema_settings,
        dtype=dtype,
    )
    p_train_step = jax.pmap(train_fn, axis_name=AXIS, donate_argnums=(0,))
    p_eval_step = jax.pmap(functools.partial(eval_step, model=model, dtype=dtype), axis_name=AXIS)
    p_all_finite = jax.pmap(lambda tree: all_finite(tree), axis_name=AXIS)
    state = replicate(state, axis_name=AXIS)
    writer = summaries.create_writer(str(workdir))
    # MFU estimate: training ~ 3x the forward FLOPs (forward + backward), against a matmul
    # in the compute dtype timed here on one device, times the device count.
    progress = summaries.Progress(
        num_steps,
        start_step,
        config.batch_size,
        train_flops_per_example=3 * forward_flops if forward_flops else None,
        peak_flops=debug_utils.peak_matmul_flops(size=2048, dtype=dtype) * jax.device_count(),
    )
    train_batches = dataset_utils.prefetch_to_device(
        dataset.train_batches(start_step), config.prefetch_to_device
    )
    train_pairs, finite_flags, eval_metrics = [], [], {}
    if start_step >= num_steps:
        logger.info("Already trained for %d steps; evaluating only.", num_steps)
        eval_metrics = final_evaluation(p_eval_step, state, dataset, config, model, dtype)
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
                check_finite(finite_flags)
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
                    eval_metrics = evaluate(
                        p_eval_step, state, dataset, config.prefetch_to_device, model
                    )
                    if step == num_steps:
                        eval_metrics.update(multiview_test(state, dataset, config, model, dtype))
                    logger.info("eval at step %d: %s", step, format_metrics(eval_metrics))
                    writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
                if do_save:
                    check_finite(finite_flags)
                    if not bool(np.asarray(p_all_finite(state.params))[0]):
                        raise NonFiniteLossError(
                            f"Parameters are not finite at step {step}; not checkpointing. "
                            f"The last good checkpoint ({checkpointer.latest_step()}) is kept."
                        )
                    checkpointer.save(step, unreplicate(state).to_dict())
                paused += time.perf_counter() - pause_start
            if stopping:
                break
    jax.block_until_ready(state)
    train_time = time.perf_counter() - loop_start - paused
    steps_run = int(unreplicate(state.step)) - start_step
    writer.flush()
    checkpointer.close()

    host_state = unreplicate(state).to_dict()
    final = dict(eval_metrics)
    final["step"] = int(host_state["step"])
    final["train_time_sec"] = train_time
    if steps_run > 1:
        final["train_examples_per_sec"] = (
            (steps_run - 1) * config.batch_size / max(train_time - first_step_time, 1e-9)
        )
    if stop.signal_number:
        final["stopped_by"] = preemption.signal_name(stop.signal_number)
        final["exit_code"] = stop.exit_code
        logger.warning(
            "Stopped by %s at step %d after saving a checkpoint; run the same command "
            "again to resume.",
            final["stopped_by"],
            final["step"],
        )
    if jax.process_index() == 0 and final["step"] == num_steps:
        write_json(workdir / "final_metrics.json", final)
    return host_state, final


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
    if note or summary is not None:
        state = state.replace(params=params, opt_state=tx.init(params))
    if config.ema:
        state = state.replace(ema_params=ema.init_ema(state.params))
    return state


def check_accumulation(config: ml_collections.ConfigDict) -> int:
    steps = int(config.grad_accumulation_steps)
    per_device = config.batch_size // (jax.process_count() * jax.local_device_count())
    if steps < 1 or per_device % steps:
        raise ValueError(
            f"grad_accumulation_steps={steps} must be >= 1 and divide the per-device batch "
            f"({config.batch_size} / {jax.device_count()} devices = {per_device})."
        )
    return steps


def check_finite(finite_flags: list) -> None:
    """Raises NonFiniteLossError naming the first step whose loss or gradient was not finite.

    The flags stay on the device until a log or checkpoint step, so this check does not
    stall the asynchronous dispatch of training steps.
    """
    for step, flag in finite_flags:
        if not int(np.asarray(flag)[0]):
            raise NonFiniteLossError(
                f"The training loss or gradient became NaN or infinite at step {step}. "
                "No checkpoint was written after it; lower the learning rate, add gradient "
                "clipping (optimizer.grad_clip_norm) or check the inputs."
            )
    finite_flags.clear()


def all_finite(tree) -> jnp.ndarray:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def log_model_size(model, state: TrainState) -> float | None:
    """Logs the parameter count and forward GFLOPs per example; returns the FLOPs."""
    params = state.params
    shape = tuple(model.dataset_meta_data["input_shape"])
    example = jax.ShapeDtypeStruct(
        (1, *shape[1:]), model.dataset_meta_data.get("input_dtype", jnp.float32)
    )
    flops = debug_utils.compiled_flops(
        lambda p, x: model.flax_model.apply({"params": p, **state.model_state}, x, train=False),
        jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), params),
        example,
    )
    logger.info(
        "Model: %s parameters, %s GFLOPs per example (forward).",
        f"{debug_utils.count_parameters(params):,}",
        f"{flops / 1e9:.4f}" if flops is not None else "unknown",
    )
    return flops


def format_metrics(metrics: dict[str, float]) -> str:
    """One log line; per-class values (keys with a '/', e.g. `per_class_accuracy/7`) are
    counted, not listed: they are in TensorBoard and the metrics JSON."""
    shown = {k: v for k, v in metrics.items() if "/" not in k}
    line = ", ".join(f"{k}={v:.4f}" for k, v in sorted(shown.items()))
    if len(shown) < len(metrics):
        line += f" (+{len(metrics) - len(shown)} per-class values)"
    return line


def write_json(path: pathlib.Path, data: dict) -> None:
    clean = {k: (float(v) if isinstance(v, np.floating | float) else v) for k, v in data.items()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def evaluate_checkpoint(
    *, model_cls, dataset, config: ml_collections.ConfigDict, workdir: str
) -> dict[str, float]:
    """Evaluates the latest checkpoint in `workdir`; writes `eval_metrics.json` there."""
    workdir = pathlib.Path(workdir)
    checkpointer = checkpoints.Checkpointer(workdir, config.max_checkpoints_to_keep)
    if checkpointer.latest_step() is None:
        raise FileNotFoundError(f"No checkpoint in {checkpointer.directory} to evaluate.")
    model, dtype = build_model(model_cls, config, dataset.meta_data)
    num_steps = total_train_steps(config, dataset.meta_data["num_train_examples"])
    tx = optimizers.get_optimizer(
        config.optimizer, lr_schedules.compound_schedule(config.lr_configs, num_steps)
    )
    state = initialize_state(model, config, jax.random.key(config.rng_seed), tx)
    if config.ema:
        state = state.replace(ema_params=ema.init_ema(state.params))
    state = TrainState.from_dict(checkpointer.restore(jax.device_get(state.to_dict())))
    checkpointer.close()
    p_eval_step = jax.pmap(functools.partial(eval_step, model=model, dtype=dtype), axis_name=AXIS)
    step = int(state.step)
    state = replicate(state, axis_name=AXIS)
    metrics = final_evaluation(p_eval_step, state, dataset, config, model, dtype)
    metrics["step"] = step
    if jax.process_index() == 0:
        write_json(workdir / "eval_metrics.json", metrics)
    return metrics
