"""Release one workspace package: bump its version, keep its dependents' pins honest, add a
CHANGELOG entry, build its wheel and sdist, and check their metadata.

Run from the repository root, in the workspace environment:

    hatch run python tools/release.py PACKAGE --bump {patch,minor,major} [--message TEXT]
        [--update-pins] [--dry-run] [--no-build] [--dist DIR] [--date YYYY-MM-DD]

PACKAGE is a distribution name (`scenic-core`, `scenic-vivit`) or a package folder (`core`,
`projects/vivit`, `vivit`). In order, stopping at the first problem:

1. version    `[project] version` X.Y.Z becomes the next patch / minor / major version.
2. pins       every workspace package that depends on PACKAGE must still admit the new
              version (the rules of tools/release_check.py, whose code this uses). If one does
              not, the tool lists those packages and their pins and exits 1 without writing
              anything; with `--update-pins` it rewrites each such pin to `~=NEW` instead (and
              says which dependents then need a release of their own).
3. changelog  a dated entry at the top of PACKAGE's CHANGELOG.md: `--message`, or a placeholder
              line to replace before publishing.
4. build      `hatch build -t wheel -t sdist` into `dist/` at the repository root.
5. check      each file's metadata (name, version, dependencies, Requires-Python, license,
              Markdown README) and `twine check --strict`. If the build or a check fails,
              every file the tool changed is restored and the built files are removed.

`--dry-run` prints the changes as diffs and the commands it would run, and writes nothing.
`--no-build` stops after step 3. Publishing is yours: the tool prints the `twine upload`
command; it never uploads.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

sys.path.insert(0, str(Path(__file__).resolve().parent))
import release_check  # tools/ is not a package: found through sys.path
from release_check import (
    Package,
    build_dists,
    check_all_pins,
    check_metadata,
    check_pin,
    discover_packages,
    twine_check,
)

BUMPS = ("patch", "minor", "major")
PLACEHOLDER = (
    "- TODO: say what changed for users in this release (tools/release.py wrote this line)."
)
CHANGELOG_HEADER = """# Changelog: {name}

Every release of `{name}`, newest first. Versions follow semantic versioning; projects pin
the workspace packages they use with a compatible range (`~=X.Y.Z`). `tools/release.py` adds
an entry at each release.
"""


@dataclass
class Plan:
    """Every file the release changes, with its old and new text, and what to tell the user."""

    package: Package
    old_version: str
    new_version: str
    edits: dict[Path, tuple[str | None, str]] = field(default_factory=dict)  # old may be None
    pin_updates: list[str] = field(default_factory=list)  # "scenic-vivit: a -> b" lines
    dependents_to_release: list[Package] = field(default_factory=list)

    def edit(self, path: Path, new_text: str) -> None:
        old = self.edits[path][0] if path in self.edits else read_or_none(path)
        self.edits[path] = (old, new_text)

    def text(self, path: Path) -> str:
        """The file's text with the plan's edits so far."""
        return self.edits[path][1] if path in self.edits else path.read_text()


class ReleaseError(Exception):
    """A problem that stops the release before anything is written."""


def read_or_none(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


# --- versions and pins ------------------------------------------------------------------------


def bump_version(version: str, bump: str) -> str:
    """The next `bump` version after `version` (X.Y.Z; pre-release parts are not supported)."""
    parsed = Version(version)
    if parsed.is_prerelease or parsed.is_postrelease or parsed.local or parsed.epoch:
        raise ReleaseError(f"version {version} is not a plain X.Y.Z release")
    major, minor, patch = [*parsed.release, 0, 0][:3]
    if bump == "major":
        return f"{major + 1}.0.0"
    if bump == "minor":
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


def find_package(packages: list[Package], root: Path, spec: str) -> Package:
    """The package named `spec` (distribution name, or folder relative to the root)."""
    for pkg in packages:
        rel = pkg.path.relative_to(root).as_posix()
        folder = Path(spec.rstrip("/")).as_posix()
        if canonicalize_name(spec) == canonicalize_name(pkg.name) or folder in (rel, pkg.path.name):
            return pkg
        if (Path.cwd() / spec).resolve() == pkg.path.resolve():
            return pkg
    names = ", ".join(f"{p.name} ({p.path.relative_to(root).as_posix()})" for p in packages)
    raise ReleaseError(f"no workspace package {spec!r}; the workspace has: {names}")


def pin_requirements(pkg: Package, target: str) -> list[str]:
    """`pkg`'s dependency lines that name `target`."""
    return [
        line
        for line in pkg.dependencies
        if canonicalize_name(Requirement(line).name) == canonicalize_name(target)
    ]


def compatible_pin(line: str, version: str) -> str:
    """`line` with its version range replaced by `~=version` (name, extras, marker kept)."""
    req = Requirement(line)
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    marker = f"; {req.marker}" if req.marker else ""
    return f"{req.name}{extras}~={version}{marker}"


# --- text edits (keep the files as written: comments, order, formatting) ---------------------


def set_project_version(text: str, old: str, new: str) -> str:
    """Replace `version = "old"` in the `[project]` table of a pyproject.toml text."""
    section = re.search(r"(?ms)^\[project\][ \t]*$(.*?)(?=^\[|\Z)", text)
    if section is None:
        raise ReleaseError("no [project] table")
    line = re.compile(rf"(?m)^(version\s*=\s*)([\"']){re.escape(old)}\2")
    body, count = line.subn(rf"\g<1>\g<2>{new}\g<2>", section.group(1), count=1)
    if count != 1:
        raise ReleaseError(f'no line version = "{old}" in the [project] table')
    new_text = text[: section.start(1)] + body + text[section.end(1) :]
    if tomllib.loads(new_text)["project"]["version"] != new:
        raise ReleaseError("rewriting the version did not give the expected [project] version")
    return new_text


def replace_dependency(text: str, old: str, new: str) -> str:
    """Replace the dependency string `old` by `new` in `[project] dependencies`."""
    pattern = re.compile(rf"([\"']){re.escape(old)}\1")
    new_text, count = pattern.subn(lambda m: f"{m.group(1)}{new}{m.group(1)}", text)
    if count != 1:
        raise ReleaseError(f"expected the dependency {old!r} once in the file, found it {count}x")
    deps = tomllib.loads(new_text)["project"]["dependencies"]
    if new not in deps or old in deps:
        raise ReleaseError(f"rewriting {old!r} did not change [project] dependencies as expected")
    return new_text


def add_changelog_entry(text: str | None, name: str, version: str, date: str, message: str) -> str:
    """CHANGELOG.md with a `## version (date)` entry above the previous ones."""
    text = text if text is not None else CHANGELOG_HEADER.format(name=name)
    if re.search(rf"(?m)^## {re.escape(version)}\b", text):
        raise ReleaseError(f"CHANGELOG.md already has an entry for {version}")
    body = message.strip() or PLACEHOLDER
    if not body.startswith(("-", "*")):
        body = f"- {body}"
    entry = f"## {version} ({date})\n\n{body}\n\n"
    first = re.search(r"(?m)^## ", text)
    if first is None:
        return text.rstrip("\n") + "\n\n" + entry.rstrip("\n") + "\n"
    return text[: first.start()] + entry + text[first.start() :]


# --- the plan ---------------------------------------------------------------------------------


def plan_release(
    root: Path, spec: str, bump: str, message: str, update_pins: bool, date: str
) -> Plan:
    """Work out every change of the release; raise ReleaseError if it cannot go ahead."""
    packages = discover_packages(root)
    pkg = find_package(packages, root, spec)
    if not pkg.version:
        raise ReleaseError(f"{pkg.name} has no static [project] version")
    new = bump_version(pkg.version, bump)
    plan = Plan(pkg, pkg.version, new)
    pyproject = pkg.path / "pyproject.toml"
    plan.edit(pyproject, set_project_version(pyproject.read_text(), pkg.version, new))

    behind = []  # (dependent, its pin lines) whose pins exclude the new version
    for dep in packages:
        if dep is pkg or not pin_requirements(dep, pkg.name):
            continue
        if check_pin(dep.name, dep.dependencies, pkg.name, new):
            behind.append((dep, pin_requirements(dep, pkg.name)))
    if behind and not update_pins:
        lines = [f"{pkg.name} {new} is outside the pins of {len(behind)} package(s):"]
        lines += [
            f"  {dep.name} ({dep.path.relative_to(root).as_posix()}): {', '.join(pins)}"
            for dep, pins in behind
        ]
        lines.append(
            f"--update-pins rewrites them to {pkg.name}~={new} (those packages then need a "
            "release too), or choose a smaller bump."
        )
        raise ReleaseError("\n".join(lines))
    for dep, pins in behind:
        path = dep.path / "pyproject.toml"
        text = plan.text(path)
        for line in pins:
            new_line = compatible_pin(line, new)
            text = replace_dependency(text, line, new_line)
            dep.dependencies[dep.dependencies.index(line)] = new_line
            plan.pin_updates.append(f"{dep.name}: {line} -> {new_line}")
        plan.edit(path, text)
        plan.dependents_to_release.append(dep)

    pkg.version = new
    _, problems = check_all_pins(packages)  # the workspace as it would be after the release
    if problems:
        raise ReleaseError("pins would not hold after the release:\n  " + "\n  ".join(problems))

    changelog = pkg.path / "CHANGELOG.md"
    plan.edit(changelog, add_changelog_entry(read_or_none(changelog), pkg.name, new, date, message))
    return plan


def show_diffs(plan: Plan, root: Path) -> None:
    for path, (old, new) in plan.edits.items():
        rel = path.relative_to(root).as_posix()
        diff = difflib.unified_diff(
            (old or "").splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"a/{rel}" if old is not None else "/dev/null",
            tofile=f"b/{rel}",
        )
        sys.stdout.writelines(diff)


def write(plan: Plan) -> None:
    for path, (_, new) in plan.edits.items():
        path.write_text(new)


def restore(plan: Plan) -> None:
    for path, (old, _) in plan.edits.items():
        if old is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(old)


def build_and_check(pkg: Package, dist: Path) -> tuple[list[Path], list[str]]:
    """Build the wheel and sdist into `dist`; return the files and any metadata problems."""
    try:
        files = build_dists(pkg, dist)
    except RuntimeError as err:
        return [], [str(err)]
    problems = [line for f in files for line in check_metadata(pkg, f)]
    return files, problems + twine_check(files)


# --- driver -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0].replace("\n", " "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("package", help="distribution name (scenic-vivit) or folder (vivit)")
    parser.add_argument("--bump", choices=BUMPS, required=True, help="which part to increase")
    parser.add_argument("--message", default="", help="the CHANGELOG entry (default: a TODO line)")
    parser.add_argument(
        "--update-pins",
        action="store_true",
        help="rewrite dependents' pins that exclude the new version to ~=NEW",
    )
    parser.add_argument("--dry-run", action="store_true", help="show the changes, write nothing")
    parser.add_argument("--no-build", action="store_true", help="stop after the CHANGELOG")
    parser.add_argument("--dist", type=Path, help="build into DIR (default: dist/ at the root)")
    parser.add_argument("--date", default=None, help="entry date (default: today), YYYY-MM-DD")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, root: Path = release_check.REPO_ROOT) -> int:
    args = parse_args(argv)
    date = args.date or datetime.date.today().isoformat()
    try:
        plan = plan_release(root, args.package, args.bump, args.message, args.update_pins, date)
    except ReleaseError as err:
        print(f"release: {err}", file=sys.stderr)
        print("release: nothing written", file=sys.stderr)
        return 1
    pkg = plan.package
    print(f"{pkg.name}: {plan.old_version} -> {plan.new_version} ({args.bump})")
    for line in plan.pin_updates:
        print(f"pin: {line}")
    dist = (args.dist or root / "dist").resolve()
    if args.dry_run:
        show_diffs(plan, root)
        if not args.no_build:
            print(f"would run: hatch build -t wheel -t sdist {dist} (in {pkg.path})")
            print("would run: metadata checks and twine check --strict on the built files")
        print("dry run: nothing written")
        return 0

    write(plan)
    for path in plan.edits:
        print(f"wrote: {path.relative_to(root).as_posix()}")
    if not args.no_build:
        files, problems = build_and_check(pkg, dist)
        if problems:
            for line in problems:
                print(f"FAIL {line}", file=sys.stderr)
            restore(plan)
            for file in files:
                file.unlink(missing_ok=True)
            print("release: build or metadata check failed; changes undone", file=sys.stderr)
            return 1
        for file in files:
            print(f"built: {file}")
        print("metadata OK (twine check --strict)")
    print_next_steps(plan, root, dist, built=not args.no_build)
    return 0


def relative_links(markdown: str) -> list[str]:
    """Link targets in a Markdown text that are relative paths (dead on an index's page)."""
    targets = re.findall(r"\]\(([^)\s]+)\)", markdown)
    return [t for t in targets if not re.match(r"^([a-z][a-z0-9+.-]*:|#)", t)]


def print_next_steps(plan: Plan, root: Path, dist: Path, built: bool) -> None:
    pkg, new = plan.package, plan.new_version
    readme = pkg.path / "README.md"
    links = relative_links(readme.read_text()) if readme.exists() else []
    if links:
        print(
            f"note: {readme.relative_to(root).as_posix()} has {len(links)} relative link(s) "
            f"({', '.join(sorted(set(links))[:3])}, ...), dead on the package index's page"
        )
    changelog = (pkg.path / "CHANGELOG.md").relative_to(root).as_posix()
    print("next:")
    if PLACEHOLDER in plan.edits[pkg.path / "CHANGELOG.md"][1]:
        print(f"  - replace the TODO line of {changelog} with what changed")
    for dep in plan.dependents_to_release:
        print(
            f"  - release {dep.name} too (its pin changed): tools/release.py {dep.name} --bump ..."
        )
    print("  - run `hatch run release-check`, commit, tag")
    stem = canonicalize_name(pkg.name).replace("-", "_")
    if not built:
        print(f"  - build: hatch build -t wheel -t sdist {dist} (in {pkg.path}), twine check")
    shown = dist.relative_to(Path.cwd()) if dist.is_relative_to(Path.cwd()) else dist
    print(f"  - publish: twine upload {shown}/{stem}-{new}*")


if __name__ == "__main__":
    sys.exit(main())
