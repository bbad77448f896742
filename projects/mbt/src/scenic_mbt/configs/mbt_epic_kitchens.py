r"""scenic-mbt train --config mbt_epic_kitchens --workdir /tmp/mbt_epic_kitchens \
    --config.dataset_configs.train_files="$DATA/epic_kitchens/train-*.tfrecord" \
    --config.dataset_configs.eval_files="$DATA/epic_kitchens/validation-*.tfrecord" \
    --config.init_from_vit.checkpoint="$VIT/ViT-B_16.npz"

MBT-Base on EPIC-Kitchens-100: verb (97 classes) and noun (300) heads on one
representation; action accuracy = both right. Nagrani et al. (NeurIPS 2021).

Published: 43.4% action top-1 (MBT, RGB + spectrogram), 64.8% verb, 58.0% noun. Reported
as `multiview_accuracy` (action), `multiview_accuracy_verb` / `_noun`, fused and per
modality alone. NOT reproduced here: no EPIC-Kitchens and no accelerator on the development
machine.

Labels: each record lists the verb index v (0-96) and 97 + the noun index n (as for
scenic-vivit's EPIC config), read as multi-hot targets that the model splits by
`class_splits`. Records with `write_video_records --audio-from-video` from the segments
cut out of the videos. Recipe in `_audiovisual_common.py`, 50 epochs, lr 0.5; no label
smoothing (smoothing the side-by-side verb + noun targets as one vector would leave each
head's targets unnormalised).
"""

import ml_collections

from scenic_mbt.configs import _audiovisual_common as common

EPIC_TRAIN_SIZE = 67_217  # EPIC-Kitchens-100 training action segments
NUM_VERBS, NUM_NOUNS = 97, 300


def get_config() -> ml_collections.ConfigDict:
    config = common.base_config("mbt_epic_kitchens", train_size=EPIC_TRAIN_SIZE, epochs=50, lr=0.5)
    config.model_name = "mbt_multihead_classification"
    config.model = common.mbt_base()
    config.class_splits = [NUM_VERBS, NUM_NOUNS]
    config.split_names = ["verb", "noun"]
    config.init_from_vit = common.init_from_vit()
    config.dataset_name = "audiovisual_tfrecord"
    config.dataset_configs = common.audiovisual_tfrecord(
        "epic_kitchens", num_classes=NUM_VERBS + NUM_NOUNS, multi_label=True
    )
    return config
