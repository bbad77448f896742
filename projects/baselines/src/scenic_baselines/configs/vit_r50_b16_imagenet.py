r"""R50+ViT-B/16 (the hybrid of Dosovitskiy et al., 2021) fine-tuned on ImageNet-1k at 384 px.

    scenic-baselines train --config vit_r50_b16_imagenet --workdir /tmp/vit_r50_b16 \
        --config.init_from.checkpoint=$VIT/imagenet21k/R50+ViT-B_16.npz

(`init_from.checkpoint` is None in this file, as the download location varies: without it
the run would start from scratch with a fine-tuning recipe.)

Expected: ~85.1% top-1 on the validation set (google-research/vision_transformer README:
85.08% for R50+ViT-B_16 from ImageNet-21k with dropout 0.1). Not run here: about a day on
8 V100s.

vit_jax's `get_r50_b16_config`: a ResNet-50 stem with (3, 4, 9) post-activation units
(GroupNorm, weight-standardised convolutions, 'SAME' padding; stride 16, 1024 channels),
1x1 patches, ViT-B (width 768, 12 layers, 12 heads, MLP 3072, class token), dropout 0.1, no
pre-logits layer. At 384 px the 24 x 24 token grid's position embedding is resampled
bilinearly from the checkpoint's 14 x 14 and the ImageNet-21k `pre_logits` layer is dropped
(`init_from` with the `bit_weights` reader, as vit_jax's `load_pretrained`); 98,950,952
parameters with the new zero 1000-way head (98,659,112 at 224 px). vit_jax's fine-tuning recipe
(`configs/common.py`, imagenet2012 preset): SGD with momentum 0.9, batch 512, learning rate
0.03 with 500 warm-up steps and cosine decay, 20,000 steps, gradients clipped at global norm
1, no weight decay; Inception crop + flip at 384 px. Deviation: vit_jax evaluates on the
whole image resized to 384x384; here the central 384 square of the image resized to a
384 px shorter side.

Needs `imagenet2012` prepared by TFDS (manual download, see `scenic.dataset_lib.
tfds_classification`); pass `--config.dataset_configs.data_dir=DIR` if it is not in
TFDS's default data directory.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment_name = "vit_r50_b16_imagenet"
    config.model_name = "vit_hybrid_classification"
    config.dataset_name = "imagenet2012"
    config.dataset_configs = ml_collections.ConfigDict(
        {"image_size": 384, "resize_size": 384, "data_dir": None}
    )
    config.model = ml_collections.ConfigDict(
        {
            "resnet_block_sizes": (3, 4, 9),
            "resnet_width": 64,
            "patch_size": (1, 1),
            "hidden_size": 768,
            "num_layers": 12,
            "num_heads": 12,
            "mlp_dim": 3072,
            "classifier": "token",
            "representation_size": None,
            "dropout_rate": 0.1,
            "attention_dropout_rate": 0.0,
        }
    )
    config.init_from = ml_collections.ConfigDict({"checkpoint": None, "reinit": ("head/.*",)})
    config.label_smoothing = None
    config.rng_seed = 0
    config.batch_size = 512
    config.eval_batch_size = 512
    config.num_training_steps = 20_000
    config.optimizer = ml_collections.ConfigDict(
        {"name": "sgd", "momentum": 0.9, "grad_clip_norm": 1.0}
    )
    config.lr_configs = ml_collections.ConfigDict(
        {
            "factors": "constant * linear_warmup * cosine_decay",
            "base_learning_rate": 0.03,
            "warmup_steps": 500,
        }
    )
    config.log_summary_steps = 100
    config.log_eval_steps = 2000
    config.checkpoint_steps = 2000
    return config
