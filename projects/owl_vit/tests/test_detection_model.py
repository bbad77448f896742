"""OWL-ViT through the core criterion: class names x prompt templates become the queries
(all templates' logits averaged at evaluation, one random template per class in training),
queries in the batch replace them, the loss trains both towers, and bad configs are one
clear error."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scenic.common_lib.config_utils import ConfigError
from scenic_baselines import clip_tokenizer
from scenic_owl_vit import detection_model
from scenic_owl_vit import model as owl_model

TINY = dict(embed_dim=16, image_size=16, patch_size=8, vision_width=16, vision_layers=1,
            vision_heads=2, vision_mlp_dim=32, vocab_size=259, context_length=12,
            text_width=16, text_layers=1, text_heads=2, text_mlp_dim=32)  # fmt: skip
NAMES = ["zero", "one", "two"]
TEMPLATES = ["{}", "digit {}"]
META = {
    "num_classes": 3,
    "class_names": NAMES,
    "input_shape": {"image": (-1, 16, 16, 3), "padding_mask": (-1, 16, 16)},
}


def make_model(**top_level):
    config = ml_collections.ConfigDict(
        {"model": dict(TINY), "tokenizer": "bytes", "prompt_templates": TEMPLATES, **top_level}
    )
    return detection_model.OwlViTDetectionModel(config, META)


@pytest.fixture(scope="module")
def tiny():
    model = make_model()
    images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    params = jax.jit(model.flax_model.init)(jax.random.key(0), {"image": images})["params"]
    return model, params, images


def per_template_logits(model, params, images):
    """`[T, B, N, C]`: the plain OWLViT's logits with each template's queries."""
    tokens = clip_tokenizer.prompt_tokens(clip_tokenizer.ByteTokenizer(), NAMES, TEMPLATES, 12)
    apply = jax.jit(
        lambda t: model.flax_model.apply(
            {"params": params}, images, t, method=owl_model.OWLViT.__call__
        )["pred_logits"]
    )
    return np.stack([apply(t) for t in tokens])


def test_byte_tokenizer_ids():
    tokens = clip_tokenizer.ByteTokenizer().tokenize(["Zero ", "é"], 6)
    np.testing.assert_array_equal(tokens[0], [257, ord("z") + 1, ord("e") + 1, ord("r") + 1,
                                              ord("o") + 1, 258])  # fmt: skip
    np.testing.assert_array_equal(tokens[1], [257, 0xC3 + 1, 0xA9 + 1, 258, 0, 0])
    long = clip_tokenizer.ByteTokenizer().tokenize(["a very long name"], 5)
    assert long[0, -1] == 258  # truncation keeps the end token


def test_eval_logits_average_every_template(tiny):
    model, params, images = tiny
    out = jax.jit(lambda x: model.flax_model.apply({"params": params}, {"image": x}))(images)
    templates = per_template_logits(model, params, images)
    np.testing.assert_allclose(out["pred_logits"], templates.mean(0), rtol=1e-5, atol=1e-5)
    assert np.abs(templates[0] - templates[1]).max() > 1e-3  # the average is not any one


def test_eval_queries_computed_once_per_pass_give_the_same_outputs(tiny):
    model, params, images = tiny
    variables = {"params": params}
    queries = jax.jit(model.eval_constants)(variables)
    assert queries.shape == (len(NAMES), TINY["embed_dim"])
    cached = jax.jit(model.eval_apply)(variables, {"image": images}, queries)
    direct = jax.jit(lambda x: model.flax_model.apply(variables, {"image": x}))(images)
    for key in ("pred_logits", "pred_boxes"):
        np.testing.assert_allclose(cached[key], direct[key], rtol=1e-6, atol=1e-6)
    # Other parameters give other queries: they are not frozen at the first pass's.
    shifted = jax.tree.map(lambda x: x * 1.5, params)
    assert np.abs(jax.jit(model.eval_constants)({"params": shifted}) - queries).max() > 1e-3
    # Queries in the batch still win over the class names' cached ones.
    tokens = model.tokenize(["seven"])
    out = model.eval_apply(variables, {"image": images, "text_tokens": tokens}, queries)
    assert out["pred_logits"].shape == (2, 4, 1)


def test_training_draws_one_template_per_class(tiny):
    model, params, images = tiny
    templates = per_template_logits(model, params, images)
    apply = jax.jit(
        lambda key: model.flax_model.apply(
            {"params": params}, {"image": images}, train=True, rngs={"dropout": key}
        )["pred_logits"]
    )
    seen = set()
    for seed in range(12):
        logits = np.asarray(apply(jax.random.key(seed)))
        for c in range(3):
            errors = [np.abs(logits[..., c] - templates[t, ..., c]).max() for t in range(2)]
            assert min(errors) < 1e-5, errors
            seen.add((c, int(np.argmin(errors))))
    assert len(seen) == 6  # every class got each template at some step


def test_queries_in_the_batch_replace_the_class_names(tiny):
    model, params, images = tiny
    tokens = model.tokenize(["seven", "a cat"])
    out = model.flax_model.apply({"params": params}, {"image": images, "text_tokens": tokens})
    plain = model.flax_model.apply(
        {"params": params}, images, tokens, method=owl_model.OWLViT.__call__
    )
    assert out["pred_logits"].shape == (2, 4, 2)
    np.testing.assert_allclose(out["pred_logits"], plain["pred_logits"], rtol=1e-6)


def test_loss_trains_both_towers(tiny):
    model, params, images = tiny
    batch = {
        "inputs": {"image": images, "padding_mask": jnp.ones((2, 16, 16))},
        "label": {
            "labels": jnp.array([[1, 2], [0, 0]]),
            "boxes": jnp.array(
                [
                    [[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]],
                    [[0.5, 0.5, 0.4, 0.4], [0.0, 0.0, 0.0, 0.0]],
                ]
            ),
            "box_mask": jnp.array([[1.0, 1.0], [1.0, 0.0]]),
        },
        "batch_mask": jnp.ones((2,)),
    }

    def loss(p):
        outputs = model.flax_model.apply({"params": p}, batch["inputs"], train=True,
                                         rngs={"dropout": jax.random.key(3)})  # fmt: skip
        return model.loss_and_metrics(outputs, batch, p)[0]

    grads = jax.jit(jax.grad(loss))(params)
    for tower in ("text", "visual"):
        leaves = [g for path, g in jax.tree_util.tree_leaves_with_path(grads)
                  if tower in jax.tree_util.keystr(path)]  # fmt: skip
        assert leaves and max(float(jnp.abs(g).max()) for g in leaves) > 0, tower
    assert model.option("class_loss") == "sigmoid_focal" and model.option("focal_alpha") == 0.3


def test_variant_gives_the_released_architecture():
    kwargs = detection_model.owl_kwargs(ml_collections.ConfigDict({"variant": "owl_vit_b32"}))
    reference = owl_model.owl_vit("owl_vit_b32")
    for name in ("image_size", "patch_size", "vision_width", "vision_layers", "text_width",
                 "context_length", "merged_norm_epsilon", "gelu_approximate"):  # fmt: skip
        assert kwargs[name] == getattr(reference, name), name
    over = detection_model.owl_kwargs(
        ml_collections.ConfigDict({"variant": "owlv2_b16", "image_size": 480})
    )
    assert over["image_size"] == 480 and over["objectness"] and over["patch_size"] == 16


@pytest.mark.parametrize(
    "top_level, message",
    [
        ({"class_loss": "softmax"}, "no background class"),
        ({"prompt_templates": ["a {} and a {}"]}, "exactly one"),
        ({"tokenizer": "clip"}, "needs tokenizer_path"),
        ({"tokenizer": "words"}, "Unknown tokenizer"),
        ({"model": {**TINY, "variant": "owl_vit_b99"}}, "not one of"),
        ({"model": {**TINY, "vocab_size": 100}}, "smaller than the tokenizer"),
    ],
)
def test_bad_config_is_one_clear_error(top_level, message):
    with pytest.raises(ConfigError, match=message):
        make_model(**top_level)


def test_clip_pixels_turns_pipeline_pixels_into_clip_normalisation(tiny):
    """The pipeline's x / 127.5 - 1 through `clip_pixels` equals the plain model on CLIP's
    (x / 255 - mean) / std, as the imported weights expect."""
    model, params, _ = tiny
    pixels = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3)).astype(np.float32)
    clip_model = model.flax_model.clone(clip_pixels=True)
    tokens = model.tokenize(["one"])
    out = clip_model.apply({"params": params}, {"image": pixels / 127.5 - 1, "text_tokens": tokens})
    mean, std = np.array(detection_model.CLIP_MEAN), np.array(detection_model.CLIP_STD)
    plain = model.flax_model.apply(
        {"params": params}, (pixels / 255 - mean) / std, tokens, method=owl_model.OWLViT.__call__
    )
    np.testing.assert_allclose(out["pred_logits"], plain["pred_logits"], rtol=1e-4, atol=1e-5)
    unconverted = model.flax_model.apply(
        {"params": params}, {"image": pixels / 127.5 - 1, "text_tokens": tokens}
    )
    assert np.abs(unconverted["pred_boxes"] - plain["pred_boxes"]).max() > 1e-4


def test_jitted_criterion_equals_eager(tiny):
    """The eval path's loss and metrics jitted alone (no outputs returned, so XLA fuses the
    class head into the criterion) equal the eager ones: with the queries broadcast over
    the batch, XLA:CPU once compiled that product wrongly (docs/experiments/
    owl_vit_digits.md)."""
    model, params, images = tiny
    batch = {
        "inputs": {"image": images, "padding_mask": jnp.ones((2, 16, 16))},
        "label": {
            "labels": jnp.array([[1, 2], [0, 1]]),
            "boxes": jnp.array(
                [
                    [[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.2]],
                    [[0.5, 0.5, 0.4, 0.4], [0.2, 0.7, 0.2, 0.3]],
                ]
            ),
        },
        "batch_mask": jnp.ones((2,)),
    }

    def metrics(p, b):
        outputs = model.flax_model.apply({"params": p}, b["inputs"], train=False)
        return model.loss_and_metrics(outputs, b, p)

    eager_loss, eager = metrics(params, batch)
    jit_loss, jitted = jax.jit(metrics)(params, batch)
    np.testing.assert_allclose(jit_loss, eager_loss, rtol=1e-5)
    for name in eager:
        np.testing.assert_allclose(jitted[name][0], eager[name][0], rtol=1e-4, atol=1e-6)
