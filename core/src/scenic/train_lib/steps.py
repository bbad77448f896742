"""The per-device train and eval steps that the trainer pmaps (no Python state, no I/O).

Each step talks to the model only through the base-model hooks: the Flax module applied to
`batch['inputs']` (an array or a dict of modalities), `loss_and_metrics` in training, and
`get_metrics`, `eval_totals`, `eval_examples` in evaluation. Outputs may be an array or a
dict (logits, boxes, auxiliary outputs); floating outputs are cast to float32 before any
loss or metric. See core/docs/batch_contract.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from scenic.train_lib import ema, precision
from scenic.train_lib.train_state import TrainState

AXIS = "batch"
MIXUP_STREAM = 0x6D6978  # folded into the step's key for mixup, apart from dropout's streams


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
    axis_name: str | None = AXIS,
    per_example_clip_norm: float | None = None,
):
    """One optimisation step on each device's shard, gradients averaged over devices.

    The loss and the step's metrics come from one `model.loss_and_metrics` call on the
    float32 outputs, given the device axis (so a loss normalised over the global batch, as
    detection's, sees it). With `accumulation_steps` > 1 the shard is split into that many
    micro-batches whose gradients are averaged before one update (mutable state such as
    batch statistics is threaded through them in order). `mix_fn` applies mixup / cutmix
    on the device; floating inputs are cast to the compute `dtype`; `ema_settings` updates
    the parameter EMA. With `per_example_clip_norm` each example's gradient (its own loss,
    normalised by itself: `loss_and_metrics` sees one example and no device axis) is clipped
    to that global norm before the examples' gradients are averaged
    (`per_example_clipped`). Returns (state, metrics, all_finite).

    `axis_name=None` is the step of `jax.jit` over a device mesh: the batch is the global
    one (XLA partitions it), so nothing is averaged over a named axis, and micro-batches
    take every `accumulation_steps`-th example, so each device's rows stay on it.
    """
    rng = jax.random.wrap_key_data(state.rng)
    dropout_rng = jax.random.fold_in(rng, state.step)
    if axis_name is not None:
        dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))
    mutable = list(state.model_state.keys())
    if mix_fn is not None:
        batch = mix_fn(jax.random.fold_in(dropout_rng, MIXUP_STREAM), batch)
    batch = precision.cast_inputs(batch, dtype)

    loss_axis = None if per_example_clip_norm else axis_name

    def loss_fn(params, model_state, micro_batch, micro_rng):
        variables = {"params": params, **model_state}
        out = model.flax_model.apply(
            variables,
            micro_batch["inputs"],
            train=True,
            mutable=mutable or False,
            rngs={"dropout": micro_rng},
        )
        outputs, new_model_state = out if mutable else (out, {})
        outputs = precision.to_float32(outputs)
        loss, metrics = model.loss_and_metrics(outputs, micro_batch, params, axis_name=loss_axis)
        return loss, (metrics, dict(new_model_state))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if per_example_clip_norm:
        grad_fn = per_example_clipped(grad_fn, per_example_clip_norm, axis_name)
    if accumulation_steps == 1:
        (loss, (metrics, new_model_state)), grads = grad_fn(
            state.params, state.model_state, batch, dropout_rng
        )
    else:
        micro_batches = jax.tree.map(
            lambda x: split_micro_batches(x, accumulation_steps, strided=axis_name is None),
            batch,
        )

        def accumulate(carry, inputs):
            grad_sum, loss_sum, model_state = carry
            index, micro_batch = inputs
            (loss, (metrics, model_state)), grads = grad_fn(
                state.params, model_state, micro_batch, jax.random.fold_in(dropout_rng, index)
            )
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
    grads = pmean(grads, axis_name)
    new_model_state = pmean(new_model_state, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    metrics = dict(metrics)
    metrics["learning_rate"] = (lr_fn(state.step), jnp.ones(()))
    metrics["grad_norm"] = (grad_norm, jnp.ones(()))
    metrics["param_norm"] = (optax.global_norm(params), jnp.ones(()))
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)).astype(jnp.int32)
    all_finite = finite if axis_name is None else jax.lax.pmin(finite, axis_name)
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


def per_example_clipped(grad_fn, clip_norm: float, axis_name: str | None):
    """`grad_fn(params, model_state, batch, rng)` -> the same function whose gradient is the
    mean over the batch's examples of each example's gradient clipped to `clip_norm`
    (global norm, as `optax.clip_by_global_norm`), and whose loss is the examples' mean.
    Each example is a batch of one (its own dropout key); their (sum, normalizer) metrics
    are summed, then over `axis_name`. Memory: one gradient per example of the batch
    (`grad_accumulation_steps` splits the batch to bound it). Models with mutable state
    (batch statistics) are refused by the trainer: one example's statistics mean nothing."""

    def clipped_mean(params, model_state, batch, rng):
        count = jax.tree.leaves(batch)[0].shape[0]

        def one(example, index):
            example = jax.tree.map(lambda x: x[None], example)
            (loss, (metrics, _)), grads = grad_fn(
                params, model_state, example, jax.random.fold_in(rng, index)
            )
            norm = optax.global_norm(grads)
            scale = clip_norm / jnp.maximum(norm, clip_norm)
            return loss, metrics, jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)

        losses, metrics, grads = jax.vmap(one)(batch, jnp.arange(count))
        metrics = psum(jax.tree.map(lambda x: x.sum(axis=0), metrics), axis_name)
        grads = jax.tree.map(lambda g: g.mean(axis=0), grads)
        return (losses.mean(), (metrics, model_state)), grads

    return clipped_mean


def psum(tree, axis_name: str | None):
    return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def pmean(tree, axis_name: str | None):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def split_micro_batches(x, count: int, strided: bool = False):
    """[B, ...] -> [count, B / count, ...]: consecutive blocks, or (`strided`) every
    `count`-th example, which keeps each micro-batch's rows on the devices that hold them
    when the batch axis is sharded."""
    if strided:
        return jnp.swapaxes(x.reshape(x.shape[0] // count, count, *x.shape[1:]), 0, 1)
    return x.reshape(count, x.shape[0] // count, *x.shape[1:])


def eval_variables(state: TrainState) -> dict:
    """The variables evaluated: the parameter EMA when the run keeps one."""
    params = state.params if state.ema_params is None else state.ema_params
    return {"params": params, **state.model_state}


def eval_constants(state: TrainState, *, model, axis_name=AXIS):
    """`model.eval_constants` of the evaluated variables: run once per evaluation pass, its
    result given to every batch's `eval_step` (`constants`)."""
    del axis_name
    return model.eval_constants(eval_variables(state))


def eval_step(
    state: TrainState, batch, constants=None, *, model, dtype=jnp.float32, axis_name=AXIS
):
    """(sum, normalizer) metrics, eval totals and per-example outputs of one batch;
    `constants` are this pass's `eval_constants` (None for most models)."""
    batch = precision.cast_inputs(batch, dtype)
    outputs = model.eval_apply(eval_variables(state), batch["inputs"], constants)
    return eval_outputs(model, precision.to_float32(outputs), batch, axis_name)


def eval_outputs(model, outputs, batch, axis_name=AXIS):
    """(metrics, totals, per-example outputs) of a batch's outputs: what an eval step returns."""
    examples = model.eval_examples(outputs, batch)
    if examples:
        examples["batch_mask"] = batch["batch_mask"]
    return (
        model.get_metrics(outputs, batch, axis_name=axis_name),
        model.eval_totals(outputs, batch, axis_name=axis_name),
        examples,
    )


def multiview_eval_step(
    state: TrainState, batch, constants=None, *, model, dtype=jnp.float32, axis_name=AXIS
):
    """Like `eval_step` for inputs [B, V, ...] (V views of each example, e.g. temporal
    clips x spatial crops of a video; every modality of a dict has the same V): the model
    sees all B * V views at once and its outputs are averaged over each example's views."""
    inputs = batch["inputs"]
    shapes = {x.shape[:2] for x in jax.tree.leaves(inputs)}
    if len(shapes) != 1:
        raise ValueError(
            f"Multi-view inputs must share [batch, views] in every modality, got {shapes}."
        )
    ((num_examples, num_views),) = shapes
    flat = {**batch, "inputs": jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), inputs)}
    flat = precision.cast_inputs(flat, dtype)
    outputs = model.eval_apply(eval_variables(state), flat["inputs"], constants)
    outputs = jax.tree.map(
        lambda y: average_views(y, num_examples, num_views), precision.to_float32(outputs)
    )
    return eval_outputs(model, outputs, batch, axis_name)


def average_views(y, num_examples: int, num_views: int):
    """[B * V, ...] -> [B, ...]: the mean over views (non-floating outputs: the first view)."""
    y = y.reshape(num_examples, num_views, *y.shape[1:])
    return y.mean(axis=1) if jnp.issubdtype(y.dtype, jnp.floating) else y[:, 0]


def all_finite(tree) -> jnp.ndarray:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
