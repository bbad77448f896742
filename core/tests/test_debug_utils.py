"""XLA cost analyses and parameter counts used for the MFU estimate and the benchmarks."""

import jax
import jax.numpy as jnp

from scenic.common_lib import debug_utils


def test_compiled_costs_of_a_matmul_from_shapes_alone():
    a = jax.ShapeDtypeStruct((64, 32), jnp.float32)
    b = jax.ShapeDtypeStruct((32, 16), jnp.float32)
    flops, temp_bytes = debug_utils.compiled_costs(lambda x, y: jnp.tanh(x @ y) @ y.T, a, b)
    assert flops >= 2 * 64 * 32 * 16 * 2  # two matmuls (XLA may add the tanh's)
    assert flops < 2 * 64 * 32 * 16 * 2 * 1.1
    assert isinstance(temp_bytes, int) and temp_bytes >= 0
    assert debug_utils.compiled_flops(lambda x, y: x @ y, a, b) == 2 * 64 * 32 * 16


def test_model_flops_count_the_traced_program_without_compiling():
    a = jax.ShapeDtypeStruct((64, 32), jnp.float32)
    b = jax.ShapeDtypeStruct((32, 16), jnp.float32)
    assert debug_utils.model_flops(lambda x, y: x @ y, a, b) == 2 * 64 * 32 * 16
    # Two matmuls (the analysis may add the tanh's).
    flops = debug_utils.model_flops(lambda x, y: jnp.tanh(x @ y) @ y.T, a, b)
    assert 2 * 64 * 32 * 16 * 2 <= flops < 2 * 64 * 32 * 16 * 2 * 1.1


def test_count_parameters():
    assert debug_utils.count_parameters({"w": jnp.zeros((3, 4)), "b": [jnp.zeros(4)]}) == 16


def test_run_peak_is_timed_once_per_process_for_each_size_and_dtype(monkeypatch):
    timed = []

    def fake_peak(size, dtype):
        timed.append((size, dtype))
        return float(len(timed))  # a different figure each time it is really timed

    monkeypatch.setattr(debug_utils, "peak_matmul_flops", fake_peak)
    debug_utils._peak_once.cache_clear()
    try:
        first = debug_utils.run_peak_matmul_flops(size=64, dtype=jnp.float32)
        assert debug_utils.run_peak_matmul_flops(size=64, dtype="float32") == first
        bf16 = debug_utils.run_peak_matmul_flops(size=64, dtype=jnp.bfloat16)
        other_size = debug_utils.run_peak_matmul_flops(size=32, dtype=jnp.float32)
        assert timed == [(64, jnp.float32), (64, jnp.bfloat16), (32, jnp.float32)]
        assert len({first, bf16, other_size}) == 3
    finally:
        debug_utils._peak_once.cache_clear()  # later runs in this process time the real one
