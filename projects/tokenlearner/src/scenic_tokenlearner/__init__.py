"""TokenLearner (Ryoo et al., NeurIPS 2021) for images and video, on Scenic."""

__version__ = "0.1.0"
