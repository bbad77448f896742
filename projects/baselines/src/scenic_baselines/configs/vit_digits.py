r"""The demo: a small ViT on scikit-learn's digits (no download needed).

    scenic-baselines train --config vit_digits --workdir /tmp/vit_digits

Expected: 99.2-99.7% test accuracy (360 held-out digits; seeds 0, 1, 2 gave 99.72%,
99.72%, 99.17%) after 71-83 s of training (compile included) on a 2-core AVX2 CPU at
~1,400 examples/s. A 4-layer, 64-wide ViT (MLP 128, 4 heads, 136,906 parameters) on 16x16
upsampled images with 4x4 patches (16 tokens + class token), +-1 px shift augmentation,
AdamW (lr 3e-3, 200 warmup steps, cosine decay), batch 128 for 800 steps (71 epochs).
With 500 steps it trains in ~55 s but reaches only 98.6-99.2%.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment_name = "vit_digits"
    config.model_name = "vit_classification"
    config.dataset_name = "digits"
    config.dataset_configs = ml_collections.ConfigDict(
        {"image_size": 16, "shift_pixels": 1, "test_fraction": 0.2}
    )
    config.model = ml_collections.ConfigDict(
        {
            "patch_size": (4, 4),
            "hidden_size": 64,
            "num_layers": 4,
            "num_heads": 4,
            "mlp_dim": 128,
            "classifier": "token",
            "dropout_rate": 0.0,
            "stochastic_depth": 0.0,
        }
    )
    config.label_smoothing = 0.0
    config.rng_seed = 0
    config.batch_size = 128
    config.eval_batch_size = 256
    config.num_training_steps = 800
    config.optimizer = ml_collections.ConfigDict(
        {"name": "adamw", "b1": 0.9, "b2": 0.999, "weight_decay": 1e-4, "grad_clip_norm": 1.0}
    )
    config.lr_configs = ml_collections.ConfigDict(
        {
            "factors": "constant * linear_warmup * cosine_decay",
            "base_learning_rate": 3e-3,
            "warmup_steps": 200,
        }
    )
    config.log_summary_steps = 100
    config.log_eval_steps = 800
    config.checkpoint_steps = 400
    return config
