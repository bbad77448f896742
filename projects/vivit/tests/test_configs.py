"""Every shipped config resolves (every key checked), its docstring opens with the command
that runs it (and that command's overrides resolve too), and the published configs build
models with the parameter counts in the project README, counted from shapes only
(`jax.eval_shape`: nothing is allocated)."""

import importlib
import pathlib
import re
import shlex

import jax
import jax.numpy as jnp
import pytest

from scenic.common_lib import config_utils, runner
from scenic.common_lib.debug_utils import count_parameters
from scenic_vivit.init_from_vit import KERNEL_INITS, TEMPORAL_INITS
from scenic_vivit.models import INIT_FROM_VIT_KEYS, MODELS

PACKAGE = "scenic_vivit.configs"
CONFIGS = config_utils.list_configs(PACKAGE)
README = pathlib.Path(__file__).resolve().parents[1] / "README.md"

# Published config -> the README's parameter-count figure for its architecture, with a
# 400-way head on 32x224x224 clips: a row of the table, or (L FE with 4 temporal layers)
# the count given in the text below it.
PUBLISHED = {
    "vivit_b16x2_k400": "ViViT-B/16x2 (model 1)",
    "vivit_b16x2_fe_k400": "ViViT-B/16x2 FE (model 2)",
    "vivit_l16x2_fe_k400": "ViViT-L/16x2 FE (model 2)",
    "vivit_l16x2_fe_k600": "ViViT-L/16x2 FE (model 2)",
    "vivit_l16x2_fe_epic_kitchens": "4 temporal layers",
    "vivit_l16x2_fe_ssv2": "4 temporal layers",
}
README_CLASSES = 400


# Stands in for a downloaded ViT checkpoint: resolve_config checks the path exists.
EXISTING_FILE = str(pathlib.Path(__file__).resolve())


def load(name):
    return config_utils.load_config(name, PACKAGE)


def load_with_checkpoint(name):
    """The config with its init_from_vit placeholder pointing at an existing file."""
    config = load(name)
    if config.get("init_from_vit"):
        config.init_from_vit.checkpoint = EXISTING_FILE
    return config


def docstring_command(name) -> list[str]:
    """The command the config's docstring opens with (backslash-continued lines), as argv."""
    lines = load_module(name).__doc__.splitlines()
    command = lines[0]
    for line in lines[1:]:
        if not command.endswith("\\"):
            break
        command = command[:-1] + " " + line.strip()
    return shlex.split(command)


def load_module(name):
    return importlib.import_module(f"{PACKAGE}.{name}")


def readme_count(label: str) -> int:
    text = README.read_text()
    if label == "4 temporal layers":
        match = re.search(r"4 temporal layers \(([\d,]+) parameters with a 400-way head\)", text)
    else:
        match = re.search(rf"^\| {re.escape(label)} \|[^|]*\|[^|]*\| ([\d,]+) \|", text, re.M)
    assert match, f"README.md has no parameter count for {label!r}"
    return int(match.group(1).replace(",", ""))


def test_every_published_config_is_shipped_and_demo_kept():
    assert set(PUBLISHED) <= set(CONFIGS)
    assert "vivit_moving_digits" in CONFIGS
    assert not any(name.startswith("_") for name in CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_resolves(name):
    config, model_cls = runner.resolve_config(load_with_checkpoint(name), MODELS)
    assert model_cls is MODELS[config.model_name]
    settings = config.get("init_from_vit")
    if settings:
        config_utils.check_keys(settings, INIT_FROM_VIT_KEYS, "init_from_vit")
        assert settings.kernel_init in KERNEL_INITS
        assert settings.temporal_init in TEMPORAL_INITS


@pytest.mark.parametrize("name", CONFIGS)
def test_docstring_opens_with_the_command_that_runs_it(name):
    first_line = load_module(name).__doc__.splitlines()[0]
    assert f"scenic-vivit train --config {name} " in first_line + " "
    argv = docstring_command(name)
    assert argv[:4] == ["scenic-vivit", "train", "--config", name]
    assert argv[4] == "--workdir"
    overrides = runner.parse_overrides(argv[6:])
    # The docstring's checkpoint is a $VIT/... placeholder: point it at a file that exists.
    overrides = [
        f"init_from_vit.checkpoint={EXISTING_FILE}"
        if o.startswith("init_from_vit.checkpoint=")
        else o
        for o in overrides
    ]
    config, _ = runner.resolve_config(load(name), MODELS, overrides)
    for item in overrides:
        key, _, value = item.partition("=")
        node = config
        for part in key.split("."):
            node = node[part]
        assert node == value


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_config_needs_its_paths_overridden(name):
    """Data and ViT paths are placeholders: the docstring's command overrides every one."""
    config = load(name)
    placeholders = {
        "dataset_configs.train_files": config.dataset_configs.train_files,
        "dataset_configs.eval_files": config.dataset_configs.eval_files,
        "init_from_vit.checkpoint": config.init_from_vit.checkpoint,
    }
    for path in placeholders.values():
        assert path.startswith("/path/to/")
    overridden = {item.split("=")[0][len("--config.") :] for item in docstring_command(name)}
    assert set(placeholders) <= overridden
    assert config.multiview_test and config.dataset_configs.num_test_clips == 4


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_count_matches_readme(name):
    config, model_cls = runner.resolve_config(load_with_checkpoint(name), MODELS)
    data = config.dataset_configs
    video = (1, data.num_frames, data.image_size, data.image_size, 3)
    model = model_cls(config, {"num_classes": data.num_classes, "input_shape": video})
    # The README counts 32x224x224 clips (196 tokens a frame) with 400 classes: adjust for
    # this config's head width and, for the factorised encoder's per-frame position
    # embedding, its crop size.
    width, tokens = config.model.hidden_size, (data.image_size // 16) ** 2
    head = (data.num_classes - README_CLASSES) * (width + 1)
    posemb = (tokens - 196) * width * (16 if config.model.variant == "spatio_temporal" else 1)
    expected = readme_count(PUBLISHED[name]) + head + posemb
    shapes = jax.eval_shape(lambda: model.flax_model.init(jax.random.key(0), jnp.zeros(video)))
    assert data.num_frames == 32 and tuple(config.model.patch_size) == (2, 16, 16)
    assert count_parameters(shapes["params"]) == expected


def test_missing_vit_checkpoint_is_a_config_error():
    with pytest.raises(config_utils.ConfigError, match="init_from_vit.checkpoint"):
        runner.resolve_config(load("vivit_b16x2_k400"), MODELS)
