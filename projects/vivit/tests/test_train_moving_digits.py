"""The demo config trains through the core trainer on built-in moving digits, and the
multi-view test (clips x crops, logits averaged) runs at the end of training."""

import numpy as np
import pytest
import scipy.special

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
    return result, model_cls(config, dataset.meta_data), dataset


def multiview_metrics_float64(model, params, dataset):
    """Accuracy and cross-entropy of the view-averaged logits, the views run one at a time
    through the trained model and averaged in float64 over the real (unpadded) examples."""
    correct = loss = count = 0.0
    for batch in dataset.multiview_eval_batches():
        views = batch["inputs"]
        logits = np.mean(
            [
                np.asarray(
                    model.flax_model.apply({"params": params}, views[:, v], train=False),
                    np.float64,
                )
                for v in range(views.shape[1])
            ],
            axis=0,
        )
        mask = np.asarray(batch["batch_mask"], np.float64)
        label = np.asarray(batch["label"])
        log_probs = scipy.special.log_softmax(logits, axis=-1)
        correct += np.sum(mask * (logits.argmax(-1) == label))
        loss += np.sum(mask * -log_probs[np.arange(len(label)), label])
        count += mask.sum()
    return correct / count, loss / count, count


@pytest.mark.parametrize("clips", [1, 2])
def test_multiview_test_after_training(tmp_path, clips):
    # 4-frame clips of the 8-frame videos, so that two clips are different views.
    result, model, dataset = train(
        tmp_path, f"dataset_configs.num_test_clips={clips}", "dataset_configs.num_frames=4"
    )
    final = result.metrics
    assert final["step"] == 3
    batch = next(iter(dataset.multiview_eval_batches()))
    assert batch["inputs"].shape[1] == clips  # one view per clip (one crop)
    if clips == 2:
        assert not np.array_equal(batch["inputs"][:, 0], batch["inputs"][:, 1])
    accuracy, loss, count = multiview_metrics_float64(model, result.state["params"], dataset)
    assert count == dataset.meta_data["num_eval_examples"]
    assert final["multiview_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    np.testing.assert_allclose(final["multiview_loss"], loss, rtol=1e-4)
    if clips == 1:  # one centred view is exactly the standard eval clip
        np.testing.assert_allclose(final["multiview_loss"], final["loss"], rtol=1e-5)
        assert final["multiview_accuracy"] == final["accuracy"]
    else:  # the first and the last 4 frames, not the centred clip: a different loss
        assert abs(final["multiview_loss"] - final["loss"]) > 1e-6
