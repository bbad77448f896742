r"""scenic-tokenlearner train --config tokenlearner_b16_imagenet --workdir /tmp/tl_b16_imagenet

ViT-B/16 with a TokenLearner v1.1 learning 16 tokens before block 9 of 12 ("16at9"), on
ImageNet-1k from scratch, with the recipe of the original Scenic config
(`token_learner/configs/im1k_token_learner_config.py`): 224 px, GAP, stochastic depth 0.1
(which the original set but never passed to its model; here it reaches every block), Adam
(b1 0.9, b2 0.999) with decoupled weight decay 0.3, gradients clipped at norm 1, batch 4096,
base lr 5e-3 with 10k linear warm-up steps then linear decay to 1e-5, 90 epochs.

One difference: the original trained with sigmoid cross-entropy (its multi-label model, head
bias -10) on one-hot labels; the `imagenet2012` pipeline here yields class indices, so this
config uses the softmax model. Blocks 9-11 see 16 tokens instead of 196, which cuts the
encoder's FLOPs by about a fifth (the README's table counts them).

Needs `imagenet2012` prepared by TFDS (manual download); pass
`--config.dataset_configs.data_dir=DIR` if it is not in TFDS's default data directory. Not
run here: expect days on a TPU/GPU pod.
"""

import ml_collections

IMAGENET_TRAIN_SIZE = 1_281_167


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment_name = "tokenlearner_b16_imagenet"
    config.model_name = "tokenlearner_classification"
    config.dataset_name = "imagenet2012"
    config.dataset_configs = ml_collections.ConfigDict({"image_size": 224, "data_dir": None})
    config.model = ml_collections.ConfigDict(
        {
            "patch_size": (16, 16),
            "hidden_size": 768,
            "num_layers": 12,
            "num_heads": 12,
            "mlp_dim": 3072,
            "tokenlearner_loc": 9,
            "num_tokens": 16,
            "version": "v1.1",
            "token_fuser": False,
            "classifier": "gap",
            "representation_size": None,
            "dropout_rate": 0.0,
            "attention_dropout_rate": 0.0,
            "stochastic_depth": 0.1,
        }
    )
    config.label_smoothing = None
    config.rng_seed = 42
    config.batch_size = 4096
    config.eval_batch_size = 4096
    config.num_training_epochs = 90.0
    config.optimizer = ml_collections.ConfigDict(
        {"name": "adamw", "b1": 0.9, "b2": 0.999, "weight_decay": 0.3, "grad_clip_norm": 1.0}
    )
    config.lr_configs = ml_collections.ConfigDict(
        {
            "factors": "constant * linear_warmup * linear_decay",
            "base_learning_rate": 5e-3,
            "warmup_steps": 10_000,
            "end_factor": 1e-5 / 5e-3,  # decays to 1e-5, as the original
        }
    )
    config.log_summary_steps = 100
    config.log_eval_steps = 1000
    config.checkpoint_steps = 5000
    return config
