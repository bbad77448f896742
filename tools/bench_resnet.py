"""How to compute ResNet's convolutions: XLA's convolution, im2col + matmul, or per-layer.

    hatch run python tools/bench_resnet.py [--cases 50:224:8 50:64:32 50:32:32]
        [--impls xla auto im2col] [--repeats 5] [--layers]

For each case DEPTH:SIZE:BATCH it times one jitted forward + backward pass (gradient of the
mean softmax cross-entropy with respect to the parameters, BatchNorm in training mode,
batch statistics updated) of `scenic_baselines.resnet.ResNet` at 1000 classes on random
SIZE x SIZE x 3 images, once per `conv_impl`:

  xla     every convolution by `lax.conv_general_dilated` (flax.linen.Conv's formulation)
          and the max-pool by `flax.linen.max_pool`;
  im2col  every convolution as a matrix multiply of shifted slices, the max-pool as the
          maximum of nine shifted slices;
  auto    the model's default: 1x1 convolutions as matmuls, kxk ones by XLA unless the
          output map is smaller than the kernel (then im2col), max-pool of slices.

It compiles every variant of a case, then times `--repeats` rounds that run each variant
once in turn (so load from other processes on a shared machine falls on all alike), and
prints the best round in ms, images/s, the FLOPs of
the pass from XLA's cost analysis (the `xla` variant's: the model's FLOPs), GFLOP/s and
their share of a 2048x2048 float32 matmul timed in the same process. `--layers` also times
each distinct convolution of the cases' networks alone (forward + backward), by XLA and as
a matrix multiply, with how often it occurs, and sums them per policy: the measurements
the `auto` rule comes from. The header names the machine (CPU model
from /proc/cpuinfo, or the accelerator), JAX's version, the allocator and the load average
at the start (and at the end, the last line). Like the other
benchmarks, it first re-executes itself with huge-page malloc (scenic.common_lib.allocator).
"""

from __future__ import annotations

import argparse
import collections
import os
import platform

from bench_step_breakdown import best_time  # tools/ is not a package: found through sys.path

DEFAULT_CASES = ("50:224:8", "50:64:32", "50:32:32")
IMPLS = ("xla", "auto", "im2col")


def machine() -> str:
    """'AMD EPYC (family 26, model 2), 2 CPUs, avx512f' from /proc/cpuinfo where it exists."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    flags = fields.get("flags", "").split()
    vector = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "no avx2"
    return (
        f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')}, model "
        f"{fields.get('model', '?')}), {os.cpu_count()} CPUs, {vector}"
    )


def network_pass(depth: int, size: int, batch: int, impl: str):
    """(jitted forward + backward, its arguments) of a 1000-way ResNet-`depth`."""
    import jax
    import jax.numpy as jnp

    from scenic_baselines import resnet

    model = resnet.ResNet(num_classes=1000, num_layers=depth, conv_impl=impl)
    images = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
    labels = jnp.arange(batch) % 1000
    variables = jax.jit(model.init)(jax.random.key(1), images)

    def loss(params, batch_stats):
        logits, state = model.apply(
            {"params": params, "batch_stats": batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
        )
        log_probs = jax.nn.log_softmax(logits)
        return -jnp.mean(log_probs[jnp.arange(batch), labels]), state

    step = jax.jit(jax.grad(loss, has_aux=True))
    return step, (variables["params"], variables["batch_stats"])


def flops_of(fn, args) -> float | None:
    from scenic.common_lib import debug_utils

    return debug_utils.compiled_flops(fn, *args)


def conv_shapes(depth: int, size: int, batch: int) -> collections.Counter:
    """(input shape, kernel shape, stride) -> how many convolutions of the 1000-way
    ResNet-`depth` on SIZE x SIZE x 3 images have it (traced, nothing computed)."""
    import jax
    import jax.numpy as jnp

    from scenic_baselines import resnet

    model = resnet.ResNet(num_classes=1000, num_layers=depth)
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    counts: collections.Counter = collections.Counter()
    conv2d = resnet.conv2d

    def recording(x, kernel, stride=1, impl="auto"):
        counts[(tuple(x.shape), tuple(kernel.shape), stride)] += 1
        return conv2d(x, kernel, stride, impl)

    resnet.conv2d = recording
    try:
        jax.eval_shape(model.apply, variables, images)
    finally:
        resnet.conv2d = conv2d
    return counts


def layer_pass(x_shape, kernel_shape, stride, impl):
    """(jitted forward + backward of one convolution, its arguments)."""
    import jax
    import jax.numpy as jnp

    from scenic_baselines import resnet

    x = jax.random.normal(jax.random.key(0), x_shape)
    kernel = jax.random.normal(jax.random.key(1), kernel_shape) * 0.05

    def loss(x, kernel):
        return jnp.sum(resnet.conv2d(x, kernel, stride, impl) ** 2)

    return jax.jit(jax.grad(loss, argnums=(0, 1))), (x, kernel)


def main() -> None:
    from scenic.common_lib import allocator

    allocator.reexec_with_huge_pages()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), help="DEPTH:SIZE:BATCH")
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--layers", action="store_true", help="also time each 3x3 conv alone")
    args = parser.parse_args()
    import jax

    from scenic.common_lib import debug_utils

    device = jax.devices()[0]
    where = machine() if jax.default_backend() == "cpu" else device.device_kind
    peak = debug_utils.peak_matmul_flops(size=2048, repeats=10)
    print(
        f"machine: {where}; device {device.device_kind} ({jax.default_backend()}), "
        f"jax {jax.__version__}, allocator {allocator.describe()}"
    )
    print(f"peak (2048^2 float32 matmul, same process): {peak / 1e9:.0f} GFLOP/s")
    print(f"load average at the start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    cases = [tuple(int(v) for v in case.split(":")) for case in args.cases]
    print("forward + backward of the whole network (BatchNorm in training mode):")
    print(
        f"{'ResNet':>6s} {'input':>7s} {'batch':>5s} {'impl':>7s} {'ms':>9s} {'img/s':>8s} "
        f"{'GFLOP':>8s} {'GFLOP/s':>8s} {'of peak':>8s}"
    )
    for depth, size, batch in cases:
        passes = {impl: network_pass(depth, size, batch, impl) for impl in args.impls}
        model_flops = flops_of(*passes["xla" if "xla" in passes else args.impls[0]])
        times = interleaved_best(passes, args.repeats)
        for impl, seconds in times.items():
            rate = model_flops / seconds if model_flops else float("nan")
            print(
                f"{depth:>6d} {size:>3d}x{size:<3d} {batch:>5d} {impl:>7s} "
                f"{seconds * 1e3:>9.1f} {batch / seconds:>8.1f} "
                f"{(model_flops or float('nan')) / 1e9:>8.2f} {rate / 1e9:>8.1f} "
                f"{rate / peak:>8.1%}",
                flush=True,
            )
    if args.layers:
        print_layers(cases, args.repeats)
    print(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def print_layers(cases, repeats: int) -> None:
    """Each distinct convolution of the cases' networks alone, forward + backward, by XLA
    and as a matrix multiply (im2col; a plain matmul of the strided input for 1x1), and the
    sum over each network's convolutions under each policy."""
    from scenic_baselines import resnet

    print("\neach convolution alone, forward + backward (ms):")
    print(
        f"{'input':>18s} {'kernel':>16s} {'stride':>6s} {'count':>5s} {'xla':>8s} "
        f"{'matmul':>8s} {'auto':>6s}"
    )
    for case in cases:
        totals = dict.fromkeys(("xla", "matmul", "auto"), 0.0)
        for (x_shape, kernel_shape, stride), count in conv_shapes(*case).items():
            passes = {
                impl: layer_pass(x_shape, kernel_shape, stride, impl) for impl in ("xla", "im2col")
            }
            times = interleaved_best(passes, repeats)
            auto = resnet.conv_formulation(x_shape[1:3], kernel_shape[:2], stride)
            auto = "xla" if auto == "xla" else "im2col"
            totals["xla"] += count * times["xla"]
            totals["matmul"] += count * times["im2col"]
            totals["auto"] += count * times[auto]
            print(
                f"{'x'.join(map(str, x_shape)):>18s} {'x'.join(map(str, kernel_shape)):>16s} "
                f"{stride:>6d} {count:>5d} {times['xla'] * 1e3:>8.2f} "
                f"{times['im2col'] * 1e3:>8.2f} {'matmul' if auto == 'im2col' else 'xla':>6s}",
                flush=True,
            )
        depth, size, batch = case
        print(
            f"  ResNet-{depth} {size}x{size} batch {batch}, sum over its convolutions: "
            + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in totals.items())
        )


def interleaved_best(passes: dict, rounds: int) -> dict[str, float]:
    """Best time of each (fn, args) over `rounds` rounds that run one call of each in turn
    (after one compiling call each), so that load from other processes on a shared
    machine falls on every variant alike."""
    import jax

    for fn, fn_args in passes.values():
        jax.block_until_ready(fn(*fn_args))
    best = dict.fromkeys(passes, float("inf"))
    for _ in range(rounds):
        for name, (fn, fn_args) in passes.items():
            best[name] = min(best[name], best_time(fn, *fn_args, repeats=1))
    return best


if __name__ == "__main__":
    main()
