"""The compile options every test runs under (the root conftest.py: LLVM level 1 and
XLA:CPU's elemental fusion emitters, about half the compile time of XLA's defaults) compute
what the defaults, which users train with, compute.

The tiny ViT's and a 10-layer ResNet's training loss, gradients and batch statistics, from
one lowering compiled both ways, agree to float32 rounding; and the two compiles really are
different machine code (XLA names its kernel modules differently), so the comparison is not
of one program with itself.
"""

import os

import jax
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache

from scenic.common_lib import config_utils, runner
from scenic.train_lib import precision, steps, trainer
from scenic_baselines.models import MODELS

#: XLA:CPU's defaults for the options the root conftest.py changes.
XLA_DEFAULTS = {"xla_backend_optimization_level": 3, "xla_cpu_use_fusion_emitters": True}
CASES = {
    "vit": (
        "vit_digits",
        ["model.hidden_size=16", "model.num_layers=1", "model.num_heads=2", "model.mlp_dim=32"],
    ),
    "resnet": ("resnet_digits", ["model.num_layers=10"]),
}


def test_the_suite_runs_with_its_compile_options():
    flags = os.environ["XLA_FLAGS"].split()
    assert "--xla_backend_optimization_level=1" in flags
    assert "--xla_cpu_use_fusion_emitters=false" in flags


def loss_and_gradients(model):
    """(params, model_state, batch) -> (loss, gradients, updated model state), as the
    train step computes them (dropout and batch statistics in training mode)."""

    def compute(params, model_state, batch, key):
        mutable = list(model_state) or False

        def loss_fn(params):
            out = model.flax_model.apply(
                {"params": params, **model_state},
                batch["inputs"],
                train=True,
                mutable=mutable,
                rngs={"dropout": key},
            )
            outputs, new_state = out if mutable else (out, {})
            loss, _ = model.loss_and_metrics(precision.to_float32(outputs), batch, params)
            return loss, new_state

        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, grads, new_state

    return compute


def relative_differences(a, b) -> dict:
    """Per array: max |a - b| over max |a|."""
    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    flat_b = jax.tree.leaves(b)
    return {
        jax.tree_util.keystr(path): float(
            np.abs(np.asarray(x) - np.asarray(y)).max() / max(np.abs(np.asarray(x)).max(), 1e-30)
        )
        for (path, x), y in zip(flat_a, flat_b, strict=True)
    }


def one_device(batch):
    return jax.tree.map(lambda x: np.asarray(x)[None], batch)


def kernel_modules(folder) -> set:
    return {p.name for p in folder.iterdir() if p.name.endswith(".o")}


@pytest.fixture
def without_persistent_cache():
    """Compiles for real: an executable read from the persistent cache dumps no kernels."""
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_enable_compilation_cache", enabled)
    compilation_cache.reset_cache()


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_gradients_equal_those_of_xla_defaults(case, tmp_path, without_persistent_cache):
    name, overrides = CASES[case]
    config, model_cls = runner.resolve_config(
        config_utils.load_config(name, "scenic_baselines.configs"),
        MODELS,
        [*overrides, "batch_size=16"],
    )
    dataset = runner.build_dataset(config)
    model, _ = trainer.build_model(model_cls, config, dataset.meta_data)
    tx, _ = trainer.make_optimizer(config, config.num_training_steps)
    state = trainer.initialize_state(model, config, jax.random.key(0), tx)
    # One device under pmap, as the trainer runs it (the ResNet's batch norm names the axis).
    step = jax.pmap(loss_and_gradients(model), axis_name=steps.AXIS, in_axes=(None, None, 0, None))
    batch = one_device(next(iter(dataset.train_batches(0))))
    args = (state.params, state.model_state, batch, jax.random.key(1))
    lowered = step.lower(*args)

    suite = lowered.compile(compiler_options={"xla_dump_to": str(tmp_path / "suite")})
    defaults = lowered.compile(
        compiler_options={**XLA_DEFAULTS, "xla_dump_to": str(tmp_path / "defaults")}
    )
    suite_modules, default_modules = (kernel_modules(tmp_path / d) for d in ("suite", "defaults"))
    assert suite_modules and default_modules and suite_modules != default_modules

    loss, grads, new_state = suite(*args)
    expected_loss, expected_grads, expected_state = defaults(*args)
    assert float(loss[0]) == pytest.approx(float(expected_loss[0]), rel=1e-6)
    differences = relative_differences(expected_grads, grads)
    worst = max(differences, key=differences.get)
    assert differences[worst] < 1e-5, (worst, differences[worst])
    if new_state:
        differences = relative_differences(expected_state, new_state)
        assert max(differences.values()) < 1e-5, differences
    # Negative control: another batch's gradients differ far beyond that tolerance.
    other = one_device(next(iter(dataset.train_batches(1))))
    _, other_grads, _ = defaults(state.params, state.model_state, other, jax.random.key(1))
    assert max(relative_differences(expected_grads, other_grads).values()) > 1e-2
