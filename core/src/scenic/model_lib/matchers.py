"""Bipartite matchers: cost `[B, N, M]` -> int32 indices `[B, 2, min(N, M)]` (row, column).

Every matcher is callable inside `jit` and `pmap`, and no gradient flows through the
assignment (costs pass through `stop_gradient`). Pairs are listed in increasing row order
when N <= M, and in increasing column order when N > M.

Defined behaviour, shared by all matchers:
  - N < M and N > M: min(N, M) pairs; every row (N <= M) or every column (N > M) is used once.
  - Ties: any optimal assignment may be returned (exact matchers) — totals are what is exact.
  - +inf marks a forbidden pair: replaced by a finite cost larger than any assignment that
    avoids forbidden pairs, so they are used only when no feasible assignment exists.
  - Padded targets: `num_valid_cols[b]` columns are real, the rest are padding. Padding
    columns cost 0 for every row. With N >= M (at least as many queries as target slots,
    the DETR case) every column is matched, so the real columns get exactly the rows an
    optimal assignment of the real columns alone would give them and the padding columns
    take leftover rows (the loss masks them). With N < M that does not hold (zero-cost
    padding attracts the rows): give padding columns +inf instead, as
    `DetectionModel.match` does.
  - The exact pure-JAX matchers run in float32 (as does the SciPy one on its input), so
    totals equal SciPy's float64 optimum up to float32 rounding of the costs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from scenic.model_lib.hungarian_cover import hungarian_cover_single


def prepare_costs(cost, num_valid_cols=None):
    """Stops gradients, zeroes padding columns and makes +inf (forbidden) pairs finite."""
    cost = jax.lax.stop_gradient(jnp.asarray(cost, jnp.float32))
    if num_valid_cols is not None:
        cols = jnp.arange(cost.shape[-1])
        cost = jnp.where(cols[None, None, :] < num_valid_cols[:, None, None], cost, 0.0)
    finite = jnp.isfinite(cost)
    largest = jnp.max(jnp.where(finite, jnp.abs(cost), 0.0), axis=(-2, -1), keepdims=True)
    forbidden = (largest + 1.0) * (min(cost.shape[-2:]) + 1)
    return jnp.where(finite, cost, forbidden)


def _transpose_if_tall(cost):
    """Matchers work on N <= M; a tall cost matrix is solved transposed."""
    return (jnp.swapaxes(cost, -1, -2), True) if cost.shape[-2] > cost.shape[-1] else (cost, False)


def _match(cost, num_valid_cols, solve_batch):
    """Shared driver: prepare costs, solve `[B, n, m]` with n <= m for each row's column
    (`solve_batch`), and return (row, column) pairs in the original orientation."""
    cost, transposed = _transpose_if_tall(prepare_costs(cost, num_valid_cols))
    batch, n, _ = cost.shape
    cols = solve_batch(cost).astype(jnp.int32)
    rows = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (batch, n))
    return jnp.stack([cols, rows] if transposed else [rows, cols], axis=1)


def _scipy_assignment(cost: np.ndarray) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment

    out = np.empty((cost.shape[0], cost.shape[1]), np.int32)
    for b, matrix in enumerate(np.asarray(cost, np.float64)):
        _, cols = linear_sum_assignment(matrix)
        out[b] = cols
    return out


def hungarian_matcher(cost, num_valid_cols=None):
    """Exact: SciPy's `linear_sum_assignment` on the host, through `jax.pure_callback`."""

    def solve(cost):
        out = jax.ShapeDtypeStruct(cost.shape[:2], jnp.int32)
        return jax.pure_callback(_scipy_assignment, out, cost, vmap_method="sequential")

    return _match(cost, num_valid_cols, solve)


def _hungarian_single(cost):
    """Shortest augmenting paths with potentials (Kuhn-Munkres / Jonker-Volgenant), N <= M.

    Column 0 is a dummy; `owner[j]` is the 1-based row assigned to column j (0: none).
    """
    n, m = cost.shape
    big = jnp.asarray(jnp.finfo(jnp.float32).max, jnp.float32)
    padded = jnp.zeros((n + 1, m + 1), jnp.float32).at[1:, 1:].set(cost)

    def add_row(i, carry):
        u, v, owner, way = carry
        owner = owner.at[0].set(i)
        minv = jnp.full((m + 1,), big)
        used = jnp.zeros((m + 1,), bool)

        def search_cond(state):
            _, _, _, owner, _, _, j0 = state
            return owner[j0] != 0

        def search_step(state):
            u, v, minv, owner, way, used, j0 = state
            used = used.at[j0].set(True)
            i0 = owner[j0]
            reduced = padded[i0] - u[i0] - v
            better = (~used) & (reduced < minv)
            minv = jnp.where(better, reduced, minv)
            way = jnp.where(better, j0, way)
            masked = jnp.where(used, big, minv).at[0].set(big)
            j1 = jnp.argmin(masked)
            delta = masked[j1]
            u = u.at[owner].add(jnp.where(used, delta, 0.0))
            v = jnp.where(used, v - delta, v)
            minv = jnp.where(used, minv, minv - delta)
            return u, v, minv, owner, way, used, j1

        u, v, _, owner, way, _, j0 = jax.lax.while_loop(
            search_cond, search_step, (u, v, minv, owner, way, used, jnp.int32(0))
        )

        def augment_step(state):
            owner, j0 = state
            j1 = way[j0]
            return owner.at[j0].set(owner[j1]), j1

        owner, _ = jax.lax.while_loop(lambda s: s[1] != 0, augment_step, (owner, j0))
        return u, v, owner, way

    init = (
        jnp.zeros((n + 1,), jnp.float32),
        jnp.zeros((m + 1,), jnp.float32),
        jnp.zeros((m + 1,), jnp.int32),
        jnp.zeros((m + 1,), jnp.int32),
    )
    _, _, owner, _ = jax.lax.fori_loop(1, n + 1, add_row, init)
    # owner[j] - 1 is the row of column j - 1; invert to the column of each row.
    assigned = owner[1:] > 0
    target_rows = jnp.where(assigned, owner[1:] - 1, n)  # unassigned columns go to a sink
    col_of_row = jnp.zeros((n + 1,), jnp.int32).at[target_rows].set(jnp.arange(m, dtype=jnp.int32))
    return col_of_row[:n]


def hungarian_tpu_matcher(cost, num_valid_cols=None):
    """Exact, pure JAX (no host callback): the Hungarian algorithm vmapped over the batch.

    Runs in float32: totals equal SciPy's up to float32 rounding of the costs.
    """
    return _match(cost, num_valid_cols, jax.vmap(_hungarian_single))


def hungarian_scan_tpu_matcher(cost, num_valid_cols=None):
    """Exact, pure JAX, one example at a time (`lax.map`): less memory than the vmap."""
    return _match(cost, num_valid_cols, lambda cost: jax.lax.map(_hungarian_single, cost))


def hungarian_cover_tpu_matcher(cost, num_valid_cols=None):
    """Exact, pure JAX: Munkres' minimum-cover method (star, cover, prime, augment, adjust by
    the minimum uncovered value), vmapped over the batch; see `hungarian_cover`.

    Runs in float32 with exact zero tests: totals equal SciPy's up to float32 rounding.
    """
    return _match(cost, num_valid_cols, jax.vmap(hungarian_cover_single))


def _greedy_single(cost):
    n, m = cost.shape
    big = jnp.asarray(jnp.finfo(jnp.float32).max, jnp.float32)

    def pick(_, state):
        cost, col_of_row = state
        flat = jnp.argmin(cost)
        row, col = flat // m, flat % m
        cost = cost.at[row, :].set(big).at[:, col].set(big)
        return cost, col_of_row.at[row].set(col)

    _, col_of_row = jax.lax.fori_loop(0, n, pick, (cost, jnp.zeros((n,), jnp.int32)))
    return col_of_row


def greedy_matcher(cost, num_valid_cols=None):
    """Approximate: repeatedly takes the cheapest remaining (row, column) pair."""
    return _match(cost, num_valid_cols, jax.vmap(_greedy_single))


def sinkhorn_matcher(
    cost,
    num_valid_cols=None,
    epsilon: float = 0.002,
    num_iters: int = 500,
    backend: str = "jax",
):
    """Approximate: entropic optimal transport (log-domain Sinkhorn), rounded greedily.

    Costs are scaled to [0, 1] per example and `epsilon` is the entropic regulariser on that
    scale. For N < M a zero-cost dummy row absorbs the M - N unmatched columns, so every
    real row carries a full unit. The transport plan becomes a valid assignment through
    `greedy_matcher` on -log(plan) (its optimality gap is in tools/bench_matchers.py).

    `backend="jax"` runs `num_iters` Sinkhorn iterations written here; `backend="ott"` solves
    the same problem with ott-jax's `Sinkhorn` (an optional dependency, imported on use),
    which stops early once the marginals are met to its default threshold (at most
    `num_iters` iterations).
    """
    if backend == "jax":
        solve = _sinkhorn_log_plan
    elif backend == "ott":
        solve = _ott_log_plan_solver()
    else:
        raise ValueError(f"sinkhorn_matcher: backend must be 'jax' or 'ott', got {backend!r}")

    def columns(cost):
        n = cost.shape[1]
        scaled, log_a, log_b = _sinkhorn_problem(cost)
        log_plan = solve(scaled, log_a, log_b, epsilon, num_iters)[:, :n]
        return jax.vmap(_greedy_single)(-log_plan)

    return _match(cost, num_valid_cols, columns)


def _sinkhorn_problem(cost):
    """Per-example [0, 1] costs (with a dummy row when N < M) and log marginals."""
    batch, n, m = cost.shape
    lo = jnp.min(cost, axis=(1, 2), keepdims=True)
    hi = jnp.max(cost, axis=(1, 2), keepdims=True)
    scaled = (cost - lo) / jnp.maximum(hi - lo, 1e-12)
    if m > n:
        scaled = jnp.concatenate([scaled, jnp.zeros((batch, 1, m))], axis=1)
    row_mass = jnp.full((scaled.shape[1],), 1.0 / m).at[n:].set((m - n) / m)
    log_a = jnp.broadcast_to(jnp.log(row_mass), (batch, scaled.shape[1]))
    log_b = jnp.full((batch, m), -jnp.log(m), jnp.float32)
    return scaled, log_a, log_b


def _sinkhorn_log_plan(scaled, log_a, log_b, epsilon: float, num_iters: int):
    log_k = -scaled / epsilon

    def iterate(_, potentials):
        f, g = potentials
        f = log_a - jax.nn.logsumexp(log_k + g[:, None, :], axis=2)
        g = log_b - jax.nn.logsumexp(log_k + f[:, :, None], axis=1)
        return f, g

    f, g = jax.lax.fori_loop(0, num_iters, iterate, (jnp.zeros_like(log_a), jnp.zeros_like(log_b)))
    return log_k + f[:, :, None] + g[:, None, :]


def _ott_log_plan_solver():
    """ott-jax's Sinkhorn on the same problem; imported here because ott-jax is optional."""
    try:
        from ott.geometry import geometry
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import sinkhorn
    except ImportError as error:
        raise ImportError(
            "sinkhorn_matcher(backend='ott') needs the optional package ott-jax "
            "(pip install ott-jax); backend='jax' needs nothing extra"
        ) from error

    def log_plan(scaled, log_a, log_b, epsilon: float, num_iters: int):
        solver = sinkhorn.Sinkhorn(max_iterations=num_iters)

        def solve(cost, log_a, log_b):
            geom = geometry.Geometry(cost_matrix=cost, epsilon=epsilon)
            out = solver(linear_problem.LinearProblem(geom, a=jnp.exp(log_a), b=jnp.exp(log_b)))
            # ott's plan is exp((f_i + g_j - C_ij) / epsilon), potentials in cost units.
            return (out.f[:, None] + out.g[None, :] - cost) / epsilon

        return jax.vmap(solve)(scaled, log_a, log_b)

    return log_plan


def lazy_matcher(cost, num_valid_cols=None):
    """No optimisation: row i takes column i (a baseline and a debugging aid)."""
    del num_valid_cols
    batch, n, m = jnp.shape(cost)
    k = min(n, m)
    idx = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (batch, k))
    return jnp.stack([idx, idx], axis=1)


MATCHERS = {
    "hungarian_matcher": hungarian_matcher,
    "hungarian_tpu_matcher": hungarian_tpu_matcher,
    "hungarian_scan_tpu_matcher": hungarian_scan_tpu_matcher,
    "hungarian_cover_tpu_matcher": hungarian_cover_tpu_matcher,
    "greedy_matcher": greedy_matcher,
    "sinkhorn_matcher": sinkhorn_matcher,
    "lazy_matcher": lazy_matcher,
}
