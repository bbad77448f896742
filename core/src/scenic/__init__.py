"""Scenic core: shared building blocks for attention-based vision models in JAX/Flax."""

__version__ = "0.1.0"
