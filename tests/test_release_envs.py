"""Each project builds, tests and releases on its own.

Two static checks, both fast (no environment is created):
- the per-project hatch environments of the root pyproject.toml (`hatch run vivit:test`) hold
  exactly the project, the workspace members it needs (its declared ones, and theirs) and its
  own extras, and their `test` script runs that project's tests;
- no package's code or tests import a workspace sibling that its pyproject.toml does not
  declare (the core none at all): such an import works in the shared workspace environment,
  where every member is installed, and fails for a user who installs the package alone.
"""

import ast
import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def load_release_check():
    spec = importlib.util.spec_from_file_location("release_check", ROOT / "tools/release_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


release_check = sys.modules.get("release_check") or load_release_check()
PACKAGES = release_check.discover_packages(ROOT)
PROJECTS = [p for p in PACKAGES if not p.is_core]


def workspace_deps(pkg, packages):
    """Canonical names of the workspace packages `pkg` declares in [project] dependencies."""
    names = {canonicalize_name(p.name) for p in packages}
    return {canonicalize_name(Requirement(d).name) for d in pkg.dependencies} & names


def closure(pkg, packages):
    """`pkg` and every workspace package it needs, directly or through another member."""
    by_name = {canonicalize_name(p.name): p for p in packages}
    needed, todo = set(), [canonicalize_name(pkg.name)]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo += workspace_deps(by_name[name], packages)
    return needed


def undeclared_imports(pkg, packages, root):
    """`path:line: imports X (dist)` for each import of an undeclared workspace sibling in
    `pkg`'s src/ and tests/."""
    owner = {name: canonicalize_name(p.name) for p in packages for name in p.import_names}
    allowed = workspace_deps(pkg, packages) | {canonicalize_name(pkg.name)}
    problems = []
    for folder in ("src", "tests"):
        for path in sorted((pkg.path / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    dist = owner.get(module.split(".")[0])
                    if dist and dist not in allowed:
                        rel = path.relative_to(root).as_posix()
                        problems.append(f"{rel}:{node.lineno}: imports {module} ({dist})")
    return problems


def root_envs():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["hatch"]["envs"]


def member_paths(env):
    """{folder: sorted features} of an environment's workspace.members."""
    members = {}
    for member in env.get("workspace", {}).get("members", []):
        if isinstance(member, str):
            members[member] = []
        else:
            members[member["path"]] = sorted(member.get("features", []))
    return members


@pytest.mark.parametrize("project", PROJECTS, ids=lambda p: p.path.name)
def test_project_env_holds_exactly_what_the_project_declares(project):
    envs = root_envs()
    name = project.path.name
    assert name in envs, f"no [tool.hatch.envs.{name}] for {project.name} (see the root README)"
    env = envs[name]
    # Detached: inherits nothing (no workspace-wide members or dependencies) from `default`.
    assert env.get("detached") is True, f"[tool.hatch.envs.{name}] must be detached"
    by_name = {canonicalize_name(p.name): p for p in PACKAGES}
    expected = {by_name[n].path.relative_to(ROOT).as_posix() for n in closure(project, PACKAGES)}
    members = member_paths(env)
    assert set(members) == expected, (
        f"{name} env members {sorted(members)} != {project.name} and the workspace packages "
        f"it depends on {sorted(expected)}"
    )
    own = project.path.relative_to(ROOT).as_posix()
    assert members[own] == sorted(project.optional_dependencies), (
        f"{name} env should install {project.name} with all its extras"
    )
    test = env.get("scripts", {}).get("test", "")
    test = "\n".join(test) if isinstance(test, list) else test  # one command or several
    assert "pytest" in test and f"{own}/tests" in test, f"{name}:test should run {own}/tests"


@pytest.mark.parametrize("pkg", PACKAGES, ids=lambda p: p.path.name)
def test_package_imports_no_undeclared_workspace_sibling(pkg):
    assert undeclared_imports(pkg, PACKAGES, ROOT) == []


def test_undeclared_sibling_import_is_found(tmp_path):
    """Negative control: a synthetic project importing a sibling it does not declare."""

    def write(folder, pyproject, code=None):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "pyproject.toml").write_text(pyproject)
        if code is not None:
            (tmp_path / folder / "tests").mkdir()
            (tmp_path / folder / "tests" / "test_x.py").write_text(code)

    write("core", '[project]\nname = "scenic-core"\nversion = "0.1.0"\n')
    write("projects/a", '[project]\nname = "scenic-a"\ndependencies = ["scenic-core~=0.1.0"]\n')
    code = "import scenic.model_lib\n\ndef test():\n    from scenic_a.models import M\n"
    code += "    import scenic_a.x, os\n"
    write("projects/b", '[project]\nname = "scenic-b"\ndependencies = ["scenic-core~=0.1"]\n', code)
    packages = release_check.discover_packages(tmp_path)
    b = packages[-1]
    assert undeclared_imports(b, packages, tmp_path) == [
        "projects/b/tests/test_x.py:4: imports scenic_a.models (scenic-a)",
        "projects/b/tests/test_x.py:5: imports scenic_a.x (scenic-a)",
    ]
    b.dependencies.append("scenic-a~=0.1")
    assert undeclared_imports(b, packages, tmp_path) == []
