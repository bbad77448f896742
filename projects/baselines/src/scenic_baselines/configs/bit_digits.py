r"""A small BiT (pre-activation ResNet, GroupNorm, weight standardisation) on scikit-learn's digits.

    scenic-baselines train --config bit_digits --workdir /tmp/bit_digits

Expected: 99.44% test accuracy (360 held-out digits; seed 0, one run) after 40 s of
training (compile included; ~2,000 images/s once compiled) on a 2-core Zen 4 EPYC that
other jobs were sharing. One pre-activation bottleneck unit per stage (`num_layers=14`,
not a published depth), root width 16 (stages of 64 to 512 channels), GroupNorm with 8
groups, 508,026 parameters, from scratch on 32x32 upsampled digits with +-2 px shift
augmentation; SGD with momentum 0.9, learning rate 0.03 with 50 warm-up steps and cosine
decay, batch 128 for 400 steps (36 epochs).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment_name = "bit_digits"
    config.model_name = "bit_classification"
    config.dataset_name = "digits"
    config.dataset_configs = ml_collections.ConfigDict(
        {"image_size": 32, "shift_pixels": 2, "test_fraction": 0.2}
    )
    config.model = ml_collections.ConfigDict({"num_layers": 14, "num_filters": 16, "num_groups": 8})
    config.label_smoothing = 0.0
    config.rng_seed = 0
    config.batch_size = 128
    config.eval_batch_size = 256
    config.num_training_steps = 400
    config.optimizer = ml_collections.ConfigDict({"name": "sgd", "momentum": 0.9})
    config.lr_configs = ml_collections.ConfigDict(
        {
            "factors": "constant * linear_warmup * cosine_decay",
            "base_learning_rate": 0.03,
            "warmup_steps": 50,
        }
    )
    config.log_summary_steps = 100
    config.log_eval_steps = 400
    config.checkpoint_steps = 400
    return config
