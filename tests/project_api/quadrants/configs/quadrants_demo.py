"""`python -m quadrants.cli train --config quadrants_demo --workdir DIR`: a linear classifier
learns which quadrant holds the bright square (100% test accuracy in a few seconds)."""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.trainer_name = "notes_trainer"
    config.notes = "quadrants demo"
    config.model_name = "quadrant_classifier"
    config.dataset_name = "quadrants"
    config.dataset_configs = {"noise": 0.3}
    config.batch_size = 32
    config.eval_batch_size = 32
    config.num_training_steps = 30
    config.log_summary_steps = 10
    config.log_eval_steps = 30
    config.checkpoint_steps = 30
    config.optimizer = {"name": "adamw"}
    config.lr_configs = {"factors": "constant", "base_learning_rate": 0.05}
    return config
