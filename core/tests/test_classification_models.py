"""ClassificationModel and MultiLabelClassificationModel: loss, l2 and (sum, normalizer)
metrics against NumPy float64 references, on padded batches, across a psum'ed axis.

Both base models are exercised through a tiny stand-in Flax module (a Dense layer), which
is all they need (`build_flax_model`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scenic.model_lib.base_models.base_model import BaseModel
from scenic.model_lib.base_models.classification_model import (
    ClassificationModel,
    MultiLabelClassificationModel,
)

NUM_CLASSES = 5
FEATURES = 3
BATCH = 8
NUM_REAL = 5
RTOL = 1e-5
ATOL = 1e-5


class TinyClassifier(ClassificationModel):
    def build_flax_model(self):
        return nn.Dense(self.num_classes, bias_init=nn.initializers.normal(0.5))


class TinyMultiLabelClassifier(MultiLabelClassificationModel):
    def build_flax_model(self):
        return nn.Dense(
            self.dataset_meta_data["num_classes"], bias_init=nn.initializers.normal(0.5)
        )


MODELS = [TinyClassifier, TinyMultiLabelClassifier]
METRIC_NAMES = {TinyClassifier: {"accuracy", "loss"}, TinyMultiLabelClassifier: {"prec@1", "loss"}}


def make_model(cls, label_smoothing=None, l2_decay_factor=None):
    config = ml_collections.ConfigDict(
        {"label_smoothing": label_smoothing, "l2_decay_factor": l2_decay_factor}
    )
    return cls(config, dataset_meta_data={"num_classes": NUM_CLASSES})


# --- NumPy float64 references --------------------------------------------------------------


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_smooth(targets, smoothing):
    return targets * (1.0 - smoothing) + smoothing / targets.shape[-1]


def np_per_example_loss(cls, logits, targets, smoothing=0.0):
    logits = np.asarray(logits, np.float64)
    targets = np_smooth(np.asarray(targets, np.float64), smoothing)
    if cls is TinyClassifier:
        return -(targets * np_log_softmax(logits)).sum(-1)
    return (np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))).sum(-1)


def np_per_example_metric(cls, logits, targets):
    logits = np.asarray(logits, np.float64)
    top = logits.argmax(-1)
    if cls is TinyClassifier:
        return (top == np.asarray(targets).argmax(-1)).astype(np.float64)
    return np.asarray(targets, np.float64)[np.arange(len(top)), top]


def np_l2(params):
    return 0.5 * sum(np.sum(np.square(np.asarray(p, np.float64))) for p in jax.tree.leaves(params))


# --- Batches -------------------------------------------------------------------------------


def dense_targets(cls, seed, batch=BATCH):
    """One-hot (single-label) or multi-hot (multi-label) float targets `[B, C]`."""
    rng = np.random.default_rng(seed)
    if cls is TinyClassifier:
        return np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, batch)]
    targets = (rng.random((batch, NUM_CLASSES)) < 0.4).astype(np.float32)
    targets[:, 0] = 1.0  # at least one positive per example
    return targets


def padded_batch(cls, seed, num_real=NUM_REAL):
    """Inputs / labels / batch_mask; padded rows hold huge (finite) inputs and any labels."""
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(BATCH, FEATURES)).astype(np.float32)
    inputs[num_real:] = 1e4 * rng.choice([-1.0, 1.0], size=inputs[num_real:].shape)
    mask = np.zeros(BATCH, np.float32)
    mask[:num_real] = 1.0
    return {"inputs": inputs, "label": dense_targets(cls, seed), "batch_mask": mask}


def init_params(model, seed=0):
    return model.flax_model.init(jax.random.key(seed), jnp.zeros((1, FEATURES)))["params"]


def logits_of(model, params, batch):
    return model.flax_model.apply({"params": params}, jnp.asarray(batch["inputs"]))


def real_rows(batch):
    keep = batch["batch_mask"] > 0
    return {k: v[keep] for k, v in batch.items()}


def to_jnp(batch):
    return {k: jnp.asarray(v) for k, v in batch.items()}


# --- Tests ---------------------------------------------------------------------------------


def test_base_model_requires_build_flax_model():
    with pytest.raises(NotImplementedError):
        BaseModel(ml_collections.ConfigDict(), {"num_classes": NUM_CLASSES})


@pytest.mark.parametrize("cls", MODELS)
def test_config_keys_and_flax_model(cls):
    model = make_model(cls)
    assert {"label_smoothing", "l2_decay_factor"} <= set(cls.config_keys)
    assert cls.model_config_keys() == ()
    assert isinstance(model.flax_model, nn.Module)
    assert model.dataset_meta_data == {"num_classes": NUM_CLASSES}


@pytest.mark.parametrize("smoothing", [None, 0.1])
@pytest.mark.parametrize("cls", MODELS)
def test_loss_matches_reference_and_ignores_padding(cls, smoothing):
    model = make_model(cls, label_smoothing=smoothing)
    params = init_params(model)
    batch = padded_batch(cls, seed=1)
    logits = logits_of(model, params, batch)
    loss = float(model.loss_function(logits, to_jnp(batch)))

    per_example = np_per_example_loss(cls, logits, batch["label"], smoothing or 0.0)
    mask = batch["batch_mask"]
    expected = (per_example * mask).sum() / mask.sum()
    np.testing.assert_allclose(loss, expected, RTOL, ATOL)

    # Same loss as on the real rows alone (padded rows had |logits| ~ 1e4).
    real = real_rows(batch)
    real_loss = float(model.loss_function(logits_of(model, params, real), to_jnp(real)))
    np.testing.assert_allclose(loss, real_loss, RTOL, ATOL)
    assert loss < 50.0


@pytest.mark.parametrize("cls", MODELS)
def test_label_smoothing_changes_the_loss(cls):
    batch = to_jnp(padded_batch(cls, seed=2))
    plain, smoothed = make_model(cls), make_model(cls, label_smoothing=0.2)
    params = init_params(plain)
    logits = logits_of(plain, params, batch)
    assert abs(float(plain.loss_function(logits, batch)) - float(
        smoothed.loss_function(logits, batch)
    )) > 1e-3


@pytest.mark.parametrize("cls", MODELS)
def test_loss_without_batch_mask_averages_every_example(cls):
    model = make_model(cls)
    batch = padded_batch(cls, seed=3, num_real=BATCH)
    del batch["batch_mask"]
    params = init_params(model)
    logits = logits_of(model, params, batch)
    loss = float(model.loss_function(logits, to_jnp(batch)))
    np.testing.assert_allclose(
        loss, np_per_example_loss(cls, logits, batch["label"]).mean(), RTOL, ATOL
    )


@pytest.mark.parametrize("factor", [None, 0.0, 1e-2])
@pytest.mark.parametrize("cls", MODELS)
def test_l2_decay_adds_half_squared_norm(cls, factor):
    model = make_model(cls, l2_decay_factor=factor)
    params = init_params(model)
    batch = to_jnp(padded_batch(cls, seed=4))
    logits = logits_of(model, params, batch)
    without = float(model.loss_function(logits, batch))  # no params: no l2 term
    with_l2 = float(model.loss_function(logits, batch, params))
    np.testing.assert_allclose(with_l2 - without, (factor or 0.0) * np_l2(params), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(float(model.l2_term(params)), (factor or 0.0) * np_l2(params),
                               rtol=1e-5)
    if factor:
        assert with_l2 > without


@pytest.mark.parametrize("cls", MODELS)
def test_padded_rows_do_not_change_the_gradient(cls):
    model = make_model(cls, label_smoothing=0.1, l2_decay_factor=1e-3)
    params = init_params(model)
    batch = padded_batch(cls, seed=5)
    real = real_rows(batch)

    def loss_fn(p, b):
        return model.loss_function(model.flax_model.apply({"params": p}, b["inputs"]), b, p)

    grad_padded = jax.grad(loss_fn)(params, to_jnp(batch))
    grad_real = jax.grad(loss_fn)(params, to_jnp(real))
    for g_pad, g_real in zip(jax.tree.leaves(grad_padded), jax.tree.leaves(grad_real)):
        assert np.all(np.isfinite(np.asarray(g_pad)))
        np.testing.assert_allclose(np.asarray(g_pad), np.asarray(g_real), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cls", MODELS)
def test_metrics_are_masked_sum_and_normalizer(cls):
    # Label smoothing must not leak into the reported loss metric.
    model = make_model(cls, label_smoothing=0.3)
    params = init_params(model)
    batch = padded_batch(cls, seed=6)
    logits = logits_of(model, params, batch)
    metrics = model.get_metrics(logits, to_jnp(batch))
    assert set(metrics) == METRIC_NAMES[cls]

    mask = batch["batch_mask"].astype(np.float64)
    loss_sum, loss_norm = metrics["loss"]
    expected_loss = (np_per_example_loss(cls, logits, batch["label"]) * mask).sum()
    np.testing.assert_allclose(float(loss_sum), expected_loss, RTOL, ATOL)
    assert float(loss_norm) == NUM_REAL

    name = (METRIC_NAMES[cls] - {"loss"}).pop()
    metric_sum, metric_norm = metrics[name]
    expected_metric = (np_per_example_metric(cls, logits, batch["label"]) * mask).sum()
    assert float(metric_sum) == pytest.approx(expected_metric)
    assert float(metric_norm) == NUM_REAL

    # Identical to the metrics of the real rows alone.
    real = real_rows(batch)
    real_metrics = model.get_metrics(logits_of(model, params, real), to_jnp(real))
    for key in metrics:
        np.testing.assert_allclose(np.asarray(metrics[key]), np.asarray(real_metrics[key]),
                                   RTOL, ATOL)


@pytest.mark.parametrize("cls", MODELS)
def test_metrics_without_batch_mask_count_every_example(cls):
    model = make_model(cls)
    batch = padded_batch(cls, seed=7, num_real=BATCH)
    del batch["batch_mask"]
    logits = logits_of(model, init_params(model), batch)
    for total, norm in model.get_metrics(logits, to_jnp(batch)).values():
        assert float(norm) == BATCH
        assert np.isfinite(float(total))


@pytest.mark.parametrize("cls", MODELS)
def test_metrics_psum_over_named_axis(cls):
    """Shard the batch over a named (vmap) axis: every shard gets the global pair."""
    model = make_model(cls)
    params = init_params(model)
    batch = padded_batch(cls, seed=8)
    logits = logits_of(model, params, batch)
    full = model.get_metrics(logits, to_jnp(batch))

    num_shards = 4
    sharded = {k: jnp.asarray(v).reshape(num_shards, -1, *v.shape[1:]) for k, v in batch.items()}
    sharded_logits = logits.reshape(num_shards, -1, NUM_CLASSES)
    per_shard = jax.vmap(
        lambda lg, b: model.get_metrics(lg, b, axis_name="device"), axis_name="device"
    )(sharded_logits, sharded)
    for key, (total, norm) in full.items():
        shard_total, shard_norm = per_shard[key]
        assert shard_total.shape == (num_shards,)
        np.testing.assert_allclose(np.asarray(shard_total), float(total), RTOL, ATOL)
        np.testing.assert_allclose(np.asarray(shard_norm), float(norm))


@pytest.mark.parametrize("cls", MODELS)
def test_metrics_under_pmap(cls):
    model = make_model(cls)
    params = init_params(model)
    n = jax.local_device_count()
    batch = padded_batch(cls, seed=9)
    batch = {k: np.concatenate([v] * n) for k, v in batch.items()}  # n * BATCH examples
    logits = np.asarray(logits_of(model, params, batch))
    shard = lambda x: jnp.asarray(x).reshape(n, -1, *x.shape[1:])

    per_device = jax.pmap(lambda lg, b: model.get_metrics(lg, b, axis_name="batch"), "batch")(
        shard(logits), {k: shard(v) for k, v in batch.items()}
    )
    mask = batch["batch_mask"].astype(np.float64)
    expected_loss = (np_per_example_loss(cls, logits, batch["label"]) * mask).sum()
    loss_sum, loss_norm = per_device["loss"]
    np.testing.assert_allclose(np.asarray(loss_sum), np.full(n, expected_loss), RTOL, ATOL)
    np.testing.assert_allclose(np.asarray(loss_norm), np.full(n, mask.sum()))


# --- ClassificationModel label formats ------------------------------------------------------


def test_classification_integer_and_one_hot_labels_agree():
    model = make_model(TinyClassifier, label_smoothing=0.1)
    params = init_params(model)
    batch = padded_batch(TinyClassifier, seed=10)
    int_batch = dict(batch, label=batch["label"].argmax(-1).astype(np.int32))
    logits = logits_of(model, params, batch)

    loss_one_hot = float(model.loss_function(logits, to_jnp(batch)))
    loss_int = float(model.loss_function(logits, to_jnp(int_batch)))
    np.testing.assert_allclose(loss_int, loss_one_hot, rtol=1e-6)

    m_one_hot = model.get_metrics(logits, to_jnp(batch))
    m_int = model.get_metrics(logits, to_jnp(int_batch))
    for key in m_one_hot:
        np.testing.assert_allclose(np.asarray(m_int[key]), np.asarray(m_one_hot[key]), rtol=1e-6)


def test_classification_soft_labels():
    """Mixup-style soft targets: loss is the soft cross-entropy, accuracy uses their arg-max."""
    model = make_model(TinyClassifier)
    params = init_params(model)
    batch = padded_batch(TinyClassifier, seed=11, num_real=BATCH)
    rng = np.random.default_rng(11)
    soft = rng.dirichlet(np.ones(NUM_CLASSES), size=BATCH).astype(np.float32)
    batch["label"] = soft
    logits = logits_of(model, params, batch)
    loss = float(model.loss_function(logits, to_jnp(batch)))
    np.testing.assert_allclose(loss, np_per_example_loss(TinyClassifier, logits, soft).mean(),
                               RTOL, ATOL)
    acc_sum, _ = model.get_metrics(logits, to_jnp(batch))["accuracy"]
    expected = (np.asarray(logits).argmax(-1) == soft.argmax(-1)).sum()
    assert float(acc_sum) == expected


def test_multilabel_accepts_integer_multi_hot_labels():
    model = make_model(TinyMultiLabelClassifier)
    params = init_params(model)
    batch = padded_batch(TinyMultiLabelClassifier, seed=12)
    int_batch = dict(batch, label=batch["label"].astype(np.int32))
    logits = logits_of(model, params, batch)
    np.testing.assert_allclose(
        float(model.loss_function(logits, to_jnp(int_batch))),
        float(model.loss_function(logits, to_jnp(batch))),
        rtol=1e-6,
    )


def test_classification_integer_one_hot_labels():
    model = make_model(TinyClassifier)
    params = init_params(model)
    batch = padded_batch(TinyClassifier, seed=13)
    int_one_hot = dict(batch, label=batch["label"].astype(np.int32))
    logits = logits_of(model, params, batch)
    np.testing.assert_allclose(
        float(model.loss_function(logits, to_jnp(int_one_hot))),
        float(model.loss_function(logits, to_jnp(batch))),
        rtol=1e-6,
    )
