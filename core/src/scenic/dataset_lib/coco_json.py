"""`coco_json`: detection data as a COCO annotation file (`instances_*.json`) and an image folder.

The format researchers' own data comes in: `images` [{id, file_name, height, width}],
`annotations` [{id, image_id, category_id, bbox [x, y, w, h] in pixels, area, iscrowd}] and
`categories` [{id, name}] (other keys, such as `segmentation` or `info`, are ignored; a missing
`area` counts as w * h, a missing `iscrowd` as 0). Images are read from
`os.path.join(<images folder>, file_name)` by `tf.io` (so `gs://` folders work too).

Batches are `detection_dataset`'s, made by the same TF functions (see its docstring for every
key): labels are contiguous 0..C-1 in the order of `categories` sorted by id; `meta_data`
holds `num_classes`, `class_names` and `category_ids` (contiguous label -> the file's
category id, for result files), and `label['image/id']` is the file's image id. Train and
eval files must list the same categories.

Order and randomness (the Dataset contract): train batch k holds the examples of
`dataset_utils.train_example_indices(k, ...)` (a fresh permutation of the images each epoch,
host p taking the p-th slice of the global batch), augmented (flip, scale jitter, crop) with
randomness keyed by (seed, stream position); so `train_batches(k)` resumes at k without
reading the batches before it. Eval: host p reads its contiguous slice of the images in the
file's order, padded with `batch_mask` 0 to `num_eval_batches` full batches.

Bad input is found when the data set is built, before the runner creates a workdir: the JSON
(parse errors, missing keys, duplicate ids, unknown image or category ids, boxes of zero or
negative size or reaching more than `TOLERANCE` pixels beyond their image) raises
`CocoFormatError`, and every image file is opened to read its header (PIL: it must exist,
be a format TensorFlow decodes, and have the size the JSON gives) or `CocoImageError` is
raised. Each error is one line naming the annotation file and the record (plus how many more
problems of that kind the file has). Decoding every image would read the whole data set, so
an image whose header is fine but whose data is truncated or corrupt is found when it is
read: the batch that fails to decode is checked image by image and `CocoImageError` names
the file, instead of TensorFlow's anonymous decode error.

`python -m scenic.dataset_lib.coco_json --export-digits-detection DIR` writes the
`digits_detection` canvases in this format (a demo of reading your own data).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re

import numpy as np

from scenic.dataset_lib import dataset_utils, detection_dataset, record_batches

TOLERANCE = 1.0  # pixels a box may reach beyond its image (rounding in annotation tools)
TF_IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")  # what tf.io.decode_image reads


class CocoFormatError(dataset_utils.DataError):
    """An annotation file that does not parse or breaks the COCO detection format."""


class CocoImageError(dataset_utils.DataError):
    """An image file that is missing, unreadable, or not the size its annotation file says."""


@dataclasses.dataclass
class CocoSplit:
    """One annotation file, checked: per image (file order) and per kept annotation (grouped
    by image: image i's are rows `row_splits[i]:row_splits[i + 1]`)."""

    annotations: str
    category_ids: list[int]
    class_names: list[str]
    file_names: list[str]
    paths: list[str]
    image_ids: np.ndarray  # int64 [n]
    row_splits: np.ndarray  # int64 [n + 1]
    boxes: np.ndarray  # float32 [m, 4] yxyx normalised by the image's height / width
    labels: np.ndarray  # int32 [m] contiguous labels
    is_crowd: np.ndarray  # bool [m]
    area: np.ndarray  # float32 [m]

    def describe(self, index: int) -> str:
        return f"{self.annotations}: image {self.image_ids[index]} ({self.file_names[index]})"


# ---------------------------------------------------------------- checking the JSON


def _raise_first(problems: list[str], error=CocoFormatError, more=None):
    """Raises `error` with the first problem and how many more there are (`more(n)`)."""
    if problems:
        n = len(problems) - 1
        more = more or (lambda n: f"{n} more {'problem' if n == 1 else 'problems'} in this file")
        raise error(problems[0] + (f" ({more(n)})" if n else ""))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def load_annotation_file(path: str) -> dict:
    """The parsed JSON with its three lists; CocoFormatError naming the file otherwise."""
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = json.loads(f.read())
    except tf.errors.NotFoundError:
        raise CocoFormatError(f"{path}: annotation file not found.") from None
    except tf.errors.OpError as e:
        raise CocoFormatError(f"{path}: cannot read the annotation file ({e.message}).") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CocoFormatError(f"{path}: not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        got = type(data).__name__
        raise CocoFormatError(f"{path}: the top level must be a JSON object, got a {got}.")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise CocoFormatError(f"{path}: lacks key {key!r} (the list of {key}).")
        if not isinstance(data[key], list):
            got = type(data[key]).__name__
            raise CocoFormatError(f"{path}: key {key!r} must hold a list, got a {got}.")
    return data


def _records(path: str, items: list, kind: str, required: dict[str, tuple]):
    """(where, record) of each item; problems for non-objects, missing keys and wrong types."""
    problems, good = [], []
    for i, item in enumerate(items):
        where = f"{path}: {kind} at index {i}"
        if not isinstance(item, dict):
            problems.append(f"{where} is not a JSON object.")
            continue
        if _is_int(item.get("id")):
            where = f"{path}: {kind} {item['id']}"
        missing = [key for key in required if key not in item]
        if missing:
            problems.append(f"{where} lacks key {missing[0]!r}.")
            continue
        bad = [key for key, check in required.items() if not check[0](item[key])]
        if bad:
            key = bad[0]
            problems.append(f"{where}: {key} must be {required[key][1]}, got {item[key]!r}.")
            continue
        good.append((where, item))
    return problems, good


def _duplicates(records, kind: str) -> list[str]:
    seen, problems = set(), []
    for where, item in records:
        if item["id"] in seen:
            problems.append(f"{where}: duplicate {kind} id {item['id']}.")
        seen.add(item["id"])
    return problems


INT = (_is_int, "an integer")
POSITIVE = (lambda v: _is_int(v) and v > 0, "a positive integer")
STRING = (lambda v: isinstance(v, str) and v != "", "a non-empty string")
BOX = (lambda v: isinstance(v, list) and len(v) == 4 and all(map(_is_number, v)), "4 numbers")


def check_box(bbox, width: int, height: int) -> str | None:
    """Why a COCO [x, y, w, h] box cannot be used on a `width` x `height` image, or None."""
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return f"bbox {bbox} has width {w} and height {h}; both must be > 0."
    if x < -TOLERANCE or y < -TOLERANCE or x + w > width + TOLERANCE or y + h > height + TOLERANCE:
        return f"bbox {bbox} extends beyond the {width}x{height} image."
    return None


def read_split(annotations: str, images: str) -> CocoSplit:
    """Reads and checks one annotation file and its image folder (see the module docstring)."""
    data = load_annotation_file(annotations)
    problems, categories = _records(
        annotations, data["categories"], "category", {"id": INT, "name": STRING}
    )
    _raise_first(problems + _duplicates(categories, "category"))
    if not categories:
        raise CocoFormatError(f"{annotations}: 'categories' is empty.")
    categories = sorted((item["id"], item["name"]) for _, item in categories)
    label_of = {category_id: label for label, (category_id, _) in enumerate(categories)}

    image_keys = {"id": INT, "file_name": STRING, "height": POSITIVE, "width": POSITIVE}
    problems, image_records = _records(annotations, data["images"], "image", image_keys)
    _raise_first(problems + _duplicates(image_records, "image"))
    image_list = [item for _, item in image_records]
    index_of = {item["id"]: i for i, item in enumerate(image_list)}

    ann_keys = {"id": INT, "image_id": INT, "category_id": INT, "bbox": BOX}
    problems, ann_records = _records(annotations, data["annotations"], "annotation", ann_keys)
    problems += _duplicates(ann_records, "annotation")
    per_image = [[] for _ in image_list]
    for where, ann in ann_records:
        if ann["image_id"] not in index_of:
            problems.append(f"{where}: image_id {ann['image_id']} is not in 'images'.")
            continue
        image = image_list[index_of[ann["image_id"]]]
        where = f"{where} (image {image['id']}, {image['file_name']})"
        if ann["category_id"] not in label_of:
            problems.append(f"{where}: category_id {ann['category_id']} is not in 'categories'.")
            continue
        why = check_box(ann["bbox"], image["width"], image["height"])
        area, crowd = ann.get("area"), ann.get("iscrowd", 0)
        if why is None and area is not None and not (_is_number(area) and area >= 0):
            why = f"area must be a number >= 0, got {area!r}."
        if why is None and crowd not in (0, 1):
            why = f"iscrowd must be 0 or 1, got {crowd!r}."
        if why:
            problems.append(f"{where}: {why}")
            continue
        per_image[index_of[ann["image_id"]]].append(ann)
    _raise_first(problems)

    anns = [ann for group in per_image for ann in group]
    xywh = np.array([ann["bbox"] for ann in anns], np.float64).reshape(-1, 4)
    hw = np.array(
        [
            [image["height"], image["width"]]
            for image, group in zip(image_list, per_image)
            for _ in group
        ],
        np.float64,
    ).reshape(-1, 2)
    yxyx = np.stack(
        [xywh[:, 1], xywh[:, 0], xywh[:, 1] + xywh[:, 3], xywh[:, 0] + xywh[:, 2]], axis=1
    ) / np.tile(hw, 2)
    split = CocoSplit(
        annotations=annotations,
        category_ids=[category_id for category_id, _ in categories],
        class_names=[name for _, name in categories],
        file_names=[image["file_name"] for image in image_list],
        paths=[os.path.join(images, image["file_name"]) for image in image_list],
        image_ids=np.array([image["id"] for image in image_list], np.int64),
        row_splits=np.cumsum([0] + [len(group) for group in per_image]).astype(np.int64),
        boxes=yxyx.astype(np.float32),
        labels=np.array([label_of[ann["category_id"]] for ann in anns], np.int32),
        is_crowd=np.array([bool(ann.get("iscrowd", 0)) for ann in anns], bool),
        area=np.array(
            [ann.get("area", ann["bbox"][2] * ann["bbox"][3]) for ann in anns], np.float32
        ),
    )
    check_image_headers(split, [(image["width"], image["height"]) for image in image_list])
    return split


def check_image_headers(split: CocoSplit, sizes: list[tuple[int, int]]):
    """Reads every image's header: it must exist, be a format TF decodes, be the JSON's size."""
    import tensorflow as tf
    from PIL import Image, UnidentifiedImageError

    missing, problems = [], []
    for i, (path, (width, height)) in enumerate(zip(split.paths, sizes)):
        # Local files through `open`: PIL may read past the end of a short header, which
        # Python files answer with fewer bytes and GFile with an OutOfRangeError.
        remote = "://" in path
        try:
            with tf.io.gfile.GFile(path, "rb") if remote else open(path, "rb") as f:
                with Image.open(f) as image:
                    size, fmt = image.size, image.format
        except (FileNotFoundError, tf.errors.NotFoundError):
            missing.append(f"{split.describe(i)}: file {path} not found.")
            continue
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            problems.append(f"{split.describe(i)}: {path} is not a readable image ({e}).")
            continue
        except tf.errors.OpError as e:
            problems.append(f"{split.describe(i)}: {path} is not a readable image ({e.message}).")
            continue
        if fmt not in TF_IMAGE_FORMATS:
            problems.append(
                f"{split.describe(i)}: {path} is a {fmt} image; TensorFlow decodes "
                f"{', '.join(TF_IMAGE_FORMATS)} only."
            )
        elif size != (width, height):
            problems.append(
                f"{split.describe(i)}: {path} is {size[0]}x{size[1]} pixels, the annotation "
                f"file says {width}x{height}."
            )
    _raise_first(
        missing,
        CocoImageError,
        lambda n: f"{n} more of its {len(split.paths)} image files missing; is the folder right?",
    )
    _raise_first(problems, CocoImageError)


# ---------------------------------------------------------------- the input pipeline


def example_loader(split: CocoSplit):
    """`index -> decoded example` in `detection_dataset.decode_example`'s layout (TF)."""
    import tensorflow as tf

    paths = tf.constant(split.paths)
    image_ids, row_splits = tf.constant(split.image_ids), tf.constant(split.row_splits)
    objects = {
        "boxes": tf.constant(split.boxes.reshape(-1, 4)),
        "labels": tf.constant(split.labels),
        "is_crowd": tf.constant(split.is_crowd),
        "area": tf.constant(split.area),
    }

    def load(index):
        image = tf.io.decode_image(
            tf.io.read_file(paths[index]), channels=3, expand_animations=False
        )
        image.set_shape([None, None, 3])
        start, stop = row_splits[index], row_splits[index + 1]
        example = {key: value[start:stop] for key, value in objects.items()}
        example.update(image=image, orig_size=tf.shape(image)[:2])
        example["image/id"] = image_ids[index]
        return detection_dataset.clean_objects(example)

    return load


def first_undecodable(split: CocoSplit, indices) -> str | None:
    """The message naming the first of `split`'s images `indices` TF cannot decode, or None."""
    import tensorflow as tf

    for index in indices:
        path = split.paths[int(index)]
        try:
            tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        except tf.errors.OpError as e:
            reason = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "", e.message).strip()
            return f"{split.describe(int(index))}: {path} cannot be decoded ({reason})."
    return None


def name_undecodable_images(batches, split: CocoSplit, indices_of_batch):
    """Yields `batches`; when one fails in TF, raises CocoImageError naming its bad image.

    `indices_of_batch(k)`: the image indices of the k-th batch this iterator yields.
    """
    import tensorflow as tf

    k = 0
    try:
        for batch in batches:
            yield batch
            k += 1
    except tf.errors.OpError:
        message = first_undecodable(split, indices_of_batch(k))
        if message is None:
            raise
        raise CocoImageError(message) from None


def build_coco_json(
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    train_annotations: str | None = None,
    train_images: str | None = None,
    eval_annotations: str | None = None,
    eval_images: str | None = None,
    image_size: int = 640,
    max_boxes: int = 100,
    min_scale: float = 0.5,
    max_scale: float = 1.5,
    flip: bool = True,
) -> dataset_utils.Dataset:
    """Detection batches from COCO JSON files (train / eval) and their image folders."""
    import tensorflow as tf

    files = {
        "train_annotations": train_annotations,
        "train_images": train_images,
        "eval_annotations": eval_annotations,
        "eval_images": eval_images,
    }
    for name, value in files.items():
        if not value:
            raise ValueError(f"{name} is required (got {value!r}).")
    for name in ("train_images", "eval_images"):
        if not tf.io.gfile.isdir(files[name]):
            raise ValueError(f"{name}={files[name]!r} is not a folder.")
    detection_dataset.check_shape_args(image_size, max_boxes, min_scale, max_scale)
    dataset_utils.host_batch_size(batch_size, process_count)
    dataset_utils.host_batch_size(eval_batch_size, process_count, "eval_batch_size")
    train = read_split(train_annotations, train_images)
    evaluation = read_split(eval_annotations, eval_images)
    train_categories = list(zip(train.category_ids, train.class_names))
    eval_categories = list(zip(evaluation.category_ids, evaluation.class_names))
    if eval_categories != train_categories:
        differ = next(
            (a, b) for a, b in zip([*eval_categories, None], [*train_categories, None]) if a != b
        )
        raise CocoFormatError(
            f"{eval_annotations}: its categories differ from {train_annotations}'s (first "
            f"difference: (id, name) {differ[0]} vs {differ[1]}); both need the same."
        )
    if len(train.paths) == 0:
        raise CocoFormatError(f"{train_annotations}: 'images' is empty.")
    num_classes = len(train.category_ids)
    shape_args = dict(image_size=image_size, max_boxes=max_boxes, num_classes=num_classes)
    no_autograph = tf.autograph.experimental.do_not_convert
    load_train, load_eval = example_loader(train), example_loader(evaluation)

    def train_example(index, position):
        u = tf.random.stateless_uniform([4], seed=tf.stack([tf.cast(seed, tf.int64), position]))
        augment = dict(min_scale=min_scale, max_scale=max_scale, flip=flip)
        return detection_dataset.train_transform(load_train(index), u, **shape_args, **augment)

    train_stream = record_batches.record_train_batches(
        train.paths,
        no_autograph(train_example),
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        by_index=True,
    )

    def train_batches(start_step: int = 0):
        def indices_of_batch(k):
            return dataset_utils.train_example_indices(
                start_step + k,
                num_examples=len(train.paths),
                global_batch_size=batch_size,
                seed=seed,
                process_index=process_index,
                process_count=process_count,
            )[0]

        return name_undecodable_images(train_stream(start_step), train, indices_of_batch)

    host_range, host_eval_batch, n_eval_batches = record_batches.record_eval_plan(
        len(evaluation.paths), eval_batch_size, process_index, process_count
    )

    def eval_example(index):
        return detection_dataset.eval_transform(load_eval(index), **shape_args)

    def eval_batches():
        indices = np.arange(host_range.start, host_range.stop, dtype=np.int64)
        ds = tf.data.Dataset.from_tensor_slices(indices)
        ds = ds.map(no_autograph(eval_example), num_parallel_calls=tf.data.AUTOTUNE)
        batches = detection_dataset.padded_eval_batches(ds, host_eval_batch, n_eval_batches)
        return name_undecodable_images(
            batches, evaluation, lambda k: indices[k * host_eval_batch : (k + 1) * host_eval_batch]
        )

    meta_data = {
        "num_classes": num_classes,
        "class_names": train.class_names,
        "category_ids": train.category_ids,
        **detection_dataset.input_meta_data(image_size),
        "num_train_examples": len(train.paths),
        "num_eval_examples": len(evaluation.paths),
        "max_boxes": max_boxes,
    }
    return dataset_utils.Dataset(meta_data, train_batches, eval_batches, n_eval_batches)


# ---------------------------------------------------------------- digits_detection export


def export_digits_detection(out_dir: str, split_sizes: dict[str, int] | None = None) -> dict:
    """Writes digits_detection's canvases as COCO: `instances_{train,val}.json` and PNGs in
    `train/`, `val/` (its test split). Category ids are 1..10 (digit + 1), image ids and
    the canvases those of the TFDS data set. Returns `build_coco_json`'s file arguments."""
    from PIL import Image

    from scenic.dataset_lib import digits_detection as dd

    split_sizes = split_sizes or dd.SPLIT_SIZES
    args = {}
    for split, folder in (("train", "train"), ("test", "val")):
        os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
        images, annotations = [], []
        for index in range(split_sizes[split]):
            canvas = dd.make_canvas(split, index)
            image_id = dd._FIRST_IMAGE_ID[split] + index
            file_name = f"{image_id:09d}.png"
            Image.fromarray(canvas["image"]).save(os.path.join(out_dir, folder, file_name))
            images.append(
                {
                    "id": image_id,
                    "file_name": file_name,
                    "height": dd.CANVAS_SIZE,
                    "width": dd.CANVAS_SIZE,
                }
            )
            for j, ((y0, x0, y1, x1), label, area) in enumerate(
                zip(canvas["boxes"].tolist(), canvas["labels"].tolist(), canvas["areas"].tolist())
            ):
                annotations.append(
                    {
                        "id": image_id * dd.MAX_DIGITS + j,
                        "image_id": image_id,
                        "category_id": label + 1,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": area,
                        "iscrowd": 0,
                    }
                )
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(dd.CLASS_NAMES)]
        path = os.path.join(out_dir, f"instances_{folder}.json")
        with open(path, "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
        prefix = "train" if split == "train" else "eval"
        args.update(
            {f"{prefix}_annotations": path, f"{prefix}_images": os.path.join(out_dir, folder)}
        )
    return args


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scenic.dataset_lib.coco_json")
    parser.add_argument(
        "--export-digits-detection",
        metavar="DIR",
        required=True,
        help="write the digits_detection canvases as COCO JSON + PNG files into DIR",
    )
    parser.add_argument("--num-train", type=int, default=None, help="default: all 2000")
    parser.add_argument("--num-eval", type=int, default=None, help="default: all 500")
    args = parser.parse_args(argv)
    from scenic.dataset_lib import digits_detection

    sizes = dict(digits_detection.SPLIT_SIZES)
    sizes["train"] = args.num_train if args.num_train is not None else sizes["train"]
    sizes["test"] = args.num_eval if args.num_eval is not None else sizes["test"]
    written = export_digits_detection(args.export_digits_detection, sizes)
    print("dataset_name = 'coco_json'; dataset_configs:")
    for key, value in written.items():
        print(f"  {key} = {value!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
