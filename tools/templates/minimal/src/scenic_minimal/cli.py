"""`scenic-minimal train | eval | list-configs`."""

from __future__ import annotations

import sys

from scenic.common_lib.runner import make_main


def _models():
    from scenic_minimal.models import MODELS

    return MODELS


main = make_main(
    prog="scenic-minimal",
    config_package="scenic_minimal.configs",
    models=_models,
    description="Train and evaluate the scenic-minimal classifier.",
)

if __name__ == "__main__":
    sys.exit(main())
