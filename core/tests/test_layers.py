"""Layers against NumPy float64 implementations that use the modules' own parameters.

Each reference is written independently of the layer (explicit softmax, explicit loops over
positions, statistics on the gathered real positions).
"""

import functools
import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scenic.model_lib.layers import (
    AddLearnedPositionEmbedding,
    Affine,
    AxialAttention,
    Identity,
    MaskedBatchNorm,
    MaskedConv,
    MaskedLayerNorm,
    MlpBlock,
    MultiHeadAttention,
    RelativeAttentionBias,
    Residual,
    SqueezeAndExcite,
    StochasticDepth,
    avg_pool,
    depth_to_space,
    extract_patches,
    masked_avg_pool,
    masked_max_pool,
    max_pool,
    merge_patches,
    relative_position_index,
    resize,
    sincos_position_embedding_1d,
    sincos_position_embedding_2d,
    space_to_depth,
)

RTOL = 1e-5
ATOL = 1e-5


def f64(x):
    return np.asarray(x, np.float64)


def randn(seed, *shape, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


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
        f64(out_bf16),
        np.broadcast_to(f64(custom["pos_embedding"].astype(jnp.bfloat16)), (2, 16, 32)),
    )


def test_learned_position_embedding_rejects_non_3d_inputs():
    with pytest.raises(ValueError, match="batch, length, features"):
        AddLearnedPositionEmbedding().init(jax.random.key(0), jnp.zeros((2, 4, 4, 3)))


TOL = dict(rtol=1e-5, atol=1e-5)


def random_params(module, *args, seed=0, **kwargs):
    """The module's parameter tree filled with N(0, 0.5) values (biases non-zero too). Shapes
    come from `eval_shape`: initializer compiles would dominate these tests' CPU time."""
    shapes = jax.eval_shape(functools.partial(module.init, **kwargs), jax.random.key(0), *args)
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(0.0, 0.5, s.shape), s.dtype), shapes["params"]
    )


def jit_apply(module, **static):
    """`module.apply` compiled as one program (op-by-op compiles are slow on CPU)."""
    return jax.jit(functools.partial(module.apply, **static))


def random_bool_mask(seed, *shape, p=0.6):
    return np.random.default_rng(seed).random(shape) < p


# --- NumPy references ----------------------------------------------------------------------


def np_softmax(logits):
    logits = logits - logits.max(-1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(-1, keepdims=True)


def np_attention_full(params, x_q, x_kv, mask=None, bias=None, pos_q=None, pos_k=None, pos_v=None):
    """Multi-head attention for one `[Lq, D]` / `[Lkv, D]` pair; mask/bias `[h or 1, Lq, Lkv]`."""

    def project(name, x, pos):
        x = f64(x) + (0.0 if pos is None else f64(pos))
        return np.einsum("ld,dhk->lhk", x, f64(params[name]["kernel"])) + f64(params[name]["bias"])

    q, k, v = (
        project("query", x_q, pos_q),
        project("key", x_kv, pos_k),
        project("value", x_kv, pos_v),
    )
    logits = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + f64(bias)
    if mask is not None:
        logits = np.where(np.asarray(mask), logits, -np.inf)
    attended = np.einsum("hqk,khd->qhd", np_softmax(logits), v)
    return np.einsum("qhd,hdo->qo", attended, f64(params["out"]["kernel"])) + f64(
        params["out"]["bias"]
    )


def np_layer_norm(x, scale, bias, eps, axes=-1):
    mean = x.mean(axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * f64(scale) + f64(bias)


def plain_attention(**kwargs):
    return MultiHeadAttention(**kwargs)


# --- MultiHeadAttention: position embeddings, bias, batch dims -----------------------------


def test_attention_position_embeddings_go_only_where_asked():
    batch, len_q, len_kv, dim, heads = 2, 3, 5, 8, 2
    x_q, x_kv = randn(0, batch, len_q, dim), randn(1, batch, len_kv, dim)
    pos_q, pos_k, pos_v = randn(2, 1, len_q, dim), randn(3, 1, len_kv, dim), randn(4, len_kv, dim)
    module = plain_attention(num_heads=heads)
    params = random_params(module, x_q, x_kv)
    jitted = jit_apply(module)
    apply = lambda **kw: f64(jitted({"params": params}, x_q, x_kv, **kw))

    # DETR: positions on queries and keys, not values.
    out = apply(pos_emb_q=pos_q, pos_emb_k=pos_k)
    for b in range(batch):
        expected = np_attention_full(params, x_q[b], x_kv[b], pos_q=pos_q[0], pos_k=pos_k[0])
        np.testing.assert_allclose(out[b], expected, **TOL)
    out = apply(pos_emb_v=pos_v)
    for b in range(batch):
        np.testing.assert_allclose(
            out[b], np_attention_full(params, x_q[b], x_kv[b], pos_v=pos_v), **TOL
        )
    # Default: no position embedding anywhere; each one changes the output.
    plain = apply()
    np.testing.assert_allclose(plain[0], np_attention_full(params, x_q[0], x_kv[0]), **TOL)
    for kw in ({"pos_emb_q": pos_q}, {"pos_emb_k": pos_k}, {"pos_emb_v": pos_v}):
        assert not np.allclose(apply(**kw), plain, atol=1e-3)


@pytest.mark.parametrize("explicit_path", [False, True])
def test_attention_bias_and_mask_match_reference(explicit_path):
    batch, length, dim, heads = 2, 6, 8, 2
    x = randn(5, batch, length, dim)
    bias = randn(6, heads, length, length, scale=2.0)
    mask = random_bool_mask(7, batch, 1, length, length, p=0.5)
    mask[..., 0] = True
    module = plain_attention(num_heads=heads, dropout_rate=1e-7 if explicit_path else 0.0)
    params = random_params(module, x)
    if explicit_path:
        apply = jit_apply(module, deterministic=False, rngs={"dropout": jax.random.key(1)})
    else:
        apply = jit_apply(module)
    out = f64(apply({"params": params}, x, mask=mask, attention_bias=bias))
    for b in range(batch):
        expected = np_attention_full(params, x[b], x[b], mask=mask[b], bias=bias)
        np.testing.assert_allclose(out[b], expected, **TOL)


def test_attention_with_extra_batch_dims_matches_per_slice_reference():
    shape, length, dim, heads = (2, 3), 4, 8, 2
    x = randn(8, *shape, length, dim)
    key_mask = random_bool_mask(9, *shape, 1, 1, length)
    key_mask[..., 1] = True
    bias = randn(10, heads, length, length)
    module = plain_attention(num_heads=heads)
    params = random_params(module, x)
    out = f64(jit_apply(module)({"params": params}, x, mask=key_mask, attention_bias=bias))
    assert out.shape == (*shape, length, dim)
    for i, j in itertools.product(range(shape[0]), range(shape[1])):
        expected = np_attention_full(params, x[i, j], x[i, j], mask=key_mask[i, j], bias=bias)
        np.testing.assert_allclose(out[i, j], expected, **TOL)


def test_attention_adversarial_single_key_and_huge_bias():
    batch, length, dim, heads = 2, 5, 8, 2
    x = randn(11, batch, length, dim, scale=30.0)
    module = plain_attention(num_heads=heads)
    params = random_params(module, x)
    apply = jit_apply(module)
    # Only key 3 allowed: every query returns the projected value of key 3.
    only_key = np.zeros((batch, 1, length, length), bool)
    only_key[..., 3] = True
    out = f64(apply({"params": params}, x, mask=only_key))
    for b in range(batch):
        np.testing.assert_allclose(
            out[b], np_attention_full(params, x[b], x[b], mask=only_key[b]), rtol=1e-4, atol=1e-3
        )
        np.testing.assert_allclose(out[b], np.broadcast_to(out[b, :1], out[b].shape), atol=1e-3)
    # Bias gaps of 1e4: hard attention on the arg-max key; finite and equal to the reference.
    order = np.random.default_rng(12).permuted(
        np.tile(np.arange(length), (heads, length, 1)), axis=-1
    )
    bias = jnp.asarray(order * 1e4, jnp.float32)
    out = f64(apply({"params": params}, x, attention_bias=bias))
    assert np.all(np.isfinite(out))
    for b in range(batch):
        np.testing.assert_allclose(
            out[b], np_attention_full(params, x[b], x[b], bias=bias), rtol=1e-4, atol=1e-3
        )


def test_attention_rejects_mask_and_bias_of_wrong_shape():
    x = jnp.zeros((2, 4, 8))
    module = MultiHeadAttention(num_heads=2)
    params = {"params": random_params(module, x)}
    with pytest.raises(ValueError, match=r"mask of shape \(2, 1, 4, 5\)"):
        module.apply(params, x, mask=jnp.ones((2, 1, 4, 5), bool))
    with pytest.raises(ValueError, match=r"attention_bias of shape \(3, 4, 4\)"):
        module.apply(params, x, attention_bias=jnp.zeros((3, 4, 4)))


# --- Relative attention bias ---------------------------------------------------------------


def explicit_relative_index(grid_shape):
    """Double loop over (query, key) tokens; offsets q - k, mixed radix (2s - 1)."""
    coords = list(itertools.product(*[range(s) for s in grid_shape]))  # row-major
    index = np.zeros((len(coords), len(coords)), np.int64)
    for i, ci in enumerate(coords):
        for j, cj in enumerate(coords):
            flat = 0
            for d, size in enumerate(grid_shape):
                flat = flat * (2 * size - 1) + (ci[d] - cj[d] + size - 1)
            index[i, j] = flat
    return index


@pytest.mark.parametrize("grid_shape", [(5,), (3, 4), (2, 3, 2), (1, 1)])
def test_relative_position_index_matches_double_loop(grid_shape):
    index = relative_position_index(grid_shape)
    expected = explicit_relative_index(grid_shape)
    np.testing.assert_array_equal(index, expected)
    # Every offset used, each one row of the table.
    assert set(np.unique(index)) == set(range(math.prod(2 * s - 1 for s in grid_shape)))


def test_relative_position_index_swin_formula_2d():
    height, width = 3, 4
    index = relative_position_index((height, width))
    for i, j in itertools.product(range(height * width), repeat=2):
        dy, dx = i // width - j // width, i % width - j % width
        assert index[i, j] == (dy + height - 1) * (2 * width - 1) + dx + width - 1


def test_relative_attention_bias_gathers_the_table():
    heads, grid = 3, (2, 3)
    module = RelativeAttentionBias(num_heads=heads, grid_shape=grid)
    params = module.init(jax.random.key(0))["params"]
    table = f64(params["relative_position_bias_table"])
    assert table.shape == (3 * 5, heads)
    assert 0.005 < table.std() < 0.04
    bias = f64(module.apply({"params": params}))
    assert bias.shape == (heads, 6, 6)
    index = explicit_relative_index(grid)
    for h, i, j in itertools.product(range(heads), range(6), range(6)):
        assert bias[h, i, j] == table[index[i, j], h]
    # Translation invariance: tokens (0,0)->(0,1) and (1,1)->(1,2) share an offset.
    np.testing.assert_array_equal(bias[:, 0, 1], bias[:, 4, 5])
    with pytest.raises(ValueError, match="grid_shape"):
        relative_position_index((3, 0))


def test_relative_bias_feeds_attention():
    grid, heads, dim = (2, 2), 2, 8
    x = randn(13, 1, 4, dim)

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            bias = RelativeAttentionBias(heads, grid, nn.initializers.normal(1.0), name="rel")()
            return plain_attention(num_heads=heads, name="attn")(x, attention_bias=bias)

    params = random_params(Block(), x)
    out = f64(jit_apply(Block())({"params": params}, x))
    table = f64(params["rel"]["relative_position_bias_table"])
    bias = np.transpose(table[explicit_relative_index(grid)], (2, 0, 1))
    expected = np_attention_full(params["attn"], x[0], x[0], bias=bias)
    np.testing.assert_allclose(out[0], expected, **TOL)


# --- Axial attention -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "axis"), [((2, 3, 4), 1), ((2, 3, 4), 2), ((2, 3, 4), -2), ((1, 2, 3, 2), 2)]
)
def test_axial_attention_matches_per_line_reference(shape, axis):
    dim, heads = 8, 2
    x = randn(14, *shape, dim)
    module = AxialAttention(num_heads=heads, axis=axis)
    params = random_params(module, x)
    out = f64(jit_apply(module)({"params": params}, x))
    assert out.shape == x.shape
    axis = axis % x.ndim
    xm, om = np.moveaxis(f64(x), axis, -2), np.moveaxis(out, axis, -2)
    for idx in np.ndindex(*xm.shape[:-2]):
        expected = np_attention_full(params["attention"], xm[idx], xm[idx])
        np.testing.assert_allclose(om[idx], expected, **TOL)


def test_axial_attention_mask_excludes_padded_keys():
    batch, height, width, dim, heads = 2, 4, 3, 8, 2
    x = randn(15, batch, height, width, dim)
    mask = random_bool_mask(16, batch, height, width)
    mask[0, :, 0] = [False, False, True, False]  # one real row in this column
    mask[1, :, 1] = False  # an all-padding column: finite output
    module = AxialAttention(num_heads=heads, axis=1)
    params = random_params(module, x)
    apply = jit_apply(module)
    out = f64(apply({"params": params}, x, mask=mask))
    assert np.all(np.isfinite(out))
    for b, w in itertools.product(range(batch), range(width)):
        if not mask[b, :, w].any():
            continue
        expected = np_attention_full(
            params["attention"], x[b, :, w], x[b, :, w], mask=mask[b, :, w][None, None, :]
        )
        np.testing.assert_allclose(out[b, :, w], expected, **TOL)
    # Padded keys are ignored: garbage at padded positions leaves the real outputs unchanged.
    x_changed = jnp.where(mask[..., None], x, 1e3)
    out_changed = f64(apply({"params": params}, x_changed, mask=mask))
    np.testing.assert_allclose(out_changed[mask], out[mask], rtol=1e-5, atol=1e-4)


def test_axial_attention_rejects_bad_axis_and_mask():
    x = jnp.zeros((2, 3, 4, 8))
    for axis in (0, 3, -1, 4):
        with pytest.raises(ValueError, match=f"axis={axis}"):
            AxialAttention(num_heads=2, axis=axis).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="mask shape"):
        AxialAttention(num_heads=2, axis=1).init(jax.random.key(0), x, jnp.ones((2, 3, 4, 8)))


# --- Masked pooling ------------------------------------------------------------------------


def adversarial_mask(seed, *shape):
    """Random mask; example 1 has a single real position, example 2 none."""
    mask = random_bool_mask(seed, *shape)
    mask[0].flat[0] = True
    mask[1] = False
    mask[1].flat[-1] = True
    mask[2] = False
    return mask


@pytest.mark.parametrize("shape", [(3, 7), (3, 3, 4)])
def test_masked_pools_match_numpy_on_real_positions(shape):
    channels = 5
    x = randn(17, *shape, channels, scale=1e3)
    mask = adversarial_mask(18, *shape)
    avg, mx = f64(masked_avg_pool(x, mask)), f64(masked_max_pool(x, mask))
    assert avg.shape == mx.shape == (shape[0], channels)
    for b in range(shape[0]):
        real = f64(x)[b][mask[b]]  # [n_real, C]
        if len(real):
            np.testing.assert_allclose(avg[b], real.mean(0), rtol=1e-5, atol=1e-3)
            np.testing.assert_array_equal(mx[b], real.max(0))
        else:
            np.testing.assert_array_equal(avg[b], 0.0)
            np.testing.assert_array_equal(mx[b], 0.0)
    # Single real position: exactly its features.
    np.testing.assert_array_equal(mx[1], f64(x)[1][mask[1]][0])


def test_masked_pool_over_chosen_axis_and_finite_gradients():
    x = randn(19, 3, 4, 5, 2)
    mask = adversarial_mask(20, 3, 4, 5)
    avg = f64(masked_avg_pool(x, mask, axis=2))
    assert avg.shape == (3, 4, 2)
    for b, i in itertools.product(range(3), range(4)):
        real = f64(x)[b, i][mask[b, i]]
        np.testing.assert_allclose(avg[b, i], real.mean(0) if len(real) else 0.0, **TOL)
    for pool in (masked_avg_pool, masked_max_pool):
        grad = jax.jit(jax.grad(lambda v, pool=pool: pool(v, mask).sum()))(x)
        assert np.all(np.isfinite(f64(grad)))
        assert not np.any(f64(grad)[~mask])  # padding gets no gradient
    with pytest.raises(ValueError, match="masked_avg_pool: mask shape"):
        masked_avg_pool(x, mask[..., :4])


# --- Masked normalisation ------------------------------------------------------------------


def test_masked_layer_norm_per_token_equals_layer_norm_on_real_tokens():
    x = randn(21, 3, 6, 8, scale=5.0)
    mask = adversarial_mask(22, 3, 6)
    module = MaskedLayerNorm()
    params = random_params(module, x, mask)
    assert set(params) == {"scale", "bias"}
    out = f64(jit_apply(module)({"params": params}, x, mask))
    reference = f64(jit_apply(nn.LayerNorm())({"params": params}, x))
    np.testing.assert_allclose(out[mask], reference[mask], **TOL)
    np.testing.assert_array_equal(out[~mask], 0.0)


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_masked_layer_norm_over_space_matches_numpy_on_real_positions(offset):
    # Large offset: a one-pass E[x^2] - E[x]^2 variance would lose all precision here.
    x = jnp.asarray(f64(randn(23, 3, 4, 3, 2)) + offset, jnp.float32)
    mask = adversarial_mask(24, 3, 4, 3)
    mask[1] = False
    mask[1, 2, 1] = True
    mask[1, 0, 0] = True  # two real positions
    module = MaskedLayerNorm(reduction_axes=(1, 2, 3))
    params = random_params(module, x, mask)
    out = f64(jit_apply(module)({"params": params}, x, mask))
    for b in range(3):
        real = f64(x)[b][mask[b]]  # [n, C]
        if len(real):
            expected = np_layer_norm(real, params["scale"], params["bias"], 1e-6, axes=(0, 1))
            np.testing.assert_allclose(out[b][mask[b]], expected, rtol=1e-4, atol=2e-3)
        np.testing.assert_array_equal(out[b][~mask[b]], 0.0)
    grad = jax.jit(jax.grad(lambda v: module.apply({"params": params}, v, mask).sum()))(x)
    assert np.all(np.isfinite(f64(grad)))


def test_masked_batch_norm_uses_only_real_positions():
    x = randn(25, 4, 5, 3, scale=3.0) + 2.0
    mask = adversarial_mask(26, 4, 5)
    module = MaskedBatchNorm(momentum=0.9)
    shapes = jax.eval_shape(
        functools.partial(module.init, use_running_average=False), jax.random.key(0), x, mask
    )
    assert jax.tree.map(lambda s: s.shape, shapes["batch_stats"]) == {"mean": (3,), "var": (3,)}
    params = random_params(module, x, mask, use_running_average=False)
    variables = {"params": params, "batch_stats": {"mean": jnp.zeros(3), "var": jnp.ones(3)}}
    train = jit_apply(module, use_running_average=False, mutable=["batch_stats"])
    out, updates = train(variables, x, mask)
    real = f64(x)[mask]  # [n_real, C]
    expected = np_layer_norm(real, params["scale"], params["bias"], 1e-5, axes=0)
    np.testing.assert_allclose(f64(out)[mask], expected, **TOL)
    np.testing.assert_array_equal(f64(out)[~mask], 0.0)
    stats = updates["batch_stats"]
    np.testing.assert_allclose(f64(stats["mean"]), 0.1 * real.mean(0), **TOL)
    np.testing.assert_allclose(f64(stats["var"]), 0.9 + 0.1 * real.var(0), **TOL)
    # Same parameters as nn.BatchNorm; with no padding the outputs agree.
    flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9)
    flax_out, _ = jit_apply(flax_bn, mutable=["batch_stats"])(variables, x)
    everything_real = jnp.ones(mask.shape, bool)
    np.testing.assert_allclose(
        f64(train(variables, x, everything_real)[0]), f64(flax_out), rtol=1e-4, atol=1e-4
    )
    # Eval uses the running statistics.
    evaluate = jit_apply(module, use_running_average=True)
    evaluated = evaluate({"params": params, **updates}, x, mask)
    expected = (real - f64(stats["mean"])) / np.sqrt(f64(stats["var"]) + 1e-5)
    expected = expected * f64(params["scale"]) + f64(params["bias"])
    np.testing.assert_allclose(f64(evaluated)[mask], expected, **TOL)
    # An all-padding batch leaves the running statistics alone and outputs zeros.
    out, untouched = train(variables, x, np.zeros_like(mask))
    np.testing.assert_array_equal(f64(out), 0.0)
    for name in ("mean", "var"):
        np.testing.assert_array_equal(
            f64(untouched["batch_stats"][name]), f64(variables["batch_stats"][name])
        )


def test_masked_batch_norm_axis_name_pools_statistics_across_devices():
    x = randn(27, 2, 3, 4, 2)  # [devices, batch, length, C]
    mask = random_bool_mask(28, 2, 3, 4)
    mask[1] = False
    mask[1, 0, 0] = True
    module = MaskedBatchNorm(use_running_average=False, axis_name="devices")
    variables = {
        "params": random_params(module, x[0], mask[0]),
        "batch_stats": {"mean": jnp.zeros(2), "var": jnp.ones(2)},
    }
    per_device = jax.jit(
        jax.vmap(
            lambda a, m: module.apply(variables, a, m, mutable=["batch_stats"])[0],
            axis_name="devices",
        )
    )(x, mask)
    real = f64(x)[mask]
    expected = (real - real.mean(0)) / np.sqrt(real.var(0) + 1e-5)
    expected = expected * f64(variables["params"]["scale"]) + f64(variables["params"]["bias"])
    np.testing.assert_allclose(f64(per_device)[mask], expected, **TOL)


# --- Masked convolution --------------------------------------------------------------------


def np_conv_same(x, kernel, bias, stride):
    """Explicit NHWC convolution with TF 'SAME' padding."""
    batch, height, width, _ = x.shape
    kh, kw, _, features = kernel.shape
    out_h, out_w = -(-height // stride), -(-width // stride)
    top = max((out_h - 1) * stride + kh - height, 0) // 2
    left = max((out_w - 1) * stride + kw - width, 0) // 2
    out = np.zeros((batch, out_h, out_w, features)) + bias
    for b, i, j, dy, dx in itertools.product(
        range(batch), range(out_h), range(out_w), range(kh), range(kw)
    ):
        y, xx = i * stride - top + dy, j * stride - left + dx
        if 0 <= y < height and 0 <= xx < width:
            out[b, i, j] += x[b, y, xx] @ kernel[dy, dx]
    return out


@pytest.mark.parametrize("stride", [1, 2])
def test_masked_conv_matches_explicit_conv_on_zeroed_input(stride):
    x = randn(29, 2, 5, 6, 3)
    mask = np.zeros((2, 5, 6), bool)
    mask[0, :3, :4] = True  # a padded image (real top-left corner)
    mask[1, 2, 3] = True  # a single real pixel
    module = MaskedConv(4, (3, 3), strides=stride)
    params = random_params(module, x, mask)
    assert set(params) == {"kernel", "bias"}  # nn.Conv's parameters
    apply = jit_apply(module)
    out, out_mask = apply({"params": params}, x, mask)
    np.testing.assert_array_equal(np.asarray(out_mask), mask[:, ::stride, ::stride])
    expected = np_conv_same(
        np.where(mask[..., None], f64(x), 0.0), f64(params["kernel"]), f64(params["bias"]), stride
    )
    expected = np.where(np.asarray(out_mask)[..., None], expected, 0.0)
    np.testing.assert_allclose(f64(out), expected, **TOL)
    # Garbage in the padding does not leak.
    noisy = jnp.where(mask[..., None], x, 1e6)
    np.testing.assert_allclose(f64(apply({"params": params}, noisy, mask)[0]), f64(out), **TOL)


def test_masked_conv_rejects_other_padding():
    x, mask = jnp.zeros((1, 4, 4, 2)), jnp.ones((1, 4, 4))
    with pytest.raises(ValueError, match="padding='SAME'"):
        MaskedConv(2, (3, 3), padding="VALID").init(jax.random.key(0), x, mask)
    with pytest.raises(ValueError, match="MaskedConv: mask shape"):
        MaskedConv(2, (3, 3)).init(jax.random.key(0), x, mask[..., :3])


# --- Residual, squeeze-and-excite, affine, identity ----------------------------------------


def test_identity_returns_input_and_can_be_captured():
    x = randn(30, 2, 3)

    class Tagged(nn.Module):
        @nn.compact
        def __call__(self, x):
            return Identity(name="tag")(x * 2.0) + 1.0

    out, state = Tagged().apply({}, x, capture_intermediates=True, mutable=["intermediates"])
    np.testing.assert_array_equal(f64(state["intermediates"]["tag"]["__call__"][0]), 2 * f64(x))
    np.testing.assert_allclose(f64(out), 2 * f64(x) + 1, rtol=1e-6)


@pytest.mark.parametrize("use_bias", [True, False])
def test_affine_matches_numpy(use_bias):
    x = randn(31, 2, 3, 4)
    module = Affine(use_bias=use_bias)
    params = random_params(module, x)
    assert set(params) == ({"scale", "bias"} if use_bias else {"scale"})
    expected = f64(x) * f64(params["scale"]) + (f64(params["bias"]) if use_bias else 0.0)
    np.testing.assert_allclose(f64(module.apply({"params": params}, x)), expected, **TOL)
    init = Affine().init(jax.random.key(0), x)["params"]  # identity at init
    np.testing.assert_array_equal(f64(Affine().apply({"params": init}, x)), f64(x))


@pytest.mark.parametrize("masked", [False, True])
def test_squeeze_and_excite_matches_manual_computation(masked):
    x = randn(32, 3, 4, 5, 8, scale=2.0)
    mask = adversarial_mask(33, 3, 4, 5) if masked else None
    module = SqueezeAndExcite(reduction=4)
    params = random_params(module, x, mask)
    assert params["reduce"]["kernel"].shape == (8, 2)
    assert params["expand"]["kernel"].shape == (2, 8)
    out = f64(jit_apply(module)({"params": params}, x, mask))
    xs = f64(x)
    for b in range(3):
        real = xs[b].reshape(-1, 8) if mask is None else xs[b][mask[b]]
        pooled = real.mean(0) if len(real) else np.zeros(8)
        hidden = np.maximum(
            pooled @ f64(params["reduce"]["kernel"]) + f64(params["reduce"]["bias"]), 0.0
        )
        logits = hidden @ f64(params["expand"]["kernel"]) + f64(params["expand"]["bias"])
        gates = 1.0 / (1.0 + np.exp(-logits))
        np.testing.assert_allclose(out[b], xs[b] * gates, **TOL)


@pytest.mark.parametrize("norm", ["pre", "post", None])
def test_residual_variants_match_manual_composition(norm):
    x = randn(34, 2, 3, 6)
    module = Residual(nn.Dense(6), norm=norm, forward_deterministic=False)
    params = random_params(module, x)
    out = f64(jit_apply(module)({"params": params}, x))
    dense = lambda h: h @ f64(params["layer"]["kernel"]) + f64(params["layer"]["bias"])
    ln = lambda h: np_layer_norm(h, params["norm"]["scale"], params["norm"]["bias"], 1e-6)
    xs = f64(x)
    expected = {
        "pre": lambda: xs + dense(ln(xs)),
        "post": lambda: ln(xs + dense(xs)),
        None: lambda: xs + dense(xs),
    }[norm]()
    np.testing.assert_allclose(out, expected, **TOL)
    assert ("norm" in params) == (norm is not None)


def test_residual_forwards_deterministic_and_drops_branches():
    x = randn(35, 64, 2, 4)
    module = Residual(MlpBlock(mlp_dim=8, dropout_rate=0.5), stochastic_depth=0.5)
    variables = {"params": random_params(module, x)}
    det = f64(jit_apply(module)(variables, x))
    train = f64(
        jit_apply(module, deterministic=False, rngs={"dropout": jax.random.key(1)})(variables, x)
    )
    # Stochastic depth: some examples are exactly the identity.
    identity = np.all(train == f64(x), axis=(1, 2))
    assert 0 < identity.sum() < 64
    assert not np.allclose(train[~identity], det[~identity], atol=1e-3)
    with pytest.raises(ValueError, match="norm must be 'pre', 'post' or None"):
        Residual(nn.Dense(4), norm="mid", forward_deterministic=False).init(jax.random.key(0), x)


# --- Patches and space-to-depth ------------------------------------------------------------


def explicit_patches_2d(x, ph, pw):
    batch, height, width, channels = x.shape
    out = np.zeros((batch, height // ph, width // pw, ph * pw * channels))
    for b, i, j in itertools.product(range(batch), range(height // ph), range(width // pw)):
        flat = []
        for dy, dx, c in itertools.product(range(ph), range(pw), range(channels)):
            flat.append(x[b, i * ph + dy, j * pw + dx, c])
        out[b, i, j] = flat
    return out


@pytest.mark.parametrize(("patch", "ph", "pw"), [(2, 2, 2), ((2, 3), 2, 3), (1, 1, 1)])
def test_extract_patches_matches_loop_and_round_trips(patch, ph, pw):
    x = randn(36, 2, 4, 6, 3)
    patches = extract_patches(x, patch)
    np.testing.assert_array_equal(f64(patches), explicit_patches_2d(f64(x), ph, pw))
    np.testing.assert_array_equal(f64(merge_patches(patches, patch)), f64(x))


def test_extract_patches_3d_tubelets():
    x = randn(37, 1, 4, 2, 6, 2)
    patches = f64(extract_patches(x, (2, 1, 3)))
    assert patches.shape == (1, 2, 2, 2, 12)
    xs = f64(x)
    for t, i, j in itertools.product(range(2), range(2), range(2)):
        expected = [
            xs[0, 2 * t + a, i + b, 3 * j + c, ch]
            for a, b, c, ch in itertools.product(range(2), range(1), range(3), range(2))
        ]
        np.testing.assert_array_equal(patches[0, t, i, j], expected)
    np.testing.assert_array_equal(f64(merge_patches(jnp.asarray(patches), (2, 1, 3))), xs)


def test_patches_times_kernel_is_the_strided_conv():
    x = randn(38, 2, 6, 4, 3)
    kernel = randn(39, 2, 2, 3, 5)
    embedded = f64(extract_patches(x, 2)) @ f64(kernel).reshape(-1, 5)
    expected = np_conv_same(f64(x), f64(kernel), np.zeros(5), stride=2)
    np.testing.assert_allclose(embedded, expected, **TOL)


def test_space_to_depth_matches_tf_definition_and_inverts():
    block = 2
    x = randn(40, 2, 4, 6, 3)
    out = f64(space_to_depth(x, block))
    xs = f64(x)
    # tf.nn.space_to_depth: out[b, i, j, (dy * block + dx) * C + c] = x[b, i*bs+dy, j*bs+dx, c].
    for b, i, j, dy, dx, c in itertools.product(
        range(2), range(2), range(3), range(block), range(block), range(3)
    ):
        assert out[b, i, j, (dy * block + dx) * 3 + c] == xs[b, i * block + dy, j * block + dx, c]
    np.testing.assert_array_equal(f64(depth_to_space(jnp.asarray(out), block)), xs)


def test_patch_ops_reject_bad_sizes():
    x = jnp.zeros((1, 4, 6, 2))
    with pytest.raises(ValueError, match=r"patch size \(4, 4\) does not divide \(4, 6\)"):
        extract_patches(x, 4)
    with pytest.raises(ValueError, match="need 2 positive sizes"):
        extract_patches(x, (2, 2, 2))
    with pytest.raises(ValueError, match="not a multiple of the patch volume 9"):
        merge_patches(jnp.zeros((1, 2, 2, 8)), 3)


# --- Pooling and resize --------------------------------------------------------------------


def np_pool(x, window, stride, padding, kind, mask=None):
    """Explicit windowed pooling over real positions (`mask`), TF 'SAME'/'VALID' windows."""
    batch, height, width, channels = x.shape
    mask = np.ones((batch, height, width), bool) if mask is None else mask
    if padding == "VALID":
        out_h, out_w = (height - window) // stride + 1, (width - window) // stride + 1
        top = left = 0
    else:
        out_h, out_w = -(-height // stride), -(-width // stride)
        top = max((out_h - 1) * stride + window - height, 0) // 2
        left = max((out_w - 1) * stride + window - width, 0) // 2
    out = np.zeros((batch, out_h, out_w, channels))
    for b, i, j in itertools.product(range(batch), range(out_h), range(out_w)):
        values = [
            x[b, y, xx]
            for y in range(i * stride - top, i * stride - top + window)
            for xx in range(j * stride - left, j * stride - left + window)
            if 0 <= y < height and 0 <= xx < width and mask[b, y, xx]
        ]
        if values:
            out[b, i, j] = np.mean(values, 0) if kind == "avg" else np.max(values, 0)
    return out


@pytest.mark.parametrize(
    ("window", "stride", "padding"),
    [(2, None, "VALID"), (3, 2, "SAME"), (3, 1, "SAME"), (2, 1, "VALID")],
)
@pytest.mark.parametrize("masked", [False, True])
def test_pools_match_explicit_windows(window, stride, padding, masked):
    x = randn(41, 2, 5, 6, 3, scale=100.0)
    mask = None
    if masked:
        mask = np.zeros((2, 5, 6), bool)
        mask[0, :3, :4] = True
        mask[1, 4, 5] = True  # one real pixel: most windows empty
    for kind, pool in (("avg", avg_pool), ("max", max_pool)):
        out = f64(pool(x, window, stride, padding, mask=mask))
        expected = np_pool(f64(x), window, stride or window, padding, kind, mask)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)


def test_pool_rejects_bad_mask():
    with pytest.raises(ValueError, match="max_pool: mask shape"):
        max_pool(jnp.zeros((1, 4, 4, 2)), 2, mask=jnp.ones((1, 4, 4, 2)))


def np_resize_bilinear(x, out_h, out_w):
    """Half-pixel-centre bilinear interpolation with edge clamping (TF2 / PIL convention)."""
    batch, height, width, channels = x.shape

    def taps(out_size, in_size):
        src = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
        src = np.clip(src, 0, in_size - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, in_size - 1)
        return lo, hi, src - lo

    ylo, yhi, wy = taps(out_h, height)
    xlo, xhi, wx = taps(out_w, width)
    out = np.zeros((batch, out_h, out_w, channels))
    for i, j in itertools.product(range(out_h), range(out_w)):
        top = x[:, ylo[i], xlo[j]] * (1 - wx[j]) + x[:, ylo[i], xhi[j]] * wx[j]
        bottom = x[:, yhi[i], xlo[j]] * (1 - wx[j]) + x[:, yhi[i], xhi[j]] * wx[j]
        out[:, i, j] = top * (1 - wy[i]) + bottom * wy[i]
    return out


@pytest.mark.parametrize("size", [(8, 12), (16, 16), (3, 2), (4, 6)])
def test_resize_bilinear_and_nearest_match_numpy(size):
    x = randn(42, 2, 4, 6, 3)
    out = f64(resize(x, size, "bilinear", antialias=False))
    np.testing.assert_allclose(out, np_resize_bilinear(f64(x), *size), **TOL)
    nearest = f64(resize(x, size, "nearest"))
    rows = np.floor((np.arange(size[0]) + 0.5) * 4 / size[0]).astype(int)
    cols = np.floor((np.arange(size[1]) + 0.5) * 6 / size[1]).astype(int)
    np.testing.assert_array_equal(nearest, f64(x)[:, rows][:, :, cols])


def test_resize_antialias_only_matters_when_shrinking():
    x = randn(43, 1, 8, 8, 2)
    np.testing.assert_allclose(f64(resize(x, 16)), f64(resize(x, 16, antialias=False)), **TOL)
    shrunk = f64(resize(x, 4))
    # Antialiased 2x shrink of an even-sized image averages 4x4 triangle-weighted taps:
    # the constant image stays constant, the output differs from plain bilinear.
    assert not np.allclose(shrunk, f64(resize(x, 4, antialias=False)), atol=1e-3)
    np.testing.assert_allclose(f64(resize(jnp.ones((1, 8, 8, 2)), 4)), 1.0, **TOL)
    with pytest.raises(ValueError, match="resize: need 2 positive sizes"):
        resize(x, (4, 4, 4))
