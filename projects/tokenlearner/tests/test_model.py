"""TokenLearnerViT: token counts where the TokenLearner sits, equality with the plain ViT
and ViViT model 1 when it is off, every config key reaching the model, and init from an
image ViT."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scenic_baselines.vit import ViT
from scenic_tokenlearner.init_from_vit import init_from_vit
from scenic_tokenlearner.model import TokenLearnerViT, build_model
from scenic_tokenlearner.models import model_fields
from scenic_vivit.model import ViViT

SMALL = dict(hidden_size=16, num_layers=3, num_heads=2, mlp_dim=32)
IMAGES = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
VIDEOS = jax.random.normal(jax.random.key(1), (2, 8, 16, 16, 3))


def random_params(model, x, seed=9):
    """Every parameter random (zero-initialised heads and fusers would hide differences),
    drawn with NumPy from the traced parameter shapes: nothing is compiled, where `init` and
    `jax.random` would compile each initialiser and parameter shape on its own."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), param_shapes(model, x)
    )


def run(model, x, train=False, params=None):
    rngs = {"params": jax.random.key(2), "dropout": jax.random.key(3)}
    if params is None:
        params = model.init(rngs, x)["params"]
    rngs = {"dropout": jax.random.key(4)}
    return params, model.apply({"params": params}, x, train=train, rngs=rngs)


def param_shapes(model, x):
    """The parameter tree of `model` on `x`, traced only."""
    rngs = {"params": jax.random.key(2), "dropout": jax.random.key(3)}
    return jax.eval_shape(lambda: model.init(rngs, x)["params"])


def shapes_of(model, x):
    """(logits shape, encoder output shape, params) from tracing alone (nothing runs)."""
    rngs = {"params": jax.random.key(2), "dropout": jax.random.key(3)}
    logits, state = jax.eval_shape(
        lambda: model.init_with_output(rngs, x, capture_intermediates=True)
    )
    tokens = state["intermediates"]["Transformer"]["__call__"][0]
    return logits.shape, tokens.shape, state["params"]


@pytest.mark.parametrize(
    "kwargs, inputs, tokens",
    [
        (dict(patch_size=(4, 4), tokenlearner_loc=None), IMAGES, 16),
        (dict(patch_size=(4, 4), tokenlearner_loc=1, num_tokens=3), IMAGES, 3),
        (dict(patch_size=(2, 4, 4), tokenlearner_loc=1, num_tokens=3), VIDEOS, 4 * 3),
        (
            dict(patch_size=(2, 4, 4), tokenlearner_loc=0, num_tokens=3,
                 video_tokens="spatio_temporal"),
            VIDEOS,
            3,
        ),
        (dict(patch_size=(2, 4, 4), tokenlearner_loc=1, token_fuser=True), VIDEOS, 4 * 16),
        (dict(patch_size=(2, 4, 4), tokenlearner_loc=2, version="v1"), VIDEOS, 4 * 8),
        (
            dict(patch_size=(2, 4, 4), tokenlearner_loc=2, version="v1",
                 video_tokens="spatio_temporal", num_tokens=5),
            VIDEOS,
            5,
        ),
    ],
)
def test_tokens_after_the_encoder(kwargs, inputs, tokens):
    model = TokenLearnerViT(num_classes=7, **SMALL, **kwargs)
    logits, encoded, params = shapes_of(model, inputs)
    assert encoded == (2, tokens, 16)
    assert logits == (2, 7)
    names = set(params["Transformer"])
    loc = kwargs["tokenlearner_loc"]
    if loc is None:
        assert not any(n.startswith("Token") for n in names)
    elif kwargs.get("token_fuser"):
        want = {f"TokenLearner_{i}" for i in range(loc, 3)} | {
            f"TokenFuser_{i}" for i in range(loc, 3)
        }
        assert {n for n in names if n.startswith("Token")} == want
    else:
        assert {n for n in names if n.startswith("Token")} == {"TokenLearner"}


def test_v1_on_a_non_square_image():
    model = TokenLearnerViT(
        num_classes=3, patch_size=(4, 4), tokenlearner_loc=1, version="v1", num_tokens=2, **SMALL
    )
    x = jnp.ones((2, 12, 20, 1))  # a 3 x 5 patch grid
    assert shapes_of(model, x)[1] == (2, 2, 16)


def test_without_tokenlearner_it_is_the_gap_vit_and_vivit_model_1():
    """With `tokenlearner_loc=None` the parameter tree is the GAP ViT's (images) and ViViT
    model 1's (videos), and so are the logits: the encoder loop here equals the core's."""
    for inputs, reference, patch in (
        (IMAGES, ViT(num_classes=5, patch_size=(4, 4), classifier="gap", **SMALL), (4, 4)),
        (
            VIDEOS,
            ViViT(num_classes=5, variant="spatio_temporal", patch_size=(2, 4, 4),
                  classifier="gap", **SMALL),
            (2, 4, 4),
        ),
    ):
        model = TokenLearnerViT(num_classes=5, patch_size=patch, tokenlearner_loc=None, **SMALL)
        # Zero-initialised heads would make any two models agree: every parameter random.
        ref_params = random_params(reference, inputs)
        _, ref_logits = run(reference, inputs, params=ref_params)
        params = param_shapes(model, inputs)
        assert jax.tree.structure(params) == jax.tree.structure(ref_params)
        assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, ref_params)
        _, logits = run(model, inputs, params=ref_params)
        assert np.abs(np.asarray(ref_logits)).max() > 0.1
        np.testing.assert_allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)


def test_stochastic_depth_reaches_the_blocks():
    """The original ImageNet config set stochastic depth and the model never saw it."""
    base = dict(num_classes=5, patch_size=(4, 4), tokenlearner_loc=1, **SMALL)
    params = random_params(TokenLearnerViT(**base), IMAGES)
    _, plain = run(TokenLearnerViT(**base), IMAGES, train=True, params=params)
    _, eval_out = run(TokenLearnerViT(**base), IMAGES, params=params)
    np.testing.assert_allclose(plain, eval_out, atol=1e-6)  # no randomness without it
    _, dropped = run(
        TokenLearnerViT(**base, stochastic_depth=0.9), IMAGES, train=True, params=params
    )
    assert np.abs(np.asarray(dropped) - np.asarray(plain)).max() > 1e-3


# field -> (the model it is varied in, another value). Varying a field must change the
# traced program of `init` (shapes, initial values such as the head bias) or of a training
# step's forward pass (layers, rates, dtypes, rematerialisation). Tracing runs nothing, so
# every field can be checked on its own.
VIDEO = dict(patch_size=(2, 4, 4), tokenlearner_loc=1, num_tokens=3, **SMALL)
FIELD_CHANGES = {
    "patch_size": (VIDEO, (4, 4, 4)),
    "hidden_size": (VIDEO, 24),
    "num_layers": (VIDEO, 4),
    "num_heads": (VIDEO, 4),
    "mlp_dim": (VIDEO, 40),
    "tokenlearner_loc": (VIDEO, 2),
    "num_tokens": (VIDEO, 4),
    "version": (VIDEO, "v1"),
    "v1_pooling": ({**VIDEO, "version": "v1"}, "mean"),
    "bottleneck_dim": (VIDEO, 8),
    "token_fuser": (VIDEO, True),
    "video_tokens": (VIDEO, "spatio_temporal"),
    "classifier": (VIDEO, "map"),
    "representation_size": (VIDEO, 8),
    "dropout_rate": (VIDEO, 0.3),
    "attention_dropout_rate": (VIDEO, 0.3),
    "stochastic_depth": (VIDEO, 0.5),
    "head_bias_init": (VIDEO, -10.0),
    "remat": (VIDEO, True),
    "dtype": (VIDEO, jnp.bfloat16),
}


def traced(kwargs):
    """The jaxprs of `init` and of a train-mode gradient through the model, traced lazily (a
    field that already changes `init` needs no gradient traced)."""
    model = TokenLearnerViT(num_classes=5, **kwargs)
    rngs = {"params": jax.random.key(2), "dropout": jax.random.key(3)}
    init, variables = jax.make_jaxpr(lambda: model.init(rngs, VIDEOS), return_shape=True)()
    yield str(init)
    loss = lambda p: model.apply(
        {"params": p}, VIDEOS, train=True, rngs={"dropout": jax.random.key(4)}
    ).sum()
    yield str(jax.make_jaxpr(jax.grad(loss))(variables["params"]))


def test_every_config_key_reaches_the_model():
    assert set(FIELD_CHANGES) == set(model_fields()), "a model field has no check here"
    reference = {id(VIDEO): list(traced(VIDEO))}
    unused = []
    for field, (kwargs, value) in FIELD_CHANGES.items():
        if id(kwargs) not in reference:
            reference[id(kwargs)] = list(traced(kwargs))
        programs = traced({**kwargs, field: value})
        if all(a == b for a, b in zip(programs, reference[id(kwargs)])):
            unused.append(field)
    assert not unused, f"these config.model keys change nothing: {unused}"


def test_a_field_the_model_ignores_is_caught():
    """The check above can fail: a field the model never reads leaves both programs equal."""

    class WithUnusedField(TokenLearnerViT):
        unused_knob: int = 0

    one = WithUnusedField(num_classes=5, unused_knob=1, **VIDEO)
    two = WithUnusedField(num_classes=5, unused_knob=2, **VIDEO)
    rngs = {"params": jax.random.key(2)}
    assert str(jax.make_jaxpr(lambda: one.init(rngs, VIDEOS))()) == str(
        jax.make_jaxpr(lambda: two.init(rngs, VIDEOS))()
    )


def test_build_model_checks_before_tracing():
    config = ml_collections.ConfigDict({"patch_size": [4, 4], "num_layers": 2, **{
        k: v for k, v in SMALL.items() if k != "num_layers"}, "tokenlearner_loc": 2})
    with pytest.raises(ValueError, match=r"tokenlearner_loc=2 must be a block index in \[0, 2\)"):
        build_model(config, 10)
    config.tokenlearner_loc = 1
    config.version = "v2"
    with pytest.raises(ValueError, match="version must be one of"):
        build_model(config, 10)


def test_init_from_image_vit():
    vit = ViT(num_classes=0, patch_size=(4, 4), classifier="token", **SMALL)
    vit_params = random_params(vit, jnp.zeros((1, 32, 32, 3)))  # an 8x8 grid, resized to 4x4
    # Images, no TokenLearner: a GAP ViT with the same weights gives the same features.
    model = TokenLearnerViT(num_classes=0, patch_size=(4, 4), tokenlearner_loc=None, **SMALL)
    params = random_params(model, IMAGES, seed=10)
    params = init_from_vit(model, params, vit_params, IMAGES.shape)
    gap_vit = ViT(num_classes=0, patch_size=(4, 4), classifier="gap", **SMALL)
    gap_params = {k: v for k, v in vit_params.items() if k != "cls"}
    gap_params["Transformer"] = dict(vit_params["Transformer"])
    gap_params["Transformer"]["posembed_input"] = params["Transformer"]["posembed_input"]
    _, want = run(gap_vit, IMAGES, params=gap_params)
    _, got = run(model, IMAGES, params=params)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The position grid is the ViT's, class row dropped, resized 8x8 -> 4x4 (corners kept).
    grid = np.asarray(vit_params["Transformer"]["posembed_input"]["pos_embedding"])[0, 1:]
    grid = grid.reshape(8, 8, -1)
    mine = np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"])[0]
    mine = mine.reshape(4, 4, -1)
    np.testing.assert_allclose(mine[[0, 0, -1, -1], [0, -1, 0, -1]],
                               grid[[0, 0, -1, -1], [0, -1, 0, -1]], rtol=1e-6)

    # Video with a TokenLearner: blocks copied, tubelets inflated, static clips see the image.
    video_model = TokenLearnerViT(num_classes=0, patch_size=(2, 4, 4), tokenlearner_loc=1,
                                  **SMALL)
    video_params = random_params(video_model, VIDEOS, seed=11)
    video_params = init_from_vit(video_model, video_params, vit_params, VIDEOS.shape,
                                 kernel_init="average")
    for i in range(3):
        block = f"encoderblock_{i}"
        jax.tree.map(np.testing.assert_array_equal, video_params["Transformer"][block],
                     jax.tree.map(np.asarray, vit_params["Transformer"][block]))
    kernel = np.asarray(video_params["embedding"]["kernel"])
    np.testing.assert_allclose(kernel.sum(0), vit_params["embedding"]["kernel"], rtol=1e-6)
    assert "TokenLearner" in video_params["Transformer"]

    deeper = TokenLearnerViT(num_classes=0, patch_size=(4, 4), **{**SMALL, "num_layers": 4},
                             tokenlearner_loc=1)
    deeper_params = random_params(deeper, IMAGES)
    with pytest.raises(ValueError, match="3 encoder blocks"):
        init_from_vit(deeper, deeper_params, vit_params, IMAGES.shape)
