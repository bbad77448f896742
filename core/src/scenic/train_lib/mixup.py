"""Mixup and CutMix on device: pure JAX, safe inside a jitted or pmapped train step.

Each example is mixed with its partner in the batch flipped (as timm and big_vision do),
so no second batch or shuffle is needed. Labels become soft targets: the one-hot (or given
soft) targets of the pair weighted by lambda and 1 - lambda.

Padding: examples with `batch_mask == 0` must not leak into real ones. The batch is
flipped among the real examples only (the k-th real example pairs with the k-th real one
from the end); padded examples pair with themselves and so come out unchanged. With no
padding this is exactly the plain flip. Each device mixes within its own shard.

Integer inputs (e.g. uint8 images) come out as float32. `inputs` may be a dict of named
modalities (see `mix_batch`); every modality is mixed with the same partner.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections

from scenic.common_lib.config_utils import ConfigError, check_keys
from scenic.model_lib import model_utils

CONFIG_KEYS = (
    "mixup_alpha",
    "cutmix_alpha",
    "switch_prob",
    "mix_prob",
    "per_example",
    "label_smoothing",
    "per_modality",
)


def partner_indices(batch_mask: jnp.ndarray) -> jnp.ndarray:
    """int32 [B]: whom each example mixes with; the flip among real examples, padding itself."""
    size = batch_mask.shape[0]
    real = batch_mask > 0
    order = jnp.argsort(~real, stable=True)  # real examples first, in batch order
    rank = jnp.argsort(order)  # position of each example in `order`
    flipped = order[jnp.clip(jnp.sum(real) - 1 - rank, 0, size - 1)]
    return jnp.where(real, flipped, jnp.arange(size)).astype(jnp.int32)


def soft_targets(label, num_classes: int | None, label_smoothing: float = 0.0) -> jnp.ndarray:
    """float32 [B, K] targets from int [B] or one-hot / soft [B, K] labels, smoothed."""
    if label.ndim == 1 and not num_classes:
        raise ValueError("Integer labels [B] need num_classes to become mixed soft targets.")
    targets = model_utils.one_hot_or_soft(label, num_classes or label.shape[-1])
    return model_utils.apply_label_smoothing(targets.astype(jnp.float32), label_smoothing)


def _float_inputs(inputs):
    inputs = jnp.asarray(inputs)
    return inputs if jnp.issubdtype(inputs.dtype, jnp.floating) else inputs.astype(jnp.float32)


def mix_array(x, lam, partner) -> jnp.ndarray:
    """lam * x + (1 - lam) * x[partner] for one array [B, ...]; `lam` scalar or [B]."""
    x = _float_inputs(x)
    lam = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), (x.shape[0],))
    lam_x = lam.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
    return x * lam_x + x[partner] * (1 - lam_x)


def paste_box(x, box, partner) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The partner's values inside `box` = (y0, x0, y1, x1) (half-open, same box for every
    example and frame; H, W are axes -3, -2) -> (mixed array, lambda = 1 - box area / area)."""
    x = _float_inputs(x)
    height, width = x.shape[-3:-1]
    y0, x0, y1, x1 = (jnp.asarray(b, jnp.int32) for b in box)
    rows = (jnp.arange(height) >= y0) & (jnp.arange(height) < y1)
    cols = (jnp.arange(width) >= x0) & (jnp.arange(width) < x1)
    inside = (rows[:, None] & cols[None, :])[..., None]  # [H, W, 1]
    lam = 1.0 - jnp.sum(inside, dtype=jnp.float32) / (height * width)
    return jnp.where(inside, x[partner], x), lam


def mixed_targets(batch, lam, partner, num_classes, label_smoothing) -> jnp.ndarray:
    """lam * own + (1 - lam) * partner's soft targets; `lam` scalar or [B]."""
    targets = soft_targets(batch["label"], num_classes, label_smoothing)
    lam_y = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), (targets.shape[0],))[:, None]
    return targets * lam_y + targets[partner] * (1 - lam_y)


def mixup(batch: dict, lam, partner, *, num_classes=None, label_smoothing=0.0) -> dict:
    """inputs and targets -> lam * own + (1 - lam) * partner's; `lam` is scalar or [B].

    `inputs` may be a dict of modalities: each is mixed with the same `lam`."""
    inputs = jax.tree.map(lambda x: mix_array(x, lam, partner), batch["inputs"])
    label = mixed_targets(batch, lam, partner, num_classes, label_smoothing)
    return {**batch, "inputs": inputs, "label": label}


def cutmix(batch: dict, box, partner, *, num_classes=None, label_smoothing=0.0) -> dict:
    """Pastes the partner's pixels inside `box` = (y0, x0, y1, x1) (half-open, same box for
    every example and frame; H, W are axes -3, -2); lambda = 1 - box area / image area."""
    mixed, lam = paste_box(batch["inputs"], box, partner)
    label = mixed_targets(batch, lam, partner, num_classes, label_smoothing)
    return {**batch, "inputs": mixed, "label": label}


def sample_cutmix_box(rng, lam, height: int, width: int) -> tuple[jnp.ndarray, ...]:
    """A box of about (1 - lam) of the image, centred uniformly and clipped to it (timm's
    `rand_bbox`): side floor(size * sqrt(1 - lam)). Returns int32 (y0, x0, y1, x1)."""
    ky, kx = jax.random.split(rng)
    ratio = jnp.sqrt(1.0 - jnp.asarray(lam, jnp.float32))
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    cy = jax.random.randint(ky, (), 0, height)
    cx = jax.random.randint(kx, (), 0, width)
    y0, x0 = cy - cut_h // 2, cx - cut_w // 2
    return (
        jnp.clip(y0, 0, height),
        jnp.clip(x0, 0, width),
        jnp.clip(y0 + cut_h, 0, height),
        jnp.clip(x0 + cut_w, 0, width),
    )


def sample_beta(rng, alpha, shape=()) -> jnp.ndarray:
    """Beta(alpha, alpha) as sigmoid(log X - log Y), X, Y ~ Gamma(alpha): exact in law, stable
    for small alpha, and about half the compile time of `jax.random.beta`."""
    kx, ky = jax.random.split(rng)
    return jax.nn.sigmoid(log_gamma(kx, alpha, shape) - log_gamma(ky, alpha, shape))


def log_gamma(rng, alpha, shape=(), tries: int = 16) -> jnp.ndarray:
    """log of Gamma(alpha, 1) samples by Marsaglia & Tsang (2000) with a fixed number of
    proposals (each accepted with probability > 0.95; all rejected: < 1e-20), boosted by
    U^(1/alpha) for alpha < 1. No while loop, so it compiles fast."""
    k_norm, k_unif, k_boost = jax.random.split(rng, 3)
    alpha = jnp.asarray(alpha, jnp.float32)
    d = jnp.where(alpha < 1, alpha + 1, alpha) - 1.0 / 3.0
    c = 1.0 / jnp.sqrt(9.0 * d)
    x = jax.random.normal(k_norm, (*shape, tries))
    v = (1.0 + c * x) ** 3
    log_v = jnp.log(jnp.where(v > 0, v, 1.0))
    log_u = jnp.log(jax.random.uniform(k_unif, (*shape, tries)))
    accept = (v > 0) & (log_u < 0.5 * x**2 + d - d * v + d * log_v)
    first = jnp.argmax(accept, axis=-1)[..., None]
    log_g = jnp.log(d) + jnp.take_along_axis(log_v, first, axis=-1)[..., 0]
    tiny = jnp.finfo(jnp.float32).tiny
    boost = jnp.log(jax.random.uniform(k_boost, shape, minval=tiny)) / alpha
    return log_g + jnp.where(alpha < 1, boost, 0.0)


def mix_batch(
    rng,
    batch: dict,
    *,
    num_classes: int | None,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    switch_prob: float = 0.5,
    mix_prob: float = 1.0,
    per_example: bool = False,
    label_smoothing: float = 0.0,
    per_modality: bool = False,
) -> dict:
    """Mixup or CutMix of one (per-device) batch; `label` becomes float32 [B, K] targets.

    lambda ~ Beta(alpha, alpha), one per batch (or one per example for mixup with
    `per_example`). With both alphas > 0, CutMix is used with probability `switch_prob`,
    else mixup. With probability 1 - `mix_prob` the batch is left unmixed (lambda = 1).

    `inputs` may be a dict of modalities (e.g. rgb and spectrogram): all are mixed with the
    same partner. They share one lambda, or with `per_modality` each draws its own; CutMix
    draws a box per modality (on its axes -3, -2). The targets are mixed with the mean of
    the modalities' lambdas (CutMix: of their actual box lambdas).
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("mix_batch needs mixup_alpha > 0 or cutmix_alpha > 0.")
    if batch["label"].ndim == 1 and not num_classes:
        raise ValueError("Integer labels [B] need num_classes to become mixed soft targets.")
    k_mix, k_cut, k_box, k_switch, k_apply = jax.random.split(rng, 5)
    leaves, treedef = jax.tree.flatten(batch["inputs"])
    size = leaves[0].shape[0]
    mask = batch.get("batch_mask")
    partner = partner_indices(jnp.ones((size,)) if mask is None else mask)
    apply = jax.random.bernoulli(k_apply, mix_prob)

    def modality_key(key, index, own):
        """Modality 0 uses `key` itself, so a single array mixes as it always did."""
        return jax.random.fold_in(key, index) if own and index else key

    def finish(mixed_leaves, lams):
        lam = sum(lams) / len(lams)
        label = mixed_targets(batch, lam, partner, num_classes, label_smoothing)
        inputs = jax.tree.unflatten(treedef, mixed_leaves)
        return {**batch, "inputs": inputs, "label": label}

    def do_mixup(_):
        lams = [
            jnp.where(
                apply,
                sample_beta(
                    modality_key(k_mix, i, per_modality),
                    mixup_alpha,
                    (size,) if per_example else (),
                ),
                1.0,
            )
            for i in range(len(leaves))
        ]
        return finish([mix_array(x, lam, partner) for x, lam in zip(leaves, lams)], lams)

    def do_cutmix(_):
        mixed, lams = [], []
        for i, x in enumerate(leaves):
            lam = jnp.where(
                apply, sample_beta(modality_key(k_cut, i, per_modality), cutmix_alpha), 1.0
            )
            height, width = x.shape[-3:-1]
            box = sample_cutmix_box(modality_key(k_box, i, True), lam, height, width)
            pasted, box_lam = paste_box(x, box, partner)
            mixed.append(pasted)
            lams.append(box_lam)
        return finish(mixed, lams)

    if cutmix_alpha <= 0:
        return do_mixup(None)
    if mixup_alpha <= 0:
        return do_cutmix(None)
    use_cutmix = jax.random.bernoulli(k_switch, switch_prob)
    return jax.lax.cond(use_cutmix, do_cutmix, do_mixup, None)


def from_config(config: ml_collections.ConfigDict | None, num_classes: int | None):
    """`config.mixup` -> `fn(rng, batch) -> batch`, or None when the section is absent/empty.

    Keys: mixup_alpha, cutmix_alpha, switch_prob, mix_prob, per_example, label_smoothing,
    per_modality (see `mix_batch`). The model's label_smoothing may not be set too (it would
    smooth twice; `trainer_config.check_values` refuses it).
    """
    if not config:
        return None
    check_keys(config, CONFIG_KEYS, "mixup")
    settings = config.to_dict()
    for key in ("mixup_alpha", "cutmix_alpha"):
        if settings.get(key, 0.0) < 0:
            raise ConfigError(f"mixup.{key} must be >= 0, got {settings[key]}.")
    if settings.get("mixup_alpha", 0.0) <= 0 and settings.get("cutmix_alpha", 0.0) <= 0:
        raise ConfigError(
            "config.mixup is set but neither mixup.mixup_alpha nor "
            "mixup.cutmix_alpha is > 0; remove the section or set one."
        )
    for key in ("switch_prob", "mix_prob", "label_smoothing"):
        if key in settings and not 0.0 <= settings[key] <= 1.0:
            raise ConfigError(f"mixup.{key} must be in [0, 1], got {settings[key]}.")
    return functools.partial(mix_batch, num_classes=num_classes, **settings)
