"""ViViT variants: shapes, tokenisers equal convolutions, reductions to the image ViT, and
factorised dot-product attention against a NumPy float64 reference."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scenic.model_lib import vit_encoder
from scenic_baselines import vit
from scenic_vivit import model as vivit

TINY = dict(hidden_size=16, num_layers=2, num_heads=2, mlp_dim=24, temporal_num_layers=1)


def random_params(module, *inputs, seed=7, scale=0.3, **kwargs):
    """Params shaped as `module.init(key, *inputs)`'s, from shapes alone (compiling every
    initializer costs seconds on CPU): N(0, scale^2) noise, +1 on LayerNorm scales, so no
    weight is zero and no path can hide."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs, **kwargs))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        value = scale * rng.standard_normal(leaf.shape) + (path[-1].key == "scale")
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize(
    "variant, tokenizer",
    [(v, "tubelet") for v in vivit.VARIANTS] + [("factorised_encoder", "frames")],
)
def test_every_variant_gives_logits_and_representations(variant, tokenizer):
    classifier = "token" if variant in vivit.VARIANTS[:2] else "gap"
    patch = (2, 4, 4) if tokenizer == "tubelet" else (1, 4, 4)
    kwargs = dict(
        TINY,
        variant=variant,
        tokenizer=tokenizer,
        patch_size=patch,
        classifier=classifier,
        num_sampled_frames=3 if tokenizer == "frames" else None,
        dropout_rate=0.1,
        attention_dropout_rate=0.1,
        stochastic_depth=0.2,
    )
    video = jax.random.normal(jax.random.key(0), (2, 4, 8, 12, 3))
    model = vivit.ViViT(num_classes=5, **kwargs)
    variables = {"params": random_params(model, video)}
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(2)}))
    logits = train(variables, video)
    assert logits.shape == (2, 5) and np.all(np.isfinite(logits))
    features = vivit.ViViT(num_classes=None, representation_size=7, **kwargs)
    shapes = jax.eval_shape(lambda: features.apply(features.init(jax.random.key(1), video), video))
    assert shapes.shape == (2, 7)


# Every variant's blocks are wrapped by vit_encoder.Encoder: plain blocks (models 1 and 2;
# model 2 has two encoders) and factorised ones (models 3 and 4, via `block_kwargs`).
@pytest.mark.parametrize("variant", ["factorised_encoder", "factorised_dot_product"])
def test_remat_keeps_loss_and_gradients(variant):
    """remat=True recomputes every block (spatial, temporal and factorised ones) in the
    backward pass and changes nothing else: same parameter shapes, loss and gradients, with
    dropout and stochastic depth drawing the same random numbers when recomputed."""
    kwargs = dict(
        TINY,
        variant=variant,
        patch_size=(2, 4, 4),
        classifier="token" if variant in vivit.VARIANTS[:2] else "gap",
        dropout_rate=0.1,
        attention_dropout_rate=0.1,
        stochastic_depth=0.2,
    )
    video = jax.random.normal(jax.random.key(0), (2, 4, 8, 8, 3))
    plain, remat = vivit.ViViT(num_classes=3, **kwargs), vivit.ViViT(3, remat=True, **kwargs)
    params = random_params(plain, video)
    assert (
        jax.eval_shape(lambda: remat.init(jax.random.key(0), video))["params"]
        == (jax.eval_shape(lambda: plain.init(jax.random.key(0), video))["params"])
    )

    def loss_and_grads(model):
        def loss(p):
            logits = model.apply(
                {"params": p}, video, train=True, rngs={"dropout": jax.random.key(2)}
            )
            return jnp.mean(jax.nn.log_softmax(logits)[:, 0])

        return jax.value_and_grad(loss)

    loss, grads = jax.jit(loss_and_grads(plain))(params)
    remat_loss, remat_grads = jax.jit(loss_and_grads(remat))(params)
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), remat_grads, grads
    )
    # One jax.checkpoint (primitive remat2 in jax 0.10) per encoder block.
    jaxpr = str(jax.make_jaxpr(loss_and_grads(remat))(params))
    blocks = TINY["num_layers"] + (
        TINY["temporal_num_layers"] if variant == "factorised_encoder" else 0
    )
    assert jaxpr.count("remat2[") >= blocks


@pytest.mark.parametrize("variant", ["factorised_encoder", "factorised_dot_product"])
def test_scanned_layers_give_the_per_layer_model(variant):
    """scan_layers=True (spatial and temporal encoders, and factorised blocks, each one
    nn.scan) computes what per-layer blocks do on the same weights, converted by
    `vit_encoder.stack_layers`, in eval mode."""
    from flax import traverse_util

    kwargs = dict(
        TINY,
        variant=variant,
        patch_size=(2, 4, 4),
        classifier="token" if variant in vivit.VARIANTS[:2] else "gap",
    )
    video = jax.random.normal(jax.random.key(0), (2, 4, 8, 8, 3))
    plain = vivit.ViViT(num_classes=3, **kwargs)
    scanned = vivit.ViViT(num_classes=3, scan_layers=True, remat="dots", **kwargs)
    params = traverse_util.flatten_dict(random_params(plain, video), sep="/")
    wanted = jax.eval_shape(lambda: scanned.init(jax.random.key(0), video))["params"]
    wanted = {k: v.shape for k, v in traverse_util.flatten_dict(wanted, sep="/").items()}
    stacked = vit_encoder.stack_layers(params, wanted)
    assert {k: v.shape for k, v in stacked.items()} == wanted
    assert any("/encoderblock/" in k for k in wanted)
    logits = plain.apply({"params": traverse_util.unflatten_dict(params, sep="/")}, video)
    scanned_logits = scanned.apply(
        {"params": traverse_util.unflatten_dict(stacked, sep="/")}, video
    )
    np.testing.assert_allclose(scanned_logits, logits, rtol=1e-5, atol=1e-6)
    assert np.abs(logits).max() > 1e-3  # random weights: a head that is not zero


def test_bad_settings_are_named():
    video = jnp.zeros((1, 4, 8, 8, 3))
    cases = [
        (dict(variant="joint"), "variant"),
        (dict(tokenizer="conv"), "tokenizer"),
        (dict(variant="factorised_self_attention"), "classifier='gap'"),
        (dict(tokenizer="frames"), r"patch_size must be \(1, h, w\)"),
        (dict(patch_size=(3, 4, 4)), "not divisible by the tubelet size"),
        (
            dict(variant="factorised_dot_product", classifier="gap", num_heads=1, hidden_size=8),
            "even num_heads",
        ),
    ]
    for overrides, message in cases:
        kwargs = {**TINY, "patch_size": (2, 4, 4), **overrides}
        with pytest.raises(ValueError, match=message):
            model = vivit.ViViT(num_classes=2, **kwargs)
            jax.eval_shape(lambda m=model: m.init(jax.random.key(0), video))
    with pytest.raises(ValueError, match=r"\[B, T, H, W, C\]"):
        vivit.ViViT(num_classes=2, **TINY, patch_size=(2, 4, 4)).init(
            jax.random.key(0), jnp.zeros((4, 8, 8, 3))
        )


def test_tubelet_embedding_equals_3d_convolution():
    video = jax.random.normal(jax.random.key(0), (2, 6, 8, 12, 3))
    embed = vit_encoder.TubeletEmbedding((3, 4, 2), 5)
    params = random_params(embed, video)
    conv = nn.Conv(5, kernel_size=(3, 4, 2), strides=(3, 4, 2), padding="VALID")
    reference = jax.jit(conv.apply)({"params": params}, video)
    ours = jax.jit(embed.apply)({"params": params}, video)
    assert ours.shape == (2, 2, 2, 6, 5)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


def test_uniform_frame_sampling_takes_segment_centres():
    np.testing.assert_array_equal(vivit.uniform_frame_indices(8, 4), [1, 3, 5, 7])
    np.testing.assert_array_equal(vivit.uniform_frame_indices(5, 5), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(vivit.uniform_frame_indices(10, 3), [1, 5, 8])
    with pytest.raises(ValueError, match="num_sampled_frames=9"):
        vivit.uniform_frame_indices(8, 9)


def test_one_sampled_frame_spatio_temporal_model_is_the_image_vit():
    """Model 1 on one sampled frame has exactly the ViT's parameters and function."""
    video = jax.random.normal(jax.random.key(0), (2, 5, 8, 8, 3))
    model = vivit.ViViT(
        num_classes=4, tokenizer="frames", patch_size=(1, 4, 4), num_sampled_frames=1, **TINY
    )
    params = random_params(model, video)
    image_vit = vit.ViT(
        num_classes=4, patch_size=(4, 4), hidden_size=16, num_layers=2, num_heads=2, mlp_dim=24
    )
    reference = image_vit.apply({"params": params}, video[:, 2])  # frame 2 = centre of 5
    np.testing.assert_allclose(
        jax.jit(model.apply)({"params": params}, video), reference, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_factorised_encoder_spatial_part_is_the_vit_on_every_frame(classifier):
    video = jax.random.normal(jax.random.key(0), (2, 3, 8, 8, 3))
    model = vivit.ViViT(
        num_classes=4,
        variant="factorised_encoder",
        tokenizer="frames",
        patch_size=(1, 4, 4),
        classifier=classifier,
        **TINY,
    )
    params = random_params(model, video)
    _, state = model.apply(
        {"params": params},
        video,
        capture_intermediates=lambda module, _: module.name == "SpatialTransformer",
    )
    (tokens,) = state["intermediates"]["SpatialTransformer"]["__call__"]
    frames = tokens[:, 0] if classifier == "token" else tokens.mean(axis=1)
    vit_params = {"embedding": params["embedding"], "Transformer": params["SpatialTransformer"]}
    if classifier == "token":
        vit_params["cls"] = params["cls_SpatialTransformer"]
    image_vit = vit.ViT(
        num_classes=None,
        patch_size=(4, 4),
        classifier=classifier,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        mlp_dim=24,
    )
    reference = image_vit.apply({"params": vit_params}, video.reshape(6, 8, 8, 3))
    np.testing.assert_allclose(frames, reference, rtol=1e-5, atol=1e-5)


def numpy_factorised_attention(x, p):
    """Float64 reference: heads [0, H/2) attend over time, [H/2, H) over space."""
    x = np.asarray(x, np.float64)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    q, k, v = (
        np.einsum("btsd,dhe->btshe", x, p[n]["kernel"]) + p[n]["bias"]
        for n in ("query", "key", "value")
    )
    half, out = q.shape[3] // 2, np.zeros_like(q)
    scale = 1 / np.sqrt(q.shape[-1])

    def softmax(a):
        a = np.exp(a - a.max(-1, keepdims=True))
        return a / a.sum(-1, keepdims=True)

    for head in range(q.shape[3]):
        qh, kh, vh = q[..., head, :], k[..., head, :], v[..., head, :]
        if head < half:  # over time, per (batch, spatial position)
            w = softmax(np.einsum("btse,buse->bstu", qh, kh) * scale)
            out[..., head, :] = np.einsum("bstu,buse->btse", w, vh)
        else:  # over space, per (batch, frame)
            w = softmax(np.einsum("btse,btre->btsr", qh, kh) * scale)
            out[..., head, :] = np.einsum("btsr,btre->btse", w, vh)
    return np.einsum("btshe,hed->btsd", out, p["out"]["kernel"]) + p["out"]["bias"]


def test_factorised_dot_product_attention_matches_numpy_reference():
    attention = vivit.FactorisedDotProductAttention(num_heads=4)
    x = jax.random.normal(jax.random.key(0), (2, 3, 5, 8))
    x = x.at[1].multiply(20.0)  # large logits: saturated softmax
    params = random_params(attention, x, scale=0.5)
    np.testing.assert_allclose(
        jax.jit(attention.apply)({"params": params}, x),
        numpy_factorised_attention(x, params),
        rtol=2e-4,
        atol=2e-4,
    )


def test_factorised_dot_product_block_has_the_vit_block_parameters():
    """Model 4's block is the core ViT block with the factorised attention plugged in: the
    same parameter tree, so a ViT block's weights load unchanged."""
    x = jnp.zeros((1, 3, 4, 8))

    def shapes(block):
        return jax.eval_shape(lambda: block.init(jax.random.key(0), x))["params"]

    plain = vit_encoder.EncoderBlock(mlp_dim=16, num_heads=2)
    factorised = vit_encoder.EncoderBlock(
        mlp_dim=16, num_heads=2, attention=vivit.FactorisedDotProductAttention
    )
    assert shapes(factorised) == shapes(plain)


def test_factorised_dot_product_block_mixes_only_its_row_and_column():
    """After one model-4 block, token (t0, s0) has reached only tokens sharing its frame or
    its spatial position; models 1 and 3 reach every token in one block."""
    x = jax.random.normal(jax.random.key(0), (1, 3, 4, 8))
    # A random change (a constant one would vanish in the LayerNorm).
    changed = x.at[0, 1, 2].add(jax.random.normal(jax.random.key(9), (8,)))
    block = vit_encoder.EncoderBlock(
        mlp_dim=16, num_heads=2, attention=vivit.FactorisedDotProductAttention
    )
    params = random_params(block, x)
    moved = np.abs(
        jax.jit(block.apply)({"params": params}, changed)
        - jax.jit(block.apply)({"params": params}, x)
    )
    reached = moved.max(-1)[0] > 1e-6
    expected = np.zeros((3, 4), bool)
    expected[1, :] = expected[:, 2] = True
    np.testing.assert_array_equal(reached, expected)

    block3 = vivit.FactorisedSelfAttentionBlock(mlp_dim=16, num_heads=2)
    params3 = random_params(block3, x)
    moved3 = jax.jit(block3.apply)({"params": params3}, changed) - jax.jit(block3.apply)(
        {"params": params3}, x
    )
    assert np.all(np.abs(moved3).max(-1) > 1e-6)


def test_factorised_self_attention_order_matters():
    x = jax.random.normal(jax.random.key(0), (2, 3, 4, 8))
    time_first = vivit.FactorisedSelfAttentionBlock(mlp_dim=16, num_heads=2)
    space_first = vivit.FactorisedSelfAttentionBlock(
        mlp_dim=16, num_heads=2, attention_order="space_time"
    )
    params = random_params(time_first, x)
    a = jax.jit(time_first.apply)({"params": params}, x)
    b = jax.jit(space_first.apply)({"params": params}, x)  # same parameter names
    assert np.abs(a - b).max() > 1e-3
    with pytest.raises(ValueError, match="attention_order"):
        vivit.FactorisedSelfAttentionBlock(mlp_dim=16, num_heads=2, attention_order="t").init(
            jax.random.key(0), x
        )
