"""Every shipped config resolves (every key checked), its docstring opens with the command
that runs it, the published configs' placeholders are all overridden by that command, and
their models have the parameter counts in the project README (from shapes only)."""

import importlib
import pathlib
import re
import shlex

import jax
import jax.numpy as jnp
import pytest

from scenic.common_lib import config_utils, runner
from scenic.common_lib.debug_utils import count_parameters
from scenic_tokenlearner.models import MODELS

PACKAGE = "scenic_tokenlearner.configs"
CONFIGS = config_utils.list_configs(PACKAGE)
README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
DEMOS = ("tokenlearner_digits", "tokenlearner_moving_digits")
# Published config -> its row in the README's parameter table.
PUBLISHED = {
    "tokenlearner_b16_imagenet": "ViT-B/16, TokenLearner 16at9",
    "tokenlearner_l16x2_k400": "ViViT-L/16x2, TokenLearner 16at18, 32 frames",
    "tokenlearner_l16x2_k600": "ViViT-L/16x2, TokenLearner 16at18, 32 frames",
}
EXISTING_FILE = str(pathlib.Path(__file__).resolve())  # stands in for a ViT checkpoint


def load(name):
    config = config_utils.load_config(name, PACKAGE)
    if config.get("init_from_vit"):
        config.init_from_vit.checkpoint = EXISTING_FILE
    return config


def docstring_command(name) -> list[str]:
    lines = importlib.import_module(f"{PACKAGE}.{name}").__doc__.splitlines()
    command = lines[0]
    for line in lines[1:]:
        if not command.endswith("\\"):
            break
        command = command[:-1] + " " + line.strip()
    return shlex.split(command)


def test_shipped_configs():
    assert set(CONFIGS) == {*DEMOS, *PUBLISHED}


@pytest.mark.parametrize("name", CONFIGS)
def test_config_resolves_and_docstring_runs_it(name):
    config, model_cls = runner.resolve_config(load(name), MODELS)
    assert model_cls is MODELS[config.model_name]
    argv = docstring_command(name)
    assert argv[:4] == ["scenic-tokenlearner", "train", "--config", name]
    assert argv[4] == "--workdir"
    overrides = [
        f"init_from_vit.checkpoint={EXISTING_FILE}" if o.startswith("init_from_vit.") else o
        for o in runner.parse_overrides(argv[6:])
    ]
    runner.resolve_config(load(name), MODELS, overrides)
    if name in PUBLISHED and config.get("init_from_vit"):
        raw = config_utils.load_config(name, PACKAGE)
        placeholders = {
            "dataset_configs.train_files": raw.dataset_configs.train_files,
            "dataset_configs.eval_files": raw.dataset_configs.eval_files,
            "init_from_vit.checkpoint": raw.init_from_vit.checkpoint,
        }
        assert all(path.startswith("/path/to/") for path in placeholders.values())
        assert set(placeholders) <= {o.split("=")[0] for o in runner.parse_overrides(argv[6:])}


def readme_row(label: str) -> list[str]:
    match = re.search(rf"^\| {re.escape(label)} \|(.*)\|$", README.read_text(), re.M)
    assert match, f"README.md has no row for {label!r}"
    return [cell.strip() for cell in match.group(1).split("|")]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_count_matches_readme(name):
    config, model_cls = runner.resolve_config(load(name), MODELS)
    if config.dataset_name == "imagenet2012":
        shape, classes = (1, 224, 224, 3), 1000
    else:
        data = config.dataset_configs
        shape, classes = (1, data.num_frames, data.image_size, data.image_size, 3), 400
    model = model_cls(config, {"num_classes": classes, "input_shape": shape})
    shapes = jax.eval_shape(lambda: model.flax_model.init(jax.random.key(0), jnp.zeros(shape)))
    expected = int(readme_row(PUBLISHED[name])[0].replace(",", ""))
    assert count_parameters(shapes["params"]) == expected
