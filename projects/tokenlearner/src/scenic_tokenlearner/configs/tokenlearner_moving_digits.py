r"""scenic-tokenlearner train --config tokenlearner_moving_digits --workdir /tmp/tl_moving_digits

The video demo: ViViT tubelets with a TokenLearner, on built-in moving digits (no download),
measured against scenic-vivit's `vivit_moving_digits` demo (see the project README).

Moving digits: a scikit-learn digit moves across a 16x16 canvas for 8 frames in one of 4
directions; the label is digit x direction (40 classes). Tubelets of 2x4x4 give 4 x 4x4
tokens; the TokenLearner (v1.1) learns `num_tokens` tokens per temporal index before block
`tokenlearner_loc`, and the blocks after it attend jointly over those.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment_name = "tokenlearner_moving_digits"
    config.model_name = "tokenlearner_classification"
    config.dataset_name = "moving_digits"
    config.dataset_configs = ml_collections.ConfigDict(
        {"num_frames": 8, "train_clips_per_image": 4, "random_wrap_shift": True}
    )
    config.model = ml_collections.ConfigDict(
        {
            "patch_size": (2, 4, 4),
            "hidden_size": 80,
            "num_layers": 3,
            "num_heads": 4,
            "mlp_dim": 160,
            "tokenlearner_loc": 0,
            "num_tokens": 6,
            "version": "v1.1",
            "video_tokens": "per_frame",
            "classifier": "gap",
        }
    )
    config.rng_seed = 0
    config.batch_size = 128
    config.eval_batch_size = 256
    config.label_smoothing = 0.1
    config.num_training_steps = 2000
    config.optimizer = ml_collections.ConfigDict(
        {"name": "adamw", "weight_decay": 1e-4, "grad_clip_norm": 1.0}
    )
    config.lr_configs = ml_collections.ConfigDict(
        {
            "factors": "constant * linear_warmup * cosine_decay",
            "base_learning_rate": 3e-3,
            "warmup_steps": 300,
        }
    )
    config.log_summary_steps = 100
    config.log_eval_steps = 1000
    config.checkpoint_steps = 1000
    return config
