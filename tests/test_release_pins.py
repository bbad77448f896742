"""Tests for the pin checks of tools/release_check.py, on synthetic inputs (no building)."""

import importlib.util
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "release_check.py"


def load_tool():
    """Import tools/release_check.py from its path (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("release_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


release_check = load_tool()
check_pin = release_check.check_pin


@pytest.mark.parametrize("pin", ["~=0.1.0", "~=0.1", ">=0.1,<0.2", "==0.1.*", "==0.1.0"])
def test_pin_that_admits_the_version_passes(pin):
    deps = ["jax>=0.10", f"scenic-core{pin}"]
    assert check_pin("scenic-vivit", deps, "scenic-core", "0.1.0") == []


def test_pin_that_excludes_the_version_names_project_pin_and_version():
    problems = check_pin("scenic-vivit", ["scenic-core~=0.2.0"], "scenic-core", "0.1.0")
    assert len(problems) == 1
    assert "scenic-vivit" in problems[0]
    assert "~=0.2.0" in problems[0]
    assert "0.1.0" in problems[0]


def test_missing_pin_is_reported():
    problems = check_pin("scenic-mbt", ["jax>=0.10", "flax"], "scenic-core", "0.1.0")
    assert len(problems) == 1
    assert "scenic-mbt" in problems[0]
    assert "does not depend on scenic-core" in problems[0]


@pytest.mark.parametrize("dep", ["scenic-core", "scenic-core>=0.1", "scenic-core<0.2"])
def test_unbounded_pin_is_reported(dep):
    problems = check_pin("scenic-mbt", [dep], "scenic-core", "0.1.0")
    assert len(problems) == 1
    assert "bounded" in problems[0]


def test_name_matching_is_canonical():
    assert check_pin("p", ["Scenic_Core~=0.1.0"], "scenic-core", "0.1.0") == []


def test_check_all_pins_on_a_synthetic_workspace(tmp_path):
    def write(folder, text):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "pyproject.toml").write_text(text)

    write("core", '[project]\nname = "scenic-core"\nversion = "0.2.0"\n')
    write("projects/a", '[project]\nname = "scenic-a"\ndependencies = ["scenic-core~=0.2.0"]\n')
    write("projects/b", '[project]\nname = "scenic-b"\ndependencies = ["scenic-core~=0.1.0"]\n')
    (tmp_path / "projects" / "notes").mkdir()  # no pyproject.toml: not a package

    packages = release_check.discover_packages(tmp_path)
    assert [p.name for p in packages] == ["scenic-core", "scenic-a", "scenic-b"]
    checked, problems = release_check.check_all_pins(packages)
    assert checked == 2
    assert len(problems) == 1 and problems[0].startswith("scenic-b: pin scenic-core~=0.1.0")
