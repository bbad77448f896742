"""DETR: the same weights give Hugging Face's `DetrForObjectDetection` outputs, the parameter
count matches a closed form and HF's, weights convert both ways, and the loss through the
core criterion is the same on two devices as on one at the same global batch.

Run as a script (in a 2-device process) this file prints the two-device gradients.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scenic_baselines import detr, detr_weights

TINY = dict(
    backbone_num_layers=18,
    backbone_num_filters=8,
    hidden_size=32,
    num_heads=4,
    mlp_dim=64,
    num_encoder_layers=2,
    num_decoder_layers=2,
    num_queries=6,
)


def hf_config(num_labels=5, **overrides):
    from transformers import DetrConfig, ResNetConfig

    backbone = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 32, 64],
        depths=[2, 2, 2, 2],
        layer_type="basic",
        out_features=["stage4"],
    )
    kwargs = dict(
        use_timm_backbone=False,
        backbone_config=backbone,
        num_labels=num_labels,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=6,
        auxiliary_loss=False,
    )
    kwargs.update(overrides)
    return DetrConfig(**kwargs)


@pytest.fixture(scope="module")
def hf_model():
    """A tiny HF DETR with random weights everywhere (BN statistics included), so no output
    is the trivial one of a fresh model (zero-initialised heads, unit-variance BN)."""
    import torch
    from transformers import DetrForObjectDetection

    torch.manual_seed(0)
    model = DetrForObjectDetection(hf_config()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_scale = "norm" in name and name.endswith("weight")
            # Weights of unit gain (std 1 / sqrt(fan-in)): activations stay O(1) through
            # the 18-layer backbone, so the comparison is of numbers, not of overflow.
            std = 1.5 / np.sqrt(p[0].numel()) if p.ndim > 1 else 0.1
            p.copy_(torch.randn_like(p) * std + float(is_scale))
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn_like(buffer) * 0.1)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand_like(buffer) + 0.5)
            elif name.endswith(("weight", "bias")):  # FrozenBatchNorm2d keeps these as buffers
                buffer.copy_(torch.randn_like(buffer) * 0.5 + name.endswith("weight"))
    return model


@pytest.mark.parametrize("padded", [False, True])
def test_same_weights_give_hugging_face_logits_and_boxes(hf_model, padded):
    import torch

    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 96, 128, 3)).astype(np.float32)
    mask = np.ones((2, 96, 128), np.int64)
    if padded:  # the second image is 64 x 80 in the top-left corner of the canvas
        mask[1, 64:, :] = 0
        mask[1, :, 80:] = 0
    with torch.no_grad():
        expected = hf_model(
            pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2)),
            pixel_mask=torch.from_numpy(mask),
        )
    variables = detr_weights.params_from_hf_detr(hf_model.state_dict(), num_heads=4)
    model = detr.DETR(num_classes=5, aux_loss=False, **TINY)
    inputs = {"image": jnp.asarray(images), "padding_mask": jnp.asarray(mask)}
    if not padded:
        inputs = jnp.asarray(images)  # no mask given: every pixel is real
    outputs = jax.jit(model.apply)(variables, inputs)
    for ours, theirs in (
        (outputs["pred_logits"], expected.logits),
        (outputs["pred_boxes"], expected.pred_boxes),
    ):
        theirs = theirs.numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
    if padded:  # the mask changes the padded image's outputs, not the other one's
        unmasked = jax.jit(model.apply)(variables, jnp.asarray(images))
        assert np.abs(unmasked["pred_logits"][1] - outputs["pred_logits"][1]).max() > 1e-2
        np.testing.assert_allclose(unmasked["pred_logits"][0], outputs["pred_logits"][0], atol=1e-5)


def test_weights_convert_both_ways_and_match_our_parameter_tree(hf_model):
    state = {k: v.numpy() for k, v in hf_model.state_dict().items()}
    variables = detr_weights.params_from_hf_detr(state, num_heads=4)
    model = detr.DETR(num_classes=5, **TINY)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    same = jax.tree.map(lambda a, b: a.shape == b.shape, variables, dict(shapes))
    assert all(jax.tree.leaves(same))
    back = detr_weights.hf_detr_state_dict(variables)
    expected = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert set(back) == set(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    with pytest.raises(ValueError, match="Not a Hugging Face DETR weight: 'model.extra.weight'"):
        detr_weights.params_from_hf_detr({**state, "model.extra.weight": np.zeros(2)}, 4)


def transformer_parameters(d, ffn, queries, classes, encoders, decoders, backbone_channels):
    """DETR's parameters outside the backbone, in closed form."""
    attention = 4 * (d * d + d)
    layer_norm = 2 * d
    mlp = d * ffn + ffn + ffn * d + d
    encoder = attention + mlp + 2 * layer_norm
    decoder = 2 * attention + mlp + 3 * layer_norm
    return (
        backbone_channels * d + d  # input projection (a 1x1 convolution)
        + queries * d  # query position embeddings
        + encoders * encoder
        + decoders * decoder
        + layer_norm  # the decoder's final norm
        + d * (classes + 1) + classes + 1  # class head with the no-object class
        + 2 * (d * d + d) + d * 4 + 4  # box MLP
    )  # fmt: skip


def test_detr_r50_parameter_count_closed_form_and_hugging_face():
    from transformers import DetrForObjectDetection, ResNetConfig

    model = detr.DETR(num_classes=91)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
    backbone = 25_557_032 - (2048 * 1000 + 1000)  # ResNet-50 without its 1000-way head
    expected = backbone + transformer_parameters(256, 2048, 100, 91, 6, 6, 2048)
    assert ours == expected
    hf = DetrForObjectDetection(
        hf_config(
            num_labels=91,
            backbone_config=ResNetConfig(out_features=["stage4"]),
            d_model=256,
            encoder_layers=6,
            decoder_layers=6,
            encoder_attention_heads=8,
            decoder_attention_heads=8,
            encoder_ffn_dim=2048,
            decoder_ffn_dim=2048,
            num_queries=100,
        )
    )
    # HF's FrozenBatchNorm2d holds its scale and bias as buffers; ours are parameters.
    frozen_affine = sum(
        b.numel()
        for name, b in hf.named_buffers()
        if name.endswith(("normalization.weight", "normalization.bias"))
    )
    assert sum(p.numel() for p in hf.parameters()) + frozen_affine == ours


def test_registered_model_reads_only_detr_keys():
    config = ml_collections.ConfigDict({"model": {"hidden_size": 32}})
    model = detr.DETRDetectionModel(config, {"num_classes": 3, "input_shape": (-1, 32, 32, 3)})
    assert model.flax_model.num_classes == 3 and model.flax_model.bn_axis_name == "batch"
    keys = detr.DETRDetectionModel.model_config_keys()
    assert "backbone_num_layers" in keys and "num_classes" not in keys
    assert "bn_axis_name" not in keys  # the trainer's axis, not a setting


# --- two devices == one device ---------------------------------------------------------


def detection_batch(seed=0, batch=4, boxes=3):
    """Images and labels where the two halves hold different numbers of real boxes."""
    rng = np.random.default_rng(seed)
    box_mask = np.zeros((batch, boxes), np.float32)
    for i, count in enumerate((1, 3, 0, 2)[:batch]):
        box_mask[i, :count] = 1.0
    centres = rng.uniform(0.3, 0.7, (batch, boxes, 2))
    sizes = rng.uniform(0.1, 0.4, (batch, boxes, 2))
    return {
        "inputs": rng.normal(size=(batch, 32, 32, 3)).astype(np.float32),
        "label": {
            "labels": rng.integers(0, 3, (batch, boxes)).astype(np.int32),
            "boxes": np.concatenate([centres, sizes], -1).astype(np.float32),
            "box_mask": box_mask,
        },
        "batch_mask": np.ones(batch, np.float32),
    }


def random_variables(module, example, seed=0):
    """Variables of `module`'s shapes (from `jax.eval_shape`: no compiled `init`, which
    takes XLA:CPU longer than the gradient itself): weights of unit gain, BN statistics
    mean 0, variance 1."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), example))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "batch_stats" in name:
            return np.full(leaf.shape, 1.0 if "var" in name else 0.0, np.float32)
        fan_in = int(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 1
        std = 1.0 / np.sqrt(fan_in) if leaf.ndim > 1 else 0.1
        return (rng.normal(size=leaf.shape) * std + ("scale" in name)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def loss_gradients(per_device_batch):
    """Per device: gradients (pmean over 'batch') of the DETR loss of its shard."""
    smaller = dict(
        TINY, backbone_stage=3, num_encoder_layers=1, dropout_rate=0.0
    )  # compiles faster
    config = ml_collections.ConfigDict({"model": smaller, "matcher": "hungarian_matcher"})
    model = detr.DETRDetectionModel(config, {"num_classes": 3})
    variables = random_variables(model.flax_model, per_device_batch["inputs"][0, :1])
    params = variables["params"]

    def step(batch):
        def loss(p):
            outputs = model.flax_model.apply({**variables, "params": p}, batch["inputs"])
            return model.loss_and_metrics(outputs, batch, axis_name="batch")[0]

        return jax.lax.pmean(jax.grad(loss)(params), "batch")

    return jax.pmap(step, axis_name="batch")(per_device_batch)


@pytest.fixture(scope="module")
def two_device_gradients(tmp_path_factory):
    env = dict(
        os.environ,
        XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
    )
    done = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {k: np.asarray(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def flat(tree) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def test_two_devices_give_the_one_device_gradients_of_the_global_batch(two_device_gradients):
    batch = detection_batch()
    one = flat(jax.tree.map(lambda x: x[0], loss_gradients(jax.tree.map(lambda x: x[None], batch))))
    assert set(one) == set(two_device_gradients)
    assert max(np.abs(v).max() for v in one.values()) > 1e-3
    for name, value in one.items():
        np.testing.assert_allclose(
            two_device_gradients[name], value, rtol=2e-4, atol=1e-6, err_msg=name
        )


if __name__ == "__main__":
    assert jax.local_device_count() == 2, jax.devices()
    halves = jax.tree.map(lambda x: x.reshape(2, x.shape[0] // 2, *x.shape[1:]), detection_batch())
    gradients = jax.tree.map(lambda x: x[0], loss_gradients(halves))
    print(json.dumps({k: v.tolist() for k, v in flat(gradients).items()}))


# --- the shipped COCO config ------------------------------------------------------------


def test_detr_coco_recipe_applies_to_detr_r50_parameters():
    """Its optimizer on DETR-R50's parameter names (narrow widths): every frozen-parameter
    and lr-multiplier pattern matches (a pattern matching nothing is an error), exactly the
    stem, stage 1 and every BatchNorm scale / bias are frozen, the rest of the backbone
    trains at 1e-5 and the transformer at 1e-4, dropping x0.1 at epoch 200."""
    import optax

    from scenic.common_lib import config_utils
    from scenic.train_lib import optimizers, trainer
    from scenic_baselines.configs import detr_coco

    config = config_utils.load_config("detr_coco", "scenic_baselines.configs")
    # DETR-R50's parameter names at a fraction of its widths (the patterns see only names).
    narrow = dict(backbone_num_filters=8, hidden_size=32, mlp_dim=64, num_queries=10)
    model = detr.DETR(num_classes=91, **{**config.model, **narrow})
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32))
    )["params"]
    steps = int(config.num_training_epochs * detr_coco.STEPS_PER_EPOCH)
    tx, lr_fn = trainer.make_optimizer(config, steps)
    params = jax.tree.map(lambda s: np.full(s.shape, 0.5, np.float32), shapes)
    grads = jax.tree.map(np.ones_like, params)
    state = tx.init(params)  # raises if any pattern matches no parameter
    updates, _ = jax.jit(tx.update)(grads, state, params)
    flat = {
        optimizers.param_path(path): np.asarray(u)
        for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]
    }
    frozen = {
        name
        for name in flat
        if name.startswith(("backbone/stem_", "backbone/stage_1_"))
        or (name.startswith("backbone/") and "bn" in name.split("/")[-2])
    }
    assert frozen and any("stage_4" in name for name in frozen)  # BN of every stage
    for name, update in flat.items():
        if name in frozen:
            assert not np.any(update), name
        else:
            assert np.all(update != 0), name
    # Adam's first step moves every trainable weight by lr (before decay; clipping
    # rescales the gradient, not Adam's normalised step): backbone 1e-5, the rest 1e-4.
    kernel = lambda name: float(np.abs(flat[name]).max())
    assert kernel("backbone/stage_2_block_0/conv1/kernel") == pytest.approx(1e-5, rel=1e-2)
    assert kernel("class_head/kernel") == pytest.approx(1e-4, rel=1e-2)
    drop = 200 * detr_coco.STEPS_PER_EPOCH
    assert float(lr_fn(drop - 1)) == pytest.approx(1e-4)
    assert float(lr_fn(drop)) == pytest.approx(1e-5)
    assert isinstance(tx, optax.GradientTransformation)
