"""Base models (losses and metrics), layers and model utilities. No TensorFlow here."""
