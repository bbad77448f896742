"""The 'image_text' data set (captions tokenized in the pipeline) and CLIP trained and
evaluated on it: each image's caption is one of its own, evaluation is retrieval over the
eval set with recalls checked against a brute-force count."""

import itertools
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from scenic.dataset_lib import digits_detection
from scenic_baselines import clip_contrastive, clip_tokenizer, image_text_dataset
from scenic_baselines.cli import main

CAPTIONS = {
    "train": [["a red square", "red"], ["two dogs", "dogs on grass", "a pair of dogs"],
              ["zero"], ["a cat", "cat"], ["sky"], ["a boat", "boat at sea"]],
    "val": [["a tree"], ["rain", "wet street"], ["a dog"], ["blue"], ["one more"]],
}  # fmt: skip


def value_of(split: str, i: int) -> int:
    """Each image is one grey value, so a batch row says which image it is."""
    return 20 * i + (10 if split == "val" else 0)


@pytest.fixture(scope="module")
def captions_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("captions")
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "image/id": np.int64,
            "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
        }
    )

    def examples(split):
        for i, texts in enumerate(CAPTIONS[split]):
            h, w = (6 + i, 10) if i % 2 else (12, 7 + i)
            image = np.full((h, w, 3), value_of(split, i), np.uint8)
            yield i, {"image": image, "image/id": i, "captions": {"text": texts}}

    splits = {split: examples(split) for split in CAPTIONS}
    digits_detection.write_tfds_dataset("tiny_captions", "1.0.0", features, splits, str(directory))
    return str(directory)


def build(captions_dir, **kwargs):
    args = dict(batch_size=4, eval_batch_size=4, seed=0, data_dir=captions_dir,
                tfds_name="tiny_captions", image_size=8, context_length=16, tokenizer="bytes",
                clip_normalization=False, shuffle_buffer=8)  # fmt: skip
    return image_text_dataset.build_image_text(**{**args, **kwargs})


def image_index(image, split):
    value = (image[0, 0, 0] + 1.0) * 127.5
    return int(np.rint((value - (10 if split == "val" else 0)) / 20))


def tokens(texts):
    return clip_tokenizer.ByteTokenizer().tokenize(texts, 16)


def test_training_pairs_each_image_with_one_of_its_captions(captions_dir):
    ds = build(captions_dir)
    chosen = {i: set() for i in range(6)}
    batches = list(itertools.islice(ds.train_batches(), 9))
    for batch in batches:
        assert batch["inputs"]["image"].shape == (4, 8, 8, 3)
        assert batch["inputs"]["text_tokens"].shape == (4, 16)
        for image, ids in zip(batch["inputs"]["image"], batch["inputs"]["text_tokens"]):
            i = image_index(image, "train")
            np.testing.assert_allclose(image, image[0, 0, 0])  # one grey value, crop or not
            own = tokens(CAPTIONS["train"][i])
            matches = [k for k in range(len(own)) if np.array_equal(ids, own[k])]
            assert matches, (i, ids)
            chosen[i].add(matches[0])
    assert chosen[1] == {0, 1, 2}  # 6 epochs: every caption of a 3-caption image drawn
    resumed = next(build(captions_dir).train_batches(4))
    for key in ("image", "text_tokens"):
        np.testing.assert_array_equal(resumed["inputs"][key], batches[4]["inputs"][key])


def test_evaluation_pairs_each_image_with_its_first_caption(captions_dir):
    ds = build(captions_dir)
    batches = list(ds.eval_batches())
    assert len(batches) == ds.num_eval_batches == 2
    mask = np.concatenate([b["batch_mask"] for b in batches])
    assert mask.tolist() == [1] * 5 + [0] * 3
    for row in range(5):
        batch = batches[row // 4]
        image = batch["inputs"]["image"][row % 4]
        assert image_index(image, "val") == row
        np.testing.assert_array_equal(
            batch["inputs"]["text_tokens"][row % 4], tokens([CAPTIONS["val"][row][0]])[0]
        )


def test_bad_keys_are_one_clear_error(captions_dir):
    with pytest.raises(ValueError, match=r"No feature 'captions/caption' .*\['text'\]"):
        build(captions_dir, text_key="captions/caption")
    with pytest.raises(ValueError, match="context_length >= 2"):
        build(captions_dir, context_length=1)


@pytest.mark.parametrize("seed", range(3))
def test_retrieval_recalls_match_a_brute_force_count(seed):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(12, 4))
    texts = images + rng.normal(scale=1.5, size=(12, 4))
    texts[3] = texts[5]  # a duplicate caption: a tie that counts against both
    metrics = clip_contrastive.retrieval_recalls(images, texts)
    for name, query, items in (("image_to_text", images, texts),
                               ("text_to_image", texts, images)):  # fmt: skip
        for k in (1, 5):
            hits = 0
            for i in range(12):
                scores = [float(query[i] @ items[j]) for j in range(12)]
                better = sum(1 for j in range(12) if j != i and scores[j] >= scores[i])
                hits += better < k
            assert metrics[f"{name}_R@{k}"] == pytest.approx(hits / 12)


def test_clip_trains_and_evaluates_retrieval_on_captions(captions_dir, tmp_path):
    workdir = tmp_path / "run"
    data = {"tfds_name": "tiny_captions", "data_dir": captions_dir, "image_size": 8,
            "context_length": 16, "tokenizer": "bytes", "clip_normalization": False,
            "shuffle_buffer": 8}  # fmt: skip
    argv = ["train", "--config", "clip_digits", "--workdir", str(workdir),
            "--config.dataset_name=image_text", f"--config.dataset_configs={data}",
            "--config.class_names=()", "--config.model.image_size=8",
            "--config.model.context_length=16", "--config.model.vision_layers=1",
            "--config.model.text_layers=1", "--config.batch_size=4", "--config.eval_batch_size=4",
            "--config.num_training_steps=3", "--config.log_eval_steps=3",
            "--config.lr_configs.warmup_steps=1", "--config.checkpoint_steps=3"]  # fmt: skip
    assert main(argv) == 0
    final = json.loads((workdir / "final_metrics.json").read_text())
    for direction in ("image_to_text", "text_to_image"):
        assert 0.0 <= final[f"{direction}_R@1"] <= 1.0
        assert final[f"{direction}_R@5"] == 1.0  # 5 eval pairs: every item is in the top 5
    assert final["step"] == 3
