r"""scenic-mbt train --config mbt_kinetics_sounds --workdir /tmp/mbt_kinetics_sounds \
    --config.dataset_configs.train_files="$DATA/kinetics_sounds/train-*.tfrecord" \
    --config.dataset_configs.eval_files="$DATA/kinetics_sounds/validation-*.tfrecord" \
    --config.init_from_vit.checkpoint="$VIT/ViT-B_16.npz"

MBT-Base on Kinetics-Sounds (the 32 Kinetics classes that can be heard, after
Arandjelovic & Zisserman, 2017; one label per clip, top-1 / top-5).

No published MBT figure is quoted here. NOT trained here: no Kinetics and no accelerator on
the development machine. Reported as `multiview_accuracy`, fused and per modality alone.

Records from the Kinetics clips of those classes with `write_video_records
--audio-from-video`. Recipe in `_audiovisual_common.py`, 50 epochs, label smoothing 0.3.
"""

import ml_collections

from scenic_mbt.configs import _audiovisual_common as common

KINETICS_SOUNDS_TRAIN_SIZE = 22_000  # about 700 clips for each of 32 classes: warm-up only


def get_config() -> ml_collections.ConfigDict:
    config = common.base_config(
        "mbt_kinetics_sounds", train_size=KINETICS_SOUNDS_TRAIN_SIZE, epochs=50, lr=0.5
    )
    config.model_name = "mbt_classification"
    config.model = common.mbt_base()
    config.init_from_vit = common.init_from_vit()
    config.dataset_name = "audiovisual_tfrecord"
    config.dataset_configs = common.audiovisual_tfrecord("kinetics_sounds", num_classes=32)
    config.mixup.label_smoothing = 0.3
    return config
