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

Huge pages make each fault cheaper but leave TensorFlow's patch in place: buffers above
128 KiB are still mapped and unmapped every step. `pin_malloc_thresholds`, called by
`dataset_utils.prefetch_to_device` once a tf.data pipeline has started (TensorFlow patches
again for every new generator pipeline), sets the thresholds to where glibc's own dynamic rule
would have taken them (mmap 32 MiB, trim 64 MiB): 10x fewer page faults and 10-20% more
images/s for the reference ViT fed by a TFDS pipeline (tools/README.md).
"""

from __future__ import annotations

import ctypes
import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for its dynamic mmap threshold on 64-bit
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # the trim threshold glibc's dynamic rule pairs with it


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


def thresholds_wanted(environ, glibc: tuple[int, int] | None) -> bool:
    """Whether to pin glibc's malloc thresholds: glibc's malloc is in use and the user set
    neither threshold through GLIBC_TUNABLES."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "malloc" in environ.get("LD_PRELOAD", "") or glibc is None:
        return False
    return "mmap_threshold" not in tunables and "trim_threshold" not in tunables


def pin_malloc_thresholds() -> bool:
    """Sets glibc's mmap and trim thresholds (MMAP_THRESHOLD, TRIM_THRESHOLD), undoing
    TensorFlow's 128 KiB trim threshold; returns whether it did. Call it after a tf.data
    pipeline has started: TensorFlow applies its patch when a generator pipeline is created."""
    if not sys.platform.startswith("linux"):
        return False
    if not thresholds_wanted(os.environ, glibc_version()):
        return False
    libc = ctypes.CDLL(None)  # this process's C library
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


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
