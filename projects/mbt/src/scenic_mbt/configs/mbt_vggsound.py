r"""scenic-mbt train --config mbt_vggsound --workdir /tmp/mbt_vggsound \
    --config.dataset_configs.train_files="$DATA/vggsound/train-*.tfrecord" \
    --config.dataset_configs.eval_files="$DATA/vggsound/validation-*.tfrecord" \
    --config.init_from_vit.checkpoint="$VIT/ViT-B_16.npz"

MBT-Base on VGGSound (309 classes, one label per clip; top-1 / top-5), Nagrani et al.
(NeurIPS 2021), recipe of the original Scenic VGGSound config.

Published: the paper's VGGSound table (MBT, RGB + spectrogram, top-1 / top-5); not
reproduced here: no VGGSound and no accelerator on the development machine. Reported as
`multiview_accuracy` / `multiview_accuracy_top5`, fused and per modality alone.

Records from the VGGSound clips with `write_video_records --audio-from-video` (the test
split as `validation`). Recipe in `_audiovisual_common.py`, 50 epochs, softmax
cross-entropy with label smoothing 0.3 (in mixup's targets).
"""

import ml_collections

from scenic_mbt.configs import _audiovisual_common as common

VGGSOUND_TRAIN_SIZE = 172_427  # clips still online when the original config was written


def get_config() -> ml_collections.ConfigDict:
    config = common.base_config("mbt_vggsound", train_size=VGGSOUND_TRAIN_SIZE, epochs=50, lr=0.5)
    config.model_name = "mbt_classification"
    config.model = common.mbt_base()
    config.init_from_vit = common.init_from_vit()
    config.dataset_name = "audiovisual_tfrecord"
    config.dataset_configs = common.audiovisual_tfrecord("vggsound", num_classes=309)
    config.mixup.label_smoothing = 0.3
    return config
