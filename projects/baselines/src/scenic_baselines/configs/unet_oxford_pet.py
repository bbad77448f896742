r"""A UNet on Oxford-IIIT Pet trimaps (pet / background / outline), from scratch.

    scenic-baselines train --config unet_oxford_pet --workdir /tmp/unet_oxford_pet

Needs TFDS `oxford_iiit_pet` 4.0.0 prepared (`tfds build oxford_iiit_pet`; pass
`--config.dataset_configs.data_dir=DIR` if it is not in TFDS's default data directory).
The trimap values 1, 2, 3 become classes 0 (pet), 1 (background), 2 (outline); mean IoU
averages the three. Images are fitted into a 128 x 128 canvas (longer side 128), scale
jitter 0.75-1.25 with random crops and horizontal flips in training; eval on the 3,669
`test` images at that resolution (the nearest-neighbour resized trimap).

The paper's network at half width (4 levels, 32 to 512 channels; 7,763,107 parameters) with
BatchNorm, AdamW (lr 1e-3, weight decay 1e-4, cosine decay), batch 32 for 50 epochs of
the 3,680 `train` images. Not run here (no download on these machines), so no result is
claimed; the pipeline is tested on mock data (core/tests/test_segmentation_dataset.py).
"""

import ml_collections

TRAIN_IMAGES = 3680
BATCH_SIZE = 32


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment_name = "unet_oxford_pet"
    config.model_name = "unet_segmentation"
    config.dataset_name = "oxford_iiit_pet"
    config.dataset_configs = ml_collections.ConfigDict(
        {"image_size": 128, "min_scale": 0.75, "max_scale": 1.25, "flip": True}
    )
    config.model = ml_collections.ConfigDict({"num_levels": 4, "base_width": 32, "norm": "batch"})
    config.class_rebalancing_factor = 0.0
    config.rng_seed = 0
    config.batch_size = BATCH_SIZE
    config.eval_batch_size = 64
    config.num_training_steps = 50 * -(-TRAIN_IMAGES // BATCH_SIZE)
    config.optimizer = ml_collections.ConfigDict({"name": "adamw", "weight_decay": 1e-4})
    config.lr_configs = ml_collections.ConfigDict(
        {
            "factors": "constant * linear_warmup * cosine_decay",
            "base_learning_rate": 1e-3,
            "warmup_steps": 500,
        }
    )
    config.log_summary_steps = 100
    config.log_eval_steps = 1000
    config.checkpoint_steps = 1000
    return config
