"""TensorBoard summaries and the progress line.

The clu writer imports TensorFlow, so it is created lazily, only by the process that writes
(process 0); other processes only log.
"""

from __future__ import annotations

import datetime
import logging
import sys
import time

import jax
import numpy as np

logger = logging.getLogger("scenic")


#: False: log scalars only (no clu / TensorFlow import), e.g. in benchmarks.
USE_TENSORBOARD = True


class LoggingWriter:
    """Writes scalars to the log only: the stand-in when TensorBoard writing is off."""

    def write_scalars(self, step: int, scalars: dict) -> None:
        logger.debug("step %d: %s", step, scalars)

    def flush(self) -> None:
        pass


def create_writer(workdir: str):
    """A clu metric writer to `workdir` (TensorBoard) on process 0, log-only elsewhere."""
    if not USE_TENSORBOARD:
        return LoggingWriter()
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

    def __init__(
        self,
        total_steps: int,
        start_step: int,
        global_batch_size: int,
        train_flops_per_example: float | None = None,
        peak_flops: float | None = None,
    ):
        """`train_flops_per_example` and `peak_flops` (all devices together) enable the MFU
        estimate: achieved model FLOP/s over the peak."""
        self.total_steps = total_steps
        self.global_batch_size = global_batch_size
        self.train_flops_per_example = train_flops_per_example
        self.peak_flops = peak_flops
        self.interactive = sys.stderr.isatty() and jax.process_index() == 0
        self._start_step, self._start_time, self._last_draw = start_step, time.perf_counter(), 0.0
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def tick(self, step: int) -> None:
        """On a terminal, redraws a one-line progress bar (at most twice a second)."""
        now = time.perf_counter()
        if not self.interactive or (now - self._last_draw < 0.5 and step < self.total_steps):
            return
        self._last_draw = now
        done = step / max(self.total_steps, 1)
        rate = (step - self._start_step) / max(now - self._start_time, 1e-9)
        eta = datetime.timedelta(seconds=round((self.total_steps - step) / max(rate, 1e-9)))
        bar = "#" * int(30 * done) + "." * (30 - int(30 * done))
        sys.stderr.write(f"\r[{bar}] {step}/{self.total_steps} {rate:.1f} steps/s ETA {eta}")
        sys.stderr.flush()

    def report(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Logs one progress line and returns throughput figures for the summaries."""
        if self.interactive:
            sys.stderr.write("\r\033[K")  # clear the bar before the log line
        now = time.perf_counter()
        steps_per_s = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        eta = datetime.timedelta(seconds=round((self.total_steps - step) / max(steps_per_s, 1e-9)))
        shown = " | ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items()))
        examples_per_s = steps_per_s * self.global_batch_size
        throughput = {
            "steps_per_sec": steps_per_s,
            "examples_per_sec": examples_per_s,
            "examples_per_sec_per_device": examples_per_s / jax.device_count(),
        }
        per_device = ""
        if jax.device_count() > 1:
            per_device = f" ({throughput['examples_per_sec_per_device']:.0f} per device)"
        mfu = ""
        if self.train_flops_per_example and self.peak_flops:
            throughput["mfu"] = examples_per_s * self.train_flops_per_example / self.peak_flops
            mfu = f" | MFU {throughput['mfu']:.0%}"
        logger.info(
            "step %d/%d | %s | %.1f steps/s | %.0f examples/s%s%s | ETA %s",
            step,
            self.total_steps,
            shown,
            steps_per_s,
            examples_per_s,
            per_device,
            mfu,
            eta,
        )
        return throughput


class StepProfiler:
    """Captures a JAX profiler trace of `num_steps` steps from `first_step` (after compiling).

    View it with TensorBoard's profile plugin or Perfetto (`xprof`); nothing is traced when
    `num_steps` is 0.
    """

    def __init__(self, directory, first_step: int, num_steps: int):
        self.directory = str(directory)
        self.first_step = first_step
        self.last_step = first_step + num_steps - 1 if num_steps else -1
        self._tracing = False

    def before_step(self, step: int) -> None:
        if step == self.first_step and self.last_step >= step:
            jax.profiler.start_trace(self.directory)
            self._tracing = True

    def after_step(self, step: int, state, stopping: bool = False) -> None:
        if self._tracing and (step == self.last_step or stopping):
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self._tracing = False
            logger.info(
                "Profiler trace of steps %d-%d written to %s.",
                self.first_step,
                step,
                self.directory,
            )
