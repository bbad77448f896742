"""Where a bench model's jitted train step spends its time, op by op, from XLA's own trace.

    hatch run python tools/profile_step_ops.py [--model reference] [--steps 3] [--top 30]

Builds bench_vs_timm's bare step (the core's `steps.train_step` under `jax.jit`, state
donated, one fixed batch on the device) for a bench_trainer model, runs two untimed steps,
then traces `--steps` steps with the JAX profiler, with XLA:CPU's per-thunk trace events on
(`--xla_cpu_enable_xprof_traceme`, set by this script before JAX starts). It prints the
step's wall time, then the time per step of each kind of XLA:CPU operation (`ynn_fusion`:
matrix multiplies and reductions handed to YNNPACK; `copy_*` / `transpose_*`: layout copies;
`*_fusion`: elementwise loops), then the `--top` costliest logical operations: thunks of the
same kind, output shape and source operation (layer index folded), with their count per step.
Thunks may overlap (XLA:CPU runs independent ones concurrently), so the per-op sum can
exceed the wall time.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

#: Trace events that are not XLA operations (executor bookkeeping, Python frames).
NOT_OPS = (
    "ThunkExecutor", "$", "SlinkyThreadPool", "end: ", "PjitFunction", "CommonPjRt",
    "ParseArguments",
)  # fmt: skip


def trace_events(folder: str) -> list[dict]:
    found = sorted(pathlib.Path(folder).rglob("*perfetto_trace.json.gz"))
    if not found:
        raise SystemExit(f"The profiler wrote no perfetto trace under {folder}.")
    with gzip.open(found[-1]) as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def op_names(hlo_text: str) -> dict:
    """Instruction name -> (output type, source operation with layer indices folded)."""
    names = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*%?([\w.\-]+) = (\S+) [\w\-]+\(.*op_name=\"([^\"]+)\"", line)
        if match:
            source = re.sub(r"(encoderblock|block|layer)_\d+", r"\1_i", match.group(3))
            names[match.group(1)] = (match.group(2), source.replace("jit(train_step)/", ""))
    return names


def main() -> None:
    from scenic.common_lib import allocator

    allocator.reexec_with_huge_pages()  # as the scenic-* commands do
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
    )
    import bench_trainer

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", default="reference", choices=bench_trainer.BENCHES)
    parser.add_argument("--steps", type=int, default=3, help="traced steps, >= 1")
    parser.add_argument("--top", type=int, default=30, help="logical operations listed")
    args = parser.parse_args()
    if args.steps < 1 or args.top < 1:
        parser.error("--steps and --top must be >= 1")
    import bench_vs_timm
    import jax

    bench_trainer.setup()
    step, state, batch, _ = bench_vs_timm.bare_step(args.model, bench_trainer.NUM_CLASSES)
    step = step.lower(state, batch).compile()  # compiled once: its HLO names the thunks
    hlo = step.as_text()
    for _ in range(2):
        state, _, _ = step(state, batch)
    jax.block_until_ready(state)
    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder, create_perfetto_trace=True)
        start = time.perf_counter()
        for _ in range(args.steps):
            state, _, _ = step(state, batch)
        jax.block_until_ready(state)
        wall = (time.perf_counter() - start) / args.steps
        jax.profiler.stop_trace()
        events = trace_events(folder)

    per_thunk = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and not event["name"].startswith(NOT_OPS):
            per_thunk[event["name"]] += event.get("dur", 0) / 1e3 / args.steps  # ms per step
    kind_of = {name: re.sub(r"\.\d+$", "", name) for name in per_thunk}
    kinds, kind_counts = collections.Counter(), collections.Counter()
    for name, ms in per_thunk.items():
        kinds[kind_of[name]] += ms
        kind_counts[kind_of[name]] += 1
    print(
        f"{args.model}: {jax.devices()[0].device_kind}, jax {jax.__version__}; "
        f"step {wall * 1e3:.0f} ms wall while traced, {sum(per_thunk.values()):.0f} ms of "
        f"operations ({len(per_thunk)} thunks)\n"
    )
    print("by kind (ms per step, thunks):")
    for kind, ms in kinds.most_common(15):
        print(f"  {ms:8.1f}  {kind_counts[kind]:4d}  {kind}")
    names = op_names(hlo)
    logical, counts = collections.Counter(), collections.Counter()
    for name, ms in per_thunk.items():
        shape, source = names.get(name, ("?", "?"))
        key = (kind_of[name], shape, source)
        logical[key] += ms
        counts[key] += 1
    print(f"\ncostliest {args.top} logical operations (ms per step, thunks, kind, output, source):")
    for (kind, shape, source), ms in logical.most_common(args.top):
        print(f"  {ms:8.1f}  {counts[kind, shape, source]:3d}  {kind:22.22s} {shape:26.26s} "
              f"{source[-90:]}")  # fmt: skip


if __name__ == "__main__":
    main()
