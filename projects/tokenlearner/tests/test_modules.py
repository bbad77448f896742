"""TokenLearner v1 / v1.1 and TokenFuser against NumPy float64 references computed from the
same parameters, on random inputs and non-square grids."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from scenic_tokenlearner.modules import TokenFuser, TokenLearnerV1, TokenLearnerV11


def f64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def layer_norm(x, p, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def gelu(x):  # flax's default gelu is the tanh approximation
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def mlp(x, p):
    h = gelu(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def softmax(x, axis):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def conv_same(x, kernel):
    """'SAME' zero-padded stride-1 cross-correlation of `[N, *grid, Cin]` with
    `[*k, Cin, Cout]`, any number of grid axes."""
    grid, k = x.shape[1:-1], kernel.shape[:-2]
    pad = [(0, 0)] + [(s // 2, s - 1 - s // 2) for s in k] + [(0, 0)]
    xp = np.pad(x, pad)
    out = np.zeros((x.shape[0], *grid, kernel.shape[-1]))
    for offset in np.ndindex(*k):
        window = xp[(slice(None), *(slice(o, o + g) for o, g in zip(offset, grid)))]
        out += window @ kernel[offset]
    return out


def test_v11_matches_reference_and_ignores_token_order():
    x = jax.random.normal(jax.random.key(0), (3, 7 * 5, 12)) * 2 + 0.5
    module = TokenLearnerV11(num_tokens=4, bottleneck_dim=6)
    params = module.init(jax.random.key(1), x)["params"]
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), params)
    got = np.asarray(module.apply({"params": params}, x))
    p, xs = f64(params), np.asarray(x, np.float64)
    weights = softmax(mlp(layer_norm(xs, p["LayerNorm_0"]), p["token_masking"]), axis=1)
    want = np.einsum("nls,nld->nsd", weights, xs)
    assert got.shape == (3, 4, 12)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    # Each learned token is a convex combination of the inputs: no position information.
    perm = np.random.default_rng(0).permutation(x.shape[1])
    np.testing.assert_allclose(module.apply({"params": params}, x[:, perm]), got, atol=2e-5)
    # A grid input is the same as its flattened tokens.
    np.testing.assert_allclose(
        module.apply({"params": params}, x.reshape(3, 7, 5, 12)), got, atol=1e-6
    )


@pytest.mark.parametrize("grid", [(3, 5), (2, 3, 4)])
@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_v1_matches_reference_on_non_square_grids(grid, pooling):
    x = jax.random.normal(jax.random.key(3), (2, *grid, 6))
    module = TokenLearnerV1(num_tokens=3, pooling=pooling)
    params = module.init(jax.random.key(4), x)["params"]
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(5), a.shape), params)
    got = np.asarray(module.apply({"params": params}, x))
    p, xs = f64(params), np.asarray(x, np.float64)
    maps = layer_norm(xs, p["LayerNorm_0"])
    for i in range(4):
        if i:
            maps = gelu(maps)
        maps = conv_same(maps, p[f"Conv_{i}"]["kernel"])
    maps = sigmoid(maps.reshape(2, -1, 3))
    want = np.einsum("nls,nld->nsd", maps, xs.reshape(2, -1, 6))
    if pooling == "mean":
        want /= maps.shape[1]
    assert got.shape == (2, 3, 6)
    assert p["Conv_0"]["kernel"].shape == (*(3,) * len(grid), 6, 3)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_v1_rejects_flat_tokens():
    with pytest.raises(ValueError, match=r"token grid \[N, h, w, D\]"):
        TokenLearnerV1(num_tokens=2).init(jax.random.key(0), jnp.zeros((1, 9, 4)))


@pytest.mark.parametrize("normalise", [True, False])
def test_fuser_matches_reference(normalise):
    tokens = jax.random.normal(jax.random.key(6), (2, 4, 10))
    original = jax.random.normal(jax.random.key(7), (2, 15, 10))
    module = TokenFuser(use_normalization=normalise, bottleneck_dim=5)
    params = module.init(jax.random.key(8), tokens, original)["params"]
    # The mixing Dense starts at zero (the fuser adds nothing at first); move every weight.
    params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(9), a.shape), params)
    got = np.asarray(module.apply({"params": params}, tokens, original))
    p, t, o = f64(params), np.asarray(tokens, np.float64), np.asarray(original, np.float64)
    if normalise:
        t = layer_norm(t, p["fuser_mix_norm1"])
    t = (t.transpose(0, 2, 1) @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]).transpose(0, 2, 1)
    if normalise:
        t = layer_norm(t, p["fuser_mix_norm2"])
    gates = sigmoid(mlp(layer_norm(o, p["LayerNorm_0"]), p["token_masking"]))
    want = np.einsum("nsd,nls->nld", t, gates)
    assert got.shape == original.shape
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_fuser_starts_as_zero():
    tokens = jax.random.normal(jax.random.key(6), (2, 4, 10))
    original = jax.random.normal(jax.random.key(7), (2, 15, 10))
    module = TokenFuser()
    out = module.apply(module.init(jax.random.key(8), tokens, original), tokens, original)
    np.testing.assert_array_equal(out, 0.0)


def test_gelu_reference_is_flax_default():  # guards the reference itself
    x = np.linspace(-4, 4, 101)
    np.testing.assert_allclose(gelu(x), jax.nn.gelu(x, approximate=True), atol=1e-6)
    assert np.abs(gelu(x) - 0.5 * x * (1 + erf(x / np.sqrt(2)))).max() > 1e-5
