"""The COCO-style detection pipeline and the built-in `digits_detection` data set.

coco/2017 runs under `tfds.testing.mock_data` with its real features and split sizes
(testdata/tfds_metadata/coco). The examples come from `as_dataset_fn` below rather than
mock_data's own generator, which draws every field of `objects` with a different length.
Every check of boxes is against a float64 NumPy reference written here.
"""

import itertools
import pathlib

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from scenic.dataset_lib import detection_dataset, digits_detection, tfds_classification  # noqa: E402
from scenic.model_lib import box_utils  # noqa: E402

METADATA = pathlib.Path(__file__).parent / "testdata" / "tfds_metadata"
MIN_BOX = detection_dataset.MIN_BOX_SIZE


# ---------------------------------------------------------------- NumPy references


def ref_clip_and_keep(boxes):
    """Float64 reference of the data cleaning: clip yxyx to [0, 1], keep boxes with area."""
    boxes = np.clip(np.asarray(boxes, np.float64), 0.0, 1.0)
    keep = (boxes[:, 2] - boxes[:, 0] >= MIN_BOX) & (boxes[:, 3] - boxes[:, 1] >= MIN_BOX)
    return boxes, keep


def ref_crop(boxes, image_hw, top, left, height, width):
    h, w = image_hw
    pix = np.asarray(boxes, np.float64) * [h, w, h, w] - [top, left, top, left]
    return ref_clip_and_keep(pix / [height, width, height, width])


def ref_resized_hw(hw, size):
    h, w = hw
    return (max(1, round(h * size / max(h, w))), max(1, round(w * size / max(h, w))))


# ---------------------------------------------------------------- mock coco/2017


def coco_examples(num=7, seed=0):
    """COCO-like examples with adversarial boxes: degenerate, inverted, out of [0, 1]."""
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(num):
        h, w = rng.integers(10, 60, size=2)
        n = [0, 3, 12][i % 3]  # no boxes, a few, more than max_boxes
        y0, x0 = rng.uniform(-0.2, 0.9, size=(2, n))
        bh, bw = rng.uniform(0.0, 0.6, size=(2, n))
        boxes = np.stack([y0, x0, y0 + bh, x0 + bw], axis=1)
        if n:
            boxes[0] = [0.5, 0.5, 0.5, 0.9]  # zero height
            boxes[-1] = [0.6, 0.7, 0.2, 0.9]  # inverted
        examples.append(
            {
                "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                "image/id": np.int64(100 + i),
                "image/filename": f"{i}.jpg",
                "objects": {
                    "bbox": boxes.astype(np.float32).reshape(-1, 4),
                    "label": rng.integers(0, 80, n).astype(np.int64),
                    "is_crowd": rng.random(n) < 0.4,
                    "area": rng.integers(1, 500, n).astype(np.int64),
                    "id": np.arange(n, dtype=np.int64),
                },
            }
        )
    return examples


COCO_EXAMPLES = coco_examples()


def coco_as_dataset(builder, split, decoders=None, read_config=None, **kwargs):
    """`builder.as_dataset` for mock_data: COCO_EXAMPLES, images PNG-encoded when skipped."""
    skip_image = isinstance((decoders or {}).get("image"), tfds.decode.SkipDecoding)
    examples = [
        {**ex, "image": tf.io.encode_png(ex["image"]).numpy()} if skip_image else ex
        for ex in COCO_EXAMPLES
    ]
    signature = tf.nest.map_structure(
        lambda x: tf.TensorSpec([None] * np.ndim(x), tf.as_dtype(np.asarray(x).dtype)),
        COCO_EXAMPLES[0],
    )
    signature["image"] = (
        tf.TensorSpec([], tf.string) if skip_image else tf.TensorSpec([None, None, 3], tf.uint8)
    )
    signature["image/filename"] = tf.TensorSpec([], tf.string)
    signature["objects"]["bbox"] = tf.TensorSpec([None, 4], tf.float32)
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)


@pytest.fixture
def mock_coco():
    with tfds.testing.mock_data(data_dir=str(METADATA), as_dataset_fn=coco_as_dataset):
        yield


def build_coco(**kwargs):
    args = dict(
        batch_size=4, eval_batch_size=4, seed=3, image_size=48, max_boxes=5, shuffle_buffer=8
    )
    return detection_dataset.build_coco_detection(**{**args, **kwargs})


def check_batch_format(batch, batch_size, image_size, max_boxes):
    b, s, n = batch_size, image_size, max_boxes
    label = batch["label"]
    assert (
        batch["inputs"]["image"].shape == (b, s, s, 3)
        and batch["inputs"]["image"].dtype == np.float32
    )
    assert (
        batch["inputs"]["padding_mask"].shape == (b, s, s)
        and batch["inputs"]["padding_mask"].dtype == np.float32
    )
    assert label["labels"].shape == (b, n) and label["labels"].dtype == np.int32
    assert label["boxes"].shape == (b, n, 4) and label["boxes"].dtype == np.float32
    assert label["box_mask"].shape == (b, n) and label["box_mask"].dtype == np.float32
    assert label["is_crowd"].shape == (b, n) and label["is_crowd"].dtype == bool
    assert label["area"].shape == (b, n) and label["image/id"].shape == (b,)
    assert label["size"].shape == (b, 2) and label["orig_size"].shape == (b, 2)
    assert -1.0 <= batch["inputs"]["image"].min() and batch["inputs"]["image"].max() <= 1.0
    real_examples = batch.get("batch_mask", np.ones(b)) == 1
    for key in ("image", "padding_mask"):
        assert not np.any(batch["inputs"][key][~real_examples])
    for i in np.flatnonzero(real_examples):
        hh, ww = label["size"][i]
        assert 1 <= hh <= s and 1 <= ww <= s
        expected_mask = np.zeros((s, s), np.float32)
        expected_mask[:hh, :ww] = 1.0
        np.testing.assert_array_equal(batch["inputs"]["padding_mask"][i], expected_mask)
        assert np.all(batch["inputs"]["image"][i][expected_mask == 0] == 0.0)
        real = label["box_mask"][i] == 1.0
        k = int(real.sum())
        np.testing.assert_array_equal(real, np.arange(n) < k)  # real boxes come first
        xyxy = box_utils.cxcywh_to_xyxy(label["boxes"][i][real].astype(np.float64))
        assert np.all(xyxy >= -1e-6)
        assert np.all(xyxy[:, [0, 2]] <= ww / s + 1e-6) and np.all(xyxy[:, [1, 3]] <= hh / s + 1e-6)
        assert np.all(label["boxes"][i][real][:, 2:] > 0)
        for key in ("boxes", "labels", "is_crowd", "area"):
            assert not np.any(label[key][i][~real])  # padding rows are zeros


def test_mock_coco_train_batch_format(mock_coco):
    ds = build_coco(batch_size=4)
    assert ds.meta_data["num_classes"] == 80 and len(ds.meta_data["class_names"]) == 80
    assert ds.meta_data["num_train_examples"] == 118287
    assert ds.meta_data["input_shape"] == {"image": (-1, 48, 48, 3), "padding_mask": (-1, 48, 48)}
    for batch in itertools.islice(ds.train_batches(0), 3):
        check_batch_format(batch, 4, 48, 5)
        assert set(batch["label"]["image/id"]) <= {ex["image/id"] for ex in COCO_EXAMPLES}


def test_mock_coco_eval_matches_numpy_reference(mock_coco):
    ds = build_coco(eval_batch_size=4, image_size=40, max_boxes=5)
    # 5,000 validation images in host batches of 4; mock serves 7, the rest is padding.
    assert ds.num_eval_batches == 1250
    batches = list(itertools.islice(ds.eval_batches(), 3))
    assert [b["batch_mask"].tolist() for b in batches] == [[1] * 4, [1, 1, 1, 0], [0] * 4]
    for batch in batches:
        check_batch_format(batch, 4, 40, 5)
    label = {k: np.concatenate([b["label"][k] for b in batches]) for k in batches[0]["label"]}
    for i, ex in enumerate(COCO_EXAMPLES):
        h, w = ex["image"].shape[:2]
        hh, ww = ref_resized_hw((h, w), 40)
        assert label["image/id"][i] == ex["image/id"]
        assert label["orig_size"][i].tolist() == [h, w] and label["size"][i].tolist() == [hh, ww]
        boxes, keep = ref_clip_and_keep(ex["objects"]["bbox"])
        kept = np.flatnonzero(keep)[:5]
        k = len(kept)
        assert label["box_mask"][i].sum() == k
        expected = box_utils.yxyx_to_cxcywh(boxes[kept] * [hh / 40, ww / 40, hh / 40, ww / 40])
        np.testing.assert_allclose(label["boxes"][i][:k], expected, atol=1e-6)
        np.testing.assert_array_equal(label["labels"][i][:k], ex["objects"]["label"][kept])
        np.testing.assert_array_equal(label["is_crowd"][i][:k], ex["objects"]["is_crowd"][kept])
        np.testing.assert_array_equal(label["area"][i][:k], ex["objects"]["area"][kept])
    assert label["is_crowd"].any()  # crowd flags did come through
    assert not np.any(label["box_mask"][len(COCO_EXAMPLES) :])


def test_train_flip_maps_cx_to_width_minus_cx(mock_coco):
    # Scale 1 keeps the whole image (no crop), so flip and no-flip differ only by the mirror.
    kwargs = dict(batch_size=8, min_scale=1.0, max_scale=1.0, seed=5)
    flipped = next(build_coco(flip=True, **kwargs).train_batches(0))
    plain = next(build_coco(flip=False, **kwargs).train_batches(0))
    np.testing.assert_array_equal(flipped["label"]["image/id"], plain["label"]["image/id"])
    num_mirrored = 0
    for i in range(8):
        hh, ww = plain["label"]["size"][i]
        content, other = (
            plain["inputs"]["image"][i, :hh, :ww],
            flipped["inputs"]["image"][i, :hh, :ww],
        )
        real = plain["label"]["box_mask"][i] == 1
        ref_boxes = plain["label"]["boxes"][i].astype(np.float64)
        if np.allclose(content, other, atol=1e-5) and not np.allclose(content, content[:, ::-1]):
            np.testing.assert_allclose(flipped["label"]["boxes"][i], ref_boxes, atol=1e-6)
            continue
        num_mirrored += 1
        np.testing.assert_allclose(other, content[:, ::-1], atol=1e-5)
        ref_boxes[real, 0] = ww / 48 - ref_boxes[real, 0]  # cx -> (image width) - cx
        np.testing.assert_allclose(flipped["label"]["boxes"][i], ref_boxes, atol=1e-6)
        if ww == 48:
            np.testing.assert_allclose(
                flipped["label"]["boxes"][i][real, 0],
                1 - plain["label"]["boxes"][i][real, 0],
                atol=1e-6,
            )
    assert 0 < num_mirrored < 8


def test_flip_left_right_matches_numpy():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    boxes = rng.uniform(0, 1, (6, 4)).astype(np.float32)
    out_image, out_boxes = detection_dataset.flip_left_right(tf.constant(image), tf.constant(boxes))
    np.testing.assert_array_equal(out_image.numpy(), image[:, ::-1])
    b = boxes.astype(np.float64)
    np.testing.assert_allclose(
        out_boxes.numpy(), np.stack([b[:, 0], 1 - b[:, 3], b[:, 2], 1 - b[:, 1]], axis=1), atol=1e-7
    )
    cxcywh = box_utils.yxyx_to_cxcywh(b)
    np.testing.assert_allclose(
        box_utils.yxyx_to_cxcywh(out_boxes.numpy().astype(np.float64))[:, 0],
        1 - cxcywh[:, 0],
        atol=1e-6,
    )


def test_crop_matches_float64_reference():
    rng = np.random.default_rng(2)
    for trial in range(30):
        h, w = rng.integers(4, 40, size=2)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ch, cw = rng.integers(1, h + 1), rng.integers(1, w + 1)
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        boxes = np.sort(rng.uniform(0, 1, (10, 2, 2)), axis=1).reshape(10, 4)[:, [0, 2, 1, 3]]
        # Adversarial: boxes outside the crop, touching its edges, straddling it, the crop.
        edges = np.array([top, left, top + ch, left + cw], np.float64) / [h, w, h, w]
        boxes[0] = [edges[2], edges[1], 1.0, edges[3]]  # below the crop, touching it
        boxes[1] = [0.0, 0.0, edges[0], edges[1]]  # above-left, touching a corner
        boxes[2] = edges  # exactly the crop
        boxes[3] = [0.0, 0.0, 1.0, 1.0]  # the whole image
        boxes = boxes.astype(np.float32)
        out_image, out_boxes, keep = detection_dataset.crop(
            tf.constant(image), tf.constant(boxes), int(top), int(left), int(ch), int(cw)
        )
        np.testing.assert_array_equal(out_image.numpy(), image[top : top + ch, left : left + cw])
        ref_boxes, ref_keep = ref_crop(boxes, (h, w), top, left, ch, cw)
        np.testing.assert_array_equal(keep.numpy(), ref_keep, err_msg=f"trial {trial}")
        np.testing.assert_allclose(out_boxes.numpy(), ref_boxes, atol=2e-6)
        assert not ref_keep[0] and not ref_keep[1] and ref_keep[2] and ref_keep[3]
        np.testing.assert_allclose(out_boxes.numpy()[2:4], [[0, 0, 1, 1]] * 2, atol=2e-6)


def test_train_stream_is_deterministic_and_resumes(mock_coco):
    ds = build_coco(batch_size=2, seed=7)
    first = list(itertools.islice(ds.train_batches(0), 4))
    resumed = next(ds.train_batches(3))  # a fresh pipeline, started where `first` was at 3
    tf.nest.map_structure(np.testing.assert_array_equal, first[3], resumed)
    other_seed = next(build_coco(batch_size=2, seed=8).train_batches(0))
    assert not np.array_equal(other_seed["inputs"]["image"], first[0]["inputs"]["image"])


def test_bad_arguments_and_unprepared_data(tmp_path):
    with pytest.raises(tfds_classification.DatasetNotPreparedError, match="coco/2017"):
        build_coco(data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="min_scale"):
        build_coco(data_dir=str(tmp_path), min_scale=2.0, max_scale=1.0)


LVIS_NAMES = ["a", "b", "c", "d", "e"]


def write_tiny_lvis(directory, labels, neg, not_exhaustive, names=LVIS_NAMES):
    """A TFDS data set with LVIS's features (train = validation): image i holds one box per
    entry of `labels[i]` and the category lists `neg[i]`, `not_exhaustive[i]`."""
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
            "image/id": np.int64,
            "neg_category_ids": tfds.features.Sequence(tfds.features.ClassLabel(names=names)),
            "not_exhaustive_category_ids": tfds.features.Sequence(
                tfds.features.ClassLabel(names=names)
            ),
            "objects": tfds.features.Sequence(
                {
                    "bbox": tfds.features.BBoxFeature(),
                    "label": tfds.features.ClassLabel(names=names),
                    "area": np.int64,
                    "id": np.int64,
                    "segmentation": tfds.features.Image(shape=(None, None, 1)),  # as in LVIS
                }
            ),
        }
    )

    def examples():
        for i, image_labels in enumerate(labels):
            n = len(image_labels)
            # Side by side, each 0.1 wide: every box survives the resize.
            x0 = 0.1 * np.arange(n, dtype=np.float32)
            bbox = np.stack([np.full(n, 0.1), x0, np.full(n, 0.5), x0 + 0.1], 1)
            yield (
                i,
                {
                    "image": np.full((8, 12, 3), 50 * i, np.uint8),
                    "image/id": i,
                    "neg_category_ids": neg[i],
                    "not_exhaustive_category_ids": not_exhaustive[i],
                    "objects": {
                        "bbox": bbox.astype(np.float32).reshape(n, 4),
                        "label": image_labels,
                        "area": [7] * n,
                        "id": list(range(n)),
                        "segmentation": np.zeros((n, 8, 12, 1), np.uint8),
                    },
                },
            )

    digits_detection.write_tfds_dataset(
        "tiny_lvis",
        "1.0.0",
        features,
        {"train": examples(), "validation": examples()},
        str(directory),
    )


def test_lvis_style_category_lists_are_carried(tmp_path):
    neg = [[1, 4], [], [0, 1, 2, 3, 4]]
    not_exhaustive = [[2], [0, 3], []]
    write_tiny_lvis(tmp_path, [[0], [1], [2]], neg, not_exhaustive)
    ds = build_coco(data_dir=str(tmp_path), tfds_name="tiny_lvis", eval_batch_size=4, max_boxes=2)
    assert ds.meta_data["class_names"] == LVIS_NAMES
    batch = next(ds.eval_batches())
    for i in range(3):
        for key, values in (
            ("neg_category_ids", neg),
            ("not_exhaustive_category_ids", not_exhaustive),
        ):
            assert batch["label"][key].shape == (4, 5)
            assert batch["label"][key][i].tolist() == values[i] + [-1] * (5 - len(values[i]))
    assert not batch["label"]["is_crowd"].any()
    np.testing.assert_array_equal(batch["label"]["labels"][:3, 0], [0, 1, 2])


def test_excluded_labels_leave_the_training_examples_only(tmp_path):
    labels = [[0, 1, 3], [1, 1], [2, 4, 1, 0], [3]]
    neg = [[2, 4], [0, 3], [], [1, 2, 4]]
    not_exhaustive = [[1], [2, 4], [3], []]
    write_tiny_lvis(tmp_path, labels, neg, not_exhaustive)
    excluded = [1, 4]
    args = dict(data_dir=str(tmp_path), tfds_name="tiny_lvis", batch_size=4, eval_batch_size=4,
                max_boxes=5, min_scale=1.0, max_scale=1.0, flip=False)  # fmt: skip
    plain = build_coco(**args)
    ds = build_coco(**args, exclude_train_labels=excluded)
    train = next(ds.train_batches())["label"]
    for row, image_id in enumerate(train["image/id"]):
        real = train["box_mask"][row] == 1
        kept = [label for label in labels[image_id] if label not in excluded]
        assert train["labels"][row][real].tolist() == kept, image_id
        for key, lists in (("neg_category_ids", neg), ("not_exhaustive_category_ids",
                                                       not_exhaustive)):  # fmt: skip
            ids = train[key][row]
            assert ids[ids >= 0].tolist() == [i for i in lists[image_id] if i not in excluded]
    # The kept boxes are the same boxes as without the exclusion.
    plain_train = next(plain.train_batches())["label"]
    for row, image_id in enumerate(plain_train["image/id"]):
        other = list(train["image/id"]).index(image_id)
        keep = [label not in excluded for label in labels[image_id]]
        boxes = plain_train["boxes"][row][: len(keep)][keep]
        np.testing.assert_array_equal(train["boxes"][other][: len(boxes)], boxes)
    # Evaluation keeps every class.
    eval_labels = next(ds.eval_batches())["label"]
    for row in range(4):
        real = eval_labels["box_mask"][row] == 1
        assert eval_labels["labels"][row][real].tolist() == labels[row]


def test_bad_excluded_labels_are_one_clear_error(tmp_path):
    write_tiny_lvis(tmp_path, [[0]], [[]], [[]])
    args = dict(data_dir=str(tmp_path), tfds_name="tiny_lvis")
    with pytest.raises(ValueError, match=r"label ids \[5\] are not in \[0, 5\)"):
        build_coco(**args, exclude_train_labels=[0, 5])
    with pytest.raises(ValueError, match="needs LVIS v1's 1203 classes; this data set has 5"):
        build_coco(**args, exclude_train_labels="lvis_rare")
    with pytest.raises(ValueError, match="expected 'lvis_rare' or a list"):
        build_coco(**args, exclude_train_labels="rare")


def test_random_negatives_top_up_the_lists_with_unannotated_classes(tmp_path):
    names = [f"class{i}" for i in range(12)]
    labels = [[0, 1, 3], [5], [2, 4, 1, 0], [7, 8]]
    neg = [[2, 4], [0, 3, 6, 9, 10, 11, 1], [], [1]]
    not_exhaustive = [[1], [2, 4], [3], [9, 10]]
    write_tiny_lvis(tmp_path, labels, neg, not_exhaustive, names)
    excluded, total = [6, 11], 5
    args = dict(data_dir=str(tmp_path), tfds_name="tiny_lvis", batch_size=4, eval_batch_size=4,
                max_boxes=5, min_scale=1.0, max_scale=1.0, flip=False,
                exclude_train_labels=excluded)  # fmt: skip
    ds = build_coco(**args, random_negatives=total)
    drawn_per_image = {i: [] for i in range(4)}
    for batch in itertools.islice(ds.train_batches(), 12):  # 12 epochs of the 4 images
        label = batch["label"]
        for row, image_id in enumerate(label["image/id"]):
            ids = label["neg_category_ids"][row]
            ids = ids[ids >= 0].tolist()
            verified = [i for i in neg[image_id] if i not in excluded]
            assert ids[: len(verified)] == verified  # LVIS's own negatives come first
            drawn = ids[len(verified) :]
            annotated = {*labels[image_id], *neg[image_id], *not_exhaustive[image_id]}
            candidates = set(range(12)) - annotated - set(excluded)
            assert set(drawn) <= candidates and len(set(drawn)) == len(drawn)
            assert len(drawn) == min(max(total - len(verified), 0), len(candidates))
            drawn_per_image[image_id].append(tuple(drawn))
    # Image 1 already has more than `total` verified negatives: nothing is added.
    assert set(drawn_per_image[1]) == {()}
    # The draws change from epoch to epoch and reach every candidate class.
    for image_id in (0, 2, 3):
        annotated = {*labels[image_id], *neg[image_id], *not_exhaustive[image_id]}
        candidates = set(range(12)) - annotated - set(excluded)
        assert len(set(drawn_per_image[image_id])) > 1
        assert set().union(*drawn_per_image[image_id]) == candidates
    # The same stream again: the draws are a function of the seed and the position.
    again = next(build_coco(**args, random_negatives=total).train_batches())
    first = next(ds.train_batches())
    np.testing.assert_array_equal(again["label"]["neg_category_ids"],
                                  first["label"]["neg_category_ids"])  # fmt: skip
    # Evaluation keeps the lists as annotated.
    eval_label = next(ds.eval_batches())["label"]
    for row in range(4):
        ids = eval_label["neg_category_ids"][row]
        assert ids[ids >= 0].tolist() == neg[row]


def test_random_negatives_need_category_lists(mock_coco):
    with pytest.raises(ValueError, match="neg_category_ids, which TFDS data set 'coco/2017'"):
        build_coco(random_negatives=50)
    with pytest.raises(ValueError, match="random_negatives must be >= 0"):
        build_coco(random_negatives=-1)


def synthetic_tile(rng, tile, rectangles, num_classes, neg, not_exhaustive):
    """`pad_to_canvas` of a tile x tile image holding `rectangles` [(y0, x0, y1, x1, label,
    value)] in pixels, each filled with its value, with LVIS-style category lists."""
    image = np.zeros((tile, tile, 3), np.float32)
    for y0, x0, y1, x1, _, value in rectangles:
        image[y0:y1, x0:x1] = value
    boxes = np.array([r[:4] for r in rectangles], np.float32).reshape(-1, 4) / tile
    n = len(rectangles)
    example = {
        "boxes": tf.constant(boxes),
        "labels": tf.constant([r[4] for r in rectangles], tf.int32, [n]),
        "is_crowd": tf.constant(rng.random(n) < 0.3, tf.bool, [n]),
        "area": tf.constant(rng.integers(1, 99, n), tf.float32, [n]),
        "image/id": tf.constant(int(rng.integers(1000)), tf.int64),
        "orig_size": tf.constant([tile, tile], tf.int32),
        "neg_category_ids": tf.constant(neg, tf.int32, [len(neg)]),
        "not_exhaustive_category_ids": tf.constant(not_exhaustive, tf.int32, [len(not_exhaustive)]),
    }
    return detection_dataset.pad_to_canvas(tf.constant(image), example, tile, 4, num_classes)


def stack(examples):
    return tf.nest.map_structure(lambda *xs: tf.stack(xs), *examples)


def test_a_one_by_one_mosaic_is_the_example_itself():
    rng = np.random.default_rng(0)
    tile = synthetic_tile(rng, 12, [(1, 2, 5, 9, 3, 40.0), (6, 0, 12, 4, 1, 90.0)], 6, [0, 5],
                          [2])  # fmt: skip
    mosaic = detection_dataset.assemble_mosaic(stack([tile]), n=1, image_size=12, max_boxes=4)
    for got, expected in zip(tf.nest.flatten(mosaic), tf.nest.flatten(tile)):
        np.testing.assert_array_equal(got.numpy(), expected.numpy())


def test_mosaic_tiles_images_moves_boxes_and_merges_category_lists():
    rng = np.random.default_rng(1)
    tile, size, num_classes, max_boxes = 12, 25, 8, 5  # 2 x 12 = 24: one row and column pad
    # Per tile: rectangles (pixels, label, value) and the category lists.
    layout = [
        ([(0, 0, 4, 6, 1, 10.0), (5, 6, 12, 12, 2, 20.0)], [3, 4, 7], [5]),
        ([], [2, 6], []),
        ([(2, 3, 9, 8, 3, 30.0)], [1], [4]),
        ([(1, 1, 3, 11, 6, 40.0), (4, 0, 12, 5, 0, 50.0), (8, 7, 11, 12, 2, 60.0)], [], [7]),
    ]
    tiles = [synthetic_tile(rng, tile, rects, num_classes, neg, ne) for rects, neg, ne in layout]
    mosaic = detection_dataset.assemble_mosaic(stack(tiles), 2, size, max_boxes)
    image = mosaic["inputs"]["image"].numpy()
    label = {k: v.numpy() for k, v in mosaic["label"].items()}
    expected_mask = np.zeros((size, size), np.float32)
    expected_mask[:24, :24] = 1.0
    np.testing.assert_array_equal(mosaic["inputs"]["padding_mask"].numpy(), expected_mask)
    objects = [(t, r) for t, entry in enumerate(layout) for r in entry[0]][:max_boxes]
    assert label["box_mask"].tolist() == [1.0] * max_boxes  # 6 objects, the first 5 kept
    assert label["labels"].tolist() == [r[4] for _, r in objects]
    for j, (t, (y0, x0, y1, x1, _, value)) in enumerate(objects):
        row, col = divmod(t, 2)
        expected = np.array([col * tile + x0, row * tile + y0, col * tile + x1,
                             row * tile + y1], np.float64)  # fmt: skip
        xyxy = box_utils.cxcywh_to_xyxy(label["boxes"][j].astype(np.float64)) * size
        np.testing.assert_allclose(xyxy, expected, atol=1e-4)
        x0p, y0p, x1p, y1p = expected.astype(int)
        np.testing.assert_allclose(image[y0p:y1p, x0p:x1p], value / 127.5 - 1.0, atol=1e-6)
    positives = {r[4] for entry in layout for r in entry[0]}  # all tiles, truncated or not
    not_exhaustive = {c for entry in layout for c in entry[2]}
    negatives = {c for entry in layout for c in entry[1]} - positives - not_exhaustive
    ids = label["neg_category_ids"]
    assert sorted(ids[ids >= 0].tolist()) == sorted(negatives)
    ids = label["not_exhaustive_category_ids"]
    assert sorted(ids[ids >= 0].tolist()) == sorted(not_exhaustive)
    assert label["size"].tolist() == [24, 24]


@pytest.mark.parametrize(
    ("sizes", "weights", "message"),
    [
        ((0,), None, r"mosaic_sizes=\(0,\): expected distinct sizes n in \[1, image_size=48\]"),
        ((2, 2), None, "expected distinct sizes"),
        ((1, 2), (1.0,), "one weight >= 0 per mosaic size"),
        ((1, 2), (0.0, 0.0), "not all zero"),
    ],
)
def test_bad_mosaic_settings_are_one_clear_error(mock_coco, sizes, weights, message):
    with pytest.raises(ValueError, match=message):
        build_coco(mosaic_sizes=sizes, mosaic_weights=weights)


def test_mosaic_stream_tiles_its_sources_and_resumes(tmp_path):
    labels = [[0, 1, 3], [1, 1], [2, 4, 1, 0], [3]]
    write_tiny_lvis(tmp_path, labels, [[2], [0], [], [1]], [[], [], [3], []])
    args = dict(data_dir=str(tmp_path), tfds_name="tiny_lvis", batch_size=4, eval_batch_size=4,
                image_size=48, max_boxes=16, min_scale=1.0, max_scale=1.0, flip=False)  # fmt: skip
    ds = build_coco(**args, mosaic_sizes=(2,))
    batches = list(itertools.islice(ds.train_batches(), 3))
    for batch in batches:
        for row in range(4):
            image = batch["inputs"]["image"][row]
            label = batch["label"]
            real = label["box_mask"][row] == 1
            centers = label["boxes"][row][real][:, :2] * 48
            for quadrant in range(4):
                top, left = 24 * (quadrant // 2), 24 * (quadrant % 2)
                # Source image i is filled with 50 * i: its tile says which image it is.
                source = int(np.rint((image[top, left, 0] + 1.0) * 127.5 / 50))
                inside = ((centers[:, 0] >= left) & (centers[:, 0] < left + 24)
                          & (centers[:, 1] >= top) & (centers[:, 1] < top + 24))  # fmt: skip
                assert label["labels"][row][real][inside].tolist() == labels[source]
    resumed = next(build_coco(**args, mosaic_sizes=(2,)).train_batches(2))
    for got, expected in zip(tf.nest.flatten(resumed), tf.nest.flatten(batches[2])):
        np.testing.assert_array_equal(got, expected)
    # Mixed sizes: 2 x 2 mosaics have image rows 24-39 in their lower tiles; a plain example
    # (an 8 x 12 image resized to 32 x 48) has none below row 32.
    mixed = build_coco(**args, mosaic_sizes=(1, 2), mosaic_weights=(1.0, 1.0))
    masks = np.concatenate([b["inputs"]["padding_mask"]
                            for b in itertools.islice(mixed.train_batches(), 8)])  # fmt: skip
    is_mosaic = masks[:, 36, 5] == 1
    assert np.all(masks[is_mosaic, 20, 5] == 0) and np.all(masks[~is_mosaic, 20, 5] == 1)
    assert 0.2 < is_mosaic.mean() < 0.8  # 32 draws of a fair coin


def test_lvis_rare_ids_are_the_337_rare_classes():
    rare = detection_dataset.excluded_label_ids("lvis_rare", 1203)
    assert len(rare) == 337 and len(set(rare)) == 337
    # The first rare classes of the LVIS v1 annotation files (label = LVIS id - 1): 13
    # applesauce, 14 apricot, 17 arctic_(type_of_shoe), 20 armoire, 21 armor, 30 ax, 31
    # baboon; the classes between them (1 aerosol_can, ...) are common or frequent.
    assert [i for i in rare if i <= 30] == [12, 13, 16, 19, 20, 29, 30]


# ---------------------------------------------------------------- digits_detection

SMALL = {"train": 48, "test": 37}


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return digits_detection.prepare(str(tmp_path_factory.mktemp("dd") / "1.0.0"), SMALL)


def check_tight_boxes(image, boxes_yxyx):
    """Boxes (pixel yxyx) are disjoint, cover every ink pixel, and each edge touches ink."""
    ink = image[..., 0] > 0
    covered = np.zeros_like(ink)
    for y0, x0, y1, x1 in boxes_yxyx:
        inside = ink[y0:y1, x0:x1]
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        assert not covered[y0:y1, x0:x1].any()
        covered[y0:y1, x0:x1] = True
    assert not np.any(ink & ~covered)


def test_digits_canvases_tight_boxes_labels_and_split_disjointness():
    _, labels, pools = digits_detection.digit_pools()
    assert not set(pools["train"]) & set(pools["test"])
    for split in ("train", "test"):
        used = set()
        for index in range(60):
            canvas = digits_detection.make_canvas(split, index)
            assert canvas["image"].shape == (64, 64, 3) and canvas["image"].dtype == np.uint8
            assert 1 <= len(canvas["labels"]) <= digits_detection.MAX_DIGITS
            check_tight_boxes(canvas["image"], canvas["boxes"])
            np.testing.assert_array_equal(canvas["labels"], labels[canvas["digit_indices"]])
            for (y0, x0, y1, x1), area in zip(canvas["boxes"], canvas["areas"]):
                assert area == np.count_nonzero(canvas["image"][y0:y1, x0:x1, 0])
            used |= set(canvas["digit_indices"].tolist())
        assert used <= set(pools[split].tolist())


def test_digits_generation_is_deterministic(digits_dir, tmp_path):
    first = digits_detection.make_canvas("test", 5)
    digits_detection.digit_pools.cache_clear()
    again = digits_detection.make_canvas("test", 5)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    other = digits_detection.prepare(str(tmp_path / "again"), SMALL)
    for split in SMALL:
        name = f"digits_detection-{split}.tfrecord-00000-of-00001"
        a = pathlib.Path(digits_dir, "digits_detection", "1.0.0", name).read_bytes()
        b = pathlib.Path(other, "digits_detection", "1.0.0", name).read_bytes()
        assert a == b
    assert digits_detection.prepare(other, SMALL) == other  # already there: reused
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # no temp dir left


def test_prepare_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "stray.txt").write_text("x")
    with pytest.raises(FileExistsError, match="no prepared digits_detection"):
        digits_detection.prepare(str(tmp_path), SMALL)


def test_digits_written_as_tfds_read_back_exactly(digits_dir):
    builder = tfds.builder("digits_detection", data_dir=digits_dir)
    assert builder.info.features["objects"]["label"].names == list(digits_detection.CLASS_NAMES)
    assert {s: builder.info.splits[s].num_examples for s in SMALL} == SMALL
    train_ids = set()
    for split in SMALL:
        for i, ex in enumerate(tfds.as_numpy(builder.as_dataset(split=split))):
            canvas = digits_detection.make_canvas(split, i)
            np.testing.assert_array_equal(ex["image"], canvas["image"])
            np.testing.assert_allclose(ex["objects"]["bbox"], canvas["boxes"] / 64, atol=1e-7)
            check_tight_boxes(ex["image"], np.round(ex["objects"]["bbox"] * 64).astype(int))
            np.testing.assert_array_equal(ex["objects"]["label"], canvas["labels"])
            if split == "train":
                train_ids.add(ex["image/id"])
            else:
                assert ex["image/id"] not in train_ids


def test_digits_detection_through_the_coco_reader(digits_dir):
    ds = digits_detection.build_digits_detection(
        batch_size=8,
        eval_batch_size=8,
        seed=0,
        data_dir=digits_dir,
        max_boxes=4,
        shuffle_buffer=16,
    )
    assert ds.meta_data["class_names"] == list(digits_detection.CLASS_NAMES)
    assert ds.meta_data["num_classes"] == 10 and ds.meta_data["num_eval_examples"] == 37
    batch = next(ds.eval_batches())
    check_batch_format(batch, 8, 64, 4)
    for i in range(8):
        canvas = digits_detection.make_canvas("test", i)
        np.testing.assert_allclose(
            batch["inputs"]["image"][i], canvas["image"] / 127.5 - 1, atol=1e-5
        )
        k = len(canvas["labels"])
        expected = box_utils.yxyx_to_cxcywh(canvas["boxes"] / 64.0)
        np.testing.assert_allclose(batch["label"]["boxes"][i][:k], expected, atol=1e-6)
        np.testing.assert_array_equal(batch["label"]["labels"][i][:k], canvas["labels"])
    # Train: after flip / scale / crop every ink pixel still lies in (a slightly grown) box,
    # and every box of a few pixels holds ink.
    for batch in itertools.islice(ds.train_batches(0), 3):
        check_batch_format(batch, 8, 64, 4)
        for i in range(8):
            ink = (batch["inputs"]["image"][i, ..., 0] > -1 + 2 * 60 / 255) & (
                batch["inputs"]["padding_mask"][i] == 1
            )
            covered = np.zeros_like(ink)
            real = batch["label"]["box_mask"][i] == 1
            for x0, y0, x1, y1 in box_utils.cxcywh_to_xyxy(batch["label"]["boxes"][i][real]) * 64:
                covered[
                    max(int(y0) - 1, 0) : int(np.ceil(y1)) + 1,
                    max(int(x0) - 1, 0) : int(np.ceil(x1)) + 1,
                ] = True
                if x1 - x0 >= 3 and y1 - y0 >= 3:
                    assert (
                        batch["inputs"]["image"][i, int(y0) : int(y1), int(x0) : int(x1)].max()
                        > -0.5
                    )
            assert not np.any(ink & ~covered)


def test_digits_eval_over_two_hosts_counts_each_image_once(digits_dir):
    seen, counts = [], set()
    for host in range(2):
        ds = digits_detection.build_digits_detection(
            batch_size=4,
            eval_batch_size=8,
            seed=0,
            data_dir=digits_dir,
            process_index=host,
            process_count=2,
        )
        batches = list(ds.eval_batches())
        counts.add((ds.num_eval_batches, len(batches)))
        for batch in batches:
            assert batch["inputs"]["image"].shape[0] == 4
            seen += batch["label"]["image/id"][batch["batch_mask"] == 1].tolist()
        assert batches[-1]["batch_mask"].sum() < 4  # a partial last batch
    # 37 test images over 2 hosts (19 + 18) in host batches of 4: 5 batches on each host.
    assert counts == {(5, 5)}
    assert sorted(seen) == list(range(1_000_001, 1_000_001 + 37))


def test_digits_train_is_deterministic_and_resumes(digits_dir):
    ds = digits_detection.build_digits_detection(
        batch_size=4, eval_batch_size=4, seed=1, data_dir=digits_dir, shuffle_buffer=16
    )
    first = list(itertools.islice(ds.train_batches(0), 3))
    resumed = next(ds.train_batches(2))
    tf.nest.map_structure(np.testing.assert_array_equal, first[2], resumed)
