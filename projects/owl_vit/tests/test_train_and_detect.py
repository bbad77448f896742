"""The demo trains a few steps through the `scenic-owl-vit` CLI at tiny sizes, `eval`
reproduces its metrics, and `detect` runs on image files with text queries, the data set's
own classes and a one-shot image query, giving exactly the model's own top detections in
original pixels; with a Hugging Face folder too. Bad input is one line, exit 2, nothing
written."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from scenic.common_lib import detect_command
from scenic.dataset_lib import digits_detection
from scenic.model_lib import detection_postprocess
from scenic_baselines import clip
from scenic_owl_vit import detect
from scenic_owl_vit import model as owl_model
from scenic_owl_vit.cli import main

TINY = [
    "--config.model.vision_width=16",
    "--config.model.vision_layers=1",
    "--config.model.vision_heads=2",
    "--config.model.vision_mlp_dim=32",
    "--config.model.text_width=16",
    "--config.model.text_layers=1",
    "--config.model.text_heads=2",
    "--config.model.text_mlp_dim=32",
    "--config.model.embed_dim=16",
    "--config.batch_size=8",
    "--config.eval_batch_size=100",
    "--config.num_training_steps=2",
    "--config.log_summary_steps=1",
    "--config.log_eval_steps=2",
    "--config.checkpoint_steps=2",
    "--config.lr_configs.warmup_steps=1",
    "--config.dataset_configs.shuffle_buffer=10",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("owl")
    workdir = root / "run"
    # A 32 + 16 canvas data set: the full test split's 500 canvases cost seconds of COCO
    # evaluation in each of training's and `eval`'s passes, and test nothing more.
    data_dir = digits_detection.prepare(str(root / "data"), {"train": 32, "test": 16})
    argv = ["train", "--config", "owl_vit_digits", "--workdir", str(workdir), *TINY,
            f"--config.dataset_configs.data_dir={data_dir}"]  # fmt: skip
    assert main(argv) == 0
    images = root / "images"
    images.mkdir()
    for index in range(3):  # test canvases, one resized so that letterboxing shows
        image = digits_detection.make_canvas("test", index)["image"]
        if index == 2:
            image = np.asarray(Image.fromarray(image).resize((96, 40)))
        Image.fromarray(image).save(images / f"canvas{index}.png")
    return workdir, images


def test_demo_trains_and_eval_reproduces_its_metrics(run):
    workdir, _ = run
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert final["step"] == 2 and np.isfinite(final["loss"]) and 0.0 <= final["AP50"] <= 1.0
    assert main(["eval", "--workdir", str(workdir)]) == 0
    evaluated = json.loads((workdir / "eval_metrics.json").read_text())
    np.testing.assert_allclose(evaluated["loss"], final["loss"], rtol=1e-5)
    np.testing.assert_allclose(evaluated["AP"], final["AP"], rtol=1e-5, atol=1e-7)


def expected_detections(module, variables, image, mean, std, queries, top_k):
    """The model's own top-k on the letterboxed image, in original pixels (NumPy)."""
    canvas, _, (h, w) = detect_command.letterbox(image, module.image_size, mean, std)
    if queries is None:
        out = module.apply(variables, {"image": canvas[None]})
    else:
        out = module.apply(variables, canvas[None], query_embeddings=queries,
                           method=owl_model.OWLViT.__call__)  # fmt: skip
    scores, labels, boxes = detection_postprocess.top_k_detections(
        out["pred_logits"], out["pred_boxes"], top_k, softmax=False
    )
    boxes = detection_postprocess.boxes_to_original_pixels(
        boxes, (module.image_size,) * 2, np.array([[h, w]]), np.array([image.shape[:2]])
    )
    return np.asarray(scores[0]), np.asarray(labels[0]), np.asarray(boxes[0])


def check_outputs(out, images, expected_fn, names):
    for path in sorted(images.iterdir()):
        record = json.loads((out / f"{path.stem}.json").read_text())
        image = np.asarray(Image.open(path).convert("RGB"))
        assert (record["height"], record["width"]) == image.shape[:2]
        assert (out / f"{path.stem}.png").is_file()
        scores, labels, boxes = expected_fn(image)
        got = record["detections"]
        assert len(got) == len(scores) == 5
        np.testing.assert_allclose([d["score"] for d in got], scores, rtol=1e-4, atol=1e-6)
        assert [d["label"] for d in got] == labels.tolist()
        assert [d["label_name"] for d in got] == [names[i] for i in labels]
        np.testing.assert_allclose([d["box_xyxy"] for d in got], boxes, atol=0.02)


def test_detect_with_text_queries_and_the_data_set_classes(run, tmp_path, capsys):
    from scenic.common_lib import runner
    from scenic_owl_vit.models import MODELS

    workdir, images = run
    context = runner.CommandContext("scenic-owl-vit", "scenic_owl_vit.configs", MODELS, [])
    trained = context.load_trained_model(workdir)
    module, variables, model = trained.model.flax_model, trained.variables, trained.model
    mean, std = detect.TRAINED_MEAN, detect.TRAINED_STD
    common = ["--threshold", "0", "--top-k", "5", "--batch", "2"]

    out = tmp_path / "text"
    argv = ["detect", str(images), "--workdir", str(workdir), "--query", "seven",
            "--query", "a two", "--out", str(out), *common]  # fmt: skip
    assert main(argv) == 0
    queries = module.apply(variables, model.tokenize(["seven", "a two"]),
                           method=owl_model.OWLViT.text_embeddings)  # fmt: skip
    check_outputs(out, images,
                  lambda im: expected_detections(module, variables, im, mean, std, queries, 5),
                  ["seven", "a two"])  # fmt: skip

    out = tmp_path / "classes"
    assert main(["detect", str(images), "--weights", str(workdir), "--out", str(out), *common]) == 0
    check_outputs(out, images,
                  lambda im: expected_detections(module, variables, im, mean, std, None, 5),
                  digits_detection.CLASS_NAMES)  # fmt: skip
    assert "3 image(s)" in capsys.readouterr().out


def test_detect_with_an_image_query(run, tmp_path):
    workdir, images = run
    out = tmp_path / "oneshot"
    query = images / "canvas0.png"
    argv = ["detect", str(images / "canvas1.png"), "--workdir", str(workdir), "--query-image",
            str(query), "--query-box", "2,3,40,50", "--out", str(out), "--threshold", "0",
            "--top-k", "5"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "canvas1.json").read_text())
    assert len(record["detections"]) == 5
    assert {d["label_name"] for d in record["detections"]} == {f"like {query}"}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--query-box", "1,2,3,4"], "--query-box marks the object in --query-image"),
        (["--query", "a", "--query-image", "IMAGES/canvas0.png"], "not both"),
        (["--query-image", "IMAGES/canvas0.png", "--query-box", "0,0,500,5"], "not a box inside"),
        (["--query-image", "IMAGES/canvas0.png", "--query-box", "1,2"], "four numbers"),
        (["--top-k", "0"], "--top-k"),
    ],
)
def test_bad_input_is_one_line_and_nothing_written(run, tmp_path, capsys, extra, message):
    workdir, images = run
    out = tmp_path / "never"
    extra = [e.replace("IMAGES", str(images)) for e in extra]
    argv = ["detect", str(images), "--workdir", str(workdir), "--out", str(out), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_bad_weights_are_one_line(tmp_path, capsys):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    cases = [
        (["--weights", str(tmp_path / "missing")], "does not exist"),
        (["--weights", str(image), "--query", "cat"], "not a"),  # a PNG is no checkpoint
    ]
    for extra, message in cases:
        assert main(["detect", str(image), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_detect_with_a_hugging_face_folder(tmp_path):
    """Text queries through the folder's own vocab.json + merges.txt, the CLIP
    normalisation and grey padding, equal to the imported model's own detections."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from scenic_baselines import clip_tokenizer
    from scenic_owl_vit import weights

    chars = list(clip_tokenizer.bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    tower = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                 num_attention_heads=2)  # fmt: skip
    config = transformers.Owlv2Config(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=16, pad_token_id=0,
                         bos_token_id=len(vocab) - 2, eos_token_id=len(vocab) - 1, **tower),
        vision_config=dict(image_size=32, patch_size=8, **tower),
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.Owlv2ForObjectDetection(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.3)
    folder = tmp_path / "owlv2"
    hf.save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    images = tmp_path / "images"
    images.mkdir()
    for index in range(2):
        image = digits_detection.make_canvas("test", index)["image"]
        Image.fromarray(image[:, : 40 + 10 * index]).save(images / f"c{index}.png")

    out = tmp_path / "out"
    argv = ["detect", str(images), "--weights", str(folder), "--query", "two", "--query",
            "nine", "--threshold", "0", "--top-k", "5", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    module, params = weights.load_hf_owl_vit(folder)
    tokenizer = clip_tokenizer.ClipTokenizer.from_path(folder)
    queries = module.apply({"params": params}, tokenizer.tokenize(["two", "nine"], 16),
                           method=owl_model.OWLViT.text_embeddings)  # fmt: skip
    check_outputs(
        out, images,
        lambda im: expected_detections(module, {"params": params}, im, clip.CLIP_MEAN,
                                       clip.CLIP_STD, queries, 5),
        ["two", "nine"],
    )  # fmt: skip
    assert jax.device_count() >= 1
