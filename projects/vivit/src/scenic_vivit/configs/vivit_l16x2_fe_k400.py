r"""scenic-vivit train --config vivit_l16x2_fe_k400 --workdir /tmp/vivit_l16x2_fe_k400 \
    --config.dataset_configs.train_files="$DATA/kinetics400/train-*.tfrecord" \
    --config.dataset_configs.eval_files="$DATA/kinetics400/validation-*.tfrecord" \
    --config.init_from_vit.checkpoint="$VIT/ViT-L_16.npz"

ViViT-L/16x2 FE, model 2 (factorised encoder: a 24-layer spatial ViT-L on each of the 16
temporal indices, then a 24-layer temporal transformer, as the original config sets it), on
Kinetics-400, as in Arnab et al. (ICCV 2021) and the original Scenic config
`kinetics400/vivit_large_factorised_encoder.py`.

Expected: 80.3% multi-view top-1 (4 clips x 3 crops; `multiview_accuracy`), the original
Scenic model zoo's figure. NOT reproduced here: this machine has neither Kinetics nor an
accelerator; only the config and the model's parameter count (606,827,920) are tested.

$DATA holds the Kinetics records (`scenic.dataset_lib.write_video_records` layout) and $VIT
the ImageNet-21k ViT checkpoints (google-research/vision_transformer `imagenet21k/*.npz`);
the paths in this file are placeholders. Recipe: momentum SGD, lr 0.1, 30 epochs, batch 64,
2.5 warmup epochs then cosine decay, gradient clipping at 1, no label smoothing, mixup or
stochastic depth; 32 frames at stride 2, 224 crops. Not carried over: the original's colour
augmentation; its short-side scale jitter is approximated by multi-scale crops.
"""

import ml_collections

from scenic_vivit.configs import _video_common as common

KINETICS_400_TRAIN_SIZE = 214_834  # the original config's count; videos leave YouTube


def get_config() -> ml_collections.ConfigDict:
    config = common.base_config("vivit_l16x2_fe_k400", train_size=KINETICS_400_TRAIN_SIZE)
    config.model_name = "vivit_classification"
    config.model = common.vivit(
        common.VIT_LARGE, variant="factorised_encoder", temporal_num_layers=24
    )
    config.init_from_vit = common.init_from_vit("ViT-L_16")
    config.dataset_name = "video_tfrecord"
    config.dataset_configs = common.video_tfrecord("kinetics400", num_classes=400, stride=2)
    config.num_training_epochs = 30
    config.lr_configs.base_learning_rate = 0.1
    return config
