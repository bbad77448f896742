"""Start a new project: copy a template into `projects/NAME`, renamed and ready to test.

Run from anywhere in the repository (the workspace environment is only needed for `ruff`):

    python tools/new_project.py NAME --from {minimal,baselines,vivit}

NAME is lower case letters, digits and single underscores (e.g. `my_detector`); the project
gets the distribution `scenic-my-detector`, the import package `scenic_my_detector` and the
console script `scenic-my-detector`. The templates:

  minimal    the smallest real project (tools/templates/minimal): one model (a patch-MLP
             classifier on the core's layers), one demo config on the core's built-in
             digits (~99% in ~10 s of training), the CLI and a test that trains through it.
  baselines  a copy of scenic-baselines (ViT, ResNet, DETR, ...), standalone except for its
             checkpoint-format readers (see below).
  vivit      a copy of scenic-vivit, which builds on scenic-baselines' ViT (pinned).

Every file of the template that git tracks (or, outside a git checkout, every file but
caches and build outputs) is copied with the source's import package, distribution, console
script and `projects/<source>` paths rewritten, in code, configs, tests and docs. New:
README.md (a stub: what it is, the commands, an empty results table; a copied project's
README follows it, for reference), CHANGELOG.md (version 0.1.0), and in pyproject.toml
version 0.1.0 and compatible-release pins (`~=`) on the workspace's current scenic-core and
any workspace package the project uses; `[tool.scenic] smoke-train` is kept, so the release
check runs its demo. If the root pyproject.toml has one hatch environment per project, the
new project gets one too.

Modules of a project that register global names with the core (checkpoint formats,
data sets, trainers: `register_format(...)` and the like) are not copied: a second copy
of a registered name fails when both projects are imported in one process (the workspace's
test run), and two readers of one file format make auto-detection ambiguous. The new project
imports them from the source package and pins it (for `--from baselines`: `vit_weights`,
`bit_weights` and `clip_weights`, the ViT / BiT / CLIP weight-file readers, and
`image_text_dataset`, the 'image_text' data set).

Refused, with one line on stderr and exit code 2, before anything is written: a NAME that is
not lower case letters, digits and single underscores, a keyword, a standard-library module,
a workspace or installed package's name, or a project that exists.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import keyword
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROG = "new_project.py"
TEMPLATES = {
    "minimal": "tools/templates/minimal",
    "baselines": "projects/baselines",
    "vivit": "projects/vivit",
}
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
# Names that would read as part of the workspace itself rather than a project.
RESERVED = {"scenic", "core", "tools", "tests", "docs", "projects", "templates", "workspace"}
# Never copied, wherever they appear.
SKIP_DIRS = {
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    ".ipynb_checkpoints",
    ".venv",
    "venv",
    "build",
    "dist",
    "workdirs",
}
SKIP_SUFFIXES = (".pyc", ".pyo", ".so", ".egg-info")
# A module that calls one of these at import registers a global name with the core.
REGISTERS = re.compile(r"(?m)^[ \t]*@?[\w.]*\bregister_(?:format|dataset|trainer)\(")
NEW_VERSION = "0.1.0"
CHANGELOG_HEADER = """# Changelog: {name}

Every release of `{name}`, newest first. Versions follow semantic versioning; projects pin
the workspace packages they use with a compatible range (`~=X.Y.Z`). `tools/release.py` adds
an entry at each release.
"""


class Refused(Exception):
    """The command cannot go ahead: one line for stderr, exit code 2, nothing written."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise Refused(message)


def canonical(name: str) -> str:
    """A distribution name as package indexes compare them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# --- the workspace ----------------------------------------------------------------------------


@dataclass
class Member:
    """One workspace package, as its pyproject.toml declares it."""

    folder: Path
    name: str
    version: str
    import_names: list[str]
    dependencies: list[str] = field(default_factory=list)


def read_toml(path: Path) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def load_member(folder: Path) -> Member:
    data = read_toml(folder / "pyproject.toml")
    project = data.get("project", {})
    name = project.get("name", folder.name)
    wheel = data.get("tool", {}).get("hatch", {}).get("build", {}).get("targets", {})
    packages = wheel.get("wheel", {}).get("packages", [])
    imports = [Path(p).name for p in packages] or [name.replace("-", "_")]
    dependencies = list(project.get("dependencies", []))
    return Member(folder, name, str(project.get("version", "")), imports, dependencies)


def requirement_name(line: str) -> str:
    return canonical(re.match(r"\s*([A-Za-z0-9._-]*)", line).group(1))


def needed_members(dependencies: list[str], members: list[Member], root: Path) -> list[str]:
    """Folders (relative to `root`) of the workspace packages that `dependencies` need,
    directly or through one another, in workspace order (the core first)."""
    by_name = {canonical(m.name): m for m in members}
    needed, todo = set(), [requirement_name(d) for d in dependencies]
    while todo:
        name = todo.pop()
        if name in by_name and name not in needed:
            needed.add(name)
            todo += [requirement_name(d) for d in by_name[name].dependencies]
    return [m.folder.relative_to(root).as_posix() for m in members if canonical(m.name) in needed]


def workspace_members(root: Path) -> list[Member]:
    """`core/` and every `projects/*/` with a pyproject.toml (as the workspace globs them)."""
    projects = sorted(p.parent for p in (root / "projects").glob("*/pyproject.toml"))
    folders = [root / "core", *projects]
    return [load_member(folder) for folder in folders if (folder / "pyproject.toml").exists()]


# --- checks -----------------------------------------------------------------------------------


def check_name(name: str, root: Path, members: list[Member]) -> None:
    """Raise Refused unless `name` can become projects/NAME, scenic-NAME and scenic_NAME."""
    if not NAME_PATTERN.fullmatch(name):
        raise Refused(
            f"invalid project name {name!r}: use lower case letters, digits and single "
            "underscores, starting with a letter (e.g. my_detector)"
        )
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise Refused(f"invalid project name {name!r}: it is a Python keyword")
    if name in sys.stdlib_module_names:
        raise Refused(f"invalid project name {name!r}: it is a standard-library module")
    if name in RESERVED:
        raise Refused(f"invalid project name {name!r}: reserved for the workspace itself")
    dist, package = f"scenic-{name.replace('_', '-')}", f"scenic_{name}"
    folder = root / "projects" / name
    if folder.exists() or folder.is_symlink():
        raise Refused(f"projects/{name} already exists")
    for member in members:
        if canonical(member.name) == canonical(dist) or package in member.import_names:
            where = member.folder.relative_to(root).as_posix()
            raise Refused(f"{dist} / {package} is taken by the workspace package in {where}")
    spec = importlib.util.find_spec(package)
    if spec is not None:
        where = spec.origin or ", ".join(spec.submodule_search_locations or [])
        raise Refused(f"an installed Python package is already called {package} ({where})")
    try:
        installed = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return
    raise Refused(f"a distribution called {dist} is already installed ({installed.version})")


# --- what to copy -----------------------------------------------------------------------------


def source_files(root: Path, folder: Path) -> list[Path]:
    """The files under `folder` to copy, relative to it: what git tracks or would track
    (untracked but not ignored), or outside a git checkout every file but caches and
    build outputs."""
    try:
        result = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "."],
            cwd=folder,
            capture_output=True,
            check=False,
        )
        inside = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=folder, capture_output=True, text=True
        )
    except OSError:  # no git
        result = inside = None
    if (
        result is not None
        and result.returncode == 0
        and inside.returncode == 0
        and Path(inside.stdout.strip()).resolve() == root.resolve()
    ):
        names = [Path(n) for n in result.stdout.decode().split("\0") if n]
    else:
        names = [p.relative_to(folder) for p in folder.rglob("*")]
    return sorted(
        name
        for name in names
        if (folder / name).is_file()
        and not (folder / name).is_symlink()
        and not SKIP_DIRS.intersection(name.parts[:-1])
        and not name.name.endswith(SKIP_SUFFIXES)
        and not any(part.endswith(".egg-info") for part in name.parts)
    )


def registering_modules(folder: Path, package: str, files: list[Path]) -> list[str]:
    """Top-level modules of `package` that register global names with the core at import."""
    found = []
    for name in files:
        if name.parent == Path("src", package) and name.suffix == ".py":
            if REGISTERS.search((folder / name).read_text(encoding="utf-8")):
                found.append(name.stem)
    return sorted(found)


# --- renaming ---------------------------------------------------------------------------------

_KEEP = "\x00kept-package\x00"


@dataclass
class Renamer:
    """Rewrites the source project's names (`source`: e.g. `vivit`) to the new one's."""

    source: str
    name: str
    kept: list[str] = field(default_factory=list)  # modules that stay in the source package

    @property
    def old_package(self) -> str:
        return f"scenic_{self.source}"

    @property
    def new_package(self) -> str:
        return f"scenic_{self.name}"

    @property
    def old_dist(self) -> str:
        return f"scenic-{self.source.replace('_', '-')}"

    @property
    def new_dist(self) -> str:
        return f"scenic-{self.name.replace('_', '-')}"

    def path(self, relative: Path) -> Path:
        return Path(*(self.new_package if p == self.old_package else p for p in relative.parts))

    def text(self, text: str) -> str:
        old = re.escape(self.old_package)
        if self.kept:
            kept = "|".join(map(re.escape, self.kept))
            text = re.sub(rf"(?m)^([ \t]*)from {old} import ([^\n(]+)$", self._split_import, text)
            text = re.sub(rf"\b{old}(?=\.(?:{kept})\b)", _KEEP, text)
        text = re.sub(rf"\b{old}\b", self.new_package, text)
        text = re.sub(rf"(?<![\w-]){re.escape(self.old_dist)}(?![\w-])", self.new_dist, text)
        text = re.sub(
            rf"\bprojects/{re.escape(self.source)}(?![\w-])", f"projects/{self.name}", text
        )
        return text.replace(_KEEP, self.old_package)

    def _split_import(self, match: re.Match) -> str:
        """`from scenic_src import a, kept_b` -> one import from each package."""
        indent, names = match.group(1), match.group(2)
        code, _, comment = names.partition("#")
        items = [item.strip() for item in code.split(",") if item.strip()]
        kept = [i for i in items if i.split(" as ")[0].strip() in self.kept]
        if not kept:
            return match.group(0)
        moved = [i for i in items if i not in kept]
        suffix = f"  #{comment}" if comment else ""
        lines = [f"{indent}from {_KEEP} import {', '.join(kept)}{suffix}"]
        if moved:
            lines.insert(0, f"{indent}from {self.old_package} import {', '.join(moved)}")
        return "\n".join(lines)


# --- generated files --------------------------------------------------------------------------


def pin(member: Member) -> str:
    return f"{member.name}~={member.version}"


def new_pyproject(
    text: str, renamer: Renamer, members: list[Member], source: Member, origin: str
) -> str:
    """The source's pyproject.toml renamed, at version 0.1.0, its workspace pins set to the
    workspace's current versions, and a pin on the source package if modules stay there."""
    text = renamer.text(text)
    text = re.sub(r'(?m)^version = "[^"]*"', f'version = "{NEW_VERSION}"', text, count=1)
    plain = origin.replace("`", "")
    description = f"A Scenic project started from {plain}. TODO: say in one line what it does."
    text = re.sub(r'(?m)^description = ".*"$', f"description = {json.dumps(description)}", text)
    for member in members:
        text = re.sub(rf'"{re.escape(member.name)}(?:[^"\w-][^"]*)?"', f'"{pin(member)}"', text)
    if renamer.kept:
        core_pin = re.search(r'(?m)^([ \t]*)"scenic-core~=[^"]*",[^\n]*\n', text)
        indent, kept = core_pin.group(1), ", ".join(renamer.kept)
        lines = (
            f"{indent}# Its modules {kept} register global names with the core (a second\n"
            f"{indent}# copy could not be imported beside them): they stay in {source.name}.\n"
            f'{indent}"{pin(source)}",\n'
        )
        text = text[: core_pin.end()] + lines + text[core_pin.end() :]
    return text


def demo_config(smoke_train: list[str]) -> str:
    """The demo config's name: the `--config` of `[tool.scenic] smoke-train`."""
    return smoke_train[smoke_train.index("--config") + 1] if "--config" in smoke_train else "DEMO"


def wrap(paragraph: str, indent: str = "") -> str:
    return textwrap.fill(paragraph, width=96, subsequent_indent=indent, break_on_hyphens=False)


def demote_headings(markdown: str) -> str:
    """Every Markdown heading one level down (`#` -> `##`), outside code blocks."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,5} ", line):
            line = "#" + line
        out.append(line)
    return "\n".join(out) + "\n"


def new_readme(
    renamer: Renamer,
    source: Member,
    origin: str,
    config: str,
    pins: list[str],
    copied: str | None,
    date: str,
) -> str:
    """A README stub (what it is, the commands, an empty results table) and, for a copied
    project, the source's README below it."""
    name, dist = renamer.name, renamer.new_dist
    kept = ""
    if renamer.kept:
        modules = ", ".join(f"`{renamer.old_package}.{m}`" for m in renamer.kept)
        kept = (
            f" It imports {modules} from `{source.name}` instead of copying them: they register"
            " global names with the core, which two copies cannot share in one process."
        )
    text = f"""# {dist}

TODO: what this project is: the model or task, the paper it follows, what it adds to Scenic.

{wrap(f"Started from {origin} with `tools/new_project.py` on {date}.{kept}")}

```
pip install {dist}    # pulls {", ".join(pins)}
```

## Commands

```
{dist} list-configs
{dist} train --config {config} --workdir /tmp/{config}
{dist} eval --workdir /tmp/{config}
```

In the workspace, prefix them with `hatch run` (the next `hatch run` installs this project
into the workspace environment). Its tests:
`hatch run python -m pytest -q projects/{name}/tests`.

## Results

Name the machine of every figure (CPU model and cores, or accelerator) and the command.

| config | data | metric | result | training time | machine | command |
|---|---|---|---|---|---|---|
"""
    if copied is not None:
        copied = re.sub(r"\A# [^\n]*\n+", "", copied)  # its title: the section's heading
        text += f"""
## The {source.name} README this project started from

Kept for reference while this project grows its own (its tests may read the tables below);
its figures were measured with the code this project started from.

{demote_headings(copied).strip()}
"""
    return text


def new_changelog(renamer: Renamer, origin: str, pins: list[str], date: str) -> str:
    first = (
        f"- First version, started from {origin} with `tools/new_project.py` (not yet "
        "published to a package index)."
    )
    requires = f"- Requires {', '.join(f'`{p}`' for p in pins)}."
    return (
        CHANGELOG_HEADER.format(name=renamer.new_dist)
        + f"\n## {NEW_VERSION} ({date})\n\n"
        + f"{wrap(first, indent='  ')}\n{wrap(requires, indent='  ')}\n"
    )


def set_version(init_text: str) -> str:
    return re.sub(r'(?m)^__version__ = "[^"]*"', f'__version__ = "{NEW_VERSION}"', init_text)


# --- the root pyproject.toml: one hatch environment per project, where the workspace has them --


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return str(value)


def toml_lines(table: dict, prefix: str = "") -> list[str]:
    lines = []
    for key, value in table.items():
        if isinstance(value, dict):
            lines += toml_lines(value, f"{prefix}{key}.")
        else:
            lines.append(f"{prefix}{key} = {toml_value(value)}")
    return lines


def project_env(
    root_text: str, root: Path, renamer: Renamer, needs: list[str], extras: list[str]
) -> str | None:
    """The root pyproject.toml with a `[tool.hatch.envs.NAME]` section for the new project
    (detached; the workspace members it `needs`, and itself with all its `extras`; the source
    project's test dependencies), or None if the workspace has no per-project environments."""
    envs = tomllib.loads(root_text).get("tool", {}).get("hatch", {}).get("envs", {})
    per_project = [e for e in envs if e != "default" and (root / "projects" / e).is_dir()]
    if not per_project:
        return None
    own = f"projects/{renamer.name}"
    base = envs.get(renamer.source) or {}
    env = {
        "detached": True,
        "python": base.get("python", envs[per_project[0]].get("python", "3.11")),
        "workspace": {"members": [*needs, {"path": own, "features": extras} if extras else own]},
        "dependencies": base.get("dependencies", ["pytest>=8", "pytest-xdist>=3"]),
        "scripts": {"test": f"python -m pytest -n 2 -q {own}/tests {{args}}"},
    }
    section = f"\n[tool.hatch.envs.{renamer.name}]\n" + "\n".join(toml_lines(env)) + "\n"
    # After the last per-project section: before the next table header, and before the
    # comment and blank lines that lead into it.
    last = max(root_text.index(f"[tool.hatch.envs.{e}]") for e in per_project)
    following = re.compile(r"(?m)^\[(?!tool\.hatch\.envs\.[\w-]+\.)")
    nxt = following.search(root_text, root_text.index("\n", last) + 1)
    end = nxt.start() if nxt else len(root_text)
    body = root_text[last:end].rstrip("\n").splitlines(keepends=True)
    while body and (not body[-1].strip() or body[-1].lstrip().startswith("#")):
        body.pop()
    cut = last + len("".join(body))
    return root_text[:cut] + "\n" + section.rstrip("\n") + root_text[cut:]


# --- the command ------------------------------------------------------------------------------


@dataclass
class Plan:
    folder: Path  # projects/NAME
    files: dict[Path, bytes]  # relative to `folder`
    root_pyproject: str | None  # new text, or None to leave it
    renamer: Renamer
    source: Member
    origin: str
    config: str
    pins: list[str]


def plan_project(root: Path, name: str, template: str, date: str) -> Plan:
    members = workspace_members(root)
    check_name(name, root, members)
    src_folder = root / TEMPLATES[template]
    if not (src_folder / "pyproject.toml").is_file():
        raise Refused(f"template {template!r}: {src_folder} has no pyproject.toml")
    source = load_member(src_folder)
    if template == "minimal":
        origin = f"the minimal template (`{TEMPLATES[template]}`)"
    else:
        origin = f"`{source.name}` {source.version} (`{TEMPLATES[template]}`)"
    files = source_files(root, src_folder)
    short = source.import_names[0].removeprefix("scenic_")
    kept = registering_modules(src_folder, f"scenic_{short}", files)
    renamer = Renamer(short, name, kept)
    pyproject_text = (src_folder / "pyproject.toml").read_text(encoding="utf-8")
    others = [m for m in members if m.folder != src_folder]
    pyproject = new_pyproject(pyproject_text, renamer, others, source, origin)
    data = tomllib.loads(pyproject)
    dependencies = data["project"].get("dependencies", [])
    pins = [d for d in dependencies if d.startswith("scenic-")]
    needs = needed_members(dependencies, members, root)
    extras = sorted(data["project"].get("optional-dependencies", {}))
    config = demo_config(data.get("tool", {}).get("scenic", {}).get("smoke-train", []))
    out: dict[Path, bytes] = {Path("pyproject.toml"): pyproject.encode()}
    copied_readme = None
    for relative in files:
        if relative.parts[:2] == ("src", renamer.old_package) and len(relative.parts) == 3:
            if relative.suffix == ".py" and relative.stem in kept:
                continue
        if relative in (Path("pyproject.toml"), Path("CHANGELOG.md")):
            continue
        raw = (src_folder / relative).read_bytes()
        if relative == Path("README.md"):
            copied_readme = renamer.text(raw.decode("utf-8"))
            continue
        try:
            text = renamer.text(raw.decode("utf-8"))
        except UnicodeDecodeError:
            out[renamer.path(relative)] = raw
            continue
        if relative == Path("src", renamer.old_package, "__init__.py"):
            text = set_version(text)
        out[renamer.path(relative)] = text.encode()
    if template == "minimal":
        copied_readme = None
    readme = new_readme(renamer, source, origin, config, pins, copied_readme, date)
    out[Path("README.md")] = readme.encode()
    out[Path("CHANGELOG.md")] = new_changelog(renamer, origin, pins, date).encode()
    root_text = (root / "pyproject.toml").read_text(encoding="utf-8")
    root_pyproject = project_env(root_text, root, renamer, needs, extras)
    return Plan(
        root / "projects" / name, out, root_pyproject, renamer, source, origin, config, pins
    )


def write(plan: Plan, root: Path) -> None:
    """Write the project into a temporary folder beside its destination, then rename it
    into place, and only then edit the root pyproject.toml: a failure leaves nothing."""
    partial = Path(tempfile.mkdtemp(prefix=f".{plan.folder.name}.partial-", dir=plan.folder.parent))
    try:
        for relative, content in plan.files.items():
            target = partial / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        partial.chmod(0o755)
        partial.rename(plan.folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if plan.root_pyproject is not None:
        try:
            (root / "pyproject.toml").write_text(plan.root_pyproject, encoding="utf-8")
        except BaseException:
            shutil.rmtree(plan.folder, ignore_errors=True)
            raise


def ruff_command() -> list[str] | None:
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    found = shutil.which("ruff")
    return [found] if found else None


def tidy_imports(folder: Path, root: Path) -> str:
    """Re-sort imports (a renamed package may sort elsewhere) and report remaining lint."""
    ruff = ruff_command()
    if ruff is None:
        return "ruff not found: run `hatch run lint` (ruff check --fix) before committing"
    subprocess.run(
        [*ruff, "check", "--quiet", "--select", "I", "--fix", str(folder)],
        cwd=root,
        capture_output=True,
        check=False,
    )
    result = subprocess.run(
        [*ruff, "check", "--quiet", "--output-format", "concise", str(folder)],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        return "ruff check finds problems to fix:\n" + result.stdout.rstrip()
    return "ruff check: clean"


def report(plan: Plan, root: Path, lint: str) -> None:
    r, rel = plan.renamer, plan.folder.relative_to(root).as_posix()
    n_src = sum(1 for p in plan.files if p.parts[0] == "src")
    n_tests = sum(1 for p in plan.files if p.parts[0] == "tests")
    print(f"created {rel} from {plan.origin}:")
    print(
        f"  distribution {r.new_dist}, import package {r.new_package}, console script {r.new_dist}"
    )
    print(f"  {rel}/pyproject.toml     version {NEW_VERSION}; pins {', '.join(plan.pins)}")
    print(f"  {rel}/src/{r.new_package}/  {n_src} files")
    print(f"  {rel}/tests/  {n_tests} files")
    print(f"  {rel}/README.md          a stub: say what it is, fill in the results table")
    print(f"  {rel}/CHANGELOG.md       {NEW_VERSION}")
    if r.kept:
        kept = ", ".join(f"{r.old_package}.{m}" for m in r.kept)
        print(f"  kept in {plan.source.name} (registered with the core once): {kept}")
    if plan.root_pyproject is not None:
        print(f"  pyproject.toml           [tool.hatch.envs.{r.name}] (`hatch run {r.name}:test`)")
    print(f"  {lint}")
    print("next (the next `hatch run` installs the new member into the workspace environment;")
    print("no `hatch env prune` needed):")
    print(f"  hatch run {r.new_dist} train --config {plan.config} --workdir workdirs/{plan.config}")
    print(f"  hatch run python -m pytest -q {rel}/tests")
    print("  hatch run lint")
    print("  hatch run release-check     # builds, installs and smoke-trains it with the others")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog=PROG, description=__doc__.split("\n", 1)[0])
    parser.add_argument("name", help="the new project's name, e.g. my_detector")
    parser.add_argument(
        "--from",
        dest="template",
        required=True,
        choices=sorted(TEMPLATES),
        help="the template to copy",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, root: Path = REPO_ROOT) -> int:
    try:
        args = parse_args(argv)
        date = datetime.date.today().isoformat()
        plan = plan_project(root, args.name, args.template, date)
        write(plan, root)
    except Refused as refusal:
        print(f"{PROG}: error: {refusal}", file=sys.stderr)
        return 2
    report(plan, root, tidy_imports(plan.folder, root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
