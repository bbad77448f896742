"""The TFDS image-classification pipeline on `tfds.testing.mock_data`."""

import itertools
import pathlib

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from scenic.dataset_lib import get_dataset, tfds_classification  # noqa: E402

METADATA = pathlib.Path(__file__).parent / "testdata" / "tfds_metadata"


def test_imagenet_pipeline_shapes_padding_and_hosts():
    with tfds.testing.mock_data(num_examples=10, data_dir=str(METADATA)):
        ds = get_dataset(
            "imagenet2012", batch_size=4, eval_batch_size=8, seed=0, image_size=32,
            resize_size=36, process_index=1, process_count=2, shuffle_buffer=16,
        )
        assert ds.meta_data["num_classes"] == 1000
        assert ds.meta_data["num_eval_examples"] == 50000
        batch = next(ds.train_batches(0))
        assert batch["inputs"].shape == (2, 32, 32, 3)
        assert -1.0 <= batch["inputs"].min() and batch["inputs"].max() <= 1.0
        # 50,000 validation examples over 2 hosts in batches of 4: 6,250 batches per host.
        assert ds.num_eval_batches == 6250
        # mock_data serves 10 examples for this host's share; the rest is padding.
        eval_batches = list(itertools.islice(ds.eval_batches(), 4))
        assert eval_batches[0]["inputs"].shape == (4, 32, 32, 3)
        assert [float(b["batch_mask"].sum()) for b in eval_batches] == [4, 4, 2, 0]


def test_missing_imagenet_says_where_to_put_files(tmp_path):
    with pytest.raises(tfds_classification.DatasetNotPreparedError, match="downloads/manual"):
        get_dataset("imagenet2012", batch_size=4, eval_batch_size=4, seed=0,
                    data_dir=str(tmp_path))
