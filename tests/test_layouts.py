"""The trainer's mesh mode (`parallelism = 'mesh'`, jit over a data x fsdp x model mesh)
against its pmap mode, with the tiny ViT on digits.

- Plain data parallelism on the mesh trains like pmap: parameters equal to 1e-5 relative
  after 10 steps, on 4 CPU devices; on 2, the encoder as one scanned, rematerialised layer
  stack trains as the per-layer one does under pmap.
- FSDP x tensor parallelism (fsdp 2 x model 2) with 2-step gradient accumulation, stopped
  at step 5 and resumed, ends where 10 uninterrupted pmap steps without accumulation do.
- Its sharded checkpoint (written from 4 devices) restores onto meshes of 1, 2 and 8
  devices and onto the host (the pmap path's restore), and serves as `init_from`.

Run as a script (`python tests/test_layouts.py PLAN OUT` in a process with the devices the
plan needs), this file trains the plan's runs and writes their parameters.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

STEPS = 10
TINY = [
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.mlp_dim=32",
    "batch_size=32",
    "eval_batch_size=64",
    # 10 of 11 steps: the final evaluation never runs (it is not what is compared).
    f"num_training_steps={STEPS + 1}",
    "log_summary_steps=5",
    "log_eval_steps=1000",
    "checkpoint_steps=5",
    "lr_configs.warmup_steps=2",
    "ema.decay=0.9",
]
#: name -> (overrides, steps at which the run stops: one entry, or a stop and a resume).
RUNS = {
    "pmap": (["parallelism='pmap'"], [STEPS]),
    "mesh_data": (["parallelism='mesh'"], [STEPS]),
    "mesh_fsdp_model": (
        ["parallelism='mesh'", "mesh.fsdp=2", "mesh.model=2", "grad_accumulation_steps=2"],
        [5, STEPS],
    ),
    "mesh_fsdp_model_uninterrupted": (
        ["parallelism='mesh'", "mesh.fsdp=2", "mesh.model=2", "grad_accumulation_steps=2"],
        [STEPS],
    ),
    # The encoder blocks as one nn.scan (stacked parameters), matmul results kept by remat,
    # against the same 2-layer ViT per layer under pmap, started from the scanned model's
    # initial parameters (init_from converts them to per-layer blocks).
    "pmap_2_layers": (
        ["parallelism='pmap'", "model.num_layers=2", "init_from.checkpoint='{out}/scan_init.npz'"],
        [STEPS],
    ),
    "mesh_scan": (
        [
            "parallelism='mesh'",
            "model.num_layers=2",
            "model.scan_layers=True",
            "model.remat='dots'",
        ],
        [STEPS],
    ),
    # Across 2 processes x 2 devices: parameters sharded over all 4, across hosts.
    "mesh_two_hosts": (["parallelism='mesh'", "mesh.fsdp=4"], [STEPS]),
    # Mixup and cutmix drawn over the global batch, on the device, across the hosts.
    "mesh_two_hosts_mixup": (
        [
            "parallelism='mesh'",
            "mesh.fsdp=4",
            "mixup.mixup_alpha=0.5",
            "mixup.cutmix_alpha=1.0",
        ],
        [5],
    ),
}
PLANS = {
    2: ["pmap_2_layers", "mesh_scan"],
    4: ["pmap", "mesh_data", "mesh_fsdp_model", "mesh_fsdp_model_uninterrupted"],
    "two_hosts": ["mesh_two_hosts", "mesh_two_hosts_mixup"],
}


def flat_params(tree) -> dict:
    import jax

    return {
        "/".join(str(k.key) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def load_config(overrides):
    from scenic.common_lib import config_utils, runner
    from scenic_baselines.models import MODELS

    config = config_utils.load_config("vit_digits", "scenic_baselines.configs")
    return runner.resolve_config(config, MODELS, TINY + overrides)


def train_plan(plan, out: str) -> None:
    """Trains the plan's runs in `out/<name>` and saves each one's final parameters and
    parameter EMA (process 0)."""
    import jax

    from scenic.common_lib import runner
    from scenic.train_lib import trainer

    dataset = None
    if "mesh_scan" in PLANS[plan]:
        save_initial_params(RUNS["mesh_scan"][0], os.path.join(out, "scan_init.npz"))
    for name in PLANS[plan]:
        overrides, stops = RUNS[name]
        config, model_cls = load_config([o.format(out=out) for o in overrides])
        dataset = dataset or runner.build_dataset(config)
        for stop in stops:
            result = trainer.train(
                model_cls=model_cls,
                dataset=dataset,
                config=config,
                workdir=os.path.join(out, name),
                stop_after_step=stop,
            )
            assert result.step == stop, (name, result.step)
        if jax.process_index() == 0:
            arrays = flat_params(result.state["params"])
            arrays.update(
                {f"ema/{k}": v for k, v in flat_params(result.state["ema_params"]).items()}
            )
            np.savez(os.path.join(out, f"{name}.npz"), **arrays)


def save_initial_params(overrides, path: str) -> None:
    """The parameters a fresh run of `overrides` starts from, as an .npz."""
    import jax

    from scenic.common_lib import runner
    from scenic.train_lib import trainer

    config, model_cls = load_config(overrides)
    meta = runner.build_dataset(config).meta_data
    model, _ = trainer.build_model(model_cls, config, meta)
    tx, _ = trainer.make_optimizer(config, STEPS)
    state = trainer.initialize_state(model, config, jax.random.key(config.rng_seed), tx)
    np.savez(path, **flat_params(state.params))


def evaluate(workdir: str, overrides) -> dict:
    """`evaluate_checkpoint` of `workdir`'s last checkpoint, in the mode `overrides` set."""
    from scenic.common_lib import runner
    from scenic.train_lib import trainer

    config, model_cls = load_config(overrides)
    return trainer.evaluate_checkpoint(
        model_cls=model_cls, dataset=runner.build_dataset(config), config=config, workdir=workdir
    )


def restore_checks(out: str) -> dict:
    """The fsdp x model run's last checkpoint restored onto meshes of every size that
    divides the devices here (and 1), and read by `init_from`: max |difference|."""
    import jax

    from scenic.train_lib import checkpoints, layouts, partitioning, pretrained_init
    from scenic.train_lib.train_state import TrainState

    workdir = os.path.join(out, "mesh_fsdp_model")
    expected = {
        k: v
        for k, v in np.load(os.path.join(out, "mesh_fsdp_model.npz")).items()
        if not k.startswith("ema/")
    }
    checkpointer = checkpoints.Checkpointer(workdir)
    stored = dict(checkpointer._manager.item_metadata(STEPS))
    target = jax.tree.map(
        lambda m: np.zeros(m.shape, m.dtype), stored, is_leaf=lambda x: hasattr(x, "shape")
    )
    host_state = TrainState.from_dict({"model_state": {}, **target})
    differences = {}
    sizes = sorted({1, 2, jax.device_count()})
    for count in sizes:
        mesh = partitioning.make_mesh({"fsdp": count}, jax.devices()[:count])
        restored = checkpointer.restore(layouts.MeshLayout(mesh).restore_target(host_state))
        params = flat_params(restored["params"])
        shards = {len(x.sharding.device_set) for x in jax.tree.leaves(restored["params"])}
        differences[f"mesh_{count}"] = (_max_difference(expected, params), max(shards))
    host = checkpointer.restore(layouts.PMAP.restore_target(host_state))
    differences["host"] = (_max_difference(expected, flat_params(host["params"])), 1)
    checkpointer.close()
    loaded = {k.removeprefix("params/"): v for k, v in pretrained_init.load_params(workdir).items()}
    differences["init_from"] = (_max_difference(expected, loaded), 1)
    return differences


def _max_difference(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b), (sorted(a)[:3], sorted(b)[:3])
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def plan_env(devices: int, cache=None) -> dict:
    """A process with `devices` CPU devices; `cache`: a JAX compilation cache folder the
    plans share (the tiny ViT's initialisation, FLOP count and optimizer set-up compile
    alike in each)."""
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="2",
        XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={devices}",
    )
    if cache:
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(cache),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    return env


def run_plan(devices: int, out, *args, cache=None, timeout=600):
    """Runs this file's plan for `devices` in a process with that many CPU devices."""
    done = subprocess.run(
        [sys.executable, __file__, str(devices), str(out), *args],
        env=plan_env(devices, cache),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_two_hosts(out, *args, cache=None, timeout=600):
    """The 'two_hosts' plan in 2 processes x 2 CPU devices (jax.distributed, gloo)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    command = [sys.executable, __file__, "two_hosts", str(out), *args, "--address", address]
    workers = [
        subprocess.Popen(
            [*command, "--process", str(i)],
            env=plan_env(2, cache),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [worker.communicate(timeout=timeout)[0] for worker in workers]
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-3000:]
    return [json.loads(output.strip().splitlines()[-1]) for output in outputs]


@pytest.fixture(scope="session")
def cache(session_dir):
    folder = session_dir / "mesh-jax-cache"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def four_devices(share_once, cache):
    """The 4-device plan, run once for every test (and xdist worker) that reads it."""
    return share_once(
        "mesh-four-devices",
        lambda out: run_plan(4, out, "--restore", "--evaluate", str(out / "pmap"), cache=cache),
    )


def relative_difference(a: dict, b: dict) -> dict:
    """Per parameter: max |a - b| over max |a|. The attention key bias is left out: its
    gradient is zero in exact arithmetic (softmax ignores a per-query constant), so it holds
    rounding noise only."""
    return {
        k: float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-12))
        for k in a
        if not k.endswith("key/bias")
    }


def assert_same_training(out, reference: str, other: str, tolerance=1e-5):
    a, b = np.load(out / f"{reference}.npz"), np.load(out / f"{other}.npz")
    assert sorted(a.files) == sorted(b.files)
    differences = relative_difference(dict(a), dict(b))
    worst = max(differences, key=differences.get)
    assert differences[worst] < tolerance, (worst, differences[worst])


def test_scanned_remat_layers_on_a_two_device_mesh_train_as_per_layer_pmap(tmp_path, cache):
    """Layer scan + remat on the mesh trains the 2-layer ViT as pmap does per layer (plain
    data parallelism on the mesh against pmap: the four-device plan)."""
    run_plan(2, tmp_path, cache=cache)
    from scenic.model_lib import vit_encoder

    per_layer = dict(np.load(tmp_path / "pmap_2_layers.npz"))
    scanned = dict(np.load(tmp_path / "mesh_scan.npz"))
    assert "Transformer/encoderblock/MlpBlock_3/Dense_0/kernel" in scanned
    unstacked = vit_encoder.stack_layers(scanned, per_layer)
    np.savez(tmp_path / "mesh_scan_unstacked.npz", **unstacked)
    # Remat and the scanned program order the float32 sums differently (2.2e-5 seen on the
    # position embedding, through Adam's normalisation; different initial weights: ~2).
    assert_same_training(tmp_path, "pmap_2_layers", "mesh_scan_unstacked", tolerance=1e-4)


def test_mesh_data_parallelism_equals_pmap_on_four_devices(four_devices):
    out, _ = four_devices
    assert_same_training(out, "pmap", "mesh_data")


def test_fsdp_and_tensor_parallel_with_accumulation_resumed_equal_pmap(four_devices):
    out, _ = four_devices
    # Accumulation sums the gradient in another order, and Adam's normalisation turns
    # rounding into relative differences of ~1e-5 on the smallest updates (1.4e-5 seen on
    # the attention output bias).
    assert_same_training(out, "pmap", "mesh_fsdp_model", tolerance=1e-4)
    # Resumed at step 5 on the same mesh: bit for bit the uninterrupted run.
    resumed, uninterrupted = (
        np.load(out / f"{name}.npz")
        for name in ("mesh_fsdp_model", "mesh_fsdp_model_uninterrupted")
    )
    for name in uninterrupted.files:
        np.testing.assert_array_equal(resumed[name], uninterrupted[name], err_msg=name)
    # Negative control: the step-5 parameters of the same run differ measurably.
    from scenic.train_lib import pretrained_init

    step5 = pretrained_init.load_params(out / "mesh_fsdp_model" / "checkpoints" / "5")
    step5 = {k.removeprefix("params/"): v for k, v in step5.items()}
    final = {k: v for k, v in np.load(out / "pmap.npz").items() if not k.startswith("ema/")}
    assert max(relative_difference(final, step5).values()) > 1e-3


def test_sharded_checkpoint_restores_onto_other_meshes_the_host_and_init_from(four_devices, cache):
    out, results = four_devices
    differences = {k: v for k, v in results.items() if not k.startswith("eval_")}
    eight = run_plan(8, out, "--restore-only", cache=cache)
    differences["mesh_8"] = eight["mesh_8"]
    assert set(differences) == {"mesh_1", "mesh_2", "mesh_4", "mesh_8", "host", "init_from"}
    for name, (difference, most_devices) in differences.items():
        assert difference == 0.0, name
        if name.startswith("mesh_"):
            assert most_devices == int(name.split("_")[1]), name  # sharded over that mesh


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("plan")
    parser.add_argument("out")
    parser.add_argument("--restore", action="store_true", help="then the restore checks")
    parser.add_argument("--restore-only", action="store_true")
    parser.add_argument("--evaluate", help="then evaluate this workdir in pmap and mesh mode")
    parser.add_argument("--process", type=int, help="with --address: this process's index")
    parser.add_argument("--address")
    args = parser.parse_args()
    import jax

    if args.address:
        from scenic.train_lib import distributed

        distributed.initialize(args.address, 2, args.process)
    if args.plan.isdigit():
        assert jax.device_count() == int(args.plan), jax.devices()
    result = {}
    if not args.restore_only:
        train_plan(int(args.plan) if args.plan.isdigit() else args.plan, args.out)
    if args.restore or args.restore_only:
        result.update(restore_checks(args.out))
    if args.evaluate:
        modes = {"mesh": ["parallelism='mesh'", "mesh.fsdp=2", "mesh.model=2"]}
        if not args.address:  # pmap runs one process's devices; the reference is 1 process
            modes["pmap"] = ["parallelism='pmap'"]
        for mode, overrides in modes.items():
            metrics = evaluate(args.evaluate, overrides)
            result[f"eval_{mode}"] = {k: float(v) for k, v in metrics.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()


def test_two_hosts_shard_parameters_across_processes_and_evaluate_alike(
    four_devices, cache, tmp_path
):
    """2 processes x 2 devices, parameters FSDP-sharded over all 4 (across the processes),
    per-host data: the same training as pmap on 4 devices in one process; and the pmap
    run's checkpoint evaluated in mesh mode over the two processes gives the metrics the
    single process gives in either mode."""
    out, results = four_devices
    shutil.copytree(out / "pmap", tmp_path / "pmap_copy")
    first, second = run_two_hosts(tmp_path, "--evaluate", str(tmp_path / "pmap_copy"), cache=cache)
    shutil.copy(out / "pmap.npz", tmp_path / "pmap.npz")
    assert_same_training(tmp_path, "pmap", "mesh_two_hosts")
    # With mixup / cutmix the same 5 steps end elsewhere (finite): mixing took effect.
    from scenic.train_lib import pretrained_init

    mixed = dict(np.load(tmp_path / "mesh_two_hosts_mixup.npz"))
    plain = pretrained_init.load_params(tmp_path / "mesh_two_hosts" / "checkpoints" / "5")
    plain = {k.removeprefix("params/"): v for k, v in plain.items()}
    assert all(np.isfinite(v).all() for v in mixed.values())
    assert max(relative_difference(plain, mixed).values()) > 1e-3
    single_process = results["eval_pmap"]
    assert results["eval_mesh"] == pytest.approx(single_process, rel=1e-6)
    for result in (first, second):
        assert result["eval_mesh"] == pytest.approx(single_process, rel=1e-6)
    assert single_process["accuracy"] > 0.1  # a trained model's, not a constant's
