r"""scenic-mbt train --config mbt_audiovisual_digits --workdir /tmp/mbt_audiovisual_digits

The demo: bottleneck fusion on built-in `audiovisual_digits` (no download). Each clip is a
digit seen in 4 noisy 16x16 frames and heard as a tone; 3/4 of the 5-9 clips are fully
occluded, and the tone only names the pair {d, d + 5}: audio alone can reach 50%, video
alone about 69%, the two together ~100%. Eval reports the fused accuracy and, from the same
checkpoint, `rgb_only_accuracy` and `spectrogram_only_accuracy`.

Expected, measured on a 2-core AMD EPYC (Zen 4, AVX-512) CPU: 99.72% / 99.44% / 99.72% test
accuracy for seeds 0 / 1 / 2 after 141-158 s of training (1,200 steps at ~530-600 clips/s),
0.0214 GFLOPs per clip; the same checkpoints give ~65.6% video alone and ~49.4% audio
alone. See the project README's table for the other variants.

The variants of the README's table, same command with `--config mbt_audiovisual_digits:V`:
`bottleneck` (the default: 4 bottleneck tokens from layer 2 of 4), `early` (joint
attention from layer 0), `late` (no exchange; logits averaged), `audio` and `video` (the
data set yields one modality).
"""

import ml_collections

VARIANTS = ("bottleneck", "early", "late", "audio", "video")


def get_config(variant: str = "bottleneck") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(
            f"mbt_audiovisual_digits variant must be one of {VARIANTS}, got {variant!r}."
        )
    config = ml_collections.ConfigDict()
    config.experiment_name = f"mbt_audiovisual_digits_{variant}"
    config.model_name = "mbt_classification"
    config.dataset_name = "audiovisual_digits"
    modalities = {"audio": ("spectrogram",), "video": ("rgb",)}.get(variant, ("rgb", "spectrogram"))
    # Train clips move by up to 1 pixel (the small ViT generalises much better on digits).
    config.dataset_configs = ml_collections.ConfigDict(
        {"modalities": modalities, "shift_pixels": 1}
    )
    config.model = ml_collections.ConfigDict(
        {
            "rgb_patch_size": (2, 4, 4),  # 2 x 4 x 4 = 32 tubelet tokens
            "spectrogram_patch_size": (4, 4),  # 4 x 8 = 32 spectrogram patches
            "hidden_size": 64,
            "num_layers": 4,
            "num_heads": 4,
            "mlp_dim": 128,
            "fusion_layer": {"early": 0, "late": 4}.get(variant, 2),
            "n_bottlenecks": 0 if variant == "early" else 4,
            "classifier": "gap",
            # 30% of training clips keep one modality: each encoder must classify alone.
            "modality_dropout": 0.3,
            "stochastic_depth": 0.1,
        }
    )
    config.rng_seed = 0
    config.batch_size = 64
    config.eval_batch_size = 120
    config.label_smoothing = 0.1
    config.num_training_steps = 1200
    config.optimizer = ml_collections.ConfigDict(
        {"name": "adamw", "weight_decay": 1e-4, "grad_clip_norm": 1.0}
    )
    config.lr_configs = ml_collections.ConfigDict(
        {
            "factors": "constant * linear_warmup * cosine_decay",
            "base_learning_rate": 2e-3,
            "warmup_steps": 150,
        }
    )
    config.log_summary_steps = 100
    config.log_eval_steps = 600
    config.checkpoint_steps = 600
    return config
