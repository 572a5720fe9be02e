"""glibc's mmap threshold held fixed in evaluate's process, so that its peak varies far less from run to run.

glibc's allocator serves a block above its mmap threshold (128 KiB at first) with a mapping of its own,
returned to the system when freed, but raises the threshold to the size of each such block freed (up to
32 MiB), so that later blocks of that size come from its heap, which it may keep. At a million source images
that made evaluate's peak vary from run to run between 1,143 and 1,761 MiB; with the threshold fixed at 1 MiB,
six runs peaked between 1,075 and 1,262, for 1.2 to 1.3 times the stage's seconds there and none on the default
data (docs/performance.md#scale). A fixed threshold maps and unmaps every block above it, which costs a training
loop more (the judge 1.23 times its seconds, the GAN 1.61), so only evaluate's own process holds it, not the
processes that train its arms.
"""

from __future__ import annotations

import ctypes
import os
import platform

MMAP_THRESHOLD_VARIABLE = "MALLOC_MMAP_THRESHOLD_"  # glibc reads it at a process's start
MMAP_THRESHOLD_BYTES = 1 << 20
M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at 1 MiB in this process (not in the processes it starts), unless the user
    set it in the environment or the C library is not glibc; whether it was fixed here."""
    if platform.libc_ver()[0] != "glibc" or MMAP_THRESHOLD_VARIABLE in os.environ:
        return False
    return ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
