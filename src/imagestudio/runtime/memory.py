"""The process's C heap: how many malloc arenas it keeps, and giving freed pages back.

A server's memory should follow the work it holds, not the biggest burst it ever saw. Two
glibc behaviours broke that (measured in docs/benchmarks.md, "Scale"):

- every thread that allocates gets an arena of its own, up to eight per core; intake's thread,
  the default executor's and every SQLite connection's thread each kept the pages they once
  used. Two arenas serve this process's few busy threads as well (Python holds the GIL anyway).
- freed small blocks stay in the arenas: a 100,000-image intake allocates and frees a few
  hundred MB within a second, and without ``malloc_trim`` the server kept about 100 MB of it.

Both are no-ops where the C library lacks them (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

M_ARENA_MAX = -8  # mallopt's parameter number (glibc malloc.h)
ARENAS = 2


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


_LIBC = _libc()


def cap_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Let the C heap make at most ``arenas`` arenas from now on (threads started before
    keep theirs); whether the library took it. ``MALLOC_ARENA_MAX`` in the environment does
    the same before the process starts."""
    mallopt = getattr(_LIBC, "mallopt", None)
    return bool(mallopt is not None and mallopt(M_ARENA_MAX, arenas) == 1)


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the operating system (``malloc_trim``). It walks
    the heap (milliseconds): call it off the event loop, after big bursts only."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)
