"""SIGTERM / SIGINT become a request to stop at the next step boundary, after a checkpoint.

Cluster schedulers send SIGTERM some seconds before they kill a job. Instead of dying
mid-step, the trainer finishes the step in flight, saves a checkpoint at that step and
exits; running the same command again resumes exactly there. A second Ctrl-C aborts at
once (the last good checkpoint is untouched either way).

With several processes the signal may reach only some of them, so `should_stop` agrees
on the answer across processes: every process stops at the same step.
"""

from __future__ import annotations

import logging
import signal
import threading

import jax
import numpy as np

logger = logging.getLogger("scenic")

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + signal number, as shells do


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopRequest:
    """Context manager catching SIGTERM and SIGINT while training."""

    def __init__(self):
        self.signal_number: int | None = None
        self._previous = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signal_number is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: abort now
        self.signal_number = signum
        logger.warning(
            "Received %s: finishing the current step, saving a checkpoint, then exiting.",
            signal.Signals(signum).name,
        )

    def should_stop(self) -> bool:
        """True on every process once any process has been signalled."""
        local = self.signal_number or 0
        if jax.process_count() == 1:
            return bool(local)
        from jax.experimental import multihost_utils

        signals = np.asarray(multihost_utils.process_allgather(np.int32(local)))
        if not local and signals.max():
            self.signal_number = int(signals.max())
        return bool(signals.max())

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signal_number, 1) if self.signal_number else 0
