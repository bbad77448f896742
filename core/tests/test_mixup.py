"""Mixup / CutMix against a NumPy float64 reference given the same lambda, partner and box."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.stats

from scenic.common_lib.config_utils import ConfigError
from scenic.train_lib import mixup as mx

K = 5


def reference_partner(mask):
    real = [i for i in range(len(mask)) if mask[i] > 0]
    partner = list(range(len(mask)))
    for i, j in zip(real, reversed(real), strict=True):
        partner[i] = j
    return np.array(partner)


def reference_targets(label, smoothing):
    label = np.asarray(label)
    t = np.eye(K)[label] if label.ndim == 1 else label.astype(np.float64)
    return t * (1 - smoothing) + smoothing / K


def make_batch(shape=(6, 4, 5, 3), mask=None, soft=False, seed=0):
    rng = np.random.default_rng(seed)
    batch_size = shape[0]
    label = rng.integers(0, K, batch_size)
    if soft:
        label = rng.dirichlet(np.ones(K), batch_size).astype(np.float32)
    mask = np.ones(batch_size, np.float32) if mask is None else np.asarray(mask, np.float32)
    inputs = rng.normal(size=shape).astype(np.float32)
    return {"inputs": inputs, "label": label, "batch_mask": mask}


@pytest.mark.parametrize(
    "mask",
    [
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0, 0],
        [0, 1, 0, 1, 1, 0, 1],  # padding scattered through the batch
        [1, 0, 0],
        [0, 0, 0],
        [1, 1, 1, 1, 1],
    ],
)
def test_partner_is_the_flip_among_real_examples(mask):
    partner = np.asarray(jax.jit(mx.partner_indices)(jnp.asarray(mask, jnp.float32)))
    np.testing.assert_array_equal(partner, reference_partner(mask))
    np.testing.assert_array_equal(partner[partner], np.arange(len(mask)))  # an involution
    if all(mask):
        np.testing.assert_array_equal(partner, np.arange(len(mask))[::-1])


@pytest.mark.parametrize("shape", [(6, 4, 5, 3), (6, 3, 4, 5, 2)])  # images and video
@pytest.mark.parametrize("per_example, soft, smoothing", [(False, False, 0.0), (True, True, 0.1)])
def test_mixup_matches_numpy(shape, per_example, soft, smoothing):
    batch = make_batch(shape, mask=[1, 1, 0, 1, 1, 0], soft=soft)
    rng = np.random.default_rng(1)
    lam = rng.uniform(size=shape[0]) if per_example else rng.uniform()
    partner = reference_partner(batch["batch_mask"])
    out = jax.jit(lambda b, lam, p: mx.mixup(b, lam, p, num_classes=K, label_smoothing=smoothing))(
        batch, jnp.asarray(lam, jnp.float32), partner
    )
    lam64 = np.broadcast_to(np.float32(lam), (shape[0],)).astype(np.float64)
    lam_x = lam64.reshape((-1,) + (1,) * (len(shape) - 1))
    x = batch["inputs"].astype(np.float64)
    np.testing.assert_allclose(out["inputs"], lam_x * x + (1 - lam_x) * x[partner], atol=1e-6)
    t = reference_targets(batch["label"], smoothing)
    expected = lam64[:, None] * t + (1 - lam64[:, None]) * t[partner]
    np.testing.assert_allclose(out["label"], expected, atol=1e-6)
    np.testing.assert_array_equal(out["batch_mask"], batch["batch_mask"])


@pytest.mark.parametrize("shape", [(4, 6, 5, 2), (4, 3, 6, 5, 2)])
@pytest.mark.parametrize("box", [(1, 2, 4, 5), (0, 0, 6, 5), (3, 3, 3, 5), (5, 0, 6, 1)])
def test_cutmix_matches_numpy_and_corrects_lambda_to_the_box(shape, box):
    batch = make_batch(shape, mask=[1, 1, 1, 0])
    partner = reference_partner(batch["batch_mask"])
    out = jax.jit(lambda b, bx: mx.cutmix(b, bx, partner, num_classes=K, label_smoothing=0.1))(
        batch, box
    )
    y0, x0, y1, x1 = box
    expected = batch["inputs"].astype(np.float64).copy()
    expected[..., y0:y1, x0:x1, :] = batch["inputs"][partner][..., y0:y1, x0:x1, :]
    np.testing.assert_array_equal(out["inputs"], expected)
    lam = 1 - (y1 - y0) * (x1 - x0) / (shape[-3] * shape[-2])
    t = reference_targets(batch["label"], 0.1)
    np.testing.assert_allclose(out["label"], lam * t + (1 - lam) * t[partner], atol=1e-6)
    np.testing.assert_array_equal(out["inputs"][3], batch["inputs"][3])  # padding unchanged


def test_cutmix_box_is_in_bounds_and_has_the_requested_side():
    height, width = 7, 10
    keys = jax.random.split(jax.random.key(0), 400)
    lams = jax.random.uniform(jax.random.key(1), (400,))
    boxes = np.stack(
        jax.vmap(lambda k, lam: mx.sample_cutmix_box(k, lam, height, width))(keys, lams)
    )
    y0, x0, y1, x1 = boxes
    assert np.all((0 <= y0) & (y0 <= y1) & (y1 <= height) & (0 <= x0) & (x0 <= x1) & (x1 <= width))
    ratio = np.sqrt(1 - np.asarray(lams, np.float64))
    cut_h, cut_w = np.floor(height * ratio), np.floor(width * ratio)
    inside = (y0 > 0) & (y1 < height) & (x0 > 0) & (x1 < width)  # not clipped
    assert inside.sum() > 50
    np.testing.assert_array_equal((y1 - y0)[inside], cut_h[inside])
    np.testing.assert_array_equal((x1 - x0)[inside], cut_w[inside])
    assert np.all(y1 - y0 <= cut_h) and np.all(x1 - x0 <= cut_w)
    centre_y = y0 + cut_h // 2  # the centre is uniform over the rows: every row occurs
    assert set(np.unique(centre_y[y0 > 0])) >= set(range(1, height - 1))


# One compiled mix_batch shared by the tests below (same shapes; probabilities traced).
_MIX = jax.jit(
    functools.partial(
        mx.mix_batch, num_classes=K, mixup_alpha=0.8, cutmix_alpha=1.0, per_example=True
    )
)
SHAPE = (6, 4, 4, 3)
KEYS = jax.random.split(jax.random.key(0), 8)


def mix(key, batch, switch_prob=0.5, mix_prob=1.0):
    return jax.device_get(_MIX(key, batch, switch_prob=switch_prob, mix_prob=mix_prob))


def is_pasted(out, x, partner):
    """True where every element comes from the example itself or its partner (CutMix)."""
    return np.all((out == x) | (out == x[partner]) | np.isnan(x), axis=tuple(range(1, x.ndim)))


def test_padding_never_leaks_into_real_examples():
    batch = make_batch(SHAPE, mask=[0, 1, 0, 1, 1, 0])
    pad = batch["batch_mask"] == 0
    batch["inputs"][pad] = np.nan  # any leak would show as NaN in a real example
    batch["label"][pad] = K - 1
    batch["label"][~pad] = np.arange(3) % (K - 1)
    partner = reference_partner(batch["batch_mask"])
    kinds = set()
    for key in KEYS:
        out = mix(key, batch)
        assert np.all(np.isfinite(out["inputs"][~pad]))
        np.testing.assert_array_equal(out["label"][~pad][:, K - 1], 0.0)
        np.testing.assert_allclose(out["label"].sum(-1), 1.0, rtol=1e-6)
        assert np.all(np.isnan(out["inputs"][pad]))  # padded ones come out as they went in
        np.testing.assert_array_equal(out["label"][pad], np.eye(K)[[K - 1] * 3])
        kinds.add(bool(np.all(is_pasted(out["inputs"], batch["inputs"], partner))))
    assert kinds == {True, False}  # both CutMix and mixup were drawn


def test_switch_prob_chooses_cutmix_or_mixup():
    batch = make_batch(SHAPE)
    partner = reference_partner(batch["batch_mask"])
    for switch_prob, want_cutmix in ((1.0, True), (0.0, False)):
        for key in KEYS[:3]:
            out = mix(key, batch, switch_prob=switch_prob)["inputs"]
            assert bool(np.all(is_pasted(out, batch["inputs"], partner))) == want_cutmix


def test_mix_prob_zero_leaves_the_batch_unmixed():
    batch = make_batch(SHAPE)
    for key in KEYS[:2]:
        out = mix(key, batch, mix_prob=0.0)
        np.testing.assert_array_equal(out["inputs"], batch["inputs"])
        np.testing.assert_array_equal(out["label"], np.eye(K)[batch["label"]])


def test_per_example_lambdas_differ_within_a_batch():
    batch = make_batch(SHAPE)
    batch["label"] = np.arange(6) % 2  # every pair (i, 5 - i) has two different classes
    out = mix(KEYS[0], batch, switch_prob=0.0)
    own = out["label"][np.arange(6), batch["label"]]
    assert len(np.unique(np.round(own, 6))) == 6
    np.testing.assert_allclose(out["label"].sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.05, 0.2, 1.0, 3.0])
def test_log_gamma_and_beta_samples_follow_scipy(alpha):
    """Kolmogorov-Smirnov against SciPy's loggamma and beta laws (float64 reference)."""
    keys = jax.random.split(jax.random.key(7), 2)
    log_g = np.asarray(LOG_GAMMA(keys[0], alpha), np.float64)
    assert scipy.stats.kstest(log_g, scipy.stats.loggamma(alpha).cdf).pvalue > 1e-3
    lam = np.asarray(BETA(keys[1], alpha), np.float64)
    if alpha >= 1:  # smaller alphas put mass within float32 rounding of 0 and 1
        assert scipy.stats.kstest(lam, scipy.stats.beta(alpha, alpha).cdf).pvalue > 1e-3
    assert abs(lam.mean() - 0.5) < 0.01
    assert abs(lam.var() - 1 / (4 * (2 * alpha + 1))) < 0.01


LOG_GAMMA = jax.jit(lambda key, alpha: mx.log_gamma(key, alpha, (20000,)))
BETA = jax.jit(lambda key, alpha: mx.sample_beta(key, alpha, (20000,)))


def test_runs_under_pmap_with_uint8_inputs():
    batch = make_batch((4, 4, 4, 3))
    batch["inputs"] = (np.abs(batch["inputs"]) * 50).astype(np.uint8)
    fn = mx.from_config(ml_collections.ConfigDict({"mixup_alpha": 0.5, "cutmix_alpha": 1.0}), K)
    stacked = jax.tree.map(lambda a: a[None], batch)
    keys = jax.random.split(jax.random.key(0), 1)
    out = jax.pmap(fn)(keys, stacked)
    assert out["inputs"].dtype == jnp.float32 and out["label"].shape == (1, 4, K)


def test_config_errors_name_the_key():
    assert mx.from_config(None, K) is None
    with pytest.raises(ConfigError, match="mixup.cutmix_alhpa: nothing reads it"):
        mx.from_config(ml_collections.ConfigDict({"cutmix_alhpa": 1.0}), K)
    with pytest.raises(ConfigError, match="mixup.switch_prob must be in"):
        mx.from_config(ml_collections.ConfigDict({"mixup_alpha": 1.0, "switch_prob": 2.0}), K)
    with pytest.raises(ConfigError, match="neither"):
        mx.from_config(ml_collections.ConfigDict({"mixup_alpha": 0.0}), K)
    with pytest.raises(ValueError, match="need num_classes"):
        mx.mix_batch(jax.random.key(0), make_batch(), num_classes=None, mixup_alpha=1.0)


def av_batch(mask=(1, 1, 1, 1, 0, 0), seed=3):
    """A dict of two modalities of different ranks (video [B, T, H, W, C], spectrogram)."""
    rng = np.random.default_rng(seed)
    size = len(mask)
    return {
        "inputs": {
            "rgb": rng.normal(size=(size, 3, 4, 5, 2)).astype(np.float32),
            "spectrogram": rng.normal(size=(size, 6, 7, 1)).astype(np.float32),
        },
        "label": rng.integers(0, K, size),
        "batch_mask": np.asarray(mask, np.float32),
    }


def recovered_lambda(out, x, partner, real):
    """lam from out = lam x + (1 - lam) x[partner], per real example (its mean over elements)."""
    lam = (out[real] - x[partner][real]) / (x[real] - x[partner][real])
    return lam.reshape(real.sum(), -1).mean(-1)


def mixed_label_lambda(out_label, label, partner, real):
    t = np.eye(K)[label]
    own, other = t[real], t[partner][real]
    differs = np.argmax(own, -1) != np.argmax(other, -1)
    return (out_label[real][differs] * own[differs]).sum(-1), differs


@pytest.mark.parametrize("per_modality", [False, True])
def test_dict_inputs_mixup_shares_the_partner_and_lambda_or_draws_one_per_modality(per_modality):
    batch = av_batch()
    mask = batch["batch_mask"]
    real = (mask > 0) & (reference_partner(mask) != np.arange(len(mask)))
    partner = reference_partner(mask)
    fn = jax.jit(
        functools.partial(mx.mix_batch, num_classes=K, mixup_alpha=0.8, per_modality=per_modality)
    )
    out = jax.device_get(fn(jax.random.key(5), batch))
    lams = {
        name: recovered_lambda(np.float64(out["inputs"][name]), np.float64(x), partner, real)
        for name, x in batch["inputs"].items()
    }
    for lam in lams.values():
        np.testing.assert_allclose(lam, lam[0], rtol=1e-4)  # one lambda per batch
    label_lam, differs = mixed_label_lambda(out["label"], batch["label"], partner, real)
    assert differs.any()
    mean_lam = np.mean([lam[0] for lam in lams.values()])
    np.testing.assert_allclose(label_lam, mean_lam, rtol=1e-4)  # targets: the mean lambda
    if per_modality:
        assert abs(lams["rgb"][0] - lams["spectrogram"][0]) > 1e-3
    else:
        np.testing.assert_allclose(lams["rgb"][0], lams["spectrogram"][0], rtol=1e-4)
        # Modality 0 (sorted keys: 'rgb') mixes exactly as a single array with that key.
        alone = {**batch, "inputs": batch["inputs"]["rgb"]}
        np.testing.assert_array_equal(
            jax.device_get(fn(jax.random.key(5), alone))["inputs"], out["inputs"]["rgb"]
        )
    for name, x in batch["inputs"].items():  # padding pairs with itself: unchanged
        np.testing.assert_allclose(out["inputs"][name][mask == 0], x[mask == 0], rtol=1e-6)


def test_dict_inputs_cutmix_cuts_a_box_per_modality_and_averages_their_lambdas():
    batch = av_batch(mask=(1, 1, 1, 1, 1, 1))
    partner = reference_partner(batch["batch_mask"])
    fn = jax.jit(functools.partial(mx.mix_batch, num_classes=K, cutmix_alpha=1.0))
    out = jax.device_get(fn(jax.random.key(9), batch))
    box_lams = []
    for name, x in batch["inputs"].items():
        y = out["inputs"][name]
        assert np.all(is_pasted(y, x, partner))
        pasted = np.all(y == x[partner], axis=(0, -1))  # the same box for every example
        while pasted.ndim > 2:  # video: the same box for every frame
            pasted = pasted.all(axis=0)
        box_lams.append(1.0 - pasted.mean())
    label_lam, differs = mixed_label_lambda(out["label"], batch["label"], partner, np.ones(6, bool))
    assert differs.any()
    np.testing.assert_allclose(label_lam, np.mean(box_lams), rtol=1e-5)
