"""OWL-ViT's own rules, without Hugging Face: the box bias puts an untrained head's boxes on
the patch grid, padded queries (token 0 first, or all-zero embeddings) get the padded-query
logit, shared queries broadcast over the batch, and OWLv2's objectness head passes no
gradient into the image tower."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scenic_owl_vit import model as owl_model

TINY = dict(embed_dim=16, image_size=16, patch_size=8, vision_width=16, vision_layers=1,
            vision_heads=2, vision_mlp_dim=32, vocab_size=50, context_length=8, text_width=16,
            text_layers=1, text_heads=2, text_mlp_dim=32)  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    model = owl_model.OWLViT(**TINY, objectness=True)
    images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    tokens = np.array([[5, 7, 49, 0, 0, 0, 0, 0], [0] * 8, [3, 49, 0, 0, 0, 0, 0, 0]])
    params = jax.jit(model.init)(jax.random.key(0), images, tokens)["params"]
    return model, params, images, tokens


def test_box_bias_is_the_inverse_sigmoid_of_grid_corners_and_cell_size():
    bias = owl_model.box_bias(2, 4)  # 2 rows, 4 columns, row-major
    boxes = 1 / (1 + np.exp(-bias))
    np.testing.assert_allclose(boxes[:, 0], np.tile([0.25, 0.5, 0.75, 1.0], 2), atol=1e-3)
    np.testing.assert_allclose(boxes[:, 1], np.repeat([0.5, 1.0], 4), atol=1e-3)
    np.testing.assert_allclose(boxes[:, 2:], np.tile([0.25, 0.5], (8, 1)), atol=1e-3)


def test_outputs_and_padded_queries(tiny):
    model, params, images, tokens = tiny
    out = jax.jit(model.apply)({"params": params}, images, tokens)
    assert out["pred_logits"].shape == (2, 4, 3) and out["pred_boxes"].shape == (2, 4, 4)
    assert out["objectness_logits"].shape == (2, 4)
    assert out["class_embeddings"].shape == (2, 4, 16)
    assert np.all(out["pred_logits"][..., 1] == -1e6)  # the padded query (first token 0)
    assert np.all(out["pred_logits"][..., [0, 2]] > -1e3)
    # Per-image queries [B, Q, L] give the same as shared ones; embeddings too, where an
    # all-zero embedding is a padded query.
    apply = jax.jit(lambda x, t, q: model.apply({"params": params}, x, t, query_embeddings=q))
    per_image = apply(images, np.broadcast_to(tokens, (2, 3, 8)), None)
    np.testing.assert_allclose(per_image["pred_logits"], out["pred_logits"], atol=1e-5)
    queries = model.apply({"params": params}, jnp.asarray(tokens), method="text_embeddings")
    by_embedding = apply(images, None, queries.at[1].set(0.0))
    np.testing.assert_allclose(by_embedding["pred_logits"], out["pred_logits"], atol=1e-5)


def test_objectness_passes_no_gradient_to_the_image_tower(tiny):
    model, params, images, tokens = tiny

    def objectness(p):
        return model.apply({"params": p}, images, tokens)["objectness_logits"].sum()

    grads = jax.jit(jax.grad(objectness))(params)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads["clip"]))
    assert float(jnp.abs(grads["merged_norm"]["scale"]).max()) == 0
    assert float(jnp.abs(grads["objectness_head"]["dense2"]["kernel"]).max()) > 0


def test_unknown_variant_names_the_known_ones():
    with pytest.raises(ValueError, match="known: owl_vit_b32, owl_vit_b16"):
        owl_model.owl_vit("owl_vit_h14")
