"""The MBT module: its fusion schedule against a reference built block by block from the core
ViT block, absent modalities, every config key, build errors and init from a ViT."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scenic.model_lib import vit_encoder
from scenic_mbt.init_from_vit import init_from_vit, interpolate_rows
from scenic_mbt.model import MBT, build_model
from scenic_mbt.models import model_fields

SMALL = dict(
    rgb_patch_size=(2, 4, 4),
    spectrogram_patch_size=(4, 4),
    hidden_size=16,
    num_layers=3,
    num_heads=2,
    mlp_dim=24,
    fusion_layer=1,
    n_bottlenecks=3,
)
RNG = np.random.default_rng(0)
INPUTS = {
    "rgb": jnp.asarray(RNG.normal(size=(3, 4, 8, 8, 1)), jnp.float32),
    "spectrogram": jnp.asarray(RNG.normal(size=(3, 8, 12, 1)), jnp.float32),
}


def shapes(model, inputs=INPUTS):
    """The parameter tree of `model` on `inputs`, traced only (nothing compiled or run)."""
    return jax.eval_shape(lambda: model.init({"params": jax.random.key(1)}, inputs))["params"]


def randomised(params, seed=5):
    """Every parameter random (the head and class tokens start at zero), drawn with NumPy for
    each leaf's shape: `jax.random` would compile once per parameter shape."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype), params)


# --- an independent reference: the schedule written out with the core block ---------------


def block(params, x, key_mask=None):
    blk = vit_encoder.EncoderBlock(mlp_dim=SMALL["mlp_dim"], num_heads=SMALL["num_heads"])
    if key_mask is None:
        return blk.apply({"params": params}, x)

    # The reference masks by giving absent tokens no attention weight: the core attention
    # with a boolean mask.
    class Masked(vit_encoder.EncoderBlock):
        @nn.compact
        def __call__(self, x):
            from scenic.model_lib import layers

            y = nn.LayerNorm(name="LayerNorm_0")(x)
            y = layers.MultiHeadAttention(
                num_heads=self.num_heads, name="MultiHeadDotProductAttention_1"
            )(y, mask=key_mask[:, None, None, :] > 0)
            x = x + y
            y = self.mlp_branch(x, True, "LayerNorm_2", "MlpBlock_3")
            return x + y

    return Masked(mlp_dim=SMALL["mlp_dim"], num_heads=SMALL["num_heads"]).apply(
        {"params": params}, x
    )


def embed(params, m, x, kw):
    if m == "rgb":
        emb = vit_encoder.TubeletEmbedding(kw["rgb_patch_size"], kw["hidden_size"])
    else:
        emb = vit_encoder.PatchEmbedding(kw["spectrogram_patch_size"], kw["hidden_size"])
    t = emb.apply({"params": params[f"embedding_{m}"]}, x)
    t = t.reshape(t.shape[0], -1, t.shape[-1])
    if f"cls_{m}" in params:
        t = jnp.concatenate([jnp.tile(params[f"cls_{m}"], (t.shape[0], 1, 1)), t], 1)
    return t + params[f"posembed_{m}"]["pos_embedding"]


def head(params, x, encoder, token):
    x = nn.LayerNorm().apply({"params": params[encoder]["encoder_norm"]}, x)
    pooled = x[:, 0] if token else x.mean(1)
    return pooled @ params["head"]["kernel"] + params["head"]["bias"]


def reference_logits(params, kw, inputs, present):
    """Fused logits, written out: per-modality blocks, then bottleneck / joint / none."""
    mods = list(inputs)
    enc = lambda m: "encoder" if kw.get("share_encoder") else f"encoder_{m}"
    x = {m: embed(params, m, inputs[m], kw) for m in mods}
    L, F = kw["num_layers"], kw["fusion_layer"]
    for i in range(F):
        x = {m: block(params[enc(m)][f"encoderblock_{i}"], x[m]) for m in mods}
    if F < L and kw["n_bottlenecks"] == 0:
        n = [x[m].shape[1] for m in mods]
        joint = jnp.concatenate([x[m] for m in mods], 1)
        mask = jnp.concatenate(
            [jnp.repeat(present[:, j : j + 1], n[j], 1) for j in range(len(mods))], 1
        )
        owner = "encoder" if kw.get("share_encoder") else "encoder_joint"
        for i in range(F, L):
            joint = block(params[owner][f"encoderblock_{i}"], joint, mask)
        x = dict(zip(mods, jnp.split(joint, [n[0]], 1)))
    elif F < L:
        b = jnp.tile(params["bottleneck"], (present.shape[0], 1, 1))
        for i in range(F, L):
            outs = []
            for m in mods:
                y = block(params[enc(m)][f"encoderblock_{i}"], jnp.concatenate([x[m], b], 1))
                x[m] = y[:, : x[m].shape[1]]
                outs.append(y[:, x[m].shape[1] :])
            w = present[:, :, None, None]
            b = (jnp.stack(outs, 1) * w).sum(1) / w.sum(1)
    token = kw.get("classifier") == "token"
    logits = jnp.stack([head(params, x[m], enc(m), token) for m in mods], 1)
    return (logits * present[..., None]).sum(1) / present.sum(1)[:, None]


CASES = {
    "bottleneck": {},
    "early_fusion_shared_token": {
        "n_bottlenecks": 0,
        "fusion_layer": 0,
        "share_encoder": True,
        "classifier": "token",
    },
    "late_fusion": {"fusion_layer": 3},
}


@pytest.mark.parametrize("case", CASES)
def test_fused_logits_match_the_written_out_schedule(case):
    kw = {**SMALL, **CASES[case]}
    model = MBT(num_classes=5, **kw)
    params = randomised(shapes(model))
    out = jax.jit(model.apply)({"params": params}, INPUTS)
    reference = lambda p, x, present: reference_logits(p, kw, x, present)
    expected = reference(params, dict(INPUTS), jnp.ones((3, 2)))
    np.testing.assert_allclose(out["logits"], expected, rtol=2e-5, atol=2e-5)
    # Each modality alone: the reference with only its inputs (its tokens and, in fusion
    # layers, the bottleneck it alone updates).
    for m in INPUTS:
        alone = reference(params, {m: INPUTS[m]}, jnp.ones((3, 1)))
        np.testing.assert_allclose(out[f"logits_{m}_only"], alone, rtol=2e-5, atol=2e-5)
    if case == "late_fusion":  # nothing is exchanged: fused = the mean of the two
        mean = (out["logits_rgb_only"] + out["logits_spectrogram_only"]) / 2
        np.testing.assert_allclose(out["logits"], mean, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["bottleneck", "joint_attention_from_layer_1"])
def test_a_dropped_modality_is_as_if_removed(case):
    """Modality dropout (training) masks a modality per example; an example that kept one
    modality gets exactly that modality's single-modality logits."""
    kw = {**SMALL, **CASES.get(case, {"n_bottlenecks": 0}), "modality_dropout": 0.7}
    model = MBT(num_classes=5, **kw)
    params = randomised(shapes(model))
    inputs = {m: jnp.concatenate([x] * 4) for m, x in INPUTS.items()}  # 12 examples
    train = jax.jit(
        lambda p: model.apply(
            {"params": p}, inputs, train=True, rngs={"dropout": jax.random.key(9)}
        )
    )(params)
    evaluated = jax.jit(model.apply)({"params": params}, inputs)
    present = np.asarray(train["present"])
    assert present.min() == 0 and (present.sum(1) >= 1).all()  # some dropped, never both
    assert (present.sum(1) == 2).any()
    for k, row in enumerate(present):
        if row.sum() == 2:
            expected = evaluated["logits"][k]
        else:
            expected = evaluated[f"logits_{['rgb', 'spectrogram'][int(row.argmax())]}_only"][k]
        np.testing.assert_allclose(train["logits"][k], expected, rtol=2e-5, atol=2e-5)
    # Per-modality logits in training are each modality's head on its own tokens.
    np.testing.assert_allclose(
        train["logits"],
        (train["modality_logits"] * present[..., None]).sum(1) / present.sum(1)[:, None],
        rtol=1e-6,
    )


def test_eval_without_bottlenecks_runs_the_modalities_apart():
    kw = {**SMALL, "eval_with_bottlenecks": False}
    model = MBT(num_classes=5, **kw)
    params = randomised(shapes(model))
    out = model.apply({"params": params}, INPUTS)
    late = {**kw, "n_bottlenecks": 3, "fusion_layer": 3}
    # Same blocks, no exchange: the average of the modalities' own passes without bottleneck.
    expected = reference_logits(params, late, dict(INPUTS), jnp.ones((3, 2)))
    np.testing.assert_allclose(out["logits"], expected, rtol=2e-5, atol=2e-5)


def test_one_modality_model_and_inference_outputs():
    model = MBT(num_classes=5, modalities=("spectrogram",), **SMALL)
    inputs = {"spectrogram": INPUTS["spectrogram"]}
    params = randomised(shapes(model, inputs))
    assert "bottleneck" not in params and "encoder_rgb" not in params
    out = model.apply({"params": params}, inputs)
    assert set(out) == {"logits"}
    model = MBT(num_classes=5, **SMALL)
    params = randomised(shapes(model))
    assert set(model.apply({"params": params}, INPUTS, single_modality=False)) == {"logits"}
    with pytest.raises(ValueError, match=r"MBT expects inputs \{rgb, spectrogram\}, got \['rgb'\]"):
        model.apply({"params": params}, {"rgb": INPUTS["rgb"]})


# --- every config key reaches the model ----------------------------------------------------

FIELD_CHANGES = {
    "rgb_patch_size": (1, 4, 4),
    "spectrogram_patch_size": (2, 4),
    "hidden_size": 24,
    "num_layers": 2,
    "num_heads": 4,
    "mlp_dim": 32,
    "fusion_layer": 2,
    "n_bottlenecks": 2,
    "share_encoder": True,
    "classifier": "token",
    "eval_with_bottlenecks": False,
    "modality_dropout": 0.3,
    "eval_single_modality": False,
    "dropout_rate": 0.1,
    "attention_dropout_rate": 0.1,
    "stochastic_depth": 0.1,
    "representation_size": 8,
    "head_bias_init": -3.0,
    "remat": True,
    "dtype": jnp.bfloat16,
}


def programs(kwargs):
    """The jaxprs of init, of a train-mode gradient and of the eval pass, traced lazily."""
    model = MBT(num_classes=5, **kwargs)
    rngs = {"params": jax.random.key(2), "dropout": jax.random.key(3)}
    init, variables = jax.make_jaxpr(lambda: model.init(rngs, INPUTS), return_shape=True)()
    yield str(init)
    params = variables["params"]
    loss = lambda p: model.apply(
        {"params": p}, INPUTS, train=True, rngs={"dropout": jax.random.key(4)}
    )["modality_logits"].sum()
    yield str(jax.make_jaxpr(jax.grad(loss))(params))
    yield str(jax.make_jaxpr(lambda p: model.apply({"params": p}, INPUTS))(params))


def test_every_config_key_reaches_the_model():
    assert set(FIELD_CHANGES) == set(model_fields()), "a model field has no check here"
    reference = list(programs(SMALL))
    unused = [
        field
        for field, value in FIELD_CHANGES.items()
        if all(a == b for a, b in zip(programs({**SMALL, field: value}), reference))
    ]
    assert not unused, f"these config.model keys change nothing: {unused}"


def test_a_field_the_model_ignores_is_caught():
    """The check above can fail: a field the model never reads leaves the programs equal."""

    class WithUnusedField(MBT):
        unused_knob: int = 0

    def program(knob):
        model = WithUnusedField(num_classes=5, unused_knob=knob, **SMALL)
        return str(jax.make_jaxpr(lambda: model.init({"params": jax.random.key(2)}, INPUTS))())

    assert program(1) == program(2)


def test_build_model_checks_before_tracing():
    config = ml_collections.ConfigDict({**SMALL, "fusion_layer": 4})
    with pytest.raises(ValueError, match=r"fusion_layer must be in \[0, num_layers=3\], got 4"):
        build_model(config, 10, ("rgb", "spectrogram"))
    config.fusion_layer = 1
    config.classifier = "map"
    with pytest.raises(ValueError, match="classifier must be one of"):
        build_model(config, 10, ("rgb", "spectrogram"))
    config.classifier = "gap"
    with pytest.raises(ValueError, match="MBT modalities must be distinct names"):
        build_model(config, 10, ("rgb", "depth"))
    config.modality_dropout = 1.0
    with pytest.raises(ValueError, match=r"modality_dropout must be in \[0, 1\)"):
        build_model(config, 10, ("rgb", "spectrogram"))


# --- init from an image ViT ----------------------------------------------------------------


def test_init_from_image_vit():
    from scenic_baselines.vit import ViT

    vit = ViT(
        num_classes=0,
        patch_size=(4, 4),
        hidden_size=16,
        num_layers=3,
        num_heads=2,
        mlp_dim=24,
        classifier="token",
    )
    vit_params = randomised(shapes(vit, jnp.zeros((1, 16, 16, 3))), seed=7)
    kw = {**SMALL, "classifier": "token"}
    model = MBT(num_classes=5, **kw)
    params = randomised(shapes(model), seed=8)
    input_shapes = {m: x.shape for m, x in INPUTS.items()}
    out = init_from_vit(model, params, vit_params, input_shapes, kernel_init="average")
    vk = np.asarray(vit_params["embedding"]["kernel"])  # [4, 4, 3, 16]
    gray = vk.sum(2, keepdims=True)  # the test's frames have one channel
    np.testing.assert_allclose(out["embedding_rgb"]["kernel"], np.stack([gray / 2] * 2), rtol=1e-6)
    np.testing.assert_allclose(
        out["embedding_spectrogram"]["kernel"], vk.sum(2, keepdims=True), rtol=1e-6
    )
    for m in ("rgb", "spectrogram"):
        for i in range(3):
            np.testing.assert_array_equal(
                out[f"encoder_{m}"][f"encoderblock_{i}"]["MlpBlock_3"]["Dense_0"]["kernel"],
                vit_params["Transformer"][f"encoderblock_{i}"]["MlpBlock_3"]["Dense_0"]["kernel"],
            )
        np.testing.assert_array_equal(out[f"cls_{m}"], vit_params["cls"])
    posemb = np.asarray(vit_params["Transformer"]["posembed_input"]["pos_embedding"])  # 1+16
    # Spectrogram: 8x12 input, 4x4 patches -> a 2x3 grid resized from the ViT's 4x4.
    spec = np.asarray(out["posembed_spectrogram"]["pos_embedding"])
    assert spec.shape == (1, 1 + 6, 16)
    np.testing.assert_allclose(spec[0, 0], posemb[0, 0])
    np.testing.assert_allclose(spec[0, 1], posemb[0, 1], rtol=1e-6)  # corners aligned
    np.testing.assert_allclose(spec[0, -1], posemb[0, -1], rtol=1e-6)
    # Bottleneck: the 16 patch rows interpolated to 3 (first, middle, last).
    rows = posemb[0, 1:]
    expected = np.stack([rows[0], (rows[7] + rows[8]) / 2, rows[15]])
    np.testing.assert_allclose(out["bottleneck"][0], expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(interpolate_rows(rows, 3), expected, rtol=1e-5, atol=1e-7)
    # The head starts fresh; the model runs with the new parameters.
    np.testing.assert_array_equal(out["head"]["kernel"], params["head"]["kernel"])
    assert np.isfinite(model.apply({"params": out}, INPUTS)["logits"]).all()
    with pytest.raises(
        ValueError, match="The ViT has 3 encoder blocks, the MBT model num_layers=2"
    ):
        small = MBT(num_classes=5, **{**kw, "num_layers": 2, "fusion_layer": 1})
        init_from_vit(small, shapes(small), vit_params, input_shapes)
