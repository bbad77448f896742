r"""CLIP from scratch on scikit-learn's digits, captioned with their class names (no download).

    scenic-baselines train --config clip_digits --workdir /tmp/clip_digits

Both towers start from random weights: a 16x16 image tower (4x4 patches) and a byte-level
text tower (`tokenizer='bytes'`, no vocabulary file), trained with CLIP's contrastive loss on
(image, caption) pairs whose caption is the digit's name in one of `TEMPLATES` ('a photo of
the digit seven', ...); evaluated as CLIP's zero-shot classifier (the 4 templates' mean
embedding per class). The figure is in the baselines README (same machine as the command).
"""

import ml_collections

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("{}", "a photo of the digit {}.", "the number {}", "a handwritten {}.")


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment_name = "clip_digits"
    config.model_name = "clip"
    config.dataset_name = "digits"
    config.dataset_configs = ml_collections.ConfigDict(
        {"image_size": 16, "shift_pixels": 1, "test_fraction": 0.2}
    )
    config.class_names = NAMES
    config.prompt_templates = TEMPLATES
    config.tokenizer = "bytes"
    config.tokenizer_path = None
    config.model = ml_collections.ConfigDict(
        {
            "embed_dim": 64,
            "image_size": 16,
            "patch_size": 4,
            "vision_width": 64,
            "vision_layers": 4,
            "vision_heads": 4,
            "vision_mlp_dim": 128,
            "vocab_size": 259,  # the byte tokenizer's ids
            "context_length": 32,
            "text_width": 64,
            "text_layers": 2,
            "text_heads": 4,
            "text_mlp_dim": 128,
        }
    )
    config.rng_seed = 0
    config.batch_size = 128
    config.eval_batch_size = 256
    config.num_training_steps = 400
    config.optimizer = ml_collections.ConfigDict(
        {"name": "adamw", "b1": 0.9, "b2": 0.98, "weight_decay": 1e-4, "grad_clip_norm": 1.0}
    )
    config.lr_configs = ml_collections.ConfigDict(
        {
            "factors": "constant * linear_warmup * cosine_decay",
            "base_learning_rate": 2e-3,
            "warmup_steps": 100,
        }
    )
    config.log_summary_steps = 100
    config.log_eval_steps = 400
    config.checkpoint_steps = 200
    return config
