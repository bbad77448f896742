"""mnist, fashion_mnist, cifar10, cifar100 (in memory) and RandAugment in the TFDS pipeline.

`tfds.testing.mock_data` serves the same NUM_MOCK random examples for every split; the
metadata in testdata/tfds_metadata gives the real split sizes.
"""

import itertools
import pathlib

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from scenic.dataset_lib import dataset_utils  # noqa: E402
from scenic.dataset_lib import tfds_classification as tc  # noqa: E402

METADATA = pathlib.Path(__file__).parent / "testdata" / "tfds_metadata"
NUM_MOCK = 13  # odd: the two hosts' eval slices differ in size
SPECS = {  # builder, num_classes, image shape, train / test examples (TFDS split info)
    "mnist": (tc.build_mnist, 10, (28, 28, 1), 60000, 10000),
    "fashion_mnist": (tc.build_fashion_mnist, 10, (28, 28, 1), 60000, 10000),
    "cifar10": (tc.build_cifar10, 10, (32, 32, 3), 50000, 10000),
    "cifar100": (tc.build_cifar100, 100, (32, 32, 3), 50000, 10000),
}


@pytest.fixture(scope="module", autouse=True)
def mock_tfds():
    with tfds.testing.mock_data(num_examples=NUM_MOCK, data_dir=str(METADATA)):
        yield


def raw_split(name, split):
    data = tfds.as_numpy(tfds.builder(name).as_dataset(split=split, batch_size=-1))
    return data["image"], data["label"]


def to_uint8(inputs):
    """Inverts the pipeline's x / 127.5 - 1 exactly."""
    return np.round((inputs + 1.0) * 127.5).astype(np.uint8)


def is_pad_crop_of(image, original, pad):
    """Whether `image` is a (possibly flipped) crop of `original` zero-padded by `pad`."""
    height, width = original.shape[:2]
    padded = np.pad(original, ((pad, pad), (pad, pad), (0, 0)))
    for dy, dx in itertools.product(range(2 * pad + 1), repeat=2):
        crop = padded[dy : dy + height, dx : dx + width]
        if np.array_equal(image, crop) or np.array_equal(image, crop[:, ::-1]):
            return True
    return False


@pytest.mark.parametrize("name", sorted(SPECS))
def test_meta_data_train_batches_and_eval_padding(name):
    build, num_classes, shape, num_train, num_test = SPECS[name]
    train_images, train_labels = raw_split(name, "train")
    test_images, test_labels = raw_split(name, "test")
    hosts = [
        build(batch_size=8, eval_batch_size=2500, seed=4, process_index=p, process_count=2)
        for p in range(2)
    ]
    meta = hosts[0].meta_data
    assert meta["num_classes"] == num_classes
    assert meta["input_shape"] == (-1, *shape)
    assert (meta["num_train_examples"], meta["num_eval_examples"]) == (num_train, num_test)

    batches = list(itertools.islice(hosts[1].train_batches(0), 3))
    for step, batch in enumerate(batches):
        assert batch["inputs"].shape == (4, *shape) and batch["inputs"].dtype == np.float32
        assert batch["label"].dtype == np.int32
        assert ((0 <= batch["label"]) & (batch["label"] < num_classes)).all()
        indices, _ = dataset_utils.train_example_indices(
            step,
            num_examples=NUM_MOCK,
            global_batch_size=8,
            seed=4,
            process_index=1,
            process_count=2,
        )
        np.testing.assert_array_equal(batch["label"], train_labels[indices])
        images = to_uint8(batch["inputs"])
        if name.startswith("cifar"):  # pad-4 random crop + flip, and not all the identity
            assert all(is_pad_crop_of(x, train_images[i], 4) for x, i in zip(images, indices))
            assert not np.array_equal(images, train_images[indices])
        else:  # no augmentation by default
            np.testing.assert_array_equal(images, train_images[indices])

    # 10,000 test examples over 2 hosts in host batches of 1,250: 4 batches on each host,
    # then every mock example exactly once, in order, without augmentation.
    assert hosts[0].num_eval_batches == hosts[1].num_eval_batches == 4
    seen_images, seen_labels = [], []
    for host in hosts:
        eval_batches = list(host.eval_batches())
        assert len(eval_batches) == 4
        for batch in eval_batches:
            assert batch["inputs"].shape == (1250, *shape)
            real = batch["batch_mask"] == 1.0
            assert ((batch["batch_mask"] == 0.0) | real).all()
            assert not batch["inputs"][~real].any() and not batch["label"][~real].any()
            seen_images.append(to_uint8(batch["inputs"][real]))
            seen_labels.append(batch["label"][real])
    np.testing.assert_array_equal(np.concatenate(seen_images), test_images)
    np.testing.assert_array_equal(np.concatenate(seen_labels), test_labels)


def first_batches(ds, start_step, count):
    return list(itertools.islice(ds.train_batches(start_step), count))


def test_train_stream_is_deterministic_resumable_and_host_independent():
    plain = dict(batch_size=8, eval_batch_size=8)
    single = first_batches(tc.build_cifar10(seed=5, **plain), 0, 2)
    hosts = [
        first_batches(tc.build_cifar10(seed=5, process_index=p, process_count=2, **plain), 0, 2)
        for p in range(2)
    ]
    for step in range(2):  # host p's batch is the p-th half of the one-host batch
        joined = np.concatenate([hosts[0][step]["inputs"], hosts[1][step]["inputs"]])
        np.testing.assert_array_equal(joined, single[step]["inputs"])
    other_seed = first_batches(tc.build_cifar10(seed=6, **plain), 0, 1)[0]
    assert not np.array_equal(other_seed["inputs"], single[0]["inputs"])

    augmented = tc.build_cifar10(seed=5, randaugment_layers=2, randaugment_magnitude=12.0, **plain)
    stream = first_batches(augmented, 0, 4)
    resumed = first_batches(augmented, 2, 2)
    for a, b in zip(stream[2:], resumed):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        np.testing.assert_array_equal(a["label"], b["label"])
    for step in range(2):  # same examples, RandAugment on top of the pad crop
        np.testing.assert_array_equal(single[step]["label"], stream[step]["label"])
        assert not np.array_equal(single[step]["inputs"], stream[step]["inputs"])
        # RandAugment keeps uint8 pixels.
        inputs = stream[step]["inputs"]
        np.testing.assert_allclose((inputs + 1) * 127.5, to_uint8(inputs), atol=1e-4)


def test_streamed_imagenet_with_randaugment_resumes_exactly():
    ds = tc.build_imagenet2012(
        batch_size=4,
        eval_batch_size=4,
        seed=1,
        image_size=24,
        resize_size=28,
        shuffle_buffer=8,
        randaugment_layers=2,
    )
    stream = first_batches(ds, 0, 3)
    resumed = first_batches(ds, 1, 2)
    for a, b in zip(stream[1:], resumed):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert stream[0]["inputs"].shape == (4, 24, 24, 3)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="crop must be 'pad' or 'none'"):
        tc.build_cifar10(batch_size=8, eval_batch_size=8, seed=0, crop="inception")
    with pytest.raises(ValueError, match="crop must be one of"):
        tc.build_mnist(batch_size=8, eval_batch_size=8, seed=0, crop="random")
    with pytest.raises(ValueError, match="magnitude"):
        tc.build_mnist(batch_size=8, eval_batch_size=8, seed=0, randaugment_magnitude=40)
    with pytest.raises(ValueError, match="batch_size=6 must be divisible"):
        tc.build_cifar100(batch_size=6, eval_batch_size=8, seed=0, process_count=4)
