"""Base models: a Flax module plus the loss and the (sum, normalizer) metrics the trainer uses."""

from scenic.model_lib.base_models.base_model import BaseModel
from scenic.model_lib.base_models.classification_model import (
    ClassificationModel,
    MultiLabelClassificationModel,
)
from scenic.model_lib.base_models.detection_model import DetectionModel
from scenic.model_lib.base_models.encoder_decoder_model import EncoderDecoderModel
from scenic.model_lib.base_models.regression_model import RegressionModel
from scenic.model_lib.base_models.segmentation_model import SegmentationModel

__all__ = [
    "BaseModel",
    "ClassificationModel",
    "DetectionModel",
    "EncoderDecoderModel",
    "MultiLabelClassificationModel",
    "RegressionModel",
    "SegmentationModel",
]
