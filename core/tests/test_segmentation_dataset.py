"""The TFDS segmentation pipeline: oxford_iiit_pet under `tfds.testing.mock_data` (its real
features and split sizes from testdata/tfds_metadata), a Cityscapes-style data set written
by the test in TFDS's format, and the train geometry against a NumPy reference.

Mock images are piecewise constant and their colour encodes the raw mask value, so a resize,
flip or crop that treated the image and its mask differently would show. Resizing follows
TensorFlow's documented conventions (float32 scale, half-pixel centres); the references
below re-derive the nearest-neighbour indices from them.
"""

import itertools
import pathlib

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from scenic.dataset_lib import datasets, digits_detection, tfds_classification  # noqa: E402
from scenic.dataset_lib import segmentation_dataset as sd  # noqa: E402

METADATA = pathlib.Path(__file__).parent / "testdata" / "tfds_metadata"
IGNORE = 255


# ---------------------------------------------------------------- NumPy references


def colour(raw, example_index):
    """The mock images' colour of raw mask value `raw` in example `example_index`."""
    raw = np.asarray(raw, np.int64)
    return np.stack(
        [60 * raw + 10, np.full_like(raw, 20 * example_index + 5), np.full_like(raw, 200)], -1
    ).astype(np.uint8)


def block_mask(rng, height, width, values):
    """A raw mask of random rectangular blocks (4-8 px) with values drawn from `values`."""
    rows = np.cumsum(rng.integers(4, 9, size=height))
    cols = np.cumsum(rng.integers(4, 9, size=width))
    row_block = np.searchsorted(rows, np.arange(height), side="right")
    col_block = np.searchsorted(cols, np.arange(width), side="right")
    table = rng.choice(values, size=(height, width))
    return table[row_block[:, None], col_block[None, :]].astype(np.uint8)


def nearest_indices(size, new_size):
    """TensorFlow's nearest-neighbour source indices (half-pixel centres, float32)."""
    scale = np.float32(size) / np.float32(new_size)
    index = np.floor((np.arange(new_size, dtype=np.float32) + np.float32(0.5)) * scale)
    return np.minimum(index.astype(np.int64), size - 1)


def resized_size(hw, scale):
    return tuple(max(int(np.round(np.float32(s) * np.float32(scale))), 1) for s in hw)


def fit(hw, canvas):
    return min(np.float32(canvas[0]) / np.float32(hw[0]), np.float32(canvas[1]) / np.float32(hw[1]))


def map_labels(raw, label_map):
    table = np.full(256, IGNORE, np.int64)
    for k, v in label_map.items():
        table[k] = v
    return table[raw]


def interior(raw):
    """Pixels whose 3x3 neighbourhood (clamped at the edges) holds one raw value: there a
    bilinear resize of the mock image reproduces the block's colour exactly."""
    padded = np.pad(raw, 1, mode="edge")
    same = np.ones(raw.shape, bool)
    for dy, dx in itertools.product(range(3), repeat=2):
        same &= padded[dy : dy + raw.shape[0], dx : dx + raw.shape[1]] == raw
    return same


def check_example(
    inputs,
    label,
    batch_mask,
    raw,
    example_index,
    label_map,
    canvas,
    scale,
    flip=False,
    top=0,
    left=0,
):
    """One output example against the reference geometry: resize `raw` by `scale`, flip,
    crop at (top, left) to at most `canvas`, pad; labels mapped, unmapped ones ignored."""
    nh, nw = resized_size(raw.shape, scale)
    iy, ix = nearest_indices(raw.shape[0], nh), nearest_indices(raw.shape[1], nw)
    if flip:
        ix = ix[::-1]
    ch, cw = min(nh, canvas[0]), min(nw, canvas[1])
    iy, ix = iy[top : top + ch], ix[left : left + cw]
    src = raw[iy[:, None], ix[None, :]]
    mapped = map_labels(src, label_map)
    real = mapped != IGNORE
    expected_label = np.zeros(canvas, np.int64)
    expected_label[:ch, :cw] = np.where(real, mapped, 0)
    expected_mask = np.zeros(canvas, np.float32)
    expected_mask[:ch, :cw] = real
    np.testing.assert_array_equal(label, expected_label)
    np.testing.assert_array_equal(batch_mask, expected_mask)
    # Image: exactly the block's colour wherever the source neighbourhood is constant; the
    # padding is 0. Bilinear samples between source pixels, so only those are checked.
    constant = interior(raw)[iy[:, None], ix[None, :]]
    expected = colour(src, example_index) / 127.5 - 1.0
    region = inputs[:ch, :cw]
    np.testing.assert_allclose(region[constant], expected[constant], atol=1e-4)
    assert constant.mean() > 0.3
    assert not inputs[ch:].any() and not inputs[:, cw:].any()


# ---------------------------------------------------------------- train_transform


@pytest.mark.parametrize(
    ("u", "hw"),
    [
        ((0.2, 0.9, 0.3, 0.7), (30, 45)),  # flipped, scaled up: a random crop of the canvas
        ((0.8, 0.1, 0.0, 0.99), (30, 45)),  # not flipped, scaled down: padded
        ((0.49, 0.5, 0.99, 0.0), (17, 9)),  # odd sizes, tall image
    ],
)
def test_train_transform_matches_the_reference_geometry(u, hw):
    rng = np.random.default_rng(int(100 * u[0]))
    raw = block_mask(rng, *hw, values=[0, 1, 2, 3])
    image = colour(raw, 3)
    canvas, min_scale, max_scale = (20, 24), 0.5, 2.0
    label_map = sd.PET_LABEL_MAP
    table = tf.constant(sd.label_table(label_map, 3))
    out = sd.train_transform(
        tf.constant(image),
        tf.gather(table, tf.constant(raw, tf.int32)),
        tf.constant(u, tf.float32),
        canvas=canvas,
        min_scale=min_scale,
        max_scale=max_scale,
        flip=True,
    )
    out = {k: v.numpy() for k, v in out.items()}
    scale = fit(hw, canvas) * (
        np.float32(min_scale) + np.float32(u[1]) * np.float32(max_scale - min_scale)
    )
    nh, nw = resized_size(hw, scale)
    ch, cw = min(nh, canvas[0]), min(nw, canvas[1])
    top = min(int(np.floor(np.float32(u[2]) * (nh - ch + 1))), nh - ch)
    left = min(int(np.floor(np.float32(u[3]) * (nw - cw + 1))), nw - cw)
    args = (raw, 3, label_map, canvas, scale)
    check_example(out["inputs"], out["label"], out["batch_mask"], *args, u[0] < 0.5, top, left)
    # Negative control: the same output is not the reference without the flip.
    if u[0] < 0.5:
        with pytest.raises(AssertionError):
            check_example(out["inputs"], out["label"], out["batch_mask"], *args, False, top, left)


def test_bad_arguments_are_one_clear_error():
    with pytest.raises(ValueError, match="image_size"):
        sd.canvas_size((32, 32, 3))
    with pytest.raises(ValueError, match="image_size"):
        sd.canvas_size("32")
    assert sd.canvas_size(7) == (7, 7) and sd.canvas_size([5, 9]) == (5, 9)
    with pytest.raises(ValueError, match="label_map entry 3 -> 7"):
        sd.label_table({3: 7}, 4)
    with pytest.raises(ValueError, match="min_scale"):
        sd.check_args(2.0, 1.0, 10)


# ---------------------------------------------------------------- oxford_iiit_pet (mock)

PET_SIZES = [(24, 24), (30, 45), (13, 9), (50, 20), (24, 24), (7, 31), (40, 40)]


def pet_examples():
    rng = np.random.default_rng(0)
    examples = []
    for k, (h, w) in enumerate(PET_SIZES):
        raw = block_mask(rng, h, w, values=[0, 1, 2, 2, 3])  # 0: not a trimap value
        examples.append(
            {"image": colour(raw, k), "segmentation_mask": raw[..., None], "file_name": f"{k}.jpg"}
        )
    return examples


PET_EXAMPLES = pet_examples()


def pet_as_dataset(builder, split, decoders=None, read_config=None, **kwargs):
    """`builder.as_dataset` for mock_data: PET_EXAMPLES, PNG-encoded where decoding is
    skipped (the pipeline decodes after its shuffle buffer)."""
    skipped = {k for k, v in (decoders or {}).items() if isinstance(v, tfds.decode.SkipDecoding)}
    examples = [
        {k: tf.io.encode_png(v).numpy() if k in skipped else v for k, v in ex.items()}
        for ex in PET_EXAMPLES
    ]
    signature = {
        "image": tf.TensorSpec([None, None, 3], tf.uint8),
        "segmentation_mask": tf.TensorSpec([None, None, 1], tf.uint8),
        "file_name": tf.TensorSpec([], tf.string),
    }
    for key in skipped:
        signature[key] = tf.TensorSpec([], tf.string)
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)


@pytest.fixture
def mock_pets():
    with tfds.testing.mock_data(data_dir=str(METADATA), as_dataset_fn=pet_as_dataset):
        yield


def test_oxford_iiit_pet_eval_batches(mock_pets):
    ds = datasets.get_dataset(
        "oxford_iiit_pet", batch_size=4, eval_batch_size=2000, seed=0, image_size=24
    )
    meta = ds.meta_data
    assert meta["num_classes"] == 3 and meta["class_names"] == ["pet", "background", "outline"]
    assert meta["input_shape"] == (-1, 24, 24, 3)
    assert (meta["num_train_examples"], meta["num_eval_examples"]) == (3680, 3669)
    assert ds.num_eval_batches == 2  # 3,669 test images in batches of 2,000
    batches = list(ds.eval_batches())
    assert len(batches) == 2
    batch = batches[0]
    assert batch["inputs"].shape == (2000, 24, 24, 3) and batch["inputs"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["batch_mask"].shape == (2000, 24, 24)
    # Trimap values 1, 2, 3 -> classes 0, 1, 2; raw 0 is ignored; everything fitted to 24.
    for k, example in enumerate(PET_EXAMPLES):
        raw = example["segmentation_mask"][..., 0]
        scale = fit(raw.shape, (24, 24))
        outputs = batch["inputs"][k], batch["label"][k], batch["batch_mask"][k]
        check_example(*outputs, raw, k, {1: 0, 2: 1, 3: 2}, (24, 24), scale)
    # The mock serves 7 images: the rest of the 3,669 slots are padding, masked out.
    assert not batch["batch_mask"][7:].any() and not batches[1]["batch_mask"].any()
    assert not batch["label"][7:].any() and not batch["inputs"][7:].any()


def test_oxford_iiit_pet_train_stream(mock_pets):
    ds = sd.build_oxford_iiit_pet(batch_size=4, eval_batch_size=4, seed=3, image_size=(16, 20))
    stream = list(itertools.islice(ds.train_batches(0), 4))
    for batch in stream:
        assert batch["inputs"].shape == (4, 16, 20, 3) and batch["label"].shape == (4, 16, 20)
        assert set(np.unique(batch["label"])) <= {0, 1, 2}
        assert not batch["label"][batch["batch_mask"] == 0].any()
        # The canvas padding (where the constant third channel is 0) is masked out.
        in_image = batch["inputs"][..., 2] != 0
        assert in_image.mean() > 0.3 and not batch["batch_mask"][~in_image].any()
        np.testing.assert_allclose(batch["inputs"][..., 2][in_image], 200 / 127.5 - 1, atol=1e-5)
    resumed = list(itertools.islice(ds.train_batches(2), 2))
    for a, b in zip(stream[2:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other_seed = next(
        sd.build_oxford_iiit_pet(
            batch_size=4, eval_batch_size=4, seed=4, image_size=(16, 20)
        ).train_batches(0)
    )
    assert not np.array_equal(other_seed["inputs"], stream[0]["inputs"])


# ---------------------------------------------------------------- Cityscapes-style


def write_tiny_cityscapes(folder, sizes, hw=(16, 32)):
    """A data set with cityscapes/semantic_segmentation's features (image_id, image_left,
    segmentation_label: label ids 0..33), written in TFDS's format."""
    features = tfds.features.FeaturesDict(
        {
            "image_id": tfds.features.Text(),
            "image_left": tfds.features.Image(shape=(*hw, 3), encoding_format="png"),
            "segmentation_label": tfds.features.Image(shape=(*hw, 1), encoding_format="png"),
        }
    )
    rng = np.random.default_rng(7)
    raws = {
        split: [rng.integers(0, 34, hw).astype(np.uint8) for _ in range(n)]
        for split, n in sizes.items()
    }

    def examples(split):
        for i, raw in enumerate(raws[split]):
            yield (
                i,
                {
                    "image_id": f"{split}_{i}",
                    "image_left": colour(raw, i),
                    "segmentation_label": raw[..., None],
                },
            )

    splits = {split: examples(split) for split in sizes}
    digits_detection.write_tfds_dataset("tiny_cityscapes", "1.0.0", features, splits, str(folder))
    return raws


def test_cityscapes_label_ids_to_train_ids_and_hosts(tmp_path):
    raws = write_tiny_cityscapes(tmp_path, {"train": 3, "validation": 5})
    hosts = [
        datasets.get_dataset(
            "cityscapes",
            batch_size=2,
            eval_batch_size=4,
            seed=0,
            process_index=p,
            process_count=2,
            data_dir=str(tmp_path),
            tfds_name="tiny_cityscapes",
            image_size=(16, 32),
        )
        for p in range(2)
    ]
    meta = hosts[0].meta_data
    assert meta["num_classes"] == 19 and meta["class_names"][0] == "road"
    assert hosts[0].num_eval_batches == hosts[1].num_eval_batches == 2  # 3 of 5 on host 0
    seen = []
    for host in hosts:
        batches = list(host.eval_batches())
        assert len(batches) == 2 and batches[0]["inputs"].shape == (2, 16, 32, 3)
        for batch in batches:
            for i in range(2):
                if batch["batch_mask"][i].any():
                    seen.append((batch["label"][i], batch["batch_mask"][i], batch["inputs"][i]))
    assert len(seen) == 5  # every validation image once, over both hosts
    # The cityscapesScripts table, written out here: id -> train id, the rest ignored.
    ids = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
    train_ids = np.full(256, -1)
    train_ids[ids] = np.arange(19)
    for (label, mask, _), raw in zip(seen, raws["validation"]):
        expected = train_ids[raw]
        np.testing.assert_array_equal(mask, expected >= 0)
        np.testing.assert_array_equal(label, np.maximum(expected, 0))
        assert 0 < mask.mean() < 1  # some void pixels (e.g. 0-6, 9, 10) are ignored
    np.testing.assert_allclose(seen[0][2], colour(raws["validation"][0], 0) / 127.5 - 1, atol=1e-6)
    train = next(hosts[1].train_batches(0))
    assert train["label"].shape == (1, 16, 32) and train["label"].max() < 19


def test_cityscapes_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(tfds_classification.DatasetNotPreparedError, match="prepared by hand"):
        sd.build_cityscapes(
            batch_size=2, eval_batch_size=2, seed=0, data_dir=str(tmp_path / "none")
        )
    write_tiny_cityscapes(tmp_path, {"train": 1, "validation": 1})
    with pytest.raises(ValueError, match="no feature 'segmentation_mask'"):
        sd.build_tfds_segmentation(
            batch_size=1,
            eval_batch_size=1,
            seed=0,
            data_dir=str(tmp_path),
            tfds_name="tiny_cityscapes",
            class_names=("a",),
            label_map={},
            image_key="image_left",
            image_size=8,
        )
