"""`scenic-mbt train | eval | list-configs | predict`."""

from __future__ import annotations

import sys

from scenic.common_lib.runner import Command, make_main


def _models():
    from scenic_mbt.models import MODELS

    return MODELS


def _predict_arguments(parser):
    from scenic_mbt.predict import add_arguments

    add_arguments(parser)


def _predict(args, context):
    from scenic_mbt.predict import run

    return run(args, context)


main = make_main(
    prog="scenic-mbt",
    config_package="scenic_mbt.configs",
    models=_models,
    description="Train, evaluate and run MBT audio-visual fusion models.",
    commands={
        "predict": Command(
            _predict,
            help="top-k labels of video files (with sound) or records, from a trained workdir",
            add_arguments=_predict_arguments,
        )
    },
)

if __name__ == "__main__":
    sys.exit(main())
