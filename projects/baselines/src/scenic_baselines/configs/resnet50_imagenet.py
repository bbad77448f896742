r"""ResNet-50 v1.5 on ImageNet-1k from scratch, with the published recipe.

    scenic-baselines train --config resnet50_imagenet --workdir /tmp/resnet50

Expected: ~76.1% top-1 on the validation set (the original Scenic's figure for its
ResNet-50; torchvision's ResNet-50 v1.5 IMAGENET1K_V1 weights report 76.13%). Not run
here: expect about a day on a TPU/GPU pod slice.

The recipe of Goyal et al. (2017) (the original Scenic config differs only in warming up
for 7 epochs): 25,557,032
parameters with the 1000-way head, synchronised BatchNorm (momentum 0.9, epsilon 1e-5;
the last scale of each residual block initialised to zero), SGD with momentum 0.9
(Nesterov off), batch 8192, learning rate 0.1 x 8192 / 256 = 3.2 with 5 epochs of linear
warm-up then cosine decay to 0, 90 epochs. Weight decay 1e-4 added to the gradients
(coupled, as in SGD) of the kernels only: the optimizer decays parameters of two or more
dimensions, not BatchNorm scales and biases nor the head's bias (the original Scenic's
`l2_decay_factor` 5e-5 on the squared norm has the same gradient, 1e-4 x w). No label
smoothing (`--config.label_smoothing=0.1` adds it, worth a few tenths of a point in later
recipes). Inception crop + flip at 224 px for training, resize 256 + central 224 crop for
eval (the `imagenet2012` pipeline's defaults).

Needs `imagenet2012` prepared by TFDS (manual download, see `scenic.dataset_lib.
tfds_classification`); pass `--config.dataset_configs.data_dir=DIR` if it is not in
TFDS's default data directory.
"""

import math

import ml_collections

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment_name = "resnet50_imagenet"
    config.model_name = "resnet_classification"
    config.dataset_name = "imagenet2012"
    config.dataset_configs = ml_collections.ConfigDict({"image_size": 224, "data_dir": None})
    config.model = ml_collections.ConfigDict({"num_layers": 50, "num_filters": 64})
    config.label_smoothing = None
    config.rng_seed = 0
    config.batch_size = 8192
    config.eval_batch_size = 4096
    config.num_training_epochs = 90.0
    config.optimizer = ml_collections.ConfigDict(
        {"name": "sgd", "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4}
    )
    config.lr_configs = ml_collections.ConfigDict(
        {
            "factors": "constant * linear_warmup * cosine_decay",
            "base_learning_rate": 0.1 * config.batch_size / 256,
            "warmup_steps": math.ceil(5 * IMAGENET_TRAIN_IMAGES / config.batch_size),
        }
    )
    config.log_summary_steps = 100
    config.log_eval_steps = 1000
    config.checkpoint_steps = 1000
    return config
