r"""ViT-B/16 on ImageNet-1k from scratch, with the published hyperparameters.

    scenic-baselines train --config vit_b16_imagenet --workdir /tmp/vit_b16

Dosovitskiy et al. (2021), Table 3: 224 px, patch 16, width 768, 12 layers, 12 heads,
MLP 3072, class token, 86,567,656 parameters with the 1000-way head; Adam (b1=0.9,
b2=0.999) with decoupled weight decay 0.3, batch 4096, base LR 3e-3 with 10k linear
warmup steps and cosine decay, dropout 0.1, gradient clipping at global norm 1,
300 epochs. The paper reports 77.9% top-1 for ViT-B/16 trained on ImageNet-1k alone.

Needs `imagenet2012` prepared by TFDS (manual download, see `scenic.dataset_lib.
tfds_classification`); pass `--config.dataset_configs.data_dir=DIR` if it is not in
TFDS's default data directory. Not run here: expect days on a TPU/GPU pod.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment_name = "vit_b16_imagenet"
    config.model_name = "vit_classification"
    config.dataset_name = "imagenet2012"
    config.dataset_configs = ml_collections.ConfigDict({"image_size": 224, "data_dir": None})
    config.model = ml_collections.ConfigDict(
        {
            "patch_size": (16, 16),
            "hidden_size": 768,
            "num_layers": 12,
            "num_heads": 12,
            "mlp_dim": 3072,
            "classifier": "token",
            "representation_size": None,
            "dropout_rate": 0.1,
            "attention_dropout_rate": 0.0,
            "stochastic_depth": 0.0,
        }
    )
    config.label_smoothing = None
    config.rng_seed = 42
    config.batch_size = 4096
    config.eval_batch_size = 4096
    config.num_training_epochs = 300.0
    config.optimizer = ml_collections.ConfigDict(
        {"name": "adamw", "b1": 0.9, "b2": 0.999, "weight_decay": 0.3, "grad_clip_norm": 1.0}
    )
    config.lr_configs = ml_collections.ConfigDict(
        {
            "factors": "constant * linear_warmup * cosine_decay",
            "base_learning_rate": 3e-3,
            "warmup_steps": 10_000,
        }
    )
    config.log_summary_steps = 100
    config.log_eval_steps = 1000
    config.checkpoint_steps = 1000
    return config
