"""The engine process: the diffusion data plane (queue, model cache, device worker) in a child process,
with the gRPC server talking to it over a pipe.

Why: in one process the denoising loop and the server's event loop share the GIL, and every streamed
event wakes the event loop in the middle of a step; on the 2-core benchmark machine each wake-up cost
the device about half a millisecond (benchmarks/bench_diffusion.py, `--engine thread`). In the engine
an event costs the device thread one pipe write, and the server's work overlaps the device's instead of
interrupting it. A crash on the device side no longer takes the server with it either: its calls end
UNAVAILABLE, health turns NOT_SERVING while a new engine loads the models, then SERVING again.

Protocol: one duplex multiprocessing pipe of pickled tuples, plus one for metrics scrapes. The server
writes on its own thread (`_write_messages`): a large message (a 16 MP init image is 48 MB pickled)
then never stalls the event loop, and with it every other stream, while the engine reads it.
    server -> engine:  (call_id | None, method, args)   None as call_id: no reply wanted
                       None                               exit
    engine -> server:  ("reply", call_id, ok, value)      value: the result, or the ServiceError
                       ("event", stream_id, item)         item: an Event or the EndOfStream
The server picks a job's stream id before `submit`, so events sent before the reply (the job's queue
position) already have a reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from queue import SimpleQueue
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import Metric

from services.common.errors import ServiceError, Unavailable
from services.common.logs import configure_logging
from services.diffusion.jobs import EndOfStream, Event, Job, JobState, JobView, read_events
from services.diffusion.requests import GenerationRequest
from services.diffusion.samplers import SamplerInfo
from services.diffusion.settings import DiffusionSettings
from services.diffusion.status import CacheView, ModelStatus

log = logging.getLogger(__name__)

RESTART_ATTEMPTS = 5  # in a row, 1, 2, 4, 8, 16 s apart; then the orchestrator's liveness probe takes over
_STOP_WRITING = object()  # ends a writer thread (None is the engine's exit message)


class EngineFailed(ServiceError):
    """An unexpected error inside the engine (logged there with its traceback)."""


class EngineJob:
    """The server's side of a job in the engine: its id and its event stream."""

    def __init__(self, stream: int) -> None:
        self.stream = stream
        self.id = ""
        self.queue: asyncio.Queue = asyncio.Queue()

    def events(self) -> AsyncIterator[Event]:
        return read_events(self.queue)


class EngineClient:
    """The data plane's async API (as DiffusionDataPlane's), served by the engine process."""

    def __init__(
        self,
        settings: DiffusionSettings,
        registry: CollectorRegistry,
        on_health: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self._on_health = on_health  # False when the engine died, True when a new one serves
        self._cpus = cpu_split() if settings.pin_cpus else None  # before the server pins itself
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._outbox: SimpleQueue = SimpleQueue()  # what the writer thread sends down `_conn`
        self._metrics_conn: Connection | None = None
        self._metrics_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future] = {}
        self._streams: dict[int, EngineJob] = {}
        self._snapshot: dict = {}
        self._refresh: asyncio.Task | None = None
        self._restart_task: asyncio.Task | None = None
        self._exited = False
        self._stopping = False  # set by stop(): the engine's exit is expected
        self._restarting = False
        self._restarts = Counter(
            "lumiserve_engine_restarts",
            "Engine processes started again after an unexpected exit.",
            ["family"],
            registry=registry,
        )
        registry.register(_EngineMetrics(self))

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Starts the engine and waits until it has loaded the configured models."""
        try:
            await self._launch()
        except BaseException:  # e.g. a model that cannot load: no engine left behind
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stops the engine (its jobs are cancelled, as DiffusionDataPlane.stop does) and waits for it."""
        self._stopping = True
        if self._restart_task is not None:
            self._restart_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart_task
        await self._shutdown()

    async def _launch(self) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a process with threads
        self._conn, engine_conn = context.Pipe()
        self._metrics_conn, engine_metrics_conn = context.Pipe()
        self._process = context.Process(
            target=run_engine,
            args=(self.settings, engine_conn, engine_metrics_conn, self._cpus and self._cpus[0]),
            name="diffusion-engine",
            daemon=True,
        )
        self._process.start()
        engine_conn.close()
        engine_metrics_conn.close()
        self._outbox = SimpleQueue()
        threading.Thread(
            target=self._write_messages, args=(self._conn, self._outbox), name="engine-writer", daemon=True
        ).start()
        if self._cpus is not None:
            pin_process(self._cpus[1])
        self._exited = False
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._conn.fileno(), self._receive)
        await self._call("start")
        self._snapshot = await self._call("load_snapshot")

    async def _shutdown(self) -> None:
        if self._process is None or self._process.pid is None:  # never spawned: its error is the one to see
            return
        try:
            if not self._exited:
                await self._call("stop")
                self._send(None)
        finally:
            await asyncio.to_thread(self._process.join, 30)
            if self._process.is_alive():
                self._process.kill()
                await asyncio.to_thread(self._process.join, 5)
            self._ended()

    async def _restart(self) -> None:
        """After the engine died: NOT_SERVING, a new engine (the models load again), SERVING."""
        if self._on_health is not None:
            await self._on_health(False)
        self._restarting = True
        try:
            for attempt in range(RESTART_ATTEMPTS):
                await asyncio.sleep(2**attempt)
                await self._shutdown()  # reap the dead one, or stop a failed attempt
                try:
                    await self._launch()
                except ServiceError as error:
                    log.error("diffusion engine restart %d failed: %s", attempt + 1, error.message)
                    continue
                self._restarts.labels("diffusion").inc()
                log.warning("diffusion engine restarted (pid %s)", self.pid)
                if self._on_health is not None:
                    await self._on_health(True)
                return
            await self._shutdown()  # the last failed attempt's engine
            log.error("diffusion engine: %d restarts failed; staying NOT_SERVING", RESTART_ATTEMPTS)
        finally:
            self._restarting = False

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # ------------------------------------------------------------------ jobs

    async def submit(
        self, request: GenerationRequest, tenant: str, deadline: float | None = None
    ) -> EngineJob:
        job = EngineJob(next(self._ids))
        self._streams[job.stream] = job
        try:
            job.id = await self._call("submit", job.stream, request, tenant, deadline)
        except BaseException:  # refused, or the caller went away meanwhile: nobody reads the stream
            await self.end_stream(job)
            raise
        return job

    async def end_stream(self, job: EngineJob) -> None:
        """The stream is closed: the engine cancels the job if it has not ended (no reply awaited)."""
        if self._streams.pop(job.stream, None) is not None and not self._exited:
            self._send((None, "end_stream", (job.stream,)))

    async def get_job(self, tenant: str, job_id: str) -> JobView:
        return await self._call("get_job", tenant, job_id)

    async def cancel(self, tenant: str, job_id: str) -> JobState:
        return await self._call("cancel", tenant, job_id)

    async def inject_oom(self, count: int = 1) -> None:
        await self._call("inject_oom", count)

    async def run_on_device(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(plane, *args)` on the engine's device thread between jobs (`fn` must pickle)."""
        return await self._call("run_on_device", fn, args)

    # ------------------------------------------------------------------ models

    async def samplers(self, model: str) -> list[SamplerInfo]:
        return await self._call("samplers", model)

    async def load_model(self, *args: Any) -> tuple[ModelStatus, list[str]]:
        return await self._call("load_model", *args)

    async def unload_model(self, model_id: str) -> None:
        await self._call("unload_model", model_id)

    async def models(self) -> CacheView:
        return await self._call("models")

    def load_snapshot(self) -> dict[str, Any]:
        """The engine's load as of the last refresh; each call starts the next refresh. (The
        registration heartbeat asks synchronously, and the queue lives in the engine.)"""
        if not self._exited and (self._refresh is None or self._refresh.done()):
            self._refresh = self._loop.create_task(self._refresh_snapshot())
        return self._snapshot

    async def _refresh_snapshot(self) -> None:
        with contextlib.suppress(ServiceError):  # the engine exited: the last snapshot stands
            self._snapshot = await self._call("load_snapshot")

    # ------------------------------------------------------------------ the pipe

    def _send(self, message: tuple | None) -> None:
        """Queues a message for the writer thread, in order; never blocks. (If the engine is gone, the
        reader sees it and ends everything waiting.)"""
        self._outbox.put(message)

    def _write_messages(self, conn: Connection, outbox: SimpleQueue) -> None:
        """The writer thread of one engine: pickles and sends what `_send` queued, in order, until
        `_ended` has stopped reading `conn`; then closes it (so no close cuts a message, and the event
        loop never watches a closed descriptor)."""
        broken = False
        while (message := outbox.get()) is not _STOP_WRITING:
            if broken:
                continue
            try:
                data = ForkingPickler.dumps(message)
            except Exception as error:  # e.g. a function that does not pickle: that call fails
                self._loop.call_soon_threadsafe(self._unsendable, message, error)
                continue
            try:
                conn.send_bytes(data)
            except OSError:  # the engine is gone: the reader sees it and ends the calls and streams
                broken = True
        conn.close()

    def _unsendable(self, message: tuple | None, error: Exception) -> None:
        future = self._pending.get(message[0]) if message else None
        if future is not None and not future.done():
            future.set_exception(error)

    async def _call(self, method: str, *args: Any) -> Any:
        if self._exited:
            raise Unavailable("the diffusion engine has stopped; retry on another replica")
        call_id = next(self._ids)
        future = self._pending[call_id] = self._loop.create_future()
        self._send((call_id, method, args))
        try:
            return await future
        finally:
            self._pending.pop(call_id, None)

    def _receive(self) -> None:
        try:
            while self._conn.poll():
                kind, key, *rest = self._conn.recv()
                if kind == "event":
                    job = self._streams.get(key)
                    if job is not None:
                        job.queue.put_nowait(rest[0])
                    continue
                future = self._pending.get(key)
                if future is not None and not future.done():
                    ok, value = rest
                    future.set_result(value) if ok else future.set_exception(value)
        except (EOFError, OSError):
            self._ended()

    def _ended(self) -> None:
        """The engine is gone (stopped, or died): every waiting call and stream ends UNAVAILABLE."""
        if self._exited:
            return
        self._exited = True
        self._loop.remove_reader(self._conn.fileno())
        self._outbox.put(_STOP_WRITING)
        error = Unavailable("the diffusion engine stopped; retry on another replica")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        for job in self._streams.values():
            job.queue.put_nowait(EndOfStream(error))
        self._streams.clear()
        self._metrics_conn.close()  # (the writer thread closes `_conn` once it has stopped)
        if not self._stopping and not self._restarting:
            log.error("the diffusion engine process exited unexpectedly (code %s)", self._process.exitcode)
            self._restart_task = self._loop.create_task(self._restart())

    def collect_metrics(self) -> list[Metric]:
        """The engine's metric families, for the server's /metrics (any thread may ask)."""
        if self._metrics_conn is None or self._exited:
            return []
        with self._metrics_lock:
            try:
                self._metrics_conn.send(True)
                return self._metrics_conn.recv()
            except (EOFError, OSError):
                return []


class _EngineMetrics:
    """A prometheus collector: the engine's metrics appear on the server's metrics port."""

    def __init__(self, client: EngineClient) -> None:
        self._client = client

    def collect(self) -> list[Metric]:
        return self._client.collect_metrics()


def cpu_split() -> tuple[set[int], set[int]] | None:
    """(engine CPUs, server CPUs): the server keeps the last CPU this process may use. Without it the
    kernel places the server's wake-ups (one per streamed event) on the engine's CPU, and each preempts
    the denoising loop (~0.5 ms per event on the 2-core benchmark machine). None below 2 CPUs and
    where CPU affinity is not available (macOS)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None
    return set(allowed[:-1]), {allowed[-1]}


def pin_process(cpus: set[int]) -> None:
    """Restricts every thread of this process (sched_setaffinity is per thread on Linux) to `cpus`."""
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(int(task), cpus)


# ---------------------------------------------------------------------- the engine process


def run_engine(
    settings: DiffusionSettings, conn: Connection, metrics_conn: Connection, cpus: set[int] | None
) -> None:
    """The engine process: serves the data plane until the server says exit or goes away."""
    # Ctrl-C reaches the whole process group: the server drains first, then stops the engine.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if cpus is not None:
        pin_process(cpus)
    configure_logging(settings.log_level, settings.log_json)
    asyncio.run(_Engine(settings, conn, metrics_conn).serve())


class _Engine:
    def __init__(self, settings: DiffusionSettings, conn: Connection, metrics_conn: Connection) -> None:
        from services.diffusion.dataplane import DiffusionDataPlane  # torch: the engine process only

        self.registry = CollectorRegistry()
        self.plane = DiffusionDataPlane(settings, self.registry)
        self.conn = conn
        self.send_lock = threading.Lock()  # the device thread and the event loop both send
        self.jobs: dict[int, Job] = {}  # by stream id, until the server closes the stream
        self.calls: set[asyncio.Task] = set()
        self.methods: dict[str, Callable[..., Awaitable[Any]]] = {
            "start": self.plane.start,
            "stop": self.plane.stop,
            "submit": self.submit,
            "end_stream": self.end_stream,
            "get_job": self.get_job,
            "cancel": self.plane.cancel,
            "inject_oom": self.plane.inject_oom,
            "run_on_device": self.run_on_device,
            "samplers": self.plane.samplers,
            "load_model": self.plane.load_model,
            "unload_model": self.plane.unload_model,
            "models": self.plane.models,
            "load_snapshot": self.load_snapshot,
        }
        threading.Thread(
            target=self._serve_metrics, args=(metrics_conn,), name="engine-metrics", daemon=True
        ).start()

    def send(self, message: tuple) -> None:
        with self.send_lock:
            self.conn.send(message)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        closed = loop.create_future()

        def receive() -> None:
            try:
                while self.conn.poll():
                    message = self.conn.recv()
                    if message is None:
                        raise EOFError
                    task = loop.create_task(self.handle(*message))
                    self.calls.add(task)  # the loop keeps only weak references to tasks
                    task.add_done_callback(self.calls.discard)
            except (EOFError, OSError):
                loop.remove_reader(self.conn.fileno())
                if not closed.done():
                    closed.set_result(None)

        loop.add_reader(self.conn.fileno(), receive)
        await closed
        await self.plane.stop()  # the server went away without stopping us: cancel what runs

    async def handle(self, call_id: int | None, method: str, args: tuple) -> None:
        try:
            value, ok = await self.methods[method](*args), True
        except ServiceError as error:
            value, ok = error, False
        except Exception as error:
            log.exception("engine call %s failed", method)
            value, ok = EngineFailed(f"{method} failed in the engine: {type(error).__name__}: {error}"), False
        if call_id is not None:
            with contextlib.suppress(OSError):  # the server is gone; serve() ends on the closed pipe
                self.send(("reply", call_id, ok, value))

    async def submit(
        self, stream: int, request: GenerationRequest, tenant: str, deadline: float | None
    ) -> str:
        job = await self.plane.submit(request, tenant, deadline, sink=functools.partial(self.forward, stream))
        self.jobs[stream] = job
        return job.id

    def forward(self, stream: int, item: Event | EndOfStream) -> None:
        self.send(("event", stream, item))

    async def end_stream(self, stream: int) -> None:
        job = self.jobs.pop(stream, None)
        if job is not None:
            await self.plane.end_stream(job)

    async def get_job(self, tenant: str, job_id: str) -> JobView:
        return JobView.of(await self.plane.get_job(tenant, job_id))

    async def run_on_device(self, fn: Callable[..., Any], args: tuple) -> Any:
        return await self.plane.run_on_device(fn, *args)

    async def load_snapshot(self) -> dict[str, Any]:
        return self.plane.load_snapshot()

    def _serve_metrics(self, conn: Connection) -> None:
        with contextlib.suppress(EOFError, OSError):  # the server went away
            while conn.recv():
                conn.send(list(self.registry.collect()))
