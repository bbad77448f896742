"""Training throughput and MFU through the core trainer, input pipeline included.

    hatch run python tools/bench_trainer.py [--models digits reference vit_ti16 vit_s16]
        [--steps 30] [--batch N] [--devices N] [--compute-dtype float32|bfloat16]
        [--remat] [--attention fused|unfused] [--parallelism pmap mesh] [--rounds N]

For each model it runs `trainer.train` (the code `scenic-baselines train` and
`scenic-vivit train` run) on an in-memory synthetic data set served through the standard
Dataset contract and `prefetch_to_device`, and prints examples/s (images or clips; after
compilation), the model FLOPs per training example from XLA's cost analysis of forward +
backward, the achieved FLOP/s, the peak FLOP/s of a 2048x2048 matmul in the compute dtype
timed in the same process, and MFU = achieved / peak (model FLOPs: a rematerialised run is
credited with the FLOPs of the plain model, not its recomputation), and the temporary
memory XLA plans for one forward + backward pass (its memory analysis; what remat and
bfloat16 shrink). JAX, flax, optax and NumPy only in
the timed path (no TensorFlow; clu's TensorBoard writer is not created), so it runs
unchanged on a GPU machine. Like the `scenic-*` commands, it first re-executes itself with
glibc malloc on transparent huge pages where that helps (scenic.common_lib.allocator; set
GLIBC_TUNABLES yourself, even empty, to measure without); the allocator line says what this
run used, which changes CPU throughput a lot (see tools/README.md).

Models (batch from the table unless --batch; the default run is the four ViTs):
  digits     ViT 16x16x1, patch 4, width 64, 4 layers, 4 heads, MLP 128, batch 128 (the demo)
  reference  ViT 32x32x3, patch 4, width 192, 6 layers, 3 heads, MLP 768, batch 128
  vit_ti16   ViT 224x224x3, patch 16, width 192, 12 layers, 3 heads, MLP 768, batch 32
  vit_s16    ViT 224x224x3, patch 16, width 384, 12 layers, 6 heads, MLP 1536, batch 32
  vivit_moving_digits  the model and optimizer of scenic_vivit's vivit_moving_digits config,
             8x16x16x1 clips, 40 classes, batch 128
  vivit_b16x2_fe       ViViT-B/16x2 factorised encoder (model and optimizer of
             vivit_b16x2_fe_k400), 32x224x224x3 clips, 400 classes, batch 2
  tokenlearner_moving_digits  the model and optimizer of scenic_tokenlearner's config of that
             name (the same clips as vivit_moving_digits), batch 128
  tokenlearner_digits  scenic_tokenlearner's image demo model (16x16x1, 10 classes), batch 128
ViTs use AdamW; every model a constant learning rate.

Speed levers, one per flag so each is measured rather than assumed: --compute-dtype bfloat16
(activations and matmuls; parameters and optimizer state stay float32), --remat
(`model.remat`: every encoder block recomputed in the backward pass), --attention unfused
(replaces `jax.nn.dot_product_attention`, which the attention layer calls and which picks a
fused kernel where the platform has one, by the explicit einsum-softmax-einsum). The train
step always donates its state buffers.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import tempfile

VIT_SHAPES = {
    "digits": dict(image=(16, 16, 1), patch=4, width=64, layers=4, heads=4, mlp=128, batch=128),
    "reference": dict(image=(32, 32, 3), patch=4, width=192, layers=6, heads=3, mlp=768, batch=128),
    "vit_ti16": dict(
        image=(224, 224, 3), patch=16, width=192, layers=12, heads=3, mlp=768, batch=32
    ),
    "vit_s16": dict(
        image=(224, 224, 3), patch=16, width=384, layers=12, heads=6, mlp=1536, batch=32
    ),
}
# name -> (a project's config module, input shape, classes, default batch)
PROJECT_BENCHES = {
    "vivit_moving_digits": ("scenic_vivit.configs.vivit_moving_digits", (8, 16, 16, 1), 40, 128),
    "vivit_b16x2_fe": ("scenic_vivit.configs.vivit_b16x2_fe_k400", (32, 224, 224, 3), 400, 2),
    "tokenlearner_moving_digits": (
        "scenic_tokenlearner.configs.tokenlearner_moving_digits", (8, 16, 16, 1), 40, 128
    ),
    "tokenlearner_digits": (
        "scenic_tokenlearner.configs.tokenlearner_digits", (16, 16, 1), 10, 128
    ),
}
BENCHES = (*VIT_SHAPES, *PROJECT_BENCHES)
DEFAULT_BENCHES = tuple(VIT_SHAPES)
NUM_CLASSES = 10


def input_shape_of(name: str) -> tuple[int, ...]:
    """One example's shape (image HWC or clip THWC) of bench `name`."""
    return VIT_SHAPES[name]["image"] if name in VIT_SHAPES else PROJECT_BENCHES[name][1]


def synthetic_dataset(shape, batch: int, num_classes: int = NUM_CLASSES, seed: int = 0):
    """A Dataset with a fixed pool of random examples cycled through, like a cached data set."""
    import numpy as np

    from scenic.dataset_lib import dataset_utils

    rng = np.random.default_rng(seed)
    pool = rng.uniform(-1, 1, size=(4 * batch, *shape)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=4 * batch).astype(np.int32)

    def train_batches(start_step: int = 0):
        for step in itertools.count(start_step):
            idx = (np.arange(batch) + step * batch) % len(pool)
            yield {"inputs": pool[idx], "label": labels[idx]}

    eval_arrays = {"inputs": pool[:batch], "label": labels[:batch]}

    def eval_batches():
        return dataset_utils.padded_eval_batches(eval_arrays, batch, 1)

    meta = {
        "num_classes": num_classes,
        "input_shape": (-1, *shape),
        "input_dtype": np.float32,
        "num_train_examples": len(pool),
        "num_eval_examples": batch,
    }
    return dataset_utils.Dataset(meta, train_batches, eval_batches, 1)


def vit_model_config(name: str) -> dict:
    s = VIT_SHAPES[name]
    return {
        "patch_size": (s["patch"], s["patch"]),
        "hidden_size": s["width"],
        "num_layers": s["layers"],
        "num_heads": s["heads"],
        "mlp_dim": s["mlp"],
        "classifier": "token",
        "dropout_rate": 0.0,
        "stochastic_depth": 0.0,
    }


def config_for(
    name: str,
    steps: int,
    batch: int | None,
    compute_dtype: str = "float32",
    remat: bool = False,
    parallelism: str = "pmap",
):
    """The full trainer config (defaults filled in, keys checked) of bench `name`."""
    import ml_collections

    from scenic.common_lib import config_utils
    from scenic.train_lib import trainer_config

    if name in VIT_SHAPES:
        model_name, model = "vit_classification", vit_model_config(name)
        optimizer = {"name": "adamw", "weight_decay": 1e-4}
        batch = batch or VIT_SHAPES[name]["batch"]
    else:
        import importlib

        module, _, _, default_batch = PROJECT_BENCHES[name]
        published = importlib.import_module(module).get_config()
        model_name, model = published.model_name, published.model.to_dict()
        optimizer = published.optimizer.to_dict()
        batch = batch or default_batch
    model["remat"] = remat
    config = ml_collections.ConfigDict(
        {
            "experiment_name": f"bench_{name}",
            "trainer_name": "trainer",
            "model_name": model_name,
            "dataset_name": "synthetic",
            "model": model,
            "batch_size": batch,
            "eval_batch_size": batch,
            "num_training_steps": steps,
            "optimizer": optimizer,
            "lr_configs": {"factors": "constant", "base_learning_rate": 1e-4},
            "log_summary_steps": steps,
            "log_eval_steps": 10**9,
            "checkpoint_steps": 10**9,
            "max_checkpoints_to_keep": 1,
            "compute_dtype": compute_dtype,
            "parallelism": parallelism,
        }
    )
    schema = trainer_config.default_config()
    config_utils.check_schema(config, schema, free_sections=trainer_config.FREE_SECTIONS)
    return model_name, config_utils.with_defaults(config, schema)


def model_registry(model_name: str) -> dict[str, type]:
    if model_name.startswith("vivit"):
        from scenic_vivit.models import MODELS
    elif model_name.startswith("tokenlearner"):
        from scenic_tokenlearner.models import MODELS
    else:
        from scenic_baselines.models import MODELS
    return MODELS


def peak_flops(dtype="float32", size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a 2048x2048 matmul on the default device (the core's MFU reference)."""
    import jax.numpy as jnp

    from scenic.common_lib import debug_utils

    return debug_utils.peak_matmul_flops(size=size, repeats=repeats, dtype=jnp.dtype(dtype))


def use_unfused_attention() -> None:
    """Every attention layer in this process takes the unfused path (--attention unfused):
    the layers' own einsum-softmax-einsum in place of `jax.nn.dot_product_attention`."""
    import jax

    from scenic.model_lib.layers import attention_layers

    def unfused(query, key, value, bias=None, mask=None, **unused):
        return attention_layers.einsum_attention(query, key, value, bias, mask)

    jax.nn.dot_product_attention = unfused


def training_loss(model):
    """`loss(params, inputs, label)` of a base model: the forward + backward the benchmarks
    analyse (eval-mode forward, float32 logits, the model's own loss)."""
    import jax.numpy as jnp

    def loss(params, inputs, label):
        logits = model.flax_model.apply({"params": params}, inputs, train=False)
        return model.loss_function(logits.astype(jnp.float32), {"label": label})

    return loss


def train_step_costs(model, batch_size: int, dtype=None) -> tuple[float | None, int | None]:
    """(FLOPs, temporary bytes) of one forward + backward pass of the loss over a batch of
    `dtype` inputs (the compute dtype), from XLA's cost and memory analyses (no optimizer;
    None where the backend gives none)."""
    import jax
    import jax.numpy as jnp

    from scenic.common_lib import debug_utils

    shape = model.dataset_meta_data["input_shape"][1:]
    x = jax.ShapeDtypeStruct((batch_size, *shape), dtype or jnp.float32)
    y = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    params = jax.eval_shape(
        lambda: model.flax_model.init(jax.random.key(0), jnp.zeros((1, *shape)), train=False)
    )["params"]
    return debug_utils.compiled_costs(jax.grad(training_loss(model)), params, x, y)


def setup() -> None:
    """What every measurement needs: quiet logs, no TensorFlow in the timed path."""
    from scenic.train_lib import summaries

    logging.basicConfig(level=logging.WARNING)
    summaries.USE_TENSORBOARD = False  # no TensorFlow import


def measure(
    name: str,
    *,
    steps: int,
    batch: int | None = None,
    compute_dtype: str = "float32",
    remat: bool = False,
    input_shape: tuple[int, ...] | None = None,
    dataset=None,
    parallelism: str = "pmap",
) -> dict:
    """Trains bench `name` for `steps` steps on synthetic data of `input_shape` (default: the
    bench's own), or on `dataset` (a built Dataset whose batches fit the model: a real input
    pipeline, see bench_pipelines.py --end-to-end); returns batch, examples/s, model FLOPs per
    training example (None if XLA gives no cost analysis) and the temporary bytes of a
    forward + backward pass. `parallelism`: the trainer's mode ('mesh': jit over a data-only
    mesh of every device). Call `setup()` first."""
    from scenic.train_lib import trainer

    if steps < 2:
        raise ValueError(f"steps must be >= 2 (the first step compiles), got {steps}.")
    shape = tuple(input_shape or input_shape_of(name))
    num_classes = PROJECT_BENCHES[name][2] if name in PROJECT_BENCHES else NUM_CLASSES
    # One step more than timed, stopped after `steps`: the trainer then checkpoints but skips
    # the final evaluation (and compiling its eval step), which a benchmark does not need.
    model_name, config = config_for(name, steps + 1, batch, compute_dtype, remat, parallelism)
    if dataset is None:
        dataset = synthetic_dataset(shape, config.batch_size, num_classes)
    model_cls = model_registry(model_name)[model_name]
    with tempfile.TemporaryDirectory() as workdir:
        final = trainer.train(
            model_cls=model_cls,
            dataset=dataset,
            config=config,
            workdir=workdir,
            stop_after_step=steps,
        ).metrics
    model, dtype = trainer.build_model(model_cls, config, dataset.meta_data)
    flops, temp_bytes = train_step_costs(model, config.batch_size, dtype)
    if remat:  # model FLOPs: without the recomputation (one more compile)
        plain_config = config.copy_and_resolve_references()
        plain_config.model.remat = False
        plain, _ = trainer.build_model(model_cls, plain_config, dataset.meta_data)
        flops, _ = train_step_costs(plain, config.batch_size, dtype)
    return {
        "batch": config.batch_size,
        "examples_per_sec": final["train_examples_per_sec"],
        "flops_per_example": None if flops is None else flops / config.batch_size,
        "temp_bytes": temp_bytes,
    }


def main() -> None:
    from scenic.common_lib import allocator

    allocator.reexec_with_huge_pages()
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_BENCHES), choices=BENCHES)
    parser.add_argument("--steps", type=int, default=30, help="training steps, >= 2")
    parser.add_argument("--batch", type=int, default=None, help="override the global batch")
    parser.add_argument(
        "--devices", type=int, default=None, help="CPU devices to simulate (default: what JAX sees)"
    )
    parser.add_argument(
        "--compute-dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="config.compute_dtype (parameters and optimizer state stay float32)",
    )
    parser.add_argument(
        "--remat", action="store_true", help="model.remat: recompute blocks in the backward pass"
    )
    parser.add_argument(
        "--parallelism",
        nargs="+",
        default=["pmap"],
        choices=("pmap", "mesh"),
        help="trainer modes to run side by side, alternating (ratio mesh/pmap per round)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every mode, interleaved")
    parser.add_argument(
        "--attention",
        default="fused",
        choices=("fused", "unfused"),
        help="jax.nn.dot_product_attention (fused where available) or einsum-softmax-einsum",
    )
    args = parser.parse_args()
    if args.devices:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.devices}"
        )
    import jax

    setup()
    if args.attention == "unfused":
        use_unfused_attention()
    peak = peak_flops(args.compute_dtype)
    device = jax.devices()[0]
    print(
        f"device: {device.device_kind} x{jax.device_count()} ({jax.default_backend()}), "
        f"jax {jax.__version__}, allocator {allocator.describe()}, "
        f"compute dtype {args.compute_dtype}, remat {args.remat}, attention {args.attention}"
    )
    print(f"peak (2048^2 {args.compute_dtype} matmul, same process): {peak / 1e9:.0f} GFLOP/s\n")
    print(
        f"{'model':20s} {'mode':>5s} {'batch':>5s} {'ex/s':>8s} {'unit':>6s} {'GFLOP/ex':>9s} "
        f"{'GFLOP/s':>8s} {'MFU':>6s} {'temp MiB':>9s}"
    )
    for name in args.models:
        for round_index in range(args.rounds):
            rates = {}
            for parallelism in args.parallelism:
                result = measure(
                    name,
                    steps=args.steps,
                    batch=args.batch,
                    compute_dtype=args.compute_dtype,
                    remat=args.remat,
                    parallelism=parallelism,
                )
                rate, per_example = result["examples_per_sec"], result["flops_per_example"]
                rates[parallelism] = rate
                achieved = rate * per_example if per_example else float("nan")
                unit = "clips" if len(input_shape_of(name)) == 4 else "images"
                gflop = f"{per_example / 1e9:9.3f}" if per_example else f"{'n/a':>9s}"
                temp = result["temp_bytes"]
                temp = f"{temp / 2**20:9.1f}" if temp is not None else f"{'n/a':>9s}"
                print(
                    f"{name:20s} {parallelism:>5s} {result['batch']:5d} {rate:8.2f} {unit:>6s} "
                    f"{gflop} {achieved / 1e9:8.1f} {achieved / peak:6.1%} {temp}",
                    flush=True,
                )
            if len(rates) == 2:
                ratio = rates["mesh"] / rates["pmap"]
                print(f"  round {round_index + 1}: mesh / pmap = {ratio:.3f}")
    # The peak drifts on a shared machine: timed again after the runs, so the spread shows.
    print(f"\npeak again after the runs: {peak_flops(args.compute_dtype) / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
