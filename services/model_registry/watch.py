"""Watch: fan-out of the change log to any number of streams, resumable by revision.

One poller per registry process reads new rows of the change log (at once after a local write, and
every `poll_interval` for writes made by other registry processes on the same database) into a ring
of recent changes. Each stream keeps its own position: it reads from the ring when the ring covers
it, from the database otherwise, so a slow stream never holds up others or loses changes.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from services.common.errors import FailedPrecondition, InvalidArgument, ServiceError, Unavailable
from services.model_registry.records import Change
from services.model_registry.store import Store

log = logging.getLogger(__name__)

Run = Callable[..., Awaitable[Any]]  # runs a blocking store call off the event loop


class ChangeHub:
    def __init__(self, store: Store, run: Run, poll_interval: float = 0.25, ring_size: int = 4096) -> None:
        self._store = store
        self._run = run
        self._poll_interval = poll_interval
        self._ring_size = ring_size
        self._ring: list[Change] = []
        self._ring_revisions: list[int] = []
        # The ring holds every change with revision > _floor (up to latest).
        self._floor = 0
        self.latest = 0
        self._wakeup = asyncio.Event()
        self._advanced = asyncio.Event()
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.streams = 0

    async def start(self) -> None:
        self.latest = self._floor = await self._run(self._store.latest_revision)
        self._task = asyncio.create_task(self._poll_forever(), name="watch-poller")

    async def close(self) -> None:
        """Ends every stream (with UNAVAILABLE, so clients resume elsewhere) and stops polling."""
        self._closed.set()
        self._advanced.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def poke(self) -> None:
        """A write committed here: poll now instead of at the next interval."""
        self._wakeup.set()

    async def _poll_forever(self) -> None:
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._poll_interval)
            self._wakeup.clear()
            try:
                while await self.poll_once():
                    pass
                if failing:
                    log.info("watch poller: database reachable again")
                failing = False
            except ServiceError as error:  # database down: keep polling, streams wait
                if not failing:
                    log.warning("watch poller: %s", error.message)
                failing = True
                await asyncio.sleep(self._poll_interval)

    async def poll_once(self, limit: int = 1000) -> bool:
        """Reads new changes into the ring; True when there may be more."""
        batch: list[Change] = await self._run(self._store.changes_since, self.latest, limit)
        batch = [c for c in batch if c.revision > self.latest]  # a concurrent poll got there first
        if not batch:
            return False
        self._ring.extend(batch)
        self._ring_revisions.extend(c.revision for c in batch)
        if len(self._ring) > 2 * self._ring_size:
            drop = len(self._ring) - self._ring_size
            self._floor = self._ring_revisions[drop - 1]
            del self._ring[:drop], self._ring_revisions[:drop]
        self.latest = batch[-1].revision
        self._advanced.set()
        self._advanced = asyncio.Event()
        return len(batch) == limit

    def cached_since(self, revision: int, limit: int) -> list[Change] | None:
        """Changes after `revision` from the ring, or None when the ring does not reach back that far."""
        if revision < self._floor:
            return None
        start = bisect.bisect_right(self._ring_revisions, revision)
        return self._ring[start : start + limit]

    async def wait_beyond(self, revision: int) -> None:
        while self.latest <= revision and not self._closed.is_set():
            await self._advanced.wait()
        if self._closed.is_set():
            raise Unavailable(f"registry shutting down; resume the watch from revision {revision}")

    async def changes_after(self, revision: int, limit: int = 500) -> list[Change]:
        cached = self.cached_since(revision, limit)
        if cached is not None:
            return cached
        return await self._run(self._store.changes_since, revision, limit)

    async def subscribe(self, resume_revision: int) -> AsyncIterator[Change]:
        """Changes after `resume_revision`; with 0, first a snapshot (as "created" changes at the
        snapshot's revision). A "synced" marker follows once the stream has caught up."""
        self.streams += 1
        try:
            if resume_revision == 0:
                revision, records = await self._run(self._store.snapshot)
                for record in records:
                    yield Change(revision, "created", record)
                last = revision
            else:
                await self._check_resumable(resume_revision)
                last = resume_revision
            synced = False
            while True:
                batch = await self.changes_after(last)
                for change in batch:
                    yield change
                    last = change.revision
                if batch:
                    continue
                if not synced:
                    synced = True
                    yield Change(last, "synced")
                await self.wait_beyond(last)
        finally:
            self.streams -= 1

    async def _check_resumable(self, revision: int) -> None:
        latest = await self._run(self._store.latest_revision)
        if revision > latest:
            raise InvalidArgument(
                "resume_revision",
                f"{revision} is ahead of the latest revision {latest}; use 0 for a snapshot",
            )
        compacted = await self._run(self._store.compacted_revision)
        if revision < compacted:
            raise FailedPrecondition(
                f"changes up to revision {compacted} were compacted; restart the watch from 0 (snapshot)"
            )
