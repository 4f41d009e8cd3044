"""Where the CPU-bound transforms of ``imaging.process`` run: threads, or one process per core.

    ImagingExecutor     what the task runner awaits: ``await imaging.run(fn, *args)``
    ├── ThreadImaging   ``asyncio.to_thread`` (``IMAGESTUDIO_IMAGING_PROCESSES=0``)
    └── ProcessImaging  a pool of worker processes, one per core by default

Pillow holds the GIL through much of decode, resize and encode, so threads keep one core
busy; worker processes use all of them. Bytes go in and come out (they pickle), and the
exceptions the transforms raise (``BadImage``, ``SourceTooLarge``) come back with their type
and message.

The process pool:

- children start through ``forkserver`` (``spawn`` where there is none), never by forking
  this process with its threads and event loop; the fork server imports Pillow and
  ``imaging.process`` once, so every child, and every pool rebuilt later, starts warm;
  ``start()`` starts all children before the first image needs them;
- at most ``2 x processes`` calls are handed to it at once, so a burst of tasks cannot queue
  an unbounded pile of image bytes into its pipes;
- a child that dies (killed, out of memory, a crashing decoder) breaks the pool: the calls
  it had fail with an ``ImageStudioError`` that the retry policy retries like any
  transient error, and the next call gets a new pool;
- children ignore SIGINT (the parent decides when they stop) and exit when the parent dies,
  even by SIGKILL.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import wait
from typing import ParamSpec, Protocol, TypeVar

from imagestudio.errors import ImageStudioError

P = ParamSpec("P")
R = TypeVar("R")

# Imported once by the fork server; its children inherit them. ``__main__`` (the program's
# script, as in multiprocessing's default) so that children do not each import it again.
PRELOAD = [
    "__main__",
    "imagestudio.imaging.process",
    "PIL.JpegImagePlugin",
    "PIL.PngImagePlugin",
    "PIL.WebPImagePlugin",
    "PIL.GifImagePlugin",
    "PIL.BmpImagePlugin",
    "PIL.TiffImagePlugin",
]
QUEUED_PER_PROCESS = 2


def cpu_count() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class ImagingExecutor(Protocol):
    async def run(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class ThreadImaging:
    """The transforms in the default thread pool, as before the process pool."""

    async def run(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _start_method() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


class ProcessImaging:
    """The transforms in ``processes`` worker processes (see the module docstring)."""

    def __init__(self, processes: int, *, queued_per_process: int = QUEUED_PER_PROCESS) -> None:
        if processes < 1:
            raise ValueError("a process pool needs at least one process")
        self.processes = processes
        self.rebuilds = 0  # pools replaced after a child died
        self.queued = 0  # calls handed to the pool and not answered yet
        self._slots = asyncio.Semaphore(processes * queued_per_process)
        self._context = multiprocessing.get_context(_start_method())
        if self._context.get_start_method() == "forkserver":
            self._context.set_forkserver_preload(PRELOAD)
        self._executor = self._new_executor()
        self._closed = False

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.processes, mp_context=self._context, initializer=_child_init
        )

    async def start(self) -> None:
        """Start every child now, so the first images do not wait for them."""
        await asyncio.gather(*(self.run(_warm) for _ in range(self.processes)))

    async def run(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """``fn(*args, **kwargs)`` in a child; ``fn`` and its arguments must pickle."""
        async with self._slots:
            executor = self._executor
            self.queued += 1
            try:
                return await asyncio.wrap_future(executor.submit(fn, *args, **kwargs))
            except BrokenProcessPool as exc:
                self._replace(executor)
                detail = str(exc) or type(exc).__name__
                raise ImageStudioError(  # transient: the retry policy runs the image again
                    f"the imaging worker process died ({detail})"
                ) from exc
            finally:
                self.queued -= 1

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """A new pool for the next calls; once per broken pool, however many calls saw it."""
        if self._executor is not broken or self._closed:
            return
        self._executor = self._new_executor()
        self.rebuilds += 1
        broken.shutdown(wait=False, cancel_futures=True)

    def pids(self) -> list[int]:
        """The live children's process ids (tests, diagnostics)."""
        processes = getattr(self._executor, "_processes", None) or {}
        return [pid for pid, process in processes.items() if process.is_alive()]

    async def aclose(self) -> None:
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)


def open_imaging(processes: int) -> ImagingExecutor:
    """``processes`` worker processes, or threads for 0."""
    return ProcessImaging(processes) if processes > 0 else ThreadImaging()


# ---------------------------------------------------------------------------- in the child


def _child_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    sentinel = parent.sentinel if parent is not None else None
    if sentinel is not None:
        threading.Thread(target=_exit_with, args=(sentinel,), daemon=True).start()


def _exit_with(sentinel: int) -> None:
    """A pool child blocks on its call queue forever once its parent is gone; exit instead."""
    wait([sentinel])
    os._exit(0)


def _warm() -> int:
    return os.getpid()
