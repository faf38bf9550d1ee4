"""The diffusion data plane: model cache, queue, jobs and the device worker behind the servicer.

Protobuf-free: the servicer converts messages to the domain objects used here and back. The servicer's
API (the async methods) is served the same way by `engine.EngineClient`, which runs this data plane in
a child process.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry

from services.common.errors import Cancelled, FailedPrecondition, NotFound
from services.diffusion.devices import detect_device
from services.diffusion.generation import check_request
from services.diffusion.jobs import EndOfStream, Event, Job, JobRegistry, JobState
from services.diffusion.metrics import FAMILY, DiffusionMetrics
from services.diffusion.model_cache import ModelCache
from services.diffusion.queue import JobQueue
from services.diffusion.requests import GenerationRequest, Limits, validate, with_model_defaults
from services.diffusion.samplers import SamplerInfo
from services.diffusion.settings import DiffusionSettings, ModelConfig
from services.diffusion.status import CacheView, ModelStatus
from services.diffusion.worker import DeviceWorker

log = logging.getLogger(__name__)


def limits_from(settings: DiffusionSettings) -> Limits:
    return Limits(
        default_steps=settings.default_steps,
        max_steps=settings.max_steps,
        default_guidance=settings.default_guidance,
        max_guidance=settings.max_guidance,
        min_size=settings.min_size,
        max_size=settings.max_size,
        max_images=settings.max_images,
        max_controlnet_units=settings.max_controlnet_units,
        max_prompt_chars=settings.max_prompt_chars,
    )


class DiffusionDataPlane:
    def __init__(self, settings: DiffusionSettings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.limits = limits_from(settings)
        self.device = detect_device(settings.device)
        self.metrics = DiffusionMetrics(registry)
        budget = settings.memory_budget_mb * 2**20 or self.device.default_budget()
        self.cache = ModelCache(
            self.device,
            budget,
            settings.model_configs(),
            settings.controlnet_configs(),
            self.metrics,
            settings.dtype,
        )
        self.queue = JobQueue(
            settings.max_queue,
            settings.model_streak,
            on_depth=lambda model, depth: self.metrics.queue_depth.labels(model, FAMILY).set(depth),
        )
        self.jobs = JobRegistry(settings.job_history)
        self.worker = DeviceWorker(
            self.device,
            self.queue,
            self.cache,
            self.metrics,
            self.limits,
            settings.batch_max_size,
            settings.batch_max_delay_ms / 1000,
            settings.num_threads,
            settings.png_compress_level,
        )
        for config in self.cache.catalog():
            self.metrics.queue_depth.labels(config.id, FAMILY).set(0)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Starts the worker and loads the configured models (the host reports NOT_SERVING meanwhile)."""
        self.worker.start()
        if self.settings.load_at_start:
            for config in self.cache.catalog():
                await asyncio.to_thread(self.cache.load, config.id)

    async def stop(self) -> None:
        for job in self.jobs.active():
            self._cancel(job)
        await asyncio.to_thread(self.worker.stop)
        self.cache.unload_all()

    # ------------------------------------------------------------------ jobs

    async def submit(
        self,
        request: GenerationRequest,
        tenant: str,
        deadline: float | None = None,
        sink: Callable[[Event | EndOfStream], None] | None = None,
    ) -> Job:
        """Validates and queues a request (RESOURCE_EXHAUSTED at once when the queue is full). A request
        naming no model gets the default model (the first configured one that is loaded). Its events go
        to `sink` when given, else to the job's own stream (`job.events()`)."""
        if not request.model:
            request = replace(request, model=self._default_model())
        config = self.cache.config(request.model)
        if config is not None:
            request = with_model_defaults(request, config)
        request = validate(request, self.limits)
        if not self.cache.known(request.model):
            known = ", ".join(c.id for c in self.cache.catalog()) or "none"
            raise NotFound(f"model {request.model!r} is not served here; known: {known}")
        entry = self.cache.get(request.model)
        if entry is not None:  # loaded: model-specific checks now, before the job waits
            check_request(self.cache, entry, request, self.limits)
        job = Job(request, tenant, asyncio.get_running_loop(), deadline, on_finish=self._finished, sink=sink)
        self.jobs.check_free(tenant, job.id)
        self.queue.push(job)
        self.jobs.add(job)
        return job

    def _finished(self, job: Job) -> None:
        job.request = job.request.without_images()  # history keeps parameters, not input images
        status = "ok" if job.error is None else job.error.code.name.lower()
        self.metrics.requests.labels(job.model, FAMILY, status).inc()
        if job.state is JobState.SUCCEEDED:
            self.metrics.latency.labels(job.model, FAMILY).observe(time.monotonic() - job.submitted)

    async def get_job(self, tenant: str, job_id: str) -> Job:
        return self.jobs.get(tenant, job_id)

    async def cancel(self, tenant: str, job_id: str) -> JobState:
        """Cancels a job of `tenant`: a waiting job leaves the queue now, a running one stops at its
        next step. Returns the state after the cancel."""
        job = self.jobs.get(tenant, job_id)
        if job.state.final:
            return job.state
        self._cancel(job)
        return JobState.CANCELLED

    def _cancel(self, job: Job) -> None:
        job.request_cancel()
        if self.queue.remove(job) or job.state is JobState.QUEUED:
            job.finish(JobState.CANCELLED, Cancelled(f"job {job.id} was cancelled"))

    async def end_stream(self, job: Job) -> None:
        """The job's stream is closed: cancels the job if the client went away before its end (cancelled
        its RPC, or its deadline passed) and drops undelivered events; the job stays for GetJob."""
        if not job.state.final:
            self._cancel(job)
        job.release()

    async def inject_oom(self, count: int = 1) -> None:
        """Test hook: the next pipeline calls fail with torch.OutOfMemoryError at their first step."""
        self.worker.inject_oom(count)

    async def run_on_device(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(self, *args)` on the device thread between jobs (benchmarks' baselines, tests)."""
        return await asyncio.wrap_future(self.worker.run_on_device(functools.partial(fn, self, *args)))

    # ------------------------------------------------------------------ models

    async def samplers(self, model: str) -> list[SamplerInfo]:
        model = model or self._default_model()
        entry = self.cache.get(model)
        if entry is None:
            if not self.cache.known(model):
                raise NotFound(f"model {model!r} is not served here")
            raise FailedPrecondition(f"model {model!r} is not loaded; load it first")
        return list(entry.samplers.values())

    def _default_model(self) -> str:
        loaded = self.cache.loaded_ids()
        catalog = [c.id for c in self.cache.catalog()]
        if not catalog:
            raise NotFound("no model is configured")
        return next((m for m in catalog if m in loaded), catalog[0])

    async def load_model(
        self,
        model_id: str,
        source: str = "",
        dtype: str = "",
        variant: str = "",
        revision: str = "",
        pin: bool = False,
    ) -> tuple[ModelStatus, list[str]]:
        config = next((c for c in self.cache.catalog() if c.id == model_id), None)
        if source:
            base = config if config is not None and config.source == source else ModelConfig(model_id, source)
            config = base
        elif config is None:
            raise NotFound(f"model {model_id!r} is not in the catalog; give its source (repo id or folder)")
        config = replace(
            config,
            dtype=dtype or config.dtype,
            variant=variant or config.variant,
            revision=revision or config.revision,
            pin=pin or config.pin,
        )
        self.cache.add_to_catalog(config)
        self.metrics.queue_depth.labels(config.id, FAMILY).set(self.queue.depth(config.id))
        _, evicted = await asyncio.to_thread(self.cache.load, config.id)
        status = next(s for s in self.cache.statuses() if s.config.id == config.id and s.state == "ready")
        return status, evicted

    async def unload_model(self, model_id: str) -> None:
        await asyncio.to_thread(self.cache.unload, model_id)

    async def models(self) -> CacheView:
        return CacheView(self.cache.statuses(), self.cache.budget_bytes, self.cache.used_bytes)

    def load_snapshot(self) -> dict[str, Any]:
        """This instance's load for the registration client, in the vision-language service's shape:
        queue depth per model, jobs running, loaded model ids; plus the cache's memory."""
        depths = self.queue.depths()
        return {
            "queue_depth": {c.id: depths.get(c.id, 0) for c in self.cache.catalog()} | depths,
            "in_flight": self.worker.running,
            "loaded_models": sorted(self.cache.loaded_ids()),
            "memory_used_bytes": self.cache.used_bytes,
            "memory_budget_bytes": self.cache.budget_bytes,
        }
