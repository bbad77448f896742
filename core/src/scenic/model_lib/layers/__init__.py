"""Layers shared by the models: attention (multi-head, relative bias, axial), MLP blocks,
position embeddings, stochastic depth, residual wrappers, padding-aware (masked) pooling,
normalisation and convolution, and image ops (patches, space-to-depth, pooling, resize)."""

from scenic.model_lib.layers.attention_layers import (
    AxialAttention,
    MultiHeadAttention,
    RelativeAttentionBias,
    relative_position_index,
)
from scenic.model_lib.layers.image_ops import (
    avg_pool,
    depth_to_space,
    extract_patches,
    max_pool,
    merge_patches,
    resize,
    space_to_depth,
)
from scenic.model_lib.layers.masked_layers import (
    MaskedBatchNorm,
    MaskedConv,
    MaskedLayerNorm,
    masked_avg_pool,
    masked_max_pool,
    masked_mean_and_variance,
)
from scenic.model_lib.layers.nn_layers import (
    AddLearnedPositionEmbedding,
    Affine,
    Identity,
    MlpBlock,
    Residual,
    SqueezeAndExcite,
    StochasticDepth,
    quick_gelu,
    sincos_position_embedding_1d,
    sincos_position_embedding_2d,
)

__all__ = [
    "AddLearnedPositionEmbedding",
    "Affine",
    "AxialAttention",
    "Identity",
    "MaskedBatchNorm",
    "MaskedConv",
    "MaskedLayerNorm",
    "MlpBlock",
    "MultiHeadAttention",
    "RelativeAttentionBias",
    "Residual",
    "SqueezeAndExcite",
    "StochasticDepth",
    "avg_pool",
    "depth_to_space",
    "extract_patches",
    "masked_avg_pool",
    "masked_max_pool",
    "masked_mean_and_variance",
    "max_pool",
    "merge_patches",
    "quick_gelu",
    "relative_position_index",
    "resize",
    "sincos_position_embedding_1d",
    "sincos_position_embedding_2d",
    "space_to_depth",
]
