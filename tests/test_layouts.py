"""The trainer's mesh mode (`parallelism = 'mesh'`, jit over a data x fsdp x model mesh)
against its pmap mode, with the tiny ViT on digits.

- Plain data parallelism on the mesh trains like pmap: parameters equal to 1e-5 relative
  after 10 steps, on 2 and on 4 CPU devices.
- FSDP x tensor parallelism (fsdp 2 x model 2) with 2-step gradient accumulation, stopped
  at step 5 and resumed, ends where 10 uninterrupted pmap steps without accumulation do.
- Its sharded checkpoint (written from 4 devices) restores onto meshes of 1, 2 and 8
  devices and onto the host (the pmap path's restore), and serves as `init_from`.

Run as a script (`python tests/test_layouts.py PLAN OUT` in a process with the devices the
plan needs), this file trains the plan's runs and writes their parameters.
"""

import json
import os
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
]
#: name -> (overrides, steps at which the run stops: one entry, or a stop and a resume).
RUNS = {
    "pmap": (["parallelism='pmap'"], [STEPS]),
    "mesh_data": (["parallelism='mesh'"], [STEPS]),
    "mesh_fsdp_model": (
        ["parallelism='mesh'", "mesh.fsdp=2", "mesh.model=2", "grad_accumulation_steps=2"],
        [5, STEPS],
    ),
}
PLANS = {
    2: ["pmap", "mesh_data"],
    4: ["pmap", "mesh_data", "mesh_fsdp_model"],
}


def flat_params(tree) -> dict:
    import jax

    return {
        "/".join(str(k.key) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def train_plan(devices: int, out: str) -> None:
    """Trains the plan's runs in `out/<name>` and saves each one's final parameters."""
    from scenic.common_lib import config_utils, runner
    from scenic.train_lib import trainer
    from scenic_baselines.models import MODELS

    dataset = None
    for name in PLANS[devices]:
        overrides, stops = RUNS[name]
        config = config_utils.load_config("vit_digits", "scenic_baselines.configs")
        config, model_cls = runner.resolve_config(config, MODELS, TINY + overrides)
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
        np.savez(os.path.join(out, f"{name}.npz"), **flat_params(result.state["params"]))


def restore_checks(out: str) -> dict:
    """The fsdp x model run's last checkpoint restored onto meshes of every size that
    divides the devices here (and 1), and read by `init_from`: max |difference|."""
    import jax

    from scenic.train_lib import checkpoints, layouts, partitioning, pretrained_init
    from scenic.train_lib.train_state import TrainState

    workdir = os.path.join(out, "mesh_fsdp_model")
    expected = dict(np.load(os.path.join(out, "mesh_fsdp_model.npz")))
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


def _nest(flat: dict) -> dict:
    tree = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _max_difference(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b), (sorted(a)[:3], sorted(b)[:3])
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def run_plan(devices: int, out, *args, cache=None, timeout=600):
    """Runs this file's plan for `devices` in a process with that many CPU devices;
    `cache`: a JAX compilation cache folder the plans share (the tiny ViT's initialisation,
    FLOP count and optimizer set-up compile alike in each)."""
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="2",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    if cache:
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(cache),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    done = subprocess.run(
        [sys.executable, __file__, str(devices), str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("mesh4")
    return out, run_plan(4, out, "--restore", cache=cache)


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


def test_mesh_data_parallelism_equals_pmap_on_two_devices(tmp_path, cache):
    run_plan(2, tmp_path, cache=cache)
    assert_same_training(tmp_path, "pmap", "mesh_data")


def test_mesh_data_parallelism_equals_pmap_on_four_devices(four_devices):
    out, _ = four_devices
    assert_same_training(out, "pmap", "mesh_data")


def test_fsdp_and_tensor_parallel_with_accumulation_resumed_equal_pmap(four_devices):
    out, _ = four_devices
    # Accumulation sums the gradient in another order, and Adam's normalisation turns
    # rounding into relative differences of ~1e-5 on the smallest updates (1.4e-5 seen on
    # the attention output bias).
    assert_same_training(out, "pmap", "mesh_fsdp_model", tolerance=1e-4)
    # Negative control: the step-5 parameters of the same run differ measurably.
    from scenic.train_lib import pretrained_init

    step5 = pretrained_init.load_params(out / "mesh_fsdp_model" / "checkpoints" / "5")
    step5 = {k.removeprefix("params/"): v for k, v in step5.items()}
    final = dict(np.load(out / "pmap.npz"))
    assert max(relative_difference(final, step5).values()) > 1e-3


def test_sharded_checkpoint_restores_onto_other_meshes_the_host_and_init_from(
    four_devices, cache
):
    out, differences = four_devices
    eight = run_plan(8, out, "--restore-only", cache=cache)
    differences.update({k: v for k, v in eight.items() if k == "mesh_8"})
    assert set(differences) == {"mesh_1", "mesh_2", "mesh_4", "mesh_8", "host", "init_from"}
    for name, (difference, most_devices) in differences.items():
        assert difference == 0.0, name
        if name.startswith("mesh_"):
            assert most_devices == int(name.split("_")[1]), name  # sharded over that mesh


if __name__ == "__main__":
    devices, out = int(sys.argv[1]), sys.argv[2]
    import jax

    assert jax.device_count() == devices, jax.devices()
    if "--restore-only" not in sys.argv:
        train_plan(devices, out)
    result = restore_checks(out) if {"--restore", "--restore-only"} & set(sys.argv) else {}
    print(json.dumps(result))
