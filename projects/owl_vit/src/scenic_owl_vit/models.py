"""The registry the CLI reads: `config.model_name` -> base model."""

from __future__ import annotations

import scenic_owl_vit.init_formats  # noqa: F401  (registers OWL-ViT weight formats with init_from)
from scenic_owl_vit.detection_model import OwlViTDetectionModel

MODELS: dict[str, type] = {
    # config.model: `variant` and OWLViTDetector's attributes; the criterion's keys
    # (matcher, loss weights, eval_top_k, ...) and the tokenizer's are top-level.
    "owl_vit": OwlViTDetectionModel,
}
