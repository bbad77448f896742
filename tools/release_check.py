"""Release check: pins, builds, and an install from a package index, as a user would.

Run from the repository root, in the workspace environment:

    hatch run release-check [--dist DIR] [--keep] [--skip-install]

Stages, each of which must pass before the next one runs:

1. pins     every project pins `scenic-core` (and any other workspace package it
            uses) with a bounded range that admits the workspace's version.
2. build    `hatch build -t wheel -t sdist` in each package folder; each file's metadata
            (name, version, Requires-Python, license, Markdown README) is checked, then
            `twine check --strict` on all of them; the files become a PEP 503 simple index
            (a folder, read through a file:// URL).
3. install  in a fresh virtual environment, one `pip install <every project, by name>` with
            that index added to the user's own (third-party packages come from there) and
            a constraint pinning each workspace package to its workspace version; pip's
            install report must show every workspace package taken from the local index with
            the built file's sha256 (a same-named package on a public index never wins).
4. smoke    `import scenic, <every project package>` and `<script> --help` for
            every console script, all run from that environment.
5. train    for each project whose pyproject.toml has `[tool.scenic] smoke-train = [...]`,
            `<script> train --workdir TMP <those arguments>` from that environment: a few
            real training steps of the project's demo, as a user would run them.

Exits 0 only if everything passed. Standard library, `packaging` and `twine`.
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import html
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import (
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
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
    optional_dependencies: dict[str, list[str]] = field(default_factory=dict)
    smoke_train: list[str] = field(default_factory=list)
    dists: list[Path] = field(default_factory=list)  # built wheel and sdist

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
        optional_dependencies=dict(project.get("optional-dependencies", {})),
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


# --- build and metadata -----------------------------------------------------------------------


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capturing stdout and stderr together as text."""
    return subprocess.run(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False, **kwargs
    )


def tail(text: str, lines: int = 30) -> str:
    """The last `lines` lines of `text`, indented, for failure reports."""
    return "\n".join("    " + line for line in text.strip().splitlines()[-lines:])


def build_dists(
    pkg: Package, dist: Path, targets: tuple[str, ...] = ("wheel", "sdist")
) -> list[Path]:
    """Build `pkg` with `hatch build` (wheel and sdist) into `dist`, replacing stale same-named
    files; return the paths of the new files."""
    with tempfile.TemporaryDirectory(prefix="scenic-build-") as out:
        env = {k: v for k, v in os.environ.items() if k not in HATCH_RUN_ENV_VARS}
        cmd = ["hatch", "build", *(arg for t in targets for arg in ("-t", t)), out]
        result = run(cmd, cwd=pkg.path, env=env)
        built = sorted(Path(out).iterdir())
        if result.returncode != 0 or len(built) != len(targets):
            raise RuntimeError(f"{' '.join(cmd[:-1])} failed in {pkg.path}:\n{tail(result.stdout)}")
        dist.mkdir(parents=True, exist_ok=True)
        paths = []
        for file in built:
            target = dist / file.name
            target.unlink(missing_ok=True)
            shutil.move(file, target)
            paths.append(target)
    return paths


def dist_name_version(file: Path) -> tuple[str, Version]:
    """(canonical project name, version) from a wheel's or sdist's file name."""
    if file.name.endswith(".whl"):
        name, version, _, _ = parse_wheel_filename(file.name)
    else:
        name, version = parse_sdist_filename(file.name)
    return canonicalize_name(name), version


def read_metadata(file: Path) -> email.message.Message:
    """The core metadata of a wheel (`*.dist-info/METADATA`) or sdist (`*/PKG-INFO`)."""
    if file.name.endswith(".whl"):
        with zipfile.ZipFile(file) as zf:
            (member,) = [
                n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
            ]
            text = zf.read(member).decode()
    else:
        with tarfile.open(file) as tf:
            (member,) = [
                m
                for m in tf.getmembers()
                if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")
            ]
            text = tf.extractfile(member).read().decode()
    return email.parser.Parser().parsestr(text)


def check_metadata(pkg: Package, file: Path, python: str | None = None) -> list[str]:
    """Check what a user (and the index) reads from a built file's metadata.

    Name, version and dependencies must be the pyproject's; `Requires-Python` must be set and
    admit `python` (default: this interpreter); the license must be declared; the README must
    be the long description, as Markdown. Returns one line per problem.
    """
    python = python or ".".join(map(str, sys.version_info[:3]))
    meta = read_metadata(file)
    where = f"{file.name}"
    problems = []
    if canonicalize_name(meta.get("Name", "")) != canonicalize_name(pkg.name):
        problems.append(f"{where}: Name is {meta.get('Name')!r}, pyproject says {pkg.name!r}")
    if meta.get("Version") != pkg.version:
        problems.append(
            f"{where}: Version is {meta.get('Version')!r}, pyproject says {pkg.version!r}"
        )
    requires_python = meta.get("Requires-Python")
    if not requires_python:
        problems.append(f"{where}: no Requires-Python (set [project] requires-python)")
    elif not SpecifierSet(requires_python).contains(python):
        problems.append(f"{where}: Requires-Python {requires_python} excludes Python {python}")
    if not (meta.get("License-Expression") or meta.get("License")):
        problems.append(f"{where}: no license declared (set [project] license)")
    if not (meta.get("Description-Content-Type") or "").startswith("text/markdown"):
        problems.append(f"{where}: README is not declared as Markdown ([project] readme)")
    if not meta.get_payload().strip():
        problems.append(f"{where}: empty long description (README)")
    declared = sorted(str(Requirement(d)) for d in pkg.dependencies)
    built = sorted(
        str(Requirement(d)) for d in meta.get_all("Requires-Dist", []) if "extra ==" not in d
    )
    if built != declared:
        problems.append(f"{where}: Requires-Dist {built} differs from the pyproject's {declared}")
    return problems


def twine_check(files: list[Path]) -> list[str]:
    """`twine check --strict` (the README renders on the index, metadata is well formed)."""
    result = run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)])
    if result.returncode != 0:
        return [f"twine check --strict failed:\n{tail(result.stdout)}"]
    return []


# --- local index and install ------------------------------------------------------------------


def sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_simple_index(files: list[Path], root: Path) -> str:
    """Write a PEP 503 simple index over `files` (which stay where they are) at `root/simple`.

    Each link carries the file's sha256 (pip checks it) and `data-requires-python`. Returns the
    index's file:// URL, for `pip install --index-url / --extra-index-url`.
    """
    simple = root / "simple"
    by_project: dict[str, list[Path]] = {}
    for file in files:
        by_project.setdefault(dist_name_version(file)[0], []).append(file)
    page = "<!DOCTYPE html>\n<html><body>\n{}\n</body></html>\n"
    for name, project_files in by_project.items():
        links = []
        for file in sorted(project_files):
            requires_python = read_metadata(file).get("Requires-Python")
            attr = (
                f' data-requires-python="{html.escape(requires_python)}"' if requires_python else ""
            )
            href = f"{file.resolve().as_uri()}#sha256={sha256(file)}"
            links.append(f'<a href="{href}"{attr}>{file.name}</a><br>')
        (simple / name).mkdir(parents=True, exist_ok=True)
        (simple / name / "index.html").write_text(page.format("\n".join(links)))
    projects = "\n".join(f'<a href="{n}/">{n}</a><br>' for n in sorted(by_project))
    simple.mkdir(parents=True, exist_ok=True)
    (simple / "index.html").write_text(page.format(projects))
    return simple.resolve().as_uri()


def write_constraints(packages: list[Package], path: Path) -> Path:
    """A pip constraints file pinning each workspace package to exactly its workspace version."""
    path.write_text("".join(f"{p.name}=={p.version}\n" for p in packages))
    return path


def pip_install_command(
    python: Path | str,
    index_url: str,
    packages: list[Package],
    constraints: Path,
    names: list[str],
    report: Path,
    options: tuple[str, ...] = (),
) -> list[str]:
    """`pip install NAMES` with the local index added to the user's configured ones.

    The constraints pin each workspace package to its workspace version; `--only-binary` on
    their names means pip never runs a build (code) of any same-named sdist; the report
    says where each package came from (see check_install_report).
    """
    return [
        str(python), "-m", "pip", "install", "--disable-pip-version-check", *options,
        "--extra-index-url", index_url, "--constraint", str(constraints),
        "--only-binary", ",".join(p.name for p in packages), "--report", str(report), *names,
    ]  # fmt: skip


def check_install_report(report: Path, packages: list[Package]) -> list[str]:
    """Every workspace package must have come from its built file, at its workspace version.

    Guards against dependency confusion: pip merges all indexes and takes the best candidate,
    so a same-named, same-version package on a public index could otherwise be installed.
    """
    installed = {}
    for item in json.loads(report.read_text())["install"]:
        installed[canonicalize_name(item["metadata"]["name"])] = item
    problems = []
    for pkg in packages:
        item = installed.get(canonicalize_name(pkg.name))
        if item is None:
            problems.append(f"{pkg.name} was not installed (no project depends on it?)")
            continue
        info = item.get("download_info", {})
        url, hashes = info.get("url", ""), info.get("archive_info", {}).get("hashes", {})
        by_url = {f.resolve().as_uri(): f for f in pkg.dists}
        if item["metadata"]["version"] != pkg.version or url not in by_url:
            problems.append(
                f"{pkg.name} {item['metadata']['version']} came from {url}, not the local index "
                f"({pkg.version})"
            )
        elif hashes.get("sha256") not in (None, sha256(by_url[url])):
            problems.append(f"{pkg.name}: {url} does not have the built file's sha256")
    return problems


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


def install_from_index(
    venv: Path, index_url: str, packages: list[Package], workdir: Path
) -> list[str]:
    """`pip install` every project by name from the index; check where each workspace package
    came from. Returns problem lines."""
    projects = [p.name for p in packages if not p.is_core] or [p.name for p in packages]
    constraints = write_constraints(packages, workdir / "constraints.txt")
    report = workdir / "pip-report.json"
    python = venv / "bin/python"
    cmd = pip_install_command(python, index_url, packages, constraints, projects, report)
    result = run(cmd, env=clean_env(venv), cwd=venv)
    if result.returncode != 0:
        return [f"pip install {' '.join(projects)} failed:\n{tail(result.stdout)}"]
    return check_install_report(report, packages)


# --- smoke test -------------------------------------------------------------------------------


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
    parser.add_argument(
        "--dist", type=Path, help="write the wheels, sdists and index here (default: a temp folder)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder and venv")
    parser.add_argument(
        "--skip-install", action="store_true", help="only check pins, build and check metadata"
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
    try:
        for pkg in packages:
            pkg.dists = build_dists(pkg, dist)
            print(f"built: {', '.join(f.name for f in pkg.dists)}")
    except RuntimeError as err:
        return fail("build", [str(err)])
    files = [f for p in packages for f in p.dists]
    problems = [line for p in packages for f in p.dists for line in check_metadata(p, f)]
    problems += twine_check(files)
    if problems:
        return fail("build", problems)
    index_url = write_simple_index(files, dist)
    print(f"metadata OK (twine check --strict): {len(files)} files; index: {index_url}")
    if args.skip_install:
        print(
            f"OK: {len(packages)} packages built in {dist}, {n_pins} pins checked (install skipped)"
        )
        return 0

    venv = workdir / "venv"
    start = time.monotonic()
    try:
        create_venv(venv)
    except RuntimeError as err:
        return fail("install", [str(err)])
    problems = install_from_index(venv, index_url, packages, workdir)
    if problems:
        return fail("install", problems)
    names = [p.name for p in packages if not p.is_core]
    print(
        f"installed: pip install {' '.join(names)} into {venv} in "
        f"{time.monotonic() - start:.0f} s; every workspace package from the local index "
        "(pip's report: URL and sha256)"
    )

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
        f"OK: {len(packages)} packages built, {n_pins} pins checked, "
        f"{len(modules)} imports and {len(scripts)} scripts run, "
        f"{len(trained)} projects trained in a fresh venv installed from the index"
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
            print(f"removed: {workdir} (use --keep to keep it, --dist to keep the builds)")
        print(f"time: {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
