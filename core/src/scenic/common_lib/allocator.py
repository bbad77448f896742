"""Huge pages for glibc malloc: the CPU allocator lever, applied by re-executing once.

An XLA:CPU training step frees and reallocates its large buffers every step. glibc serves them
from freshly mapped 4 KiB pages, so much of a step's CPU time goes to page faults (DESIGN.md).
TensorFlow makes it worse: creating a tf.data generator pipeline sets glibc's trim threshold to
128 KiB ("Memory patch applied" in its log), which also stops glibc from raising its mmap
threshold. With the tunable `glibc.malloc.hugetlb=1` (glibc >= 2.35) malloc asks the kernel
for transparent huge pages (2 MiB) instead: measured in tools/README.md, it made the
vivit_moving_digits trainer ~45% faster here, with bit-identical results.

glibc reads tunables only when a process starts, so the `scenic-*` console scripts call
`reexec_with_huge_pages` first: it replaces the process (same PID, same arguments) by one with
GLIBC_TUNABLES set. Setting GLIBC_TUNABLES yourself (even to an empty string) opts out, as
does preloading another allocator (LD_PRELOAD naming jemalloc, tcmalloc, ...).
"""

from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library when it is glibc, else None."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, OSError, ValueError):
        return None


def thp_mode() -> str | None:
    """The kernel's transparent huge page mode ('always', 'madvise', 'never') or None."""
    try:
        with open(THP_SETTING) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def huge_pages_wanted(environ, glibc: tuple[int, int] | None, thp: str | None) -> bool:
    """Whether re-executing with the tunable would change anything and the user left it to us.

    Only with THP in 'madvise' mode: 'always' gives huge pages anyway, 'never' refuses them.
    """
    if "GLIBC_TUNABLES" in environ or "malloc" in environ.get("LD_PRELOAD", ""):
        return False
    return glibc is not None and glibc >= (2, 35) and thp == "madvise"


def reexec_with_huge_pages() -> None:
    """Replaces this process by the same command with GLIBC_TUNABLES set, when it helps.

    Call it first thing in a console script: nothing run before it survives. Returns
    (doing nothing) when the tunable is already set, not wanted or not supported.
    """
    if not sys.platform.startswith("linux"):
        return
    if not huge_pages_wanted(os.environ, glibc_version(), thp_mode()):
        return
    environ = dict(os.environ, GLIBC_TUNABLES=TUNABLE)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, environ)


def describe() -> str:
    """One line for logs: which allocator settings this process runs with."""
    preload = os.environ.get("LD_PRELOAD", "")
    if "malloc" in preload:
        return f"preloaded {preload}"
    tunables = os.environ.get("GLIBC_TUNABLES")
    version = glibc_version()
    name = f"glibc {version[0]}.{version[1]}" if version else "system malloc"
    return f"{name}, GLIBC_TUNABLES={tunables!r}, transparent huge pages {thp_mode()}"
