"""The huge-page re-exec: when it applies, and that it keeps the process and its arguments."""

import os
import subprocess
import sys

import pytest

from scenic.common_lib import allocator


@pytest.mark.parametrize(
    "environ, glibc, thp, wanted",
    [
        ({}, (2, 36), "madvise", True),
        ({}, (2, 35), "madvise", True),
        ({}, (2, 34), "madvise", False),  # no hugetlb tunable before glibc 2.35
        ({}, None, "madvise", False),  # musl or another C library
        ({}, (2, 36), "always", False),  # huge pages already
        ({}, (2, 36), "never", False),
        ({}, (2, 36), None, False),  # no THP in this kernel
        ({"GLIBC_TUNABLES": ""}, (2, 36), "madvise", False),  # the user's choice, or done
        ({"LD_PRELOAD": "libjemalloc.so.2"}, (2, 36), "madvise", False),
        ({"LD_PRELOAD": "libfoo.so"}, (2, 36), "madvise", True),
    ],
)
def test_huge_pages_wanted(environ, glibc, thp, wanted):
    assert allocator.huge_pages_wanted(environ, glibc, thp) is wanted


def test_thp_mode_reads_the_bracketed_setting(tmp_path, monkeypatch):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    monkeypatch.setattr(allocator, "THP_SETTING", str(setting))
    assert allocator.thp_mode() == "madvise"
    monkeypatch.setattr(allocator, "THP_SETTING", str(tmp_path / "missing"))
    assert allocator.thp_mode() is None


SCRIPT = """
import os, sys
from scenic.common_lib import allocator
print(os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:], flush=True)
allocator.reexec_with_huge_pages()
print("done", flush=True)
"""


def test_reexec_keeps_pid_and_arguments_and_runs_once():
    environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, "train", "--workdir", "a b"],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    wanted = allocator.huge_pages_wanted(environ, allocator.glibc_version(), allocator.thp_mode())
    args = "['train', '--workdir', 'a b']"
    if not wanted:  # this machine gains nothing: the script runs on, untouched
        assert out[1:] == ["done"] and out[0].endswith(f"None {args}")
        return
    pid = out[0].split()[0]
    assert out == [f"{pid} None {args}", f"{pid} {allocator.TUNABLE} {args}", "done"]


def test_describe_names_the_allocator(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "libjemalloc.so.2")
    assert allocator.describe() == "preloaded libjemalloc.so.2"
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setenv("GLIBC_TUNABLES", allocator.TUNABLE)
    assert f"GLIBC_TUNABLES='{allocator.TUNABLE}'" in allocator.describe()
