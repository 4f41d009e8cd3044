"""Provider clients kept per provider key and lent to tasks (``ProviderPool``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator

from imagestudio.errors import ImageStudioError
from imagestudio.providers.base import MAX_ANSWER_BYTES, ImageProvider, ProviderConfig
from imagestudio.providers.registry import make_provider
from imagestudio.security.crypto import SecretBox
from imagestudio.security.http import Outbound
from imagestudio.security.redact import KNOWN
from imagestudio.store.records import ClaimedTask
from imagestudio.store.store import Store


class ProviderPool:
    """Provider clients kept per provider key, so connections are reused across tasks.

    At most ``size`` are kept; the least recently used one is evicted beyond that. A client
    is closed only once no task uses it: an evicted client that still has a call in flight
    is closed when that call's task lets go of it (``lease``).
    """

    def __init__(
        self,
        box: SecretBox,
        store: Store,
        timeout: float,
        size: int = 64,
        *,
        outbound: Outbound,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self._box, self._store, self._timeout, self._size = box, store, timeout, size
        self._outbound = outbound  # every client's requests go through the guarded path
        self._max_answer_bytes = max_answer_bytes
        self._providers: OrderedDict[str, ImageProvider] = OrderedDict()
        self._users: Counter[int] = Counter()  # tasks holding each client, by id()
        self._evicted: dict[int, ImageProvider] = {}
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def lease(self, task: ClaimedTask) -> AsyncIterator[ImageProvider]:
        """The task's provider client, kept open until the block ends."""
        provider = await self._get(task)
        self._users[id(provider)] += 1
        try:
            yield provider
        finally:
            self._users[id(provider)] -= 1
            if not self._users[id(provider)]:
                del self._users[id(provider)]
                retired = self._evicted.pop(id(provider), None)
                if retired is not None:
                    await retired.aclose()

    async def _get(self, task: ClaimedTask) -> ImageProvider:
        key = f"{task.job.provider_key}:{task.job.api_style}"
        if key in self._providers:
            self._providers.move_to_end(key)
            return self._providers[key]
        async with self._lock:  # two tasks of one job must not both build a client
            if key not in self._providers:
                await self._add(key, task)
            return self._providers[key]

    async def _add(self, key: str, task: ClaimedTask) -> None:
        job = task.job
        sealed = await self._store.sealed_key(task.job_pk)
        if sealed is None:
            raise ImageStudioError("the job's API key was erased; submit the job again")
        api_key = self._box.open(sealed)
        KNOWN.add(api_key)  # from here on no log line of this process can carry it
        config = ProviderConfig(
            api_base=job.api_base,
            api_key=api_key,
            model=job.model,
            api_style=job.api_style,
            timeout_seconds=self._timeout,
            max_answer_bytes=self._max_answer_bytes,
        )
        self._providers[key] = make_provider(config, outbound=self._outbound)
        if len(self._providers) > self._size:
            _, oldest = self._providers.popitem(last=False)
            await self._retire(oldest)

    async def _retire(self, provider: ImageProvider) -> None:
        if self._users[id(provider)]:
            self._evicted[id(provider)] = provider  # closed when its last task lets go
        else:
            await provider.aclose()

    @property
    def open_clients(self) -> int:
        """Clients not closed yet: kept ones, and evicted ones still in use."""
        return len(self._providers) + len(self._evicted)

    async def aclose(self) -> None:
        providers = [*self._providers.values(), *self._evicted.values()]
        self._providers, self._evicted = OrderedDict(), {}
        for provider in providers:
            await provider.aclose()
