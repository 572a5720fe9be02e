"""pipeline/allocator.py: with the mmap threshold fixed, glibc maps a large block after another was freed, in
evaluate's process but not in the processes it starts, and a threshold the user set is kept."""

import ctypes
import os
import platform
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or not hasattr(ctypes.CDLL(None), "mallinfo2"),
    reason="glibc's allocator (mallinfo2: glibc 2.33 or later)",
)

# Frees a mapped 4 MiB block (which, by glibc's default, raises its threshold above 4 MiB), allocates another
# and prints what fix_mmap_threshold answered, whether glibc mapped the block (mallinfo2's hblkhd: the bytes of
# mapped blocks) and the variable that a child process would see.
PROBE = """
import ctypes, os, sys
from pipeline.allocator import fix_mmap_threshold

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                     "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
fixed = fix_mmap_threshold() if sys.argv[1] == "fix" else None
size = 4 << 20
libc.free(libc.malloc(size))
mapped_before = libc.mallinfo2().hblkhd
block = libc.malloc(size)
print(fixed, libc.mallinfo2().hblkhd - mapped_before >= size, os.environ.get("MALLOC_MMAP_THRESHOLD_"))
"""


def probe(fix: bool, threshold_set_by_user: str | None = None) -> str:
    env = {key: value for key, value in os.environ.items() if key != "MALLOC_MMAP_THRESHOLD_"}
    if threshold_set_by_user is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = threshold_set_by_user
    command = [sys.executable, "-c", PROBE, "fix" if fix else "leave"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def test_glibcs_sliding_threshold_serves_the_second_block_from_its_heap():
    assert probe(fix=False) == "None False None"


def test_the_fixed_threshold_maps_it_in_this_process_only():
    assert probe(fix=True) == "True True None"  # no variable: the processes it starts keep glibc's default


def test_a_threshold_set_by_the_user_is_kept():
    assert probe(fix=True, threshold_set_by_user=str(8 << 20)) == f"False False {8 << 20}"
