"""Installing from a package index, as the release check does, on tiny synthetic wheels.

The release check builds every workspace package into a local PEP 503 index and installs the
projects BY NAME from it. These tests run the same index writer, constraints and pip command
(tools/release_check.py) on a few hand-made wheels, with pip's `--dry-run` and no network
(`--isolated`, local indexes only), a few seconds in all:
- a project pinned to an older core fails to RESOLVE, with pip's own message, instead of
  installing and failing at import time;
- a same-named package with a higher version on another index (dependency confusion) is
  kept out by the constraints, and caught by the install-report check when they are missing.
"""

import base64
import hashlib
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "release_check.py"


def load_release_check():
    spec = importlib.util.spec_from_file_location("release_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


release_check = sys.modules.get("release_check") or load_release_check()


def make_wheel(folder: Path, name: str, version: str, requires=(), body="") -> Path:
    """A minimal valid pure-Python wheel (METADATA, WHEEL, RECORD with hashes)."""
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f"__version__ = {version!r}\n{body}",
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            "Requires-Python: >=3.8\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
        ),
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = hashlib.sha256(text.encode()).digest()
        encoded = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        record.append(f"{path},sha256={encoded},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


def package(name, version, wheel):
    pkg = release_check.Package(
        path=Path("."), name=name, version=version, dependencies=[], scripts={}, import_names=[]
    )
    pkg.dists = [wheel]
    return pkg


def pip_dry_run(tmp_path, local_url, public_url, packages, names, constrain=True):
    """The release check's pip command, resolving only (`--dry-run`) against the local index
    and a stand-in for the public one; no config files, no network."""
    constraints = tmp_path / "constraints.txt"
    release_check.write_constraints(packages if constrain else [], constraints)
    report = tmp_path / "report.json"
    options = ("--isolated", "--dry-run", "--ignore-installed", "--index-url", public_url)
    cmd = release_check.pip_install_command(
        sys.executable, local_url, packages, constraints, names, report, options
    )
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return result, report


def test_project_pinned_to_an_older_core_fails_to_resolve(tmp_path):
    # The workspace moved to core 0.2.0; scenic-old still pins ~=0.1.0. The constraint
    # scenic-core==0.2.0 is what the release check adds, so pip cannot pick an older core.
    files = [
        make_wheel(tmp_path / "dist", "scenic-core", "0.2.0"),
        make_wheel(tmp_path / "dist", "scenic-old", "0.1.0", ["scenic-core~=0.1.0"]),
    ]
    packages = [
        package("scenic-core", "0.2.0", files[0]),
        package("scenic-old", "0.1.0", files[1]),
    ]
    local = release_check.write_simple_index(files, tmp_path / "local")
    public = release_check.write_simple_index([], tmp_path / "public")

    result, _ = pip_dry_run(tmp_path, local, public, packages, ["scenic-old"])
    assert result.returncode != 0
    assert "No matching distribution found for scenic-core~=0.1.0" in result.stderr or (
        "ResolutionImpossible" in result.stderr
    ), result.stderr


def test_same_named_package_on_another_index_does_not_win(tmp_path):
    core = make_wheel(tmp_path / "dist", "scenic-core", "0.2.0")
    project = make_wheel(tmp_path / "dist", "scenic-p", "0.1.0", ["scenic-core~=0.2.0"])
    packages = [package("scenic-core", "0.2.0", core), package("scenic-p", "0.1.0", project)]
    local = release_check.write_simple_index([core, project], tmp_path / "local")
    squat = make_wheel(tmp_path / "public-files", "scenic-core", "0.2.1", body="import evil\n")
    public = release_check.write_simple_index([squat], tmp_path / "public")

    # Without the constraints pip takes the higher version from the other index ...
    result, report = pip_dry_run(tmp_path, local, public, packages, ["scenic-p"], constrain=False)
    assert result.returncode == 0, result.stderr
    problems = release_check.check_install_report(report, packages)
    assert len(problems) == 1 and "scenic-core 0.2.1 came from" in problems[0], problems
    assert "not the local index" in problems[0]

    # ... with them (what the release check passes) the local build is the one resolved: also
    # the positive control of the test above (the same command resolves a current pin).
    result, report = pip_dry_run(tmp_path, local, public, packages, ["scenic-p"])
    assert result.returncode == 0, result.stderr
    assert release_check.check_install_report(report, packages) == []
