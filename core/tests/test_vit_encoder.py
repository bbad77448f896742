"""The shared ViT encoder: checkpoint parameter names, the pluggable attention and pooling.
(`remat` is checked through the models built on it: scenic_baselines' test_vit and
scenic_vivit's test_model.)"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from scenic.model_lib import layers, vit_encoder

WIDTH, HEADS, MLP = 8, 2, 12


def param_shapes(module, *inputs, **kwargs):
    """{'a/b/c': shape} of `module.init(key, *inputs)`'s params, from shapes alone."""
    tree = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs, **kwargs))["params"]
    flat = traverse_util.flatten_dict(tree, sep="/")
    return {path: leaf.shape for path, leaf in flat.items()}


def random_params(module, *inputs, seed=7, **kwargs):
    """Params shaped as `module.init`'s: N(0, 0.3^2) noise, +1 on LayerNorm scales, so no
    weight is zero (a zero head would make every gradient before it vacuously equal)."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs, **kwargs))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        value = 0.3 * rng.standard_normal(leaf.shape) + (path[-1].key == "scale")
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


class TinyViT(nn.Module):
    """The pieces assembled as `scenic_baselines.vit.ViT` assembles them."""

    classifier: str = "token"
    remat: bool = False
    rates: float = 0.0

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = vit_encoder.PatchEmbedding((4, 4), WIDTH, name="embedding")(images)
        x = x.reshape(x.shape[0], -1, WIDTH)
        if self.classifier == "token":
            x = vit_encoder.add_class_token(self, x)
        x = vit_encoder.Encoder(
            num_layers=2,
            mlp_dim=MLP,
            num_heads=HEADS,
            dropout_rate=self.rates,
            attention_dropout_rate=self.rates,
            stochastic_depth=self.rates,
            remat=self.remat,
            name="Transformer",
        )(x, train=train)
        x = vit_encoder.pool(x, self.classifier, num_heads=HEADS, mlp_dim=MLP)
        return vit_encoder.classification_head(x, 3, representation_size=5)


IMAGES = jax.random.normal(jax.random.key(0), (2, 8, 12, 3))  # 2 x 3 patches


def block_names(prefix):
    return {
        f"{prefix}/LayerNorm_0/scale": (WIDTH,),
        f"{prefix}/LayerNorm_0/bias": (WIDTH,),
        **{
            f"{prefix}/MultiHeadDotProductAttention_1/{p}/kernel": (WIDTH, HEADS, WIDTH // HEADS)
            for p in ("query", "key", "value")
        },
        **{
            f"{prefix}/MultiHeadDotProductAttention_1/{p}/bias": (HEADS, WIDTH // HEADS)
            for p in ("query", "key", "value")
        },
        f"{prefix}/MultiHeadDotProductAttention_1/out/kernel": (HEADS, WIDTH // HEADS, WIDTH),
        f"{prefix}/MultiHeadDotProductAttention_1/out/bias": (WIDTH,),
        f"{prefix}/LayerNorm_2/scale": (WIDTH,),
        f"{prefix}/LayerNorm_2/bias": (WIDTH,),
        f"{prefix}/MlpBlock_3/Dense_0/kernel": (WIDTH, MLP),
        f"{prefix}/MlpBlock_3/Dense_0/bias": (MLP,),
        f"{prefix}/MlpBlock_3/Dense_1/kernel": (MLP, WIDTH),
        f"{prefix}/MlpBlock_3/Dense_1/bias": (WIDTH,),
    }


def test_parameter_names_are_the_published_checkpoints():
    expected = {
        "embedding/kernel": (4, 4, 3, WIDTH),
        "embedding/bias": (WIDTH,),
        "cls": (1, 1, WIDTH),
        "Transformer/posembed_input/pos_embedding": (1, 1 + 6, WIDTH),
        **block_names("Transformer/encoderblock_0"),
        **block_names("Transformer/encoderblock_1"),
        "Transformer/encoder_norm/scale": (WIDTH,),
        "Transformer/encoder_norm/bias": (WIDTH,),
        "pre_logits/kernel": (WIDTH, 5),
        "pre_logits/bias": (5,),
        "head/kernel": (5, 3),
        "head/bias": (3,),
    }
    assert param_shapes(TinyViT(), IMAGES) == expected
    gap = param_shapes(TinyViT(classifier="gap"), IMAGES)
    assert "cls" not in gap and gap["Transformer/posembed_input/pos_embedding"] == (1, 6, WIDTH)


def test_map_head_parameter_names_and_shapes():
    shapes = param_shapes(TinyViT(classifier="map"), IMAGES)
    head = {k: v for k, v in shapes.items() if k.startswith("MAPHead_0/")}
    assert head == {
        "MAPHead_0/probe": (1, 1, WIDTH),
        **{
            f"MAPHead_0/MultiHeadAttention_0/{p}/kernel": (WIDTH, HEADS, WIDTH // HEADS)
            for p in ("query", "key", "value")
        },
        **{
            f"MAPHead_0/MultiHeadAttention_0/{p}/bias": (HEADS, WIDTH // HEADS)
            for p in ("query", "key", "value")
        },
        "MAPHead_0/MultiHeadAttention_0/out/kernel": (HEADS, WIDTH // HEADS, WIDTH),
        "MAPHead_0/MultiHeadAttention_0/out/bias": (WIDTH,),
        "MAPHead_0/LayerNorm_0/scale": (WIDTH,),
        "MAPHead_0/LayerNorm_0/bias": (WIDTH,),
        "MAPHead_0/MlpBlock_0/Dense_0/kernel": (WIDTH, MLP),
        "MAPHead_0/MlpBlock_0/Dense_0/bias": (MLP,),
        "MAPHead_0/MlpBlock_0/Dense_1/kernel": (MLP, WIDTH),
        "MAPHead_0/MlpBlock_0/Dense_1/bias": (WIDTH,),
    }


def test_encoder_position_embedding_indexes_a_token_grid_flattened():
    """A `[B, t, s, D]` grid (ViViT's models 3 and 4) gets one `[1, t*s, D]` embedding."""
    encoder = vit_encoder.Encoder(num_layers=1, mlp_dim=MLP, num_heads=HEADS)
    shapes = param_shapes(encoder, jnp.zeros((2, 3, 4, WIDTH)))
    assert shapes["posembed_input/pos_embedding"] == (1, 12, WIDTH)


class GainAttention(nn.Module):
    """A stand-in attention: scales its input by a learned per-feature gain."""

    num_heads: int
    dropout_rate: float = 0.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        return x * self.param("gain", nn.initializers.ones, (x.shape[-1],))


def test_pluggable_attention_is_built_and_called():
    x = jax.random.normal(jax.random.key(1), (2, 5, WIDTH))
    block = vit_encoder.EncoderBlock(mlp_dim=MLP, num_heads=HEADS, attention=GainAttention)
    attention_params = {
        k: v for k, v in param_shapes(block, x).items() if k.startswith("MultiHead")
    }
    assert attention_params == {"MultiHeadDotProductAttention_1/gain": (WIDTH,)}
    params = random_params(block, x)
    out = block.apply({"params": params}, x)
    # The block's first residual is x + GainAttention(LN(x)): the gain must matter.
    doubled = jax.tree_util.tree_map_with_path(
        lambda p, v: 2 * v if p[-1].key == "gain" else v, params
    )
    assert np.abs(block.apply({"params": doubled}, x) - out).max() > 1e-3
    # Through the encoder too, for every block.
    encoder = vit_encoder.Encoder(
        num_layers=2, mlp_dim=MLP, num_heads=HEADS, block_kwargs={"attention": GainAttention}
    )
    shapes = param_shapes(encoder, x)
    assert {k for k in shapes if k.endswith("/gain")} == {
        f"encoderblock_{i}/MultiHeadDotProductAttention_1/gain" for i in range(2)
    }
    hash(encoder)  # a plain dict of block arguments is frozen: Flax modules must hash


class TokenwiseAttention(layers.MultiHeadAttention):
    """Multi-head attention's parameters, but each token attends only to itself: the kind of
    drop-in a factorised attention is (ViViT's model 4 is tested in scenic_vivit)."""

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        return super().__call__(x[..., None, :], deterministic=deterministic)[..., 0, :]


def test_attention_with_the_same_parameters_keeps_the_block_tree():
    """So a ViT block's weights load into a block with another attention, and they differ."""
    x = jax.random.normal(jax.random.key(1), (2, 5, WIDTH))
    plain = vit_encoder.EncoderBlock(mlp_dim=MLP, num_heads=HEADS)
    other = vit_encoder.EncoderBlock(mlp_dim=MLP, num_heads=HEADS, attention=TokenwiseAttention)
    assert param_shapes(other, x) == param_shapes(plain, x)
    params = random_params(plain, x)
    assert (
        np.abs(plain.apply({"params": params}, x) - other.apply({"params": params}, x)).max() > 1e-3
    )


def test_pooling_shapes_and_values():
    x = jax.random.normal(jax.random.key(2), (2, 5, WIDTH))
    grid = x.reshape(2, 5, 1, WIDTH)
    np.testing.assert_array_equal(vit_encoder.pool(x, "token"), x[:, 0])
    np.testing.assert_allclose(vit_encoder.pool(x, "gap"), x.mean(1), rtol=1e-6)
    np.testing.assert_allclose(vit_encoder.pool(grid, "gap"), x.mean(1), rtol=1e-6)
    with pytest.raises(ValueError, match="classifier must be one of"):
        vit_encoder.pool(x, "max")
    for classifier in ("token", "gap", "map"):
        out = jax.eval_shape(
            lambda c=classifier: TinyViT(classifier=c).init_with_output(jax.random.key(0), IMAGES)
        )[0]
        assert out.shape == (2, 3) and out.dtype == jnp.float32


def test_class_token_is_prepended_and_zero_initialised():
    class AddToken(nn.Module):
        @nn.compact
        def __call__(self, x):
            return vit_encoder.add_class_token(self, x, "cls_test")

    x = jax.random.normal(jax.random.key(3), (2, 5, WIDTH))
    out, variables = AddToken().init_with_output(jax.random.key(0), x)
    assert set(variables["params"]) == {"cls_test"}
    assert out.shape == (2, 6, WIDTH)
    np.testing.assert_array_equal(out[:, 0], 0.0)
    np.testing.assert_array_equal(out[:, 1:], x)


def test_bad_settings_are_named():
    x = jnp.zeros((1, 4, WIDTH))
    with pytest.raises(ValueError, match="posemb must be"):
        vit_encoder.Encoder(1, MLP, HEADS, posemb="fourier").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="needs posemb_grid"):
        vit_encoder.Encoder(1, MLP, HEADS, posemb="sincos2d").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="num_heads and mlp_dim"):
        vit_encoder.pool(x, "map")
    with pytest.raises(ValueError, match="not divisible by patch size"):
        vit_encoder.PatchEmbedding((3, 3), WIDTH).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="not divisible by the tubelet size"):
        vit_encoder.TubeletEmbedding((3, 4, 4), WIDTH).init(
            jax.random.key(0), jnp.zeros((1, 4, 8, 8, 3))
        )


# ------------------------------------------------------------------ layer scan and remat


def encoder(**kwargs):
    return vit_encoder.Encoder(
        num_layers=3, mlp_dim=MLP, num_heads=HEADS, dropout_rate=0.1, **kwargs
    )


def test_scanned_layers_compute_what_per_layer_blocks_do_in_any_remat_policy():
    """The scanned encoder (stacked parameters, one traced block) gives the per-layer
    encoder's outputs and gradients on the same weights (converted by `stack_layers`), for
    every remat policy; with dropout on, both draw one mask per layer from the same stream
    only by chance, so training-mode equality is checked with dropout off."""
    tokens = jax.random.normal(jax.random.key(1), (2, 5, WIDTH))
    plain = encoder()
    params = random_params(plain, tokens)
    flat = traverse_util.flatten_dict(params, sep="/")
    for remat in (False, "full", "dots"):
        scanned = encoder(scan_layers=True, remat=remat)
        wanted = param_shapes(scanned, tokens)
        stacked = vit_encoder.stack_layers(flat, wanted)
        assert {k: v.shape for k, v in stacked.items()} == wanted
        assert wanted["encoderblock/MlpBlock_3/Dense_0/kernel"] == (3, WIDTH, MLP)
        scanned_params = traverse_util.unflatten_dict(stacked, sep="/")

        def loss(module, p):
            return jnp.sum(jnp.sin(module.apply({"params": p}, tokens, train=False)))

        np.testing.assert_allclose(
            scanned.apply({"params": scanned_params}, tokens),
            plain.apply({"params": params}, tokens),
            rtol=1e-5,
            atol=1e-6,
        )
        grads = traverse_util.flatten_dict(jax.grad(lambda p: loss(plain, p))(params), sep="/")
        scanned_loss = functools.partial(loss, scanned)
        scanned_grads = jax.grad(scanned_loss)(scanned_params)
        scanned_grads = traverse_util.flatten_dict(scanned_grads, sep="/")
        back = vit_encoder.stack_layers(scanned_grads, grads)
        for name, grad in grads.items():
            np.testing.assert_allclose(back[name], grad, rtol=1e-4, atol=1e-6, err_msg=name)
        jaxpr = str(jax.make_jaxpr(jax.grad(scanned_loss))(scanned_params))
        assert "scan" in jaxpr
        assert ("remat" in jaxpr or "checkpoint" in jaxpr) == bool(remat)


def test_stack_layers_converts_both_ways_and_leaves_other_names():
    per_layer = {
        "Transformer/encoderblock_0/w": np.zeros((2, 3)),
        "Transformer/encoderblock_1/w": np.ones((2, 3)),
        "Transformer/encoder_norm/scale": np.ones(3),
        "head/kernel": np.ones((3, 4)),
    }
    scanned_shapes = {
        "Transformer/encoderblock/w": (2, 2, 3),
        "Transformer/encoder_norm/scale": (3,),
        "head/kernel": (3, 4),
    }
    stacked = vit_encoder.stack_layers(per_layer, scanned_shapes)
    assert sorted(stacked) == sorted(scanned_shapes)
    np.testing.assert_array_equal(stacked["Transformer/encoderblock/w"][1], np.ones((2, 3)))
    back = vit_encoder.stack_layers(stacked, per_layer)
    assert sorted(back) == sorted(per_layer)
    for name, value in per_layer.items():
        np.testing.assert_array_equal(back[name], value)
    # A layer count that does not match is left for the caller's shape check to report.
    partial = {k: v for k, v in per_layer.items() if "encoderblock_1" not in k}
    assert "Transformer/encoderblock/w" not in vit_encoder.stack_layers(partial, scanned_shapes)


def test_init_from_loads_per_layer_checkpoints_into_scanned_models_and_back():
    from scenic.train_lib import pretrained_init

    tokens = jnp.ones((1, 5, WIDTH))
    plain, scanned = encoder(), encoder(scan_layers=True)
    params = random_params(plain, tokens)
    fresh_scanned = scanned.init(jax.random.key(3), tokens)["params"]
    loaded, summary = pretrained_init.init_from(fresh_scanned, params)
    assert not summary.missing and not summary.unused
    np.testing.assert_allclose(
        scanned.apply({"params": loaded}, tokens),
        plain.apply({"params": params}, tokens),
        rtol=1e-5,
        atol=1e-6,
    )
    reloaded, summary = pretrained_init.init_from(
        plain.init(jax.random.key(4), tokens)["params"], loaded
    )
    assert not summary.missing and not summary.unused
    jax.tree.map(np.testing.assert_array_equal, reloaded, jax.device_get(params))


def test_scan_and_remat_settings_that_cannot_work_are_named():
    tokens = jnp.ones((1, 5, WIDTH))
    with pytest.raises(ValueError, match="stochastic_depth gives each layer its own rate"):
        encoder(scan_layers=True, stochastic_depth=0.1).init(jax.random.key(0), tokens)
    with pytest.raises(ValueError, match="remat must be a bool or one of"):
        encoder(remat="some").init(jax.random.key(0), tokens)
