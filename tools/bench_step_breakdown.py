"""Where a training step's time goes: matrix multiplies versus everything else.

    hatch run python tools/bench_step_breakdown.py [--models reference vit_s16] [--repeats 5]

For a bench_trainer model it times, in one process:
  1. the full trainer (bench_trainer.measure: pmap, optimizer, input, everything), per step;
  2. forward + backward of the loss alone (one jitted `jax.grad`, no optimizer, no pmap);
  3. only the matrix multiplies of (2): every `dot_general` in its jaxpr, with the same
     shapes, dtypes and dimension numbers, run back to back in one jitted function;
and the peak (a 2048x2048 matmul). From these: the share of (2) that is not matrix
multiplies (softmax, LayerNorm, GELU, elementwise, layout copies), the optimizer and trainer
overhead (1 - 2), and how fast XLA runs this model's matrix multiplies at their own shapes
(their FLOPs / (3) against the peak): whether the gap to the peak is in the GEMMs (small or
skinny shapes) or around them.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_trainer  # tools/ is not a package: found through sys.path


def best_time(fn, *args, repeats: int) -> float:
    """Best wall time of `fn(*args)` over `repeats` calls after one compiling call."""
    import jax

    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def dot_generals(closed_jaxpr) -> list:
    """Every dot_general equation of a jaxpr, nested jaxprs (pjit, remat, custom_vjp) included."""
    from jax.extend import core

    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                found.append(eqn)
            for sub in core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(closed_jaxpr.jaxpr)
    return found


def dots_only(eqns):
    """(fn, operands): fn(operands) runs just these dot_generals; random operands."""
    import jax
    import numpy as np

    rng = np.random.default_rng(0)
    operands = [
        tuple(np.asarray(rng.standard_normal(v.aval.shape), v.aval.dtype) for v in eqn.invars[:2])
        for eqn in eqns
    ]

    @jax.jit
    def run(operands):
        # Keep every product live (a sum of one element each) without adding real work.
        total = 0.0
        for eqn, (a, b) in zip(eqns, operands, strict=True):
            out = eqn.primitive.bind(a, b, **eqn.params)
            total = total + out.reshape(-1)[0].astype(np.float32)
        return total

    return run, operands


def breakdown(name: str, steps: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from scenic.common_lib import debug_utils

    trainer = bench_trainer.measure(name, steps=steps)
    _, config = bench_trainer.config_for(name, steps, None)
    model_cls = bench_trainer.model_registry(config.model_name)[config.model_name]
    shape = bench_trainer.input_shape_of(name)
    dataset = bench_trainer.synthetic_dataset(shape, config.batch_size)
    model = model_cls(config, dataset.meta_data)
    batch = config.batch_size
    x = jnp.asarray(next(dataset.train_batches(0))["inputs"])
    y = jnp.zeros((batch,), jnp.int32)
    params = model.flax_model.init(jax.random.key(0), x[:1], train=False)["params"]
    loss = bench_trainer.training_loss(model)
    grad = jax.jit(jax.grad(loss))
    grad_s = best_time(grad, params, x, y, repeats=repeats)
    eqns = dot_generals(jax.make_jaxpr(jax.grad(loss))(params, x, y))
    run_dots, operands = dots_only(eqns)
    dots_s = best_time(run_dots, operands, repeats=repeats)
    dot_flops = debug_utils.compiled_flops(run_dots, operands)
    return {
        "batch": batch,
        "step_s": batch / trainer["examples_per_sec"],
        "grad_s": grad_s,
        "dots_s": dots_s,
        "num_dots": len(eqns),
        "dot_flops": dot_flops,
        "model_flops": trainer["flops_per_example"] * batch,
    }


def main() -> None:
    from scenic.common_lib import allocator

    allocator.reexec_with_huge_pages()  # as bench_trainer and the scenic-* commands do
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--models", nargs="+", default=["reference"], choices=bench_trainer.BENCHES)
    parser.add_argument("--steps", type=int, default=10, help="trainer steps, >= 2")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of (2) and (3)")
    args = parser.parse_args()
    import jax

    bench_trainer.setup()
    peak = bench_trainer.peak_flops()
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__},"
        f" allocator {allocator.describe()}; peak {peak / 1e9:.0f} GFLOP/s (2048^2 matmul)\n"
    )
    for name in args.models:
        r = breakdown(name, args.steps, args.repeats)
        step, grad, dots = r["step_s"], r["grad_s"], r["dots_s"]
        print(f"{name} (batch {r['batch']}):")
        print(
            f"  1. trainer step                {step * 1e3:8.1f} ms   "
            f"MFU {r['model_flops'] / step / peak:6.1%}"
        )
        print(
            f"  2. forward + backward only     {grad * 1e3:8.1f} ms   "
            f"MFU {r['model_flops'] / grad / peak:6.1%}   (optimizer + trainer: "
            f"{(step - grad) / step:.0%} of the step)"
        )
        print(
            f"  3. its {r['num_dots']} matmuls alone       {dots * 1e3:8.1f} ms   "
            f"{r['dot_flops'] / dots / 1e9:6.1f} GFLOP/s = {r['dot_flops'] / dots / peak:.0%} "
            f"of peak at these shapes; the rest of (2): {(grad - dots) / grad:.0%}"
        )
        print(f"  matmul share of the model FLOPs: {r['dot_flops'] / r['model_flops']:.1%}\n")


if __name__ == "__main__":
    main()
