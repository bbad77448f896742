"""Evaluation passes: every named eval split of a data set, and the multi-view test.

A pass runs the pmapped eval step over one split's padded batches and turns what it returns
into metrics: (sum, normalizer) pairs summed over batches (padding carries batch_mask 0 and
never counts), plus the model's `global_metrics` from eval totals summed over the whole
split and per-example outputs gathered from every host. The data set's main split
(`eval_batches`) is reported unprefixed; each extra split (`Dataset.extra_eval_splits`)
under its name, `{split}/{metric}`.
"""

from __future__ import annotations

import functools
import logging

import jax
import numpy as np

from scenic.train_lib import layouts, steps, summaries

logger = logging.getLogger("scenic")


def evaluate(
    p_eval_step, state, batches, prefetch: int, model, layout=layouts.PMAP
) -> dict[str, float]:
    """One pass over `batches` (an iterable of padded host batches) -> metrics, with the
    eval step compiled for `layout` (the trainer's `layouts` object; pmap by default) and
    called as `p_eval_step(state, batch, constants)`, the model's `eval_constants` computed
    once for the pass."""
    pairs, totals, examples = [], None, []
    constants = pass_constants(model, layout, state)
    for batch in layout.device_batches(iter(batches), prefetch):
        batch_pairs, batch_totals, batch_examples = p_eval_step(state, batch, constants)
        pairs.append(batch_pairs)
        batch_totals = layout.host_totals(batch_totals)
        totals = batch_totals if totals is None else jax.tree.map(np.add, totals, batch_totals)
        if batch_examples:
            examples.append(layout.host_examples(batch_examples))
    metrics = summaries.normalize_metrics(pairs)
    if examples:
        examples = jax.tree.map(lambda *xs: np.concatenate(xs), *examples)
        if jax.process_count() > 1 and not layout.examples_are_global:
            from jax.experimental import multihost_utils

            examples = jax.tree.map(
                np.asarray, multihost_utils.process_allgather(examples, tiled=True)
            )
        real = examples.pop("batch_mask").astype(bool)
        examples = {k: v[real] for k, v in examples.items()}
    metrics.update(model.global_metrics(totals or {}, examples or {}))
    return metrics


def pass_constants(model, layout, state):
    """The model's `eval_constants` for one pass over `state`; None, without compiling or
    running anything, unless `model.has_eval_constants()` (a pmapped function with no
    outputs fails in a multi-process run)."""
    if not model.has_eval_constants():
        return None
    return constants_step(model, layout)(state)


@functools.lru_cache(maxsize=8)
def constants_step(model, layout):
    """`steps.eval_constants` compiled for `layout`, once per (model, layout): a pass runs
    it on the state it evaluates, so the constants are never those of older parameters."""
    return layout.eval_step(functools.partial(steps.eval_constants, model=model))


def evaluate_splits(
    p_eval_step, state, dataset, prefetch: int, model, layout=layouts.PMAP
) -> dict[str, dict[str, float]]:
    """Metrics of the main eval split (under '') and of every extra split (its name)."""
    evaluate_split = functools.partial(evaluate, p_eval_step, state, model=model, layout=layout)
    results = {"": evaluate_split(dataset.eval_batches(), prefetch)}
    for name, split_batches in dataset.extra_eval_splits.items():
        results[name] = evaluate_split(split_batches(), prefetch)
    return results


def flatten_splits(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """{'': main, name: extra} -> main's metrics unprefixed, each extra's as `{name}/{key}`."""
    flat = {}
    for name, metrics in results.items():
        flat.update({f"{name}/{k}" if name else k: v for k, v in metrics.items()})
    return flat


def log_splits(step: int, results: dict[str, dict[str, float]]) -> None:
    for name, metrics in results.items():
        split = f" ({name})" if name else ""
        logger.info("eval%s at step %d: %s", split, step, format_metrics(metrics))


def multiview_test(state, dataset, config, model, dtype, layout=layouts.PMAP) -> dict[str, float]:
    """The multi-view test pass (`config.multiview_test`), metrics prefixed 'multiview_'."""
    if not config.multiview_test:
        return {}
    if getattr(dataset, "multiview_eval_batches", None) is None:
        raise ValueError(
            f"multiview_test is set but data set {config.dataset_name!r} has no multi-view "
            "eval (multiview_eval_batches)."
        )
    step_fn = layout.eval_step(
        functools.partial(steps.multiview_eval_step, model=model, dtype=dtype)
    )
    metrics = evaluate(
        step_fn, state, dataset.multiview_eval_batches(), config.prefetch_to_device, model, layout
    )
    logger.info("multi-view test: %s", format_metrics(metrics))
    return {f"multiview_{k}": v for k, v in metrics.items()}


def final_evaluation(
    p_eval_step, state, dataset, config, model, dtype, layout=layouts.PMAP
) -> dict[str, float]:
    """Every eval split plus, when configured, the multi-view test: a run's last word."""
    metrics = flatten_splits(
        evaluate_splits(p_eval_step, state, dataset, config.prefetch_to_device, model, layout)
    )
    metrics.update(multiview_test(state, dataset, config, model, dtype, layout))
    return metrics


def format_metrics(metrics: dict[str, float]) -> str:
    """One log line; per-class values (keys with a '/', e.g. `per_class_accuracy/7`) are
    counted, not listed: they are in TensorBoard and the metrics JSON."""
    shown = {k: v for k, v in metrics.items() if "/" not in k}
    line = ", ".join(f"{k}={v:.4f}" for k, v in sorted(shown.items()))
    if len(shown) < len(metrics):
        line += f" (+{len(metrics) - len(shown)} per-class values)"
    return line
