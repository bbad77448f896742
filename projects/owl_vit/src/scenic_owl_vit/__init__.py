"""scenic-owl-vit: OWL-ViT and OWLv2 open-vocabulary detection on CLIP (scenic-baselines)."""

__version__ = "0.1.0"
