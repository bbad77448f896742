"""MLP-Mixer: logits equal to a NumPy float64 forward pass written here from the paper and
the official code (reading a file in the official .npz layout), with negative controls;
layer scale on the branch; the linear stochastic-depth rule; parameter counts against a
closed form; init from an official-layout .npz through the registered model's config
(new head, one error naming every problem of a wrong file); training through the core
trainer."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.special

from scenic.common_lib import config_utils, runner
from scenic.common_lib.config_utils import ConfigError
from scenic.common_lib.debug_utils import count_parameters
from scenic.model_lib import layers
from scenic.train_lib import pretrained_init
from scenic_baselines import mixer
from scenic_baselines.models import MODELS

# The paper's Table 1 / big_vision's sizes, restated here: C, D_S, D_C, blocks.
PUBLISHED_SIZES = {
    "S": (512, 256, 2048, 8),
    "B": (768, 384, 3072, 12),
    "L": (1024, 512, 4096, 24),
    "H": (1280, 640, 5120, 32),
}
# 1000-way head, 224 px; B/16's 59,880,472 is the commonly reported count, and the others
# agree with published tables of Keras / PyTorch ports (e.g. 206,939,264 for L/32).
PUBLISHED_COUNTS = {
    "S/16": 18_528_264,
    "S/32": 19_104_624,
    "B/16": 59_880_472,
    "B/32": 60_293_428,
    "L/16": 208_196_168,
    "L/32": 206_939_264,
    "H/14": 432_350_952,
}
LN_EPSILON = 1e-6  # flax.linen.LayerNorm's default, used by the official code


def closed_form_count(hidden, tokens_mlp, channels_mlp, depth, patch, image=224, classes=1000):
    """Parameters counted from the paper's description: the patch projection (P*P*3*C + C),
    per block two LayerNorms (2C each), the token MLP (S -> D_S -> S, with biases) and the
    channel MLP (C -> D_C -> C), the pre-head LayerNorm and the linear head."""
    tokens = (image // patch) ** 2
    stem = patch * patch * 3 * hidden + hidden
    token_mlp = tokens * tokens_mlp + tokens_mlp + tokens_mlp * tokens + tokens
    channel_mlp = hidden * channels_mlp + channels_mlp + channels_mlp * hidden + hidden
    block = 2 * (2 * hidden) + token_mlp + channel_mlp
    return stem + depth * block + 2 * hidden + hidden * classes + classes


@pytest.mark.parametrize("name", sorted(PUBLISHED_COUNTS))
def test_parameter_counts_of_published_variants(name):
    scale, patch = name.split("/")
    model = mixer.Mixer(num_classes=1000, **mixer.variant(name))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    count = count_parameters(shapes["params"])
    assert count == closed_form_count(*PUBLISHED_SIZES[scale], int(patch))
    assert count == PUBLISHED_COUNTS[name]


def test_b16_config_is_the_published_b16():
    config = config_utils.load_config("mixer_b16_imagenet", "scenic_baselines.configs")
    model = mixer.build_mixer(config.model, num_classes=1000)
    for key, value in mixer.variant("B/16").items():
        assert getattr(model, key) == value, key
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    assert count_parameters(shapes["params"]) == 59_880_472
    # big_vision's decoupled wd 1e-4 is not scaled by the learning rate; optax's adamw is.
    assert config.optimizer.weight_decay * config.lr_configs.base_learning_rate == 1e-4


# ------------------------------------------------------- the official .npz layout


TINY = dict(hidden=12, tokens_mlp=10, channels_mlp=20, depth=2, patch=4, channels=3)


def official_arrays(
    tokens,
    classes,
    hidden,
    tokens_mlp,
    channels_mlp,
    depth,
    patch,
    channels,
    layer_scale=False,
    seed=0,
):
    """Random float32 arrays named and shaped as an official Mixer .npz (flat '/'-joined
    names of vit_jax/models_mixer.py's Flax tree: a stride-P conv `stem`, `MixerBlock_{i}`
    with LayerNorm_0, token_mixing/Dense_{0,1}, LayerNorm_1, channel_mixing/Dense_{0,1},
    `pre_head_layer_norm`, `head`); `layer_scale` adds our [C] branch scales. LayerNorm
    scales are 1 + noise and weights ~1/sqrt(fan-in), so nothing is zero or saturated."""
    rng = np.random.default_rng(seed)
    arrays = {}

    def dense(name, fan_in, fan_out):
        arrays[f"{name}/kernel"] = rng.normal(size=(fan_in, fan_out)) / math.sqrt(fan_in)
        arrays[f"{name}/bias"] = 0.1 * rng.normal(size=fan_out)

    def norm(name):
        arrays[f"{name}/scale"] = 1.0 + 0.2 * rng.normal(size=hidden)
        arrays[f"{name}/bias"] = 0.1 * rng.normal(size=hidden)

    fan_in = patch * patch * channels
    arrays["stem/kernel"] = rng.normal(size=(patch, patch, channels, hidden)) / math.sqrt(fan_in)
    arrays["stem/bias"] = 0.1 * rng.normal(size=hidden)
    for i in range(depth):
        block = f"MixerBlock_{i}"
        norm(f"{block}/LayerNorm_0")
        dense(f"{block}/token_mixing/Dense_0", tokens, tokens_mlp)
        dense(f"{block}/token_mixing/Dense_1", tokens_mlp, tokens)
        norm(f"{block}/LayerNorm_1")
        dense(f"{block}/channel_mixing/Dense_0", hidden, channels_mlp)
        dense(f"{block}/channel_mixing/Dense_1", channels_mlp, hidden)
        if layer_scale:
            for branch in ("token_mixing", "channel_mixing"):
                arrays[f"{block}/{branch}_scale"] = rng.uniform(0.2, 2.0, size=hidden)
    norm("pre_head_layer_norm")
    dense("head", hidden, classes)
    return {name: value.astype(np.float32) for name, value in arrays.items()}


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gelu_exact(x):
    return 0.5 * x * (1.0 + scipy.special.erf(x / math.sqrt(2.0)))


def reference_logits(
    arrays,
    images,
    depth,
    patch,
    gelu=gelu_tanh,
    scale_residual=False,
    column_major_tokens=False,
):
    """The Mixer forward pass in float64 from the paper's Eq. (1) and the official code:
    a stride-`patch` convolution (tokens in row-major order of the patch grid), per block
    U = X + W2 gelu(W1 LN(X)^T) (per channel, across tokens) and Y = U + W4 gelu(W3 LN(U))
    (per token), then LN, the mean over tokens and the head. Branch scales, where present,
    multiply the branch. Negative controls: `scale_residual` multiplies the residual
    instead (the original Scenic's channel mixing), `column_major_tokens` orders patches
    by column."""
    p = {name: np.float64(value) for name, value in arrays.items()}
    x = np.float64(images)
    n, height, width, _ = x.shape
    grid_h, grid_w = height // patch, width // patch
    tokens = np.zeros((n, grid_h, grid_w, p["stem/bias"].shape[0]))
    for i in range(grid_h):
        for j in range(grid_w):
            window = x[:, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch]
            tokens[:, i, j] = np.einsum("nabc,abcd->nd", window, p["stem/kernel"]) + p["stem/bias"]
    if column_major_tokens:
        tokens = tokens.transpose(0, 2, 1, 3)
    x = tokens.reshape(n, grid_h * grid_w, -1)

    def layer_norm(v, name):
        mean = v.mean(-1, keepdims=True)
        var = ((v - mean) ** 2).mean(-1, keepdims=True)
        return (v - mean) / np.sqrt(var + LN_EPSILON) * p[f"{name}/scale"] + p[f"{name}/bias"]

    def mlp(v, name):
        hidden = gelu(v @ p[f"{name}/Dense_0/kernel"] + p[f"{name}/Dense_0/bias"])
        return hidden @ p[f"{name}/Dense_1/kernel"] + p[f"{name}/Dense_1/bias"]

    def add(residual, branch, scale_name):
        scale = p.get(scale_name, 1.0)
        return residual * scale + branch if scale_residual else residual + scale * branch

    for i in range(depth):
        block = f"MixerBlock_{i}"
        normed = layer_norm(x, f"{block}/LayerNorm_0")
        across_tokens = mlp(normed.transpose(0, 2, 1), f"{block}/token_mixing")
        x = add(x, across_tokens.transpose(0, 2, 1), f"{block}/token_mixing_scale")
        across_channels = mlp(layer_norm(x, f"{block}/LayerNorm_1"), f"{block}/channel_mixing")
        x = add(x, across_channels, f"{block}/channel_mixing_scale")
    pooled = layer_norm(x, "pre_head_layer_norm").mean(axis=1)
    return pooled @ p["head/kernel"] + p["head/bias"]


def tiny_mixer(classes, **kwargs):
    return mixer.Mixer(
        num_classes=classes,
        patch_size=(TINY["patch"], TINY["patch"]),
        hidden_size=TINY["hidden"],
        num_layers=TINY["depth"],
        tokens_mlp_dim=TINY["tokens_mlp"],
        channels_mlp_dim=TINY["channels_mlp"],
        **kwargs,
    )


def abstract_params(model, image_shape):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(image_shape)))["params"]


# Float32 against float64 on these tiny models agrees to ~3e-7 of the largest logit; 1e-5
# (tighter than the 1e-4 asked of weight imports) still tells the exact GELU (~1e-4 off)
# from the tanh approximation that the official code uses.
TOLERANCE = 1e-5


def relative_error(ours, reference):
    return float(np.abs(np.asarray(ours) - reference).max() / np.abs(reference).max())


IMAGES = np.random.default_rng(1).normal(size=(3, 8, 12, 3)).astype(np.float32)  # 2x3 patches


def load_npz(tmp_path, arrays, model, image_shape, **init_from):
    """Our params from an .npz written in the official layout, read by the core's reader."""
    path = tmp_path / "Mixer-T_4.npz"
    np.savez(path, **arrays)
    fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract_params(model, image_shape))
    params, _ = pretrained_init.init_from(fresh, pretrained_init.load_params(path), **init_from)
    return params


def test_logits_equal_numpy_reference_from_official_npz(tmp_path):
    """Every array of the official layout is used (none missing or left over), and the
    logits equal the float64 reference; exact GELU and column-major patch order (the
    negative controls) do not."""
    arrays = official_arrays(tokens=6, classes=5, **TINY)
    model = tiny_mixer(5)
    params = load_npz(tmp_path, arrays, model, IMAGES.shape)
    ours = jax.jit(model.apply)({"params": params}, IMAGES)
    reference = reference_logits(arrays, IMAGES, TINY["depth"], TINY["patch"])
    assert relative_error(ours, reference) < TOLERANCE
    exact = reference_logits(arrays, IMAGES, TINY["depth"], TINY["patch"], gelu=gelu_exact)
    assert relative_error(ours, exact) > 5 * TOLERANCE
    transposed = reference_logits(
        arrays, IMAGES, TINY["depth"], TINY["patch"], column_major_tokens=True
    )
    assert relative_error(ours, transposed) > 1e3 * TOLERANCE


def test_layer_scale_multiplies_the_branch_not_the_residual(tmp_path):
    arrays = official_arrays(tokens=6, classes=5, layer_scale=True, seed=2, **TINY)
    model = tiny_mixer(5, layer_scale=0.1)
    params = load_npz(tmp_path, arrays, model, IMAGES.shape)
    ours = jax.jit(model.apply)({"params": params}, IMAGES)
    reference = reference_logits(arrays, IMAGES, TINY["depth"], TINY["patch"])
    assert relative_error(ours, reference) < TOLERANCE
    on_residual = reference_logits(
        arrays, IMAGES, TINY["depth"], TINY["patch"], scale_residual=True
    )
    assert relative_error(ours, on_residual) > 1e3 * TOLERANCE
    # Fresh scales start at `layer_scale`; without it the tree is the official one.
    shapes = abstract_params(model, IMAGES.shape)["MixerBlock_1"]
    assert shapes["token_mixing_scale"].shape == shapes["channel_mixing_scale"].shape == (12,)
    assert "token_mixing_scale" not in abstract_params(tiny_mixer(5), IMAGES.shape)["MixerBlock_1"]


def test_stochastic_depth_grows_linearly_and_only_acts_in_training():
    """Block i's drop-path rate is i / (L - 1) of `stochastic_depth` (both branches);
    eval ignores it; training with it draws per-example masks. (No dropout here: its
    random masks take XLA:CPU seconds to compile; it is the core MlpBlock's.)"""
    model = mixer.Mixer(
        num_classes=3,
        patch_size=(4, 4),
        hidden_size=8,
        num_layers=3,
        tokens_mlp_dim=4,
        channels_mlp_dim=8,
        stochastic_depth=0.5,
    )
    images = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    rng = np.random.default_rng(0)  # random weights everywhere (the fresh head is zero)
    params = jax.tree.map(
        lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape), s.dtype),
        abstract_params(model, images.shape),
    )
    rates = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, layers.StochasticDepth):
            rates.append(context.module.rate)
        return next_fun(*args, **kwargs)

    @jax.jit
    def forward(params, key):
        with nn.intercept_methods(record):  # records while tracing
            train = model.apply({"params": params}, images, train=True, rngs={"dropout": key})
        plain = model.clone(stochastic_depth=0.0)
        return (
            train,
            model.apply({"params": params}, images),
            plain.apply({"params": params}, images),
        )

    train, evaluated, plain = forward(params, jax.random.key(3))
    np.testing.assert_allclose(rates, [0.0, 0.0, 0.25, 0.25, 0.5, 0.5])
    np.testing.assert_array_equal(evaluated, plain)
    assert np.abs(np.asarray(train) - np.asarray(evaluated)).max() > 1e-3


def test_bfloat16_compute_keeps_float32_parameters_and_logits(tmp_path):
    arrays = official_arrays(tokens=6, classes=5, layer_scale=True, **TINY)
    model = tiny_mixer(5, layer_scale=0.1, dtype=jnp.bfloat16)
    params = load_npz(tmp_path, arrays, model, IMAGES.shape)
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype(np.float32)}
    logits = jax.jit(model.apply)({"params": params}, IMAGES)
    assert logits.dtype == jnp.float32
    reference = reference_logits(arrays, IMAGES, TINY["depth"], TINY["patch"])
    assert relative_error(logits, reference) < 0.05  # bfloat16 keeps ~3 significant digits


def test_bad_settings_and_unknown_variant_are_rejected():
    images = jnp.zeros((1, 8, 8, 3))
    with pytest.raises(ValueError, match="stochastic_depth"):
        tiny_mixer(2, stochastic_depth=1.0).init(jax.random.key(0), images)
    with pytest.raises(ValueError, match="layer_scale"):
        tiny_mixer(2, layer_scale=0.0).init(jax.random.key(0), images)
    with pytest.raises(ValueError, match="not divisible"):
        tiny_mixer(2).init(jax.random.key(0), jnp.zeros((1, 10, 8, 3)))
    with pytest.raises(ValueError, match="B/8"):
        mixer.variant("B/8")


# ------------------------------------------------------- through the registered model


def digits_config(layer_scale=0.5, **overrides):
    config = ml_collections.ConfigDict(
        {
            "model_name": "mixer_classification",
            "dataset_name": "digits",
            "dataset_configs": {"image_size": 8, "shift_pixels": 1},
            "model": {
                "patch_size": (4, 4),
                "hidden_size": 8,
                "num_layers": 2,
                "tokens_mlp_dim": 6,
                "channels_mlp_dim": 16,
                "stochastic_depth": 0.1,
                "layer_scale": layer_scale,
            },
            "batch_size": 16,
            "eval_batch_size": 128,
            "num_training_steps": 4,
            "log_summary_steps": 4,
            "log_eval_steps": 4,
            "checkpoint_steps": 4,
            "optimizer": {"name": "adamw", "weight_decay": 1e-4, "grad_clip_norm": 1.0},
            "lr_configs": {
                "factors": "constant * linear_warmup * linear_decay",
                "base_learning_rate": 3e-3,
                "warmup_steps": 2,
            },
        }
    )
    config.update(overrides)
    return config


def test_init_from_official_npz_through_the_registered_model(tmp_path):
    """A 21-class official-layout file into the 10-class digits model: `init_from` with a
    new head loads every other array as it is; without `reinit` the head is refused."""
    arrays = official_arrays(
        tokens=4,
        classes=21,
        hidden=8,
        tokens_mlp=6,
        channels_mlp=16,
        depth=2,
        patch=4,
        channels=1,
    )
    path = tmp_path / "Mixer-T_4.npz"
    np.savez(path, **arrays)
    config = digits_config(  # no layer scale: the official tree
        layer_scale=None, init_from={"checkpoint": str(path), "reinit": ("head/.*",)}
    )
    config, model_cls = runner.resolve_config(config, MODELS)
    model = model_cls(config, {"num_classes": 10, "input_shape": (-1, 8, 8, 1)})
    shapes = abstract_params(model.flax_model, (1, 8, 8, 1))
    fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    params, summary = pretrained_init.from_config(fresh, config.init_from)
    flat = pretrained_init.flatten(params)
    assert sorted(summary.loaded) == sorted(k for k in arrays if not k.startswith("head/"))
    for name in summary.loaded:
        np.testing.assert_array_equal(flat[name], arrays[name])
    assert sorted(summary.reinitialised) == ["head/bias", "head/kernel"]
    assert flat["head/kernel"].shape == (8, 10)

    del config.init_from["reinit"]
    with pytest.raises(pretrained_init.PretrainedInitError) as error:
        pretrained_init.from_config(fresh, config.init_from)
    assert "head/kernel: checkpoint (8, 21) != model (8, 10)" in str(error.value)


def test_a_wrong_file_gets_one_error_naming_every_problem(tmp_path):
    arrays = official_arrays(tokens=6, classes=5, **TINY)
    del arrays["MixerBlock_1/token_mixing/Dense_0/kernel"], arrays["pre_head_layer_norm/scale"]
    arrays["stem/kernel"] = arrays["stem/kernel"][:2]  # 2x4 patches
    arrays["MixerBlock_0/token_mixing/Dense_1/kernel"] = np.zeros((10, 9), np.float32)
    arrays["MixerBlock_2/LayerNorm_0/scale"] = np.ones(12, np.float32)  # a deeper model's
    with pytest.raises(pretrained_init.PretrainedInitError) as error:
        load_npz(tmp_path, arrays, tiny_mixer(5), IMAGES.shape)
    message = str(error.value)
    assert "(5 problems)" in message
    for name in (
        "MixerBlock_1/token_mixing/Dense_0/kernel: missing",
        "pre_head_layer_norm/scale: missing",
        "stem/kernel: checkpoint (2, 4, 3, 12) != model (4, 4, 3, 12)",
        "MixerBlock_0/token_mixing/Dense_1/kernel: checkpoint (10, 9) != model (10, 6)",
        "MixerBlock_2/LayerNorm_0/scale: in checkpoint, not used",
    ):
        assert name in message


def test_config_keys_are_checked():
    config = digits_config()
    config.model.token_mlp_dim = 8
    with pytest.raises(ConfigError, match=r"model\.token_mlp_dim.*tokens_mlp_dim"):
        runner.resolve_config(config, MODELS)
    keys = set(MODELS["mixer_multilabel_classification"].model_config_keys())
    assert keys == set(MODELS["mixer_classification"].model_config_keys())
    assert {"tokens_mlp_dim", "channels_mlp_dim", "layer_scale", "stochastic_depth"} <= keys
