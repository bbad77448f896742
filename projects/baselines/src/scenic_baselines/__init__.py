"""Scenic baselines: the Vision Transformer and its configs."""

__version__ = "0.1.0"
