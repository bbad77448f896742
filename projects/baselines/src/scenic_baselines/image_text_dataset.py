"""Image-caption pairs from TensorFlow Datasets for CLIP: data set name 'image_text'.

Reads any TFDS data set with an image and one caption or a list of captions per image
(`coco_captions`: `image`, `captions/text`, 5 captions an image), tokenized in the input
pipeline with CLIP's tokenizer (`tokenizer='clip'` + `tokenizer_path`, or 'bytes').

Batch format (B host batch, S = `image_size`, L = `context_length`):

  inputs:
    image        [B, S, S, 3] float32  pixels in [-1, 1], or CLIP's mean / std
                                       normalisation with `clip_normalization=True`
                                       (what OpenAI's weights expect)
    text_tokens  [B, L] int32          one caption of the image: a random one in training
                                       (each step draws again), the first one in evaluation
  batch_mask     [B] float32           1 for a real example, 0 for eval padding

Training: the shorter side resized to S, a random S x S crop (CLIP's own augmentation);
evaluation: a centre crop. The randomness is a function of (seed, host, position), so
`train_batches(start_step)` resumes the same stream.
"""

from __future__ import annotations

import numpy as np

from scenic.dataset_lib import dataset_utils, datasets
from scenic.dataset_lib.detection_dataset import split_size, tfds_eval_batches
from scenic.dataset_lib.tfds_classification import load_builder, resize_and_central_crop
from scenic_baselines.clip import CLIP_MEAN, CLIP_STD


def feature_at(features, key: str):
    """The TFDS feature at a '/'-separated path ('captions/text'), or a ValueError naming
    the features there are."""
    feature = features
    for part in key.split("/"):
        inner = getattr(feature, "feature", feature)  # through a Sequence
        if not hasattr(inner, "keys") or part not in inner.keys():
            names = sorted(inner.keys()) if hasattr(inner, "keys") else []
            raise ValueError(f"No feature {key!r} in the data set (at {part!r}: {names}).")
        feature = inner[part]
    return feature


def value_at(example: dict, key: str):
    for part in key.split("/"):
        example = example[part]
    return example


def random_square_crop(image, size: int, u):
    """The shorter side resized to `size` (bilinear), then the S x S crop at the position `u`
    (2 uniforms in [0, 1)); evaluation's centred crop is the core's
    `resize_and_central_crop`. Float pixels 0..255."""
    import tensorflow as tf

    hw = tf.cast(tf.shape(image)[:2], tf.float32)
    new_hw = tf.cast(tf.math.ceil(hw * size / tf.reduce_min(hw)), tf.int32)
    image = tf.image.resize(image, tf.maximum(new_hw, size), method="bilinear")
    room = tf.shape(image)[:2] - size
    top_left = tf.minimum(tf.cast(u * tf.cast(room + 1, tf.float32), tf.int32), room)
    return tf.ensure_shape(
        image[top_left[0] : top_left[0] + size, top_left[1] : top_left[1] + size],
        [size, size, 3],
    )


def normalize(image, clip_normalization: bool):
    import tensorflow as tf

    if clip_normalization:
        return (image / 255.0 - tf.constant(CLIP_MEAN)) / tf.constant(CLIP_STD)
    return image / 127.5 - 1.0


@datasets.register_dataset("image_text")
def build_image_text(
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    data_dir: str | None = None,
    tfds_name: str = "coco_captions",
    train_split: str = "train",
    eval_split: str = "val",
    image_key: str = "image",
    text_key: str = "captions/text",
    image_size: int = 224,
    context_length: int = 77,
    tokenizer: str = "clip",
    tokenizer_path: str | None = None,
    clip_normalization: bool = True,
    shuffle_buffer: int = 1000,
) -> dataset_utils.Dataset:
    """Builds this host's image-caption pipeline (module docstring)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from scenic_baselines import clip_tokenizer

    if image_size < 1 or context_length < 2:
        raise ValueError(
            f"image_size must be >= 1 and context_length >= 2, got {image_size}, {context_length}."
        )
    text_tokenizer = clip_tokenizer.from_config(tokenizer, tokenizer_path)
    builder = load_builder(tfds_name, data_dir)
    info = builder.info
    image_feature = feature_at(info.features, image_key)
    feature_at(info.features, text_key)
    host_batch = dataset_utils.host_batch_size(batch_size, process_count)
    host_eval_batch = dataset_utils.host_batch_size(
        eval_batch_size, process_count, "eval_batch_size"
    )
    num_train = split_size(info, train_split, tfds_name)
    num_eval = split_size(info, eval_split, tfds_name)
    decoders = {image_key: tfds.decode.SkipDecoding()} if "/" not in image_key else None

    def tokenize(text) -> np.ndarray:
        return text_tokenizer.tokenize([text.decode("utf-8")], context_length)[0]

    def caption_tokens(example, u):
        """Token ids `[L]` of one caption: the `u`-th of the list (u in [0, 1)), or the
        first with `u` None."""
        texts = tf.reshape(value_at(example, text_key), [-1])
        count = tf.shape(texts)[0]
        tf.debugging.assert_positive(count, message=f"an example without {text_key!r}")
        index = 0 if u is None else tf.minimum(tf.cast(u * tf.cast(count, tf.float32),
                                                        tf.int32), count - 1)  # fmt: skip
        tokens = tf.numpy_function(tokenize, [texts[index]], tf.int32, stateful=False)
        return tf.ensure_shape(tokens, [context_length])

    def image_of(example):
        image = value_at(example, image_key)
        if decoders is not None:
            image = image_feature.decode_example(image)
        return tf.cast(image[..., :3], tf.float32)

    def train_example(index, example):
        stream_seed = tf.stack([tf.cast(seed, tf.int64), index * process_count + process_index])
        u = tf.random.stateless_uniform([3], seed=stream_seed)
        image = random_square_crop(image_of(example), image_size, u[:2])
        return {
            "inputs": {
                "image": normalize(image, clip_normalization),
                "text_tokens": caption_tokens(example, u[2]),
            },
        }

    def eval_example(example):
        image = tf.ensure_shape(
            resize_and_central_crop(image_of(example), image_size, image_size),
            [image_size, image_size, 3],
        )
        return {
            "inputs": {
                "image": normalize(image, clip_normalization),
                "text_tokens": caption_tokens(example, None),
            },
            "batch_mask": tf.constant(1.0, tf.float32),
        }

    def train_batches(start_step: int = 0):
        return dataset_utils.tfds_train_batches(
            builder,
            train_split,
            host_batch=host_batch,
            start_step=start_step,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            shuffle_buffer=shuffle_buffer,
            train_example=train_example,
            decoders=decoders,
        )

    n_eval_batches, eval_batches = tfds_eval_batches(
        builder,
        eval_split,
        num_examples=num_eval,
        process_index=process_index,
        process_count=process_count,
        host_batch=host_eval_batch,
        eval_example=eval_example,
        decoders=decoders,
    )
    meta_data = {
        "input_shape": {
            "image": (-1, image_size, image_size, 3),
            "text_tokens": (-1, context_length),
        },
        "input_dtype": {"image": np.float32, "text_tokens": np.int32},
        "num_train_examples": num_train,
        "num_eval_examples": num_eval,
        "context_length": context_length,
    }
    return dataset_utils.Dataset(meta_data, train_batches, eval_batches, n_eval_batches)
