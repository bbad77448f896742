"""ResNet v1.5: published parameter counts, equality with Hugging Face's ResNet (weights
converted both ways), feature maps and strides, zero-initialised last BatchNorm scales,
frozen and synchronised BatchNorm, and a few training steps through the core trainer."""

import math
import re
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scenic.common_lib import config_utils, runner
from scenic.common_lib.config_utils import ConfigError
from scenic.common_lib.debug_utils import count_parameters
from scenic.train_lib import optimizers
from scenic_baselines import resnet
from scenic_baselines.models import MODELS

# torchvision's published counts (torchvision.models.resnet*, 1000 classes).
TORCHVISION_COUNTS = {
    18: 11_689_512,
    34: 21_797_672,
    50: 25_557_032,
    101: 44_549_160,
    152: 60_192_808,
}


def closed_form_count(depth: int, width: int = 64, classes: int = 1000, channels: int = 3) -> int:
    """Trainable parameters of ResNet-`depth` v1.5 counted by hand: convolutions without
    bias, a scale and a bias per BatchNorm channel, the linear head."""
    blocks, bottleneck = resnet.BLOCK_SIZES[depth]
    total = 7 * 7 * channels * width + 2 * width  # stem conv + BN
    cin = width
    for stage, n in enumerate(blocks):
        f = width * 2**stage
        out = 4 * f if bottleneck else f
        for b in range(n):
            if bottleneck:
                total += cin * f + 9 * f * f + f * out + 2 * (f + f + out)
            else:
                total += 9 * cin * f + 9 * f * f + 2 * (f + f)
            if cin != out or (stage > 0 and b == 0):
                total += cin * out + 2 * out
            cin = out
    return total + cin * classes + classes


def abstract_variables(model, shape=(1, 32, 32, 3)):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))


def random_like(abstract, seed=0):
    """Random values for an abstract variable tree, without compiling `init` (random
    initialisers take XLA:CPU seconds to compile): kernels N(0, 1 / fan-in), BatchNorm
    means and biases N(0, 0.1^2), variances and scales in [0.5, 1.5) (none zero)."""
    rng = np.random.default_rng(seed)

    def value(path, leaf):
        name = jax.tree_util.keystr(path[-1:], simple=True)
        if name == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            return (rng.normal(size=leaf.shape) / math.sqrt(fan_in)).astype(leaf.dtype)
        if name in ("mean", "bias"):
            return (0.1 * rng.normal(size=leaf.shape)).astype(leaf.dtype)
        return (0.5 + rng.random(leaf.shape)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(value, abstract)


@pytest.mark.parametrize("depth", sorted(resnet.BLOCK_SIZES))
def test_parameter_counts(depth):
    variables = abstract_variables(resnet.ResNet(num_classes=1000, num_layers=depth))
    count = count_parameters(variables["params"])  # batch_stats are not parameters
    assert count == closed_form_count(depth)
    if depth in TORCHVISION_COUNTS:
        assert count == TORCHVISION_COUNTS[depth]
    assert variables["params"]["stem_conv"]["kernel"].shape == (7, 7, 3, 64)


def test_resnet50_config_has_published_parameter_count():
    config = config_utils.load_config("resnet50_imagenet", "scenic_baselines.configs")
    model = resnet.build_resnet(config.model, num_classes=1000)
    assert count_parameters(abstract_variables(model)["params"]) == 25_557_032
    assert model.bn_axis_name == "batch"  # the trainer's pmap axis: synchronised BN
    # The published recipe: lr 0.1 x B / 256, 5 warm-up epochs of 1,281,167 images.
    assert config.lr_configs.base_learning_rate == pytest.approx(0.1 * config.batch_size / 256)
    assert config.lr_configs.warmup_steps == math.ceil(5 * 1_281_167 / config.batch_size)


def test_model_rejects_unknown_depth_and_conv_impl():
    x = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match="num_layers"):
        resnet.ResNet(num_classes=2, num_layers=42).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="conv_impl"):
        resnet.ResNet(num_classes=2, num_layers=18, conv_impl="fft").init(jax.random.key(0), x)


# ------------------------------------------------------- convolutions


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "channels"),
    [
        (9, 3, 1, (5, 6)),
        (9, 3, 2, (5, 6)),
        (2, 3, 1, (8, 4)),
        (1, 3, 2, (4, 4)),
        (11, 7, 2, (3, 5)),
        (7, 1, 2, (6, 3)),
        (5, 1, 1, (6, 3)),
    ],
)
def test_every_conv_impl_equals_torch_conv2d(size, kernel, stride, channels):
    """Odd sizes at stride 2 and outputs smaller than the kernel (where 'auto' switches to
    im2col) against PyTorch's conv2d with padding k // 2, and the max-pool likewise."""
    torch = pytest.importorskip("torch")
    cin, cout = channels
    rng = np.random.default_rng(size * kernel + stride)
    x = rng.normal(size=(2, size, size + 2, cin)).astype(np.float32)
    w = rng.normal(size=(kernel, kernel, cin, cout)).astype(np.float32)
    reference = torch.nn.functional.conv2d(
        torch.from_numpy(x).permute(0, 3, 1, 2),
        torch.from_numpy(w).permute(3, 2, 0, 1),
        stride=stride,
        padding=kernel // 2,
    ).permute(0, 2, 3, 1)
    for impl in resnet.CONV_IMPLS:
        ours = jax.jit(resnet.conv2d, static_argnums=(2, 3))(x, w, stride, impl)
        np.testing.assert_allclose(ours, reference.numpy(), rtol=1e-5, atol=1e-4, err_msg=impl)
    pooled = torch.nn.functional.max_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), 3, 2, 1)
    for impl in ("xla", "auto"):  # flax.linen.max_pool, nine slices
        ours = jax.jit(resnet.max_pool_3x3_s2, static_argnums=1)(x, impl)
        np.testing.assert_array_equal(ours, pooled.permute(0, 2, 3, 1).numpy(), err_msg=impl)


# ------------------------------------------------------- Hugging Face reference


def randomized_hf_resnet(depth: int, width: int, classes: int, **config):
    """A `transformers` ResNetForImageClassification with random weights, BatchNorm
    affine parameters and running statistics (so eval-mode BN is not the identity)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    blocks, bottleneck = resnet.BLOCK_SIZES[depth]
    expansion = 4 if bottleneck else 1
    hf_config = transformers.ResNetConfig(
        embedding_size=width,
        hidden_sizes=[expansion * width * 2**i for i in range(4)],
        depths=list(blocks),
        layer_type="bottleneck" if bottleneck else "basic",
        num_labels=classes,
        **config,
    )
    torch.manual_seed(depth)
    model = transformers.ResNetForImageClassification(hf_config).eval()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0.0, 0.3)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
        for name, param in model.named_parameters():
            if "normalization" in name:
                param.normal_(0.0, 0.3) if name.endswith("bias") else param.uniform_(0.5, 1.5)
    return model


def hf_outputs(model, images):
    """(logits, [stem, stage_1 .. stage_4] NHWC) of a `transformers` ResNet on NHWC images."""
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(images).permute(0, 3, 1, 2), output_hidden_states=True)
    maps = [h.permute(0, 2, 3, 1).numpy() for h in out.hidden_states]
    return out.logits.numpy(), maps


def assert_close(ours, reference, rtol=1e-4):
    """Equal within `rtol` of the reference's largest magnitude."""
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.shape == reference.shape
    scale = np.abs(reference).max()
    assert scale > 0
    np.testing.assert_allclose(ours, reference, rtol=0, atol=rtol * scale)


IMAGES = np.random.default_rng(0).normal(size=(2, 40, 56, 3)).astype(np.float32)
FEATURE_KEYS = ("stem", "stage_1", "stage_2", "stage_3", "stage_4")


def test_resnet50_matches_hugging_face_in_eval_mode():
    """ResNet-50's structure at width 8 on 40x56 images (odd sizes, so every stride-2 layer
    rounds up), HF weights converted: logits and every feature map equal to 1e-4. HF's
    ResNet v1 variant (stride on the bottleneck's 1x1) with the same weights is the
    negative control."""
    hf = randomized_hf_resnet(50, width=8, classes=7)
    state_dict = hf.state_dict()
    variables = resnet.params_from_hf_resnet(state_dict)
    model = resnet.ResNet(num_classes=7, num_layers=50, num_filters=8, return_features=True)
    ours = jax.jit(model.apply)(variables, IMAGES)
    logits, maps = hf_outputs(hf, IMAGES)
    assert_close(ours["logits"], logits)
    for key, reference in zip(FEATURE_KEYS, maps, strict=True):
        assert_close(ours[key], reference)
        stride = resnet.FEATURE_STRIDES[key]
        assert ours[key].shape[1:3] == (-(-40 // stride), -(-56 // stride))
    np.testing.assert_allclose(ours["pre_logits"], maps[-1].mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)

    v1 = randomized_hf_resnet(50, width=8, classes=7, downsample_in_bottleneck=True)
    v1.load_state_dict(state_dict)
    v1_logits, _ = hf_outputs(v1, IMAGES)
    assert np.abs(v1_logits - logits).max() > 1e-2 * np.abs(logits).max()


def test_our_weights_load_into_hugging_face_resnet18():
    """The other direction, on basic blocks: our variables (random, BN statistics too)
    converted to a HF state dict give HF's model our outputs; converting back gives the
    same variables."""
    import torch

    model = resnet.ResNet(num_classes=5, num_layers=18, num_filters=4)
    variables = random_like(abstract_variables(model, IMAGES.shape))
    state_dict = resnet.hf_resnet_state_dict(variables, prefix="resnet.")
    hf = randomized_hf_resnet(18, width=4, classes=5)
    missing, unexpected = hf.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, strict=False
    )
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    logits, _ = hf_outputs(hf, IMAGES)
    assert_close(jax.jit(model.apply)(variables, IMAGES), logits)
    back = resnet.params_from_hf_resnet(state_dict)
    jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, variables))


def test_converter_reads_a_prefixed_backbone_and_rejects_unknown_keys():
    """DETR's HF backbone sits under a prefix beside keys of the same shape that are not
    the ResNet's (its transformer `encoder`); only the prefixed ones are read."""
    model = resnet.ResNet(num_classes=None, num_layers=26, num_filters=4)
    variables = random_like(abstract_variables(model, IMAGES.shape))
    prefix = "model.backbone.model."  # DetrForObjectDetection, transformers 5
    state_dict = resnet.hf_resnet_state_dict(variables, prefix=prefix)
    assert "head" not in variables["params"] and not any("classifier" in k for k in state_dict)
    state_dict["model.encoder.layers.0.fc1.weight"] = np.zeros((3, 3))
    back = resnet.params_from_hf_resnet(state_dict, prefix=prefix)
    jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, variables))
    state_dict[prefix + "encoder.stages.0.layers.0.extra.weight"] = np.zeros(3)
    with pytest.raises(ValueError, match="extra"):
        resnet.params_from_hf_resnet(state_dict, prefix=prefix)
    with pytest.raises(ValueError, match="No Hugging Face ResNet weights"):
        resnet.params_from_hf_resnet(state_dict, prefix="backbone.")


# ------------------------------------------------------- structure


@pytest.mark.parametrize("depth", [18, 26])
def test_feature_maps_keys_strides_and_channels(depth):
    _, bottleneck = resnet.BLOCK_SIZES[depth]
    expansion = 4 if bottleneck else 1
    kwargs = dict(num_classes=3, num_layers=depth, num_filters=4)
    shape = (2, 64, 96, 3)
    features_model = resnet.ResNet(return_features=True, **kwargs)
    variables = abstract_variables(features_model, shape)
    features = jax.eval_shape(lambda v: features_model.apply(v, jnp.zeros(shape)), variables)
    assert set(features) == {*resnet.FEATURE_STRIDES, "pre_logits", "logits"}
    for key, stride in resnet.FEATURE_STRIDES.items():
        stage = 0 if key == "stem" else int(key[-1])
        channels = 4 if stage == 0 else 4 * expansion * 2 ** (stage - 1)
        assert features[key].shape == (2, 64 // stride, 96 // stride, channels), key
    assert features["pre_logits"].shape == (2, 32 * expansion)
    assert features["logits"].shape == (2, 3)
    # Same parameters in both modes, so one checkpoint serves classifier and backbone.
    plain = abstract_variables(resnet.ResNet(**kwargs), shape)
    assert jax.tree.structure(plain) == jax.tree.structure(variables)
    headless = abstract_variables(resnet.ResNet(**{**kwargs, "num_classes": None}), shape)
    assert "head" not in headless["params"]


@pytest.mark.parametrize("depth", [18, 26])
def test_last_batch_norm_scale_of_each_block_starts_at_zero(depth, monkeypatch):
    # Zero convolution kernels: compiling ~30 random draws takes XLA:CPU 10+ s, and only
    # the BatchNorm scales matter here (the kernels' initialiser is tested below).
    monkeypatch.setattr(resnet, "conv_kernel_init", nn.initializers.zeros)
    model = resnet.ResNet(num_classes=3, num_layers=depth, num_filters=4)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    last = "bn3" if resnet.BLOCK_SIZES[depth][1] else "bn2"
    blocks = [name for name in params if name.startswith("stage_")]
    assert len(blocks) == sum(resnet.BLOCK_SIZES[depth][0])
    for name in blocks:
        for bn, values in params[name].items():
            if "bn" in bn:
                expected = 0.0 if bn == last else 1.0
                np.testing.assert_array_equal(values["scale"], expected, err_msg=f"{name}/{bn}")
                np.testing.assert_array_equal(values["bias"], 0.0, err_msg=f"{name}/{bn}")
    np.testing.assert_array_equal(params["stem_bn"]["scale"], 1.0)


def test_convolution_kernels_use_he_initialisation():
    """Normal with variance 2 / fan-out (torchvision's kaiming_normal_, mode='fan_out')."""
    kernel = resnet.conv_kernel_init(jax.random.key(0), (3, 3, 64, 128))
    np.testing.assert_allclose(np.std(kernel), math.sqrt(2 / (3 * 3 * 128)), rtol=0.02)
    assert abs(float(np.mean(kernel))) < 1e-3


# ------------------------------------------------------- BatchNorm modes


TINY = dict(num_classes=3, num_layers=10, num_filters=4)
SMALL_IMAGES = jax.random.normal(jax.random.key(7), (8, 32, 32, 3))


def jitted(module, train=False):
    """`module.apply(variables, images)` jitted; in training also the new batch_stats."""
    if train:
        return jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"]))
    return jax.jit(module.apply)


def test_frozen_batch_norm_uses_and_keeps_running_statistics():
    frozen = resnet.ResNet(freeze_batch_norm=True, **TINY)
    variables = random_like(abstract_variables(frozen))
    eval_logits = jitted(frozen)(variables, SMALL_IMAGES)
    train_logits, updated = jitted(frozen, train=True)(variables, SMALL_IMAGES)
    np.testing.assert_array_equal(train_logits, eval_logits)
    jax.tree.map(np.testing.assert_array_equal, updated["batch_stats"], variables["batch_stats"])
    # Negative control: unfrozen, training normalises with the batch and moves the averages.
    plain_logits, moved = jitted(resnet.ResNet(**TINY), train=True)(variables, SMALL_IMAGES)
    assert np.abs(plain_logits - eval_logits).max() > 1e-3
    stem_mean = variables["batch_stats"]["stem_bn"]["mean"]
    assert np.abs(moved["batch_stats"]["stem_bn"]["mean"] - stem_mean).max() > 1e-3


def test_frozen_batch_norm_regex_freezes_exactly_the_batch_norm_parameters():
    model = resnet.ResNet(**TINY)
    params = random_like(abstract_variables(model))["params"]
    names = {
        optimizers.param_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    bn_names = {n for n in names if "bn" in n.split("/")[-2]}
    assert bn_names and all(n.endswith(("/scale", "/bias")) for n in bn_names)
    matched = {n for n in names if re.fullmatch(resnet.FROZEN_BATCH_NORM_PARAMS, n)}
    assert matched == bn_names
    config = ml_collections.ConfigDict(
        {"name": "sgd", "momentum": 0.9, "frozen_params": (resnet.FROZEN_BATCH_NORM_PARAMS,)}
    )
    tx = optimizers.get_optimizer(config, 0.1)
    grads = jax.tree.map(np.ones_like, params)
    updates = jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(grads, params)
    new = jax.tree_util.tree_map_with_path(
        lambda path, p, u: (optimizers.param_path(path), p, p + u), params, updates
    )
    for name, before, after in jax.tree.leaves(new, is_leaf=lambda x: isinstance(x, tuple)):
        if name in bn_names:
            np.testing.assert_array_equal(after, before, err_msg=name)
        else:
            assert np.abs(after - before).max() > 0, name


def test_synchronised_batch_norm_uses_the_global_batch():
    """Over a named axis (vmap stands in for 4 devices, pmap for one), training BatchNorm
    with `bn_axis_name` equals BatchNorm on the whole batch at once, outputs and running
    averages; per-device statistics (None) are the negative control."""
    images = SMALL_IMAGES.reshape(4, 2, 32, 32, 3)
    model = resnet.ResNet(bn_axis_name="batch", **TINY)
    variables = random_like(abstract_variables(model))

    whole_logits, whole_state = jitted(resnet.ResNet(**TINY), train=True)(variables, SMALL_IMAGES)

    def on_devices(module):
        return jax.jit(jax.vmap(partial(jitted(module, train=True), variables), axis_name="batch"))

    synced_logits, synced_state = on_devices(model)(images)
    np.testing.assert_allclose(synced_logits.reshape(8, 3), whole_logits, rtol=1e-4, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-4, atol=1e-5),
        synced_state,
        whole_state,
    )
    local_logits, _ = on_devices(resnet.ResNet(**TINY))(images)
    assert np.abs(local_logits.reshape(8, 3) - whole_logits).max() > 1e-3
    # Inside pmap, as the trainer runs it (one device here), the collective traces and runs.
    pmapped = jax.pmap(partial(jitted(model, train=True), variables), axis_name="batch")
    jaxpr = str(jax.make_jaxpr(pmapped)(SMALL_IMAGES[None]))
    assert "pmean" in jaxpr or "psum" in jaxpr
    pmap_logits, _ = pmapped(SMALL_IMAGES[None])
    np.testing.assert_allclose(pmap_logits[0], whole_logits, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------- through the trainer


def test_feature_mode_is_rejected_for_classification():
    config = ml_collections.ConfigDict(
        {
            "model_name": "resnet_classification",
            "dataset_name": "digits",
            "model": {"num_layers": 18, "return_features": True},
            "num_training_steps": 1,
        }
    )
    with pytest.raises(ConfigError, match="return_features"):
        runner.resolve_config(config, MODELS)
    assert set(MODELS["resnet_classification"].model_config_keys()) >= {
        "num_layers",
        "num_filters",
        "freeze_batch_norm",
        "bn_axis_name",
        "conv_impl",
    }
