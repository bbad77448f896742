"""Data set registry, batching / sharding / padding, and input pipelines.

TensorFlow is imported only inside the pipeline modules, when a data set is built.
"""

from scenic.dataset_lib.dataset_utils import Dataset
from scenic.dataset_lib.datasets import get_dataset, list_datasets, register_dataset

__all__ = ["Dataset", "get_dataset", "list_datasets", "register_dataset"]
