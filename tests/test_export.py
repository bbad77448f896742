"""`export`: every registered model of every project exports to StableHLO (symbolic batch,
cpu + cuda) and, but for head variants of a model tested already, to ONNX, and the export
computes what the JAX model does; ViT and ViViT also round-trip through a TF SavedModel,
with fixed and dynamic batches. A model registered without a case here fails
`test_every_registered_model_has_an_export_case`; a format a model cannot be exported to is
listed in UNSUPPORTED with the reason, and tested to be the clear one-line error. The
`export` verb runs on the session's reference run (tests/conftest.py).

Models get random variables in `init`'s shapes (no training, no init compile), so that no
output is trivially zero (heads are zero-initialised), at tiny sizes of the demo configs.
"""

from __future__ import annotations

import dataclasses
import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scenic.common_lib import config_utils, export, runner

PROJECTS = (
    "scenic_baselines",
    "scenic_vivit",
    "scenic_mbt",
    "scenic_tokenlearner",
    "scenic_owl_vit",
)
IMAGE = {"input_shape": (-1, 16, 16, 1), "num_classes": 5}
VIDEO = {"input_shape": (-1, 4, 16, 16, 1), "num_classes": 5}
AUDIOVISUAL = {"input_shape": {"rgb": (-1, 4, 8, 8, 1), "spectrogram": (-1, 8, 12, 1)}}
TINY_VIT = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "mlp_dim": 32}
TINY_VIVIT = {**TINY_VIT, "temporal_num_layers": 1}
TINY_MBT = {**TINY_VIT, "num_layers": 2, "fusion_layer": 1, "n_bottlenecks": 2}


@dataclasses.dataclass(frozen=True)
class Case:
    project: str
    config: str
    model: dict  # config.model updates
    meta: dict  # the data set's meta data
    top_level: dict = dataclasses.field(default_factory=dict)


def multihead(meta):
    return {**meta, "num_classes": 5}


CASES = {
    "vit_classification": Case("scenic_baselines", "vit_digits", TINY_VIT, IMAGE),
    "vit_multilabel_classification": Case("scenic_baselines", "vit_digits", TINY_VIT, IMAGE),
    "resnet_classification": Case("scenic_baselines", "resnet_digits", {"num_layers": 10}, IMAGE),
    "mixer_classification": Case("scenic_baselines", "mixer_digits", {"num_layers": 1}, IMAGE),
    "mixer_multilabel_classification": Case(
        "scenic_baselines", "mixer_digits", {"num_layers": 1}, IMAGE
    ),
    "bit_classification": Case("scenic_baselines", "bit_digits", {"num_filters": 8}, IMAGE),
    "vit_hybrid_classification": Case(
        "scenic_baselines", "vit_hybrid_digits", {"num_layers": 1}, IMAGE
    ),
    "unet_segmentation": Case(
        "scenic_baselines",
        "unet_digits_segmentation",
        {"num_levels": 2},
        {"input_shape": (-1, 16, 16, 3), "num_classes": 4},
    ),
    "detr": Case(
        "scenic_baselines",
        "detr_digits_detection",
        {
            "hidden_size": 16,
            "num_heads": 2,
            "mlp_dim": 16,
            "num_encoder_layers": 1,
            "num_decoder_layers": 1,
            "backbone_num_layers": 10,
            "backbone_num_filters": 8,
        },
        {
            "input_shape": {"image": (-1, 32, 32, 3), "padding_mask": (-1, 32, 32)},
            "num_classes": 3,
        },
    ),
    "clip": Case(
        "scenic_baselines",
        "clip_digits",
        {"vision_layers": 1, "text_layers": 1, "vision_width": 16, "text_width": 16},
        {**IMAGE, "num_classes": 3},
        {"class_names": ("zero", "one", "two")},
    ),
    "vivit_classification": Case("scenic_vivit", "vivit_moving_digits", TINY_VIVIT, VIDEO),
    "vivit_multilabel_classification": Case(
        "scenic_vivit", "vivit_moving_digits", TINY_VIVIT, VIDEO
    ),
    "vivit_multihead_classification": Case(
        "scenic_vivit",
        "vivit_moving_digits",
        TINY_VIVIT,
        VIDEO,
        {"class_splits": [3, 2], "split_names": ["verb", "noun"]},
    ),
    "mbt_classification": Case(
        "scenic_mbt", "mbt_audiovisual_digits", TINY_MBT, {**AUDIOVISUAL, "num_classes": 5}
    ),
    "mbt_multilabel_classification": Case(
        "scenic_mbt", "mbt_audiovisual_digits", TINY_MBT, {**AUDIOVISUAL, "num_classes": 5}
    ),
    "mbt_multihead_classification": Case(
        "scenic_mbt",
        "mbt_audiovisual_digits",
        TINY_MBT,
        {**AUDIOVISUAL, "num_classes": 5},
        {"class_splits": [3, 2]},
    ),
    "tokenlearner_classification": Case(
        "scenic_tokenlearner",
        "tokenlearner_digits",
        {**TINY_VIT, "num_layers": 2, "num_tokens": 4},
        IMAGE,
    ),
    "tokenlearner_multilabel_classification": Case(
        "scenic_tokenlearner",
        "tokenlearner_moving_digits",
        {**TINY_VIT, "num_tokens": 4},
        VIDEO,
    ),
    "owl_vit": Case(
        "scenic_owl_vit",
        "owl_vit_digits",
        {
            "embed_dim": 16,
            "image_size": 32,
            "vision_width": 16,
            "vision_layers": 1,
            "vision_heads": 2,
            "vision_mlp_dim": 32,
            "text_width": 16,
            "text_layers": 1,
            "text_heads": 2,
            "text_mlp_dim": 32,
        },
        {
            "input_shape": {"image": (-1, 32, 32, 3), "padding_mask": (-1, 32, 32)},
            "num_classes": 3,
            "class_names": ["zero", "one", "two"],
        },
        {"prompt_templates": ["{}", "digit {}"]},
    ),
}
# (model_name, format) -> the error that export gives (a regex), and why.
UNSUPPORTED: dict[tuple[str, str], str] = {
    # jax2onnx 0.13 converts DETR, but its outputs are wrong wherever the padding mask has
    # zeros (they match with an all-ones mask): the export's check refuses it.
    ("detr", "onnx"): "detr: the onnx export's outputs differ from the JAX model's",
}


def registered_models() -> dict[str, type]:
    found = {}
    for project in PROJECTS:
        found.update(importlib.import_module(f"{project}.models").MODELS)
    return found


def test_every_registered_model_has_an_export_case():
    assert sorted(CASES) == sorted(registered_models())


def random_variables(abstract, seed: int):
    """Random values in the shapes `model.init` would give, without compiling it: weights
    N(0, 0.3^2), scales 1 + N(0, 0.1^2), running variances in [0.5, 1.5]."""
    rng = np.random.default_rng(seed)
    flat, tree = jax.tree_util.tree_flatten_with_path(abstract)
    values = []
    for path, leaf in flat:
        name = jax.tree_util.keystr(path)
        if "'var'" in name:
            value = rng.uniform(0.5, 1.5, leaf.shape)
        elif "'scale'" in name:
            value = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
        else:
            value = 0.3 * rng.standard_normal(leaf.shape)
        values.append(jnp.asarray(value, leaf.dtype))
    return jax.tree.unflatten(tree, values)


def build_servable(name: str, seed: int = 0) -> export.Servable:
    """The case's model at its tiny size with random variables: no zero head."""
    from scenic.train_lib import trainer

    case = CASES[name]
    models = importlib.import_module(f"{case.project}.models").MODELS
    config = config_utils.load_config(case.config, f"{case.project}.configs")
    with config.unlocked():
        config.model_name = name
        config.model.update(case.model)
        config.update(case.top_level)
    config, model_cls = runner.resolve_config(config, models)
    model, dtype = trainer.build_model(model_cls, config, case.meta)
    init = lambda k, x: model.flax_model.init({"params": k, "dropout": k}, x, train=False)
    abstract = jax.eval_shape(init, jax.random.key(0), model.input_spec())
    return export.Servable(model, random_variables(abstract, seed), dtype, name)


def assert_close(got, expected):
    """Equal to 1e-5 of the largest output magnitude (leaf by leaf)."""
    got, expected = jax.tree.leaves(got), jax.tree.leaves(expected)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        e = np.asarray(e)
        assert np.abs(e).max() > 1e-3, "a trivially zero output proves nothing"
        np.testing.assert_allclose(np.asarray(g), e, rtol=1e-5, atol=1e-5 * np.abs(e).max())


def run_stablehlo(out, inputs):
    exported = jax.export.deserialize((out / "model.stablehlo").read_bytes())
    return exported.call(inputs)


def run_onnx(out, inputs):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    names = [i.name for i in session.get_inputs()]
    card = json.loads((out / "model_card.json").read_text())
    assert names == [i["name"] for i in card["inputs"]]
    feed = dict(zip(names, jax.tree.leaves(inputs)))
    return session.run([o["name"] for o in card["outputs"]], feed)


def run_savedmodel(out, inputs):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(out))
    card = json.loads((out / "model_card.json").read_text())
    feed = {i["name"]: tf.constant(x) for i, x in zip(card["inputs"], jax.tree.leaves(inputs))}
    result = loaded.signatures["serving_default"](**feed)
    return [result[o["name"]].numpy() for o in card["outputs"]]


RUNNERS = {"stablehlo": run_stablehlo, "onnx": run_onnx, "savedmodel": run_savedmodel}


def check_round_trip(servable, fmt, batch, tmp_path):
    out = tmp_path / f"{fmt}_{batch}"
    card = export.export(servable, fmt, out, batch=batch)
    assert sorted(card["files"]) == sorted(
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
    )
    assert card["check"]["verified"] and card["batch"] == (batch or "dynamic")
    # The batch the export checked itself on: the compiled executable is reused.
    size = export.DYNAMIC_BATCH_SIZE if batch is None else batch
    inputs = export.sample_inputs(servable.input_spec(size), seed=1)
    assert_close(RUNNERS[fmt](out, inputs), servable(inputs))
    leading = [i["shape"][0] for i in card["inputs"] + card["outputs"]]
    assert leading == [batch] * len(leading)  # None (JSON null) for a dynamic batch
    return card


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_model_exports(name, tmp_path):
    """StableHLO (dynamic batch, cpu + cuda) of every model, ONNX (dynamic batch) of every
    model but the head variants."""
    servable = build_servable(name)
    # A multi-label / multi-head model is its classification model's module with another
    # head and loss: its ONNX conversion is that model's (kept out to save test time).
    head_variant = "multilabel" in name or "multihead" in name
    for fmt in ("stablehlo",) if head_variant else ("stablehlo", "onnx"):
        if (name, fmt) in UNSUPPORTED:
            before = sorted(tmp_path.iterdir())
            with pytest.raises(export.ExportError, match=UNSUPPORTED[name, fmt]):
                export.export(servable, fmt, tmp_path / fmt, batch=None)
            assert sorted(tmp_path.iterdir()) == before  # nothing written, no staging left
            continue
        card = check_round_trip(servable, fmt, None, tmp_path)
        if fmt == "stablehlo":
            assert card["platforms"] == ["cpu", "cuda"]
            data = (tmp_path / "stablehlo_None" / "model.stablehlo").read_bytes()
            assert jax.export.deserialize(data).platforms == ("cpu", "cuda")


@pytest.mark.parametrize("name", ["vit_classification", "vivit_classification"])
def test_vit_and_vivit_round_trip_in_every_format(name, tmp_path):
    """With test_every_model_exports (dynamic StableHLO and ONNX): all three formats, fixed
    and dynamic batch. SavedModel's serving signature takes and returns named tensors."""
    servable = build_servable(name)
    for fmt, batch in [("stablehlo", 2), ("onnx", 2), ("savedmodel", 2), ("savedmodel", None)]:
        card = check_round_trip(servable, fmt, batch, tmp_path)
        assert card["inputs"][0]["name"] == "inputs" and card["outputs"][0]["name"] == "outputs"


# ----------------------------------------------------------------------------- the CLI verb


def snapshot(directory):
    """Every file under `directory` with its size and modification time."""
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
    }


@pytest.fixture(scope="module")
def trained_workdir(reference_run):
    """The session's reference run (tests/conftest.py: the tiny ViT trained 60 steps on
    digits through the CLI, checkpoints at 30 and 60), shared: export only reads it."""
    return reference_run[0]


def trained_model(workdir, step=None):
    from scenic_baselines.models import MODELS

    context = runner.CommandContext("scenic-baselines", "scenic_baselines.configs", MODELS, [])
    return context.load_trained_model(workdir, step=step)


def test_export_verb_on_a_trained_workdir(trained_workdir, tmp_path, capsys):
    from scenic_baselines.cli import main

    out = tmp_path / "hlo"
    assert main(["export", "--workdir", str(trained_workdir), "--format", "stablehlo",
                 "--out", str(out)]) == 0  # fmt: skip
    assert f"vit_classification step 60 -> {out} (stablehlo, batch 1;" in capsys.readouterr().out
    card = json.loads((out / "model_card.json").read_text())
    final = json.loads((trained_workdir / "final_metrics.json").read_text())
    assert card["metrics"]["final_metrics"] == final and card["step"] == 60
    assert card["config"]["model"]["hidden_size"] == 16 and card["format"] == "stablehlo"
    assert card["inputs"] == [{"name": "inputs", "shape": [1, 16, 16, 1], "dtype": "float32"}]
    assert card["outputs"] == [{"name": "outputs", "shape": [1, 10], "dtype": "float32"}]
    assert card["preprocessing"]["dataset_name"] == "digits"
    assert card["preprocessing"]["dataset_configs"]["image_size"] == 16
    assert card["platforms"] == ["cpu", "cuda"] and card["batch"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["model.stablehlo", "model_card.json"]
    trained = trained_model(trained_workdir)
    x = export.sample_inputs(jax.ShapeDtypeStruct((1, 16, 16, 1), np.float32), seed=2)
    exported = jax.export.deserialize((out / "model.stablehlo").read_bytes())
    assert_close(exported.call(x), trained(x))

    # An earlier checkpoint, a dynamic batch, ONNX.
    out = tmp_path / "onnx"
    assert main(["export", "--workdir", str(trained_workdir), "--format", "onnx",
                 "--dynamic-batch", "--checkpoint", "30", "--out", str(out)]) == 0  # fmt: skip
    card = json.loads((out / "model_card.json").read_text())
    assert card["step"] == 30 and card["inputs"][0]["shape"] == [None, 16, 16, 1]
    x = export.sample_inputs(jax.ShapeDtypeStruct((5, 16, 16, 1), np.float32), seed=3)
    earlier = trained_model(trained_workdir, step=30)(x)
    assert_close(run_onnx(out, x), earlier)
    assert np.abs(np.asarray(earlier) - np.asarray(trained(x))).max() > 1e-6  # step 30, not 60


def test_export_verb_bad_input_is_one_line_and_nothing_written(
    trained_workdir, tmp_path, capsys, monkeypatch
):
    import jax2onnx

    from scenic_baselines.cli import main

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine\n")
    (tmp_path / "untrained").mkdir()

    def unconvertible(*args, **kwargs):
        raise NotImplementedError("[converter] No plugins registered for primitive 'foo'")

    workdir = str(trained_workdir)
    cases = [
        (["--workdir", str(tmp_path / "none")], "is not a directory of a training run"),
        (["--workdir", str(tmp_path / "untrained")], "has no checkpoints: not a trained run"),
        (["--format", "tflite"], "Unknown --format 'tflite'; known: stablehlo, savedmodel, onnx"),
        (["--batch", "2", "--dynamic-batch"], "Pass --batch N or --dynamic-batch, not both."),
        (["--batch", "0"], "--batch must be >= 1, got 0."),
        (["--platforms", "gpu"], "Unknown --platforms ['gpu']"),
        (["--out", str(tmp_path / "full")], "exists and is not empty"),
        (["--checkpoint", "7"], "No checkpoint of step 7"),
        (["--checkpoint", str(tmp_path)], "expected a step number or a step folder"),
        (["--format", "onnx"], "vit_classification cannot be exported to onnx with batch 1: "
         "NotImplementedError: [converter] No plugins registered for primitive 'foo'"),
    ]  # fmt: skip
    monkeypatch.setattr(jax2onnx, "to_onnx", unconvertible)
    before = snapshot(trained_workdir), snapshot(tmp_path)
    for extra, message in cases:
        argv = ["export", "--workdir", workdir, "--format", "stablehlo"]
        argv += ["--out", str(tmp_path / "out"), *extra]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith("scenic-baselines: error: ") and message in last, (extra, err)
        assert (snapshot(trained_workdir), snapshot(tmp_path)) == before, extra
