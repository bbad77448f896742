"""BiT: Hugging Face's BiT loaded from an official-layout .npz gives the same logits, units
against a NumPy float64 re-implementation of the published arithmetic, closed-form parameter
counts, head replacement, bad files, the HyperRule config and training through the core."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scenic.common_lib import config_utils, runner
from scenic.common_lib.debug_utils import count_parameters
from scenic.train_lib import pretrained_init, trainer
from scenic.train_lib.pretrained_init import PretrainedInitError
from scenic_baselines import bit, bit_weights, vit_hybrid
from scenic_baselines.models import MODELS

# BiT units per stage (big_transfer bit_pytorch KNOWN_MODELS), by depth.
PUBLISHED_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def closed_form_bit_count(depth, width_factor, classes=1000, channels=3, base=64):
    """Trainable parameters of BiT-R{depth}x{width_factor} counted by hand: bias-free
    convolutions, a scale and a bias per GroupNorm channel (each unit normalises its input,
    its two bottleneck maps, and the trunk ends with one more), the linear head."""
    width = base * width_factor
    total = 7 * 7 * channels * width  # root conv; no norm before the pool
    cin = width
    for stage, units in enumerate(PUBLISHED_BLOCKS[depth]):
        mid, out = width * 2**stage, 4 * width * 2**stage
        for unit in range(units):
            total += 2 * cin + cin * mid + 2 * mid + 9 * mid * mid + 2 * mid + mid * out
            if unit == 0:
                total += cin * out  # projection shortcut
            cin = out
    return total + 2 * cin + cin * classes + classes


def abstract_params(model, shape=(1, 32, 32, 3)):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))["params"]


def assert_close(ours, reference, rtol=1e-4):
    """Equal within `rtol` of the reference's largest magnitude."""
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.shape == reference.shape
    scale = np.abs(reference).max()
    assert scale > 0
    np.testing.assert_allclose(ours, reference, rtol=0, atol=rtol * scale)


def differs(ours, reference, rtol=1e-2) -> bool:
    return np.abs(np.asarray(ours) - reference).max() > rtol * np.abs(reference).max()


@pytest.mark.parametrize("depth", sorted(PUBLISHED_BLOCKS))
@pytest.mark.parametrize("width_factor", [1, 2, 3, 4])
def test_parameter_counts_at_the_imagenet_head(depth, width_factor):
    params = abstract_params(bit.BiT(1000, num_layers=depth, width_factor=width_factor))
    assert count_parameters(params) == closed_form_bit_count(depth, width_factor)
    assert params["conv_root"]["kernel"].shape == (7, 7, 3, 64 * width_factor)
    if (depth, width_factor) == (50, 1):
        assert count_parameters(params) == 25_549_352


# ------------------------------------------------------- NumPy float64 reference units


def np_standardize(w, eps, formula):
    w = w.astype(np.float64)
    centered = w - w.mean(axis=(0, 1, 2), keepdims=True)
    var = (centered**2).mean(axis=(0, 1, 2), keepdims=True)
    if formula == "sqrt(var+eps)":
        return centered / np.sqrt(var + eps)
    return centered / (np.sqrt(var) + eps)


def np_conv(x, w, stride, padding):
    """NHWC x HWIO, bias-free: 'symmetric' pads k // 2 on each side, 'same' as TF."""
    kh, kw = w.shape[:2]
    pads = []
    for size, k in zip(x.shape[1:3], (kh, kw), strict=True):
        if padding == "symmetric":
            pads.append((k // 2, k // 2))
        else:
            total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
            pads.append((total // 2, total - total // 2))
    x = np.pad(x, ((0, 0), *pads, (0, 0)))
    out_h, out_w = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, w.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            window = x[
                :,
                i : i + stride * (out_h - 1) + 1 : stride,
                j : j + stride * (out_w - 1) + 1 : stride,
            ]
            out += window @ w[i, j]
    return out


def np_group_norm(x, params, groups, eps):
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    g = (g - mean) / np.sqrt(var + eps)
    return g.reshape(x.shape) * params["scale"] + params["bias"]


def np_unit(x, p, stride, preactivation, a: bit.Arithmetic):
    """A bottleneck unit as BiT (pre-activation) or vit_jax's ResidualUnit describe it."""

    def conv(name, y, s=1):
        return np_conv(
            y, np_standardize(p[name]["kernel"], a.ws_epsilon, a.ws_formula), s, a.padding
        )

    def gn(name, y):
        return np_group_norm(y, p[name], a.num_groups, a.gn_epsilon)

    relu = lambda y: np.maximum(y, 0)
    if preactivation:
        y = relu(gn("gn1", x))
        shortcut = conv("conv_proj", y, stride) if "conv_proj" in p else x
        y = conv("conv2", relu(gn("gn2", conv("conv1", y))), stride)
        return conv("conv3", relu(gn("gn3", y))) + shortcut
    shortcut = gn("gn_proj", conv("conv_proj", x, stride)) if "conv_proj" in p else x
    y = relu(gn("gn1", conv("conv1", x)))
    y = relu(gn("gn2", conv("conv2", y, stride)))
    return relu(gn("gn3", conv("conv3", y)) + shortcut)


def random_params(abstract, kernel_std, seed=0):
    """Kernels N(0.3 kernel_std, kernel_std^2) per weight (a non-zero mean, so standardising
    matters), GroupNorm scales in [0.5, 1.5), biases N(0, 0.3^2)."""
    rng = np.random.default_rng(seed)

    def value(path, leaf):
        name = jax.tree_util.keystr(path[-1:], simple=True)
        if name == "kernel":
            return (kernel_std * (0.3 + rng.normal(size=leaf.shape))).astype(np.float32)
        if name == "bias":
            return (0.3 * rng.normal(size=leaf.shape)).astype(np.float32)
        return (0.5 + rng.random(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(value, abstract)


# Official arithmetic (verified in the sources, see bit.py): BiT's units are pre-activation
# with symmetric padding; vit_jax's hybrid units post-activation with 'SAME' padding.
OFFICIAL = {
    "bit": (True, bit.Arithmetic("symmetric", 4, 1e-5, 1e-10, "sqrt(var+eps)", "xla")),
    "vit_hybrid": (False, bit.Arithmetic("same", 4, 1e-6, 1e-5, "std+eps", "auto")),
}


@pytest.mark.parametrize("variant", sorted(OFFICIAL))
def test_a_unit_matches_a_float64_reference_of_the_published_arithmetic(variant):
    """A strided unit with a projection, on an even x odd map, against NumPy float64. The
    kernels' spread is set so that each variant's weight-standardisation epsilon is not
    negligible (std 1e-5 for BiT's 1e-10 added to the variance, 1e-4 for vit_jax's 1e-5
    added to the std); the other formula, other padding and another GroupNorm epsilon are
    the negative controls. The models' defaults are these published values."""
    preactivation, arithmetic = OFFICIAL[variant]
    unit = bit.BottleneckUnit(8, 2, preactivation, arithmetic)
    x = np.random.default_rng(1).normal(size=(2, 10, 9, 16)).astype(np.float32)
    kernel_std = 1e-5 if variant == "bit" else 1e-4
    params = random_params(
        jax.eval_shape(lambda: unit.init(jax.random.key(0), x))["params"], kernel_std
    )
    assert "conv_proj" in params
    ours = jax.jit(unit.apply)({"params": params}, x)
    x64 = x.astype(np.float64)
    reference = np_unit(x64, params, 2, preactivation, arithmetic)
    assert ours.shape == (2, 5, 5, 32)
    assert_close(ours, reference)
    other_formula = "std+eps" if arithmetic.ws_formula == "sqrt(var+eps)" else "sqrt(var+eps)"
    other_padding = "same" if arithmetic.padding == "symmetric" else "symmetric"
    for change in (
        {"ws_formula": other_formula},
        {"padding": other_padding},
        {"gn_epsilon": 1.0},
    ):
        wrong = bit.Arithmetic(**{**vars(arithmetic), **change})
        assert differs(ours, np_unit(x64, params, 2, preactivation, wrong)), change
    model = bit.BiT(1000) if variant == "bit" else vit_hybrid.ViTHybrid(1000)
    defaults = (model.gn_epsilon, model.ws_epsilon, model.ws_formula, model.num_groups)
    assert defaults == (arithmetic.gn_epsilon, arithmetic.ws_epsilon, arithmetic.ws_formula, 32)
    assert variant == "bit" or model.padding == arithmetic.padding


def test_standardize_kernel_formulas():
    kernel = 1e-4 * np.random.default_rng(2).normal(size=(3, 3, 4, 5)).astype(np.float32) + 1e-4
    for formula, eps in (("sqrt(var+eps)", 1e-10), ("std+eps", 1e-5), ("sqrt(var+eps)", 1e-8)):
        ours = np.asarray(bit.standardize_kernel(jnp.asarray(kernel), eps, formula))
        np.testing.assert_allclose(ours, np_standardize(kernel, eps, formula), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="ws_formula"):
        bit.standardize_kernel(jnp.asarray(kernel), 1e-5, "std")


# ------------------------------------------------------- Hugging Face, official .npz layout


def randomized_hf_bit(depths, width, groups, classes, channels=3):
    """`transformers.BitForImageClassification` (pre-activation, BiT's layout) with random
    GroupNorm affine parameters and kernels given a per-channel offset (so that weight
    standardisation's mean subtraction matters)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.BitConfig(
        layer_type="preactivation",
        num_channels=channels,
        embedding_size=width,
        hidden_sizes=[4 * width * 2**i for i in range(4)],
        depths=list(depths),
        num_groups=groups,
        num_labels=classes,
    )
    torch.manual_seed(0)
    model = transformers.BitForImageClassification(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.3) if name.endswith("bias") else param.uniform_(0.5, 1.5)
            elif param.ndim == 4:
                param.add_(0.5 * param.std() * torch.randn(param.shape[0], 1, 1, 1))
    return model


def official_bit_npz(hf_model, path):
    """Writes `hf_model`'s weights under the official BiT .npz names and layouts (HWIO
    kernels, [C] GroupNorm gamma / beta, the head a [1, 1, C, classes] conv kernel), as
    big_transfer's bit_pytorch `load_from` reads them."""
    sd = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    hwio = lambda w: w.transpose(2, 3, 1, 0)
    out = {
        "resnet/root_block/standardized_conv2d/kernel": hwio(sd["bit.embedder.convolution.weight"]),
        "resnet/group_norm/gamma": sd["bit.norm.weight"],
        "resnet/group_norm/beta": sd["bit.norm.bias"],
        "resnet/head/conv2d/kernel": sd["classifier.1.weight"].T[None, None],
        "resnet/head/conv2d/bias": sd["classifier.1.bias"],
    }
    for key, value in sd.items():
        parts = key.split(".")
        if parts[:3] != ["bit", "encoder", "stages"]:
            continue
        unit = f"resnet/block{int(parts[3]) + 1}/unit{int(parts[5]) + 1:02d}"
        layer, leaf = parts[6], parts[-1]
        if layer == "downsample":
            out[f"{unit}/a/proj/standardized_conv2d/kernel"] = hwio(value)
            continue
        group = "abc"[int(layer[-1]) - 1]
        if layer.startswith("conv"):
            out[f"{unit}/{group}/standardized_conv2d/kernel"] = hwio(value)
        else:
            out[f"{unit}/{group}/group_norm/{'gamma' if leaf == 'weight' else 'beta'}"] = value
    np.savez(path, **out)
    return out


def hf_logits(model, images):
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(images).permute(0, 3, 1, 2)).logits.numpy()


TINY_BIT = dict(num_layers=50, num_filters=8, num_groups=4, ws_epsilon=1e-8)  # HF's WS eps
IMAGES = np.random.default_rng(0).normal(size=(2, 37, 42, 3)).astype(np.float32)


def init_from(params, path, **settings):
    """What the trainer does with `config.init_from` (the format detected from the file)."""
    config = ml_collections.ConfigDict({"checkpoint": str(path), **settings})
    return pretrained_init.from_config(params, config)


@pytest.fixture(scope="module")
def hf_bit_npz(tmp_path_factory):
    """(HF model, path of its official-layout .npz): BiT-R50's structure at width 8."""
    hf = randomized_hf_bit(PUBLISHED_BLOCKS[50], width=8, groups=4, classes=7)
    path = tmp_path_factory.mktemp("bit") / "BiT-tiny-R50.npz"
    official_bit_npz(hf, path)
    return hf, path


def test_official_npz_gives_hugging_face_logits(hf_bit_npz):
    """HF's BiT (an independent implementation) with random weights, written in the official
    .npz layout and read by `init_from` (format detected): the same logits to 1e-4 on
    37 x 42 images (odd and even sizes at the stride-2 layers). HF's model with PyTorch's
    -inf max-pool padding instead of BiT's zeros ("subtly not the same", bit_pytorch) is
    the negative control."""
    import torch

    hf, path = hf_bit_npz
    assert pretrained_init.detect_format(path) == "bit_npz"
    model = bit.BiT(7, **TINY_BIT)
    params, summary = init_from(abstract_params(model), path)
    assert not summary.missing and not summary.unused
    ours = jax.jit(model.apply)({"params": params}, IMAGES)
    reference = hf_logits(hf, IMAGES)
    assert_close(ours, reference)

    hf.bit.embedder.pad = torch.nn.Identity()
    hf.bit.embedder.pooler = torch.nn.MaxPool2d(3, 2, padding=1)
    try:
        assert differs(hf_logits(hf, IMAGES), reference)
    finally:
        hf.bit.embedder.pad = torch.nn.ConstantPad2d(1, 0.0)
        hf.bit.embedder.pooler = torch.nn.MaxPool2d(3, 2)


def test_head_replacement_keeps_every_trunk_weight(hf_bit_npz):
    """A 3-class BiT from the 7-class file with `reinit=('head/.*',)`: the trunk as in the
    file, the head as the model initialised it; without reinit the error names the head."""
    _, path = hf_bit_npz
    seven, _ = init_from(abstract_params(bit.BiT(7, **TINY_BIT)), path)
    model = bit.BiT(3, **TINY_BIT)
    fresh = jax.tree.map(lambda a: np.full(a.shape, 0.5, a.dtype), abstract_params(model))
    params, summary = init_from(fresh, path, reinit=("head/.*",))
    assert sorted(summary.reinitialised) == ["head/bias", "head/kernel"]
    np.testing.assert_array_equal(params["head"]["kernel"], 0.5)
    assert params["head"]["kernel"].shape == (8 * 32, 3)
    trunk = {k: v for k, v in params.items() if k != "head"}
    jax.tree.map(
        np.testing.assert_array_equal, trunk, {k: v for k, v in seven.items() if k != "head"}
    )
    with pytest.raises(PretrainedInitError) as error:
        init_from(abstract_params(model), path)
    assert "head/kernel" in str(error.value) and "head/bias" in str(error.value)


def test_a_wrong_file_gets_one_error_naming_every_bad_array(hf_bit_npz, tmp_path):
    _, path = hf_bit_npz
    arrays = bit_weights.read_npz(path)
    del arrays["resnet/block2/unit03/b/group_norm/gamma"]
    del arrays["resnet/block4/unit01/a/proj/standardized_conv2d/kernel"]
    arrays["resnet/block3/unit02/c/standardized_conv2d/kernel"] = np.zeros((1, 1, 3, 3))
    arrays["resnet/block1/unit01/d/standardized_conv2d/kernel"] = np.zeros(3)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ValueError) as error:
        init_from(abstract_params(bit.BiT(7, **TINY_BIT)), bad)
    message = str(error.value)
    assert bit_weights.FORMATS["bit_npz"] in message  # what the file was read as
    for name in (
        "block2/unit3/gn2/scale",  # missing
        "block4/unit1/conv_proj/kernel",  # missing
        "block3/unit2/conv3/kernel",  # mis-shaped
        "resnet/block1/unit01/d/standardized_conv2d/kernel",  # not a BiT array
    ):
        assert name in message, name
    assert message.count("\n") >= 4  # one line each, in one error


def test_official_names_map_onto_ours():
    assert bit_weights.bit_name("resnet/block3/unit12/a/proj/standardized_conv2d/kernel") == (
        "block3/unit12/conv_proj/kernel"
    )
    assert bit_weights.bit_name("resnet/block1/unit01/b/group_norm/beta") == "block1/unit1/gn2/bias"
    assert bit_weights.bit_name("resnet/block1/unit01/a/proj/group_norm/beta") is None
    assert (
        bit_weights.bit_name("resnet/root_block/standardized_conv2d/kernel") == "conv_root/kernel"
    )


# ------------------------------------------------------- configs and training


def hyper_rule_lr(step, base_lr=0.003):
    """BiT-HyperRule's learning rate for update `step` (from 0) on a data set of over 500k
    images (big_transfer bit_hyperrule.py, re-stated): linear warm-up over 500 steps, then
    /10 after each of 6000, 12000 and 18000 steps; 20000 steps in all."""
    if step < 500:
        return base_lr * step / 500
    return base_lr / 10 ** sum(s < step for s in (6000, 12_000, 18_000))


def test_bit_m_r50x1_config_is_the_hyper_rule(tmp_path):
    from scenic.train_lib import lr_schedules

    config = config_utils.load_config("bit_m_r50x1_imagenet", "scenic_baselines.configs")
    config.init_from.checkpoint = str(tmp_path)  # the BiT-M-R50x1.npz, set on the command line
    config, model_cls = runner.resolve_config(config, MODELS)
    assert model_cls is MODELS["bit_classification"]
    model = bit.build_bit(config.model, 1000)
    assert count_parameters(abstract_params(model)) == closed_form_bit_count(50, 1)
    assert config.batch_size == 512 and config.num_training_steps == 20_000
    assert config.mixup.mixup_alpha == 0.1 and not config.optimizer.get("weight_decay")
    assert tuple(config.init_from.reinit) == ("head/.*",)
    schedule = lr_schedules.compound_schedule(config.lr_configs, config.num_training_steps)
    # Away from the three decay steps, where "after" and "from" differ by one step.
    for step in (0, 250, 499, 500, 3000, 5999, 6002, 9000, 12_002, 15_000, 18_002, 19_999):
        assert float(schedule(step)) == pytest.approx(hyper_rule_lr(step), rel=1e-5), step


DIGITS_MODEL = {"num_layers": 14, "num_filters": 8, "num_groups": 4}


def test_bit_classification_fine_tunes_from_an_official_npz_through_the_core_trainer(tmp_path):
    """The registered model on digits (10 classes) from a 7-class one-channel BiT file:
    `init_from` loads the trunk, a new head is trained, the run completes."""
    hf = randomized_hf_bit((1, 1, 1, 1), width=8, groups=4, classes=7, channels=1)
    arrays = official_bit_npz(hf, tmp_path / "bit.npz")
    config = ml_collections.ConfigDict(
        {
            "model_name": "bit_classification",
            "dataset_name": "digits",
            "dataset_configs": {"image_size": 16, "shift_pixels": 1},
            "model": DIGITS_MODEL,
            "init_from": {"checkpoint": str(tmp_path / "bit.npz"), "reinit": ("head/.*",)},
            "batch_size": 16,
            "eval_batch_size": 128,
            "num_training_steps": 3,
            "log_summary_steps": 3,
            "log_eval_steps": 3,
            "checkpoint_steps": 3,
            "optimizer": {"name": "sgd", "momentum": 0.9},
            "lr_configs": {"factors": "constant", "base_learning_rate": 0.01},
        }
    )
    config, model_cls = runner.resolve_config(config, MODELS)
    workdir = tmp_path / "run"
    result = trainer.train(
        model_cls=model_cls, dataset=runner.build_dataset(config), config=config, workdir=workdir
    )
    assert result.completed and result.exit_code == 0
    assert np.isfinite(result.metrics["loss"]) and 0.0 <= result.metrics["accuracy"] <= 1.0
    params = result.state["params"]
    assert np.abs(np.asarray(params["head"]["kernel"])).max() > 0  # the zero head moved
    loaded = arrays["resnet/block2/unit01/a/proj/standardized_conv2d/kernel"]
    trained = np.asarray(params["block2"]["unit1"]["conv_proj"]["kernel"])
    assert np.abs(trained - loaded).max() < 0.1 * np.abs(loaded).max()  # started from the file
    assert (workdir / "final_metrics.json").exists()


def test_digits_config_resolves():
    config = config_utils.load_config("bit_digits", "scenic_baselines.configs")
    _, model_cls = runner.resolve_config(config, MODELS)
    assert model_cls is MODELS["bit_classification"]
