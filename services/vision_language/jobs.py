"""A generation job and the events it sends from the compute worker thread back to the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from services.vision_language.requests import FinishReason, SamplingParams

# Encodings with only these keys can be batched (left-padded and concatenated); others run alone.
BATCHABLE_KEYS = frozenset(
    {"input_ids", "attention_mask", "pixel_values", "image_sizes", "token_type_ids", "mm_token_type_ids"}
)


@dataclass(frozen=True)
class Started:
    queue_seconds: float
    batch_size: int


@dataclass(frozen=True)
class Delta:
    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class GenerationResult:
    finish_reason: FinishReason
    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    cached_prompt_tokens: int
    time_to_first_token: float
    tokens_per_second: float
    total_seconds: float
    queue_seconds: float
    # Sessions only: the KV cache after this turn and the token ids it covers.
    cache: Any = None
    cached_ids: tuple[int, ...] = ()

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class Finished:
    result: GenerationResult


@dataclass(frozen=True)
class Failed:
    error: BaseException


Event = Started | Delta | Finished | Failed


class EventChannel:
    """Worker thread -> event loop. Events pile up in a deque; the loop is woken only while its consumer
    waits, once per burst, so a consumer that is busy or behind collects several token deltas at once
    instead of taking a wake-up (and the GIL) per token. A consumer may ask not to be woken for token
    deltas before a given time (the stream interval); any other event wakes it at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[Event] = deque()
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None  # set while the consumer waits
        self._not_before = 0.0
        self._wake_scheduled = False

    def put(self, event: Event) -> None:
        """Thread-safe; called by the worker."""
        with self._lock:
            self._items.append(event)
            if self._waiter is None or self._wake_scheduled:
                return
            if isinstance(event, Delta) and time.monotonic() < self._not_before:
                return  # the consumer's timer collects it
            self._wake_scheduled = True
        self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            self._wake_scheduled = False
            waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get_all(self, not_before: float = 0.0) -> list[Event]:
        """Every event available, waiting for at least one; token deltas alone are not returned before
        `not_before` (time.monotonic())."""
        while True:
            with self._lock:
                early = time.monotonic() < not_before
                if self._items and not (early and all(isinstance(e, Delta) for e in self._items)):
                    events = list(self._items)
                    self._items.clear()
                    return events
                waiter = self._waiter = self._loop.create_future()
                self._not_before = not_before
            # asyncio's clock is time.monotonic(): wake at not_before for the deltas held back
            timer = self._loop.call_at(not_before, self._wake) if early else None
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
                with self._lock:
                    self._waiter = None


@dataclass(eq=False)
class GenerationJob:
    """One request's generation: a single-row encoding, its sampling and where its events go."""

    model: str
    inputs: dict[str, torch.Tensor]
    sampling: SamplingParams
    max_new_tokens: int
    channel: EventChannel
    request_id: str = ""
    priority: int = 0
    # Sessions: a KV cache covering the first `cached_tokens` of input_ids, and whether to keep the
    # cache after generating. Such jobs run alone (a cache belongs to one unpadded row).
    cache: Any = None
    cached_tokens: int = 0
    keep_cache: bool = False
    deadline: float | None = None  # time.monotonic()
    accepted_at: float = field(default_factory=time.monotonic)  # request arrival: TTFT and totals
    submitted_at: float = field(default_factory=time.monotonic)  # entered the queue: queue time
    seq: int = 0
    _cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def prompt_tokens(self) -> int:
        return int(self.inputs["input_ids"].shape[1])

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set() or self.past_deadline

    @property
    def alone(self) -> bool:
        return self.cache is not None or self.keep_cache or not set(self.inputs) <= BATCHABLE_KEYS

    def batch_key(self) -> tuple[Any, ...]:
        """Jobs with equal keys can share a batch."""
        if self.alone:
            return (id(self),)
        pixels = self.inputs.get("pixel_values")
        pixel_shape = None
        if pixels is not None:
            pixel_shape = (tuple(pixels.shape[2:] if pixels.ndim == 5 else pixels.shape[1:]), pixels.dtype)
        return (self.model, tuple(sorted(self.inputs)), pixel_shape)
