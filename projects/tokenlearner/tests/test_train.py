"""The video demo trains a few steps through the `scenic-tokenlearner` CLI, at tiny sizes, and
`eval` reproduces the final metrics from the checkpoint."""

import json

import numpy as np

from scenic_tokenlearner.cli import main

TINY = [
    "--config.model.hidden_size=16",
    "--config.model.num_heads=2",
    "--config.model.mlp_dim=32",
    "--config.model.num_layers=1",
    "--config.dataset_configs.train_clips_per_image=1",
    "--config.batch_size=16",
    "--config.eval_batch_size=64",
    "--config.num_training_steps=2",
    "--config.log_summary_steps=1",
    "--config.log_eval_steps=2",
    "--config.checkpoint_steps=2",
    "--config.lr_configs.warmup_steps=1",
]


def test_video_demo_trains_and_evaluates(tmp_path):
    """With TokenFuser and stochastic depth on (the image demo's model is traced in
    test_model.py; its config resolves in test_configs.py)."""
    workdir = tmp_path / "run"
    extra = ["--config.model.token_fuser=True", "--config.model.stochastic_depth=0.1"]
    config = "tokenlearner_moving_digits"
    assert main(["train", "--config", config, "--workdir", str(workdir), *TINY, *extra]) == 0
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert final["step"] == 2 and 0.0 <= final["accuracy"] <= 1.0
    assert np.isfinite(final["loss"])
    assert main(["eval", "--workdir", str(workdir)]) == 0
    evaluated = json.loads((workdir / "eval_metrics.json").read_text())
    assert evaluated["step"] == 2
    np.testing.assert_allclose(evaluated["loss"], final["loss"], rtol=1e-5)
