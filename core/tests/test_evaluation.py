"""An evaluation pass computes the model's `eval_constants` once, from the state it evaluates,
and hands them to every batch (pmap and mesh layouts alike)."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scenic.model_lib.base_models import ClassificationModel
from scenic.train_lib import evaluation, layouts, partitioning, steps
from scenic.train_lib.train_state import TrainState

NUM_CLASSES = 4


class FixedLogits:
    """A stand-in flax module: logits are the inputs themselves."""

    def apply(self, variables, inputs, train=False):
        return inputs


class ShiftedLogits(ClassificationModel):
    """Eval logits are the inputs plus a per-class shift that `eval_constants` derives from
    the parameters; every run of `eval_constants` is counted on the host."""

    def __init__(self):
        super().__init__(ml_collections.ConfigDict(), {"num_classes": NUM_CLASSES})
        self.constant_runs = 0

    def build_flax_model(self):
        return FixedLogits()

    def has_eval_constants(self):
        return True

    def count_run(self):
        self.constant_runs += 1

    def eval_constants(self, variables):
        jax.debug.callback(self.count_run)
        return 2.0 * jnp.tanh(variables["params"]["shift"])

    def eval_apply(self, variables, inputs, constants=None):
        return inputs + constants


def state_with_shift(shift) -> TrainState:
    return TrainState(
        step=np.zeros((), np.int32),
        params={"shift": np.asarray(shift, np.float32)},
        opt_state={},
        model_state={},
        rng=np.zeros(2, np.uint32),
    )


def layout_named(name):
    if name == "pmap":
        return layouts.PmapLayout()
    return layouts.MeshLayout(partitioning.make_mesh({"data": -1}))


@pytest.mark.parametrize("layout_name", ["pmap", "mesh"])
def test_constants_are_computed_once_per_pass_from_the_evaluated_state(layout_name):
    rng = np.random.default_rng(0)
    devices = jax.local_device_count()
    per_batch, num_batches = 2 * devices, 3
    logits = rng.normal(size=(num_batches * per_batch, NUM_CLASSES)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=len(logits))
    layout = layout_named(layout_name)
    model = ShiftedLogits()
    p_eval_step = layout.eval_step(functools.partial(steps.eval_step, model=model))

    def batches():
        for i in range(0, len(logits), per_batch):
            batch = {
                "inputs": logits[i : i + per_batch],
                "label": np.eye(NUM_CLASSES, dtype=np.float32)[labels[i : i + per_batch]],
                "batch_mask": np.ones(per_batch, np.float32),
            }
            yield batch

    seen_accuracies = set()
    for pass_index, shift in enumerate(rng.normal(scale=3.0, size=(3, NUM_CLASSES))):
        runs_before = model.constant_runs
        state = layout.place_state(state_with_shift(shift))
        metrics = evaluation.evaluate(p_eval_step, state, batches(), 1, model, layout)
        jax.effects_barrier()
        # Once per pass (on each local device under pmap), not once per batch.
        expected_runs = devices if layout_name == "pmap" else 1
        assert model.constant_runs - runs_before == expected_runs, pass_index
        # The shift of this pass's parameters, not a stale one from an earlier pass.
        predicted = (logits + 2.0 * np.tanh(shift)).argmax(-1)
        assert metrics["accuracy"] == pytest.approx(np.mean(predicted == labels), abs=1e-6)
        seen_accuracies.add(round(metrics["accuracy"], 6))
    assert len(seen_accuracies) > 1  # the shifts do change the predictions
