"""Release check: build every workspace wheel, check pins, smoke-install the wheels.

Run from the repository root, in the test environment:

    hatch run release-check [--dist DIR] [--keep] [--skip-install]

Stages, each of which must pass before the next one runs:

1. pins     every project pins `scenic-core` (and any other workspace package it
            uses) with a bounded range that admits the workspace's version.
2. build    `hatch build -t wheel` in each package folder.
3. install  one `pip install` of all wheels into a fresh virtual environment.
4. smoke    `import scenic, <every project package>` and `<script> --help` for
            every console script, all run from that environment.
5. train    for each project whose pyproject.toml has `[tool.scenic] smoke-train = [...]`,
            `<script> train --workdir TMP <those arguments>` from that environment: a few
            real training steps of the project's demo, as a user would run them.

Exits 0 only if everything passed. Standard library and `packaging` only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[1]
CORE_NAME = "scenic-core"
LOWER_BOUND_OPS = {"~=", "==", "===", ">=", ">"}
UPPER_BOUND_OPS = {"~=", "==", "===", "<=", "<"}
# Environment variables that would let the smoke test see something other than the venv.
LEAKY_ENV_VARS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "CONDA_PREFIX")
# Set by `hatch run`; a nested `hatch build` in a member would look for that env there and fail.
HATCH_RUN_ENV_VARS = ("HATCH_ENV_ACTIVE", "VIRTUAL_ENV")


@dataclass
class Package:
    """One workspace member, as declared by its pyproject.toml."""

    path: Path
    name: str
    version: str | None
    dependencies: list[str]
    scripts: dict[str, str]
    import_names: list[str]
    smoke_train: list[str] = field(default_factory=list)
    wheel: Path | None = field(default=None)

    @property
    def is_core(self) -> bool:
        return canonicalize_name(self.name) == CORE_NAME


# --- discovery --------------------------------------------------------------------------------


def load_package(folder: Path) -> Package:
    """Read the parts of `folder/pyproject.toml` that the release check needs."""
    with open(folder / "pyproject.toml", "rb") as f:
        data = tomllib.load(f)
    project = data.get("project", {})
    name = project.get("name", folder.name)
    wheel_cfg = data.get("tool", {}).get("hatch", {}).get("build", {}).get("targets", {})
    wheel_packages = wheel_cfg.get("wheel", {}).get("packages", [])
    import_names = [Path(p).name for p in wheel_packages] or [name.replace("-", "_")]
    return Package(
        path=folder,
        name=name,
        version=project.get("version"),
        dependencies=list(project.get("dependencies", [])),
        scripts=dict(project.get("scripts", {})),
        import_names=import_names,
        smoke_train=list(data.get("tool", {}).get("scenic", {}).get("smoke-train", [])),
    )


def discover_packages(root: Path) -> list[Package]:
    """Return `core/` then every `projects/*/` that has a pyproject.toml, sorted by folder."""
    folders = [root / "core"]
    folders += sorted(p.parent for p in (root / "projects").glob("*/pyproject.toml"))
    return [load_package(folder) for folder in folders]


# --- pins -------------------------------------------------------------------------------------


def is_bounded(specifier: SpecifierSet) -> bool:
    """True if the specifier has both a lower and an upper bound (`~=` and `==` give both)."""
    ops = {spec.operator for spec in specifier}
    return bool(ops & LOWER_BOUND_OPS) and bool(ops & UPPER_BOUND_OPS)


def check_pin(package: str, dependencies: list[str], target: str, version: str) -> list[str]:
    """Check `package`'s pin on `target` against the workspace `version` of `target`.

    Returns one line per problem (empty if the pin is fine): the pin is missing, is not
    bounded on both sides, or does not admit `version`.
    """
    pins = []
    for line in dependencies:
        try:
            req = Requirement(line)
        except InvalidRequirement as err:
            return [f"{package}: cannot parse dependency {line!r}: {err}"]
        if canonicalize_name(req.name) == canonicalize_name(target):
            pins.append(req)
    if not pins:
        return [f"{package}: does not depend on {target} (workspace has {version})"]
    problems = []
    for req in pins:
        pin = str(req.specifier) or "(no version)"
        if not is_bounded(req.specifier):
            problems.append(
                f"{package}: pin {target}{pin} is not a compatible-release (~=) or bounded range "
                f"(workspace has {version})"
            )
        elif not req.specifier.contains(Version(version), prereleases=True):
            problems.append(
                f"{package}: pin {target}{pin} does not admit the workspace's {target} {version}"
            )
    return problems


def check_all_pins(packages: list[Package]) -> tuple[int, list[str]]:
    """Check every project's scenic-core pin and its pins on any other workspace member.

    Returns (number of pins checked, problem lines).
    """
    versions = {canonicalize_name(p.name): p.version for p in packages if p.version}
    if CORE_NAME not in versions:
        return 0, [f"core/pyproject.toml: no static [project] version for {CORE_NAME}"]
    checked, problems = 0, []
    for pkg in packages:
        if pkg.is_core:
            continue
        own = canonicalize_name(pkg.name)
        used = {requirement_name(line) for line in pkg.dependencies}
        for target, version in versions.items():
            if target == own or (target != CORE_NAME and target not in used):
                continue
            checked += 1
            problems += check_pin(pkg.name, pkg.dependencies, target, version)
    return checked, problems


def requirement_name(line: str) -> str | None:
    """Canonical name of a requirement string, or None if it does not parse."""
    try:
        return canonicalize_name(Requirement(line).name)
    except InvalidRequirement:
        return None


# --- build ------------------------------------------------------------------------------------


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capturing stdout and stderr together as text."""
    return subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False, **kwargs
    )


def tail(text: str, lines: int = 30) -> str:
    """The last `lines` lines of `text`, indented, for failure reports."""
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


def build_wheel(pkg: Package, dist: Path) -> Path:
    """Build `pkg`'s wheel with hatch into `dist` (replacing a stale one); return its path."""
    with tempfile.TemporaryDirectory(prefix="scenic-build-") as out:
        env = {k: v for k, v in os.environ.items() if k not in HATCH_RUN_ENV_VARS}
        result = run(["hatch", "build", "-t", "wheel", out], cwd=pkg.path, env=env)
        wheels = list(Path(out).glob("*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            raise RuntimeError(f"hatch build failed in {pkg.path}:\n{tail(result.stdout)}")
        target = dist / wheels[0].name
        shutil.move(wheels[0], target)
    return target


# --- install and smoke test -------------------------------------------------------------------


def clean_env(venv: Path) -> dict[str, str]:
    """The current environment with `venv` first on PATH and no Python path leaks."""
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV_VARS}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(venv)
    return env


def create_venv(venv: Path) -> None:
    """Create a fresh virtual environment without system site packages."""
    result = run([sys.executable, "-m", "venv", str(venv)])
    if result.returncode != 0:
        raise RuntimeError(f"python -m venv {venv} failed:\n{tail(result.stdout)}")


def install_wheels(venv: Path, wheels: list[Path]) -> None:
    """`pip install` all wheels into `venv` in one command (dependencies from the index)."""
    cmd = [str(venv / "bin/python"), "-m", "pip", "install", "--disable-pip-version-check"]
    result = run(cmd + [str(w) for w in wheels], env=clean_env(venv), cwd=venv)
    if result.returncode != 0:
        raise RuntimeError(f"pip install of the wheels failed:\n{tail(result.stdout)}")


def check_imports(venv: Path, modules: list[str]) -> list[str]:
    """Import `modules` in the venv and check each comes from the venv, not the workspace."""
    code = (
        f"import sys, {', '.join(modules)}\nfor m in sys.argv[1:]: print(sys.modules[m].__file__)"
    )
    cmd = [str(venv / "bin/python"), "-I", "-c", code, *modules]
    result = run(cmd, env=clean_env(venv), cwd=venv)
    if result.returncode != 0:
        return [f"import {', '.join(modules)} failed in the venv:\n{tail(result.stdout)}"]
    files = result.stdout.splitlines()[-len(modules) :]
    return [
        f"{module} was imported from {file}, outside the venv"
        for module, file in zip(modules, files)
        if not file.startswith(str(venv))
    ]


def check_script(venv: Path, script: str) -> str | None:
    """Run `script --help` from the venv; return a problem line, or None if it exits 0."""
    exe = venv / "bin" / script
    if not exe.exists():
        return f"console script {script} was not installed into the venv"
    try:
        result = run([str(exe), "--help"], env=clean_env(venv), cwd=venv, timeout=600)
    except subprocess.TimeoutExpired:
        return f"{script} --help did not finish within 600 s"
    if result.returncode != 0:
        return f"{script} --help exited {result.returncode}:\n{tail(result.stdout)}"
    return None


def check_smoke_train(venv: Path, pkg: Package, workdir: Path) -> str | None:
    """Run `<script> train` with the package's smoke-train arguments; None if it exits 0."""
    (script,) = pkg.scripts  # a project has one console script
    command = [str(venv / "bin" / script), "train", "--workdir", str(workdir), *pkg.smoke_train]
    try:
        result = run(command, env=clean_env(venv), cwd=venv, timeout=900)
    except subprocess.TimeoutExpired:
        return f"{' '.join(command)} did not finish within 900 s"
    if result.returncode != 0:
        return f"{' '.join(command)} exited {result.returncode}:\n{tail(result.stdout)}"
    return None


# --- driver -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dist", type=Path, help="write wheels here (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder and venv")
    parser.add_argument(
        "--skip-install", action="store_true", help="only check pins and build the wheels"
    )
    return parser.parse_args(argv)


def fail(stage: str, problems: list[str]) -> int:
    """Print the problems of a failed stage and return the exit code."""
    for line in problems:
        print(f"FAIL [{stage}] {line}")
    print(f"release check FAILED at stage '{stage}' ({len(problems)} problem(s))")
    return 1


def release_check(args: argparse.Namespace, workdir: Path) -> int:
    """Run every stage in order; return the exit code."""
    packages = discover_packages(REPO_ROOT)
    print(f"packages: {', '.join(f'{p.name} ({p.path.relative_to(REPO_ROOT)})' for p in packages)}")

    n_pins, problems = check_all_pins(packages)
    if problems:
        return fail("pins", problems)
    core_version = next(p.version for p in packages if p.is_core)
    print(f"pins: {n_pins} checked against {CORE_NAME} {core_version}, all OK")

    dist = (args.dist or workdir / "dist").resolve()
    dist.mkdir(parents=True, exist_ok=True)
    try:
        for pkg in packages:
            pkg.wheel = build_wheel(pkg, dist)
            print(f"built: {pkg.wheel.name}")
    except RuntimeError as err:
        return fail("build", [str(err)])
    if args.skip_install:
        print(
            f"OK: {len(packages)} wheels built in {dist}, {n_pins} pins checked (install skipped)"
        )
        return 0

    venv = workdir / "venv"
    start = time.monotonic()
    try:
        create_venv(venv)
        install_wheels(venv, [p.wheel for p in packages])
    except RuntimeError as err:
        return fail("install", [str(err)])
    print(f"installed: {len(packages)} wheels into {venv} in {time.monotonic() - start:.0f} s")

    modules = [name for p in packages for name in p.import_names]
    scripts = [s for p in packages for s in p.scripts]
    problems = check_imports(venv, modules)
    problems += [line for s in scripts if (line := check_script(venv, s))]
    if problems:
        return fail("smoke", problems)
    print(f"imports OK: {', '.join(modules)}")
    print(f"scripts OK: {', '.join(f'{s} --help' for s in scripts) or '(none)'}")

    trained = [p for p in packages if p.smoke_train]
    problems = [
        line for p in trained if (line := check_smoke_train(venv, p, workdir / f"train-{p.name}"))
    ]
    if problems:
        return fail("train", problems)
    print(f"train OK: {', '.join(f'{p.name} ({len(p.smoke_train)} args)' for p in trained)}")
    print(
        f"OK: {len(packages)} wheels built, {n_pins} pins checked, "
        f"{len(modules)} imports and {len(scripts)} scripts run, "
        f"{len(trained)} projects trained in a fresh venv"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="scenic-release-check-"))
    start = time.monotonic()
    try:
        return release_check(args, workdir)
    finally:
        if args.keep:
            print(f"kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            print(f"removed: {workdir} (use --keep to keep it, --dist to keep the wheels)")
        print(f"time: {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
