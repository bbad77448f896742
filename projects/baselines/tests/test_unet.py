"""UNet: parameter counts against a closed form, equality with a PyTorch UNet written here
from the paper's description (weights copied over), config checks, and training and
evaluation through the core trainer, whose global metrics (mean and per-class IoU from one
confusion matrix over the whole eval set) are recomputed in NumPy float64."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scenic.common_lib import runner
from scenic.common_lib.config_utils import ConfigError
from scenic.common_lib.debug_utils import count_parameters
from scenic.dataset_lib import digits_segmentation
from scenic.train_lib import evaluation, trainer
from scenic.train_lib.train_state import TrainState, replicate
from scenic_baselines import unet
from scenic_baselines.models import MODELS


def closed_form_count(levels, width, classes, channels=3, norm="batch"):
    """Parameters of a UNet counted by hand: per 3x3 convolution k*k*in*out weights plus,
    with a normalisation, its scale and bias per channel (the convolution has no bias),
    without one, a bias; 2x2 up-convolutions and the 1x1 head with biases."""

    def conv3(cin, cout):
        return 9 * cin * cout + (2 * cout if norm != "none" else cout)

    def block(cin, cout):
        return conv3(cin, cout) + conv3(cout, cout)

    widths = [width * 2**level for level in range(levels + 1)]
    total, cin = 0, channels
    for level in range(levels):  # contracting path
        total += block(cin, widths[level])
        cin = widths[level]
    total += block(widths[levels - 1], widths[levels])  # bottleneck
    for level in reversed(range(levels)):  # expanding path: up-convolution, then the block
        total += 4 * widths[level + 1] * widths[level] + widths[level]
        total += block(2 * widths[level], widths[level])
    return total + widths[0] * classes + classes


def abstract_params(model, shape):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))["params"]


@pytest.mark.parametrize(
    ("levels", "width", "classes", "channels", "norm"),
    [
        (4, 64, 2, 1, "none"),  # the paper's network (1 input channel, 2 classes), padded
        (4, 64, 3, 3, "batch"),
        (4, 12, 11, 3, "batch"),  # the digits demo
        (3, 16, 19, 3, "group"),
        (1, 4, 5, 3, "none"),
    ],
)
def test_parameter_count_matches_closed_form(levels, width, classes, channels, norm):
    model = unet.UNet(num_classes=classes, num_levels=levels, base_width=width, norm=norm)
    size = 2**levels
    params = abstract_params(model, (1, size, size, channels))
    assert count_parameters(params) == closed_form_count(levels, width, classes, channels, norm)
    if (levels, width, classes, channels, norm) == (4, 64, 2, 1, "none"):
        # The paper's layer widths: 64 ... 1024, 31,030,658 weights and biases in all.
        assert params["bottleneck"]["conv2"]["kernel"].shape == (3, 3, 1024, 1024)
        assert count_parameters(params) == 31_030_658


# ------------------------------------------------------- PyTorch reference


def torch_unet(
    params, images, *, norm, levels, train=False, batch_stats=None, groups=8, skip_first=True
):
    """The paper's UNet in PyTorch with our weights: 'same'-padded 3x3 convolutions, each
    followed by the normalisation and a ReLU; 2x2 max-pool; 2x2 stride-2 transposed
    convolution; the skip connection concatenated on channels before the up-sampled map
    (after it with `skip_first=False`, a negative control); a 1x1 head."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    def t(a):
        return torch.from_numpy(np.array(a, np.float32))

    def block(x, name):
        scope, stats = params[name], (batch_stats or {}).get(name)
        for i in (1, 2):
            conv = scope[f"conv{i}"]
            bias = t(conv["bias"]) if "bias" in conv else None
            x = F.conv2d(x, t(conv["kernel"]).permute(3, 2, 0, 1), bias, padding=1)
            if norm == "batch":
                s, p = stats[f"norm{i}"], scope[f"norm{i}"]
                x = F.batch_norm(
                    x,
                    t(s["mean"]),
                    t(s["var"]),
                    t(p["scale"]),
                    t(p["bias"]),
                    training=train,
                    eps=1e-5,
                )
            elif norm == "group":
                p = scope[f"norm{i}"]
                x = F.group_norm(x, min(groups, x.shape[1]), t(p["scale"]), t(p["bias"]), 1e-6)
            x = torch.relu(x)
        return x

    x = t(images).permute(0, 3, 1, 2)
    skips = []
    for level in range(levels):
        x = block(x, f"down_{level}")
        skips.append(x)
        x = F.max_pool2d(x, 2)
    x = block(x, "bottleneck")
    for level in reversed(range(levels)):
        up = params[f"upconv_{level}"]
        x = F.conv_transpose2d(x, t(up["kernel"]).permute(2, 3, 0, 1), t(up["bias"]), stride=2)
        pair = [skips[level], x] if skip_first else [x, skips[level]]
        x = block(torch.cat(pair, dim=1), f"up_{level}")
    head = params["head"]
    logits = torch.einsum("bchw,ck->bhwk", x, t(head["kernel"])) + t(head["bias"])
    return logits.detach().numpy()


def random_variables(model, shape, seed=0):
    """Random values for the model's variables without compiling `init`: He-scaled kernels,
    random biases, normalisation scales and running statistics (so that eval-mode
    BatchNorm is not the identity)."""
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))

    def value(path, leaf):
        name = jax.tree_util.keystr(path[-1:], simple=True)
        if name == "kernel":
            scale = math.sqrt(2.0 / math.prod(leaf.shape[:-1]))
            return (scale * rng.normal(size=leaf.shape)).astype(np.float32)
        if name in ("mean", "bias"):
            return (0.3 * rng.normal(size=leaf.shape)).astype(np.float32)
        return rng.uniform(0.5, 1.5, size=leaf.shape).astype(np.float32)  # scale, var

    return jax.tree_util.tree_map_with_path(value, abstract)


def assert_close(ours, reference, rtol=1e-4):
    """Equal within `rtol` of the reference's largest magnitude."""
    ours, reference = np.asarray(ours), np.asarray(reference)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=0, atol=rtol * np.abs(reference).max())


IMAGES = np.random.default_rng(1).normal(size=(2, 16, 24, 3)).astype(np.float32)


@pytest.mark.parametrize("norm", unet.NORMS)
def test_matches_a_pytorch_unet(norm):
    """Two levels, width 8, 5 classes, on a non-square input: logits equal to 1e-4 in eval
    mode and, for BatchNorm, in training mode (batch statistics) too."""
    model = unet.UNet(num_classes=5, num_levels=2, base_width=8, norm=norm)
    variables = random_variables(model, IMAGES.shape)
    params, stats = variables["params"], variables.get("batch_stats")
    reference = torch_unet(params, IMAGES, norm=norm, levels=2, batch_stats=stats)
    assert_close(jax.jit(model.apply)(variables, IMAGES), reference)
    if norm == "batch":
        train_apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
        ours, _ = train_apply(variables, IMAGES)
        assert_close(
            ours, torch_unet(params, IMAGES, norm=norm, levels=2, batch_stats=stats, train=True)
        )
        assert np.abs(np.asarray(ours) - reference).max() > 1e-2  # train mode differs
    if norm == "none":
        swapped = torch_unet(params, IMAGES, norm=norm, levels=2, skip_first=False)
        assert np.abs(swapped - reference).max() > 1e-2 * np.abs(reference).max()


def test_bad_sizes_and_settings_are_one_clear_error():
    with pytest.raises(ValueError, match="divisible by 8, got 20x24"):
        unet.UNet(num_classes=2, num_levels=3, base_width=4).init(
            jax.random.key(0), jnp.zeros((1, 20, 24, 3))
        )
    with pytest.raises(ValueError, match="norm must be one of"):
        unet.check_settings(2, 8, "layer", 8)
    with pytest.raises(ValueError, match="num_groups=8 must divide"):
        unet.check_settings(2, 12, "group", 8)
    unet.check_settings(2, 16, "group", 8)


def digits_config(**model):
    return ml_collections.ConfigDict(
        {
            "model_name": "unet_segmentation",
            "dataset_name": "digits_segmentation",
            "model": model,
            "num_training_steps": 1,
        }
    )


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="norm must be one of"):
        runner.resolve_config(digits_config(norm="layer"), MODELS)
    with pytest.raises(ConfigError, match="depth"):
        runner.resolve_config(digits_config(depth=3), MODELS)
    with pytest.raises(ConfigError, match="conv_impl"):
        runner.resolve_config(digits_config(conv_impl="fft"), MODELS)
    assert set(MODELS["unet_segmentation"].model_config_keys()) == {
        "num_levels",
        "base_width",
        "norm",
        "num_groups",
        "bn_axis_name",
        "conv_impl",
        "dtype",
    }


@pytest.mark.parametrize(
    ("name", "classes", "size"),
    [
        ("unet_digits_segmentation", 11, (32, 32)),
        ("unet_oxford_pet", 3, (128, 128)),
        ("unet_cityscapes", 19, (512, 1024)),
    ],
)
def test_configs_resolve_and_their_models_have_the_closed_form_count(name, classes, size):
    from scenic.common_lib import config_utils

    config = config_utils.load_config(name, "scenic_baselines.configs")
    config, model_cls = runner.resolve_config(config, MODELS)
    assert model_cls is MODELS["unet_segmentation"]
    model = unet.build_unet(config.model, classes)
    assert model.bn_axis_name == "batch"  # the trainer's pmap axis: synchronised BatchNorm
    assert size[0] % 2**model.num_levels == 0 and size[1] % 2**model.num_levels == 0
    params = abstract_params(model, (1, *size, 3))
    expected = closed_form_count(model.num_levels, model.base_width, classes, 3, model.norm)
    assert count_parameters(params) == expected


# ------------------------------------------------------- through the trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A few training steps through the core runner and trainer on a small digits_segmentation."""
    root = tmp_path_factory.mktemp("unet")
    data_dir = digits_segmentation.prepare(str(root / "data"), {"train": 32, "test": 37})
    config = ml_collections.ConfigDict(
        {
            "model_name": "unet_segmentation",
            "dataset_name": "digits_segmentation",
            "dataset_configs": {"data_dir": data_dir, "shuffle_buffer": 32},
            "model": {"num_levels": 2, "base_width": 4},
            "batch_size": 8,
            "eval_batch_size": 16,  # 37 test canvases: 3 batches, the last one padded
            "num_training_steps": 3,
            "log_summary_steps": 3,
            "log_eval_steps": 3,
            "checkpoint_steps": 3,
            "optimizer": {"name": "adam"},
            "lr_configs": {"factors": "constant", "base_learning_rate": 1e-2},
        }
    )
    config, model_cls = runner.resolve_config(config, MODELS)
    dataset = runner.build_dataset(config)
    workdir = root / "run"
    result = trainer.train(model_cls=model_cls, dataset=dataset, config=config, workdir=workdir)
    model = model_cls(config, dataset.meta_data)
    variables = {"params": result.state["params"], **result.state["model_state"]}
    apply = jax.jit(model.flax_model.apply)

    def predict(inputs):
        return np.asarray(apply(variables, inputs)).argmax(-1)

    return model, dataset, result, workdir, predict


def confusion(labels, predictions, weights, num_classes=11):
    matrix = np.zeros((num_classes, num_classes), np.float64)
    np.add.at(matrix, (labels.ravel(), predictions.ravel()), weights.ravel().astype(np.float64))
    return matrix


def reference_iou(matrix):
    """Per-class IoU = TP / (TP + FP + FN) for classes that occur (label or prediction),
    NaN otherwise; mean IoU over those."""
    tp = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - tp
    per_class = np.full(len(tp), np.nan)
    per_class[union > 0] = tp[union > 0] / union[union > 0]
    return np.nanmean(per_class), per_class


def check_global_metrics(metrics, matrix):
    mean_iou, per_class = reference_iou(matrix)
    assert metrics["mean_iou"] == pytest.approx(mean_iou, rel=1e-6, abs=1e-9)
    for c, value in enumerate(per_class):
        if np.isnan(value):
            assert f"iou/class_{c}" not in metrics
        else:
            assert metrics[f"iou/class_{c}"] == pytest.approx(value, rel=1e-6, abs=1e-9)


def test_trains_through_the_core_trainer_with_global_eval_metrics(trained):
    """The run's final metrics are one confusion matrix over all 37 test canvases (the 11
    padding examples of the last batch left out), not a mean over batches."""
    _, dataset, result, workdir, predict = trained
    assert result.completed and result.exit_code == 0
    assert (workdir / "final_metrics.json").exists()
    stats = result.state["model_state"]["batch_stats"]["down_0"]["norm1"]["mean"]
    assert np.abs(np.asarray(stats)).max() > 0  # running averages moved in training
    batches = list(dataset.eval_batches())
    assert len(batches) == 3 and batches[-1]["batch_mask"][5:].sum() == 0
    total, unmasked, per_batch = np.zeros((11, 11)), np.zeros((11, 11)), []
    for batch in batches:
        predictions = predict(batch["inputs"])
        matrix = confusion(batch["label"], predictions, batch["batch_mask"])
        total += matrix
        unmasked += confusion(batch["label"], predictions, np.ones_like(batch["batch_mask"]))
        per_batch.append(reference_iou(matrix)[0])
    assert total.sum() == 37 * 32 * 32
    metrics = result.metrics
    check_global_metrics(metrics, total)
    pixel_accuracy = np.trace(total) / total.sum()
    assert metrics["pixel_accuracy"] == pytest.approx(pixel_accuracy, rel=1e-5)
    # Negative controls: counting the padding, or averaging per batch, gives values that
    # differ by far more than the tolerance above (relative 1e-6).
    for wrong in (reference_iou(unmasked)[0], np.mean(per_batch)):
        assert abs(wrong - metrics["mean_iou"]) > 1e-4 * metrics["mean_iou"]


def test_ignored_pixels_count_nowhere_in_the_eval_pass(trained):
    """The trainer's eval pass with random weights on random images (predictions spread over
    the classes), with ignored pixels (per-pixel batch_mask 0, holding arbitrary labels) and
    a padded example: global IoU over the real pixels only."""
    model, _, result, _, _ = trained
    variables = random_variables(model.flax_model, (1, 32, 32, 3), seed=3)
    stats = {"batch_stats": variables["batch_stats"]}
    state = TrainState.from_dict(
        {**result.state, "params": variables["params"], "model_state": stats}
    )
    apply = jax.jit(model.flax_model.apply)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(2):  # random images and labels, 30% of the pixels ignored
        batches.append(
            {
                "inputs": rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
                "label": rng.integers(0, 11, (16, 32, 32)).astype(np.int32),
                "batch_mask": (rng.random((16, 32, 32)) < 0.7).astype(np.float32),
            }
        )
    batches[1]["batch_mask"][-1] = 0.0  # a padded example
    metrics = evaluation.evaluate(
        trainer.make_eval_step(model, jnp.float32), replicate(state), batches, 1, model
    )
    total, unmasked = np.zeros((11, 11)), np.zeros((11, 11))
    for batch in batches:
        predictions = np.asarray(apply(variables, batch["inputs"])).argmax(-1)
        total += confusion(batch["label"], predictions, batch["batch_mask"])
        unmasked += confusion(batch["label"], predictions, np.ones_like(batch["batch_mask"]))
    assert 0.6 < total.sum() / (32 * 32 * 32) < 0.75
    assert (np.diag(total) > 0).sum() >= 4  # hits in at least 4 classes, misses in all
    check_global_metrics(metrics, total)
    assert metrics["pixel_accuracy"] == pytest.approx(np.trace(total) / total.sum(), rel=1e-5)
    wrong = reference_iou(unmasked)[0]  # negative control: the ignored pixels counted
    assert abs(wrong - metrics["mean_iou"]) > 1e-4 * metrics["mean_iou"]


def test_closed_form_by_hand():
    """The closed form itself, on a case small enough to add up by hand."""
    # levels 1, width 2, 3 -> 2 classes, no norm: down 3*2*9+2 + 2*2*9+2 = 94; bottleneck
    # 2*4*9+4 + 4*4*9+4 = 224; up-conv 4*4*2+2 = 34; up block 4*2*9+2 + 2*2*9+2 = 112;
    # head 2*2+2 = 6.
    assert closed_form_count(1, 2, 2, 3, "none") == 94 + 224 + 34 + 112 + 6
