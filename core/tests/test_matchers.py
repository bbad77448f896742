"""Matchers against SciPy's linear_sum_assignment on random and adversarial costs."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from scenic.model_lib import matchers

EXACT = [
    "hungarian_matcher",
    "hungarian_tpu_matcher",
    "hungarian_scan_tpu_matcher",
    "hungarian_cover_tpu_matcher",
]
APPROXIMATE = ["greedy_matcher", "sinkhorn_matcher", "lazy_matcher"]
SHAPES = [(1, 1), (2, 2), (3, 3), (5, 5), (8, 8), (12, 12), (3, 7), (7, 3), (10, 4), (4, 10)]
PER_CASE = 40  # 10 shapes x 5 kinds x 40 = 2,000 matrices per exact matcher


def make_costs(kind, shape, rng):
    n, m = shape
    if kind == "uniform":
        return rng.random((PER_CASE, n, m))
    if kind == "integer_ties":
        return rng.integers(0, 3, (PER_CASE, n, m)).astype(np.float64)
    if kind == "magnitudes":
        return 10.0 ** rng.uniform(-6, 6, (PER_CASE, n, m))
    if kind == "negative":
        return rng.normal(size=(PER_CASE, n, m)) * 100
    if kind == "forbidden":
        costs = rng.random((PER_CASE, n, m))
        allowed = np.zeros((PER_CASE, n, m), bool)
        for b in range(PER_CASE):  # keep one feasible assignment, forbid ~half of the rest
            k = min(n, m)
            allowed[b, rng.permutation(n)[:k], rng.permutation(m)[:k]] = True
        allowed |= rng.random((PER_CASE, n, m)) < 0.5
        return np.where(allowed, costs, np.inf)
    raise ValueError(kind)


def assert_valid(indices, n, m):
    k = min(n, m)
    assert indices.shape[1:] == (2, k) and indices.dtype == np.int32
    for rows, cols in indices:
        assert len(set(rows)) == k and len(set(cols)) == k
        assert rows.min() >= 0 and rows.max() < n and cols.min() >= 0 and cols.max() < m


def totals(costs, indices):
    return np.array([c[r, col].sum() for c, (r, col) in zip(costs, indices)])


def scipy_totals(costs):
    return np.array([c[linear_sum_assignment(c)].sum() for c in costs])


@pytest.mark.parametrize("name", EXACT)
def test_exact_matchers_equal_scipy_on_2000_matrices(name):
    rng = np.random.default_rng(0)
    matcher = jax.jit(matchers.MATCHERS[name])
    checked = 0
    for kind in ["uniform", "integer_ties", "magnitudes", "negative", "forbidden"]:
        for shape in SHAPES:
            costs = make_costs(kind, shape, rng)
            indices = np.asarray(matcher(costs))
            assert_valid(indices, *shape)
            ours, ref = totals(costs, indices), scipy_totals(costs)
            assert np.all(np.isfinite(ours)), f"{kind} {shape}: used a forbidden pair"
            if kind == "integer_ties":
                np.testing.assert_array_equal(ours, ref, err_msg=f"{kind} {shape}")
            elif kind == "magnitudes":  # 1e-6..1e6 in one matrix: float32 rounding of the max
                scale = costs.max(axis=(1, 2))
                np.testing.assert_array_less(np.abs(ours - ref), 1e-6 * scale * min(shape))
            else:
                np.testing.assert_allclose(ours, ref, rtol=1e-5, err_msg=f"{kind} {shape}")
            checked += len(costs)
    assert checked >= 2000


@pytest.mark.parametrize("name", EXACT)
def test_padded_columns_do_not_change_the_real_matches(name):
    rng = np.random.default_rng(1)
    n, m = 9, 6
    costs = rng.random((20, n, m))
    num_valid = rng.integers(0, m + 1, 20)
    indices = np.asarray(jax.jit(matchers.MATCHERS[name])(costs, jnp.asarray(num_valid)))
    assert_valid(indices, n, m)
    for c, (rows, cols), k in zip(costs, indices, num_valid):
        real = cols < k
        assert real.sum() == k  # every real column is matched
        expected = c[:, :k][linear_sum_assignment(c[:, :k])].sum() if k else 0.0
        np.testing.assert_allclose(c[rows[real], cols[real]].sum(), expected, rtol=1e-5)


def test_cover_matcher_on_larger_costs():
    # Long runs of adjustments and augmenting paths, where float32 drift in the reduced costs
    # would show; one compile for several kinds of cost.
    rng = np.random.default_rng(5)
    shape = (24, 40)
    costs = np.concatenate(
        [make_costs(kind, shape, rng)[:3] for kind in ["uniform", "integer_ties", "magnitudes"]]
    )
    indices = np.asarray(jax.jit(matchers.hungarian_cover_tpu_matcher)(costs))
    assert_valid(indices, *shape)
    ours, ref = totals(costs, indices), scipy_totals(costs)
    np.testing.assert_allclose(ours[:3], ref[:3], rtol=1e-5)
    np.testing.assert_array_equal(ours[3:6], ref[3:6])  # integer ties: exact
    scale = costs[6:].max(axis=(1, 2))
    np.testing.assert_array_less(np.abs(ours[6:] - ref[6:]), 1e-6 * scale * min(shape))


def test_sinkhorn_ott_backend_solves_the_same_problem():
    pytest.importorskip("ott")
    rng = np.random.default_rng(6)
    random = rng.random((8, 4, 9))
    # Planted assignments with a wide margin, which any sensible matcher must find.
    planted = 1.0 + rng.random((4, 4, 9))
    perm = np.stack([rng.permutation(9)[:4] for _ in range(4)])
    planted[np.arange(4)[:, None], np.arange(4)[None], perm] = 0.0
    costs = np.concatenate([random, planted])
    ott = np.asarray(jax.jit(lambda c: matchers.sinkhorn_matcher(c, backend="ott"))(costs))
    assert_valid(ott, 4, 9)
    np.testing.assert_array_equal(ott[8:, 1], perm)
    np.testing.assert_array_equal(ott, np.asarray(jax.jit(matchers.sinkhorn_matcher)(costs)))


def test_sinkhorn_backend_errors_name_the_problem(monkeypatch):
    costs = np.zeros((1, 3, 3))
    with pytest.raises(ValueError, match="backend must be 'jax' or 'ott'"):
        matchers.sinkhorn_matcher(costs, backend="pot")
    for name in ["ott", *[k for k in sys.modules if k.startswith("ott.")]]:
        monkeypatch.setitem(sys.modules, name, None)  # as if ott-jax were not installed
    with pytest.raises(ImportError, match="ott-jax"):
        matchers.sinkhorn_matcher(costs, backend="ott")


@pytest.mark.parametrize("name", APPROXIMATE)
@pytest.mark.parametrize("shape", [(6, 6), (4, 9), (9, 4)])
def test_approximate_matchers_give_valid_assignments(name, shape):
    costs = np.random.default_rng(2).random((16, *shape))
    indices = np.asarray(jax.jit(matchers.MATCHERS[name])(costs))
    assert_valid(indices, *shape)
    assert np.all(totals(costs, indices) >= scipy_totals(costs) - 1e-5)


def test_sinkhorn_and_greedy_are_optimal_on_clear_cut_costs():
    # A planted assignment with a wide margin: any sensible matcher must find it.
    rng = np.random.default_rng(3)
    perm = np.stack([rng.permutation(8) for _ in range(4)])
    costs = 1.0 + rng.random((4, 8, 8))
    costs[np.arange(4)[:, None], np.arange(8)[None], perm] = 0.0
    for name in ["greedy_matcher", "sinkhorn_matcher"]:
        indices = np.asarray(jax.jit(matchers.MATCHERS[name])(costs))
        np.testing.assert_array_equal(indices[:, 1], perm)


def test_matchers_work_inside_pmap_and_pass_no_gradient():
    costs = jnp.asarray(np.random.default_rng(4).random((jax.local_device_count(), 2, 5, 5)))
    for name in matchers.MATCHERS:
        out = jax.pmap(matchers.MATCHERS[name])(costs)
        assert out.shape == (jax.local_device_count(), 2, 2, 5)

    # The matched costs are differentiable; the assignment itself is not differentiated.
    for name in [
        "hungarian_matcher",
        "hungarian_tpu_matcher",
        "hungarian_cover_tpu_matcher",
        "sinkhorn_matcher",
    ]:
        matcher = matchers.MATCHERS[name]

        def matched_cost(c, matcher=matcher):
            idx = matcher(c)
            return jnp.sum(jax.vmap(lambda m, i: m[i[0], i[1]])(c, idx))

        grad = np.asarray(jax.jit(jax.grad(matched_cost))(costs[0]))
        idx = np.asarray(matcher(costs[0]))
        expected = np.zeros(costs[0].shape)
        for b, (rows, cols) in enumerate(idx):
            expected[b, rows, cols] = 1.0
        np.testing.assert_array_equal(grad, expected)
