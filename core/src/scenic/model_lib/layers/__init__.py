"""Layers shared by the models: attention, MLP blocks, position embeddings, stochastic depth."""

from scenic.model_lib.layers.attention_layers import MultiHeadAttention
from scenic.model_lib.layers.nn_layers import (
    AddLearnedPositionEmbedding,
    MlpBlock,
    StochasticDepth,
    sincos_position_embedding_1d,
    sincos_position_embedding_2d,
)

__all__ = [
    "AddLearnedPositionEmbedding",
    "MlpBlock",
    "MultiHeadAttention",
    "StochasticDepth",
    "sincos_position_embedding_1d",
    "sincos_position_embedding_2d",
]
