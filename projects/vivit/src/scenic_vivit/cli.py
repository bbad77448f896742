"""`scenic-vivit train | eval | list-configs`."""

from __future__ import annotations

import sys

from scenic.common_lib.runner import make_main


def _models():
    from scenic_vivit.models import MODELS

    return MODELS


main = make_main(
    prog="scenic-vivit",
    config_package="scenic_vivit.configs",
    models=_models,
    description="Train and evaluate ViViT video transformers.",
)

if __name__ == "__main__":
    sys.exit(main())
