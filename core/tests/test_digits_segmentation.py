"""The built-in `digits_segmentation` data set: canvases and masks against scikit-learn's
digits re-placed by the test, the TFDS files written once and read back exactly, and the
batches of the TFDS segmentation reader."""

import functools
import itertools
import pathlib

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from scenic.dataset_lib import datasets, digits_segmentation  # noqa: E402

SMALL = {"train": 40, "test": 37}  # 37: the last eval batch of 16 is padded
THRESHOLD = 128


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return digits_segmentation.prepare(str(tmp_path_factory.mktemp("ds") / "1.0.0"), SMALL)


@functools.cache
def sklearn_digits():
    from sklearn.datasets import load_digits

    return load_digits()


def reference_canvas(canvas):
    """Image and mask rebuilt from scikit-learn's digits (scaled 16 -> 255, PIL bilinear)
    at the canvas's squares: class d + 1 where the digit's pixel is at least half of full
    scale, 0 elsewhere."""
    from PIL import Image

    digits = sklearn_digits()
    image = np.zeros((32, 32), np.uint8)
    mask = np.zeros((32, 32), np.int64)
    for (y0, x0, y1, x1), index in zip(canvas["squares"], canvas["digit_indices"]):
        assert y1 - y0 == x1 - x0 and 10 <= y1 - y0 <= 18
        pixels = np.round(digits.images[index] * 255 / 16).astype(np.uint8)
        patch = np.asarray(Image.fromarray(pixels).resize((x1 - x0, y1 - y0), Image.BILINEAR))
        image[y0:y1, x0:x1] = patch
        mask[y0:y1, x0:x1] = np.where(patch >= THRESHOLD, digits.target[index] + 1, 0)
    return image, mask


def test_canvases_masks_labels_and_split_disjointness():
    targets = sklearn_digits().target
    _, _, pools = digits_segmentation.digit_pools()
    assert not set(pools["train"]) & set(pools["test"])
    counts = np.zeros(11, np.int64)
    for split in ("train", "test"):
        used = set()
        for index in range(50):
            canvas = digits_segmentation.make_canvas(split, index)
            assert canvas["image"].shape == (32, 32, 3) and canvas["image"].dtype == np.uint8
            assert canvas["mask"].shape == (32, 32) and canvas["mask"].dtype == np.uint8
            assert 1 <= len(canvas["labels"]) <= 3
            np.testing.assert_array_equal(canvas["labels"], targets[canvas["digit_indices"]])
            squares = canvas["squares"]
            for a, b in itertools.combinations(squares, 2):  # disjoint squares
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
            image, mask = reference_canvas(canvas)
            for channel in range(3):
                np.testing.assert_array_equal(canvas["image"][..., channel], image)
            np.testing.assert_array_equal(canvas["mask"], mask)
            counts += np.bincount(mask.ravel(), minlength=11)
            used |= set(canvas["digit_indices"].tolist())
        assert used <= set(pools[split].tolist())
    assert (counts > 0).all()  # every digit class and the background occur


def test_generation_is_deterministic(digits_dir, tmp_path):
    first = digits_segmentation.make_canvas("test", 5)
    digits_segmentation.digit_pools.cache_clear()
    again = digits_segmentation.make_canvas("test", 5)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    other = digits_segmentation.prepare(str(tmp_path / "again"), SMALL)
    for split in SMALL:
        name = f"digits_segmentation-{split}.tfrecord-00000-of-00001"
        a = pathlib.Path(digits_dir, "digits_segmentation", "1.0.0", name).read_bytes()
        b = pathlib.Path(other, "digits_segmentation", "1.0.0", name).read_bytes()
        assert a == b
    assert digits_segmentation.prepare(other, SMALL) == other  # already there: reused
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no temp dir left


def test_prepare_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "stray.txt").write_text("x")
    with pytest.raises(FileExistsError, match="no prepared digits_segmentation"):
        digits_segmentation.prepare(str(tmp_path), SMALL)


def test_written_as_tfds_read_back_exactly(digits_dir):
    builder = tfds.builder("digits_segmentation", data_dir=digits_dir)
    assert {s: builder.info.splits[s].num_examples for s in SMALL} == SMALL
    assert builder.info.features["segmentation_mask"].encoding_format == "png"
    for split in SMALL:
        for i, example in enumerate(tfds.as_numpy(builder.as_dataset(split=split))):
            canvas = digits_segmentation.make_canvas(split, i)
            np.testing.assert_array_equal(example["image"], canvas["image"])
            np.testing.assert_array_equal(example["segmentation_mask"][..., 0], canvas["mask"])


def test_batches_of_the_segmentation_reader(digits_dir):
    build = datasets.get_dataset_builder("digits_segmentation")
    ds = build(batch_size=8, eval_batch_size=16, seed=0, data_dir=digits_dir, shuffle_buffer=40)
    meta = ds.meta_data
    assert meta["num_classes"] == 11 and meta["class_names"][:2] == ["background", "zero"]
    assert meta["input_shape"] == (-1, 32, 32, 3)
    assert (meta["num_train_examples"], meta["num_eval_examples"]) == (40, 37)

    # Eval: every test canvas once, in order, unchanged; 11 padding examples masked out.
    assert ds.num_eval_batches == 3
    batches = list(ds.eval_batches())
    assert len(batches) == 3
    joined = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    assert joined["inputs"].shape == (48, 32, 32, 3) and joined["label"].dtype == np.int32
    assert joined["batch_mask"].shape == (48, 32, 32)
    for i in range(37):
        canvas = digits_segmentation.make_canvas("test", i)
        np.testing.assert_allclose(joined["inputs"][i], canvas["image"] / 127.5 - 1, atol=1e-6)
        np.testing.assert_array_equal(joined["label"][i], canvas["mask"])
    np.testing.assert_array_equal(joined["batch_mask"][:37], 1.0)
    assert not joined["batch_mask"][37:].any() and not joined["label"][37:].any()

    # Train (no scale jitter, no flips by default): each example is a train canvas, whole.
    canvases = [digits_segmentation.make_canvas("train", i) for i in range(40)]
    keys = {canvas["mask"].tobytes(): canvas for canvas in canvases}
    stream = list(itertools.islice(ds.train_batches(0), 3))
    for batch in stream:
        assert batch["inputs"].shape == (8, 32, 32, 3)
        np.testing.assert_array_equal(batch["batch_mask"], 1.0)
        for image, label in zip(batch["inputs"], batch["label"]):
            canvas = keys[label.astype(np.uint8).tobytes()]
            np.testing.assert_allclose(image, canvas["image"] / 127.5 - 1, atol=1e-6)
    in_file_order = np.stack([c["mask"] for c in canvases[:8]])
    assert not np.array_equal(stream[0]["label"], in_file_order)  # shuffled
    resumed = next(ds.train_batches(2))
    np.testing.assert_array_equal(resumed["label"], stream[2]["label"])
    np.testing.assert_array_equal(resumed["inputs"], stream[2]["inputs"])
