"""The `export` verb, built into every project's CLI: a trained model for serving.

    scenic-<name> export --workdir DIR --format {stablehlo,savedmodel,onnx} --out DIR
        [--batch N | --dynamic-batch] [--checkpoint STEP] [--platforms cpu,cuda]

Loads the latest checkpoint (or `--checkpoint`'s) of the run in `--workdir` (EMA parameters
if the run kept them), exports its inference pass (`scenic.common_lib.export`) with a batch
of `--batch` (default 1) or a symbolic batch (`--dynamic-batch`), checks the export against
the JAX model on a random batch, and writes the new folder `--out` with the model and
`model_card.json` (config, final metrics, input / output names, shapes and dtypes,
preprocessing, step, format, platforms).

Exit codes: 0 exported; 2 bad input (no workdir or checkpoint, an unknown format, `--batch`
with `--dynamic-batch`, an `--out` that exists and is not empty, a model the format cannot
express): one line on stderr, nothing written.
"""

from __future__ import annotations

import pathlib


def add_arguments(parser) -> None:
    parser.add_argument("--workdir", required=True, help="the training run's workdir")
    parser.add_argument("--format", required=True, help="stablehlo, savedmodel or onnx")
    parser.add_argument("--out", required=True, help="a new (or empty) output folder")
    parser.add_argument("--batch", type=int, default=None, help="fixed batch size (default 1)")
    parser.add_argument(
        "--dynamic-batch", action="store_true", help="a symbolic batch dimension instead"
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="a step, or its folder WORKDIR/checkpoints/STEP (default: the latest)",
    )
    parser.add_argument(
        "--platforms",
        default="cpu,cuda",
        help="stablehlo / savedmodel: platforms to lower for, comma-separated (default cpu,cuda)",
    )


def run(args, context) -> int:
    from scenic.common_lib import export
    from scenic.common_lib.detect_command import checkpoint_step
    from scenic.common_lib.runner import UsageError

    if args.batch is not None and args.dynamic_batch:
        raise UsageError("Pass --batch N or --dynamic-batch, not both.")
    batch = None if args.dynamic_batch else (1 if args.batch is None else args.batch)
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    export.check_request(args.format, batch, platforms)
    out = pathlib.Path(args.out)
    export.check_out(out)
    workdir = pathlib.Path(args.workdir)
    if not workdir.is_dir():
        raise UsageError(f"--workdir {workdir} is not a directory of a training run.")
    if not (workdir / "checkpoints").is_dir():
        raise UsageError(f"--workdir {workdir} has no checkpoints: not a trained run.")
    step = checkpoint_step(args.checkpoint, args.workdir)
    trained = context.load_trained_model(workdir, step=step)
    card = export.workdir_card(trained, workdir)
    written = export.export(
        export.Servable.from_trained(trained),
        args.format,
        out,
        batch=batch,
        platforms=platforms,
        card=card,
    )
    check = written["check"]
    checked = (
        f"checked on {check['runtime']} (max |diff| {check['max_abs_difference']:.2g})"
        if check.get("verified")
        else "not run here (no cpu platform)"
    )
    print(
        f"{trained.config.model_name} step {trained.step} -> {out} ({args.format}, "
        f"batch {written['batch']}; {checked})."
    )
    return 0
