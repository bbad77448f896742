"""`scenic-tokenlearner train | eval | list-configs`."""

from __future__ import annotations

import sys

from scenic.common_lib.runner import make_main


def _models():
    from scenic_tokenlearner.models import MODELS

    return MODELS


main = make_main(
    prog="scenic-tokenlearner",
    config_package="scenic_tokenlearner.configs",
    models=_models,
    description="Train and evaluate ViT / ViViT models with TokenLearner.",
)

if __name__ == "__main__":
    sys.exit(main())
