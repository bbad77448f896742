"""Per-device memory of a ViT training step under the mesh mode's layouts, from XLA's
compiled memory analysis (nothing is run: the step is lowered and compiled for simulated
CPU devices).

For ViT-B/16, L/16 and H/14 at 224 px with AdamW, it prints per device: the train state's
bytes under the layout (parameters, optimizer state), and the compiled step's arguments,
outputs, temporaries and their sum (arguments + outputs - donated aliases + temporaries),
each with its ratio to the replicated layout (plain data parallelism over every device).

    python tools/bench_sharding.py   # 8 devices: replicated, fsdp8, fsdp4 x model2
    python tools/bench_sharding.py --models L/16 --batch 8 --remat full

Layouts are mesh sizes over `--devices` simulated CPU devices; the global batch is split
over data x fsdp. The figures are XLA:CPU's plan, a proxy for an accelerator's (XLA:GPU
schedules and fuses differently, and XLA:CPU was seen to keep activations that remat
should free).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

MODELS = {  # name -> (patch, width, layers, heads, mlp)
    "B/16": (16, 768, 12, 12, 3072),
    "L/16": (16, 1024, 24, 16, 4096),
    "H/14": (14, 1280, 32, 16, 5120),
}
LAYOUTS = {
    "replicated": {"data": -1},
    "fsdp8": {"data": 1, "fsdp": 8},
    "fsdp4_model2": {"data": 1, "fsdp": 4, "model": 2},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="global batch (default 8)")
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--remat", default="full", choices=("none", "full", "dots"))
    parser.add_argument("--no-scan", action="store_true", help="per-layer blocks, no nn.scan")
    parser.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16"))
    return parser.parse_args(argv)


def config_for(name: str, args):
    import ml_collections

    from scenic.common_lib import config_utils
    from scenic.train_lib import trainer_config

    patch, width, layers, heads, mlp = MODELS[name]
    config = ml_collections.ConfigDict(
        {
            "model_name": "vit_classification",
            "dataset_name": "synthetic",
            "model": {
                "patch_size": (patch, patch),
                "hidden_size": width,
                "num_layers": layers,
                "num_heads": heads,
                "mlp_dim": mlp,
                "classifier": "token",
                "remat": args.remat,
                "scan_layers": not args.no_scan,
            },
            "batch_size": args.batch,
            "num_training_steps": 1000,
            "optimizer": {"name": "adamw", "weight_decay": 1e-4},
            "compute_dtype": args.compute_dtype,
            "parallelism": "mesh",
        }
    )
    schema = trainer_config.default_config()
    config_utils.check_schema(config, schema, free_sections=trainer_config.FREE_SECTIONS)
    return config_utils.with_defaults(config, schema)


def step_memory(name: str, layout_name: str, args) -> dict:
    """Compiles one train step of model `name` under layout `layout_name`; returns bytes."""
    import jax
    import numpy as np

    from scenic.train_lib import layouts, partitioning, steps, trainer
    from scenic_baselines.models import MODELS as REGISTRY

    config = config_for(name, args)
    meta = {
        "num_classes": 1000,
        "input_shape": (-1, args.image, args.image, 3),
        "input_dtype": np.float32,
        "num_train_examples": 10**6,
    }
    model, dtype = trainer.build_model(REGISTRY["vit_classification"], config, meta)
    tx, lr_fn = trainer.make_optimizer(config, 1000)
    state = jax.eval_shape(
        lambda: trainer.initialize_state(model, config, jax.random.key(0), tx)
    )
    layout = layouts.MeshLayout(partitioning.make_mesh(LAYOUTS[layout_name]))
    shardings = layout.state_shardings(state)
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings
    )
    batch_sharding = layout.batch_sharding
    batch = {
        "inputs": jax.ShapeDtypeStruct(
            (args.batch, args.image, args.image, 3), np.float32, sharding=batch_sharding
        ),
        "label": jax.ShapeDtypeStruct((args.batch,), np.int32, sharding=batch_sharding),
    }
    step = layout.train_step(
        functools.partial(steps.train_step, model=model, tx=tx, lr_fn=lr_fn, dtype=dtype),
        shardings,
    )
    start = time.perf_counter()
    compiled = step.lower(abstract_state, batch).compile()
    compile_seconds = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    state_bytes = partitioning.per_device_bytes(shardings.to_dict(), state.to_dict())
    arguments = analysis.argument_size_in_bytes
    outputs = analysis.output_size_in_bytes
    aliased = analysis.alias_size_in_bytes
    temporaries = analysis.temp_size_in_bytes
    return {
        "state": state_bytes,
        "arguments": arguments,
        "outputs": outputs,
        "temporaries": temporaries,
        "total": arguments + outputs - aliased + temporaries,
        "mesh": dict(layout.mesh.shape),
        "compile_s": compile_seconds,
        "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    from bench_resnet import machine  # tools/ is this script's folder

    print(
        f"# {args.devices} simulated {jax.devices()[0].platform} devices on "
        f"{machine()}, jax {jax.__version__}; global batch "
        f"{args.batch} at {args.image} px, AdamW, remat={args.remat}, "
        f"scan={'off' if args.no_scan else 'on'}, compute {args.compute_dtype}"
    )
    gib = 2**30
    columns = ("state", "arguments", "outputs", "temporaries", "total")
    print(
        f"{'model':6} {'layout':14} {'mesh (d,f,m)':13} "
        + " ".join(f"{c + ' GiB':>15}" for c in columns)
        + "  total/replicated  state/replicated  compile s"
    )
    for name in args.models:
        baseline = None
        for layout_name in args.layouts:
            figures = step_memory(name, layout_name, args)
            if layout_name == "replicated":
                baseline = figures
            mesh = ",".join(str(v) for v in figures["mesh"].values())
            ratios = "         -                -"
            if baseline is not None:
                ratios = (
                    f"  {figures['total'] / baseline['total']:16.3f}"
                    f"  {figures['state'] / baseline['state']:16.3f}"
                )
            print(
                f"{name:6} {layout_name:14} {mesh:13} "
                + " ".join(f"{figures[c] / gib:15.3f}" for c in columns)
                + f"{ratios}  {figures['compile_s']:9.1f}",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
