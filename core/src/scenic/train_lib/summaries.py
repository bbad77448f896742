"""TensorBoard summaries and the progress line.

The clu writer imports TensorFlow, so it is created lazily, only by the process that writes
(process 0); other processes only log.
"""

from __future__ import annotations

import datetime
import logging
import time

import jax
import numpy as np

logger = logging.getLogger("scenic")


def create_writer(workdir: str):
    """A clu metric writer to `workdir` (TensorBoard) on process 0, log-only elsewhere."""
    from clu import metric_writers

    return metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=True
    )


def normalize_metrics(pairs: list[dict[str, tuple]]) -> dict[str, float]:
    """Sums (sum, normalizer) pairs over steps / batches and divides: a global mean."""
    if not pairs:
        return {}
    pairs = jax.device_get(pairs)
    totals = {}
    for step_metrics in pairs:
        for name, (value, norm) in step_metrics.items():
            value, norm = np.asarray(value), np.asarray(norm)
            if value.ndim:  # replicated over devices: identical after psum
                value, norm = value[0], norm[0]
            acc = totals.setdefault(name, [0.0, 0.0])
            acc[0] += float(value)
            acc[1] += float(norm)
    return {name: s / max(n, 1e-12) for name, (s, n) in totals.items()}


class Progress:
    """Throughput and ETA since the last report: `step 300/3000 | ... | 41.2 steps/s`."""

    def __init__(self, total_steps: int, start_step: int, global_batch_size: int):
        self.total_steps = total_steps
        self.global_batch_size = global_batch_size
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def report(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Logs one progress line and returns throughput figures for the summaries."""
        now = time.perf_counter()
        steps_per_s = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        eta = datetime.timedelta(seconds=round((self.total_steps - step) / max(steps_per_s, 1e-9)))
        shown = " | ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
        throughput = {
            "steps_per_sec": steps_per_s,
            "examples_per_sec": steps_per_s * self.global_batch_size,
        }
        logger.info(
            "step %d/%d | %s | %.1f steps/s | %.0f examples/s | ETA %s",
            step, self.total_steps, shown, steps_per_s, throughput["examples_per_sec"], eta,
        )
        return throughput
