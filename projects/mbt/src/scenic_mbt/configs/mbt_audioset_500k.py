r"""scenic-mbt train --config mbt_audioset_500k --workdir /tmp/mbt_audioset_500k \
    --config.dataset_configs.train_files="$DATA/audioset_500k/train-*.tfrecord" \
    --config.dataset_configs.eval_files="$DATA/audioset_500k/validation-*.tfrecord" \
    --config.init_from_vit.checkpoint="$VIT/ViT-B_16.npz"

MBT-Base on AS-500K, the paper's roughly class-balanced 500K-clip subset of the full
(unbalanced) AudioSet (527 classes, multi-label), Nagrani et al. (NeurIPS 2021).

Published: 52.3 mAP (RGB + spectrogram, bottlenecks). Reported as `multiview_mAP`, `AUC`,
`d_prime` over the whole eval set, fused and per modality. NOT reproduced here: no AudioSet
and no accelerator on the development machine.

Records as for `mbt_audioset_mini` (`write_video_records --audio-from-video`) from the
subset's clips; the eval split is AudioSet's eval segments. Recipe in
`_audiovisual_common.py`, 30 epochs at lr 0.5.
"""

import ml_collections

from scenic_mbt.configs import _audiovisual_common as common

AS500K_TRAIN_SIZE = 500_000  # the paper's subset size, rounded: sets the warm-up only


def get_config() -> ml_collections.ConfigDict:
    config = common.base_config(
        "mbt_audioset_500k", train_size=AS500K_TRAIN_SIZE, epochs=30, lr=0.5
    )
    config.model_name = "mbt_multilabel_classification"
    config.model = common.mbt_base(head_bias_init=-10.0)
    config.init_from_vit = common.init_from_vit()
    config.dataset_name = "audiovisual_tfrecord"
    config.dataset_configs = common.audiovisual_tfrecord(
        "audioset_500k", num_classes=527, multi_label=True
    )
    config.mixup.label_smoothing = 0.3
    return config
