"""A trained model loaded from its workdir for inference: what `predict` / `detect` verbs use.

The workdir of a run holds its config (`config.json`), the data set's meta data
(`dataset_meta_data.json`: classes, input shapes and dtypes) and the checkpoints, so the model
is rebuilt without the data set. The parameter EMA is used when the run kept one, as in
evaluation.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from scenic.train_lib import checkpoints, precision, steps, trainer


@dataclasses.dataclass
class TrainedModel:
    """A base model with its trained variables.

    Attributes:
      model: the `BaseModel` (its `flax_model` computes in the run's compute dtype).
      variables: `{'params': ..., **model_state}` (EMA parameters if the run kept them).
      config: the run's resolved config.
      step: the checkpoint's step.
      dtype: the compute dtype floating inputs are cast to.
    """

    model: Any
    variables: dict
    config: ml_collections.ConfigDict
    step: int
    dtype: Any = None

    def __post_init__(self):
        self._apply = jax.jit(
            lambda variables, inputs: precision.to_float32(
                self.model.inference_apply(variables, inputs)
            )
        )

    def __call__(self, inputs):
        """Outputs (float32) for a batch of `inputs`: an array or a dict of modalities."""
        inputs = precision.cast_inputs({"inputs": inputs}, self.dtype or jnp.float32)["inputs"]
        return self._apply(self.variables, inputs)


def load_trained_model(
    model_cls, config: ml_collections.ConfigDict, workdir: str | pathlib.Path, step=None
) -> TrainedModel:
    """The latest checkpoint (or that of `step`) of the run in `workdir`, for inference."""
    workdir = pathlib.Path(workdir)
    meta_data = trainer.load_meta_data(workdir)
    checkpointer = checkpoints.Checkpointer(workdir, config.max_checkpoints_to_keep)
    try:
        if checkpointer.latest_step() is None:
            raise FileNotFoundError(f"No checkpoint in {checkpointer.directory}.")
        if step is not None and step not in checkpointer.all_steps():
            raise FileNotFoundError(
                f"No checkpoint of step {step} in {checkpointer.directory} "
                f"(steps: {checkpointer.all_steps()})."
            )
        model, dtype = trainer.build_model(model_cls, config, meta_data)
        # Only the optimizer state's structure matters here, not the schedule's length.
        tx, _ = trainer.make_optimizer(config, int(config.num_training_steps) or 1 << 30)
        # The restore target's shapes only: tracing the initialisation, not compiling it.
        state = jax.eval_shape(
            lambda: trainer.initialize_state(model, config, jax.random.key(config.rng_seed), tx)
        )
        state = trainer.restore_latest(checkpointer, state, config, step)
    finally:
        checkpointer.close()
    return TrainedModel(model, steps.eval_variables(state), config, int(state.step), dtype)
