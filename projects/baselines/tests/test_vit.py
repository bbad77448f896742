"""ViT: the published parameter count, heads, patch embedding = strided conv, configs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scenic.common_lib import config_utils, runner
from scenic.common_lib.debug_utils import count_parameters
from scenic.model_lib import vit_encoder
from scenic_baselines import vit
from scenic_baselines.models import MODELS


def abstract_params(model, image_shape):
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(image_shape), train=False)
    )
    return variables["params"]


def test_vit_b16_has_published_parameter_count():
    config = config_utils.load_config("vit_b16_imagenet", "scenic_baselines.configs")
    model = vit.build_vit(config.model, num_classes=1000)
    params = abstract_params(model, (1, 224, 224, 3))
    assert count_parameters(params) == 86_567_656
    # Published checkpoint layout (names used when loading ViT .npz weights).
    assert params["embedding"]["kernel"].shape == (16, 16, 3, 768)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 197, 768)
    assert set(params["Transformer"]) >= {f"encoderblock_{i}" for i in range(12)}


@pytest.mark.parametrize("classifier", ["token", "gap", "map"])
@pytest.mark.parametrize("posemb", ["learned", "sincos2d"])
def test_vit_classifiers_give_logits(classifier, posemb):
    model = vit.ViT(
        num_classes=5,
        patch_size=(4, 4),
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        mlp_dim=32,
        classifier=classifier,
        posemb=posemb,
        stochastic_depth=0.1,
    )
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 2))
    variables = model.init(jax.random.key(1), x)
    logits = model.apply(variables, x)
    assert logits.shape == (3, 5)
    train_logits = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert train_logits.shape == (3, 5)
    assert ("cls" in variables["params"]) == (classifier == "token")


@pytest.mark.parametrize("classifier", ["token", "gap", "map"])
def test_bfloat16_compute_keeps_float32_parameters(classifier):
    model = vit.ViT(
        num_classes=5,
        patch_size=(4, 4),
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        mlp_dim=32,
        classifier=classifier,
        dtype=jnp.bfloat16,
    )
    x = jnp.ones((2, 8, 8, 1), jnp.bfloat16)
    variables = model.init(jax.random.key(0), x)
    leaves = jax.tree_util.tree_leaves_with_path(variables["params"])
    dtypes = {jax.tree_util.keystr(path): leaf.dtype for path, leaf in leaves}
    assert set(dtypes.values()) == {jnp.dtype(jnp.float32)}, dtypes
    assert np.isfinite(np.asarray(model.apply(variables, x))).all()


def test_vit_rejects_unknown_classifier_and_bad_patch():
    x = jnp.zeros((1, 8, 8, 1))
    with pytest.raises(ValueError, match="classifier"):
        vit.ViT(
            num_classes=2,
            patch_size=(4, 4),
            hidden_size=8,
            num_layers=1,
            num_heads=1,
            mlp_dim=8,
            classifier="bogus",
        ).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="not divisible by patch size"):
        vit.ViT(
            num_classes=2, patch_size=(3, 3), hidden_size=8, num_layers=1, num_heads=1, mlp_dim=8
        ).init(jax.random.key(0), x)


def test_patch_embedding_equals_strided_convolution():
    images = jax.random.normal(jax.random.key(0), (2, 12, 8, 3))
    embed = vit_encoder.PatchEmbedding((4, 2), 5)
    params = embed.init(jax.random.key(1), images)["params"]
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)
    ours = embed.apply({"params": params}, images)
    conv = nn.Conv(5, kernel_size=(4, 2), strides=(4, 2), padding="VALID")
    reference = conv.apply({"params": params}, images)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", config_utils.list_configs("scenic_baselines.configs"))
def test_every_shipped_config_resolves(name):
    config = config_utils.load_config(name, "scenic_baselines.configs")
    resolved, model_cls = runner.resolve_config(config, MODELS)
    assert resolved.model_name in MODELS
    assert model_cls is MODELS[resolved.model_name]


def test_multilabel_model_uses_sigmoid_loss():
    config = ml_collections.ConfigDict(
        {
            "model": {
                "patch_size": (4, 4),
                "hidden_size": 8,
                "num_layers": 1,
                "num_heads": 1,
                "mlp_dim": 8,
            },
            "label_smoothing": None,
            "l2_decay_factor": None,
        }
    )
    model = MODELS["vit_multilabel_classification"](config, {"num_classes": 3})
    logits = jnp.array([[2.0, -1.0, 0.5]])
    batch = {"label": jnp.array([[1.0, 0.0, 1.0]]), "batch_mask": jnp.ones((1,))}
    expected = (
        -np.log(1 / (1 + np.exp(-2.0)))
        - np.log(1 - 1 / (1 + np.exp(1.0)))
        - np.log(1 / (1 + np.exp(-0.5)))
    )
    np.testing.assert_allclose(model.loss_function(logits, batch), expected, rtol=1e-5)


def test_remat_recomputes_blocks_and_keeps_parameters_and_gradients():
    """remat=True: same parameter tree, same loss and gradients (dropout and stochastic depth
    active, so the recomputed forward must draw the same random numbers), and the backward
    pass really is rematerialised (jax.checkpoint's primitive in the jaxpr)."""
    kwargs = dict(
        num_classes=3,
        patch_size=(4, 4),
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        mlp_dim=24,
        dropout_rate=0.1,
        stochastic_depth=0.2,
    )
    images = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    labels = jnp.arange(4) % 3
    plain, remat = vit.ViT(**kwargs), vit.ViT(remat=True, **kwargs)
    # Both inits in one compiled program (op by op, each initialiser and shape compiles alone).
    init = lambda m: m.init(jax.random.key(0), images, train=False)["params"]
    params, remat_params = jax.jit(lambda: (init(plain), init(remat)))()
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(remat_params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, remat_params)
    # Random parameters everywhere: the zero-initialised head would make every encoder
    # gradient exactly 0 in both runs, and the comparison below vacuous.
    # (NumPy draws: `jax.random` would compile once per parameter shape.)
    rng = np.random.default_rng(3)
    params = jax.tree_util.tree_map(
        lambda p: jnp.asarray(0.3 * rng.standard_normal(p.shape), p.dtype), params
    )

    def loss_fn(model):
        def loss(p):
            logits = model.apply(
                {"params": p}, images, train=True, rngs={"dropout": jax.random.key(2)}
            )
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

        return jax.value_and_grad(loss)

    loss, grads = jax.jit(loss_fn(plain))(params)
    remat_loss, remat_grads = jax.jit(loss_fn(remat))(params)
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), remat_grads, grads
    )
    # Every encoder gradient is far from 0 (but the key bias's, exactly 0 in theory: softmax
    # ignores a constant added to all of a query's logits).
    for path, grad in jax.tree_util.tree_leaves_with_path(grads["Transformer"]):
        name = jax.tree_util.keystr(path)
        assert "['key']['bias']" in name or float(jnp.abs(grad).max()) > 1e-4, name
    # jax.checkpoint's primitive (remat2 in jax 0.10) recomputes in the backward pass.
    assert "remat" in str(jax.make_jaxpr(loss_fn(remat))(params))
    assert "remat" not in str(jax.make_jaxpr(loss_fn(plain))(params))
