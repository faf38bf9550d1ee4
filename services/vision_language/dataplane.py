"""The data plane of the vision-language service: models, scheduling, chat, captioning and sessions.

Free of protobuf; the servicer converts. Model compute runs on one worker thread per device (batcher.py);
image preprocessing runs in a thread of its own; the event loop only moves events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import torch

from services.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
)
from services.vision_language.batcher import BatchQueue, DeviceWorker
from services.vision_language.catalog import ModelSpec
from services.vision_language.encoding import FittedPrompt, Reuse, fit_context, reuse_cache
from services.vision_language.generation import generate_batch
from services.vision_language.jobs import (
    Delta,
    EventChannel,
    Failed,
    Finished,
    GenerationJob,
    GenerationResult,
    Started,
)
from services.vision_language.metrics import FAMILY, VlmMetrics
from services.vision_language.model_cache import LoadedModel, ModelCache, load_model, resolve_device
from services.vision_language.prompts import apply_preset, preset_template
from services.vision_language.requests import (
    ChatMessage,
    ChatRequest,
    FinishReason,
    ImagePart,
    Preset,
    Role,
    SamplingParams,
    TextPart,
    Truncation,
    validate_conversation,
    validate_request_id,
    validate_sampling,
    validate_session_turn,
)
from services.vision_language.sessions import KvState, Session, SessionStore
from services.vision_language.settings import VisionLanguageSettings

log = logging.getLogger(__name__)

MAX_CAPTION_PROMPT_CHARS = 4096


@dataclass(frozen=True)
class ChatCompletion:
    result: GenerationResult
    truncation: Truncation | None
    session_id: str


@dataclass(frozen=True)
class CaptionInput:
    id: str
    image: ImagePart | None
    error: str = ""  # why the image could not be decoded


@dataclass(frozen=True)
class CaptionOutcome:
    id: str
    index: int
    text: str
    result: GenerationResult | None
    error: str
    completed: int
    total: int


def _merge_deltas(events: list) -> list:
    """Adjacent token deltas of one burst become one message."""
    merged: list = []
    for event in events:
        if isinstance(event, Delta) and merged and isinstance(merged[-1], Delta):
            last = merged[-1]
            merged[-1] = Delta(last.text + event.text, last.token_ids + event.token_ids)
        else:
            merged.append(event)
    return merged


class VisionLanguageDataPlane:
    def __init__(
        self,
        settings: VisionLanguageSettings,
        metrics: VlmMetrics,
        loader: Callable[[ModelSpec, str, int], LoadedModel] = load_model,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.specs = settings.model_specs()
        self.models = ModelCache(
            self.specs,
            settings.memory_budget_bytes,
            settings.device,
            settings.max_images_per_request,
            is_busy=self._busy,
            loader=loader,
        )
        self.sessions = SessionStore(
            settings.max_sessions,
            settings.session_ttl_seconds,
            settings.max_session_ttl_seconds,
            settings.session_kv_budget_bytes,
            on_count=metrics.active_sessions.set,
        )
        self._workers: dict[str, DeviceWorker] = {}
        self._loading: dict[str, asyncio.Future[tuple[LoadedModel, list[str]]]] = {}
        self._in_flight: dict[str, int] = {}
        self._preparing: dict[
            str, int
        ] = {}  # requests accepted, not queued yet (the batcher may wait for them)
        self._sweeper: asyncio.Task[None] | None = None
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Loads the configured models (the host reports NOT_SERVING meanwhile)."""
        for spec in self.specs:
            await self.load(spec)
        self._sweeper = asyncio.create_task(self._sweep_sessions())

    async def stop(self) -> None:
        if self._sweeper:
            self._sweeper.cancel()
        for worker in self._workers.values():
            await asyncio.to_thread(worker.stop)

    async def _sweep_sessions(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, self.settings.session_ttl_seconds / 4))
            self.sessions.sweep()

    def _worker(self, device: str) -> DeviceWorker:
        worker = self._workers.get(device)
        if worker is None:
            queue = BatchQueue(
                self.settings.max_batch_size,
                self.settings.max_batch_wait_ms / 1000,
                self.settings.max_queue,
                on_depth=lambda model, depth: self.metrics.queue_depth.labels(model, FAMILY).set(depth),
                expecting=lambda model: self._preparing.get(model, 0) > 0,
            )
            worker = self._workers[device] = DeviceWorker(device, queue, self._run_batch)
        return worker

    def _run_batch(self, jobs: list[GenerationJob]) -> None:
        """On the device thread."""
        loaded = self.models.get(jobs[0].model)
        if loaded is None:
            for job in jobs:
                job.channel.put(Failed(FailedPrecondition(f"model {job.model!r} was unloaded")))
            return
        self.metrics.batch_size.labels(loaded.name).observe(len(jobs))
        generate_batch(loaded, jobs, on_result=lambda job, result: self._observe(job.model, result))

    def _busy(self, model: str) -> bool:
        return self._in_flight.get(model, 0) > 0

    def load_snapshot(self) -> dict[str, object]:
        """Load report for the registration client: queue depth per model, in-flight generations
        (queued or running), loaded model ids."""
        depths: dict[str, int] = {}
        for worker in self._workers.values():
            depths.update(worker.queue.depths())
        return {
            "queue_depth": {m.name: depths.get(m.name, 0) for m in self.models.loaded()} | depths,
            "in_flight": sum(self._in_flight.values()),
            "loaded_models": sorted(m.name for m in self.models.loaded()),
        }

    # ------------------------------------------------------------------ models

    @property
    def default_model(self) -> str:
        return self.settings.default_model or (self.specs[0].model if self.specs else "")

    def _record_loaded(self) -> None:
        loaded = self.models.loaded()
        self.metrics.loaded_models.labels(FAMILY).set(len(loaded))
        self.metrics.model_memory_bytes.clear()
        for model in loaded:
            self.metrics.model_memory_bytes.labels(model.name).set(model.memory_bytes)
            self.metrics.queue_depth.labels(model.name, FAMILY).inc(0)  # exported from the start, as 0

    async def load(self, spec: ModelSpec) -> tuple[LoadedModel, list[str]]:
        """Loads on the model's device thread; concurrent loads of one model share the work."""
        existing = self.models.get(spec.model)
        if existing is not None:
            return existing, []
        pending = self._loading.get(spec.model)
        if pending is None:
            worker = self._worker(resolve_device(spec.device or self.settings.device))
            pending = asyncio.wrap_future(worker.queue.run_task(lambda: self.models.load(spec)))
            self._loading[spec.model] = pending
            try:
                loaded, evicted = await pending
            finally:
                del self._loading[spec.model]
            self.metrics.model_load_seconds.labels(spec.model).observe(loaded.load_seconds)
            self._record_loaded()
            return loaded, evicted
        return await asyncio.shield(pending)

    async def unload(self, model: str) -> None:
        if self.models.get(model) is None:
            raise NotFound(f"model {model!r} is not loaded")
        if self._busy(model):
            raise FailedPrecondition(f"model {model!r} has {self._in_flight[model]} requests in flight")
        worker = self._worker(self.models.device_of(model))
        await asyncio.wrap_future(worker.queue.run_task(lambda: self.models.unload(model)))
        self._record_loaded()

    async def model_for(self, name: str, field: str = "model") -> LoadedModel:
        name = name or self.default_model
        if not name:
            raise InvalidArgument(field, "required: this service has no default model")
        loaded = self.models.get(name)
        if loaded is not None:
            return loaded
        spec = self.models.spec(name)  # NOT_FOUND for unknown ids
        if not self.settings.load_on_demand:
            raise FailedPrecondition(f"model {name!r} is not loaded; load it with LoadModel")
        return (await self.load(spec))[0]

    # ------------------------------------------------------------------ generation

    async def _run(self, loaded: LoadedModel, job: GenerationJob) -> AsyncIterator[Delta | Finished]:
        """Queues a job and relays its events; stops its generation if the caller goes away."""
        worker = self._worker(loaded.device)
        self._in_flight[job.model] = self._in_flight.get(job.model, 0) + 1
        self.metrics.in_flight.labels(job.model).inc()
        done = False
        interval = self.settings.stream_interval_ms / 1000
        last_sent = 0.0
        try:
            worker.queue.submit(job)
            while not done:
                # Tokens produced within the stream interval are sent together; the end is not delayed.
                events = _merge_deltas(await job.channel.get_all(not_before=last_sent + interval))
                last_sent = time.monotonic()
                for event in events:
                    if isinstance(event, Failed):
                        done = True
                        raise event.error
                    if isinstance(event, Started):
                        self.metrics.queue_seconds.labels(job.model, FAMILY).observe(event.queue_seconds)
                        continue
                    if isinstance(event, Finished):
                        done = True
                        if event.result.finish_reason is FinishReason.CANCELLED and job.past_deadline:
                            raise DeadlineExceeded(
                                f"deadline passed after {event.result.completion_tokens} generated tokens"
                            )
                    yield event
        finally:
            self._in_flight[job.model] -= 1
            self.metrics.in_flight.labels(job.model).dec()
            if not done:
                job.cancel()
                worker.queue.discard(job)

    @contextlib.contextmanager
    def _preparing_for(self, model: str) -> Iterator[None]:
        self._preparing[model] = self._preparing.get(model, 0) + 1
        try:
            yield
        finally:
            self._preparing[model] -= 1

    def _observe(self, model: str, result: GenerationResult) -> None:
        m = self.metrics
        reason = result.finish_reason.name.lower()
        m.generations.labels(model, reason).inc()
        m.prompt_tokens.labels(model).inc(result.prompt_tokens)
        m.cached_prompt_tokens.labels(model).inc(result.cached_prompt_tokens)
        m.completion_tokens.labels(model).inc(result.completion_tokens)
        m.completion_tokens_per_request.labels(model, reason).observe(result.completion_tokens)
        if result.completion_tokens:
            m.time_to_first_token.labels(model).observe(result.time_to_first_token)
            m.tokens_per_second.labels(model).observe(result.tokens_per_second)

    def _max_new_tokens(self, sampling: SamplingParams, preset: Preset, family: str) -> int:
        if sampling.max_new_tokens:
            return sampling.max_new_tokens
        if preset is not Preset.NONE:
            return min(
                preset_template(family, preset).default_max_new_tokens, self.settings.max_new_tokens_limit
            )
        return self.settings.default_max_new_tokens

    @staticmethod
    def _check_text(loaded: LoadedModel, texts: list[tuple[str, str]]) -> None:
        """Special tokens typed as text (`<image>`, `</s>`) would forge images or turns: refused.
        `texts`: (field, text) pairs."""
        special = {t for t in loaded.tokenizer.all_special_tokens if t}
        if getattr(loaded.processor, "image_token", None):
            special.add(loaded.processor.image_token)
        for field, text in texts:
            found = [token for token in special if token in text]
            if found:
                raise InvalidArgument(
                    field, f"must not contain the special token {found[0]!r}; send images as image parts"
                )

    @staticmethod
    def _texts(messages: list[ChatMessage], field: str = "messages") -> list[tuple[str, str]]:
        return [
            (f"{field}[{i}].content[{j}].text", part.text)
            for i, message in enumerate(messages)
            for j, part in enumerate(message.parts)
            if isinstance(part, TextPart)
        ]

    def _check_images(self, loaded: LoadedModel, conversation: list[ChatMessage]) -> int:
        count = sum(len(m.images) for m in conversation)
        if count > loaded.max_images:
            raise InvalidArgument(
                "messages",
                f"the conversation holds {count} images; "
                f"model {loaded.name!r} accepts at most {loaded.max_images}",
            )
        return count

    async def chat(
        self, request: ChatRequest, tenant: str, deadline: float | None = None
    ) -> AsyncIterator[Delta | ChatCompletion]:
        """Streams token deltas, then one ChatCompletion."""
        accepted = time.monotonic()
        validate_request_id(request.request_id)
        validate_sampling(request.sampling, self.settings.max_new_tokens_limit)
        session: Session | None = None
        if request.session_id:
            session = self.sessions.get(request.session_id, tenant)
            validate_session_turn(request.messages)
            if request.model and request.model != session.model:
                raise InvalidArgument(
                    "model",
                    f"session {session.session_id!r} uses model {session.model!r}, not {request.model!r}",
                )
        else:
            validate_conversation(request.messages)
        loaded = await self.model_for(session.model if session else request.model)
        self._check_text(loaded, self._texts(request.messages))
        async with session.lock if session else contextlib.nullcontext():
            history = list(session.messages) if session else []
            conversation = history + list(request.messages)
            last = apply_preset(
                conversation[-1],
                request.preset,
                loaded.family,
                any(m.images for m in conversation),
                field=f"messages[{len(request.messages) - 1}]",
            )
            conversation[-1] = last
            images = self._check_images(loaded, conversation)
            max_new = self._max_new_tokens(request.sampling, request.preset, loaded.family)
            kv = self.sessions.take_kv(session) if session else None
            try:
                with self._preparing_for(loaded.name):
                    fitted, reuse = await asyncio.to_thread(
                        self._prepare, loaded, conversation, max_new, images, kv
                    )
            except ServiceError:  # refused before the cache was touched (e.g. a turn longer than the window)
                if session is not None and kv is not None:
                    self.sessions.store_kv(session, kv.cache, kv.cached_ids)
                raise
            if fitted.truncation:
                self.metrics.context_truncations.labels(loaded.name).inc()
            job = GenerationJob(
                model=loaded.name,
                inputs=reuse.inputs if reuse else fitted.inputs,
                sampling=request.sampling,
                max_new_tokens=fitted.max_new_tokens,
                channel=EventChannel(asyncio.get_running_loop()),
                request_id=request.request_id,
                priority=request.priority,
                cache=reuse.cache if reuse else None,
                cached_tokens=reuse.cached_tokens if reuse else 0,
                keep_cache=session is not None,
                deadline=deadline,
                accepted_at=accepted,
            )
            async for event in self._run(loaded, job):
                if isinstance(event, Delta):
                    yield event
                    continue
                result = event.result
                self._log_completion(request, loaded.name, result)
                if session is not None:
                    self._finish_turn(session, fitted, result)
                yield ChatCompletion(result, fitted.truncation, session.session_id if session else "")

    @staticmethod
    def _log_completion(request: ChatRequest, model: str, result: GenerationResult) -> None:
        reason = result.finish_reason.name.lower()
        fields = {
            "request_id": request.request_id,
            "model": model,
            "session_id": request.session_id,
            "finish_reason": reason,
            "prompt_tokens": result.prompt_tokens,
            "cached_prompt_tokens": result.cached_prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "time_to_first_token_seconds": round(result.time_to_first_token, 4),
        }
        log.info(
            "chat %s on %s: %d prompt tokens (%d cached), %d generated, %s",
            request.request_id, model, result.prompt_tokens, result.cached_prompt_tokens,
            result.completion_tokens, reason, extra=fields,
        )  # fmt: skip

    @staticmethod
    def _prepare(
        loaded: LoadedModel, conversation: list[ChatMessage], max_new: int, images: int, kv: KvState | None
    ) -> tuple[FittedPrompt, Reuse | None]:
        """Off the event loop: chat template, processor (images), context policy, KV prefix reuse."""
        fitted = fit_context(loaded, conversation, max_new)
        reuse = reuse_cache(loaded, fitted.inputs, images, kv.cache, kv.cached_ids) if kv else None
        return fitted, reuse

    def _finish_turn(self, session: Session, fitted: FittedPrompt, result: GenerationResult) -> None:
        """Records the turn (unless cancelled; dropped turns stay dropped) and keeps the KV cache."""
        if result.finish_reason is not FinishReason.CANCELLED:
            reply = ChatMessage(Role.ASSISTANT, (TextPart(result.text),))
            session.messages = [*fitted.messages, reply]
            session.context_tokens = result.prompt_tokens + result.completion_tokens
        if result.cache is not None:
            self.sessions.store_kv(session, result.cache, result.cached_ids)
        self.metrics.session_kv_bytes.set(self.sessions.kv_bytes())

    # ------------------------------------------------------------------ captioning

    async def caption_batch(
        self,
        model: str,
        items: list[CaptionInput],
        preset: Preset,
        prompt: str,
        sampling: SamplingParams,
        deadline: float | None = None,
    ) -> AsyncIterator[CaptionOutcome]:
        """Captions every item, yielding each as it completes (in completion order)."""
        if not items:
            raise InvalidArgument("items", "must contain at least one image")
        if len(items) > self.settings.max_caption_items:
            raise InvalidArgument(
                "items", f"at most {self.settings.max_caption_items} images per call, got {len(items)}"
            )
        if len(prompt) > MAX_CAPTION_PROMPT_CHARS:
            raise InvalidArgument("prompt", f"must be at most {MAX_CAPTION_PROMPT_CHARS} characters")
        validate_sampling(sampling, self.settings.max_new_tokens_limit)
        preset = Preset.CAPTION_SHORT if preset is Preset.NONE else preset
        if preset is Preset.VQA and not prompt.strip():
            raise InvalidArgument("prompt", "TASK_PRESET_VQA needs the question in prompt")
        loaded = await self.model_for(model)
        self._check_text(loaded, [("prompt", prompt)])
        max_new = self._max_new_tokens(sampling, preset, loaded.family)
        outcomes: asyncio.Queue[CaptionOutcome] = asyncio.Queue()
        window = asyncio.Semaphore(self.settings.max_batch_size)
        completed = 0

        async def caption(index: int, item: CaptionInput) -> None:
            nonlocal completed
            text, result, error = "", None, item.error
            if item.image is not None:
                async with window:
                    try:
                        result = await self._caption_one(
                            loaded, item.image, preset, prompt, sampling, max_new, deadline
                        )
                        text = result.text
                    except ServiceError as failure:
                        error = failure.message
            completed += 1
            outcomes.put_nowait(CaptionOutcome(item.id, index, text, result, error, completed, len(items)))

        tasks = [asyncio.create_task(caption(i, item)) for i, item in enumerate(items)]
        try:
            for _ in items:
                yield await outcomes.get()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _caption_one(
        self,
        loaded: LoadedModel,
        image: ImagePart,
        preset: Preset,
        prompt: str,
        sampling: SamplingParams,
        max_new: int,
        deadline: float | None,
    ) -> GenerationResult:
        accepted = time.monotonic()
        message = ChatMessage(Role.USER, (image, TextPart(prompt)) if prompt.strip() else (image,))
        if preset is Preset.VQA or not prompt.strip():
            message = apply_preset(message, preset, loaded.family, True, field="prompt")
        with self._preparing_for(loaded.name):
            fitted, _ = await asyncio.to_thread(self._prepare, loaded, [message], max_new, 1, None)
        job = GenerationJob(
            model=loaded.name,
            inputs=fitted.inputs,
            sampling=sampling,
            max_new_tokens=fitted.max_new_tokens,
            channel=EventChannel(asyncio.get_running_loop()),
            request_id=uuid.uuid4().hex,
            deadline=deadline,
            accepted_at=accepted,
        )
        async for event in self._run(loaded, job):
            if isinstance(event, Finished):
                return event.result
        raise AssertionError("generation ended without a result")  # _run always ends with Finished or raises

    # ------------------------------------------------------------------ sessions

    async def create_session(
        self, model: str, messages: list[ChatMessage], ttl_seconds: int, tenant: str
    ) -> Session:
        validate_conversation(messages, ends_with_user=False)
        loaded = await self.model_for(model)
        self._check_text(loaded, self._texts(messages))
        self._check_images(loaded, messages)
        return self.sessions.create(tenant, loaded.name, messages, ttl_seconds)

    def context_window(self, model: str) -> int:
        loaded = self.models.get(model)
        return loaded.context_window if loaded else 0
