"""Every registered model trains a few steps through `scenic-baselines train` (the CLI's
own `main`, in process) and leaves its final metrics: no model can rot unnoticed. A model
registered without a case here fails `test_every_registered_model_has_a_case`."""

import json

import numpy as np
import pytest

from scenic_baselines.cli import main
from scenic_baselines.models import MODELS

# Two steps, then the eval, of each model on built-in data; tiny sizes where the demo
# config is not tiny already. model_name -> (config, overrides).
SHORT_RUN = [
    "--config.num_training_steps=2",
    "--config.log_summary_steps=1",
    "--config.log_eval_steps=2",
    "--config.checkpoint_steps=2",
    "--config.lr_configs.warmup_steps=1",
    "--config.batch_size=16",
]
TINY_VIT = [
    "--config.model.hidden_size=16",
    "--config.model.num_layers=1",
    "--config.model.num_heads=2",
    "--config.model.mlp_dim=32",
]
CASES = {
    "vit_classification": ("vit_digits", TINY_VIT),
    "vit_multilabel_classification": (
        "vit_digits",
        [
            *TINY_VIT,
            "--config.model_name=vit_multilabel_classification",
            "--config.dataset_configs.onehot_labels=True",
        ],
    ),
    "resnet_classification": ("resnet_digits", ["--config.model.num_layers=10"]),
    "detr": (
        "detr_digits_detection",
        [
            "--config.model.hidden_size=32",
            "--config.model.num_heads=2",
            "--config.model.mlp_dim=32",
            "--config.model.num_encoder_layers=1",
            "--config.model.num_decoder_layers=1",
            "--config.model.backbone_num_layers=10",
            "--config.model.backbone_num_filters=8",
            "--config.dataset_configs.image_size=32",
        ],
    ),
    "mixer_classification": (
        "mixer_digits",
        [
            "--config.model.num_layers=2",
            "--config.model.layer_scale=0.5",
        ],
    ),
    "mixer_multilabel_classification": (
        "mixer_digits",
        [
            "--config.model.num_layers=1",
            "--config.model_name=mixer_multilabel_classification",
            "--config.dataset_configs.onehot_labels=True",
        ],
    ),
    "bit_classification": ("bit_digits", ["--config.model.num_filters=8"]),
    "vit_hybrid_classification": ("vit_hybrid_digits", ["--config.model.num_layers=1"]),
    "unet_segmentation": ("unet_digits_segmentation", ["--config.model.num_levels=2"]),
    "clip": (
        "clip_digits",
        [
            "--config.model.vision_layers=1",
            "--config.model.text_layers=1",
            "--config.model.vision_width=16",
            "--config.model.text_width=16",
        ],
    ),
}
# What each kind of model reports in final_metrics.json.
EXPECTED_METRIC = {
    "detr": "AP",
    "unet_segmentation": "mean_iou",
    "vit_multilabel_classification": "mAP",
    "mixer_multilabel_classification": "mAP",
}


@pytest.fixture(scope="module")
def small_digits_detection(tmp_path_factory) -> str:
    """A 32 + 16 canvas digits_detection (the full one takes a while to write)."""
    from scenic.dataset_lib import digits_detection

    directory = tmp_path_factory.mktemp("digits_detection")
    return digits_detection.prepare(str(directory), {"train": 32, "test": 16})


def test_every_registered_model_has_a_case():
    assert sorted(CASES) == sorted(MODELS)


@pytest.mark.parametrize("model_name", sorted(CASES))
def test_trains_two_steps_through_the_cli(model_name, tmp_path, capsys, request):
    config, overrides = CASES[model_name]
    if config == "detr_digits_detection":
        data_dir = request.getfixturevalue("small_digits_detection")
        overrides = [*overrides, f"--config.dataset_configs.data_dir={data_dir}"]
    workdir = tmp_path / model_name
    argv = ["train", "--config", config, "--workdir", str(workdir), *SHORT_RUN, *overrides]
    assert main(argv) == 0, capsys.readouterr().err[-3000:]
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model_name"] == model_name
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert final["step"] == 2 and np.isfinite(final["loss"])
    metric = EXPECTED_METRIC.get(model_name, "accuracy")
    assert 0.0 <= final[metric] <= 1.0, final
    assert (workdir / "checkpoints" / "2").is_dir()
