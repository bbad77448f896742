"""scenic-minimal: a small patch-MLP image classifier on Scenic, its digits demo and a CLI."""

__version__ = "0.1.0"
