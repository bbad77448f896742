"""Base models: a Flax module plus the loss and the (sum, normalizer) metrics the trainer uses."""

from scenic.model_lib.base_models.base_model import BaseModel
from scenic.model_lib.base_models.classification_model import (
    ClassificationModel,
    MultiLabelClassificationModel,
)
from scenic.model_lib.base_models.regression_model import RegressionModel
from scenic.model_lib.base_models.segmentation_model import SegmentationModel

__all__ = [
    "BaseModel",
    "ClassificationModel",
    "MultiLabelClassificationModel",
    "RegressionModel",
    "SegmentationModel",
]
