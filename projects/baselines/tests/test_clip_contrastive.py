"""CLIP through the core trainer (`clip_contrastive`): class names in prompt templates caption
the images, the loss is CLIP's contrastive loss of those pairs against a float64 reference,
evaluation is CLIP's zero-shot classifier computed once per pass, and bad configs are one
clear error."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scenic.common_lib.config_utils import ConfigError
from scenic_baselines import clip, clip_tokenizer
from scenic_baselines.clip_contrastive import CaptionedCLIP, CLIPContrastiveModel

TINY = dict(embed_dim=16, image_size=8, patch_size=4, vision_width=16, vision_layers=1,
            vision_heads=2, vision_mlp_dim=32, vocab_size=259, context_length=16,
            text_width=16, text_layers=1, text_heads=2, text_mlp_dim=32)  # fmt: skip
NAMES = ["zero", "one", "two"]
TEMPLATES = ["{}", "the digit {}", "a photo of {}."]


def make_model(**top_level):
    config = ml_collections.ConfigDict(
        {
            "model": dict(TINY),
            "tokenizer": "bytes",
            "prompt_templates": TEMPLATES,
            "class_names": NAMES,
            **top_level,
        }
    )
    return CLIPContrastiveModel(config, {"num_classes": 3, "input_shape": (-1, 8, 8, 1)})


@pytest.fixture(scope="module")
def tiny():
    model = make_model()
    images = jax.random.normal(jax.random.key(1), (5, 8, 8, 1))
    params = jax.jit(model.flax_model.init)(jax.random.key(0), images)["params"]
    return model, params, images


def encode_text(model, params, texts):
    tokens = clip_tokenizer.ByteTokenizer().tokenize(texts, TINY["context_length"])
    return model.flax_model.apply({"params": params}, tokens, method=clip.CLIP.encode_text)


def test_training_captions_each_image_with_its_class_in_a_random_template(
    tiny, numpy_contrastive_loss
):
    model, params, images = tiny
    labels = np.array([2, 0, 2, 1, 0])
    apply = jax.jit(
        lambda key: model.flax_model.apply(
            {"params": params}, images, train=True, rngs={"dropout": key}
        )
    )
    per_template = np.stack(
        [encode_text(model, params, [t.format(n) for n in NAMES]) for t in TEMPLATES]
    )  # [T, C, E]
    chosen = set()
    for seed in range(10):
        outputs = apply(jax.random.key(seed))
        classes = np.asarray(outputs["class_embeddings"])
        for c in range(3):
            errors = np.abs(per_template[:, c] - classes[c]).max(axis=1)
            assert errors.min() < 1e-5
            chosen.add((c, int(errors.argmin())))
        batch = {"label": labels}
        loss, metrics = model.loss_and_metrics(outputs, batch)
        expected = numpy_contrastive_loss(
            outputs["image_embeddings"], classes[labels], float(outputs["logit_scale"])
        )
        np.testing.assert_allclose(loss, expected, rtol=1e-5)
        total, count = metrics["contrastive_loss"]
        np.testing.assert_allclose(total / count, expected, rtol=1e-5)
        nearest = (np.asarray(outputs["image_embeddings"]) @ classes.T).argmax(1)
        total, count = metrics["class_accuracy"]
        assert total / count == pytest.approx(np.mean(nearest == labels))
    assert len(chosen) == 9  # every class got every template at some step


def test_captions_in_the_batch_replace_the_class_prompts(tiny, numpy_contrastive_loss):
    model, params, images = tiny
    captions = ["a seven", "zero", "two dogs", "one", "nine nine"]
    tokens = clip_tokenizer.ByteTokenizer().tokenize(captions, TINY["context_length"])
    outputs = model.flax_model.apply(
        {"params": params},
        {"image": images, "text_tokens": tokens},
        train=True,
        rngs={"dropout": jax.random.key(0)},
    )
    assert outputs["class_embeddings"] is None
    texts = encode_text(model, params, captions)
    np.testing.assert_allclose(outputs["text_embeddings"], texts, rtol=1e-5, atol=1e-6)
    loss, metrics = model.loss_and_metrics(outputs, {"label": np.zeros(5, np.int32)})
    expected = numpy_contrastive_loss(
        outputs["image_embeddings"], texts, float(outputs["logit_scale"])
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert "class_accuracy" not in metrics


def test_eval_is_the_zero_shot_classifier_computed_once_per_pass(tiny):
    model, params, images = tiny
    variables = {"params": params}
    weights = clip.zero_shot_weights(
        lambda tokens: model.flax_model.apply(variables, tokens, method=clip.CLIP.encode_text),
        NAMES,
        TEMPLATES,
        lambda texts: clip_tokenizer.ByteTokenizer().tokenize(texts, TINY["context_length"]),
    )
    embeddings = model.flax_model.apply(variables, images, method=clip.CLIP.encode_image)
    scale = float(model.flax_model.apply(variables, method=clip.CLIP.scale))
    expected = scale * np.asarray(clip.zero_shot_classify(embeddings, weights))
    constants = jax.jit(model.eval_constants)(variables)
    np.testing.assert_allclose(constants, weights, rtol=1e-5, atol=1e-6)
    cached = jax.jit(model.eval_apply)(variables, images, constants)
    direct = jax.jit(lambda x: model.flax_model.apply(variables, x))(images)
    np.testing.assert_allclose(cached, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(direct, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("top_level", "message"),
    [
        ({"class_names": ["a", "b"]}, "2 names for a data set of 3 classes"),
        ({"prompt_templates": ["no slot"]}, "must hold exactly one"),
        ({"tokenizer": "clip"}, "tokenizer='clip' needs tokenizer_path"),
        ({"tokenizer": "words"}, "Unknown tokenizer 'words'"),
    ],
)
def test_bad_config_is_one_clear_error(top_level, message):
    with pytest.raises(ConfigError, match=message):
        make_model(**top_level)


def test_a_batch_without_captions_needs_class_names():
    module = CaptionedCLIP(**TINY)
    images = jnp.zeros((2, 8, 8, 1))
    with pytest.raises(ValueError, match="no text_tokens in the inputs and no class names"):
        module.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, images, True)
