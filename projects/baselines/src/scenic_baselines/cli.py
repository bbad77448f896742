"""`scenic-baselines train | eval | list-configs | detect`."""

from __future__ import annotations

import sys

from scenic.common_lib import detect_command
from scenic.common_lib.runner import make_main


def _models():
    from scenic_baselines.models import MODELS

    return MODELS


main = make_main(
    prog="scenic-baselines",
    config_package="scenic_baselines.configs",
    models=_models,
    description="Train and evaluate Scenic baseline models (ViT, ResNet, DETR).",
    commands={"detect": detect_command.command()},
)

if __name__ == "__main__":
    sys.exit(main())
