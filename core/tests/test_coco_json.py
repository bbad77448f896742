"""`coco_json`: detection data from a COCO annotation file and an image folder.

Every test writes its own tiny COCO JSON and PNG / JPEG images. Boxes are checked against
the JSON's pixel boxes in float64 NumPy; on the digits_detection canvases exported as COCO
JSON the eval batches equal, bit for bit, what the TFDS reader makes of the same canvases.
Each bad input gives one error naming the annotation file and the record, at build time
(or, for an image whose data is truncated, when it is read). One test trains the DETR-shaped
stand-in of test_task_hooks.py for 2 steps through the real trainer.
"""

import copy
import itertools
import json
import re

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
PIL_Image = pytest.importorskip("PIL.Image")

from scenic.common_lib import config_utils, runner  # noqa: E402
from scenic.dataset_lib import coco_json, datasets, digits_detection  # noqa: E402
from scenic.model_lib import base_models, box_utils  # noqa: E402
from scenic.train_lib import trainer  # noqa: E402

CATEGORIES = [{"id": 42, "name": "cat"}, {"id": 3, "name": "bus"}, {"id": 7, "name": "dog"}]
CATEGORY_IDS = [3, 7, 42]  # contiguous label -> category id (sorted by id)
SIZES = [(30, 40), (40, 24), (17, 33), (50, 50), (21, 9), (36, 28), (12, 45)]  # (h, w)


def random_boxes(rng, h, w, n):
    """n COCO [x, y, w, h] pixel boxes, some touching or (within 1 px) crossing the edges."""
    boxes = []
    for j in range(n):
        bw, bh = rng.uniform(1.0, w * 0.6), rng.uniform(1.0, h * 0.6)
        x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        if j == 1:
            x = w - bw + 0.5  # half a pixel beyond the right edge: tolerated, clipped
        if j == 2:
            x, y = -0.75, 0.0
        boxes.append([round(float(v), 2) for v in (x, y, bw, bh)])
    return boxes


def write_split(folder, name, sizes, seed, first_id=1, formats=("PNG", "JPEG")):
    """Images (random pixels) and their annotation file `name`; returns (json path, data)."""
    rng = np.random.default_rng(seed)
    images_dir = folder / name.replace(".json", "")
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    for i, (h, w) in enumerate(sizes):
        image_id = first_id + 10 * i
        fmt = formats[i % len(formats)]
        file_name = f"{image_id:06d}.{'png' if fmt == 'PNG' else 'jpg'}"
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        PIL_Image.fromarray(pixels).save(images_dir / file_name, format=fmt)
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for j, box in enumerate(random_boxes(rng, h, w, [0, 2, 3, 5][i % 4])):
            annotations.append(
                {
                    "id": 1000 * image_id + j,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[(i + j) % 3],
                    "bbox": box,
                    "area": round(box[2] * box[3] * 0.7, 1),
                    "iscrowd": int(j == 2),
                    "segmentation": [[0, 0, 1, 1, 2, 2]],  # ignored
                }
            )
    data = {"info": {}, "images": images, "annotations": annotations, "categories": CATEGORIES}
    path = folder / name
    path.write_text(json.dumps(data))
    return str(path), data


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("coco")
    train, train_data = write_split(folder, "instances_train.json", SIZES, seed=0)
    val, val_data = write_split(folder, "instances_val.json", SIZES[:5], seed=1, first_id=5)
    args = dict(
        train_annotations=train,
        train_images=str(folder / "instances_train"),
        eval_annotations=val,
        eval_images=str(folder / "instances_val"),
    )
    return args, {"train": train_data, "eval": val_data}


def build(files, **kwargs):
    args = dict(batch_size=4, eval_batch_size=4, seed=3, image_size=48, max_boxes=4)
    return coco_json.build_coco_json(**{**args, **files, **kwargs})


def check_format(batch, b, s, n):
    label = batch["label"]
    assert (
        batch["inputs"]["image"].shape == (b, s, s, 3)
        and batch["inputs"]["image"].dtype == np.float32
    )
    assert batch["inputs"]["padding_mask"].shape == (b, s, s)
    assert label["boxes"].shape == (b, n, 4) and label["boxes"].dtype == np.float32
    assert label["labels"].shape == (b, n) and label["labels"].dtype == np.int32
    assert label["box_mask"].shape == (b, n) and label["is_crowd"].dtype == bool
    assert label["area"].shape == (b, n) and label["image/id"].dtype == np.int64
    assert label["orig_size"].shape == (b, 2) and label["size"].shape == (b, 2)


def reference_boxes(data, image_id):
    """The JSON's boxes of `image_id` in float64: clipped pixel xyxy, labels, crowd, area."""
    image = next(im for im in data["images"] if im["id"] == image_id)
    rows = [a for a in data["annotations"] if a["image_id"] == image_id]
    xywh = np.array([a["bbox"] for a in rows], np.float64).reshape(-1, 4)
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    xyxy = np.clip(xyxy, 0, [image["width"], image["height"]] * 2)
    labels = [CATEGORY_IDS.index(a["category_id"]) for a in rows]
    return xyxy, labels, [bool(a["iscrowd"]) for a in rows], [a["area"] for a in rows]


def to_original_pixels(label, i, image_size):
    """Canvas-normalised cxcywh of example i -> xyxy pixels of the original image (float64)."""
    real = label["box_mask"][i] == 1
    xyxy = box_utils.cxcywh_to_xyxy(label["boxes"][i][real].astype(np.float64)) * image_size
    (h, w), (hh, ww) = label["orig_size"][i], label["size"][i]
    return xyxy * [w / ww, h / hh, w / ww, h / hh], real


def joined(batches):
    return jax.tree.map(lambda *xs: np.concatenate(xs), *batches)


# ---------------------------------------------------------------- format and box math


def test_eval_batches_map_back_to_the_json_pixel_boxes(coco_files):
    files, data = coco_files
    ds = build(files, eval_batch_size=4, max_boxes=4)
    assert ds.meta_data["category_ids"] == CATEGORY_IDS
    assert ds.meta_data["class_names"] == ["bus", "dog", "cat"]
    assert ds.meta_data["num_classes"] == 3 and ds.meta_data["num_train_examples"] == 7
    assert ds.meta_data["num_eval_examples"] == 5 and ds.num_eval_batches == 2
    batches = list(ds.eval_batches())
    assert len(batches) == 2
    for batch in batches:
        check_format(batch, 4, 48, 4)
    all_ = joined(batches)
    assert all_["batch_mask"].tolist() == [1] * 5 + [0] * 3
    label = all_["label"]
    for i, image in enumerate(data["eval"]["images"]):
        assert label["image/id"][i] == image["id"]
        assert label["orig_size"][i].tolist() == [image["height"], image["width"]]
        xyxy, labels, crowd, area = reference_boxes(data["eval"], image["id"])
        k = min(len(labels), 4)  # the first max_boxes (none are degenerate here)
        pixels, real = to_original_pixels(label, i, 48)
        assert real.sum() == k
        np.testing.assert_allclose(pixels, xyxy[:k], atol=1e-4)
        # Labels map back to the file's category ids through meta_data.
        np.testing.assert_array_equal(label["labels"][i][:k], labels[:k])
        assert [CATEGORY_IDS[c] for c in label["labels"][i][:k]] == [
            a["category_id"] for a in data["eval"]["annotations"] if a["image_id"] == image["id"]
        ][:k]
        np.testing.assert_array_equal(label["is_crowd"][i][:k], crowd[:k])
        np.testing.assert_allclose(label["area"][i][:k], area[:k], rtol=1e-6)
        # The image: PNGs exactly, the resize of what was written (JPEG: lossy, so only PNG).
        if image["file_name"].endswith(".png"):
            path = f"{files['eval_images']}/{image['file_name']}"
            pixels_written = np.asarray(PIL_Image.open(path), np.float32)
            hh, ww = label["size"][i]
            resized = tf.image.resize(pixels_written, [hh, ww], method="bilinear").numpy()
            np.testing.assert_allclose(
                all_["inputs"]["image"][i, :hh, :ww], resized / 127.5 - 1, atol=1e-5
            )
    assert not np.any(all_["inputs"]["image"][5:]) and not np.any(label["box_mask"][5:])


def test_train_boxes_without_jitter_and_flip_match_the_json(coco_files):
    files, data = coco_files
    ds = build(files, batch_size=7, min_scale=1.0, max_scale=1.0, flip=False, max_boxes=5)
    batch = next(ds.train_batches(0))
    check_format(batch, 7, 48, 5)
    label = batch["label"]
    assert sorted(label["image/id"].tolist()) == [im["id"] for im in data["train"]["images"]]
    for i, image_id in enumerate(label["image/id"]):
        xyxy, labels, _, _ = reference_boxes(data["train"], image_id)
        pixels, real = to_original_pixels(label, i, 48)
        assert real.sum() == len(labels)
        np.testing.assert_allclose(pixels, xyxy, atol=1e-4)
        np.testing.assert_array_equal(label["labels"][i][real], labels)


def test_same_eval_batches_as_the_tfds_reader_on_the_same_canvases(tmp_path):
    sizes = {"train": 6, "test": 11}
    files = coco_json.export_digits_detection(str(tmp_path / "coco"), sizes)
    ours = build(files, image_size=40, max_boxes=4, eval_batch_size=4)
    tfds_dir = digits_detection.prepare(str(tmp_path / "tfds"), sizes)
    theirs = digits_detection.build_digits_detection(
        batch_size=4, eval_batch_size=4, seed=3, data_dir=tfds_dir, image_size=40, max_boxes=4
    )
    assert ours.meta_data["class_names"] == theirs.meta_data["class_names"]
    assert ours.meta_data["category_ids"] == list(range(1, 11))
    assert ours.num_eval_batches == theirs.num_eval_batches == 3
    for a, b in zip(ours.eval_batches(), theirs.eval_batches(), strict=True):
        jax.tree.map(np.testing.assert_array_equal, a, b)


# ---------------------------------------------------------------- determinism and hosts


def test_train_is_deterministic_resumes_and_splits_over_hosts(coco_files):
    files, _ = coco_files
    one = build(files, batch_size=4, seed=11)
    first = list(itertools.islice(one.train_batches(0), 5))  # 20 examples: past an epoch of 7
    resumed = next(one.train_batches(4))
    jax.tree.map(np.testing.assert_array_equal, first[4], resumed)
    epoch = np.concatenate([b["label"]["image/id"] for b in first])[:7]
    assert len(set(epoch.tolist())) == 7  # each image once per epoch
    other = next(build(files, batch_size=4, seed=12).train_batches(0))
    assert not np.array_equal(other["inputs"]["image"], first[0]["inputs"]["image"])
    # Two hosts: host p gets the p-th half of each global batch, augmented identically.
    halves = [
        list(
            itertools.islice(
                build(files, seed=11, process_index=p, process_count=2).train_batches(3), 2
            )
        )
        for p in range(2)
    ]
    for step in range(2):
        both = joined([halves[0][step], halves[1][step]])
        jax.tree.map(np.testing.assert_array_equal, both, first[3 + step])


def test_eval_over_two_hosts_counts_each_image_once(coco_files):
    files, data = coco_files
    seen, counts = [], set()
    for host in range(2):
        ds = build(files, eval_batch_size=4, process_index=host, process_count=2)
        batches = list(ds.eval_batches())
        counts.add((ds.num_eval_batches, len(batches)))
        for batch in batches:
            check_format(batch, 2, 48, 4)
            seen += batch["label"]["image/id"][batch["batch_mask"] == 1].tolist()
    assert counts == {(2, 2)}  # 5 images: 2 + 3, in host batches of 2
    assert seen == [im["id"] for im in data["eval"]["images"]]


# ---------------------------------------------------------------- bad input


def mutate(data, change):
    data = copy.deepcopy(data)
    change(data)
    return data


def ann(data, index):
    return data["annotations"][index]


# (case, change to the train JSON, expected message after "<path>: ")
BAD_JSON = [
    (
        "box beyond the image",
        lambda d: ann(d, 0).update(bbox=[30.0, 10.0, 11.5, 5.0]),
        r"annotation 11000 \(image 11, 000011.jpg\): bbox \[30.0, 10.0, 11.5, 5.0\] extends "
        r"beyond the 24x40 image\.",
    ),
    (
        "negative width",
        lambda d: ann(d, 1).update(bbox=[3, 4, -2, 5]),
        r"annotation 11001 \(image 11, 000011.jpg\): bbox \[3, 4, -2, 5\] has width -2 and "
        r"height 5; both must be > 0\.",
    ),
    (
        "zero height",
        lambda d: ann(d, 0).update(bbox=[3, 4, 2, 0]),
        r"annotation 11000 .*: bbox \[3, 4, 2, 0\] has width 2 and height 0; both must be > 0\.",
    ),
    (
        "unknown category",
        lambda d: ann(d, 2).update(category_id=5),
        r"annotation 21000 \(image 21, 000021.png\): category_id 5 is not in 'categories'\.",
    ),
    (
        "unknown image",
        lambda d: ann(d, 2).update(image_id=99),
        r"annotation 21000: image_id 99 is not in 'images'\.",
    ),
    (
        "duplicate annotation id",
        lambda d: ann(d, 3).update(id=11000),
        r"annotation 11000: duplicate annotation id 11000\.",
    ),
    (
        "duplicate image id",
        lambda d: d["images"][2].update(id=1),
        r"image 1: duplicate image id 1\.",
    ),
    (
        "duplicate category id",
        lambda d: d["categories"].append({"id": 7, "name": "wolf"}),
        r"category 7: duplicate category id 7\.",
    ),
    (
        "lacks a top-level key",
        lambda d: d.pop("annotations"),
        r"lacks key 'annotations' \(the list of annotations\)\.",
    ),
    (
        "annotation lacks bbox",
        lambda d: ann(d, 4).pop("bbox"),
        r"annotation 21002 lacks key 'bbox'\.",
    ),
    (
        "image lacks height",
        lambda d: d["images"][3].pop("height"),
        r"image 31 lacks key 'height'\.",
    ),
    (
        "bbox not 4 numbers",
        lambda d: ann(d, 0).update(bbox=[1, 2, 3]),
        r"annotation 11000: bbox must be 4 numbers, got \[1, 2, 3\]\.",
    ),
]


@pytest.mark.parametrize("case, change, message", BAD_JSON, ids=[c[0] for c in BAD_JSON])
def test_bad_json_gives_one_error_naming_file_and_record(
    coco_files, tmp_path, case, change, message
):
    files, data = coco_files
    bad = tmp_path / "instances_bad.json"
    bad.write_text(json.dumps(mutate(data["train"], change)))
    with pytest.raises(coco_json.CocoFormatError) as info:
        build({**files, "train_annotations": str(bad)})
    text = str(info.value)
    assert "\n" not in text
    assert re.fullmatch(re.escape(str(bad)) + ": " + message, text), text


def test_several_problems_are_counted(coco_files, tmp_path):
    files, data = coco_files

    def two_bad_boxes(d):
        ann(d, 0).update(bbox=[0, 0, 0, 1])
        ann(d, 5).update(bbox=[0, 0, -1, 1])

    bad = tmp_path / "instances_bad.json"
    bad.write_text(json.dumps(mutate(data["train"], two_bad_boxes)))
    with pytest.raises(
        coco_json.CocoFormatError, match=r"annotation 11000 .*\(1 more problem in this file\)$"
    ):
        build({**files, "train_annotations": str(bad)})


def test_unparsable_and_missing_annotation_files(coco_files, tmp_path):
    files, _ = coco_files
    broken = tmp_path / "instances_broken.json"
    broken.write_text('{"images": [], "annotations": [')
    with pytest.raises(
        coco_json.CocoFormatError,
        match=rf"^{re.escape(str(broken))}: not valid "
        r"JSON \(Expecting value: line 1 column 32",
    ):
        build({**files, "eval_annotations": str(broken)})
    missing = str(tmp_path / "nope.json")
    with pytest.raises(
        coco_json.CocoFormatError,
        match=rf"^{re.escape(missing)}: annotation file "
        "not found",
    ):
        build({**files, "train_annotations": missing})
    with pytest.raises(ValueError, match="train_images='/no/such' is not a folder"):
        build({**files, "train_images": "/no/such"})
    with pytest.raises(ValueError, match="eval_annotations is required"):
        build({**files, "eval_annotations": None})


def test_eval_categories_must_equal_train_categories(coco_files, tmp_path):
    files, data = coco_files
    bad = tmp_path / "instances_val2.json"
    bad.write_text(
        json.dumps(mutate(data["eval"], lambda d: d["categories"][0].update(name="lion")))
    )
    with pytest.raises(
        coco_json.CocoFormatError,
        match=r"categories differ from .*"
        r"instances_train.json's \(first difference: \(id, name\) \(42, 'lion'\) vs "
        r"\(42, 'cat'\)\)",
    ):
        build({**files, "eval_annotations": str(bad)})


def copy_split(files, tmp_path):
    """A private copy of the eval split's folder and JSON (the module's files stay intact)."""
    import shutil

    folder = tmp_path / "val"
    shutil.copytree(files["eval_images"], folder)
    return {**files, "eval_images": str(folder)}, folder


def test_missing_image_files_are_named_and_counted(coco_files, tmp_path):
    files, _ = coco_files
    files, folder = copy_split(files, tmp_path)
    (folder / "000015.jpg").unlink()
    with pytest.raises(coco_json.CocoImageError) as info:
        build(files)
    assert str(info.value) == (
        f"{files['eval_annotations']}: image 15 (000015.jpg): file {folder}/000015.jpg not found."
    )
    (folder / "000025.png").unlink()
    with pytest.raises(
        coco_json.CocoImageError,
        match=r"\(1 more of its 5 image files missing; is the folder right\?\)$",
    ):
        build(files)


def test_image_headers_are_checked_at_build_time(coco_files, tmp_path):
    files, folder = copy_split(files=coco_files[0], tmp_path=tmp_path)
    PIL_Image.new("RGB", (9, 9)).save(folder / "000025.png")  # JSON says 33x17
    with pytest.raises(
        coco_json.CocoImageError,
        match=re.escape(
            f"image 25 (000025.png): {folder}/000025.png is 9x9 pixels, the annotation file "
            "says 33x17."
        ),
    ):
        build(files)
    (folder / "000025.png").write_bytes(b"not an image at all")
    with pytest.raises(
        coco_json.CocoImageError,
        match=r"image 25 \(000025.png\): .* is not a "
        r"readable image",
    ):
        build(files)
    PIL_Image.new("RGB", (33, 17)).save(folder / "000025.png", format="TIFF")
    with pytest.raises(coco_json.CocoImageError, match="is a TIFF image; TensorFlow decodes"):
        build(files)


def test_truncated_image_is_named_when_read(coco_files, tmp_path):
    files, folder = copy_split(files=coco_files[0], tmp_path=tmp_path)
    path = folder / "000035.jpg"  # the 4th eval image: the second eval batch of 2
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    ds = build(files, eval_batch_size=2)  # the header is intact: building passes
    batches = ds.eval_batches()
    assert next(batches)["batch_mask"].sum() == 2  # the batch before it is fine
    with pytest.raises(coco_json.CocoImageError) as info:
        next(batches)
    assert str(info.value).startswith(
        f"{files['eval_annotations']}: image 35 (000035.jpg): {path} cannot be decoded ("
    )
    assert "\n" not in str(info.value) and "{{" not in str(info.value)
    # Train reads it too (every image is in the first epoch's two batches of 4).
    train = build(
        {
            **files,
            "train_annotations": files["eval_annotations"],
            "train_images": files["eval_images"],
        }
    )
    with pytest.raises(coco_json.CocoImageError, match=re.escape(f"{path} cannot be decoded")):
        list(itertools.islice(train.train_batches(0), 2))


def test_the_runner_reports_a_bad_file_before_any_workdir(coco_files, tmp_path):
    files, data = coco_files
    bad = tmp_path / "instances_bad.json"
    bad.write_text(json.dumps(mutate(data["train"], lambda d: ann(d, 0).update(category_id=8))))
    config, _ = runner.resolve_config(
        detection_config({**files, "train_annotations": str(bad)}, steps=2), MODELS
    )
    with pytest.raises(
        config_utils.ConfigError,
        match=r"^data set 'coco_json' \(dataset_configs\)"
        r": .*instances_bad.json: annotation 11000 \(image 11, 000011.jpg\): "
        r"category_id 8 is not in 'categories'\.$",
    ):
        runner.build_dataset(config)


# ---------------------------------------------------------------- through the trainer


class TinyDetector(nn.Module):
    """test_task_hooks.py's DETR-shaped stand-in: logits [B, Q, C + 1], boxes [B, Q, 4]."""

    num_classes: int  # with the no-object class
    num_queries: int = 4

    @nn.compact
    def __call__(self, inputs, train: bool = False):
        images = inputs["image"] * inputs["padding_mask"][..., None]
        batch, height, width, channels = images.shape
        pooled = images.reshape(batch, 8, height // 8, 8, width // 8, channels).mean((2, 4))
        hidden = nn.relu(nn.Dense(32)(pooled.reshape(batch, -1)))
        logits = nn.Dense(self.num_queries * self.num_classes)(hidden)
        boxes = nn.Dense(self.num_queries * 4)(hidden)
        return {
            "pred_logits": logits.reshape(batch, self.num_queries, self.num_classes),
            "pred_boxes": nn.sigmoid(boxes.reshape(batch, self.num_queries, 4)),
        }


class DetectionTest(base_models.DetectionModel):
    def build_flax_model(self):
        return TinyDetector(self.dataset_meta_data["num_classes"] + 1)


MODELS = {"detection": DetectionTest}


def detection_config(files, steps):
    return ml_collections.ConfigDict(
        {
            "model_name": "detection",
            "dataset_name": "coco_json",
            "dataset_configs": {**files, "image_size": 32, "max_boxes": 4},
            "batch_size": 8,
            "eval_batch_size": 8,
            "num_training_steps": steps,
            "log_summary_steps": steps,
            "log_eval_steps": steps,
            "checkpoint_steps": steps,
            "optimizer": {"name": "sgd"},
            "lr_configs": {"factors": "constant", "base_learning_rate": 0.05},
        }
    )


def test_trains_a_detector_through_the_runner_and_trainer(tmp_path):
    assert "coco_json" in datasets.list_datasets()
    files = coco_json.export_digits_detection(str(tmp_path / "data"), {"train": 16, "test": 10})
    config, model_cls = runner.resolve_config(detection_config(files, steps=2), MODELS)
    dataset = runner.build_dataset(config)
    assert dataset.num_eval_batches == 2
    result = trainer.train(
        model_cls=model_cls, dataset=dataset, config=config, workdir=str(tmp_path / "run")
    )
    assert result.completed and result.exit_code == 0 and result.step == 2
    for name in ("loss", "loss_class", "loss_bbox", "loss_giou"):
        assert np.isfinite(result.metrics[name]), name
