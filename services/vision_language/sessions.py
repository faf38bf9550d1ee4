"""Server-side chat sessions: history and KV cache kept between turns, owned by the creating tenant.

Sessions expire after `ttl_seconds` idle; beyond `max_sessions` the least recently used one is evicted.
KV caches are kept under their own memory budget: beyond it the least recently used sessions lose their
cache (not their history) and their next turn recomputes it. Another tenant's session reads as
NOT_FOUND, so a tenant cannot even learn that it exists.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import InvalidArgument, NotFound
from services.vision_language.requests import ChatMessage


@dataclass
class KvState:
    cache: Any  # transformers DynamicCache
    cached_ids: tuple[int, ...]  # the token ids it covers
    nbytes: int


def cache_nbytes(cache: Any) -> int:
    total = 0
    for layer in getattr(cache, "layers", ()):
        for name in ("keys", "values"):
            tensor = getattr(layer, name, None)
            if tensor is not None and hasattr(tensor, "nbytes"):
                total += tensor.nbytes
    return total


@dataclass(eq=False)
class Session:
    session_id: str
    owner: str
    model: str
    messages: list[ChatMessage]
    ttl_seconds: int
    created: float
    last_used: float
    context_tokens: int = 0
    kv: KvState | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one turn at a time

    @property
    def expires_at(self) -> float:
        return self.last_used + self.ttl_seconds


class SessionStore:
    def __init__(
        self,
        max_sessions: int,
        default_ttl: int,
        max_ttl: int,
        kv_budget_bytes: int,
        clock: Callable[[], float] = time.time,
        on_count: Callable[[int], None] = lambda count: None,
    ) -> None:
        self.max_sessions = max_sessions
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.kv_budget = kv_budget_bytes
        self._clock = clock
        self._on_count = on_count
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._sessions)

    def _changed(self) -> None:
        self._on_count(len(self._sessions))

    def create(self, owner: str, model: str, messages: list[ChatMessage], ttl_seconds: int = 0) -> Session:
        if ttl_seconds > self.max_ttl:
            raise InvalidArgument(
                "ttl_seconds", f"must be in [0, {self.max_ttl}] (0 = {self.default_ttl}), got {ttl_seconds}"
            )
        self.sweep()
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        now = self._clock()
        session = Session(
            session_id=uuid.uuid4().hex,
            owner=owner,
            model=model,
            messages=list(messages),
            ttl_seconds=ttl_seconds or self.default_ttl,
            created=now,
            last_used=now,
        )
        self._sessions[session.session_id] = session
        self._changed()
        return session

    def get(self, session_id: str, owner: str, field_name: str = "session_id") -> Session:
        """The caller's live session (marked used), or NOT_FOUND."""
        session = self._sessions.get(session_id)
        if session is None or session.owner != owner:
            raise NotFound(f"{field_name}: session {session_id!r} does not exist")
        now = self._clock()
        if session.expires_at <= now:
            self._sessions.pop(session_id, None)
            self._changed()
            raise NotFound(f"{field_name}: session {session_id!r} expired after {session.ttl_seconds} s idle")
        session.last_used = now
        self._sessions.move_to_end(session_id)
        return session

    def delete(self, session_id: str, owner: str) -> None:
        self.get(session_id, owner)
        del self._sessions[session_id]
        self._changed()

    def list(self, owner: str) -> list[Session]:
        self.sweep()
        return sorted((s for s in self._sessions.values() if s.owner == owner), key=lambda s: s.created)

    def sweep(self) -> int:
        """Removes expired sessions; returns how many."""
        now = self._clock()
        expired = [sid for sid, s in self._sessions.items() if s.expires_at <= now]
        for sid in expired:
            del self._sessions[sid]
        if expired:
            self._changed()
        return len(expired)

    def take_kv(self, session: Session) -> KvState | None:
        """Hands the cache to a turn (which extends it in place); the turn stores it back when done."""
        kv, session.kv = session.kv, None
        return kv

    def store_kv(self, session: Session, cache: Any, cached_ids: tuple[int, ...]) -> None:
        if session.session_id not in self._sessions:
            return  # deleted or evicted meanwhile
        session.kv = KvState(cache, cached_ids, cache_nbytes(cache))
        used = sum(s.kv.nbytes for s in self._sessions.values() if s.kv)
        for other in list(self._sessions.values()):  # least recently used first
            if used <= self.kv_budget:
                break
            if other.kv is not None:
                used -= other.kv.nbytes
                other.kv = None

    def kv_bytes(self) -> int:
        return sum(s.kv.nbytes for s in self._sessions.values() if s.kv)
