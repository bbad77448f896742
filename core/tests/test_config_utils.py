"""Config loading, overrides and strict key checking."""

import ml_collections
import pytest

from scenic.common_lib import config_utils
from scenic.common_lib.config_utils import ConfigError

CONFIG_FILE = """
import ml_collections

def get_config(arg="small"):
    config = ml_collections.ConfigDict()
    config.size = arg
    config.lr = 0.1
    config.steps = 10
    config.shape = (1, 2)
    config.model = ml_collections.ConfigDict({"width": 8, "name": "vit"})
    return config
"""


@pytest.fixture
def config_path(tmp_path):
    path = tmp_path / "my_config.py"
    path.write_text(CONFIG_FILE)
    return path


def test_load_from_path_with_argument(config_path):
    assert config_utils.load_config(str(config_path)).size == "small"
    assert config_utils.load_config(f"{config_path}:large").size == "large"


def test_unknown_config_name_is_named(tmp_path):
    with pytest.raises(ConfigError, match="Unknown config 'nope'"):
        config_utils.load_config("nope", "scenic.common_lib")
    with pytest.raises(ConfigError, match="does not exist"):
        config_utils.load_config(str(tmp_path / "missing.py"))


def test_overrides_keep_types(config_path):
    config = config_utils.load_config(str(config_path))
    config_utils.apply_overrides(
        config, ["lr=1", "steps=20", "model.width=16", "model.name=resnet", "shape=(3, 4)"]
    )
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.steps == 20
    assert config.model.width == 16 and config.model.name == "resnet"
    assert config.shape == (3, 4)


@pytest.mark.parametrize(
    "override, message",
    [
        ("lrr=1", "Unknown config key 'lrr'.*Did you mean 'lr'"),
        ("model.widht=3", "Unknown config key 'model.widht'.*Did you mean 'width'"),
        ("modle.width=3", "Unknown config key 'modle'"),
        ("lr", "must look like"),
        ("steps=abc", r"'steps=abc': steps is 10 \(type int\) and 'abc' cannot be one"),
        ("model.width=(1, 2)", r"model.width is 8 \(type int\) and \(1, 2\) cannot be one"),
    ],
)
def test_unknown_keys_and_mistyped_overrides_are_errors(config_path, override, message):
    config = config_utils.load_config(str(config_path))
    with pytest.raises(ConfigError, match=message):
        config_utils.apply_overrides(config, [override])


def test_check_schema_names_misspelled_nested_key():
    schema = ml_collections.ConfigDict({"a": 1, "sub": {"x": 1, "y": 2}, "free": {}})
    good = ml_collections.ConfigDict({"a": 2, "sub": {"x": 3}, "free": {"anything": 1}})
    config_utils.check_schema(good, schema, free_sections=["free"])
    bad = ml_collections.ConfigDict({"sub": {"xx": 3}})
    with pytest.raises(ConfigError, match=r"sub\.xx: nothing reads it.*Did you mean 'x'"):
        config_utils.check_schema(bad, schema)


def test_signature_check():
    def builder(*, batch_size, image_size=16, shift=1):
        del batch_size, image_size, shift

    ok = ml_collections.ConfigDict({"image_size": 8})
    config_utils.check_keys_against_signature(ok, builder, "dataset_configs", ["batch_size"])
    bad = ml_collections.ConfigDict({"batch_size": 8})
    with pytest.raises(ConfigError, match="dataset_configs.batch_size"):
        config_utils.check_keys_against_signature(bad, builder, "dataset_configs", ["batch_size"])


def test_with_defaults_fills_missing_keys():
    defaults = ml_collections.ConfigDict({"a": 1, "sub": {"x": 1, "y": 2}})
    merged = config_utils.with_defaults(ml_collections.ConfigDict({"sub": {"x": 5}}), defaults)
    assert merged.a == 1 and merged.sub.x == 5 and merged.sub.y == 2


def test_override_may_start_an_open_section_the_file_leaves_out(config_path):
    """`--config.mixup.mixup_alpha=0.2` on a config without a `mixup` section creates it when
    `mixup` is an open section and a schema check follows (open_top_level); elsewhere a
    missing section stays an error."""
    config = config_utils.load_config(str(config_path))
    config_utils.apply_overrides(
        config, ["mixup.mixup_alpha=0.2", "mixup.label_smoothing=0.1"], ["mixup"], True
    )
    assert config.mixup.to_dict() == {"mixup_alpha": 0.2, "label_smoothing": 0.1}
    for open_sections, open_top_level in ((["mixup"], False), ((), True)):
        fresh = config_utils.load_config(str(config_path))
        with pytest.raises(ConfigError, match="Unknown config key 'mixup'"):
            config_utils.apply_overrides(
                fresh, ["mixup.mixup_alpha=0.2"], open_sections, open_top_level
            )
