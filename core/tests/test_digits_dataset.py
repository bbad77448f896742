"""The digits data set through its tf.data pipeline, and the registry."""

import numpy as np
import pytest

from scenic.dataset_lib import datasets, digits_dataset, get_dataset


def build(**kwargs):
    args = {"batch_size": 32, "eval_batch_size": 64, "seed": 0}
    args.update(kwargs)
    return get_dataset("digits", **args)


def test_split_is_fixed_and_stratified():
    train_x, train_y, test_x, test_y = digits_dataset.load_split(16, 0.2)
    assert train_x.shape == (1437, 16, 16, 1) and test_x.shape == (360, 16, 16, 1)
    np.testing.assert_array_equal(np.bincount(test_y), np.bincount(test_y))
    fractions = np.bincount(test_y) / np.bincount(np.concatenate([train_y, test_y]))
    assert np.all(np.abs(fractions - 0.2) < 0.02)
    again = digits_dataset.load_split.__wrapped__(16, 0.2)
    np.testing.assert_array_equal(again[3], test_y)


def test_train_batches_resume_exactly_and_split_over_hosts():
    ds = build()
    it = ds.train_batches(0)
    batches = [next(it) for _ in range(3)]
    assert batches[0]["inputs"].shape == (32, 16, 16, 1)
    assert batches[0]["label"].dtype == np.int32
    assert -1.0 <= batches[0]["inputs"].min() and batches[0]["inputs"].max() <= 1.0
    resumed = next(ds.train_batches(2))
    np.testing.assert_array_equal(resumed["inputs"], batches[2]["inputs"])
    np.testing.assert_array_equal(resumed["label"], batches[2]["label"])
    halves = [next(build(process_index=p, process_count=2).train_batches(2)) for p in range(2)]
    np.testing.assert_array_equal(
        np.concatenate([h["inputs"] for h in halves]), batches[2]["inputs"]
    )


def test_shift_augmentation_moves_images_by_at_most_one_pixel():
    plain = next(build(shift_pixels=0).train_batches(0))
    shifted = next(build(shift_pixels=1).train_batches(0))
    np.testing.assert_array_equal(plain["label"], shifted["label"])
    assert not np.array_equal(plain["inputs"], shifted["inputs"])
    for a, b in zip(plain["inputs"][:8], shifted["inputs"][:8]):
        pad = np.pad(a[..., 0], 1, constant_values=-1.0)
        matches = [
            np.array_equal(pad[1 + dy : 17 + dy, 1 + dx : 17 + dx], b[..., 0])
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        ]
        assert any(matches)


def test_eval_batches_cover_the_test_set_with_padding():
    ds = build(eval_batch_size=64)
    batches = list(ds.eval_batches())
    assert len(batches) == ds.num_eval_batches == 6  # 360 = 5 * 64 + 40
    assert sum(b["batch_mask"].sum() for b in batches) == 360
    assert batches[-1]["batch_mask"].sum() == 40


def test_three_channels_repeat_the_gray_level():
    gray, rgb = build(), build(channels=3)
    assert rgb.meta_data["input_shape"] == (-1, 16, 16, 3)
    for a, b in [(next(gray.train_batches(1)), next(rgb.train_batches(1))),
                 (next(iter(gray.eval_batches())), next(iter(rgb.eval_batches())))]:  # fmt: skip
        assert b["inputs"].shape == (*a["inputs"].shape[:-1], 3)
        np.testing.assert_array_equal(b["inputs"], np.repeat(a["inputs"], 3, -1))
        np.testing.assert_array_equal(b["label"], a["label"])
    with pytest.raises(ValueError, match="channels must be 1 or 3, got 2"):
        build(channels=2)


def test_registry_names_unknown_data_sets():
    with pytest.raises(datasets.UnknownDatasetError, match="Unknown data set 'digitz'.*'digits'"):
        datasets.get_dataset_builder("digitz")
    assert {"digits", "imagenet2012"} <= set(datasets.list_datasets())
