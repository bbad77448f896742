"""Matcher benchmark: time per batch inside a jitted function, next to a SciPy loop.

    hatch run python tools/bench_matchers.py [--batch 64] [--queries 100] [--repeats 5]
        [--matchers NAME ...]

For B examples with N queries and M in {10, 50, 100} targets, prints each matcher's time
per batch (median of `--repeats`, after a compile call), its ratio to a SciPy
`linear_sum_assignment` loop over the same costs in the same run, and its mean optimality
gap (total cost / SciPy's optimum - 1). JAX, NumPy and SciPy only (no TensorFlow), so it
runs unchanged on a GPU machine. Where ott-jax is installed, `sinkhorn_matcher[ott]` (the
same matcher on ott-jax's Sinkhorn) is timed too.
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


if __name__ == "__main__":
    main()
