"""Scenic baselines: ViT, ResNet v1.5 and DETR, their configs and the CLI."""

__version__ = "0.1.0"
