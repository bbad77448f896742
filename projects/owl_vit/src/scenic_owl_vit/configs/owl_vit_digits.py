r"""A small OWL-ViT trained from scratch on `digits_detection` (64x64 canvases with 1-4
digits; no download needed), with the text queries "zero" .. "nine".

    scenic-owl-vit train --config owl_vit_digits --workdir /tmp/owl_vit_digits
    scenic-owl-vit detect --workdir /tmp/owl_vit_digits --query seven --query two IMAGES/

OWL-ViT's design at CPU size: both towers from scratch (a byte-level tokenizer, so any text
is a query), an 8x8 patch grid (patch 8 on the 64 px canvas), one box and one class
embedding per patch token, Hungarian matching with the sigmoid focal loss (alpha 0.3), L1
and GIoU, as the original.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment_name = "owl_vit_digits"
    config.model_name = "owl_vit"
    config.dataset_name = "digits_detection"
    config.dataset_configs = ml_collections.ConfigDict(
        {"image_size": 64, "max_boxes": 4, "min_scale": 0.75, "max_scale": 1.25, "flip": False}
    )
    config.tokenizer = "bytes"
    config.prompt_templates = ("{}",)
    config.model = ml_collections.ConfigDict(
        {
            "embed_dim": 64,
            "image_size": 64,
            "patch_size": 8,
            "vision_width": 128,
            "vision_layers": 4,
            "vision_heads": 4,
            "vision_mlp_dim": 512,
            "vocab_size": 259,
            "context_length": 8,
            "text_width": 64,
            "text_layers": 2,
            "text_heads": 2,
            "text_mlp_dim": 256,
            "hidden_act": "gelu",
            "logit_shift_bias_init": -4.6,
        }
    )
    config.matcher = "hungarian_cover_tpu_matcher"
    config.class_loss = "sigmoid_focal"
    config.focal_alpha = 0.3
    config.focal_gamma = 2.0
    config.class_loss_coef = 2.0
    config.bbox_loss_coef = 5.0
    config.giou_loss_coef = 2.0
    config.rng_seed = 0
    config.batch_size = 32
    config.eval_batch_size = 100
    config.num_training_steps = 3000
    config.optimizer = ml_collections.ConfigDict(
        {"name": "adamw", "weight_decay": 1e-4, "grad_clip_norm": 1.0}
    )
    config.lr_configs = ml_collections.ConfigDict(
        {
            "factors": "constant * linear_warmup * cosine_decay",
            "base_learning_rate": 5e-4,
            "warmup_steps": 200,
        }
    )
    config.log_summary_steps = 100
    config.log_eval_steps = 1000
    config.checkpoint_steps = 1000
    return config
