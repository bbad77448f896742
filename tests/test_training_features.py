"""Trainer features end to end on a tiny ViT: gradient accumulation, mixup + EMA + bfloat16,
frozen parameters, and init_from a previous run's checkpoint with a new head."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scenic.common_lib import config_utils, runner
from scenic.common_lib.config_utils import ConfigError
from scenic.train_lib import checkpoints, trainer
from scenic_baselines.models import MODELS


def resolved(tiny_overrides, *extra):
    config = config_utils.load_config("vit_digits", "scenic_baselines.configs")
    overrides = [o.removeprefix("--config.") for o in (*tiny_overrides, *extra)]
    return runner.resolve_config(config, MODELS, overrides)


def record_label_shapes(monkeypatch, model_cls) -> list:
    """The label shapes `model_cls.loss_function` is traced with from now on (per device and
    micro-batch; soft targets after mixup)."""
    shapes, loss_function = [], model_cls.loss_function

    def recording_loss(self, logits, batch, model_params=None):
        shapes.append(batch["label"].shape)
        return loss_function(self, logits, batch, model_params)

    monkeypatch.setattr(model_cls, "loss_function", recording_loss)
    return shapes


def train(config, model_cls, workdir):
    """(final host state, final metrics) of a run."""
    result = trainer.train(
        model_cls=model_cls, dataset=runner.build_dataset(config), config=config, workdir=workdir
    )
    return result.state, result.metrics


def test_gradient_accumulation_matches_the_full_batch(tmp_path, tiny_vit_digits, monkeypatch):
    # Adam's update is nearly scale-free, so use SGD to compare the gradients themselves.
    sgd = ["optimizer={'name': 'sgd'}", "lr_configs.base_learning_rate=0.5"]
    full, _ = train(*resolved(tiny_vit_digits, *sgd), tmp_path / "full")
    config, model_cls = resolved(tiny_vit_digits, *sgd, "grad_accumulation_steps=4")
    label_shapes = record_label_shapes(monkeypatch, model_cls)
    accumulated, _ = train(config, model_cls, tmp_path / "acc")
    assert label_shapes and set(label_shapes) == {(8,)}  # micro-batches of 32 / 4
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
        full["params"],
        accumulated["params"],
    )


def test_accumulation_must_divide_the_per_device_batch(tiny_vit_digits):
    with pytest.raises(ConfigError, match="grad_accumulation_steps=3 must divide"):
        resolved(tiny_vit_digits, "grad_accumulation_steps=3")


def test_per_example_clipping_sees_one_example_at_a_time(tmp_path, tiny_vit_digits, monkeypatch):
    config, model_cls = resolved(
        tiny_vit_digits, "optimizer.per_example_clip_norm=0.5", "num_training_steps=3"
    )
    label_shapes = record_label_shapes(monkeypatch, model_cls)
    clip_norms = []
    clipped = trainer.steps.per_example_clipped

    def recording_clipped(grad_fn, clip_norm, axis_name):
        clip_norms.append(clip_norm)
        return clipped(grad_fn, clip_norm, axis_name)

    monkeypatch.setattr(trainer.steps, "per_example_clipped", recording_clipped)
    _, metrics = train(config, model_cls, tmp_path / "run")
    assert clip_norms == [0.5] and set(label_shapes) == {(1,)}  # the loss of one example
    assert np.isfinite(metrics["loss"])


def test_per_example_clipping_refuses_models_with_batch_statistics(tmp_path):
    config = config_utils.load_config("resnet_digits", "scenic_baselines.configs")
    config, model_cls = runner.resolve_config(
        config, MODELS, ["model.num_layers=10", "optimizer.per_example_clip_norm=1.0"]
    )
    with pytest.raises(ConfigError, match="keeps mutable state \\(batch_stats\\)"):
        train(config, model_cls, tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_mixup_ema_bfloat16_and_frozen_parameters(tmp_path, tiny_vit_digits, monkeypatch):
    seen = {"peak_dtypes": [], "activation_dtypes": set()}
    peak = trainer.debug_utils.run_peak_matmul_flops

    def recording_peak(*args, **kwargs):
        seen["peak_dtypes"].append(kwargs.get("dtype"))
        return peak(*args, **kwargs)

    monkeypatch.setattr(trainer.debug_utils, "run_peak_matmul_flops", recording_peak)
    config, model_cls = resolved(
        tiny_vit_digits,
        "mixup={'mixup_alpha': 0.8, 'cutmix_alpha': 1.0, 'switch_prob': 0.5}",
        "ema={'decay': 0.9, 'warmup': 'debias'}",
        "compute_dtype=bfloat16",
        "optimizer.frozen_params=('embedding/.*',)",
    )
    label_shapes = record_label_shapes(monkeypatch, model_cls)

    def record_encoder_output(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.module.name == "Transformer" and context.method_name == "__call__":
            seen["activation_dtypes"].add(out.dtype)
        return out

    with nn.intercept_methods(record_encoder_output):
        state, final = train(config, model_cls, tmp_path)
    assert np.isfinite(final["accuracy"])
    # Mixup turned the integer labels into per-device soft targets [batch, classes] ...
    assert label_shapes and all(s == (32, 10) for s in label_shapes)
    # ... the encoder ran in bfloat16, and MFU is against a bfloat16 peak.
    assert seen["activation_dtypes"] == {jnp.dtype(jnp.bfloat16)}
    assert seen["peak_dtypes"] == [jnp.dtype(jnp.bfloat16)]
    # Frozen: the patch embedding never moved from its initial value at step 3 or 6.
    first = checkpoints.Checkpointer(tmp_path).restore(jax.device_get(state), step=3)
    np.testing.assert_array_equal(
        first["params"]["embedding"]["kernel"], state["params"]["embedding"]["kernel"]
    )
    assert not np.array_equal(first["params"]["head"]["kernel"], state["params"]["head"]["kernel"])
    # EMA is kept in float32, checkpointed, and differs from the raw parameters.
    ema_kernel = state["ema_params"]["head"]["kernel"]
    assert ema_kernel.dtype == np.float32
    assert not np.allclose(ema_kernel, state["params"]["head"]["kernel"])
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(state["params"]))


def test_ema_follows_its_recurrence_and_resumes_exactly(tmp_path, tiny_vit_digits):
    every_step = ("ema={'decay': 0.9}", "checkpoint_steps=1", "max_checkpoints_to_keep=10")
    config, model_cls = resolved(tiny_vit_digits, *every_step)
    full, _ = train(config, model_cls, tmp_path / "full")
    saved = [
        checkpoints.Checkpointer(tmp_path / "full").restore(jax.device_get(full), step=step)
        for step in range(1, 7)
    ]
    # ema_t = 0.9 ema_(t-1) + 0.1 params_t at every step, recomputed here in float64.
    for before, after in itertools.pairwise(saved):
        expected = jax.tree.map(
            lambda e, p: 0.9 * np.float64(e) + 0.1 * np.float64(p),
            before["ema_params"],
            after["params"],
        )
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
            after["ema_params"],
            expected,
        )
    # A stopped run resumes with its EMA: bit-identical to the uninterrupted run.
    config, model_cls = resolved(tiny_vit_digits, *every_step)
    workdir = tmp_path / "stopped"
    trainer.train(
        model_cls=model_cls,
        dataset=runner.build_dataset(config),
        config=config,
        workdir=workdir,
        stop_after_step=3,
    )
    resumed, _ = train(config, model_cls, workdir)
    jax.tree.map(np.testing.assert_array_equal, full["ema_params"], resumed["ema_params"])


def test_init_from_previous_run_with_new_head(tmp_path, tiny_vit_digits):
    pretrained, _ = train(*resolved(tiny_vit_digits), tmp_path / "pretrained")
    config, model_cls = resolved(
        tiny_vit_digits,
        f"init_from={{'checkpoint': '{tmp_path / 'pretrained'}', 'reinit': ('head/.*',)}}",
        "optimizer.frozen_params=('Transformer/.*', 'embedding/.*', 'cls')",
    )
    finetuned, _ = train(config, model_cls, tmp_path / "finetuned")
    # Everything but the head came from the pretrained run (and stayed frozen) ...
    for name in ("Transformer", "embedding", "cls"):
        jax.tree.map(
            np.testing.assert_array_equal, pretrained["params"][name], finetuned["params"][name]
        )
    # ... while the head was re-initialised and trained.
    assert not np.array_equal(
        pretrained["params"]["head"]["kernel"], finetuned["params"]["head"]["kernel"]
    )
    # With a zero learning rate nothing moves: the head is exactly a fresh run's initial head,
    # everything else exactly the pretrained parameters.
    still = ("lr_configs.base_learning_rate=0.0", "num_training_steps=3")
    config, model_cls = resolved(
        tiny_vit_digits,
        f"init_from={{'checkpoint': '{tmp_path / 'pretrained'}', 'reinit': ('head/.*',)}}",
        *still,
    )
    reinit, _ = train(config, model_cls, tmp_path / "reinit")
    fresh, _ = train(*resolved(tiny_vit_digits, *still), tmp_path / "fresh")
    jax.tree.map(np.testing.assert_array_equal, fresh["params"]["head"], reinit["params"]["head"])
    pretrained_head = pretrained["params"]["head"]["kernel"]
    assert not np.array_equal(pretrained_head, reinit["params"]["head"]["kernel"])
    for name in ("Transformer", "embedding", "cls"):
        jax.tree.map(
            np.testing.assert_array_equal, pretrained["params"][name], reinit["params"][name]
        )


def test_feature_sections_are_checked_before_training(tiny_vit_digits):
    with pytest.raises(ConfigError, match="mixup"):
        resolved(tiny_vit_digits, "mixup={'mixup_alfa': 0.8}")
    with pytest.raises(ConfigError, match="does not exist"):
        resolved(tiny_vit_digits, "init_from={'checkpoint': '/nonexistent/ckpt'}")
    with pytest.raises(ConfigError, match="compute dtype"):
        resolved(tiny_vit_digits, "compute_dtype=float8")
    for key in ("log_eval_steps", "checkpoint_steps", "max_checkpoints_to_keep"):
        with pytest.raises(ConfigError, match=f"{key} must be an integer >= 1, got 0"):
            resolved(tiny_vit_digits, f"{key}=0")
    with pytest.raises(ConfigError, match="smoothed twice"):
        resolved(
            tiny_vit_digits,
            "label_smoothing=0.1",
            "mixup={'mixup_alpha': 0.2, 'label_smoothing': 0.1}",
        )


def test_extra_eval_split_is_reported_under_its_name(tmp_path, tiny_vit_digits):
    from scenic.train_lib import trained_model

    config, model_cls = resolved(tiny_vit_digits, "dataset_configs.eval_on_train=True")
    dataset = runner.build_dataset(config)
    result = trainer.train(model_cls=model_cls, dataset=dataset, config=config, workdir=tmp_path)
    metrics = result.metrics
    assert {"accuracy", "loss", "train/accuracy", "train/loss"} <= set(metrics)
    # train/accuracy is the trained model's accuracy on the 1,437 (unshifted) train images.
    loaded = trained_model.load_trained_model(model_cls, config, tmp_path)
    batches = list(dataset.extra_eval_splits["train"]())
    real = np.concatenate([b["batch_mask"] for b in batches]) > 0
    images = np.concatenate([b["inputs"] for b in batches])[real]
    labels = np.concatenate([b["label"] for b in batches])[real]
    assert len(labels) == 1437
    predicted = np.asarray(loaded(images)).argmax(-1)
    assert metrics["train/accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert metrics["train/accuracy"] != metrics["accuracy"]
    evaluated = trainer.evaluate_checkpoint(
        model_cls=model_cls, dataset=dataset, config=config, workdir=tmp_path
    )
    assert evaluated["train/accuracy"] == pytest.approx(metrics["train/accuracy"])
