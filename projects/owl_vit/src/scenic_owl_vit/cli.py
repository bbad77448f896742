"""`scenic-owl-vit train | eval | list-configs`."""

from __future__ import annotations

import sys

from scenic.common_lib.runner import make_main


def _models():
    from scenic_owl_vit.models import MODELS

    return MODELS


main = make_main(
    prog="scenic-owl-vit",
    config_package="scenic_owl_vit.configs",
    models=_models,
    description="OWL-ViT / OWLv2 open-vocabulary detection (no configs yet).",
)

if __name__ == "__main__":
    sys.exit(main())
