"""tools/avx2_cpu: a process run through it sees no AVX-512 (CPUID, in every thread; NumPy's
dispatch), keeps AVX2, and the program's own SIGSEGV handler still runs on a real fault."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "tools" / "avx2_cpu" / "run.sh"

PROBE = r"""
#include <cpuid.h>
#include <pthread.h>
#include <stdio.h>
static void *report(void *name) {
  unsigned a, b, c, d;
  __cpuid_count(7, 0, a, b, c, d);
  unsigned avx512f = (b >> 16) & 1, avx2 = (b >> 5) & 1;
  __cpuid(1, a, b, c, d);
  unsigned family = ((a >> 8) & 0xF) + ((a >> 20) & 0xFF);
  unsigned model = ((a >> 4) & 0xF) | (((a >> 16) & 0xF) << 4);
  printf("%s avx512f=%u avx2=%u family=%u model=%u\n", (const char *)name, avx512f, avx2,
         family, model);
  fflush(stdout);
  return 0;
}
int main(void) {
  pthread_t t;
  report("main");
  pthread_create(&t, 0, report, "thread");
  pthread_join(t, 0);
  return 0;
}
"""


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


pytestmark = pytest.mark.skipif(
    platform.system() != "Linux"
    or platform.machine() != "x86_64"
    or shutil.which("gcc") is None
    or "cpuid_fault" not in _cpu_flags(),
    reason="needs Linux x86_64 with CPUID faulting and gcc",
)


def _run(args, tmp_path, through_tool: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, TMPDIR=str(tmp_path))
    env.pop("GLIBC_TUNABLES", None)
    command = [str(RUN), *args] if through_tool else list(args)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def _probe_lines(tmp_path, through_tool):
    result = _run([str(tmp_path / "probe")], tmp_path, through_tool)
    assert result.returncode == 0, result.stderr
    return dict(line.split(" ", 1) for line in result.stdout.splitlines())


def test_cpuid_reports_no_avx512_in_every_thread(tmp_path):
    (tmp_path / "probe.c").write_text(PROBE)
    subprocess.run(
        ["gcc", "-O1", "-pthread", "-o", str(tmp_path / "probe"), str(tmp_path / "probe.c")],
        check=True,
    )
    flags = _cpu_flags()
    native = _probe_lines(tmp_path, through_tool=False)
    hidden = _probe_lines(tmp_path, through_tool=True)
    # Natively the probe reads the machine's own bits (so it can see AVX-512 where it exists).
    assert f"avx512f={int('avx512f' in flags)}" in native["main"]
    for name in ("main", "thread"):
        assert "avx512f=0" in hidden[name]
        assert f"avx2={int('avx2' in flags)}" in hidden[name]
    native_family = int(native["main"].split("family=")[1].split()[0])
    if native_family == 25:  # AMD Zen 3 / Zen 4: reported as a Zen 3
        assert "family=25 model=33" in hidden["main"]
    else:
        assert native["main"].split("family=")[1] == hidden["main"].split("family=")[1]
    assert hidden["thread"] == hidden["main"]


def test_numpy_dispatch_sees_no_avx512(tmp_path):
    code = (
        "from numpy._core._multiarray_umath import __cpu_features__ as f;"
        "print(f['AVX512F'], f['AVX2'])"
    )
    native = _run([sys.executable, "-c", code], tmp_path, through_tool=False)
    hidden = _run([sys.executable, "-c", code], tmp_path, through_tool=True)
    assert native.stdout.split()[0] == str("avx512f" in _cpu_flags())
    assert hidden.stdout.split() == ["False", str("avx2" in _cpu_flags())], hidden.stderr


def test_program_segfault_handler_still_runs(tmp_path):
    code = "import ctypes, faulthandler; faulthandler.enable(); ctypes.string_at(0)"
    result = _run([sys.executable, "-c", code], tmp_path, through_tool=True)
    assert result.returncode == -11
    assert "Fatal Python error: Segmentation fault" in result.stderr


def test_glibc_tunables_keep_the_callers_and_the_huge_page_default(tmp_path):
    show = [sys.executable, "-c", "import os; print(os.environ['GLIBC_TUNABLES'])"]
    default = _run(show, tmp_path, through_tool=True).stdout.strip().split(":")
    assert default[0].startswith("glibc.cpu.hwcaps=-AVX512F,")
    assert default[1:] == ["glibc.malloc.hugetlb=1"]
    env = dict(os.environ, TMPDIR=str(tmp_path), GLIBC_TUNABLES="glibc.malloc.tcache_count=0")
    mine = subprocess.run([str(RUN), *show], env=env, capture_output=True, text=True)
    assert mine.stdout.strip().split(":")[1:] == ["glibc.malloc.tcache_count=0"]


def test_no_command_is_refused_with_usage(tmp_path):
    result = _run([], tmp_path, through_tool=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "usage: tools/avx2_cpu/run.sh COMMAND [ARGS...]"
    assert list(tmp_path.iterdir()) == []  # nothing built
