"""CLIP's ResNet image towers against OpenCLIP's `ModifiedResNet` (the reference: the
`open_clip_reference` fixture, from the open_clip_torch wheel), with the same weights: eval and
training-mode outputs; the variants against OpenCLIP's model configs and parameter counts;
and a ResNet CLIP trained and evaluated through `scenic-baselines train`."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scenic.train_lib.pretrained_init import PretrainedInitError
from scenic_baselines import clip, clip_resnet, clip_weights

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def reference(open_clip_reference):
    return open_clip_reference


TINY = dict(layers=(2, 1, 2, 1), width=16, num_heads=4, embed_dim=24)


def random_reference(reference, randomize_weights, seed=0, **kwargs):
    """OpenCLIP's tower with every weight random, batch norms' statistics included."""
    settings = {**TINY, **kwargs}
    torch.manual_seed(seed)
    model = reference.ModifiedResNet(
        layers=list(settings["layers"]), output_dim=settings["embed_dim"],
        heads=settings["num_heads"], image_size=settings.get("image_size", 64),
        width=settings["width"],
    )  # fmt: skip
    return randomize_weights(model, std=0.1, vector_std=0.5)


def ours(**kwargs):
    settings = {**TINY, **kwargs}
    settings.pop("image_size", None)
    return clip_resnet.ResNetImageEncoder(**settings)


def converted(model):
    return clip_weights.openai_resnet_tower(
        {f"visual.{k}": v for k, v in model.state_dict().items()}
    )


def torch_images(images):
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def test_eval_outputs_equal_open_clip(reference, randomize_weights):
    model = random_reference(reference, randomize_weights).eval()
    images = np.random.default_rng(0).normal(size=(3, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch_images(images)).numpy()
    variables = converted(model)
    embedding, features = jax.jit(ours().apply)(variables, jnp.asarray(images))
    np.testing.assert_allclose(embedding, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert features.shape == (3, 2 * 2, 16 * 32)
    # Negative control: running statistics off by half give other embeddings, so the
    # comparison above does see the converted batch norms.
    wrong = dict(variables, batch_stats=jax.tree.map(lambda x: x * 1.5, variables["batch_stats"]))
    off, _ = jax.jit(ours().apply)(wrong, jnp.asarray(images))
    assert np.abs(np.asarray(off) - expected).max() > 1e-2 * np.abs(expected).max()


def test_training_mode_uses_batch_statistics_as_pytorch(reference, randomize_weights):
    """Training mode normalises with the batch's statistics (biased variance, as PyTorch's
    forward); the running means move by 0.1 of the way, as PyTorch's momentum 0.1. PyTorch
    updates the running variance with the unbiased variance, Flax with the biased one: a
    factor n / (n - 1) on that update, left as Flax has it."""
    model = random_reference(reference, randomize_weights, seed=1).train()
    images = np.random.default_rng(1).normal(size=(4, 64, 64, 3)).astype(np.float32)
    variables = converted(model)
    with torch.no_grad():
        expected = model(torch_images(images)).numpy()
    train = jax.jit(lambda v, x: ours().apply(v, x, train=True, mutable=["batch_stats"]))
    (embedding, _), updates = train(variables, jnp.asarray(images))
    np.testing.assert_allclose(embedding, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    torch_mean = model.state_dict()["bn1.running_mean"].numpy()
    np.testing.assert_allclose(updates["batch_stats"]["bn1"]["mean"], torch_mean, rtol=1e-5)
    assert not np.allclose(torch_mean, variables["batch_stats"]["bn1"]["mean"])


def test_clip_with_a_resnet_tower_embeds_images_with_it(reference, randomize_weights):
    model = random_reference(reference, randomize_weights, seed=2).eval()
    tower = converted(model)
    net = clip.CLIP(
        embed_dim=24, image_size=64, vision_layers=(2, 1, 2, 1), vision_width=16,
        vision_heads=4, vocab_size=50, context_length=8, text_width=16, text_layers=1,
        text_heads=2, text_mlp_dim=32,
    )  # fmt: skip
    images = np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype(np.float32)
    tokens = jnp.array([[1, 5, 49, 0, 0, 0, 0, 0]] * 2)
    variables = jax.jit(net.init)(jax.random.key(0), jnp.asarray(images), tokens)
    assert jax.tree.map(np.shape, variables["params"]["visual"]) == jax.tree.map(
        np.shape, tower["params"]
    )
    params = {**variables["params"], "visual": tower["params"]}
    got = jax.jit(lambda v, x: net.apply(v, x, method=net.encode_image))(
        {"params": params, "batch_stats": {"visual": tower["batch_stats"]}}, jnp.asarray(images)
    )
    with torch.no_grad():
        expected = model(torch_images(images)).numpy()
    expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["rn50", "rn101", "rn50x4", "rn50x16", "rn50x64"])
def test_variants_are_open_clips(reference, open_clip_folder, variant):
    """Each ResNet variant's settings against OpenCLIP's RN*.json, and the image tower's
    parameter count against OpenCLIP's tower of that config (batch statistics apart)."""
    name = {"rn50": "RN50", "rn101": "RN101"}.get(variant, variant.upper().replace("X", "x"))
    config = json.loads((open_clip_folder / "model_configs" / f"{name}.json").read_text())
    settings = clip.VARIANTS[variant]
    vision, text = config["vision_cfg"], config["text_cfg"]
    assert settings["embed_dim"] == config["embed_dim"]
    assert settings["image_size"] == vision["image_size"]
    assert tuple(settings["vision_layers"]) == tuple(vision["layers"])
    assert settings["vision_width"] == vision["width"]
    assert (settings["text_width"], settings["text_heads"], settings["text_layers"]) == (
        text["width"], text["heads"], text["layers"],
    )  # fmt: skip
    if variant not in ("rn50", "rn50x4"):
        return  # Counting builds the whole PyTorch tower: two of them suffice.
    size = vision["image_size"]
    tower = reference.ModifiedResNet(
        layers=vision["layers"], output_dim=config["embed_dim"],
        heads=vision["width"] * 32 // 64, image_size=size, width=vision["width"],
    )  # fmt: skip
    expected = sum(p.numel() for p in tower.parameters())
    net = clip.clip_model(variant)
    shapes = jax.eval_shape(
        lambda: net.init(
            jax.random.key(0), jnp.zeros((1, size, size, 3)), jnp.zeros((1, 77), jnp.int32)
        )
    )
    got = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"]["visual"]))
    assert got == expected


def test_unknown_tensors_are_one_error(reference, randomize_weights):
    model = random_reference(reference, randomize_weights)
    state = {f"visual.{k}": v for k, v in model.state_dict().items()}
    state["visual.layer1.0.se.fc.weight"] = state["visual.conv1.weight"]  # not a CLIP tower
    with pytest.raises(PretrainedInitError, match=r"unknown tensors \[.visual.layer1.0.se.fc"):
        clip_weights.openai_resnet_tower(state)
    with pytest.raises(PretrainedInitError, match="no tensors there"):
        clip_weights.openai_resnet_tower(state, prefix="image_encoder.")


RESNET_CONFIG = """
from scenic_baselines.configs import clip_digits


def get_config():
    config = clip_digits.get_config()
    model = config.model.to_dict()
    model.update(
        image_size=32, vision_layers=(1, 1, 1, 1), vision_width=8, vision_heads=2,
        text_layers=1, text_width=16,
    )
    config.model = type(config.model)(model)
    config.dataset_configs.image_size = 32
    return config
"""


def test_a_resnet_clip_trains_and_evaluates_through_the_cli(tmp_path, capsys):
    """The ResNet tower's batch statistics go through the trainer (updated in training, used
    in the zero-shot evaluation, checkpointed)."""
    from scenic.train_lib import checkpoints
    from scenic_baselines.cli import main

    # vision_layers changes type (a number -> stage depths): a config file of its own.
    config = tmp_path / "clip_digits_resnet.py"
    config.write_text(RESNET_CONFIG)
    workdir = tmp_path / "rn"
    argv = [
        "train", "--config", str(config), "--workdir", str(workdir),
        "--config.num_training_steps=2", "--config.log_summary_steps=1",
        "--config.log_eval_steps=2", "--config.checkpoint_steps=2",
        "--config.lr_configs.warmup_steps=1", "--config.batch_size=16",
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert final["step"] == 2 and np.isfinite(final["loss"]) and 0 <= final["accuracy"] <= 1
    checkpointer = checkpoints.Checkpointer(str(workdir))
    stored = checkpointer._manager.item_metadata(2)
    checkpointer.close()
    assert "bn1" in stored["model_state"]["batch_stats"]["visual"]
