"""What the published MBT configs share: the recipe of Nagrani et al. (NeurIPS 2021) as set
in the original Scenic configs (`scenic/projects/mbt/configs/`).

MBT-Base: ViT-B sized encoders, separate weights per modality, 4 bottleneck tokens from
layer 8 of 12, GAP heads, stochastic depth 0.3, from an ImageNet-21k ViT-B/16; RGB of 32
frames at stride 2 (25 fps videos), 224 crops, 2x16x16 tubelets; 8 s of audio as a log-mel
spectrogram of 800 x 128 (100 frames a second: 25 ms windows, 10 ms hop at 16 kHz), 16x16
patches, SpecAugment (4 time masks of up to 48 frames, 1 mel mask of up to 48 bins).
Training: momentum SGD, batch 64, lr 0.5 with 2.5 warm-up epochs then cosine decay,
gradients clipped to norm 1, mixup 0.5 (one lambda for both modalities), label smoothing
0.3, multi-view test of 4 clips.

Not carried over from the original: its colour augmentation, and the spectrogram
normalisation by AudioSet-wide mean and standard deviation (1.102, 2.762).

The leading underscore keeps this module out of `scenic-mbt list-configs`.
"""

from __future__ import annotations

import ml_collections

BATCH_SIZE = 64
EVAL_BATCH_SIZE = 8  # x 4 clips per step in the multi-view test
WARMUP_EPOCHS = 2.5
VIT_BASE = {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "mlp_dim": 3072}
PLACEHOLDER_DIR = "/path/to"  # data and checkpoint paths the user must override


def base_config(experiment_name: str, *, train_size: int, epochs: int, lr: float):
    """Trainer settings: `train_size` (the original configs' counts) sets the warm-up and
    one evaluation per epoch; the cosine decay ends at the run's last step."""
    steps_per_epoch = train_size // BATCH_SIZE
    config = ml_collections.ConfigDict()
    config.experiment_name = experiment_name
    config.rng_seed = 0
    config.batch_size = BATCH_SIZE
    config.eval_batch_size = EVAL_BATCH_SIZE
    config.num_training_epochs = epochs
    config.optimizer = ml_collections.ConfigDict(
        {"name": "sgd", "momentum": 0.9, "nesterov": False, "grad_clip_norm": 1.0}
    )
    config.lr_configs = ml_collections.ConfigDict(
        {
            "factors": "constant * cosine_decay * linear_warmup",
            "base_learning_rate": lr,
            "warmup_steps": int(WARMUP_EPOCHS * steps_per_epoch),
        }
    )
    config.mixup = ml_collections.ConfigDict({"mixup_alpha": 0.5})
    config.multiview_test = True
    config.log_summary_steps = 100
    config.log_eval_steps = steps_per_epoch
    config.checkpoint_steps = 500
    return config


def audiovisual_tfrecord(
    dataset: str, *, num_classes: int, multi_label: bool = False, audio_feature="waveform"
) -> ml_collections.ConfigDict:
    """`dataset_configs` for the core's `audiovisual_tfrecord` reader (records written by
    `python -m scenic.dataset_lib.write_video_records ... --audio-from-video`), placeholder
    globs. Eval reads the `validation-*` records (AudioSet: the eval segments)."""
    return ml_collections.ConfigDict(
        {
            "train_files": f"{PLACEHOLDER_DIR}/{dataset}/train-*.tfrecord",
            "eval_files": f"{PLACEHOLDER_DIR}/{dataset}/validation-*.tfrecord",
            "num_classes": num_classes,
            "modalities": ("rgb", "spectrogram"),
            "num_frames": 32,
            "stride": 2,
            "image_size": 224,
            "resize_size": 256,
            "train_crop": "multi_scale",
            "random_flip": True,
            "audio_feature": audio_feature,
            "num_spec_frames": 800,
            "num_mel_bins": 128,
            "sample_rate": 16000,
            "stft_frame_length": 400,
            "stft_frame_step": 160,
            "lower_edge_hertz": 125.0,
            "upper_edge_hertz": 7500.0,
            "spec_augment": True,
            "spec_time_masks": 4,
            "spec_time_mask_max": 48,
            "spec_freq_masks": 1,
            "spec_freq_mask_max": 48,
            "num_test_clips": 4,
            "num_test_crops": 1,
            "multi_label": multi_label,
            "in_memory": False,
        }
    )


def mbt_base(**overrides) -> ml_collections.ConfigDict:
    """`config.model`: MBT-Base, 4 bottlenecks from layer 8, GAP, stochastic depth 0.3."""
    model = {
        "rgb_patch_size": (2, 16, 16),
        "spectrogram_patch_size": (16, 16),
        **VIT_BASE,
        "fusion_layer": 8,
        "n_bottlenecks": 4,
        "share_encoder": False,
        "classifier": "gap",
        "stochastic_depth": 0.3,
        "eval_single_modality": True,
    }
    model.update(overrides)
    return ml_collections.ConfigDict(model)


def init_from_vit() -> ml_collections.ConfigDict:
    """ImageNet-21k ViT-B/16 (google-research/vision_transformer `imagenet21k/ViT-B_16.npz`
    or a scenic-baselines ViT workdir) into both encoders; central-frame tubelets."""
    return ml_collections.ConfigDict(
        {
            "checkpoint": f"{PLACEHOLDER_DIR}/imagenet21k/ViT-B_16.npz",
            "kernel_init": "central_frame",
        }
    )
