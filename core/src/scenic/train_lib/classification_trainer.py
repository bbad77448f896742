"""The pmap trainer for classification-style models (any `BaseModel`).

One process drives its local devices with `jax.pmap`; gradients and metrics are averaged
over the device axis ('batch'). The loop trains, evaluates every `log_eval_steps`,
checkpoints every `checkpoint_steps` (and at the end), and resumes from the latest
checkpoint in the workdir with the data stream positioned exactly where it stopped.
"""

from __future__ import annotations

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
import optax

from scenic.common_lib import debug_utils
from scenic.dataset_lib import dataset_utils
from scenic.train_lib import checkpoints, lr_schedules, optimizers, summaries
from scenic.train_lib.train_state import TrainState, replicate, unreplicate

logger = logging.getLogger("scenic")
AXIS = "batch"


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
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        model_state=dict(model_state),
        rng=jax.random.key_data(state_rng),
    )


def train_step(state: TrainState, batch, *, model, tx, lr_fn):
    """One optimisation step on each device's shard, gradients averaged over devices."""
    rng = jax.random.wrap_key_data(state.rng)
    dropout_rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(AXIS))
    mutable = list(state.model_state.keys())

    def loss_fn(params):
        variables = {"params": params, **state.model_state}
        out = model.flax_model.apply(
            variables,
            batch["inputs"],
            train=True,
            mutable=mutable or False,
            rngs={"dropout": dropout_rng},
        )
        logits, new_model_state = out if mutable else (out, {})
        return model.loss_function(logits, batch, params), (logits, new_model_state)

    (_, (logits, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    grads = jax.lax.pmean(grads, AXIS)
    new_model_state = jax.lax.pmean(new_model_state, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = model.get_metrics(logits, batch, axis_name=AXIS)
    metrics["learning_rate"] = (lr_fn(state.step), jnp.ones(()))
    metrics["grad_norm"] = (optax.global_norm(grads), jnp.ones(()))
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        model_state=dict(new_model_state),
    )
    return new_state, metrics


def eval_step(state: TrainState, batch, *, model):
    variables = {"params": state.params, **state.model_state}
    logits = model.flax_model.apply(variables, batch["inputs"], train=False)
    return model.get_metrics(logits, batch, axis_name=AXIS)


def evaluate(p_eval_step, state, dataset, prefetch: int) -> dict[str, float]:
    """One pass over the (padded) eval set; padded examples carry batch_mask 0."""
    pairs = [
        p_eval_step(state, batch)
        for batch in dataset_utils.prefetch_to_device(dataset.eval_batches(), prefetch)
    ]
    return summaries.normalize_metrics(pairs)


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
    would; running again resumes from there.
    """
    workdir = pathlib.Path(workdir)
    model = model_cls(config, dataset.meta_data)
    num_steps = total_train_steps(config, dataset.meta_data["num_train_examples"])
    lr_fn = lr_schedules.compound_schedule(config.lr_configs, num_steps)
    tx = optimizers.get_optimizer(config.optimizer, lr_fn)
    rng = jax.random.key(config.rng_seed)
    state = initialize_state(model, config, rng, tx)

    checkpointer = checkpoints.Checkpointer(workdir, config.max_checkpoints_to_keep)
    if checkpointer.latest_step() is not None:
        state = TrainState.from_dict(checkpointer.restore(jax.device_get(state.to_dict())))
        logger.info("Resumed from %s at step %d.", checkpointer.directory, int(state.step))
    start_step = int(state.step)

    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    log_model_size(model, state)

    train_fn = functools.partial(train_step, model=model, tx=tx, lr_fn=lr_fn)
    p_train_step = jax.pmap(train_fn, axis_name=AXIS, donate_argnums=(0,))
    p_eval_step = jax.pmap(functools.partial(eval_step, model=model), axis_name=AXIS)
    state = replicate(state)
    writer = summaries.create_writer(str(workdir))
    progress = summaries.Progress(num_steps, start_step, config.batch_size)
    train_batches = dataset_utils.prefetch_to_device(
        dataset.train_batches(start_step), config.prefetch_to_device
    )
    train_pairs, eval_metrics = [], {}
    if start_step >= num_steps:
        logger.info("Already trained for %d steps; evaluating only.", num_steps)
        eval_metrics = evaluate(p_eval_step, state, dataset, config.prefetch_to_device)
    loop_start = time.perf_counter()
    first_step_time, paused = 0.0, 0.0  # compile time; time spent in eval / checkpoints
    for step in range(start_step + 1, num_steps + 1):
        state, metrics = p_train_step(state, next(train_batches))
        train_pairs.append(metrics)
        if step == start_step + 1:
            jax.block_until_ready(state)
            first_step_time = time.perf_counter() - loop_start
        is_last = step in (num_steps, stop_after_step)
        if step % config.log_summary_steps == 0 or is_last:
            train_metrics = summaries.normalize_metrics(train_pairs)
            train_pairs = []
            train_metrics.update(progress.report(step, train_metrics))
            writer.write_scalars(step, {f"train/{k}": v for k, v in train_metrics.items()})
        if step % config.log_eval_steps == 0 or step % config.checkpoint_steps == 0 or is_last:
            jax.block_until_ready(state)
            pause_start = time.perf_counter()
            if step % config.log_eval_steps == 0 or is_last:
                eval_metrics = evaluate(p_eval_step, state, dataset, config.prefetch_to_device)
                logger.info("eval at step %d: %s", step, format_metrics(eval_metrics))
                writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
            if step % config.checkpoint_steps == 0 or is_last:
                checkpointer.save(step, unreplicate(state).to_dict())
            paused += time.perf_counter() - pause_start
        if step == stop_after_step:
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
    if jax.process_index() == 0 and final["step"] == num_steps:
        write_json(workdir / "final_metrics.json", final)
    return host_state, final


def log_model_size(model, state: TrainState) -> None:
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


def format_metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))


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
    model = model_cls(config, dataset.meta_data)
    num_steps = total_train_steps(config, dataset.meta_data["num_train_examples"])
    tx = optimizers.get_optimizer(
        config.optimizer, lr_schedules.compound_schedule(config.lr_configs, num_steps)
    )
    state = initialize_state(model, config, jax.random.key(config.rng_seed), tx)
    state = TrainState.from_dict(checkpointer.restore(jax.device_get(state.to_dict())))
    checkpointer.close()
    p_eval_step = jax.pmap(functools.partial(eval_step, model=model), axis_name=AXIS)
    metrics = evaluate(p_eval_step, replicate(state), dataset, config.prefetch_to_device)
    metrics["step"] = int(state.step)
    if jax.process_index() == 0:
        write_json(workdir / "eval_metrics.json", metrics)
    return metrics
