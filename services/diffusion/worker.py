"""The compute worker: one thread per device runs jobs from the queue, one pipeline call at a time.

Per-job control happens in `callback_on_step_end`, after every denoising step: a cancelled job or
one past its deadline ends there (raising stops the pipeline when no job of the call is left),
progress events and previews go out, and an injected fault can be raised for tests. A call's images
are encoded on the worker's encoder thread, so the device starts the next call meanwhile.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from queue import Queue
from typing import Any

import grpc
import torch

from services.common.errors import Cancelled, ResourceExhausted, ServiceError
from services.common.images import MEDIA_TYPES, encode_image
from services.diffusion import previews
from services.diffusion.devices import Device, is_out_of_memory, set_threads
from services.diffusion.generation import (
    PreparedCall,
    check_request,
    encode_images,
    make_spare_scheduler,
    prepare,
)
from services.diffusion.jobs import (
    EncodedImage,
    Job,
    JobState,
    ProgressEvent,
    ResultEvent,
    StartedEvent,
    Timing,
)
from services.diffusion.metrics import FAMILY, DiffusionMetrics
from services.diffusion.model_cache import CacheEntry, ModelCache
from services.diffusion.queue import JobQueue
from services.diffusion.requests import Limits

log = logging.getLogger(__name__)


class GenerationFailed(ServiceError):
    """An unexpected failure inside the pipeline (logged with its traceback)."""

    code = grpc.StatusCode.INTERNAL


class _AllStopped(Exception):
    """Raised from the step callback when every job of the call has ended: stops the pipeline."""


def final_state(error: ServiceError | None) -> JobState:
    if error is None:
        return JobState.SUCCEEDED
    return JobState.CANCELLED if isinstance(error, Cancelled) else JobState.FAILED


class _StepReporter:
    """The `callback_on_step_end` of one pipeline call."""

    def __init__(self, worker: DeviceWorker, call: PreparedCall) -> None:
        self.worker, self.call = worker, call
        self.live = list(call.jobs)
        self.start = time.monotonic()

    def __call__(self, pipe: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        self.worker.raise_injected_fault()
        for job in list(self.live):
            reason = job.stop_reason()
            if reason is not None:
                self.live.remove(job)
                self.worker.end(job, reason)
        if not self.live:
            raise _AllStopped
        now = time.monotonic()
        step = index + 1
        total = max(self.call.total_steps, step)
        rate = step / max(now - self.start, 1e-9)
        latents = tensors.get("latents")
        offset = 0
        for job, request, seeds in zip(self.call.jobs, self.call.requests, self.call.seeds, strict=True):
            rows = slice(offset, offset + len(seeds))
            offset += len(seeds)
            if job not in self.live:
                continue
            job.step, job.total_steps = step, total
            every = request.preview.every_n_steps
            images: tuple[EncodedImage, ...] = ()
            if every and latents is not None and step % every == 0:
                images = self._previews(pipe, latents[rows], request, self.worker.png_compress_level)
            if job.first_progress is None:
                job.first_progress = now
                self.worker.metrics.first_event.labels(job.model, FAMILY).observe(now - job.submitted)
            job.emit(ProgressEvent(step, total, rate, (total - step) / rate, now - self.start, images))
        return tensors

    @staticmethod
    def _previews(pipe: Any, latents: torch.Tensor, request: Any, png_level: int) -> tuple[EncodedImage, ...]:
        fmt = request.preview.format
        rendered = previews.render(pipe, latents, request.preview.method, (request.width, request.height))
        return tuple(
            EncodedImage(encode_image(image, fmt, 80, png_level=png_level), MEDIA_TYPES[fmt], *image.size)
            for image in rendered
        )


class ResultEncoder:
    """A thread that encodes finished calls' images and ends their jobs, so the device does not wait
    for it: a 512x512 PNG costs 25-70 ms of CPU, about 5% of an SD-1.5-sized call on a GPU. At most
    `backlog` calls wait for it; past that the device waits too, so decoded images never pile up."""

    def __init__(self, name: str, backlog: int = 2) -> None:
        self._work: Queue[Callable[[], None] | None] = Queue(backlog)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, fn: Callable[[], None]) -> None:
        self._work.put(fn)

    def stop(self, timeout: float = 30.0) -> None:
        """Finishes the calls handed over so far, then ends the thread."""
        self._work.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (fn := self._work.get()) is not None:
            try:
                fn()
            except Exception:  # never let one call take the encoder down (fn ends its own jobs)
                log.exception("encoder error")


class DeviceWorker:
    """Runs jobs on one device. Only this thread touches the device's pipelines."""

    def __init__(
        self,
        device: Device,
        queue: JobQueue,
        cache: ModelCache,
        metrics: DiffusionMetrics,
        limits: Limits,
        batch_max_size: int = 1,
        batch_max_delay: float = 0.0,
        num_threads: int = 0,
        png_compress_level: int = 6,
    ) -> None:
        self.device, self.queue, self.cache, self.metrics, self.limits = device, queue, cache, metrics, limits
        self.batch_max_size = batch_max_size
        self.batch_max_delay = batch_max_delay
        self.num_threads = num_threads
        self.png_compress_level = png_compress_level
        self.current_model: str | None = None
        self._running: set[Job] = set()  # begun, not yet ended (on the device or being encoded)
        self._running_lock = threading.Lock()
        self._faults = 0
        self._calls: collections.deque[tuple[Callable[[], Any], Future]] = collections.deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"diffusion-worker-{device.name}", daemon=True)
        self._encoder = ResultEncoder(f"diffusion-encoder-{device.name}")

    def start(self) -> None:
        self._encoder.start()
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.queue.close()
        self._thread.join(timeout)
        self._encoder.stop(timeout)

    @property
    def running(self) -> int:
        """Jobs begun and not yet ended."""
        return len(self._running)

    def run_on_device(self, fn: Callable[[], Any]) -> Future:
        """Runs `fn` on this device's thread between jobs (warm-ups, benchmarks' baselines)."""
        future: Future = Future()
        self._calls.append((fn, future))
        self.queue.wake()
        return future

    def _run_calls(self) -> None:
        while self._calls:
            fn, future = self._calls.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except Exception as error:
                    future.set_exception(error)

    def inject_oom(self, count: int = 1) -> None:
        """Test hook: the next `count` pipeline calls raise torch.OutOfMemoryError at their first step."""
        self._faults += count

    def raise_injected_fault(self) -> None:
        if self._faults > 0:
            self._faults -= 1
            raise torch.OutOfMemoryError("injected out-of-memory fault")

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        set_threads(self.num_threads)
        while not self._stop.is_set():
            self._run_calls()
            job = self.queue.pop(self.current_model, timeout=0.5)
            if job is None:
                continue
            batch = [job]
            key = job.request.batch_key()
            room = self.batch_max_size - job.request.num_images
            if key is not None and room > 0:
                until = time.monotonic() + self.batch_max_delay if self.batch_max_delay else None
                batch += self.queue.take_compatible(key, room, until)
            try:
                self._execute(batch)
            except Exception:  # never let one bad call take the worker down
                log.exception("worker error")
                for queued in batch:
                    self.end(queued, GenerationFailed("internal error in the worker"))

    def end(self, job: Job, error: ServiceError | None, event: ResultEvent | None = None) -> None:
        """Ends a job (once: later calls are ignored); any thread."""
        job.finish(final_state(error), error, event)
        with self._running_lock:
            was_running = job in self._running
            self._running.discard(job)
        if was_running:
            self.metrics.in_flight.labels(job.model, FAMILY).dec()

    def _execute(self, batch: list[Job]) -> None:
        jobs: list[Job] = []
        for job in batch:
            if not job.begin():
                continue  # cancelled while waiting
            self.metrics.queue_time.labels(job.model, FAMILY).observe(job.started - job.submitted)
            reason = job.stop_reason()
            if reason is not None:
                self.end(job, reason)
            else:
                jobs.append(job)
        if not jobs:
            return
        model = jobs[0].model
        with self._running_lock:
            self._running.update(jobs)
        self.metrics.in_flight.labels(model, FAMILY).inc(len(jobs))
        try:
            with self.cache.use(model) as entry:
                self.current_model = model
                requests = []
                for job in list(jobs):
                    try:
                        requests.append(check_request(self.cache, entry, job.request, self.limits))
                    except ServiceError as error:
                        jobs.remove(job)
                        self.end(job, error)
                if jobs:
                    self._generate(prepare(self.cache, entry, jobs, requests, self.device), entry)
        except Exception as error:
            failure = self._failure(error)
            for job in jobs:
                self.end(job, failure)

    def _generate(self, call: PreparedCall, entry: CacheEntry) -> None:
        """Runs the pipeline, then hands its images to the encoder (the last step: nothing after it
        can fail the call's jobs while the encoder ends them)."""
        reporter = _StepReporter(self, call)
        for job, request in zip(call.jobs, call.requests, strict=True):
            job.total_steps = call.total_steps
            job.emit(
                StartedEvent(request.model, self.device.name, call.total_steps, job.started - job.submitted)
            )
        start = time.monotonic()
        try:
            output = call.pipe(
                **call.kwargs, callback_on_step_end=reporter, callback_on_step_end_tensor_inputs=["latents"]
            )
        except _AllStopped:
            return
        elapsed = time.monotonic() - start
        model = call.requests[0].model
        self.metrics.steps.labels(model, FAMILY).inc(call.total_steps)
        self.metrics.steps_per_second.labels(model, FAMILY).observe(call.total_steps / max(elapsed, 1e-9))
        self._encoder.submit(functools.partial(self._deliver, call, output.images, reporter.live, entry))

    def _deliver(self, call: PreparedCall, decoded: list[Any], live: list[Job], entry: CacheEntry) -> None:
        """On the encoder thread: encodes the images with their infotext and ends the jobs still live
        with them; then copies the next call's scheduler (off the device's and the results' path)."""
        try:
            results = encode_images(call, decoded, self.png_compress_level)
        except Exception as error:
            log.exception("encoding the images failed")
            failure = GenerationFailed(f"encoding the images failed: {type(error).__name__}: {error}")
            for job in live:
                self.end(job, failure)
            return
        done = time.monotonic()
        for job, request, images in zip(call.jobs, call.requests, results, strict=True):
            if job not in live:
                continue
            first = (job.first_progress or done) - job.submitted
            timing = Timing(job.started - job.submitted, first, done - job.submitted)
            # Parameters without the input images: the event may cross to the server process pickled.
            result = ResultEvent(tuple(images), request.without_images(), call.sampler, timing)
            self.end(job, None, result)
        make_spare_scheduler(entry, call)

    def _failure(self, error: Exception) -> ServiceError:
        if is_out_of_memory(error):
            log.warning("out of device memory on %s: %s", self.device.name, error)
            self.device.free_cached_memory()
            return ResourceExhausted(
                f"out of device memory on {self.device.name}; try a smaller size or batch"
            )
        if isinstance(error, ServiceError):
            return error
        log.exception("generation failed", exc_info=error)
        return GenerationFailed(f"generation failed: {type(error).__name__}: {error}")
