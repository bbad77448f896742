"""Every shipped config resolves (every key checked) and its docstring opens with the command
that runs it; the published configs' placeholders are all overridden by that command; the
demo's variants are the README table's rows."""

import importlib
import pathlib
import shlex

import pytest

from scenic.common_lib import config_utils, runner
from scenic_mbt.configs import mbt_audiovisual_digits
from scenic_mbt.models import MODELS

PACKAGE = "scenic_mbt.configs"
CONFIGS = config_utils.list_configs(PACKAGE)
PUBLISHED = (
    "mbt_audioset_mini",
    "mbt_audioset_500k",
    "mbt_vggsound",
    "mbt_epic_kitchens",
    "mbt_kinetics_sounds",
)
EXISTING_FILE = str(pathlib.Path(__file__).resolve())  # stands in for a ViT checkpoint
README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


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
    assert set(CONFIGS) == {"mbt_audiovisual_digits", *PUBLISHED}


@pytest.mark.parametrize("name", CONFIGS)
def test_config_resolves_and_docstring_runs_it(name):
    config, model_cls = runner.resolve_config(load(name), MODELS)
    assert model_cls is MODELS[config.model_name]
    argv = docstring_command(name)
    assert argv[:4] == ["scenic-mbt", "train", "--config", name]
    assert argv[4] == "--workdir"
    overrides = [
        f"init_from_vit.checkpoint={EXISTING_FILE}" if o.startswith("init_from_vit.") else o
        for o in runner.parse_overrides(argv[6:])
    ]
    runner.resolve_config(load(name), MODELS, overrides)
    if name in PUBLISHED:
        raw = config_utils.load_config(name, PACKAGE)
        placeholders = {
            "dataset_configs.train_files": raw.dataset_configs.train_files,
            "dataset_configs.eval_files": raw.dataset_configs.eval_files,
            "init_from_vit.checkpoint": raw.init_from_vit.checkpoint,
        }
        assert all(path.startswith("/path/to/") for path in placeholders.values())
        assert set(placeholders) <= {o.split("=")[0] for o in runner.parse_overrides(argv[6:])}
        assert config.dataset_name == "audiovisual_tfrecord"  # the original never set one
        assert config.model.fusion_layer == 8 and config.model.n_bottlenecks == 4


@pytest.mark.parametrize("variant", mbt_audiovisual_digits.VARIANTS)
def test_demo_variants(variant):
    config, _ = runner.resolve_config(
        config_utils.load_config(f"mbt_audiovisual_digits:{variant}", PACKAGE), MODELS
    )
    fusion = {"early": 0, "late": 4}.get(variant, 2)
    assert config.model.fusion_layer == fusion
    assert len(config.dataset_configs.modalities) == (1 if variant in ("audio", "video") else 2)
    assert f"`mbt_audiovisual_digits:{variant}`" in README.read_text()
    with pytest.raises(ValueError, match="variant must be one of"):
        mbt_audiovisual_digits.get_config("mid")
