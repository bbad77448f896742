"""The demo config trains through the core trainer on built-in moving digits, and the
multi-view test (clips x crops, logits averaged) runs at the end of training."""

import numpy as np
import pytest

from scenic.common_lib import config_utils, runner
from scenic.train_lib import trainer
from scenic_vivit.models import MODELS

TINY = [
    "model.hidden_size=16",
    "model.num_layers=1",
    "model.temporal_num_layers=1",
    "model.num_heads=2",
    "model.mlp_dim=32",
    "batch_size=32",
    "eval_batch_size=64",
    "num_training_steps=3",
    "log_summary_steps=3",
    "log_eval_steps=3",
    "checkpoint_steps=3",
    "lr_configs.warmup_steps=1",
    "multiview_test=True",
]


def train(tmp_path, *extra):
    config = config_utils.load_config("vivit_moving_digits", "scenic_vivit.configs")
    config, model_cls = runner.resolve_config(config, MODELS, [*TINY, *extra])
    dataset = runner.build_dataset(config)
    result = trainer.train(model_cls=model_cls, dataset=dataset, config=config, workdir=tmp_path)
    return result.metrics


@pytest.mark.parametrize("clips", [1, 2])
def test_multiview_test_after_training(tmp_path, clips):
    final = train(tmp_path, f"dataset_configs.num_test_clips={clips}")
    assert final["step"] == 3
    assert 0.0 <= final["multiview_accuracy"] <= 1.0
    if clips == 1:  # one centred view is exactly the standard eval clip
        np.testing.assert_allclose(final["multiview_loss"], final["loss"], rtol=1e-5)
        assert final["multiview_accuracy"] == final["accuracy"]
