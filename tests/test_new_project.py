"""tools/new_project.py, run in a copy of the repository (its git-tracked and other unignored
files): a project made from each template is renamed through and through and pinned to the
workspace; one made from `minimal` passes its own tests, builds a wheel that installs and
trains its demo from its console script; one made from `vivit` passes its config tests and
installs; one made from `baselines` imports beside scenic-baselines in one process; and a bad
name or an existing project is refused in one line, exit code 2, with nothing written."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Set by `hatch run`: a nested `hatch build` would look for that environment and fail.
HATCH_VARS = ("HATCH_ENV_ACTIVE", "VIRTUAL_ENV", "PYTHONPATH")


def repo_files() -> list[str]:
    result = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip("not a git checkout: cannot list the repository's files")
    return [name for name in result.stdout.decode().split("\0") if name]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of the repository, as git would check it out (plus untracked, unignored files)."""
    dest = tmp_path_factory.mktemp("repo")
    for name in repo_files():
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A throw-away virtual environment that sees this environment's packages (jax, TF, the
    workspace's scenic) through a .pth file, so wheels install into it with --no-deps."""
    path = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    (site,) = path.glob("lib/python*/site-packages")
    parent = sysconfig.get_paths()["purelib"]
    (site / "_parent_env.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    return path


def clean_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in HATCH_VARS}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def scaffold(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(repo / "tools" / "new_project.py"), *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )


def snapshot(repo: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(repo).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in repo.rglob("*")
        if p.is_file()
    }


def files_of(project: Path) -> set[str]:
    return {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()}


def load_tool(repo: Path, name: str):
    spec = importlib.util.spec_from_file_location(f"_{name}_copy", repo / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def workspace_version(repo: Path, folder: str) -> str:
    return tomllib.loads((repo / folder / "pyproject.toml").read_text())["project"]["version"]


def assert_renamed(project: Path, source: str, name: str, kept: tuple[str, ...] = ()):
    """No path or text of `project` names the source project any more, except the lines of its
    docs that say where it started from and, for `kept` modules, their imports."""
    old = (f"scenic_{source}", f"scenic-{source.replace('_', '-')}", f"projects/{source}")
    assert not [p for p in files_of(project) if old[0] in p]
    assert (project / "src" / f"scenic_{name}" / "__init__.py").is_file()
    kept_reference = re.compile(rf"scenic_{source}(\.| import )({'|'.join(kept) or '$^'})\b")
    allowed = re.compile(r"started from|stay in|scenic-[\w-]+~=", re.I)
    for path in project.rglob("*"):
        if path.suffix == ".py":
            for line in path.read_text().splitlines():
                if any(o in line for o in old) and not kept_reference.search(line):
                    raise AssertionError(f"{path}: still names {source}: {line!r}")
        elif path.is_file():
            # The docs may say what the project was copied from and what stays there (in
            # Markdown, anywhere in that paragraph), and import the kept modules.
            text = path.read_text()
            parts = text.splitlines() if path.suffix == ".toml" else text.split("\n\n")
            for part in parts:
                if any(o in kept_reference.sub("", part) for o in old):
                    assert allowed.search(part), (path, part)


@pytest.mark.parametrize(
    "args, message",
    [
        (["MyDetector", "--from", "minimal"], "invalid project name 'MyDetector'"),
        (["my-detector", "--from", "minimal"], "invalid project name 'my-detector'"),
        (["2d_model", "--from", "minimal"], "invalid project name '2d_model'"),
        (["my__model", "--from", "minimal"], "invalid project name 'my__model'"),
        (["class", "--from", "minimal"], "'class': it is a Python keyword"),
        (["match", "--from", "minimal"], "'match': it is a Python keyword"),
        (["json", "--from", "minimal"], "'json': it is a standard-library module"),
        (["scenic", "--from", "minimal"], "'scenic': reserved for the workspace"),
        (["core", "--from", "vivit"], "'core': reserved for the workspace"),
        (["vivit", "--from", "vivit"], "projects/vivit already exists"),
        (["my_detector", "--from", "resnet"], "argument --from: invalid choice: 'resnet'"),
        (["my_detector"], "the following arguments are required: --from"),
    ],
)
def test_refusals_are_one_line_exit_2_and_write_nothing(repo, args, message, capsys):
    before = snapshot(repo)
    assert load_tool(repo, "new_project").main(args) == 2  # in this process: no start-up
    out, err = capsys.readouterr()
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith("new_project.py: error: ") and message in line, line
    assert snapshot(repo) == before


def test_minimal_project_tests_builds_installs_and_trains_from_its_wheel(repo, venv, tmp_path):
    result = scaffold(repo, "tiny_cls", "--from", "minimal")
    assert result.returncode == 0, result.stderr
    assert "ruff check: clean" in result.stdout and "hatch env prune" in result.stdout
    assert "hatch run scenic-tiny-cls train --config classifier_digits" in result.stdout
    project = repo / "projects" / "tiny_cls"
    package = "src/scenic_tiny_cls"
    assert files_of(project) == {
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        f"{package}/__init__.py",
        f"{package}/cli.py",
        f"{package}/models.py",
        f"{package}/configs/__init__.py",
        f"{package}/configs/classifier_digits.py",
        "tests/test_train.py",
    }
    assert_renamed(project, "minimal", "tiny_cls")
    meta = tomllib.loads((project / "pyproject.toml").read_text())
    core = workspace_version(repo, "core")
    assert meta["project"]["name"] == "scenic-tiny-cls" and meta["project"]["version"] == "0.1.0"
    assert f"scenic-core~={core}" in meta["project"]["dependencies"]
    assert meta["project"]["scripts"] == {"scenic-tiny-cls": "scenic_tiny_cls.cli:main"}
    smoke_train = meta["tool"]["scenic"]["smoke-train"]
    assert smoke_train[:2] == ["--config", "classifier_digits"]
    readme = (project / "README.md").read_text()
    assert readme.startswith("# scenic-tiny-cls\n")
    assert "scenic-tiny-cls train --config classifier_digits" in readme
    assert readme.rstrip().endswith("|---|---|---|---|---|---|---|")  # an empty results table
    assert "## 0.1.0 (" in (project / "CHANGELOG.md").read_text()

    again = scaffold(repo, "tiny_cls", "--from", "vivit")
    assert again.returncode == 2 and "projects/tiny_cls already exists" in again.stderr

    # The release check finds it and accepts its pin.
    release_check = load_tool(repo, "release_check")
    packages = release_check.discover_packages(repo)
    assert "scenic-tiny-cls" in [p.name for p in packages]
    assert release_check.check_all_pins(packages)[1] == []

    dist = tmp_path / "dist"
    build = subprocess.run(
        ["hatch", "build", "-t", "wheel", str(dist)],
        cwd=project,
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("scenic_tiny_cls-0.1.0-*.whl")
    python = str(venv / "bin" / "python")
    install = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, env=clean_env(), capture_output=True)

    # Its own tests, against the installed wheel, beside its console script's demo run.
    tests = subprocess.Popen(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "projects/tiny_cls/tests"],
        cwd=repo,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    workdir = tmp_path / "workdir"
    train = subprocess.run(
        [str(venv / "bin" / "scenic-tiny-cls"), "train", "--workdir", str(workdir), *smoke_train],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = tests.communicate(timeout=300)[0]
    assert train.returncode == 0, train.stderr[-3000:]
    assert "step 3 | test accuracy:" in train.stdout
    assert (workdir / "final_metrics.json").is_file() and (workdir / "config.json").is_file()
    assert tests.returncode == 0, output[-3000:]
    assert re.search(r"\b1 passed\b", output), output[-1000:]
    # What ran was the wheel's copy: the workspace environment has no scenic_tiny_cls.
    assert list(venv.glob("lib/python*/site-packages/scenic_tiny_cls/models.py"))
    assert importlib.util.find_spec("scenic_tiny_cls") is None


def test_vivit_copy_passes_its_config_tests_and_installs(repo, venv, tmp_path):
    result = scaffold(repo, "clip_cls", "--from", "vivit")
    assert result.returncode == 0, result.stderr
    assert "ruff check: clean" in result.stdout
    project = repo / "projects" / "clip_cls"
    source = files_of(repo / "projects" / "vivit")
    renamed = {p.replace("scenic_vivit", "scenic_clip_cls") for p in source}
    assert files_of(project) == renamed | {"CHANGELOG.md"}
    assert_renamed(project, "vivit", "clip_cls")
    dependencies = tomllib.loads((project / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    assert f"scenic-core~={workspace_version(repo, 'core')}" in dependencies
    assert f"scenic-baselines~={workspace_version(repo, 'projects/baselines')}" in dependencies
    readme = (project / "README.md").read_text()
    assert readme.index("## Results") < readme.index("## The scenic-vivit README")
    envs = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["hatch"]["envs"]
    if "vivit" in envs:  # the workspace keeps one environment per project
        own = {"path": "projects/clip_cls", "features": ["hf"]}
        assert envs["clip_cls"]["workspace"]["members"] == ["core", "projects/baselines", own]

    # Its config tests (docstring commands, README parameter tables; the slow counts of the
    # large published models left out), from the new source, beside the wheel's build.
    tests = subprocess.Popen(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"),
            *("-k", "not parameter_count or vivit_b16x2_k400"),
            "projects/clip_cls/tests/test_configs.py",
        ],
        cwd=repo,
        env=clean_env(PYTHONPATH=str(project / "src")),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    dist = tmp_path / "dist"
    build = subprocess.run(
        ["hatch", "build", "-t", "wheel", str(dist)],
        cwd=project,
        env=clean_env(),
        capture_output=True,
    )
    assert build.returncode == 0, build.stdout
    (wheel,) = dist.glob("scenic_clip_cls-0.1.0-*.whl")
    python = str(venv / "bin" / "python")
    install = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)]
    subprocess.run(install, check=True, env=clean_env(), capture_output=True)
    listed = subprocess.run(
        [str(venv / "bin" / "scenic-clip-cls"), "list-configs"],
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    output = tests.communicate(timeout=300)[0]
    assert listed.returncode == 0 and "vivit_moving_digits" in listed.stdout.split()
    assert tests.returncode == 0 and " passed" in output, output[-3000:]


def test_baselines_copy_keeps_registering_modules_in_baselines(repo):
    result = scaffold(repo, "det_base", "--from", "baselines")
    assert result.returncode == 0, result.stderr
    assert "ruff check: clean" in result.stdout
    project = repo / "projects" / "det_base"
    kept = ("bit_weights", "clip_weights", "image_text_dataset", "vit_weights")
    source = files_of(repo / "projects" / "baselines")
    expected = {p.replace("scenic_baselines", "scenic_det_base") for p in source}
    expected -= {f"src/scenic_det_base/{m}.py" for m in kept}
    assert files_of(project) == expected | {"CHANGELOG.md"}
    assert_renamed(project, "baselines", "det_base", kept)
    assert (
        "import scenic_baselines.vit_weights"
        in (project / "src/scenic_det_base/models.py").read_text()
    )
    dependencies = tomllib.loads((project / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    version = workspace_version(repo, "projects/baselines")
    assert f"scenic-baselines~={version}" in dependencies

    envs = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["hatch"]["envs"]
    if "baselines" in envs:  # the workspace keeps one environment per project
        members = envs["det_base"]["workspace"]["members"]
        assert members == ["core", "projects/baselines", "projects/det_base"]
    release_check = load_tool(repo, "release_check")
    assert release_check.check_all_pins(release_check.discover_packages(repo))[1] == []

    # Both packages, every module, in one process (the workspace's test run); and the
    # negative control: a second copy of a registering module cannot be imported.
    code = """
import importlib, importlib.util, pkgutil, sys
import scenic_baselines, scenic_det_base
for package in (scenic_baselines, scenic_det_base):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
print("imported", scenic_det_base.__file__)
import scenic_baselines.vit_weights as original
spec = importlib.util.spec_from_file_location("naive_copy", original.__file__)
sys.modules["naive_copy"] = copy = importlib.util.module_from_spec(spec)
try:
    spec.loader.exec_module(copy)
except ValueError as error:
    print("copy refused:", error)
"""
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(PYTHONPATH=str(project / "src")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"imported {project}/src/scenic_det_base/__init__.py" in run.stdout
    assert "copy refused: Checkpoint format" in run.stdout and "already registered" in run.stdout
