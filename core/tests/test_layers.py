"""Layers against NumPy float64 implementations that use the modules' own parameters."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scenic.model_lib.layers import (
    AddLearnedPositionEmbedding,
    MlpBlock,
    MultiHeadAttention,
    StochasticDepth,
    sincos_position_embedding_1d,
    sincos_position_embedding_2d,
)

RTOL = 1e-5
ATOL = 1e-5


def f64(x):
    return np.asarray(x, np.float64)


def randn(seed, *shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# --- MultiHeadAttention --------------------------------------------------------------------


def np_attention(params, x_q, x_kv, mask=None):
    """Reference multi-head attention in float64 from the module's parameter tree."""
    x_q, x_kv = f64(x_q), f64(x_kv)

    def project(name, x):
        return np.einsum("bld,dhk->blhk", x, f64(params[name]["kernel"])) + f64(
            params[name]["bias"]
        )

    q, k, v = project("query", x_q), project("key", x_kv), project("value", x_kv)
    head_dim = q.shape[-1]
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim)
    if mask is not None:
        logits = np.where(np.asarray(mask), logits, -np.inf)
    logits = logits - logits.max(-1, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(-1, keepdims=True)
    attended = np.einsum("bhqk,bkhd->bqhd", weights, v)
    return np.einsum("bqhd,hdo->bqo", attended, f64(params["out"]["kernel"])) + f64(
        params["out"]["bias"]
    )


def random_mask(seed, batch, heads, len_q, len_kv):
    """Boolean mask with at least one allowed key in every query row."""
    rng = np.random.default_rng(seed)
    mask = rng.random((batch, heads, len_q, len_kv)) < 0.5
    mask[..., 0] = True
    assert not mask.all()
    return jnp.asarray(mask)


def init_attention(module, x_q, x_kv=None, mask=None, seed=0):
    return module.init(jax.random.key(seed), x_q, x_kv, mask=mask)["params"]


def make_attention(**kwargs):
    # Non-zero biases so the reference checks them too.
    return MultiHeadAttention(bias_init=nn.initializers.normal(0.5), **kwargs)


@pytest.mark.parametrize("mask_heads", [None, 1, 2])
def test_self_attention_matches_reference(mask_heads):
    batch, length, dim, heads = 2, 5, 8, 2
    x = randn(0, batch, length, dim)
    mask = None if mask_heads is None else random_mask(1, batch, mask_heads, length, length)
    module = make_attention(num_heads=heads)
    params = init_attention(module, x, mask=mask)

    assert params["query"]["kernel"].shape == (dim, heads, dim // heads)
    assert params["query"]["bias"].shape == (heads, dim // heads)
    assert params["out"]["kernel"].shape == (heads, dim // heads, dim)
    assert params["out"]["bias"].shape == (dim,)

    out = module.apply({"params": params}, x, mask=mask)
    assert out.shape == (batch, length, dim)
    np.testing.assert_allclose(f64(out), np_attention(params, x, x, mask), RTOL, ATOL)
    if mask is not None:  # the mask matters
        unmasked = module.apply({"params": params}, x)
        assert not np.allclose(f64(unmasked), f64(out), atol=1e-3)


@pytest.mark.parametrize("masked", [False, True])
def test_cross_attention_matches_reference(masked):
    batch, len_q, len_kv, dim_q, dim_kv, heads = 2, 3, 6, 8, 5, 4
    x_q, x_kv = randn(2, batch, len_q, dim_q), randn(3, batch, len_kv, dim_kv)
    mask = random_mask(4, batch, 1, len_q, len_kv) if masked else None
    module = make_attention(num_heads=heads, qkv_features=12, out_features=7)
    params = init_attention(module, x_q, x_kv, mask)
    assert params["key"]["kernel"].shape == (dim_kv, heads, 3)
    assert params["query"]["kernel"].shape == (dim_q, heads, 3)
    assert params["out"]["kernel"].shape == (heads, 3, 7)

    out = module.apply({"params": params}, x_q, x_kv, mask=mask)
    assert out.shape == (batch, len_q, 7)
    np.testing.assert_allclose(f64(out), np_attention(params, x_q, x_kv, mask), RTOL, ATOL)


def test_attention_width_must_divide_by_heads():
    x = jnp.zeros((1, 2, 6))
    with pytest.raises(ValueError, match="not divisible by num_heads=4"):
        MultiHeadAttention(num_heads=4).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="Attention width 10"):
        MultiHeadAttention(num_heads=3, qkv_features=10).init(jax.random.key(0), x)


@pytest.mark.parametrize("masked", [False, True])
def test_attention_dropout_paths_agree_with_fused_path(masked):
    batch, length, dim, heads = 2, 4, 8, 2
    x = randn(5, batch, length, dim)
    mask = random_mask(6, batch, heads, length, length) if masked else None
    fused = make_attention(num_heads=heads)
    params = init_attention(fused, x, mask=mask)
    reference = np_attention(params, x, x, mask)
    fused_out = f64(fused.apply({"params": params}, x, mask=mask))

    # rate > 0 but deterministic: no dropout; same parameters, same output.
    with_rate = make_attention(num_heads=heads, dropout_rate=0.5)
    det_out = with_rate.apply({"params": params}, x, mask=mask, deterministic=True)
    np.testing.assert_allclose(f64(det_out), fused_out, rtol=1e-6, atol=1e-6)

    # The explicit (non-fused) softmax/dropout code path runs only when training with
    # rate > 0; with a negligible rate it drops (almost surely) nothing.
    tiny_rate = make_attention(num_heads=heads, dropout_rate=1e-7)
    explicit_out = tiny_rate.apply(
        {"params": params}, x, mask=mask, deterministic=False, rngs={"dropout": jax.random.key(1)}
    )
    np.testing.assert_allclose(f64(explicit_out), fused_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f64(explicit_out), reference, RTOL, ATOL)

    # A real rate in training mode changes the output and needs the 'dropout' RNG.
    dropped = with_rate.apply(
        {"params": params}, x, mask=mask, deterministic=False, rngs={"dropout": jax.random.key(2)}
    )
    assert np.all(np.isfinite(f64(dropped)))
    assert not np.allclose(f64(dropped), fused_out, atol=1e-3)
    with pytest.raises(Exception, match="dropout"):
        with_rate.apply({"params": params}, x, deterministic=False)


# --- MlpBlock ------------------------------------------------------------------------------


def np_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize("out_dim", [None, 3])
def test_mlp_block_matches_reference(out_dim):
    x = randn(7, 2, 4, 6)
    block = MlpBlock(mlp_dim=10, out_dim=out_dim, bias_init=nn.initializers.normal(0.5))
    params = block.init(jax.random.key(0), x)["params"]
    assert params["Dense_0"]["kernel"].shape == (6, 10)
    assert params["Dense_1"]["kernel"].shape == (10, out_dim or 6)
    out = block.apply({"params": params}, x)
    assert out.shape == (2, 4, out_dim or 6)

    dense_0, dense_1 = params["Dense_0"], params["Dense_1"]
    hidden = np_gelu_tanh(f64(x) @ f64(dense_0["kernel"]) + f64(dense_0["bias"]))
    expected = hidden @ f64(dense_1["kernel"]) + f64(dense_1["bias"])
    np.testing.assert_allclose(f64(out), expected, RTOL, ATOL)


def test_mlp_block_dropout_only_in_training():
    x = randn(8, 4, 6)
    block = MlpBlock(mlp_dim=16, dropout_rate=0.5)
    variables = block.init(jax.random.key(0), x)
    det = block.apply(variables, x)
    np.testing.assert_array_equal(f64(block.apply(variables, x, deterministic=True)), f64(det))
    train = block.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(f64(train), f64(det), atol=1e-3)
    # Second dropout zeroes whole output units.
    assert np.any(f64(train) == 0.0)
    no_rate = MlpBlock(mlp_dim=16).apply(
        variables, x, deterministic=False, rngs={"dropout": jax.random.key(1)}
    )
    np.testing.assert_allclose(f64(no_rate), f64(det), rtol=1e-6, atol=1e-6)


# --- StochasticDepth -----------------------------------------------------------------------


def test_stochastic_depth_is_identity_when_deterministic_or_rate_zero():
    x = randn(9, 6, 3, 4)
    out = StochasticDepth(rate=0.5).apply({}, x, deterministic=True)
    np.testing.assert_array_equal(f64(out), f64(x))
    out = StochasticDepth(rate=0.0).apply(
        {}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}
    )
    np.testing.assert_array_equal(f64(out), f64(x))


def test_stochastic_depth_drops_whole_examples_and_rescales():
    rate, batch = 0.3, 4000
    x = jnp.asarray(np.random.default_rng(10).uniform(0.5, 1.5, size=(batch, 2, 3)), jnp.float32)
    out = StochasticDepth(rate=rate).apply(
        {}, x, deterministic=False, rngs={"dropout": jax.random.key(3)}
    )
    out, x = f64(out), f64(x)
    flat_out, flat_x = out.reshape(batch, -1), x.reshape(batch, -1)
    dropped = np.all(flat_out == 0.0, axis=1)
    kept = ~dropped
    # Every example is either all zeros or exactly x / (1 - rate).
    np.testing.assert_allclose(flat_out[kept], flat_x[kept] / (1.0 - rate), rtol=1e-6)
    assert not np.any(flat_out[dropped])
    # Keep fraction ~ 1 - rate (std ~ 0.007 at this batch size).
    assert abs(kept.mean() - (1.0 - rate)) < 0.03
    # Different RNG, different examples dropped.
    other = StochasticDepth(rate=rate).apply(
        {}, jnp.asarray(x), deterministic=False, rngs={"dropout": jax.random.key(4)}
    )
    assert not np.array_equal(np.all(f64(other).reshape(batch, -1) == 0, axis=1), dropped)


# --- Position embeddings -------------------------------------------------------------------


def explicit_sincos_1d(length, dim, max_period=10_000.0):
    half = dim // 2
    emb = np.zeros((length, dim), np.float64)
    for pos in range(length):
        for i in range(half):
            angle = pos / max_period ** (i / half)
            emb[pos, i] = math.sin(angle)
            emb[pos, half + i] = math.cos(angle)
    return emb[None]


def explicit_sincos_2d(height, width, dim, max_period=10_000.0):
    quarter = dim // 4
    emb = np.zeros((height * width, dim), np.float64)
    for row in range(height):
        for col in range(width):
            token = row * width + col
            for i in range(quarter):
                freq = 1.0 / max_period ** (i / max(quarter - 1, 1))  # as big_vision
                emb[token, i] = math.sin(col * freq)
                emb[token, quarter + i] = math.cos(col * freq)
                emb[token, 2 * quarter + i] = math.sin(row * freq)
                emb[token, 3 * quarter + i] = math.cos(row * freq)
    return emb[None]


@pytest.mark.parametrize(
    ("length", "dim", "max_period"), [(7, 8, 10_000.0), (1, 2, 10_000.0), (12, 6, 100.0)]
)
def test_sincos_1d_matches_formula(length, dim, max_period):
    emb = sincos_position_embedding_1d(length, dim, max_period=max_period)
    assert emb.shape == (1, length, dim)
    assert emb.dtype == jnp.float32
    np.testing.assert_allclose(f64(emb), explicit_sincos_1d(length, dim, max_period), atol=1e-6)
    # Position 0: sines 0, cosines 1.
    np.testing.assert_array_equal(f64(emb)[0, 0], [0.0] * (dim // 2) + [1.0] * (dim // 2))


@pytest.mark.parametrize(
    ("height", "width", "dim", "max_period"), [(3, 4, 8, 10_000.0), (2, 5, 12, 50.0)]
)
def test_sincos_2d_matches_formula(height, width, dim, max_period):
    emb = sincos_position_embedding_2d(height, width, dim, max_period=max_period)
    assert emb.shape == (1, height * width, dim)
    assert emb.dtype == jnp.float32
    np.testing.assert_allclose(
        f64(emb), explicit_sincos_2d(height, width, dim, max_period), atol=1e-6
    )
    # Row-major: tokens in the same column share the x channels, those in a row the y ones.
    grid = f64(emb)[0].reshape(height, width, dim)
    np.testing.assert_array_equal(grid[:1, :, : dim // 2].repeat(height, 0), grid[..., : dim // 2])
    np.testing.assert_array_equal(grid[:, :1, dim // 2 :].repeat(width, 1), grid[..., dim // 2 :])


def test_sincos_rejects_bad_widths():
    with pytest.raises(ValueError, match="must be even, got 7"):
        sincos_position_embedding_1d(4, 7)
    with pytest.raises(ValueError, match="divisible by 4, got 6"):
        sincos_position_embedding_2d(2, 2, 6)
    with pytest.raises(ValueError, match="divisible by 4, got 5"):
        sincos_position_embedding_2d(2, 2, 5)


def test_learned_position_embedding_adds_a_parameter():
    x = randn(11, 3, 16, 32)
    module = AddLearnedPositionEmbedding()
    params = module.init(jax.random.key(0), x)["params"]
    embedding = f64(params["pos_embedding"])
    assert embedding.shape == (1, 16, 32)
    assert 0.01 < embedding.std() < 0.03  # normal(stddev=0.02) init
    out = module.apply({"params": params}, x)
    assert out.shape == x.shape
    np.testing.assert_allclose(f64(out), f64(x) + embedding, rtol=1e-6, atol=1e-7)
    # A custom embedding is added as-is (broadcast over the batch), keeping the input dtype.
    custom = {"pos_embedding": jnp.arange(16 * 32, dtype=jnp.float32).reshape(1, 16, 32)}
    out_bf16 = module.apply({"params": custom}, jnp.zeros((2, 16, 32), jnp.bfloat16))
    assert out_bf16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        f64(out_bf16), np.broadcast_to(f64(custom["pos_embedding"].astype(jnp.bfloat16)),
                                       (2, 16, 32))
    )


def test_learned_position_embedding_rejects_non_3d_inputs():
    with pytest.raises(ValueError, match="batch, length, features"):
        AddLearnedPositionEmbedding().init(jax.random.key(0), jnp.zeros((2, 4, 4, 3)))
