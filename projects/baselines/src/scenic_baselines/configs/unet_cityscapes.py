r"""A UNet on Cityscapes (fine annotations, the benchmark's 19 classes), from scratch.

    scenic-baselines train --config unet_cityscapes --workdir /tmp/unet_cityscapes

Needs TFDS `cityscapes/semantic_segmentation` prepared by hand (leftImg8bit_trainvaltest.zip
and gtFine_trainvaltest.zip in `<data_dir>/downloads/manual/`, then `tfds build
cityscapes/semantic_segmentation`). The 34 label ids become the 19 train ids of
cityscapesScripts' `labels.py`; every other id (void, parking, rail track, guard rail, ...)
is ignored (per-pixel `batch_mask` 0) in the loss and in the IoU. Images and labels are
fitted into a 512 x 1024 canvas (half resolution), with scale jitter 0.5-2.0, random
512 x 1024 crops and horizontal flips in training; eval on the 500 `validation` images at
half resolution (the nearest-neighbour resized labels; set `image_size=(1024, 2048)` to
evaluate at full resolution).

The paper's network (4 levels, 64 to 1024 channels; 31,038,803 parameters) with synchronised
BatchNorm, AdamW (lr 1e-3, weight decay 1e-4, cosine decay), batch 16 for 200 epochs of the
2,975 `train` images; `class_rebalancing_factor` 0.5 weights pixels half-way to the
batch's inverse class frequencies (rare classes such as rider and motorcycle). Not run here (no
data, no accelerator), so no result is claimed; the pipeline is tested on a Cityscapes-style
data set written by the test (core/tests/test_segmentation_dataset.py).
"""

import ml_collections

TRAIN_IMAGES = 2975
BATCH_SIZE = 16


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment_name = "unet_cityscapes"
    config.model_name = "unet_segmentation"
    config.dataset_name = "cityscapes"
    config.dataset_configs = ml_collections.ConfigDict(
        {"image_size": (512, 1024), "min_scale": 0.5, "max_scale": 2.0, "flip": True}
    )
    config.model = ml_collections.ConfigDict({"num_levels": 4, "base_width": 64, "norm": "batch"})
    config.class_rebalancing_factor = 0.5
    config.rng_seed = 0
    config.batch_size = BATCH_SIZE
    config.eval_batch_size = 20
    config.num_training_steps = 200 * -(-TRAIN_IMAGES // BATCH_SIZE)
    config.optimizer = ml_collections.ConfigDict({"name": "adamw", "weight_decay": 1e-4})
    config.lr_configs = ml_collections.ConfigDict(
        {
            "factors": "constant * linear_warmup * cosine_decay",
            "base_learning_rate": 1e-3,
            "warmup_steps": 1000,
        }
    )
    config.log_summary_steps = 100
    config.log_eval_steps = 5000
    config.checkpoint_steps = 2000
    return config
