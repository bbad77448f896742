"""Parameter counts of the published ViViT models (32 frames, 224x224, tubelets 2x16x16,
Kinetics-400's 400 classes), from shapes only (`jax.eval_shape`, nothing allocated), each
checked against an independent closed-form count and the number in the README table."""

import jax
import jax.numpy as jnp
import pytest

from scenic.common_lib.debug_utils import count_parameters
from scenic_vivit.model import ViViT

VIDEO = (1, 32, 224, 224, 3)
T, S, K, C = 16, 14 * 14, 400, 3  # temporal indices, tokens per frame, classes, channels
TUBELET = 2 * 16 * 16 * C
BASE = dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072)
LARGE = dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096)


def block(d, m):  # LN, q/k/v/out with biases, LN, MLP
    return 2 * d + 4 * (d * d + d) + 2 * d + (d * m + m) + (m * d + d)


def factorised_block(d, m):  # (LN + attention) over time and over space, LN, MLP
    return 2 * (2 * d + 4 * (d * d + d)) + 2 * d + (d * m + m) + (m * d + d)


def encoder(d, m, layers, tokens, one_block=block):  # posemb, blocks, final LN
    return tokens * d + layers * one_block(d, m) + 2 * d


def embed_and_head(d):
    return (TUBELET * d + d) + (d * K + K)


def spatio_temporal(d, m, layers):
    return embed_and_head(d) + d + encoder(d, m, layers, 1 + T * S)


def factorised_encoder(d, m, layers, temporal_layers):
    spatial = d + encoder(d, m, layers, 1 + S)
    temporal = d + encoder(d, m, temporal_layers, 1 + T)
    return embed_and_head(d) + spatial + temporal


# name -> (ViViT arguments, closed form, the README's number)
PUBLISHED = {
    "ViViT-B/16x2": (
        dict(BASE),
        spatio_temporal(768, 3072, 12),
        88_954_000,
    ),
    "ViViT-B/16x2 FE": (
        dict(BASE, variant="factorised_encoder", temporal_num_layers=4),
        factorised_encoder(768, 3072, 12, 4),
        115_062_928,
    ),
    "ViViT-L/16x2 FE": (  # K400 config of the original Scenic: 24 temporal layers
        dict(LARGE, variant="factorised_encoder", temporal_num_layers=24),
        factorised_encoder(1024, 4096, 24, 24),
        606_827_920,
    ),
    "ViViT-B/16x2 factorised self-attention": (
        dict(BASE, variant="factorised_self_attention", classifier="gap"),
        embed_and_head(768) + encoder(768, 3072, 12, T * S, factorised_block),
        117_319_312,
    ),
    "ViViT-B/16x2 factorised dot-product": (
        dict(BASE, variant="factorised_dot_product", classifier="gap"),
        embed_and_head(768) + encoder(768, 3072, 12, T * S),
        88_952_464,
    ),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_parameter_counts(name):
    kwargs, closed_form, documented = PUBLISHED[name]
    model = ViViT(num_classes=K, patch_size=(2, 16, 16), **kwargs)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(VIDEO))["params"])
    assert count_parameters(shapes) == closed_form == documented
