"""runtime.memory on this machine's glibc: the arena cap is taken, and a trim gives a freed
burst of C-heap allocations back to the operating system (objects over 512 bytes, lists' and
dicts' tables: what pymalloc hands to malloc)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from imagestudio.runtime.memory import cap_malloc_arenas

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

BURST = """
import gc, sys
from imagestudio.runtime.memory import release_freed_memory

def rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024

before = rss()
burst = [bytes(600) + str(n).encode() for n in range(300_000)]  # past pymalloc's 512 bytes
keep = burst[::1000]  # a few survivors, as after an intake
del burst
gc.collect()
held = rss() - before
release_freed_memory()
print(held, rss() - before)
"""


@glibc
def test_the_arena_cap_is_taken() -> None:
    assert cap_malloc_arenas()


@glibc
def test_a_trim_gives_a_freed_burst_back() -> None:
    done = subprocess.run(
        [sys.executable, "-c", BURST], capture_output=True, text=True, check=True, timeout=60
    )
    held, after = (int(v) for v in done.stdout.split())
    assert held > 50  # MiB the freed burst still held
    assert after < held / 2
