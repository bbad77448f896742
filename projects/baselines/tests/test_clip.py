"""CLIP: the core options it needs (QuickGELU, the causal block, a position table longer
than the text), EOT pooling, the variants' published sizes, the model's outputs, the
contrastive loss against a float64 NumPy reference (and across two devices, where the
embeddings are all-gathered), and the zero-shot classifier with a fake tokenizer and
encoder. Hugging Face weights: test_clip_weights.py."""

import functools
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scenic.model_lib import layers, vit_encoder
from scenic_baselines import clip

TINY = dict(embed_dim=16, image_size=32, patch_size=8, vision_width=32, vision_layers=1,
            vision_heads=4, vision_mlp_dim=64, vocab_size=100, context_length=16,
            text_width=32, text_layers=1, text_heads=4, text_mlp_dim=64)  # fmt: skip
EOT = TINY["vocab_size"] - 1


def token_ids(rng, lengths, length=TINY["context_length"]):
    """[len(lengths), length] ids: BOS (98), random words, EOT (99) at `n`, zeros after."""
    tokens = np.zeros((len(lengths), length), np.int32)
    for row, n in enumerate(lengths):
        tokens[row, :n] = rng.integers(1, EOT - 1, size=n)
        tokens[row, 0], tokens[row, n] = EOT - 1, EOT
    return tokens


@pytest.fixture(scope="module")
def tiny():
    model = clip.CLIP(**TINY)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
    tokens = token_ids(rng, [3, 7, 15, 1])
    params = jax.jit(model.init)(jax.random.key(0), images, tokens)["params"]
    return model, params, images, tokens


def apply(model, params, *args, **kwargs):
    """`model.apply`, jitted (keyword arguments static): eager Flax runs op by op."""
    return _jitted(model, tuple(sorted(kwargs.items())))(params, *args)


@functools.cache
def _jitted(model, kwargs):
    return jax.jit(lambda params, *args: model.apply({"params": params}, *args, **dict(kwargs)))


# ---------------------------------------------------------------- core options CLIP uses


def test_quick_gelu_is_openai_s_formula():
    x = jnp.linspace(-6, 6, 101)
    expected = np.asarray(x, np.float64) / (1 + np.exp(-1.702 * np.asarray(x, np.float64)))
    np.testing.assert_allclose(layers.quick_gelu(x), expected, rtol=1e-6, atol=1e-7)
    assert float(jnp.max(jnp.abs(layers.quick_gelu(x) - jax.nn.gelu(x, approximate=False)))) > 1e-2


@pytest.mark.parametrize("causal", [True, False])
def test_a_causal_block_ignores_later_tokens(causal):
    block = vit_encoder.EncoderBlock(mlp_dim=16, num_heads=2, causal=causal)
    x = jax.random.normal(jax.random.key(0), (2, 6, 8))
    params = jax.jit(block.init)(jax.random.key(1), x)
    changed = x.at[:, 4:].set(jax.random.normal(jax.random.key(2), (2, 2, 8)))
    before, after = jax.jit(block.apply)(params, jnp.stack([x, changed]))
    same = np.allclose(before[:, :4], after[:, :4], rtol=0, atol=1e-6)
    assert same == causal  # without the mask (negative control) earlier tokens change too


def test_a_position_table_longer_than_the_inputs():
    embed = layers.AddLearnedPositionEmbedding(num_positions=5)
    params = embed.init(jax.random.key(0), jnp.zeros((1, 3, 4)))
    table = params["params"]["pos_embedding"]
    assert table.shape == (1, 5, 4)
    np.testing.assert_array_equal(
        embed.apply(params, jnp.zeros((2, 2, 4))), jnp.tile(table[:, :2], (2, 1, 1))
    )
    with pytest.raises(ValueError, match="length 6 exceed the 5 learned positions"):
        embed.apply(params, jnp.zeros((1, 6, 4)))


# ---------------------------------------------------------------- the model


def test_eot_positions_by_openai_s_and_hugging_face_s_rule():
    tokens = jnp.array([[98, 5, 99, 0, 0], [98, 99, 99, 99, 99], [49, 70, 50, 60, 0]])
    np.testing.assert_array_equal(clip.eot_positions(tokens), [2, 1, 1])  # the highest id
    np.testing.assert_array_equal(clip.eot_positions(tokens, 99), [2, 1, 0])  # the first 99
    assert int(clip.eot_positions(tokens, 50)[2]) == 2  # an EOT id below other ids


def test_variants_have_the_published_sizes():
    """Parameter counts of Hugging Face's CLIPModel with OpenAI's four configs."""
    published = {"vit_b32": 151_277_313, "vit_b16": 149_620_737, "vit_l14": 427_616_513,
                 "vit_l14_336": 427_944_193}  # fmt: skip
    for name, count in published.items():
        model, size = clip.clip_model(name), clip.VARIANTS[name]["image_size"]
        shapes = jax.eval_shape(
            model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)), jnp.zeros((1, 77), int)
        )
        assert sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)) == count, name
    with pytest.raises(ValueError, match="Unknown CLIP variant 'vit_h14'"):
        clip.clip_model("vit_h14")


def test_outputs_are_scaled_cosine_similarities(tiny):
    model, params, images, tokens = tiny
    out = apply(model, params, images, tokens)
    assert out["logits_per_image"].shape == (3, 4) and out["logits_per_text"].shape == (4, 3)
    for name in ("image_embeddings", "text_embeddings"):
        np.testing.assert_allclose(np.linalg.norm(out[name], axis=-1), 1.0, rtol=1e-6)
    assert float(out["logit_scale"]) == pytest.approx(1 / 0.07, rel=1e-6)  # exp(log(1/0.07))
    cosine = np.asarray(out["image_embeddings"]) @ np.asarray(out["text_embeddings"]).T
    np.testing.assert_allclose(out["logits_per_image"], cosine / 0.07, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["logits_per_text"], out["logits_per_image"].T)


def test_the_logit_scale_is_clipped_at_100(tiny):
    model, params, _, _ = tiny
    params = {**params, "logit_scale": jnp.log(1000.0)}
    assert float(apply(model, params, method="scale")) == 100.0
    unclipped = apply(model.clone(max_logit_scale=None), params, method="scale")
    assert float(unclipped) == pytest.approx(1000.0, rel=1e-5)


def test_patch_tokens_for_owl_vit(tiny):
    model, params, images, tokens = tiny
    embeddings, patch_tokens = apply(
        model, params, images, normalize=False, return_tokens=True, method="encode_image"
    )
    assert patch_tokens.shape == (3, 1 + 16, TINY["vision_width"])  # class token + 4x4 grid
    projected = patch_tokens[:, 0] @ params["visual"]["projection"]["kernel"]
    np.testing.assert_allclose(embeddings, projected, rtol=1e-5, atol=1e-6)
    normalized = apply(model, params, images, tokens)["image_embeddings"]
    np.testing.assert_allclose(clip.l2_normalize(embeddings), normalized, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="expects \\[B, 32, 32, C\\] images"):
        apply(model, params, images[:, :16], method="encode_image")


def test_text_pooled_at_eot_is_blind_to_what_follows_and_to_length(tiny):
    """The causal mask: words after the EOT token, or none at all (a sequence shorter than
    the 16-position context), leave the pooled embedding unchanged."""
    model, params, _, tokens = tiny
    encode = functools.partial(apply, model, params, method="encode_text")
    reference = np.asarray(encode(tokens))
    noisy = tokens.copy()
    for row in range(len(tokens)):
        end = int(np.argmax(tokens[row])) + 1
        noisy[row, end:] = np.random.default_rng(row).integers(1, EOT - 1, size=16 - end)
    np.testing.assert_allclose(encode(noisy), reference, rtol=1e-5, atol=1e-6)
    short = tokens[[0, 1, 3], :8]  # EOT within the first 8 positions
    np.testing.assert_allclose(encode(short), reference[[0, 1, 3]], rtol=1e-5, atol=1e-6)
    # Negative control: a word BEFORE the EOT token does change it.
    changed = tokens.copy()
    changed[:, 1] = (changed[:, 1] % 90) + 1
    assert float(jnp.max(jnp.abs(encode(changed)[:3] - reference[:3]))) > 1e-3


# ---------------------------------------------------------------- contrastive loss


def random_embeddings(seed, batch=6, dim=5):
    rng = np.random.default_rng(seed)
    image, text = rng.normal(size=(2, batch, dim)).astype(np.float32)
    return (image / np.linalg.norm(image, axis=1, keepdims=True),
            text / np.linalg.norm(text, axis=1, keepdims=True))  # fmt: skip


def test_contrastive_loss_against_float64_numpy(numpy_contrastive_loss):
    image, text = random_embeddings(0)
    for scale in (1.0, 14.3, 100.0):
        loss = clip.contrastive_loss(image, text, scale)
        assert float(loss) == pytest.approx(numpy_contrastive_loss(image, text, scale), rel=1e-5)
    # Matched pairs score near zero at a high scale; swapping the roles changes nothing.
    assert float(clip.contrastive_loss(image, image, 100.0)) < 1e-6
    assert float(clip.contrastive_loss(text, image, 10.0)) == pytest.approx(
        float(clip.contrastive_loss(image, text, 10.0)), rel=1e-6
    )
    # Negative control: one direction alone is not the loss.
    one_way = -np.mean(np.diag(jax.nn.log_softmax(10.0 * image @ text.T)))
    assert abs(one_way - numpy_contrastive_loss(image, text, 10.0)) > 1e-3


_PMAP_CHECK = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from scenic_baselines import clip
    assert jax.local_device_count() == 2
    image, text = (np.asarray(a, np.float32) for a in np.load(PATH).values())
    scale = 10.0

    def per_device(i, t):
        loss, (gi, gt) = jax.value_and_grad(
            lambda i, t: clip.contrastive_loss(i, t, scale, axis_name="batch"), (0, 1))(i, t)
        return jax.lax.pmean(loss, "batch"), gi, gt

    split = lambda a: a.reshape(2, a.shape[0] // 2, -1)
    loss, gi, gt = jax.pmap(per_device, axis_name="batch")(split(image), split(text))
    global_loss, (ri, rt) = jax.value_and_grad(
        lambda i, t: clip.contrastive_loss(i, t, scale), (0, 1))(image, text)
    print(float(loss[0]), float(global_loss))
    # Each device's gradient sums every device's loss (all_gather's transpose): / devices.
    np.testing.assert_allclose(np.asarray(gi).reshape(image.shape) / 2, ri, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gt).reshape(text.shape) / 2, rt, rtol=1e-5, atol=1e-6)
    # Negative control: without the gather each device sees only its own negatives.
    local = jax.pmap(lambda i, t: clip.contrastive_loss(i, t, scale))(split(image), split(text))
    print(float(np.mean(local)))
""")


def test_contrastive_loss_gathers_the_global_batch_across_two_devices(
    tmp_path, numpy_contrastive_loss
):
    """Under jax.pmap over 2 CPU devices (a subprocess: the device count is fixed at JAX's
    import), the gathered loss and its gradients are the global batch's."""
    image, text = random_embeddings(1, batch=8)
    path = tmp_path / "embeddings.npz"
    np.savez(path, image=image, text=text)
    env = {
        **os.environ,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    code = f"PATH = {str(path)!r}\n" + _PMAP_CHECK
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    gathered, global_loss, local = (float(v) for v in result.stdout.split())
    reference = numpy_contrastive_loss(image, text, 10.0)
    assert gathered == pytest.approx(reference, rel=1e-5)
    assert global_loss == pytest.approx(reference, rel=1e-5)
    assert abs(local - reference) > 1e-2  # fewer negatives: a smaller loss


# ---------------------------------------------------------------- zero-shot


def test_zero_shot_weights_and_classification_with_a_fake_encoder():
    """A fake tokenizer (text -> its row in a table) and encoder (row -> a fixed vector, of
    varying norm) make the expected classifier exact: per class, each template's embedding
    normalised, their mean normalised again."""
    classes, templates = ["cat", "dog", "fish"], ["a photo of a {}.", lambda c: f"art of {c}"]
    texts = [t(c) if callable(t) else t.format(c) for c in classes for t in templates]
    table = np.random.default_rng(0).normal(size=(len(texts), 4)) * np.arange(1, 7)[:, None]
    calls = []

    def tokenize(batch):
        calls.append(list(batch))
        return np.array([texts.index(t) for t in batch])

    weights = clip.zero_shot_weights(
        lambda ids: jnp.asarray(table[ids], jnp.float32), classes, templates, tokenize
    )
    assert calls == [texts[0:2], texts[2:4], texts[4:6]]  # one call per class
    expected = []
    for c in range(3):
        rows = table[2 * c : 2 * c + 2]
        mean = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).mean(0)
        expected.append(mean / np.linalg.norm(mean))
    np.testing.assert_allclose(weights, np.array(expected), rtol=1e-6, atol=1e-6)
    # Images pointing at class 2, 0, 1 (scaled: classification is by cosine).
    images = np.array(expected)[[2, 0, 1]] * np.array([[3.0], [0.5], [7.0]])
    scores = clip.zero_shot_classify(images, weights)
    np.testing.assert_array_equal(np.argmax(scores, axis=1), [2, 0, 1])
    np.testing.assert_allclose(scores, np.array(expected)[[2, 0, 1]] @ np.array(expected).T,
                               rtol=1e-5, atol=1e-6)  # fmt: skip
