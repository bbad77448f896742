r"""scenic-mbt train --config mbt_audioset_mini --workdir /tmp/mbt_audioset_mini \
    --config.dataset_configs.train_files="$DATA/audioset_balanced/train-*.tfrecord" \
    --config.dataset_configs.eval_files="$DATA/audioset_balanced/validation-*.tfrecord" \
    --config.init_from_vit.checkpoint="$VIT/ViT-B_16.npz"

MBT-Base on AudioSet-mini (the balanced train set, 20,361 clips the original config
counted; 527 classes, multi-label), as in Nagrani et al. (NeurIPS 2021) and the original
Scenic config `balanced_audioset_base.py` (which never created its `dataset_configs` and
so did not load).

Published: 43.9 mAP for RGB + spectrogram with bottlenecks (spectrogram alone 30.9, RGB
alone 27.0). Reported here as `multiview_mAP` (4 clips), with `AUC` and `d_prime`, over the
whole eval set gathered from every host, and for each modality alone from the same
checkpoint (`multiview_spectrogram_only_mAP`, `multiview_rgb_only_mAP`). NOT reproduced
here: no AudioSet and no accelerator on the development machine.

$DATA holds records written from the AudioSet clips by `python -m
scenic.dataset_lib.write_video_records --input CLIPS --output $DATA/audioset_balanced/train
--labels labels.csv --class-names classes.txt --num-shards 64 --audio-from-video` (the
segments of the eval CSV as `validation`); $VIT the ImageNet-21k ViT-B/16. Recipe in
`_audiovisual_common.py`: 50 epochs, lr 0.5, sigmoid cross-entropy with label smoothing 0.3.
"""

import ml_collections

from scenic_mbt.configs import _audiovisual_common as common

AUDIOSET_MINI_TRAIN_SIZE = 20_361  # the original config's count; clips leave YouTube


def get_config() -> ml_collections.ConfigDict:
    config = common.base_config(
        "mbt_audioset_mini", train_size=AUDIOSET_MINI_TRAIN_SIZE, epochs=50, lr=0.5
    )
    config.model_name = "mbt_multilabel_classification"
    config.model = common.mbt_base(head_bias_init=-10.0)
    config.init_from_vit = common.init_from_vit()
    config.dataset_name = "audiovisual_tfrecord"
    config.dataset_configs = common.audiovisual_tfrecord(
        "audioset_balanced", num_classes=527, multi_label=True
    )
    config.mixup.label_smoothing = 0.3
    return config
