r"""scenic-tokenlearner train --config tokenlearner_l16x2_k600 --workdir /tmp/tl_l16x2_k600 \
    --config.dataset_configs.train_files="$DATA/kinetics600/train-*.tfrecord" \
    --config.dataset_configs.eval_files="$DATA/kinetics600/validation-*.tfrecord" \
    --config.init_from_vit.checkpoint="$VIT/ViT-L_16.npz"

ViViT-L/16x2 with TokenLearner 16at18 on Kinetics-600: joint space-time attention over the
16 x 14 x 14 tubelet tokens of 32-frame clips for 18 blocks, then a TokenLearner v1.1
learns 16 tokens per temporal index (256 tokens) for the last 6; GAP and a 600-way head.
Recipe of scenic-vivit's Kinetics configs (momentum SGD, lr 0.1, batch 64, 30 epochs, 2.5
warm-up epochs then cosine decay, 4 x 3 multi-view test), from an ImageNet-21k ViT-L/16.

Published: the paper's best Kinetics-600 model with TokenLearner reaches 86.3% top-1 (Ryoo et
al., NeurIPS 2021: the large ViViT with 16 tokens at layer 18 and larger pre-training than
ImageNet-21k). NOT reproduced here: no Kinetics and no accelerator on the development
machine; only the config and its model are tested.

$DATA holds the Kinetics records (`scenic.dataset_lib.write_video_records` layout) and $VIT
the ImageNet-21k ViT checkpoints; the paths in this file are placeholders.
"""

import ml_collections

from scenic_tokenlearner.configs._kinetics import kinetics_config


def get_config() -> ml_collections.ConfigDict:
    return kinetics_config(
        "tokenlearner_l16x2_k600", dataset="kinetics600", num_classes=600, train_size=363_213
    )
