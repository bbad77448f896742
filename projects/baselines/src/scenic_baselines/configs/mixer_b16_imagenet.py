r"""Mixer-B/16 on ImageNet-1k from scratch, the paper's regularised recipe.

    scenic-baselines train --config mixer_b16_imagenet --workdir /tmp/mixer_b16

Tolstikhin et al. (2021), Section 3.2: "When trained from scratch on ImageNet, Mixer-B/16
achieves a reasonable top-1 accuracy of 76.44%" (224 px); big_vision's reproduction
(`configs/mlp_mixer_i1k.py`) reports 76.3% after 300 epochs. Model: width 768, 12 blocks,
token MLP 384, channel MLP 3072, 16x16 patches, 59,880,472 parameters with the 1000-way
head; stochastic depth 0.1, no dropout. Training as big_vision's config: Adam (b1=0.9,
b2=0.999), batch 4096, 300 epochs, learning rate 1e-3 with 10k linear warm-up steps and a
linear decay (to 1e-5 of the peak), gradient clipping at global norm 1, decoupled weight
decay on the kernels (big_vision's wd=1e-4 is not multiplied by the learning rate; optax's
adamw multiplies its weight_decay by it, so 1e-4 / 1e-3 = 0.1 here), inception crops,
flips, RandAugment(2, 15) and mixup (alpha 0.5, one coefficient per batch).

One deviation: big_vision trains with a sigmoid cross-entropy (head bias -6.9); this uses
the softmax cross-entropy of `mixer_classification`, because the core's `imagenet2012`
gives integer labels and the multi-label model needs multi-hot ones in evaluation.

Needs `imagenet2012` prepared by TFDS (manual download, see `scenic.dataset_lib.
tfds_classification`); pass `--config.dataset_configs.data_dir=DIR` if it is not in
TFDS's default data directory. Not run here: expect days on a TPU/GPU pod.

To fine-tune a published checkpoint instead (e.g. gs://mixer_models/imagenet21k/
Mixer-B_16.npz, whose names equal this model's), add
`--config.init_from.checkpoint=/path/Mixer-B_16.npz --config.init_from.reinit='("head/.*",)'`
(and the paper's fine-tuning schedule: SGD with momentum, batch 512, no weight decay).
"""

import ml_collections

IMAGENET_TRAIN_EXAMPLES = 1_281_167


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment_name = "mixer_b16_imagenet"
    config.model_name = "mixer_classification"
    config.dataset_name = "imagenet2012"
    config.dataset_configs = ml_collections.ConfigDict(
        {
            "image_size": 224,
            "data_dir": None,
            "randaugment_layers": 2,
            "randaugment_magnitude": 15.0,
        }
    )
    config.model = ml_collections.ConfigDict(
        {
            "patch_size": (16, 16),
            "hidden_size": 768,
            "num_layers": 12,
            "tokens_mlp_dim": 384,
            "channels_mlp_dim": 3072,
            "dropout_rate": 0.0,
            "stochastic_depth": 0.1,
        }
    )
    config.label_smoothing = None
    config.mixup = ml_collections.ConfigDict({"mixup_alpha": 0.5})
    config.rng_seed = 42
    config.batch_size = 4096
    config.eval_batch_size = 4096
    config.num_training_epochs = 300.0
    config.optimizer = ml_collections.ConfigDict(
        {"name": "adamw", "b1": 0.9, "b2": 0.999, "weight_decay": 0.1, "grad_clip_norm": 1.0}
    )
    config.lr_configs = ml_collections.ConfigDict(
        {
            "factors": "constant * linear_warmup * linear_decay",
            "base_learning_rate": 1e-3,
            "warmup_steps": 10_000,
            "end_factor": 1e-5,
        }
    )
    config.log_summary_steps = 100
    config.log_eval_steps = 2500
    config.checkpoint_steps = 2500
    return config
