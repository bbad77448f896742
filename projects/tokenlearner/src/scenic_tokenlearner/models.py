"""The models this project registers: `config.model_name` -> base-model class.

`config.model` holds the constructor arguments of
`scenic_tokenlearner.model.TokenLearnerViT`; any other key is an error.
`config.init_from_vit` ({checkpoint, kernel_init}) starts a fresh run from an image ViT.
"""

from __future__ import annotations

import dataclasses

from scenic.model_lib.base_models.classification_model import (
    ClassificationModel,
    MultiLabelClassificationModel,
)
from scenic_tokenlearner.model import TokenLearnerViT, build_model
from scenic_vivit.models import check_init_from_vit

INIT_FROM_VIT_KEYS = ("checkpoint", "kernel_init")


def model_fields() -> tuple[str, ...]:
    excluded = ("num_classes", "parent", "name")
    return tuple(f.name for f in dataclasses.fields(TokenLearnerViT) if f.name not in excluded)


class _TokenLearnerModel:
    """What both heads share: the flax model, its config keys, and init from a ViT."""

    @classmethod
    def model_config_keys(cls):
        return model_fields()

    @classmethod
    def check_config(cls, config):
        check_init_from_vit(config, INIT_FROM_VIT_KEYS)

    def build_flax_model(self):
        return build_model(self.config.model, self.dataset_meta_data["num_classes"])

    def initialize_params(self, params):
        settings = self.config.get("init_from_vit")
        if not settings or not settings.get("checkpoint"):
            return params, None
        from scenic.train_lib import pretrained_init
        from scenic_tokenlearner.init_from_vit import init_from_vit
        from scenic_vivit.init_from_vit import vit_params_from_npz

        checkpoint = settings["checkpoint"]
        params = init_from_vit(
            self.flax_model,
            params,
            vit_params_from_npz(pretrained_init.load_params(checkpoint)),
            tuple(self.dataset_meta_data["input_shape"]),
            kernel_init=settings.get("kernel_init", "central_frame"),
        )
        return params, f"Initialised from the image ViT {checkpoint} ({settings.to_dict()})."


class TokenLearnerClassification(_TokenLearnerModel, ClassificationModel):
    """Softmax cross-entropy (loss, accuracy, top-5, mean per-class accuracy)."""

    config_keys = (*ClassificationModel.config_keys, "init_from_vit")


class TokenLearnerMultiLabelClassification(_TokenLearnerModel, MultiLabelClassificationModel):
    """Sigmoid cross-entropy (loss, prec@1, eval-set mAP); set `head_bias_init=-10`."""

    config_keys = (*MultiLabelClassificationModel.config_keys, "init_from_vit")


MODELS = {
    "tokenlearner_classification": TokenLearnerClassification,
    "tokenlearner_multilabel_classification": TokenLearnerMultiLabelClassification,
}


def get_models() -> dict[str, type]:
    return MODELS
