"""The trainer registry and project verbs: what a project may register, and clear errors."""

import types

import pytest

from scenic.common_lib import runner
from scenic.common_lib.config_utils import ConfigError
from scenic.train_lib import trainer, trainers


def test_core_trainer_is_registered_under_both_names():
    assert trainers.get_trainer("trainer") is trainer
    assert trainers.get_trainer("classification_trainer") is trainer
    assert trainers.DEFAULT_TRAINER == "trainer"


def test_unknown_trainer_names_the_closest():
    with pytest.raises(ConfigError, match="Unknown trainer_name 'trainr'. Did you mean 'trainer'"):
        trainers.get_trainer("trainr")


def test_register_trainer_checks_what_it_is_given():
    incomplete = types.SimpleNamespace(default_config=trainer.default_config, train=trainer.train)
    with pytest.raises(TypeError, match="lacks check_config, evaluate_checkpoint"):
        trainers.register_trainer("test_incomplete", incomplete)
    with pytest.raises(ValueError, match="already registered"):
        trainers.register_trainer("trainer", trainer)
    trainers.register_trainer("test_registered_core", trainer)
    assert trainers.get_trainer("test_registered_core") is trainer
    assert "test_registered_core" in trainers.list_trainers()


def test_project_verbs_may_not_replace_builtin_ones():
    command = runner.Command(run=lambda args, context: 0, help="x")
    with pytest.raises(ValueError, match="would replace built-in verbs"):
        runner.make_main(
            prog="p", config_package="p", models=dict, description="", commands={"eval": command}
        )


def test_trainer_schema_checks_values_it_cannot_use():
    config = trainer.default_config()
    config.num_training_steps = 0
    with pytest.raises(ConfigError, match="Set num_training_steps or num_training_epochs"):
        trainer.check_config(config)
