"""Matcher benchmark: time per batch inside a jitted function, next to a SciPy loop, and
each matcher's share of a DETR training step's criterion.

    hatch run python tools/bench_matchers.py [--batch 64] [--queries 100] [--repeats 5]
        [--matchers NAME ...] [--step-share]

For B examples with N queries and M in {10, 50, 100} targets, prints each matcher's time
per batch (median of `--repeats`, after a compile call), its ratio to a SciPy
`linear_sum_assignment` loop over the same costs in the same run, and its mean optimality
gap (total cost / SciPy's optimum - 1). JAX, NumPy and SciPy only (no TensorFlow), so it
runs unchanged on a GPU machine. Where ott-jax is installed, `sinkhorn_matcher[ott]` (the
same matcher on ott-jax's Sinkhorn) is timed too.

`--step-share`: the matcher inside the jitted gradient step of DETR's criterion, as the
trainer runs it: DETR-R50's heads (width 256, 91 classes + no object, 6 decoder layers:
the final output and 5 auxiliary ones, each matched on its own) on given decoder features,
`DetectionModel.loss_and_metrics`, and the gradient. Printed: the step with each matcher,
the same step with matching replaced by a fixed assignment (no matcher), and the matcher's
share of the step. That is the criterion's step, not the whole model's: on an accelerator
add the backbone and transformer's time to the denominator.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import time

import jax
import numpy as np
from scipy.optimize import linear_sum_assignment

from scenic.model_lib import matchers


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def available_matchers() -> dict:
    found = dict(matchers.MATCHERS)
    if importlib.util.find_spec("ott") is not None:
        found["sinkhorn_matcher[ott]"] = functools.partial(matchers.sinkhorn_matcher, backend="ott")
    return found


def main() -> None:
    available = available_matchers()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--targets", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--matchers", nargs="+", choices=sorted(available), default=list(available))
    parser.add_argument(
        "--step-share", action="store_true", help="also each matcher's share of DETR's step"
    )
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    rng = np.random.default_rng(0)
    for m in args.targets:
        costs = rng.random((args.batch, args.queries, m)).astype(np.float32)
        on_device = jax.device_put(costs)
        optimum = np.array([c[linear_sum_assignment(c)].sum() for c in costs.astype(np.float64)])
        scipy_time = median_seconds(
            lambda costs=costs: [linear_sum_assignment(c) for c in costs], args.repeats
        )
        shape = f"B={args.batch} N={args.queries} M={m}"
        print(f"\n{shape}: SciPy loop {scipy_time * 1e3:.1f} ms/batch")
        print(f"  {'matcher':28s} {'ms/batch':>10s} {'x SciPy':>8s} {'gap':>8s}")
        for name in args.matchers:
            jitted = jax.jit(available[name])
            indices = np.asarray(jitted(on_device))  # compile + result for the gap
            seconds = median_seconds(
                lambda jitted=jitted, x=on_device: jitted(x).block_until_ready(), args.repeats
            )
            total = np.array([c[r, k].sum() for c, (r, k) in zip(costs, indices)])
            gap = float(np.mean(total / optimum - 1.0))
            print(f"  {name:28s} {seconds * 1e3:10.1f} {seconds / scipy_time:8.2f} {gap:8.2%}")
    if args.step_share:
        step_share(args, available)


def criterion_step_seconds(matcher, batch, queries, targets, repeats) -> float:
    """Median seconds of one jitted gradient step of DETR's heads + criterion (6 outputs)."""
    import flax.linen as nn
    import jax.numpy as jnp
    import ml_collections

    from scenic.model_lib.base_models.detection_model import DetectionModel

    class Heads(nn.Module):
        @nn.compact
        def __call__(self, features):  # [layers, B, N, 256]
            logits = nn.Dense(92, name="class_head")(features)
            boxes = nn.sigmoid(nn.Dense(4, name="box_head")(nn.relu(nn.Dense(256)(features))))
            outputs = [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits, boxes)]
            return {**outputs[-1], "aux_outputs": outputs[:-1]}

    class Criterion(DetectionModel):
        def build_flax_model(self):
            return Heads()

    model = Criterion(ml_collections.ConfigDict(), {"num_classes": 91})
    model.matcher = matcher
    rng = np.random.default_rng(1)
    features = jnp.asarray(rng.normal(size=(6, batch, queries, 256)).astype(np.float32))
    num_real = rng.integers(1, targets + 1, batch)
    label = {
        "labels": jnp.asarray(rng.integers(0, 91, (batch, targets)), jnp.int32),
        "boxes": jnp.asarray(rng.uniform(0.2, 0.4, (batch, targets, 4)), jnp.float32),
        "box_mask": jnp.asarray(np.arange(targets)[None] < num_real[:, None], jnp.float32),
    }
    params = model.flax_model.init(jax.random.key(0), features)["params"]

    def loss(p):
        outputs = model.flax_model.apply({"params": p}, features)
        return model.loss_and_metrics(outputs, {"label": label})[0]

    step = jax.jit(jax.grad(loss))
    jax.block_until_ready(step(params))
    return median_seconds(lambda: jax.block_until_ready(step(params)), repeats)


def fixed_assignment(cost, num_valid_cols=None):
    """No matching: query i takes target i (the rest of the criterion unchanged)."""
    import jax.numpy as jnp

    batch, rows, cols = cost.shape
    k = min(rows, cols)
    index = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (batch, k))
    return jnp.stack([index, index], axis=1)


def step_share(args, available) -> None:
    print(
        f"\nMatcher share of DETR's criterion step (jitted gradient; B={args.batch}, "
        f"N={args.queries}, 6 matched outputs):"
    )
    print(f"  {'matcher':28s} {'M':>4s} {'step ms':>9s} {'no-match ms':>12s} {'share':>7s}")
    for m in args.targets:
        base = criterion_step_seconds(fixed_assignment, args.batch, args.queries, m, args.repeats)
        for name in args.matchers:
            seconds = criterion_step_seconds(
                available[name], args.batch, args.queries, m, args.repeats
            )
            share = max(seconds - base, 0.0) / seconds
            print(f"  {name:28s} {m:4d} {seconds * 1e3:9.1f} {base * 1e3:12.1f} {share:7.1%}")


if __name__ == "__main__":
    main()
