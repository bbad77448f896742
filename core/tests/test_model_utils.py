"""Losses and metrics in `scenic.model_lib.model_utils` against NumPy float64 references.

Padded examples (batch_mask 0) carry large, finite garbage logits and arbitrary labels: if
they leaked into a sum or a normalizer, the result would move by orders of magnitude.

Also: Focal losses, top-k, precision@k, Dice, L1/L2, confusion matrix vs NumPy float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scenic.model_lib import model_utils

RTOL = 1e-5
ATOL = 1e-5
NUM_CLASSES = 7
GARBAGE = 1e4  # Large but finite: garbage * 0 is still 0 (inf or NaN would not be).


# --- NumPy float64 references --------------------------------------------------------------


def np_log_softmax(logits):
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_softmax_ce(logits, targets):
    return -(np.asarray(targets, np.float64) * np_log_softmax(logits)).sum(axis=-1)


def np_sigmoid_ce(logits, targets):
    x = np.asarray(logits, np.float64)
    t = np.asarray(targets, np.float64)
    # log(1 + exp(-|x|)) form: exact and stable in float64.
    return (np.maximum(x, 0.0) - x * t + np.log1p(np.exp(-np.abs(x)))).sum(axis=-1)


def np_smooth(targets, smoothing):
    targets = np.asarray(targets, np.float64)
    return targets * (1.0 - smoothing) + smoothing / targets.shape[-1]


def np_one_hot(labels, num_classes):
    return np.eye(num_classes, dtype=np.float64)[labels]


def np_weighted_mean(values, weights):
    weights = np.asarray(weights, np.float64)
    return float((values * weights).sum() / max(weights.sum(), 1e-8))


# --- Fixtures ------------------------------------------------------------------------------


def padded_batch(seed, batch=8, num_real=5, num_classes=NUM_CLASSES):
    """Random logits / integer labels; rows >= num_real are padding full of garbage."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, num_classes)).astype(np.float32) * 2.0
    labels = rng.integers(0, num_classes, size=batch)
    mask = np.zeros(batch, np.float32)
    mask[:num_real] = 1.0
    pad = slice(num_real, None)
    logits[pad] = GARBAGE * rng.choice([-1.0, 1.0], size=logits[pad].shape)
    return logits, labels, mask


def multi_hot(seed, batch=8, num_classes=NUM_CLASSES):
    rng = np.random.default_rng(seed)
    return (rng.random((batch, num_classes)) < 0.4).astype(np.float32)


# --- Targets -------------------------------------------------------------------------------


def test_one_hot_or_soft_turns_integer_labels_into_one_hot():
    labels = np.array([0, 3, 6, 2])
    out = model_utils.one_hot_or_soft(jnp.asarray(labels), NUM_CLASSES)
    np.testing.assert_array_equal(np.asarray(out), np_one_hot(labels, NUM_CLASSES))


def test_one_hot_or_soft_passes_float_targets_through():
    rng = np.random.default_rng(0)
    soft = rng.dirichlet(np.ones(NUM_CLASSES), size=4).astype(np.float32)
    out = model_utils.one_hot_or_soft(jnp.asarray(soft), NUM_CLASSES)
    assert out.shape == (4, NUM_CLASSES)
    np.testing.assert_array_equal(np.asarray(out), soft)


@pytest.mark.parametrize("smoothing", [None, 0.0, 0.1, 0.3])
def test_apply_label_smoothing(smoothing):
    targets = np_one_hot(np.array([1, 0, 4]), 5).astype(np.float32)
    out = np.asarray(model_utils.apply_label_smoothing(jnp.asarray(targets), smoothing))
    np.testing.assert_allclose(out, np_smooth(targets, smoothing or 0.0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-6)
    if smoothing:
        np.testing.assert_allclose(out.max(axis=-1), 1.0 - smoothing + smoothing / 5, rtol=1e-6)
        np.testing.assert_allclose(out.min(axis=-1), smoothing / 5, rtol=1e-6)


# --- Per-example losses --------------------------------------------------------------------


def test_softmax_cross_entropy_matches_reference_on_soft_targets():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, NUM_CLASSES)).astype(np.float32) * 3
    targets = rng.dirichlet(np.ones(NUM_CLASSES), size=6).astype(np.float32)
    out = model_utils.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
    assert out.shape == (6,)
    np.testing.assert_allclose(np.asarray(out), np_softmax_ce(logits, targets), RTOL, ATOL)


def test_softmax_cross_entropy_is_stable_for_large_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [-500.0, 500.0, 499.0]], np.float32)
    targets = np.array([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]], np.float32)
    out = np.asarray(model_utils.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(targets)))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, np_softmax_ce(logits, targets), rtol=1e-6)


def test_sigmoid_cross_entropy_matches_reference():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(5, NUM_CLASSES)).astype(np.float32) * 3
    targets = rng.random((5, NUM_CLASSES)).astype(np.float32)  # soft targets too
    out = model_utils.sigmoid_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
    assert out.shape == (5,)
    np.testing.assert_allclose(np.asarray(out), np_sigmoid_ce(logits, targets), RTOL, ATOL)


def test_sigmoid_cross_entropy_is_stable_at_large_logits():
    logits = np.array([[100.0, -100.0, 100.0, -100.0, 0.0]], np.float32)
    targets = np.array([[1.0, 0.0, 0.0, 1.0, 1.0]], np.float32)
    # Confident-right terms ~ 0, confident-wrong terms = 100 each, logit 0 gives log 2.
    expected = 200.0 + np.log(2.0)
    out = model_utils.sigmoid_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
    assert np.isfinite(float(out[0]))
    np.testing.assert_allclose(float(out[0]), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out), np_sigmoid_ce(logits, targets), rtol=1e-6)

    # Gradient is sigmoid(x) - t: finite, and exactly 0 / +-1 at saturation.
    grad = jax.grad(lambda x: model_utils.sigmoid_cross_entropy(x, jnp.asarray(targets)).sum())(
        jnp.asarray(logits)
    )
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad))
    expected_grad = 1.0 / (1.0 + np.exp(-logits.astype(np.float64))) - targets
    np.testing.assert_allclose(grad, expected_grad, atol=1e-6)


# --- Weighted (mean over real examples) losses ---------------------------------------------


@pytest.mark.parametrize("smoothing", [None, 0.1])
@pytest.mark.parametrize("label_kind", ["int", "one_hot"])
def test_weighted_softmax_cross_entropy_padded(smoothing, label_kind):
    logits, labels, mask = padded_batch(seed=3)
    one_hot = np_one_hot(labels, NUM_CLASSES)
    raw = jnp.asarray(labels) if label_kind == "int" else jnp.asarray(one_hot, jnp.float32)
    targets = model_utils.one_hot_or_soft(raw, NUM_CLASSES)
    loss = model_utils.weighted_softmax_cross_entropy(
        jnp.asarray(logits), targets, jnp.asarray(mask), label_smoothing=smoothing
    )
    per_example = np_softmax_ce(logits, np_smooth(one_hot, smoothing or 0.0))
    expected = np_weighted_mean(per_example, mask)
    np.testing.assert_allclose(float(loss), expected, RTOL, ATOL)
    # Same value as the loss over the real rows alone: padding changes nothing.
    real = mask > 0
    real_only = model_utils.weighted_softmax_cross_entropy(
        jnp.asarray(logits[real]), targets[real], None, label_smoothing=smoothing
    )
    np.testing.assert_allclose(float(loss), float(real_only), RTOL, ATOL)
    assert float(loss) < 100.0  # a padded row would have contributed ~1e4


def test_weighted_softmax_cross_entropy_without_weights_is_plain_mean():
    logits, labels, _ = padded_batch(seed=4, num_real=8)
    one_hot = np_one_hot(labels, NUM_CLASSES)
    loss = model_utils.weighted_softmax_cross_entropy(
        jnp.asarray(logits), jnp.asarray(one_hot, jnp.float32)
    )
    np.testing.assert_allclose(float(loss), np_softmax_ce(logits, one_hot).mean(), RTOL, ATOL)


def test_weighted_softmax_cross_entropy_non_binary_weights():
    logits, labels, _ = padded_batch(seed=5, num_real=8)
    one_hot = np_one_hot(labels, NUM_CLASSES)
    weights = np.random.default_rng(5).random(8).astype(np.float32)
    loss = model_utils.weighted_softmax_cross_entropy(
        jnp.asarray(logits), jnp.asarray(one_hot, jnp.float32), jnp.asarray(weights)
    )
    expected = np_weighted_mean(np_softmax_ce(logits, one_hot), weights)
    np.testing.assert_allclose(float(loss), expected, RTOL, ATOL)


@pytest.mark.parametrize("smoothing", [None, 0.2])
def test_weighted_sigmoid_cross_entropy_padded(smoothing):
    logits, _, mask = padded_batch(seed=6)
    targets = multi_hot(seed=6)
    loss = model_utils.weighted_sigmoid_cross_entropy(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask), label_smoothing=smoothing
    )
    per_example = np_sigmoid_ce(logits, np_smooth(targets, smoothing or 0.0))
    expected = np_weighted_mean(per_example, mask)
    np.testing.assert_allclose(float(loss), expected, RTOL, ATOL)
    assert float(loss) < 100.0


def test_weighted_losses_of_an_all_padding_batch_are_zero_not_nan():
    logits, labels, _ = padded_batch(seed=7, num_real=0)
    mask = jnp.zeros(8)
    one_hot = jnp.asarray(np_one_hot(labels, NUM_CLASSES), jnp.float32)
    softmax = model_utils.weighted_softmax_cross_entropy(jnp.asarray(logits), one_hot, mask)
    sigmoid = model_utils.weighted_sigmoid_cross_entropy(jnp.asarray(logits), one_hot, mask)
    assert float(softmax) == 0.0
    assert float(sigmoid) == 0.0


def test_padded_rows_get_zero_gradient():
    logits, labels, mask = padded_batch(seed=8)
    one_hot = jnp.asarray(np_one_hot(labels, NUM_CLASSES), jnp.float32)
    grad = jax.grad(model_utils.weighted_softmax_cross_entropy)(
        jnp.asarray(logits), one_hot, jnp.asarray(mask), 0.1
    )
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[mask == 0], 0.0)
    # Real rows: (softmax - smoothed targets) / num_real.
    probs = np.exp(np_log_softmax(logits[mask > 0]))
    expected = (probs - np_smooth(np.asarray(one_hot)[mask > 0], 0.1)) / mask.sum()
    np.testing.assert_allclose(grad[mask > 0], expected, atol=1e-6)


def test_weighted_loss_under_jit_matches_eager():
    logits, labels, mask = padded_batch(seed=9)
    args = (jnp.asarray(logits), jax.nn.one_hot(labels, NUM_CLASSES), jnp.asarray(mask))
    eager = model_utils.weighted_softmax_cross_entropy(*args, label_smoothing=0.1)
    jitted = jax.jit(model_utils.weighted_softmax_cross_entropy, static_argnums=3)(*args, 0.1)
    np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-6)


# --- Per-example metrics -------------------------------------------------------------------


def test_correctly_classified_matches_reference():
    rng = np.random.default_rng(10)
    logits = rng.normal(size=(32, NUM_CLASSES)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=32)
    labels[:8] = logits[:8].argmax(-1)  # make sure some are right
    out = model_utils.correctly_classified(jnp.asarray(logits), jax.nn.one_hot(labels, NUM_CLASSES))
    expected = (logits.argmax(-1) == labels).astype(np.float64)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), expected)
    assert 0 < expected.sum() < 32


def test_correctly_classified_uses_argmax_of_soft_targets():
    logits = jnp.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    soft = jnp.array([[0.1, 0.6, 0.3], [0.2, 0.5, 0.3]])
    np.testing.assert_array_equal(
        np.asarray(model_utils.correctly_classified(logits, soft)), [1.0, 0.0]
    )


def test_top1_is_positive_matches_reference():
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(32, NUM_CLASSES)).astype(np.float32)
    targets = multi_hot(seed=11, batch=32)
    out = model_utils.top1_is_positive(jnp.asarray(logits), jnp.asarray(targets))
    expected = targets[np.arange(32), logits.argmax(-1)].astype(np.float64)
    assert out.shape == (32,) and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), expected)
    assert 0 < expected.sum() < 32


# --- L2 penalty ----------------------------------------------------------------------------


def test_l2_penalty_is_half_the_squared_norm_of_all_leaves():
    rng = np.random.default_rng(12)
    params = {
        "dense": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=(4,))},
        "block": [{"scale": rng.normal(size=(2, 2, 2))}, rng.normal(size=(5,))],
    }
    expected = 0.5 * sum(np.sum(np.square(p)) for p in jax.tree.leaves(params))
    jax_params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
    np.testing.assert_allclose(float(model_utils.l2_penalty(jax_params)), expected, rtol=1e-6)


def test_l2_penalty_of_known_values_and_empty_tree():
    params = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([[1.0]])}
    assert float(model_utils.l2_penalty(params)) == pytest.approx(0.5 * 26.0)
    assert float(model_utils.l2_penalty({})) == 0.0


# --- (sum, normalizer) ---------------------------------------------------------------------


def test_sum_and_normalizer_ignores_padded_rows():
    rng = np.random.default_rng(13)
    values = rng.normal(size=10).astype(np.float32)
    mask = np.array([1, 1, 0, 1, 1, 0, 1, 0, 0, 1], np.float32)
    values[mask == 0] = GARBAGE
    total, norm = model_utils.sum_and_normalizer(jnp.asarray(values), jnp.asarray(mask))
    np.testing.assert_allclose(float(total), values[mask > 0].astype(np.float64).sum(), RTOL)
    assert float(norm) == 6.0


def test_sum_and_normalizer_without_weights_counts_every_row():
    values = jnp.array([1.0, 2.0, 3.5])
    total, norm = model_utils.sum_and_normalizer(values, None)
    assert float(total) == 6.5
    assert float(norm) == 3.0


def test_sum_and_normalizer_non_binary_weights_and_integer_values():
    values = jnp.array([1, 0, 1, 1], jnp.int32)
    weights = jnp.array([0.5, 2.0, 0.0, 1.0])
    total, norm = model_utils.sum_and_normalizer(values, weights)
    assert total.dtype == jnp.float32 and norm.dtype == jnp.float32
    assert float(total) == pytest.approx(1.5)
    assert float(norm) == pytest.approx(3.5)


def _sharded_inputs(num_shards, per_shard, seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(num_shards, per_shard)).astype(np.float32)
    mask = (rng.random((num_shards, per_shard)) < 0.6).astype(np.float32)
    mask[0, 0] = 1.0
    values[mask == 0] = GARBAGE
    expected_sum = (values.astype(np.float64) * mask).sum()
    return values, mask, expected_sum, mask.sum()


def test_sum_and_normalizer_psums_over_named_vmap_axis():
    values, mask, expected_sum, expected_norm = _sharded_inputs(3, 4, seed=14)
    fn = jax.vmap(
        lambda v, w: model_utils.sum_and_normalizer(v, w, axis_name="batch"), axis_name="batch"
    )
    total, norm = fn(jnp.asarray(values), jnp.asarray(mask))
    # Every shard holds the global pair.
    assert total.shape == (3,) and norm.shape == (3,)
    np.testing.assert_allclose(np.asarray(total), expected_sum, RTOL, ATOL)
    np.testing.assert_allclose(np.asarray(norm), expected_norm)
    # Without axis_name each shard keeps its local pair.
    local_total, _ = jax.vmap(lambda v, w: model_utils.sum_and_normalizer(v, w))(
        jnp.asarray(values), jnp.asarray(mask)
    )
    np.testing.assert_allclose(
        np.asarray(local_total), (values.astype(np.float64) * mask).sum(axis=1), RTOL, ATOL
    )


def test_sum_and_normalizer_under_pmap():
    n = jax.local_device_count()
    values, mask, expected_sum, expected_norm = _sharded_inputs(n, 5, seed=15)
    fn = jax.pmap(lambda v, w: model_utils.sum_and_normalizer(v, w, axis_name="d"), "d")
    total, norm = fn(jnp.asarray(values), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(total), np.full(n, expected_sum), RTOL, ATOL)
    np.testing.assert_allclose(np.asarray(norm), np.full(n, expected_norm))


RNG = np.random.default_rng(0)


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("alpha", [None, 0.25])
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_sigmoid_focal_loss(alpha, gamma):
    logits = RNG.normal(size=(6, 5)) * 3
    targets = (RNG.random((6, 5)) < 0.4).astype(np.float64)
    p = np_sigmoid(logits)
    p_t = np.where(targets == 1, p, 1 - p)
    expected = -np.log(p_t) * (1 - p_t) ** gamma
    if alpha is not None:
        expected *= np.where(targets == 1, alpha, 1 - alpha)
    got = model_utils.sigmoid_focal_loss(jnp.asarray(logits, jnp.float32), targets, alpha, gamma)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_sigmoid_focal_loss_gradient_is_finite_at_saturated_logits():
    """At gamma 0 the loss is BCE, whose gradient is finite everywhere: (1 - p_t) ** 0.0
    must not be differentiated where p_t rounds to 1 (it gives NaN there)."""
    logits = jnp.array([40.0, -120.0, 0.0, -40.0])
    targets = jnp.array([1.0, 0.0, 1.0, 1.0])
    for gamma in (0.0, 2.0):
        loss = lambda x, g=gamma: model_utils.sigmoid_focal_loss(x, targets, 0.5, g).sum()
        grad = np.asarray(jax.grad(loss)(logits))
        assert np.all(np.isfinite(grad)), (gamma, grad)
        assert grad[3] < -0.49 * (gamma == 0) and grad[2] < 0  # positives pulled up


def test_softmax_focal_loss_reduces_to_cross_entropy_at_gamma_zero():
    logits = RNG.normal(size=(4, 6))
    targets = np.eye(6)[RNG.integers(0, 6, 4)]
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    for gamma in (0.0, 1.5):
        expected = -(targets * (1 - np.exp(log_p)) ** gamma * log_p).sum(-1)
        got = model_utils.softmax_focal_loss(jnp.asarray(logits, jnp.float32), targets, gamma)
        np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_topk_and_precision_at_k():
    logits = RNG.normal(size=(50, 10))
    labels = RNG.integers(0, 10, 50)
    order = np.argsort(-logits, axis=-1)
    for k in (1, 3, 10):
        expected = np.array([labels[i] in order[i, :k] for i in range(50)], np.float32)
        got = model_utils.topk_correct(jnp.asarray(logits), jnp.eye(10)[labels], k)
        np.testing.assert_array_equal(got, expected)
    multi_hot = (RNG.random((50, 10)) < 0.3).astype(np.float32)
    for k in (1, 4):
        expected = np.array([multi_hot[i, order[i, :k]].mean() for i in range(50)])
        got = model_utils.precision_at_k(jnp.asarray(logits), jnp.asarray(multi_hot), k)
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_dice_l1_l2():
    logits = RNG.normal(size=(3, 4, 4))
    targets = (RNG.random((3, 4, 4)) < 0.5).astype(np.float64)
    p = np_sigmoid(logits).reshape(3, -1)
    t = targets.reshape(3, -1)
    expected = 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)
    np.testing.assert_allclose(
        model_utils.dice_loss(jnp.asarray(logits, jnp.float32), targets), expected, rtol=1e-5
    )
    a, b = RNG.normal(size=(3, 2, 5)), RNG.normal(size=(3, 2, 5))
    np.testing.assert_allclose(model_utils.l1_loss(a, b), np.abs(a - b).sum((1, 2)), rtol=1e-5)
    np.testing.assert_allclose(model_utils.l2_loss(a, b), ((a - b) ** 2).sum((1, 2)), rtol=1e-5)


def test_confusion_matrix_ignores_padding():
    labels = RNG.integers(0, 4, 40)
    preds = RNG.integers(0, 4, 40)
    mask = (RNG.random(40) < 0.7).astype(np.float32)
    expected = np.zeros((4, 4))
    for y, p, m in zip(labels, preds, mask):
        expected[y, p] += m
    labels, preds = jnp.asarray(labels), jnp.asarray(preds)
    got = model_utils.confusion_matrix(labels, preds, 4, jnp.asarray(mask))
    np.testing.assert_array_equal(got, expected)
    assert float(model_utils.confusion_matrix(labels, preds, 4).sum()) == 40
