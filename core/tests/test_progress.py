"""The progress report's throughput figures: examples/s, per device, and the MFU estimate."""

import jax
import pytest

from scenic.train_lib import summaries


def test_progress_reports_throughput_and_mfu(monkeypatch, caplog):
    # A clock that reads the same however often it is read: 100 s while constructing, then
    # 2 s later for the report of 10 steps.
    now = [100.0]
    monkeypatch.setattr(summaries.time, "perf_counter", lambda: now[0])
    progress = summaries.Progress(
        total_steps=100,
        start_step=0,
        global_batch_size=64,
        train_flops_per_example=3e9,
        peak_flops=1e12,
    )
    now[0] = 102.0
    with caplog.at_level("INFO", logger="scenic"):
        figures = progress.report(10, {"loss": 1.0})
    assert "320 examples/s" in caplog.text and "MFU 96%" in caplog.text
    if jax.device_count() > 1:
        assert f"({320 / jax.device_count():.0f} per device)" in caplog.text
    assert figures["steps_per_sec"] == pytest.approx(5.0)
    assert figures["examples_per_sec"] == pytest.approx(320.0)
    assert figures["examples_per_sec_per_device"] == pytest.approx(320.0 / jax.device_count())
    assert figures["mfu"] == pytest.approx(320.0 * 3e9 / 1e12)


def test_no_mfu_without_flops():
    progress = summaries.Progress(total_steps=10, start_step=0, global_batch_size=8)
    assert "mfu" not in progress.report(1, {})
