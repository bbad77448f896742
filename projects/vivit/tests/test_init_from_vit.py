"""Initialising ViViT from an image ViT: what holds exactly on static clips (derived in
`scenic_vivit.init_from_vit`'s docstring), kernel inflation, position-embedding resizing
against SciPy, and the published .npz layout."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from flax import traverse_util

from scenic.model_lib import vit_encoder
from scenic_baselines import vit
from scenic_vivit import init_from_vit as ifv
from scenic_vivit import model as vivit

SIZE = dict(hidden_size=16, num_layers=2, num_heads=2, mlp_dim=24)


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


def image_vit(classifier, seed=0):
    """A tiny ViT on 8x8 images (2x2 patches grid) with random non-zero weights."""
    model = vit.ViT(num_classes=4, patch_size=(4, 4), classifier=classifier, **SIZE)
    return model, random_params(model, jnp.zeros((1, 8, 8, 3)), seed=seed)


def video_from(model, vit_params, video_shape, **kwargs):
    params = random_params(model, jnp.zeros(video_shape), seed=5)
    return ifv.init_from_vit(model, params, vit_params, video_shape, **kwargs)


def static_clip(frames=4):
    image = jax.random.normal(jax.random.key(3), (2, 8, 8, 3))
    return image, jnp.repeat(image[:, None], frames, axis=1)


@pytest.mark.parametrize("kernel_init", ["central_frame", "average"])
@pytest.mark.parametrize("variant", ["spatio_temporal", "factorised_self_attention"])
def test_static_clip_gap_models_reproduce_vit_logits(kernel_init, variant):
    vit_model, vit_params = image_vit("gap")
    image, video = static_clip()
    model = vivit.ViViT(
        num_classes=4, variant=variant, patch_size=(2, 4, 4), classifier="gap", **SIZE
    )
    params = video_from(model, vit_params, video.shape, kernel_init=kernel_init, restore_head=True)
    expected = vit_model.apply({"params": vit_params}, image)
    np.testing.assert_allclose(
        model.apply({"params": params}, video), expected, rtol=1e-5, atol=1e-5
    )
    moving = video.at[:, 1].set(0.0)  # frame 1 counts for both
    assert np.abs(model.apply({"params": params}, moving) - expected).max() > 1e-3


def test_class_token_model_matches_vit_only_with_one_temporal_index():
    """The class key is seen once but each patch key t times: equal only for t = 1."""
    vit_model, vit_params = image_vit("token")
    image, video = static_clip()
    expected = vit_model.apply({"params": vit_params}, image)
    logits = {}
    for tubelet_frames in (4, 2):  # t = 1, then t = 2
        model = vivit.ViViT(num_classes=4, patch_size=(tubelet_frames, 4, 4), **SIZE)
        params = video_from(
            model, vit_params, video.shape, kernel_init="average", restore_head=True
        )
        logits[tubelet_frames] = model.apply({"params": params}, video)
    np.testing.assert_allclose(logits[4], expected, rtol=1e-5, atol=1e-5)
    assert np.abs(logits[2] - expected).max() > 1e-3


@pytest.mark.parametrize("temporal_init", ["fresh", "spatial"])
def test_factorised_encoder_spatial_part_reproduces_vit(temporal_init):
    _, vit_params = image_vit("token")
    image, video = static_clip()
    model = vivit.ViViT(
        num_classes=4,
        variant="factorised_encoder",
        patch_size=(2, 4, 4),
        temporal_num_layers=1,
        **SIZE,
    )
    fresh = random_params(model, jnp.zeros(video.shape), seed=5)
    params = ifv.init_from_vit(
        model,
        fresh,
        vit_params,
        video.shape,
        kernel_init="central_frame",
        temporal_init=temporal_init,
    )
    _, state = model.apply(
        {"params": params}, video, capture_intermediates=lambda m, _: m.name == "SpatialTransformer"
    )
    (tokens,) = state["intermediates"]["SpatialTransformer"]["__call__"]
    features = vit.ViT(num_classes=None, patch_size=(4, 4), **SIZE)
    expected = features.apply({"params": vit_params}, image)  # [2, D], frames repeat it
    np.testing.assert_allclose(tokens[:, 0], jnp.repeat(expected, 2, axis=0), rtol=1e-5, atol=1e-5)
    temporal, source = params["TemporalTransformer"], vit_params["Transformer"]
    block = temporal["encoderblock_0"]["MlpBlock_3"]["Dense_0"]["kernel"]
    from_vit = np.array_equal(block, source["encoderblock_0"]["MlpBlock_3"]["Dense_0"]["kernel"])
    assert from_vit == (temporal_init == "spatial")
    np.testing.assert_array_equal(  # the temporal position embedding is never the ViT's
        temporal["posembed_input"]["pos_embedding"],
        fresh["TemporalTransformer"]["posembed_input"]["pos_embedding"],
    )
    np.testing.assert_array_equal(params["head"]["kernel"], fresh["head"]["kernel"])


def test_arp_coefficients_and_inflation():
    for frames in (1, 2, 3, 4, 7):
        harmonic = [Fraction(0)]
        for t in range(1, frames + 1):
            harmonic.append(harmonic[-1] + Fraction(1, t))
        exact = [
            2 * (frames - t + 1) - (frames + 1) * (harmonic[frames] - harmonic[t - 1])
            for t in range(1, frames + 1)
        ]
        np.testing.assert_allclose(
            ifv.arp_coefficients(frames), [float(a) for a in exact], atol=1e-12
        )
        assert sum(exact) == 0
    np.testing.assert_allclose(ifv.arp_coefficients(2), [-0.5, 0.5])
    kernel = np.random.default_rng(0).normal(size=(4, 4, 3, 5)).astype(np.float32)
    central = ifv.inflate_kernel(kernel, 3, "central_frame")
    np.testing.assert_array_equal(central[1], kernel)
    assert not central[0].any() and not central[2].any()
    np.testing.assert_allclose(ifv.inflate_kernel(kernel, 4, "average").sum(0), kernel, rtol=1e-6)
    arp = ifv.inflate_kernel(kernel, 4, "arp")
    np.testing.assert_allclose(arp[0], kernel * (-29 / 12) / 4, rtol=1e-6)
    # A static clip through an ARP-inflated tubelet embeds to the bias alone.
    embed = vit_encoder.TubeletEmbedding((4, 4, 4), 5)
    bias = np.arange(5, dtype=np.float32)
    clip = jnp.repeat(jax.random.normal(jax.random.key(0), (1, 1, 8, 8, 3)), 4, axis=1)
    out = embed.apply({"params": {"kernel": arp, "bias": bias}}, clip)
    np.testing.assert_allclose(out, np.broadcast_to(bias, out.shape), atol=1e-5)
    with pytest.raises(ValueError, match="kernel_init"):
        ifv.inflate_kernel(kernel, 2, "inflate")


@pytest.mark.parametrize("size", [(3, 3), (7, 5), (2, 2), (1, 4)])
def test_posemb_grid_resize_matches_scipy_zoom(size):
    grid = np.random.default_rng(1).normal(size=(4, 4, 6))
    grid[0, 0] = 100.0  # an outlier must land only where bilinear weights put it
    reference = scipy.ndimage.zoom(grid, (size[0] / 4, size[1] / 4, 1), order=1)
    assert reference.shape == (*size, 6)
    np.testing.assert_allclose(ifv.resize_grid(grid, size), reference, rtol=1e-10, atol=1e-10)


def test_posemb_is_resized_then_tiled_over_time_and_keeps_the_class_row():
    _, vit_params = image_vit("token")
    video_shape = (1, 4, 12, 12, 3)  # grid 2x3x3 from the ViT's 2x2
    model = vivit.ViViT(num_classes=4, patch_size=(2, 4, 4), **SIZE)
    params = video_from(model, vit_params, video_shape)
    posemb = np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"])
    source = np.asarray(vit_params["Transformer"]["posembed_input"]["pos_embedding"])
    assert posemb.shape == (1, 1 + 2 * 9, 16)
    np.testing.assert_array_equal(posemb[0, 0], source[0, 0])
    spatial = scipy.ndimage.zoom(
        source[0, 1:].reshape(2, 2, 16).astype(np.float64), (1.5, 1.5, 1), order=1
    ).reshape(9, 16)
    np.testing.assert_allclose(posemb[0, 1:10], spatial, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(posemb[0, 1:10], posemb[0, 10:])


def test_published_npz_layout_loads(tmp_path):
    _, vit_params = image_vit("token")
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(vit_params).items()}
    assert "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel" in flat
    np.savez(tmp_path / "ViT-tiny.npz", **flat)
    loaded = ifv.vit_params_from_npz(tmp_path / "ViT-tiny.npz")
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, vit_params))
    model = vivit.ViViT(num_classes=4, patch_size=(2, 4, 4), **SIZE)
    a = video_from(model, loaded, (1, 4, 8, 8, 3))
    b = video_from(model, vit_params, (1, 4, 8, 8, 3))
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_mismatches_are_named():
    _, vit_params = image_vit("token")
    deeper = vivit.ViViT(num_classes=4, patch_size=(2, 4, 4), **{**SIZE, "num_layers": 3})
    with pytest.raises(ValueError, match="2 encoder blocks.*num_layers=3"):
        video_from(deeper, vit_params, (1, 4, 8, 8, 3))
    other_patch = vivit.ViViT(num_classes=4, patch_size=(2, 2, 2), **SIZE)
    with pytest.raises(ValueError, match="'embedding/kernel'"):
        video_from(other_patch, vit_params, (1, 4, 8, 8, 3))
    model = vivit.ViViT(num_classes=4, patch_size=(2, 4, 4), **SIZE)
    with pytest.raises(ValueError, match="temporal_init"):
        video_from(model, vit_params, (1, 4, 8, 8, 3), temporal_init="copy")
