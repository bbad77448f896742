"""tools/release.py on a synthetic workspace: bumps, dependents' pins, CHANGELOG, dry run,
undo on failure, and one real build (wheel + sdist, metadata and twine checks)."""

import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def load_release():
    sys.path.insert(0, str(TOOLS))  # release.py imports release_check from beside it
    spec = importlib.util.spec_from_file_location("release", TOOLS / "release.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


release = sys.modules.get("release") or load_release()

CORE = """[build-system]
requires = ["hatchling>=1.27"]
build-backend = "hatchling.build"

[project]
name = "scenic-core"
version = "0.1.0"
description = "Synthetic core."
readme = "README.md"
requires-python = ">=3.11"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["src/scenic"]
"""
PROJECT_A = """[project]
name = "scenic-a"
version = "0.1.0"
dependencies = [
  # the core, with a compatible range
  "scenic-core~=0.1.0",
  "numpy>=1.26",
]
"""
PROJECT_B = """[project]
name = "scenic-b"
version = "0.3.0"
dependencies = ['scenic-core>=0.1,<0.2', "scenic-a~=0.1.0"]
"""


@pytest.fixture
def workspace(tmp_path):
    for folder, text in [("core", CORE), ("projects/a", PROJECT_A), ("projects/b", PROJECT_B)]:
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "pyproject.toml").write_text(text)
    (tmp_path / "core/README.md").write_text("# scenic-core\n\nA synthetic core.\n")
    (tmp_path / "core/src/scenic").mkdir(parents=True)
    (tmp_path / "core/src/scenic/__init__.py").write_text("")
    return tmp_path


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run(root, *args):
    return release.main([*args, "--date", "2026-12-01"], root=root)


def version(path):
    return tomllib.loads(path.read_text())["project"]["version"]


@pytest.mark.parametrize(
    "old, bump, new",
    [("0.1.0", "patch", "0.1.1"), ("0.1.3", "minor", "0.2.0"), ("0.4.2", "major", "1.0.0"),
     ("1.2", "patch", "1.2.1")],
)  # fmt: skip
def test_bump_version(old, bump, new):
    assert release.bump_version(old, bump) == new


def test_patch_bump_keeps_pins_and_adds_a_changelog_entry(workspace, capsys):
    assert run(workspace, "scenic-core", "--bump", "patch", "--no-build") == 0
    assert version(workspace / "core/pyproject.toml") == "0.1.1"
    assert (workspace / "projects/a/pyproject.toml").read_text() == PROJECT_A  # ~=0.1.0 admits
    changelog = (workspace / "core/CHANGELOG.md").read_text()
    assert changelog.startswith("# Changelog: scenic-core\n")
    assert f"## 0.1.1 (2026-12-01)\n\n{release.PLACEHOLDER}\n" in changelog
    assert "replace the TODO line of core/CHANGELOG.md" in capsys.readouterr().out


def test_bump_that_leaves_dependents_behind_lists_them_and_writes_nothing(workspace, capsys):
    before = snapshot(workspace)
    assert run(workspace, "core", "--bump", "minor") == 1
    err = capsys.readouterr().err
    assert "scenic-core 0.2.0 is outside the pins of 2 package(s)" in err
    assert "scenic-a (projects/a): scenic-core~=0.1.0" in err
    assert "scenic-b (projects/b): scenic-core>=0.1,<0.2" in err
    assert "--update-pins" in err and "nothing written" in err
    assert snapshot(workspace) == before


def test_update_pins_rewrites_them_to_a_compatible_range(workspace, capsys):
    message = "Trainer hook `on_eval_end`."
    args = ["--bump", "minor", "--update-pins", "--message", message, "--no-build"]
    assert run(workspace, "core", *args) == 0
    a = (workspace / "projects/a/pyproject.toml").read_text()
    assert a == PROJECT_A.replace("scenic-core~=0.1.0", "scenic-core~=0.2.0")  # comment kept
    b = tomllib.loads((workspace / "projects/b/pyproject.toml").read_text())["project"]
    assert b["dependencies"] == ["scenic-core~=0.2.0", "scenic-a~=0.1.0"]
    assert b["version"] == "0.3.0"  # a dependent's version is its own release's business
    assert (
        f"## 0.2.0 (2026-12-01)\n\n- {message}\n" in (workspace / "core/CHANGELOG.md").read_text()
    )
    out = capsys.readouterr().out
    assert "release scenic-a too" in out and "release scenic-b too" in out


def test_dry_run_shows_the_diff_and_writes_nothing(workspace, capsys):
    before = snapshot(workspace)
    assert run(workspace, "projects/b", "--bump", "major", "--dry-run") == 0
    out = capsys.readouterr().out
    assert '-version = "0.3.0"\n+version = "1.0.0"' in out
    assert "+## 1.0.0 (2026-12-01)" in out and "would run: hatch build" in out
    assert snapshot(workspace) == before


def test_unknown_package_names_the_workspace_packages(workspace, capsys):
    assert run(workspace, "scenic-zz", "--bump", "patch") == 1
    assert "scenic-a (projects/a)" in capsys.readouterr().err


def test_failed_build_undoes_every_change(workspace, monkeypatch):
    before = snapshot(workspace)
    monkeypatch.setattr(release, "build_and_check", lambda pkg, dist: ([], ["twine said no"]))
    assert run(workspace, "a", "--bump", "patch") == 1
    assert snapshot(workspace) == before  # pyproject restored, new CHANGELOG.md removed


def test_release_builds_wheel_and_sdist_and_checks_metadata(workspace, capsys):
    """The real thing, on the synthetic core: hatch build, metadata checks, twine check."""
    dist = workspace / "dist"
    assert run(workspace, "scenic-core", "--bump", "patch", "--message", "Fix.") == 0
    names = sorted(p.name for p in dist.iterdir())
    assert names == ["scenic_core-0.1.1-py3-none-any.whl", "scenic_core-0.1.1.tar.gz"]
    out = capsys.readouterr().out
    assert "metadata OK (twine check --strict)" in out
    assert f"twine upload {dist}/scenic_core-0.1.1*" in out
