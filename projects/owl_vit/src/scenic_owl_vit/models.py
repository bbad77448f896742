"""The registry the CLI reads: `config.model_name` -> base model.

Empty for now: the OWL-ViT / OWLv2 network and its Hugging Face import are in `model` and
`weights`; a detection base model on the core's `DetectionModel` criterion (and its export
case in tests/test_export.py) comes with the training configs.
"""

from __future__ import annotations

MODELS: dict[str, type] = {}
