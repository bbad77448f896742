"""Base models: registry wiring, and the multi-head model's loss and metrics against NumPy
float64."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scenic_vivit import model as vivit
from scenic_vivit.models import MODELS, ViViTMultiHeadClassification

TINY = {"patch_size": (2, 4, 4), "hidden_size": 8, "num_layers": 1, "num_heads": 2, "mlp_dim": 8}


def config(**top):
    values = {"model": dict(TINY), "label_smoothing": None, "l2_decay_factor": None}
    values.update(top)
    return ml_collections.ConfigDict(values)


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_registry_builds_each_model_and_accepts_only_vivit_keys():
    video = jnp.zeros((1, 4, 8, 8, 3))
    for name, cls in MODELS.items():
        top = {"class_splits": [2, 3], "split_names": None} if "multihead" in name else {}
        model = cls(config(**top), {"num_classes": 5})
        assert isinstance(model.flax_model, vivit.ViViT)
        variables = model.flax_model.init(jax.random.key(0), video)
        assert model.flax_model.apply(variables, video).shape == (1, 5)
        keys = set(cls.model_config_keys())
        assert {"variant", "tokenizer", "patch_size", "temporal_num_layers"} <= keys
        assert "num_classes" not in keys
    with pytest.raises(ValueError, match="variant"):
        MODELS["vivit_classification"](
            config(model={**TINY, "variant": "model5"}), {"num_classes": 3}
        )


def numpy_multihead(logits, labels, splits, mask, smoothing):
    """Per-head CE (smoothed for the loss), accuracies and joint accuracy, in float64."""
    logits = np.asarray(logits, np.float64)
    edges = np.cumsum(splits)[:-1]
    loss, per_head, correct = 0.0, [], []
    for i, head in enumerate(np.split(logits, edges, axis=-1)):
        onehot = np.eye(splits[i])[labels[:, i]]
        smooth = onehot * (1 - smoothing) + smoothing / splits[i]
        ce = -(smooth * np_log_softmax(head)).sum(-1)
        loss += (ce * mask).sum() / mask.sum()
        per_head.append(-(onehot * np_log_softmax(head)).sum(-1))
        correct.append(head.argmax(-1) == labels[:, i])
    joint = np.all(correct, axis=0)
    return loss, per_head, correct, joint


@pytest.mark.parametrize("smoothing", [None, 0.2])
def test_multihead_loss_and_metrics_match_numpy(smoothing):
    splits = [3, 4, 2]
    model = ViViTMultiHeadClassification(
        config(
            class_splits=splits,
            split_names=["verb", "noun", "hand"],
            label_smoothing=smoothing,
            per_class_accuracy=True,
        ),
        {"num_classes": 9},
    )
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 9)) * 3
    logits[0] = 0.0  # ties: argmax takes the first class in both implementations
    logits[1, :3] = [50.0, -50.0, 0.0]  # saturated softmax
    labels = np.stack([rng.integers(0, n, 6) for n in splits], axis=1)
    labels[2] = [int(np.argmax(b)) for b in np.split(logits[2], [3, 7])]  # all heads right
    labels[3, 0] = np.argmax(logits[3, :3])  # first head right, second wrong
    labels[3, 1] = (np.argmax(logits[3, 3:7]) + 1) % 4
    mask = np.array([1, 1, 1, 1, 0, 1], np.float32)
    loss, per_head, correct, joint = numpy_multihead(logits, labels, splits, mask, smoothing or 0.0)
    batches = {
        "indices": {"label": jnp.asarray(labels), "batch_mask": jnp.asarray(mask)},
        "one_hot": {
            "label": jnp.asarray(
                np.concatenate(
                    [np.eye(n)[labels[:, i]] for i, n in enumerate(splits)], axis=1
                ).astype(np.float32)
            ),
            "batch_mask": jnp.asarray(mask),
        },
    }
    for batch in batches.values():
        got = model.loss_function(jnp.asarray(logits, jnp.float32), batch)
        np.testing.assert_allclose(got, loss, rtol=1e-5)
        metrics = model.get_metrics(jnp.asarray(logits, jnp.float32), batch)
        for i, name in enumerate(["verb", "noun", "hand"]):
            np.testing.assert_allclose(
                metrics[f"loss_{name}"][0], (per_head[i] * mask).sum(), rtol=1e-5
            )
            assert metrics[f"accuracy_{name}"][0] == (correct[i] * mask).sum()
        assert metrics["accuracy"][0] == (joint * mask).sum()
        assert metrics["accuracy"][1] == mask.sum()
        np.testing.assert_allclose(metrics["loss"][0], (sum(per_head) * mask).sum(), rtol=1e-5)
        # Per-class accuracy of each head over the real examples: NumPy, class by class.
        totals = jax.tree.map(np.asarray, model.eval_totals(jnp.asarray(logits), batch))
        listed = model.global_metrics(totals, {})
        for i, name in enumerate(["verb", "noun", "hand"]):
            real = mask > 0
            present = np.unique(labels[real, i])
            expected = {c: correct[i][real & (labels[:, i] == c)].mean() for c in present}
            assert listed[f"mean_per_class_accuracy_{name}"] == pytest.approx(
                np.mean(list(expected.values()))
            )
            for c, value in expected.items():
                assert listed[f"per_class_accuracy_{name}/{c}"] == pytest.approx(value)
            absent = set(range(splits[i])) - set(present.tolist())
            assert not {f"per_class_accuracy_{name}/{c}" for c in absent} & set(listed)
    assert 0 < (joint * mask).sum() < (correct[0] * mask).sum()


def test_multihead_rejects_inconsistent_settings():
    with pytest.raises(ValueError, match="sum to 5.*num_classes=6"):
        ViViTMultiHeadClassification(config(class_splits=[2, 3]), {"num_classes": 6})
    with pytest.raises(ValueError, match="class_splits"):
        ViViTMultiHeadClassification(config(class_splits=None), {"num_classes": 6})
    model = ViViTMultiHeadClassification(
        config(class_splits=[2, 3], split_names=["verb"]), {"num_classes": 5}
    )
    with pytest.raises(ValueError, match="split_names"):
        model.get_metrics(jnp.zeros((1, 5)), {"label": jnp.zeros((1, 2), jnp.int32)})
    model = ViViTMultiHeadClassification(config(class_splits=[2, 3]), {"num_classes": 5})
    with pytest.raises(ValueError, match=r"integer \[batch, 2\] or one-hot \[batch, 5\]"):
        model.loss_function(jnp.zeros((1, 5)), {"label": jnp.zeros((1, 4))})
    with pytest.raises(ValueError, match=r"\[batch, 2 heads\]"):
        model.loss_function(jnp.zeros((1, 5)), {"label": jnp.zeros((1, 3), jnp.int32)})


def test_multilabel_model_uses_sigmoid_loss():
    model = MODELS["vivit_multilabel_classification"](config(), {"num_classes": 3})
    logits = jnp.array([[2.0, -1.0, 0.5]])
    batch = {"label": jnp.array([[1.0, 0.0, 1.0]]), "batch_mask": jnp.ones((1,))}
    x = np.array([2.0, -1.0, 0.5])
    y = np.array([1.0, 0.0, 1.0])
    expected = -(y * np.log(1 / (1 + np.exp(-x))) + (1 - y) * np.log(1 / (1 + np.exp(x)))).sum()
    np.testing.assert_allclose(model.loss_function(logits, batch), expected, rtol=1e-5)


def test_multihead_per_class_accuracy_through_the_trainers_evaluate():
    """Nested per-head totals are psum'ed in the pmapped eval step, summed over batches and
    turned into each head's mean per-class accuracy; padding rows do not count."""
    from scenic.train_lib import evaluation, steps
    from scenic.train_lib.train_state import TrainState, replicate

    class FixedLogits:
        def apply(self, variables, inputs, train=False):
            return inputs

    model = ViViTMultiHeadClassification(
        config(class_splits=[2, 3], split_names=["verb", "noun"]), {"num_classes": 5}
    )
    model.flax_model = FixedLogits()
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(8, 5)).astype(np.float32)
    labels = np.stack([rng.integers(0, 2, 8), rng.integers(0, 3, 8)], axis=1).astype(np.int32)
    mask = np.r_[np.ones(6), np.zeros(2)].astype(np.float32)
    batches = [
        {"inputs": logits[i : i + 4], "label": labels[i : i + 4], "batch_mask": mask[i : i + 4]}
        for i in (0, 4)
    ]

    state = TrainState(
        step=np.zeros((), np.int32), params={}, opt_state={}, model_state={}, rng=np.zeros(2)
    )
    p_eval = jax.pmap(functools.partial(steps.eval_step, model=model), axis_name=steps.AXIS)
    metrics = evaluation.evaluate(p_eval, replicate(state), batches, 1, model)
    for head, (name, columns) in enumerate((("verb", slice(0, 2)), ("noun", slice(2, 5)))):
        predicted, truth = logits[:6, columns].argmax(-1), labels[:6, head]
        expected = np.mean([np.mean(predicted[truth == c] == c) for c in np.unique(truth)])
        assert metrics[f"mean_per_class_accuracy_{name}"] == pytest.approx(expected)
