"""`scenic-baselines detect`: a trained detector's workdir run on image files.

The workdir here holds a tiny DETR's config, meta data and a checkpoint of random
parameters (training is not what is tested); its detections on 64x64 digit canvases
(drawn at the canvas size, so no resizing is involved) must be exactly the model's own
top-k outputs, in original pixels."""

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from scenic.common_lib import runner
from scenic.model_lib import detection_postprocess
from scenic.train_lib import checkpoints, trainer
from scenic_baselines.models import MODELS

CANVAS = 64
CLASS_NAMES = [f"digit{i}" for i in range(10)]
TINY_DETR = dict(
    backbone_num_layers=10,
    backbone_num_filters=4,
    backbone_stage=3,
    hidden_size=16,
    num_heads=2,
    mlp_dim=32,
    num_encoder_layers=1,
    num_decoder_layers=1,
    num_queries=5,
    aux_loss=False,
)


@pytest.fixture(scope="module")
def detector_workdir(tmp_path_factory):
    """A workdir as `train` leaves it: config.json, dataset_meta_data.json, a checkpoint."""
    workdir = tmp_path_factory.mktemp("detr")
    config = ml_collections.ConfigDict(
        {
            "model_name": "detr",
            "dataset_name": "digits_detection",
            "model": TINY_DETR,
            "num_training_steps": 1,
        }
    )
    config, model_cls = runner.resolve_config(config, MODELS)
    meta_data = {
        "num_classes": 10,
        "class_names": CLASS_NAMES,
        "input_shape": {"image": (-1, CANVAS, CANVAS, 3), "padding_mask": (-1, CANVAS, CANVAS)},
        "input_dtype": np.float32,
        "num_train_examples": 1,
    }
    model, _ = trainer.build_model(model_cls, config, meta_data)
    tx, _ = trainer.make_optimizer(config, 1)
    state = random_state(model, tx)
    (workdir / "config.json").write_text(config.to_json_best_effort())
    trainer.write_meta_data(workdir, meta_data)
    saver = checkpoints.Checkpointer(workdir)
    saver.save(1, jax.device_get(state.to_dict()))
    saver.close()
    return workdir, model, state


def random_state(model, tx) -> trainer.TrainState:
    """A train state of `initialize_state`'s structure with random parameters (no all-zero
    heads) and batch statistics at their initial values (mean 0, var 1), built in NumPy
    from the traced shapes: compiling DETR's `init` would take most of this module's time."""
    dummy = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), model.input_spec())
    key = jax.random.key(0)
    shapes = jax.eval_shape(
        lambda: model.flax_model.init({"params": key, "dropout": key}, dummy, train=False)
    )
    shapes = dict(shapes)
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: jnp.asarray(0.05 + 0.2 * rng.standard_normal(s.shape), s.dtype),
        shapes.pop("params"),
    )
    model_state = jax.tree_util.tree_map_with_path(
        lambda path, s: (jnp.ones if path[-1].key == "var" else jnp.zeros)(s.shape, s.dtype),
        shapes,
    )
    return trainer.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        model_state=model_state,
        rng=jax.random.key_data(key),
    )


def canvas_image(index: int) -> np.ndarray:
    from scenic.dataset_lib import digits_detection

    return digits_detection.make_canvas("test", index)["image"]


def write_png(path: pathlib.Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path)


def test_detections_are_the_models_top_k_in_pixels(detector_workdir, tmp_path, cli):
    workdir, model, state = detector_workdir
    folder = tmp_path / "images"
    folder.mkdir()
    images = [canvas_image(i) for i in range(3)]
    for i, image in enumerate(images):
        write_png(folder / f"canvas{i}.png", image)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "out"
    result = cli(
        "detect", str(folder), "--workdir", str(workdir), "--out", str(out),
        "--threshold", "0", "--top-k", "7", "--batch", "2",
        "--checkpoint", str(workdir / "checkpoints" / "1"),
    )  # fmt: skip
    assert result.returncode == 3, result.stderr[-3000:]  # one file skipped
    skipped = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert len(skipped) == 1
    assert skipped[0].startswith(
        f"scenic-baselines: skipped {folder / 'broken.png'}: not a readable image ("
    )
    assert "3 image(s)" in result.stdout and "1 skipped" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"canvas{i}.{ext}" for i in range(3) for ext in ("json", "png")]
    )
    inputs = {
        "image": np.stack(images).astype(np.float32) / 127.5 - 1.0,
        "padding_mask": np.ones((3, CANVAS, CANVAS), np.float32),
    }
    outputs = jax.jit(model.flax_model.apply)({"params": state.params, **state.model_state}, inputs)
    scores, labels, boxes = detection_postprocess.top_k_detections(
        outputs["pred_logits"], outputs["pred_boxes"], 7, softmax=True
    )
    boxes = np.asarray(boxes) * CANVAS  # canvas-normalised cxcywh -> pixels (no resizing)
    xyxy = np.concatenate(
        [boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], -1
    )
    xyxy = np.clip(xyxy, 0, CANVAS)
    for i in range(3):
        record = json.loads((out / f"canvas{i}.json").read_text())
        assert record["height"] == record["width"] == CANVAS
        found = record["detections"]
        assert len(found) == 7
        np.testing.assert_allclose([d["score"] for d in found], scores[i], rtol=1e-5)
        assert [d["label"] for d in found] == np.asarray(labels[i]).tolist()
        assert [d["label_name"] for d in found] == [CLASS_NAMES[k] for k in labels[i]]
        np.testing.assert_allclose([d["box_xyxy"] for d in found], xyxy[i], atol=0.02)


def test_bad_paths_are_refused_before_anything_is_written(detector_workdir, tmp_path, cli):
    workdir, _, _ = detector_workdir
    out = tmp_path / "out"
    missing = tmp_path / "nowhere.png"
    result = cli("detect", str(missing), "--workdir", str(workdir), "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"scenic-baselines: error: {missing} does not exist."
    ]
    assert not out.exists()
    image = tmp_path / "canvas.png"
    write_png(image, canvas_image(0))
    elsewhere = tmp_path / "checkpoints" / "1"  # a step folder, but not of this workdir
    elsewhere.mkdir(parents=True)
    result = cli("detect", str(image), "--workdir", str(workdir), "--checkpoint", str(elsewhere))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"scenic-baselines: error: --checkpoint {elsewhere}: expected a step number or a step "
        f"folder in {(workdir / 'checkpoints').resolve()}."
    ]
    assert not (workdir / "detect").exists()
