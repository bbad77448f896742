r"""BiT-M-R50x1 fine-tuned on ImageNet-1k with BiT-HyperRule (Kolesnikov et al., 2020).

    scenic-baselines train --config bit_m_r50x1_imagenet --workdir /tmp/bit_m_r50x1 \
        --config.init_from.checkpoint=$BIT/BiT-M-R50x1.npz

(`init_from.checkpoint` is None in this file, as the download location varies: without it
the run would start from scratch with a fine-tuning recipe.)

Expected: ~80.7% top-1 on the validation set (google-research/big_transfer README: 80.68%
with this recipe in PyTorch on 8 V100s). Not run here: the 20,000 steps at batch 512 and
480 px take about a day on 8 GPUs.

The ImageNet-21k BiT-M-R50x1 weights (`BiT-M-R50x1.npz` from
storage.googleapis.com/bit_models in the official layout, which `init_from` reads through
`bit_weights`) with a new zero-initialised 1000-way head (`init_from.reinit`): 25,549,352
parameters. BiT-HyperRule for a data
set of more than 500k images (big_transfer `bit_hyperrule.py`): SGD with momentum 0.9, no
weight decay, batch 512, learning rate 0.003 with 500 linear warm-up steps, divided by 10
after 6,000, 12,000 and 18,000 steps, 20,000 steps in all; MixUp with alpha 0.1; 480 px
crops. Deviation: BiT squashes each image to 512x512 and takes a random 480 crop (and
evaluates on the image squashed to 480x480); the `imagenet2012` pipeline here takes an
Inception crop resized to 480 and evaluates on the central 480 square of the image resized
to a 480 px shorter side.

Needs `imagenet2012` prepared by TFDS (manual download, see `scenic.dataset_lib.
tfds_classification`); pass `--config.dataset_configs.data_dir=DIR` if it is not in
TFDS's default data directory.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment_name = "bit_m_r50x1_imagenet"
    config.model_name = "bit_classification"
    config.dataset_name = "imagenet2012"
    config.dataset_configs = ml_collections.ConfigDict(
        {"image_size": 480, "resize_size": 480, "data_dir": None}
    )
    config.model = ml_collections.ConfigDict({"num_layers": 50, "width_factor": 1})
    config.init_from = ml_collections.ConfigDict({"checkpoint": None, "reinit": ("head/.*",)})
    config.label_smoothing = None
    config.mixup = ml_collections.ConfigDict({"mixup_alpha": 0.1})
    config.rng_seed = 0
    config.batch_size = 512
    config.eval_batch_size = 512
    config.num_training_steps = 20_000
    config.optimizer = ml_collections.ConfigDict({"name": "sgd", "momentum": 0.9})
    config.lr_configs = ml_collections.ConfigDict(
        {
            "factors": "constant * linear_warmup * piecewise_constant",
            "base_learning_rate": 0.003,
            "warmup_steps": 500,
            "decay_events": (6_000, 12_000, 18_000),
            "decay_factors": (0.1, 0.1, 0.1),
        }
    )
    config.log_summary_steps = 100
    config.log_eval_steps = 2000
    config.checkpoint_steps = 2000
    return config
