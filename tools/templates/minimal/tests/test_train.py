"""The demo config trains a few steps through the CLI and leaves a complete workdir."""

import json

from scenic_minimal.cli import main

FEW_STEPS = [
    "--config.num_training_steps=4",
    "--config.log_summary_steps=2",
    "--config.log_eval_steps=4",
    "--config.checkpoint_steps=4",
    "--config.lr_configs.warmup_steps=1",
]


def test_demo_trains_a_few_steps_through_the_cli(tmp_path, capsys):
    assert main(["list-configs"]) == 0
    assert "classifier_digits" in capsys.readouterr().out.split()

    workdir = tmp_path / "classifier_digits"
    args = ["train", "--config", "classifier_digits", "--workdir", str(workdir), *FEW_STEPS]
    assert main(args) == 0
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert final["step"] == 4 and 0.0 <= final["accuracy"] <= 1.0, final
    config = json.loads((workdir / "config.json").read_text())
    assert config["model_name"] == "patch_classifier"
    assert "test accuracy:" in capsys.readouterr().out
