"""What the published ViViT configs share: the recipe of Arnab et al. (ICCV 2021) as set in
the original Google Scenic configs (`scenic/projects/vivit/configs/`).

Shared by every published config: momentum SGD (0.9) with gradients clipped to norm 1,
batch 64, a linear warmup of 2.5 epochs then a cosine decay to zero, no weight decay,
tubelets of 2x16x16 from 32-frame clips, a class-token classifier, an image ViT
(ImageNet-21k) to start from, and a multi-view test (clips x crops) at the end of training.

The leading underscore keeps this module out of `scenic-vivit list-configs`.
"""

from __future__ import annotations

import ml_collections

BATCH_SIZE = 64  # the original configs' global batch
# Multi-view test runs eval_batch_size x clips x crops clips per step (16 x 12 = 192); the
# original ran 8 videos per step. Lower it if an accelerator runs out of memory.
EVAL_BATCH_SIZE = 16
WARMUP_EPOCHS = 2.5

# Encoder sizes of ViT-B/16 and ViT-L/16 (Dosovitskiy et al.), which ViViT-B and -L reuse.
VIT_BASE = {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "mlp_dim": 3072}
VIT_LARGE = {"hidden_size": 1024, "num_layers": 24, "num_heads": 16, "mlp_dim": 4096}

# Placeholders the user must override on the command line (see each config's docstring).
# They point nowhere on purpose: a run that forgets them stops with an error naming them.
PLACEHOLDER_DIR = "/path/to"


def base_config(experiment_name: str, *, train_size: int) -> ml_collections.ConfigDict:
    """The trainer settings every published config shares.

    `train_size` (training videos of the data set, as in the original config) turns the
    2.5-epoch warmup into steps and sets one evaluation per epoch; the cosine decay ends at
    the run's last step, which the trainer derives from `num_training_epochs` and the data.
    """
    steps_per_epoch = train_size // BATCH_SIZE
    config = ml_collections.ConfigDict()
    config.experiment_name = experiment_name
    config.rng_seed = 0
    config.batch_size = BATCH_SIZE
    config.eval_batch_size = EVAL_BATCH_SIZE
    config.optimizer = ml_collections.ConfigDict(
        {"name": "sgd", "momentum": 0.9, "nesterov": False, "grad_clip_norm": 1.0}
    )
    config.lr_configs = ml_collections.ConfigDict(
        {
            "factors": "constant * cosine_decay * linear_warmup",
            "base_learning_rate": 0.1,  # each config sets its own
            "warmup_steps": int(WARMUP_EPOCHS * steps_per_epoch),
        }
    )
    config.multiview_test = True
    config.log_summary_steps = 100
    config.log_eval_steps = steps_per_epoch
    config.checkpoint_steps = 500
    return config


def video_tfrecord(
    dataset: str,
    *,
    num_classes: int,
    stride: int,
    image_size: int = 224,
    resize_size: int = 256,
    num_test_crops: int = 3,
    multi_label: bool = False,
) -> ml_collections.ConfigDict:
    """`dataset_configs` for the core's `video_tfrecord` reader (records as written by
    `scenic.dataset_lib.write_video_records`), with placeholder file globs.

    Train: 32 frames `stride` apart, a square crop of 100/87.5/75/66% of the short side
    ('multi_scale', close to the original's short-side scale jitter of 0.9-1.33 before a
    224 crop) and a random flip. Test: 4 clips x `num_test_crops` crops of the short side
    resized to `resize_size`. Records are read by offset (`in_memory=False`): these data
    sets do not fit in memory.
    """
    return ml_collections.ConfigDict(
        {
            "train_files": f"{PLACEHOLDER_DIR}/{dataset}/train-*.tfrecord",
            "eval_files": f"{PLACEHOLDER_DIR}/{dataset}/validation-*.tfrecord",
            "num_classes": num_classes,
            "num_frames": 32,
            "stride": stride,
            "image_size": image_size,
            "resize_size": resize_size,
            "train_crop": "multi_scale",
            "random_flip": True,
            "num_test_clips": 4,
            "num_test_crops": num_test_crops,
            "multi_label": multi_label,
            "in_memory": False,
        }
    )


def vivit(encoder: dict, *, variant: str, **overrides) -> ml_collections.ConfigDict:
    """`config.model`: a ViViT with `encoder`'s sizes, 2x16x16 tubelets and a class token."""
    model = {
        "variant": variant,
        "tokenizer": "tubelet",
        "patch_size": (2, 16, 16),
        **encoder,
        "classifier": "token",
        "dropout_rate": 0.0,
        "attention_dropout_rate": 0.0,
        "stochastic_depth": 0.0,
    }
    model.update(overrides)
    return ml_collections.ConfigDict(model)


def init_from_vit(vit_name: str) -> ml_collections.ConfigDict:
    """Start from an ImageNet-21k image ViT (a `vision_transformer` .npz such as
    `imagenet21k/ViT-B_16.npz`, or a scenic-baselines ViT workdir): tubelet kernels from
    the central frame and, for the factorised encoder, a fresh temporal transformer, as in
    the original configs. The checkpoint path is a placeholder the user must override."""
    return ml_collections.ConfigDict(
        {
            "checkpoint": f"{PLACEHOLDER_DIR}/imagenet21k/{vit_name}.npz",
            "kernel_init": "central_frame",
            "temporal_init": "fresh",
        }
    )
