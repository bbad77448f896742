"""Every core base model trains and evaluates through the one trainer, on built-in data.

Tiny models, a few steps each. After training, the eval metrics the trainer reported are
recomputed independently: the trained model is loaded from its workdir (`load_trained_model`,
as a `predict` verb would), run on the eval set, and the metric is computed in NumPy float64
(sklearn for mAP) from its outputs, with the padding removed. So the global metrics (mean
IoU, perplexity, mAP) are checked as the whole eval set's, not a per-batch mean.

Detection: the matcher runs once per output per step (counted at run time), and two devices
train exactly like one at the same global batch, because the loss is normalised by the
global number of boxes; a model that normalises per device is the negative control.
Run as a script (in a 2-device process) this file trains the detection models and prints
their parameters.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scenic.common_lib import runner
from scenic.dataset_lib import datasets
from scenic.model_lib import base_models
from scenic.model_lib.base_models.segmentation_model import iou_from_confusion
from scenic.train_lib import trained_model, trainer

# ------------------------------------------------------------------------ data sets


def transformed(dataset, convert, **meta_data):
    """`dataset` with every train and eval batch passed through `convert`."""
    return dataclasses.replace(
        dataset,
        train_batches=lambda start_step=0: map(convert, dataset.train_batches(start_step)),
        eval_batches=lambda: map(convert, dataset.eval_batches()),
        meta_data={**dataset.meta_data, **meta_data},
    )


def digits(**kwargs):
    return datasets.get_dataset("digits", image_size=8, shift_pixels=0, **kwargs)


def regression_batch(batch):
    """Target: the digit / 9 as one real value."""
    targets = (batch["label"].astype(np.float32) / 9.0)[:, None]
    return {**{k: v for k, v in batch.items() if k != "label"}, "targets": targets}


def segmentation_batch(batch):
    """Per-pixel classes: the digit + 1 on ink (pixel > 0.25 of full scale), 0 elsewhere."""
    ink = batch["inputs"][..., 0] > -0.5  # inputs are in [-1, 1]
    label = np.where(ink, batch["label"][:, None, None] + 1, 0).astype(np.int32)
    return {**batch, "label": label}


SEQUENCE_LENGTH, PAD = 4, 10


def sequence_batch(batch):
    """Tokens: the digit repeated 1 + digit % 3 times, then PAD."""
    digit = batch["label"].astype(np.int32)
    length = 1 + digit % 3
    positions = np.arange(SEQUENCE_LENGTH)[None, :]
    label = np.where(positions < length[:, None], digit[:, None], PAD).astype(np.int32)
    return {**batch, "label": label}


datasets.register_dataset("test_digits_regression")(
    lambda **kw: transformed(digits(**kw), regression_batch)
)
datasets.register_dataset("test_digits_segmentation")(
    lambda **kw: transformed(digits(**kw), segmentation_batch, num_classes=11)
)
datasets.register_dataset("test_digits_sequence")(
    lambda **kw: transformed(digits(**kw), sequence_batch, num_classes=PAD + 1)
)

# ------------------------------------------------------------------------- models


class Regressor(nn.Module):
    @nn.compact
    def __call__(self, images, train: bool = False):
        x = nn.relu(nn.Dense(16)(images.reshape(images.shape[0], -1)))
        return nn.Dense(1)(x)


class Segmenter(nn.Module):
    """Per-pixel logits from the pixel and a whole-image feature (which digit it is)."""

    num_classes: int

    @nn.compact
    def __call__(self, images, train: bool = False):
        batch, height, width, _ = images.shape
        image_feature = nn.relu(nn.Dense(16)(images.reshape(batch, -1)))
        broadcast = jnp.broadcast_to(image_feature[:, None, None], (batch, height, width, 16))
        return nn.Dense(self.num_classes)(jnp.concatenate([images, broadcast], -1))


class Sequencer(nn.Module):
    vocab_size: int

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = nn.relu(nn.Dense(32)(images.reshape(images.shape[0], -1)))
        logits = nn.Dense(SEQUENCE_LENGTH * self.vocab_size)(x)
        return logits.reshape(images.shape[0], SEQUENCE_LENGTH, self.vocab_size)


class AudioVisual(nn.Module):
    """Dict inputs: a feature from each modality, fused by concatenation."""

    num_classes: int

    @nn.compact
    def __call__(self, inputs, train: bool = False):
        rgb, spec = inputs["rgb"], inputs["spectrogram"]
        rgb = nn.relu(nn.Dense(16, name="rgb")(rgb.mean(axis=1).reshape(rgb.shape[0], -1)))
        spec = nn.relu(nn.Dense(16, name="audio")(spec.reshape(spec.shape[0], -1)))
        return nn.Dense(self.num_classes, name="head")(jnp.concatenate([rgb, spec], -1))


class TinyDetector(nn.Module):
    """DETR-shaped outputs from a pooled image: logits [B, Q, C + 1], boxes [B, Q, 4], and
    one auxiliary output (as from an earlier decoder layer)."""

    num_classes: int  # with the no-object class
    num_queries: int = 4

    @nn.compact
    def __call__(self, inputs, train: bool = False):
        images = inputs["image"] * inputs["padding_mask"][..., None]
        batch, height, width, channels = images.shape
        pooled = images.reshape(batch, 8, height // 8, 8, width // 8, channels).mean((2, 4))
        hidden = nn.relu(nn.Dense(32, name="trunk")(pooled.reshape(batch, -1)))

        def head(x, name):
            logits = nn.Dense(self.num_queries * self.num_classes, name=f"{name}_class")(x)
            boxes = nn.Dense(self.num_queries * 4, name=f"{name}_box")(x)
            return {
                "pred_logits": logits.reshape(batch, self.num_queries, self.num_classes),
                "pred_boxes": nn.sigmoid(boxes.reshape(batch, self.num_queries, 4)),
            }

        outputs = head(hidden, "final")
        outputs["aux_outputs"] = [head(nn.relu(nn.Dense(32, name="aux")(hidden)), "aux0")]
        return outputs


class RegressionTest(base_models.RegressionModel):
    def build_flax_model(self):
        return Regressor()


class SegmentationTest(base_models.SegmentationModel):
    def build_flax_model(self):
        return Segmenter(self.num_classes)


class SequenceTest(base_models.EncoderDecoderModel):
    def build_flax_model(self):
        return Sequencer(self.dataset_meta_data["num_classes"])


class AudioVisualTest(base_models.MultiLabelClassificationModel):
    def build_flax_model(self):
        return AudioVisual(self.dataset_meta_data["num_classes"])


MATCHINGS = {"count": 0}


def count_matching(_):
    MATCHINGS["count"] += 1


class DetectionTest(base_models.DetectionModel):
    """Counts every run of its matcher (on any device) at run time."""

    def __init__(self, config, dataset_meta_data):
        super().__init__(config, dataset_meta_data)
        matcher = self.matcher

        def counted(*args):
            indices = matcher(*args)
            jax.debug.callback(count_matching, indices[0, 0, 0])
            return indices

        self.matcher = counted

    def build_flax_model(self):
        return TinyDetector(self.dataset_meta_data["num_classes"] + 1)


class PerDeviceDetectionTest(DetectionTest):
    """The negative control: the loss normalised by each device's own box count."""

    def loss_and_metrics(self, outputs, batch, model_params=None, axis_name=None):
        return super().loss_and_metrics(outputs, batch, model_params, axis_name=None)


MODELS = {
    "regression": RegressionTest,
    "segmentation": SegmentationTest,
    "sequence": SequenceTest,
    "audiovisual": AudioVisualTest,
    "detection": DetectionTest,
    "detection_per_device": PerDeviceDetectionTest,
}

# ------------------------------------------------------------------------ helpers


def resolved(model_name, dataset_name, dataset_configs=None, steps=6, **top_level):
    config = ml_collections.ConfigDict(
        {
            "model_name": model_name,
            "dataset_name": dataset_name,
            "dataset_configs": dataset_configs or {},
            "batch_size": 16,
            "eval_batch_size": 32,
            "num_training_steps": steps,
            "log_summary_steps": steps,
            "log_eval_steps": steps,
            "checkpoint_steps": steps,
            "optimizer": {"name": "adamw"},
            "lr_configs": {"factors": "constant", "base_learning_rate": 3e-3},
            **top_level,
        }
    )
    return runner.resolve_config(config, MODELS)


def train(workdir, model_name, dataset_name, dataset_configs=None, **top_level):
    config, model_cls = resolved(model_name, dataset_name, dataset_configs, **top_level)
    dataset = runner.build_dataset(config)
    result = trainer.train(model_cls=model_cls, dataset=dataset, config=config, workdir=workdir)
    assert result.completed and result.exit_code == 0
    loaded = trained_model.load_trained_model(model_cls, config, workdir)
    return result.metrics, loaded, dataset


def eval_set(dataset):
    """Every real eval example (padding removed), as one batch of NumPy arrays."""
    batches = list(dataset.eval_batches())
    joined = jax.tree.map(lambda *xs: np.concatenate(xs), *batches)
    real = joined.pop("batch_mask") > 0
    return jax.tree.map(lambda x: x[real], joined)


def predict(loaded, inputs):
    return jax.tree.map(np.asarray, jax.device_get(loaded(inputs)))


# -------------------------------------------------------------------------- tests


def test_regression_mse_and_mae_are_the_eval_set_means(tmp_path):
    metrics, loaded, dataset = train(tmp_path, "regression", "test_digits_regression")
    data = eval_set(dataset)
    assert len(data["targets"]) == 360  # the padded last batch did not count
    error = np.float64(predict(loaded, data["inputs"])) - np.float64(data["targets"])
    assert metrics["mean_squared_error"] == pytest.approx(np.mean(error**2), rel=1e-5)
    assert metrics["mean_absolute_error"] == pytest.approx(np.mean(np.abs(error)), rel=1e-5)


def confusion(labels, predicted, num_classes=11):
    matrix = np.zeros((num_classes, num_classes))
    np.add.at(matrix, (labels.ravel(), predicted.ravel()), 1)
    return matrix


def test_segmentation_mean_iou_is_global_over_the_eval_set(tmp_path):
    metrics, loaded, dataset = train(
        tmp_path,
        "segmentation",
        "test_digits_segmentation",
        steps=40,
        lr_configs={"factors": "constant", "base_learning_rate": 1e-2},
    )
    data = eval_set(dataset)
    predicted = predict(loaded, data["inputs"]).argmax(-1)
    expected = iou_from_confusion(confusion(data["label"], predicted))
    assert metrics["mean_iou"] == pytest.approx(expected["mean_iou"], rel=1e-6)
    for index, value in enumerate(expected["per_class_iou"]):
        if np.isfinite(value):
            assert metrics[f"iou/class_{index}"] == pytest.approx(value, rel=1e-6)
    assert metrics["pixel_accuracy"] == pytest.approx(np.mean(predicted == data["label"]))
    # Not the mean of per-batch IoUs (what a per-batch metric would report).
    per_batch = [
        iou_from_confusion(confusion(data["label"][i : i + 32], predicted[i : i + 32]))
        for i in range(0, len(predicted), 32)
    ]
    assert abs(np.mean([b["mean_iou"] for b in per_batch]) - metrics["mean_iou"]) > 1e-4


def test_encoder_decoder_perplexity_is_exp_of_the_token_mean_nll(tmp_path):
    metrics, loaded, dataset = train(tmp_path, "sequence", "test_digits_sequence", pad_token_id=PAD)
    data = eval_set(dataset)
    logits = np.float64(predict(loaded, data["inputs"]))
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_p, data["label"][..., None], -1)[..., 0]
    counted = data["label"] != PAD
    assert metrics["perplexity"] == pytest.approx(np.exp(nll[counted].mean()), rel=1e-5)
    assert metrics["loss"] == pytest.approx(nll[counted].mean(), rel=1e-5)
    accuracy = (logits.argmax(-1) == data["label"])[counted].mean()
    assert metrics["token_accuracy"] == pytest.approx(accuracy)


def test_multilabel_with_dict_inputs_mixup_and_multiview_reports_global_map(tmp_path, caplog):
    from sklearn.metrics import average_precision_score

    caplog.set_level("INFO", logger="scenic")
    metrics, loaded, dataset = train(
        tmp_path,
        "audiovisual",
        "audiovisual_digits",
        {"multi_label": True, "num_test_clips": 2, "data_dir": str(tmp_path / "data")},
        multiview_test=True,
        mixup={"mixup_alpha": 0.5},
    )
    # The dict input spec initialised the model and gave a FLOP count.
    assert "GFLOPs per example (forward)" in caplog.text and "unknown GFLOPs" not in caplog.text
    data = eval_set(dataset)
    assert set(data["inputs"]) == {"rgb", "spectrogram"}
    scores = predict(loaded, data["inputs"])
    expected = np.mean(
        [
            average_precision_score(data["label"][:, c], scores[:, c])
            for c in range(10)
            if data["label"][:, c].any()
        ]
    )
    assert metrics["mAP"] == pytest.approx(expected, rel=1e-5)
    assert 0.0 <= metrics["multiview_mAP"] <= 1.0 and "multiview_prec@1" in metrics


def prepare_digits_detection(directory) -> str:
    from scenic.dataset_lib import digits_detection

    return digits_detection.prepare(str(directory), {"train": 32, "test": 20})


def detection_config(model_name, data_dir, steps):
    return dict(
        model_name=model_name,
        dataset_name="digits_detection",
        dataset_configs={"data_dir": data_dir, "image_size": 32, "shuffle_buffer": 32},
        steps=steps,
        batch_size=8,
        eval_batch_size=8,
        optimizer={"name": "sgd"},
        lr_configs={"factors": "constant", "base_learning_rate": 0.05},
    )


def train_detection(workdir, model_name, data_dir, steps=3, stop_after_step=None):
    kwargs = detection_config(model_name, data_dir, steps)
    config, model_cls = resolved(**kwargs)
    dataset = runner.build_dataset(config)
    result = trainer.train(
        model_cls=model_cls,
        dataset=dataset,
        config=config,
        workdir=workdir,
        stop_after_step=stop_after_step,
    )
    return result, dataset


def flat_params(params) -> dict[str, np.ndarray]:
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


@pytest.fixture(scope="module")
def detection_data(tmp_path_factory):
    return prepare_digits_detection(tmp_path_factory.mktemp("digits_detection"))


@pytest.fixture(scope="module")
def one_device_detection(tmp_path_factory, detection_data):
    """(result, data set, matcher runs) of 3 steps and the final eval on one device."""
    MATCHINGS["count"] = 0
    result, dataset = train_detection(tmp_path_factory.mktemp("one"), "detection", detection_data)
    jax.effects_barrier()
    return result, dataset, MATCHINGS["count"]


def test_detection_matches_once_per_output_per_step(one_device_detection):
    result, dataset, matchings = one_device_detection
    outputs = 2  # the final output and one auxiliary output, each matched on its own
    assert matchings == outputs * (3 + dataset.num_eval_batches)
    for name in ("loss", "loss_class", "loss_bbox", "loss_giou", "loss_class_aux0"):
        assert np.isfinite(result.metrics[name]), name


@pytest.fixture(scope="module")
def two_device_detection(tmp_path_factory, detection_data):
    """Parameters after 3 steps in a 2-device process: the model and the negative control."""
    out = tmp_path_factory.mktemp("two_devices")
    env = dict(
        os.environ,
        XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
    )
    done = subprocess.run(
        [sys.executable, __file__, detection_data, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {name: dict(np.load(out / f"{name}.npz")) for name in ("detection", "per_device")}


def test_detection_two_devices_equal_one_at_the_same_global_batch(
    detection_data, one_device_detection, two_device_detection
):
    result, dataset, _ = one_device_detection
    one = flat_params(result.state["params"])
    config, model_cls = resolved(**detection_config("detection", detection_data, 3))
    model, _ = trainer.build_model(model_cls, config, dataset.meta_data)
    tx, _ = trainer.make_optimizer(config, 3)
    initial = trainer.initialize_state(model, config, jax.random.key(config.rng_seed), tx)
    initial = flat_params(initial.params)
    assert max(np.abs(one[k] - initial[k]).max() for k in one) > 1e-3  # training moved them
    two, control = two_device_detection["detection"], two_device_detection["per_device"]
    for name, value in one.items():
        np.testing.assert_allclose(two[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    # Normalising by each device's own box count instead is measurably different.
    assert max(np.abs(control[k] - one[k]).max() for k in one) > 1e-4


if __name__ == "__main__":  # the 2-device half of the detection test
    assert jax.local_device_count() == 2, jax.devices()
    data_dir, out = sys.argv[1], sys.argv[2]
    for name, model_name in (("detection", "detection"), ("per_device", "detection_per_device")):
        # Step 3 of a 4-step run, stopped there: the parameters of the 3-step run (the
        # learning rate is constant), without compiling and running the final evaluation.
        result, _ = train_detection(
            os.path.join(out, name), model_name, data_dir, steps=4, stop_after_step=3
        )
        assert result.step == 3 and not result.completed
        np.savez(os.path.join(out, f"{name}.npz"), **flat_params(result.state["params"]))
    print(json.dumps({"done": True}))
