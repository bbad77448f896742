"""What the Kinetics configs share: ViViT-L/16x2 (joint space-time attention, scenic-vivit's
recipe and record reader) with a TokenLearner v1.1 learning 16 tokens per temporal index
before block 18 of 24 ("16at18", the paper's video setting), from an ImageNet-21k ViT-L/16.

The leading underscore keeps this module out of `scenic-tokenlearner list-configs`.
"""

from __future__ import annotations

import ml_collections

from scenic_vivit.configs import _video_common as vivit_common


def kinetics_config(
    name: str, *, dataset: str, num_classes: int, train_size: int
) -> ml_collections.ConfigDict:
    config = vivit_common.base_config(name, train_size=train_size)
    config.model_name = "tokenlearner_classification"
    config.model = ml_collections.ConfigDict(
        {
            "patch_size": (2, 16, 16),
            **vivit_common.VIT_LARGE,
            "tokenlearner_loc": 18,
            "num_tokens": 16,
            "version": "v1.1",
            "video_tokens": "per_frame",
            "token_fuser": False,
            "classifier": "gap",
            "dropout_rate": 0.0,
            "attention_dropout_rate": 0.0,
            "stochastic_depth": 0.0,
        }
    )
    init = vivit_common.init_from_vit("ViT-L_16")
    config.init_from_vit = ml_collections.ConfigDict(
        {"checkpoint": init.checkpoint, "kernel_init": init.kernel_init}
    )
    config.dataset_name = "video_tfrecord"
    config.dataset_configs = vivit_common.video_tfrecord(dataset, num_classes=num_classes, stride=2)
    config.num_training_epochs = 30
    config.lr_configs.base_learning_rate = 0.1
    return config
