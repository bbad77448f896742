"""`scenic-owl-vit train | eval | list-configs | detect`."""

from __future__ import annotations

import sys

from scenic.common_lib.runner import make_main


def _models():
    from scenic_owl_vit.models import MODELS

    return MODELS


def _detect_command():
    from scenic_owl_vit import detect

    return detect.command()


main = make_main(
    prog="scenic-owl-vit",
    config_package="scenic_owl_vit.configs",
    models=_models,
    description="OWL-ViT / OWLv2 open-vocabulary detection.",
    commands={"detect": _detect_command()},
)

if __name__ == "__main__":
    sys.exit(main())
