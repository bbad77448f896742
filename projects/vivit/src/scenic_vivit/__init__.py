"""Scenic ViViT: video vision transformers (Arnab et al., 2021) and their configs."""

__version__ = "0.1.0"
