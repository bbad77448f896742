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


@pytest.mark.parametrize(
    "environ, glibc, wanted",
    [
        ({}, (2, 36), True),
        ({"GLIBC_TUNABLES": allocator.TUNABLE}, (2, 36), True),  # our own re-exec
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4096"}, (2, 36), False),  # the user's
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, (2, 36), False),
        ({"LD_PRELOAD": "libtcmalloc.so.4"}, (2, 36), False),  # glibc's malloc is not in use
        ({}, None, False),
    ],
)
def test_thresholds_wanted(environ, glibc, wanted):
    assert allocator.thresholds_wanted(environ, glibc) is wanted


# Counts the blocks glibc maps on their own (mallinfo2's hblks) while a block is held.
THRESHOLD_SCRIPT = """
import ctypes
import tensorflow as tf
from scenic.common_lib import allocator

libc = ctypes.CDLL(None)
FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]


libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]


def mapped(size):
    before = libc.mallinfo2().hblks
    block = libc.malloc(size)
    after = libc.mallinfo2().hblks
    libc.free(block)
    return after - before


dataset = tf.data.Dataset.from_generator(
    lambda: iter([1, 2]), output_signature=tf.TensorSpec((), tf.int32)
)
next(iter(dataset))  # TensorFlow's generator pipeline sets M_TRIM_THRESHOLD
print("patched", mapped(24 << 20), mapped(24 << 20), flush=True)
print("pinned", allocator.pin_malloc_thresholds(), flush=True)
print("after", mapped(24 << 20), mapped(24 << 20), flush=True)
"""


def test_pinned_thresholds_undo_tensorflows_malloc_patch():
    if allocator.glibc_version() is None or allocator.glibc_version() < (2, 33):
        pytest.skip("needs glibc's mallinfo2 (2.33+)")
    environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    out = subprocess.run(
        [sys.executable, "-c", THRESHOLD_SCRIPT],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    # After TensorFlow's patch a 24 MiB block is mapped on its own every time: glibc alone
    # would raise its mmap threshold past a freed mapped block, so the second would come from
    # the heap. Once pinned (32 MiB), both come from the heap.
    assert out == ["patched 1 1", "pinned True", "after 0 0"]
