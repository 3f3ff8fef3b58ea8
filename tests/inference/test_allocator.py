"""glibc's mmap threshold is fixed once per process, and a user's own setting wins."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import ctypes, os, sys
from medseg.inference import allocator
first = allocator.return_large_blocks()
second = allocator.return_large_blocks()
libc = ctypes.CDLL("libc.so.6")
# a block between the default threshold (128 KiB, grown by frees) and ours stays on the heap:
# mallinfo2's hblkhd counts bytes in separate mappings
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
big = libc.malloc(16 * 2**20)
libc.free(big)  # glibc's dynamic threshold now rises to 16 MiB
before = libc.mallinfo2().hblkhd
block = libc.malloc(8 * 2**20)
mapped = libc.mallinfo2().hblkhd - before >= 8 * 2**20
libc.free(block)
print(first, second, mapped)
"""


def _run(env_extra: dict[str, str]) -> list[str]:
    import os

    env = {**os.environ, **env_extra}
    if "MALLOC_MMAP_THRESHOLD_" not in env_extra:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, check=True)
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_large_blocks_are_mapped_after_a_large_free() -> None:
    """Without the fixed threshold, an 8 MiB block after a 16 MiB free comes from the heap
    (and stays resident once freed); with it, the block has its own mapping."""
    assert _run({}) == ["True", "True", "True"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_a_threshold_set_by_the_user_is_kept() -> None:
    assert _run({"MALLOC_MMAP_THRESHOLD_": str(64 * 2**20)}) == ["False", "False", "False"]
