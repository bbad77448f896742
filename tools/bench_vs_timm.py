"""Our ViT training step against timm's ViT of the same shape, in one process, interleaved.

    hatch run bench-vs-timm [--models reference vit_s16] [--steps 20] [--rounds 3]
        [--warmup 1] [--num-classes 10]
    (or: hatch run python tools/bench_vs_timm.py ..., once timm is in the environment)

Prints a header (CPU, JAX / torch / timm versions, allocator, load average, the 2048^2
float32 matmul peak of JAX and of torch), one line per model (shape, parameters of both
models, model GFLOP per training example) and, for every round, the images/s and MFU of:
  trainer  `scenic.train_lib.trainer.train` (the code `scenic-baselines train` runs) on
           bench_trainer's in-memory synthetic data set, through the Dataset contract and
           `prefetch_to_device`; its own examples/s, which leaves out only the first
           (compiling) step;
  bare     the core's `steps.train_step` under one `jax.jit` (axis_name=None, the state
           donated) on one fixed batch already on the device: no input, no loop;
  timm     `timm.models.vision_transformer.VisionTransformer` of the same shape (class token
           pooled by `global_pool='token'`, tanh GELU as ours, LayerNorm eps 1e-6, qkv bias),
           eager PyTorch on `os.cpu_count()` threads, AdamW (weight decay on >= 2-D
           parameters, as ours), cross-entropy, zero_grad / backward / step on one random batch;
then trainer/timm, trainer/bare, and the loop overhead (trainer step time over the bare step
time, minus one: what the trainer adds around the step), and the medians over rounds. The
contenders alternate within each round (trainer, bare, timm, then the next round) so that
machine noise falls on all three. MFU: model FLOPs (XLA's cost analysis of our forward +
backward, the same shape for both) over the JAX matmul peak. Both models use bench_trainer's
shapes (`reference`: 32x32x3, patch 4, width 192, 6 layers, 3 heads, MLP 768, batch 128;
`vit_s16`: 224x224x3, patch 16, width 384, 12 layers, 6 heads, MLP 1536, batch 32) and its
10 classes unless --num-classes. `--warmup` untimed steps precede the timed `--steps` of the
bare step (the first compiles) and of timm; the default 1 matches the trainer's figure.

torchvision: timm imports it at import time, and the torchvision reachable here is a CUDA
build that does not import beside CPU torch. So this process (only) puts a stub `torchvision`
in `sys.modules` before importing timm, holding just what that import touches:
`torchvision.ops.misc.FrozenBatchNorm2d`, `torchvision.datasets.{CIFAR10, CIFAR100, MNIST,
KMNIST, FashionMNIST, ImageFolder}` and `torchvision.transforms.ToTensor` (each a class that
raises if instantiated) and `torchvision.transforms.functional.InterpolationMode` (an enum of
the six PIL modes, which timm maps to names at import); timm's optional imports (feature
extraction, more data sets) then fail with ImportError, which timm handles. Training a ViT
touches none of them. timm itself is installed without its dependencies (`pip install
--no-deps timm`, as the `bench-vs-timm` script does): a plain `pip install timm` would swap
the CPU torch for a CUDA one and add torchvision.
"""

from __future__ import annotations

import argparse
import enum
import functools
import os
import pathlib
import statistics
import sys
import tempfile
import time
import types

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_resnet  # tools/ is not a package: found through sys.path
import bench_trainer

MODELS = ("reference", "vit_s16")
STUB_CLASSES = {
    "torchvision.ops.misc": ("FrozenBatchNorm2d",),
    "torchvision.datasets": tuple("CIFAR10 CIFAR100 MNIST KMNIST FashionMNIST ImageFolder".split()),
    "torchvision.transforms": ("ToTensor",),
    "torchvision.transforms.functional": (),
}
INTERPOLATION_MODES = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


def install_torchvision_stub() -> None:
    """A stand-in `torchvision` in this process's `sys.modules` (see the module docstring)."""
    if "torchvision" in sys.modules:
        return

    def unavailable(name: str) -> type:
        def __init__(self, *args, **kwargs):
            raise RuntimeError(f"{name} is a stub in tools/bench_vs_timm.py (no torchvision)")

        return type(name.rsplit(".", 1)[1], (), {"__init__": __init__})

    modules = {"torchvision": (), "torchvision.ops": (), **STUB_CLASSES}
    for module_name, class_names in modules.items():
        module = types.ModuleType(module_name)
        module.__path__ = []  # a package: imports of other submodules fail with ImportError
        for class_name in class_names:
            setattr(module, class_name, unavailable(f"{module_name}.{class_name}"))
        sys.modules[module_name] = module
        if module_name == "torchvision.transforms.functional":  # timm maps its members at import
            modes = {mode.upper(): mode for mode in INTERPOLATION_MODES}
            module.InterpolationMode = enum.Enum("InterpolationMode", modes)
        parent, _, child = module_name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)


def shape_line(name: str, num_classes: int) -> str:
    s = bench_trainer.VIT_SHAPES[name]
    return (
        f"{'x'.join(map(str, s['image']))}, patch {s['patch']}, width {s['width']}, "
        f"{s['layers']} layers, {s['heads']} heads, MLP {s['mlp']}, batch {s['batch']}, "
        f"{num_classes} classes"
    )


def trainer_rate(name: str, steps: int, num_classes: int) -> float:
    """Images/s of `trainer.train` over `steps` steps after its first (compiling) one."""
    from scenic.train_lib import trainer

    total = steps + 1
    # One step more in the config than run: stopping early skips the final evaluation.
    model_name, config = bench_trainer.config_for(name, total + 1, None)
    shape = bench_trainer.input_shape_of(name)
    dataset = bench_trainer.synthetic_dataset(shape, config.batch_size, num_classes)
    model_cls = bench_trainer.model_registry(model_name)[model_name]
    with tempfile.TemporaryDirectory() as workdir:
        result = trainer.train(
            model_cls=model_cls,
            dataset=dataset,
            config=config,
            workdir=workdir,
            stop_after_step=total,
        )
    return result.metrics["train_examples_per_sec"]


def bare_step(name: str, num_classes: int):
    """(jitted train step, state, batch on the device, model) of bench `name`."""
    import jax

    from scenic.train_lib import steps as train_steps
    from scenic.train_lib import trainer

    model_name, config = bench_trainer.config_for(name, 1000, None)
    shape = bench_trainer.input_shape_of(name)
    dataset = bench_trainer.synthetic_dataset(shape, config.batch_size, num_classes)
    model_cls = bench_trainer.model_registry(model_name)[model_name]
    model, dtype = trainer.build_model(model_cls, config, dataset.meta_data)
    tx, lr_fn = trainer.make_optimizer(config, 1000)
    state = trainer.initialize_state(model, config, jax.random.key(config.rng_seed), tx)
    step = jax.jit(
        functools.partial(
            train_steps.train_step, model=model, tx=tx, lr_fn=lr_fn, dtype=dtype, axis_name=None
        ),
        donate_argnums=(0,),
    )
    batch = jax.device_put(next(dataset.train_batches(0)))
    return step, state, batch, model


def bare_rate(name: str, steps: int, warmup: int, num_classes: int) -> float:
    """Images/s of the bare jitted step after `warmup` untimed steps (the first compiles)."""
    import jax

    step, state, batch, _ = bare_step(name, num_classes)
    for _ in range(warmup):
        state, _, _ = step(state, batch)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, _, _ = step(state, batch)
    jax.block_until_ready(state)
    return steps * len(batch["label"]) / (time.perf_counter() - start)


def timm_model(name: str, num_classes: int):
    from timm.models.vision_transformer import VisionTransformer

    s = bench_trainer.VIT_SHAPES[name]
    height, width, channels = s["image"]
    return VisionTransformer(
        img_size=(height, width),
        patch_size=s["patch"],
        in_chans=channels,
        num_classes=num_classes,
        global_pool="token",
        class_token=True,
        embed_dim=s["width"],
        depth=s["layers"],
        num_heads=s["heads"],
        mlp_ratio=s["mlp"] / s["width"],
        qkv_bias=True,
        act_layer="gelu_tanh",  # ours: flax's default (tanh) GELU
    )


def timm_rate(name: str, steps: int, warmup: int, num_classes: int) -> float:
    """Images/s of eager timm training after `warmup` untimed steps."""
    import torch
    import torch.nn.functional as F

    s = bench_trainer.VIT_SHAPES[name]
    height, width, channels = s["image"]
    model = timm_model(name, num_classes).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]  # ours: optimizers.decay_mask
    rest = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-4}, {"params": rest, "weight_decay": 0.0}], lr=1e-4
    )
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((s["batch"], channels, height, width), generator=generator) * 2 - 1
    labels = torch.randint(0, num_classes, (s["batch"],), generator=generator)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * s["batch"] / (time.perf_counter() - start)


def torch_peak(size: int = 2048, repeats: int = 10) -> float:
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def main() -> None:
    from scenic.common_lib import allocator

    allocator.reexec_with_huge_pages()  # as bench_trainer and the scenic-* commands do
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each contender")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all three, interleaved")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps (bare, timm), >= 1")
    parser.add_argument("--num-classes", type=int, default=bench_trainer.NUM_CLASSES)
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 1 or args.rounds < 1:
        parser.error("--steps, --warmup and --rounds must be >= 1")
    install_torchvision_stub()
    import jax
    import torch

    try:
        import timm
    except ModuleNotFoundError:
        sys.exit("no timm: pip install --no-deps timm==1.0.29 (see tools/bench_vs_timm.py)")

    torch.set_num_threads(os.cpu_count())
    bench_trainer.setup()
    peak = bench_trainer.peak_flops()
    print(f"machine: {bench_resnet.machine()}; load average {os.getloadavg()[0]:.2f}")
    print(
        f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), timm {timm.__version__}, torchvision stubbed"
    )
    print(f"allocator: {allocator.describe()}")
    print(f"{args.steps} timed steps per contender, warmup {args.warmup}, {args.rounds} round(s)")
    print(
        f"peak (2048^2 float32 matmul): JAX {peak / 1e9:.0f} GFLOP/s (MFU's reference), "
        f"torch {torch_peak() / 1e9:.0f} GFLOP/s"
    )
    for name in args.models:
        _, state, _, model = bare_step(name, args.num_classes)
        batch = bench_trainer.VIT_SHAPES[name]["batch"]
        flops = bench_trainer.train_step_costs(model, batch)[0] / batch
        ours = sum(x.size for x in jax.tree.leaves(state.params))
        theirs = sum(p.numel() for p in timm_model(name, args.num_classes).parameters())
        print(f"\n{name}: {shape_line(name, args.num_classes)}")
        print(
            f"  parameters: ours {ours:,}, timm {theirs:,}; "
            f"{flops / 1e9:.3f} GFLOP per training example (forward + backward)"
        )
        print(
            f"{'round':>6s} {'trainer':>8s} {'MFU':>6s} {'bare':>8s} {'MFU':>6s} {'timm':>8s} "
            f"{'MFU':>6s}  {'trainer/timm':>12s} {'trainer/bare':>12s} {'loop overhead':>13s}"
        )
        rows = []
        for index in range(args.rounds):
            rates = (
                trainer_rate(name, args.steps, args.num_classes),
                bare_rate(name, args.steps, args.warmup, args.num_classes),
                timm_rate(name, args.steps, args.warmup, args.num_classes),
            )
            rows.append((*rates, rates[0] / rates[2], rates[0] / rates[1], rates[1] / rates[0] - 1))
            print(format_row(str(index + 1), rows[-1], flops, peak), flush=True)
        medians = [statistics.median(column) for column in zip(*rows, strict=True)]
        print(format_row("median", medians, flops, peak))
    print(f"\nload average after the runs: {os.getloadavg()[0]:.2f}")


def format_row(label: str, row, flops: float, peak: float) -> str:
    """images/s and MFU of the three contenders, then the ratios and the loop overhead."""
    trainer, bare, timm, vs_timm, vs_bare, overhead = row
    rates = " ".join(f"{rate:8.2f} {rate * flops / peak:6.1%}" for rate in (trainer, bare, timm))
    return f"{label:>6s} {rates}  {vs_timm:12.3f} {vs_bare:12.3f} {overhead:+13.1%}"


if __name__ == "__main__":
    main()
