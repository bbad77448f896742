"""The registered MBT models' losses and metrics, on given outputs, against NumPy float64 /
scikit-learn: per-modality losses over the modalities present, fused and single-modality
metrics for classification, multi-label (mAP, AUC, d-prime) and multi-head models."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from scenic_mbt.models import MODELS

SHAPES = {"rgb": (-1, 4, 8, 8, 1), "spectrogram": (-1, 8, 12, 1)}
MODEL = {"rgb_patch_size": (2, 4, 4), "spectrogram_patch_size": (4, 4), "hidden_size": 8,
         "num_layers": 2, "num_heads": 2, "mlp_dim": 8, "fusion_layer": 1}  # fmt: skip
RNG = np.random.default_rng(3)


def make(name, num_classes, **top_level):
    config = ml_collections.ConfigDict({"model": MODEL, **top_level})
    return MODELS[name](config, {"num_classes": num_classes, "input_shape": SHAPES})


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_training_loss_is_the_mean_over_present_modalities():
    model = make("mbt_classification", 5, label_smoothing=0.1)
    logits = RNG.normal(size=(4, 2, 5))
    present = np.array([[1, 1], [1, 0], [0, 1], [1, 1]], np.float32)
    label = np.array([0, 3, 4, 2])
    mask = np.array([1, 1, 1, 0], np.float32)
    outputs = {"logits": jnp.zeros((4, 5)), "modality_logits": jnp.asarray(logits),
               "present": jnp.asarray(present)}  # fmt: skip
    loss = model.loss_function(outputs, {"label": label, "batch_mask": mask})
    targets = np.full((4, 5), 0.1 / 5) + 0.9 * np.eye(5)[label]
    per_modality = -(targets[:, None] * log_softmax(logits)).sum(-1)  # [4, 2]
    per_example = (per_modality * present).sum(1) / present.sum(1)
    assert float(loss) == pytest.approx((per_example * mask).sum() / mask.sum(), rel=1e-5)


def eval_outputs(n, k):
    return {key: jnp.asarray(RNG.normal(size=(n, k)), jnp.float32)
            for key in ("logits", "logits_rgb_only", "logits_spectrogram_only")}  # fmt: skip


def test_classification_reports_every_view():
    model = make("mbt_classification", 5)
    outputs = eval_outputs(6, 5)
    label = RNG.integers(0, 5, 6)
    metrics = model.per_example_metrics(outputs, {"label": label})
    for prefix, key in (("", "logits"), ("rgb_only_", "logits_rgb_only")):
        expected = np.asarray(outputs[key]).argmax(-1) == label
        np.testing.assert_array_equal(metrics[f"{prefix}accuracy"], expected)
    totals = model.eval_totals(outputs, {"label": label, "batch_mask": np.ones(6)})
    summed = {k: {n: np.asarray(a, np.float64) for n, a in v.items()} for k, v in totals.items()}
    global_metrics = model.global_metrics(summed, {})
    assert {"mean_per_class_accuracy", "spectrogram_only_mean_per_class_accuracy"} <= set(
        global_metrics
    )


def test_multilabel_metrics_fused_and_per_modality():
    model = make("mbt_multilabel_classification", 4)
    outputs = eval_outputs(40, 4)
    labels = (RNG.random((40, 4)) < 0.4).astype(np.float32)
    labels[:2] = [[1, 1, 1, 1], [0, 0, 0, 0]]
    examples = model.eval_examples(outputs, {"label": labels})
    examples = {k: np.asarray(v) for k, v in examples.items()}
    metrics = model.global_metrics({}, examples)
    for prefix, key in (("", "logits"), ("spectrogram_only_", "logits_spectrogram_only")):
        scores = np.asarray(outputs[key])
        ap = np.mean([average_precision_score(labels[:, c], scores[:, c]) for c in range(4)])
        auc = np.mean([roc_auc_score(labels[:, c], scores[:, c]) for c in range(4)])
        assert metrics[f"{prefix}mAP"] == pytest.approx(ap, rel=1e-9)
        assert metrics[f"{prefix}AUC"] == pytest.approx(auc, rel=1e-9)
        assert metrics[f"{prefix}d_prime"] == pytest.approx(np.sqrt(2) * norm.ppf(auc), rel=1e-9)


def test_multihead_splits_verb_and_noun_in_every_view():
    model = make(
        "mbt_multihead_classification", 7, class_splits=[3, 4], split_names=["verb", "noun"]
    )
    assert model.flax_model.num_classes == 7
    outputs = eval_outputs(5, 7)
    verb, noun = RNG.integers(0, 3, 5), RNG.integers(0, 4, 5)
    label = np.concatenate([np.eye(3)[verb], np.eye(4)[noun]], 1).astype(np.float32)
    metrics = model.per_example_metrics(outputs, {"label": label})
    for prefix, key in (("", "logits"), ("rgb_only_", "logits_rgb_only")):
        logits = np.asarray(outputs[key])
        verb_ok = logits[:, :3].argmax(-1) == verb
        noun_ok = logits[:, 3:].argmax(-1) == noun
        np.testing.assert_array_equal(metrics[f"{prefix}accuracy_verb"], verb_ok)
        np.testing.assert_array_equal(metrics[f"{prefix}accuracy"], verb_ok & noun_ok)
    # Training: each modality's verb + noun loss, averaged over the modalities present.
    train = {"logits": outputs["logits"],
             "modality_logits": jnp.stack([outputs["logits"], outputs["logits_rgb_only"]], 1),
             "present": jnp.ones((5, 2))}  # fmt: skip
    loss = model.loss_function(train, {"label": label})
    ce = lambda x: -(log_softmax(x[:, :3])[np.arange(5), verb] + log_softmax(x[:, 3:])[np.arange(5), noun])  # noqa: E501
    expected = (ce(np.asarray(outputs["logits"])) + ce(np.asarray(outputs["logits_rgb_only"]))) / 2
    assert float(loss) == pytest.approx(expected.mean(), rel=1e-5)


def test_init_from_vit_npz_through_the_model(tmp_path):
    """`config.init_from_vit` reads a published-layout ViT .npz (flat '/' names) into both
    encoders of a fresh run's parameters."""
    import jax
    from flax import traverse_util

    from scenic_baselines.vit import ViT

    vit = ViT(num_classes=0, patch_size=(4, 4), hidden_size=8, num_layers=2, num_heads=2,
              mlp_dim=8, classifier="token")  # fmt: skip
    vit_params = vit.init({"params": jax.random.key(0)}, jnp.zeros((1, 16, 16, 3)))["params"]
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(vit_params).items()}
    np.savez(tmp_path / "vit.npz", **flat)
    settings = {"checkpoint": str(tmp_path / "vit.npz"), "kernel_init": "average"}
    model = make("mbt_classification", 5, init_from_vit=settings)
    inputs = {m: jnp.zeros((1, *s[1:])) for m, s in SHAPES.items()}
    params = model.flax_model.init({"params": jax.random.key(1)}, inputs)["params"]
    new, message = model.initialize_params(params)
    assert "vit.npz" in message and "average" in message
    block = "encoderblock_1/MlpBlock_3/Dense_0/kernel"
    for encoder in ("encoder_rgb", "encoder_spectrogram"):
        got = traverse_util.flatten_dict(new, sep="/")[f"{encoder}/{block}"]
        np.testing.assert_array_equal(got, flat[f"Transformer/{block}"])
    assert make("mbt_classification", 5).initialize_params(params) == (params, None)
