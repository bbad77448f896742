r"""The demo: the patch-MLP classifier on scikit-learn's digits (built in, no download).

    scenic-minimal train --config classifier_digits --workdir /tmp/classifier_digits

Expected: 98.9-99.7% test accuracy (360 held-out digits; seeds 0 and 1 gave 99.72% and
98.89%) after ~11 s of training (compile included) on a 2-core Zen 4 CPU shared with other
jobs, at ~15,000 examples/s. The model (`models.PatchClassifier`, 9,994 parameters): 16x16
upsampled images cut into 4x4 patches, embedded to width 32, one residual MLP block (64
wide) on every patch, the 16 patches flattened into a linear head. AdamW (lr 3e-3, 30
warmup steps, cosine decay), batch 128 for 600 steps, +-1 px shift augmentation.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment_name = "classifier_digits"
    config.model_name = "patch_classifier"
    config.dataset_name = "digits"
    config.dataset_configs = ml_collections.ConfigDict(
        {"image_size": 16, "shift_pixels": 1, "test_fraction": 0.2}
    )
    config.model = ml_collections.ConfigDict(
        {"patch_size": (4, 4), "hidden_size": 32, "mlp_dim": 64, "num_layers": 1}
    )
    config.rng_seed = 0
    config.batch_size = 128
    config.eval_batch_size = 256
    config.num_training_steps = 600
    config.optimizer = ml_collections.ConfigDict(
        {"name": "adamw", "b1": 0.9, "b2": 0.999, "weight_decay": 1e-4}
    )
    config.lr_configs = ml_collections.ConfigDict(
        {
            "factors": "constant * linear_warmup * cosine_decay",
            "base_learning_rate": 3e-3,
            "warmup_steps": 30,
        }
    )
    config.log_summary_steps = 200
    config.log_eval_steps = 600
    config.checkpoint_steps = 600
    return config
