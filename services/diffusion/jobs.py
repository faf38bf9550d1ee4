"""Jobs: one generation request on its way through the queue and the worker, and its event stream.

The worker thread emits events; the gRPC handler reads them on the event loop. Emission goes through
`loop.call_soon_threadsafe`, so the worker never blocks on a slow client; in the engine process a job's
`sink` sends them down the pipe to the server process instead (services/diffusion/engine.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum

from services.common.errors import AlreadyExists, Cancelled, DeadlineExceeded, NotFound, ServiceError
from services.diffusion.requests import GenerationRequest


class JobState(Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    media_type: str
    width: int
    height: int


@dataclass(frozen=True)
class QueuedEvent:
    position: int
    queue_depth: int


@dataclass(frozen=True)
class StartedEvent:
    model: str
    device: str
    total_steps: int
    queue_seconds: float


@dataclass(frozen=True)
class ProgressEvent:
    step: int
    total_steps: int
    iterations_per_second: float
    eta_seconds: float
    elapsed_seconds: float
    previews: tuple[EncodedImage, ...] = ()


@dataclass(frozen=True)
class GeneratedImage:
    image: EncodedImage
    seed: int
    infotext: str


@dataclass(frozen=True)
class Timing:
    queue_seconds: float
    time_to_first_event_seconds: float
    total_seconds: float


@dataclass(frozen=True)
class ResultEvent:
    images: tuple[GeneratedImage, ...]
    parameters: GenerationRequest  # defaults filled in, seed resolved
    sampler: str  # the A1111 name of the sampler used
    timing: Timing


@dataclass(frozen=True)
class EndOfStream:
    """The last item of a job's stream: the error the job ended with, if any."""

    error: ServiceError | None = None


Event = QueuedEvent | StartedEvent | ProgressEvent | ResultEvent


async def read_events(queue: asyncio.Queue) -> AsyncIterator[Event]:
    """A job's events from `queue` until its EndOfStream; raises the job's error, if any, at the end."""
    while True:
        event = await queue.get()
        if isinstance(event, EndOfStream):
            if event.error is not None:
                raise event.error
            return
        yield event


@dataclass(eq=False)
class Job:
    request: GenerationRequest
    tenant: str
    loop: asyncio.AbstractEventLoop
    deadline: float | None = None  # time.monotonic() value
    id: str = ""
    priority: int = 2
    seq: int = 0  # FIFO order within a priority, set by the queue
    state: JobState = JobState.QUEUED
    position: int = -1
    step: int = 0
    total_steps: int = 0
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    first_progress: float | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    steps_at_cancel: int | None = None  # the step reached when cancel was asked (tests count the overrun)
    error: ServiceError | None = None
    on_finish: Callable[[Job], None] | None = None  # metrics hook, called once when the job ends
    sink: Callable[[Event | EndOfStream], None] | None = None  # set: the stream goes there, not to `loop`
    _events: asyncio.Queue = field(default_factory=asyncio.Queue)
    _released: bool = False  # nobody reads the stream any more: drop events instead of keeping them
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.id = self.id or self.request.job_id or uuid.uuid4().hex
        self.priority = self.request.priority

    @property
    def model(self) -> str:
        return self.request.model

    def emit(self, event: Event) -> None:
        """Thread-safe: queues an event for the stream unless the job already ended."""
        with self._lock:
            if not self.state.final and not self._released:
                self._deliver(event)

    def _deliver(self, item: Event | EndOfStream) -> None:
        if self.sink is not None:
            self.sink(item)
        else:
            self.loop.call_soon_threadsafe(self._events.put_nowait, item)

    def set_position(self, position: int, depth: int) -> None:
        if position != self.position:
            self.position = position
            self.emit(QueuedEvent(position, depth))

    def begin(self) -> bool:
        """QUEUED -> RUNNING; False when the job was cancelled first."""
        with self._lock:
            if self.state is not JobState.QUEUED:
                return False
            self.state = JobState.RUNNING
            self.started = time.monotonic()
            self.position = -1
            return True

    def finish(self, state: JobState, error: ServiceError | None = None, event: Event | None = None) -> bool:
        """Ends the job once (later calls are ignored): the last event, then the stream's end."""
        with self._lock:
            if self.state.final:
                return False
            self.state, self.error = state, error
            if not self._released:
                if event is not None:
                    self._deliver(event)
                self._deliver(EndOfStream(error))
        if self.on_finish is not None:
            self.on_finish(self)
        return True

    def release(self) -> None:
        """The stream's reader is gone: free what is queued for it; the job stays for GetJob."""
        with self._lock:
            self._released = True
            self._events = asyncio.Queue()

    def request_cancel(self) -> None:
        if self.steps_at_cancel is None:
            self.steps_at_cancel = self.step
        self.cancel_requested.set()

    def stop_reason(self) -> ServiceError | None:
        """Why a running job must stop now: cancelled or past its deadline."""
        if self.cancel_requested.is_set():
            return Cancelled(f"job {self.id} was cancelled")
        if self.deadline is not None and time.monotonic() > self.deadline:
            return DeadlineExceeded(f"job {self.id} passed its deadline at step {self.step}")
        return None

    def events(self) -> AsyncIterator[Event]:
        """The job's events until it ends; raises the job's error, if any, at the end."""
        return read_events(self._events)


@dataclass(frozen=True)
class JobView:
    """What GetJob shows of a job: a snapshot that can cross the engine's process boundary."""

    id: str
    model: str
    state: JobState
    position: int
    step: int
    total_steps: int

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(job.id, job.model, job.state, job.position, job.step, job.total_steps)


class JobRegistry:
    """Jobs by (tenant, id): ownership is the key, so other tenants simply do not find them."""

    def __init__(self, history: int) -> None:
        self._history = history
        self._jobs: OrderedDict[tuple[str, str], Job] = OrderedDict()
        self._lock = threading.Lock()

    def check_free(self, tenant: str, job_id: str) -> None:
        """A client-chosen id may be reused once its job has ended, not while it runs."""
        with self._lock:
            existing = self._jobs.get((tenant, job_id))
        if existing is not None and not existing.state.final:
            raise AlreadyExists(f"job {job_id!r} is already {existing.state.value}")

    def add(self, job: Job) -> None:
        key = (job.tenant, job.id)
        with self._lock:
            self._jobs[key] = job
            self._jobs.move_to_end(key)
            while len(self._jobs) > self._history:
                oldest_key, oldest = next(iter(self._jobs.items()))
                if not oldest.state.final:
                    break
                del self._jobs[oldest_key]

    def get(self, tenant: str, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get((tenant, job_id))
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        return job

    def active(self) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if not j.state.final]
