"""Train state, optimizers, learning-rate schedules, checkpoints, summaries and trainers."""
