"""Python clients for the lumiserve gateway: `Client` (blocking) and `AsyncClient` (asyncio).

    from lumiserve.client import Client
    with Client("127.0.0.1:50050") as client:
        images = client.generate_images("a red circle", seed=1)
        for event in client.generate("a red circle"):   # Queued, Started, Progress..., Result
            print(event)
        answer = client.ask([images[0]], "What is in this image?")

Both take an API key (sent as `authorization: Bearer`), TLS options and a default deadline.
Images go in as PIL images, file paths or encoded bytes and come back as PIL images.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from PIL import Image

from lumiserve.common.v1 import common_pb2
from lumiserve.diffusion.v1 import diffusion_pb2, diffusion_pb2_grpc
from lumiserve.model_registry.v1 import model_registry_pb2, model_registry_pb2_grpc
from lumiserve.vision_language.v1 import vision_language_pb2, vision_language_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50050"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
ImageInput = Image.Image | str | Path | bytes


# ---------------------------------------------------------------- typed events


@dataclass(frozen=True)
class Queued:
    job_id: str
    position: int
    queue_depth: int


@dataclass(frozen=True)
class Started:
    job_id: str
    total_steps: int
    queue_seconds: float


@dataclass(frozen=True)
class Progress:
    job_id: str
    step: int
    total_steps: int
    iterations_per_second: float
    eta_seconds: float
    previews: list[Image.Image] = field(default_factory=list)


@dataclass(frozen=True)
class GeneratedImage:
    image: Image.Image
    seed: int
    infotext: str


@dataclass(frozen=True)
class Result:
    job_id: str
    images: list[GeneratedImage]
    parameters: diffusion_pb2.GenerationParameters


GenerateEvent = Queued | Started | Progress | Result


@dataclass(frozen=True)
class Caption:
    id: str
    index: int
    text: str
    error: str
    completed: int
    total: int


# ---------------------------------------------------------------- conversions shared by both clients


def to_image_pb(image: ImageInput) -> common_pb2.Image:
    """PIL images are sent as PNG; paths and bytes as they are (the server sniffs the format)."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        return common_pb2.Image(data=buffer.getvalue(), media_type="image/png")
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return common_pb2.Image(data=data)


def from_image_pb(image: common_pb2.Image) -> Image.Image:
    return Image.open(io.BytesIO(image.data))


def generate_request(prompt: str, **fields: Any) -> diffusion_pb2.GenerateRequest:
    """A GenerateRequest from keyword fields; image fields accept ImageInput, `preview_every` a step count."""
    if fields.get("init_image") is not None and not isinstance(fields["init_image"], common_pb2.Image):
        fields["init_image"] = to_image_pb(fields["init_image"])
    if fields.get("mask") is not None and not isinstance(fields["mask"], diffusion_pb2.Mask):
        fields["mask"] = diffusion_pb2.Mask(image=to_image_pb(fields["mask"]))
    preview_every = fields.pop("preview_every", 0)
    if preview_every:
        fields["preview"] = diffusion_pb2.PreviewOptions(every_n_steps=preview_every)
    return diffusion_pb2.GenerateRequest(prompt=prompt, **{k: v for k, v in fields.items() if v is not None})


def to_event(response: diffusion_pb2.GenerateResponse) -> GenerateEvent:
    kind = response.WhichOneof("event")
    job = response.job_id
    if kind == "queued":
        return Queued(job, response.queued.position, response.queued.queue_depth)
    if kind == "started":
        return Started(job, response.started.total_steps, response.started.queue_seconds)
    if kind == "progress":
        p = response.progress
        previews = [from_image_pb(i) for i in p.previews]
        return Progress(job, p.step, p.total_steps, p.iterations_per_second, p.eta_seconds, previews)
    result = response.result
    images = [GeneratedImage(from_image_pb(i.image), i.seed, i.infotext) for i in result.images]
    return Result(job, images, result.parameters)


def user_message(text: str, images: Iterable[ImageInput] = ()) -> vision_language_pb2.Message:
    """A user turn: the images first, then the text (the order LLaVA prompts use)."""
    parts = [vision_language_pb2.ContentPart(image=to_image_pb(i)) for i in images]
    if text:
        parts.append(vision_language_pb2.ContentPart(text=text))
    return vision_language_pb2.Message(role=vision_language_pb2.ROLE_USER, content=parts)


def chat_request(
    messages: Iterable[vision_language_pb2.Message],
    model: str = "",
    session_id: str = "",
    max_new_tokens: int = 0,
    temperature: float | None = None,
    seed: int | None = None,
    preset: int = vision_language_pb2.TASK_PRESET_UNSPECIFIED,
) -> vision_language_pb2.ChatRequest:
    sampling = vision_language_pb2.SamplingParameters(max_new_tokens=max_new_tokens)
    if temperature is not None:
        sampling.temperature = temperature
    if seed is not None:
        sampling.seed = seed
    return vision_language_pb2.ChatRequest(
        model=model, messages=list(messages), session_id=session_id, sampling=sampling, preset=preset
    )


def caption_request(
    images: Iterable[ImageInput],
    model: str = "",
    ids: Iterable[str] | None = None,
    preset: int = vision_language_pb2.TASK_PRESET_CAPTION_SHORT,
) -> vision_language_pb2.CaptionBatchRequest:
    images = list(images)
    names = list(ids) if ids is not None else [str(i) for i in range(len(images))]
    items = [
        vision_language_pb2.CaptionItem(id=n, image=to_image_pb(i))
        for n, i in zip(names, images, strict=True)
    ]
    return vision_language_pb2.CaptionBatchRequest(model=model, items=items, preset=preset)


def to_caption(response: vision_language_pb2.CaptionBatchResponse) -> Caption:
    c = response.caption
    return Caption(c.id, c.index, c.text, c.error, response.completed, response.total)


def _metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def _credentials(tls: bool, root_certificates: bytes | None) -> grpc.ChannelCredentials | None:
    return (
        grpc.ssl_channel_credentials(root_certificates=root_certificates)
        if tls or root_certificates
        else None
    )


_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


# ---------------------------------------------------------------- blocking client


class Client:
    """Blocking client. `timeout` is the default deadline in seconds for every call (None = none)."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = None,
    ) -> None:
        credentials = _credentials(tls, root_certificates)
        self.channel = (
            grpc.secure_channel(address, credentials, options=_OPTIONS)
            if credentials
            else grpc.insecure_channel(address, options=_OPTIONS)
        )
        self.diffusion = diffusion_pb2_grpc.DiffusionServiceStub(self.channel)
        self.vision_language = vision_language_pb2_grpc.VisionLanguageServiceStub(self.channel)
        self.registry = model_registry_pb2_grpc.ModelRegistryServiceStub(self.channel)
        self._kw = {"metadata": _metadata(api_key), "timeout": timeout}

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def generate(self, prompt: str, **fields: Any) -> Iterator[GenerateEvent]:
        """Streams Queued / Started / Progress events and the final Result. Closing the iterator (or
        Ctrl-C while iterating) cancels the job on the server."""
        call = self.diffusion.Generate(generate_request(prompt, **fields), **self._kw)
        try:
            for response in call:
                yield to_event(response)
        finally:
            call.cancel()

    def generate_images(self, prompt: str, **fields: Any) -> list[Image.Image]:
        for event in self.generate(prompt, **fields):
            if isinstance(event, Result):
                return [i.image for i in event.images]
        raise RuntimeError("the generation stream ended without a result")

    def cancel(self, job_id: str) -> int:
        return self.diffusion.Cancel(diffusion_pb2.CancelRequest(job_id=job_id), **self._kw).state

    def chat(self, messages: Iterable[vision_language_pb2.Message], **options: Any) -> Iterator[str]:
        """Yields text deltas as they are generated."""
        call = self.vision_language.Chat(chat_request(messages, **options), **self._kw)
        try:
            for response in call:
                if response.HasField("delta"):
                    yield response.delta.text
        finally:
            call.cancel()

    def ask(self, images: Iterable[ImageInput], question: str, **options: Any) -> str:
        return "".join(self.chat([user_message(question, images)], **options))

    def caption(self, images: Iterable[ImageInput], **options: Any) -> Iterator[Caption]:
        for response in self.vision_language.CaptionBatch(caption_request(images, **options), **self._kw):
            if response.HasField("caption"):
                yield to_caption(response)

    def create_session(self, model: str = "", ttl_seconds: int = 0) -> str:
        request = vision_language_pb2.CreateSessionRequest(model=model, ttl_seconds=ttl_seconds)
        return self.vision_language.CreateSession(request, **self._kw).session.session_id

    def delete_session(self, session_id: str) -> None:
        self.vision_language.DeleteSession(
            vision_language_pb2.DeleteSessionRequest(session_id=session_id), **self._kw
        )

    def list_models(self) -> list[model_registry_pb2.Model]:
        return list(self.registry.ListModels(model_registry_pb2.ListModelsRequest(), **self._kw).models)

    def list_instances(self) -> list[model_registry_pb2.Instance]:
        return list(
            self.registry.ListInstances(model_registry_pb2.ListInstancesRequest(), **self._kw).instances
        )


# ---------------------------------------------------------------- asyncio client


class AsyncClient:
    """asyncio client with the same methods as Client (coroutines and async iterators)."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = None,
    ) -> None:
        credentials = _credentials(tls, root_certificates)
        self.channel = (
            grpc.aio.secure_channel(address, credentials, options=_OPTIONS)
            if credentials
            else grpc.aio.insecure_channel(address, options=_OPTIONS)
        )
        self.diffusion = diffusion_pb2_grpc.DiffusionServiceStub(self.channel)
        self.vision_language = vision_language_pb2_grpc.VisionLanguageServiceStub(self.channel)
        self.registry = model_registry_pb2_grpc.ModelRegistryServiceStub(self.channel)
        self._kw = {"metadata": _metadata(api_key), "timeout": timeout}

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def generate(self, prompt: str, **fields: Any) -> AsyncIterator[GenerateEvent]:
        call = self.diffusion.Generate(generate_request(prompt, **fields), **self._kw)
        try:
            async for response in call:
                yield to_event(response)
        finally:
            call.cancel()

    async def generate_images(self, prompt: str, **fields: Any) -> list[Image.Image]:
        async for event in self.generate(prompt, **fields):
            if isinstance(event, Result):
                return [i.image for i in event.images]
        raise RuntimeError("the generation stream ended without a result")

    async def cancel(self, job_id: str) -> int:
        return (await self.diffusion.Cancel(diffusion_pb2.CancelRequest(job_id=job_id), **self._kw)).state

    async def chat(
        self, messages: Iterable[vision_language_pb2.Message], **options: Any
    ) -> AsyncIterator[str]:
        call = self.vision_language.Chat(chat_request(messages, **options), **self._kw)
        try:
            async for response in call:
                if response.HasField("delta"):
                    yield response.delta.text
        finally:
            call.cancel()

    async def ask(self, images: Iterable[ImageInput], question: str, **options: Any) -> str:
        return "".join([delta async for delta in self.chat([user_message(question, images)], **options)])

    async def caption(self, images: Iterable[ImageInput], **options: Any) -> AsyncIterator[Caption]:
        async for response in self.vision_language.CaptionBatch(
            caption_request(images, **options), **self._kw
        ):
            if response.HasField("caption"):
                yield to_caption(response)

    async def create_session(self, model: str = "", ttl_seconds: int = 0) -> str:
        request = vision_language_pb2.CreateSessionRequest(model=model, ttl_seconds=ttl_seconds)
        return (await self.vision_language.CreateSession(request, **self._kw)).session.session_id

    async def delete_session(self, session_id: str) -> None:
        request = vision_language_pb2.DeleteSessionRequest(session_id=session_id)
        await self.vision_language.DeleteSession(request, **self._kw)

    async def list_models(self) -> list[model_registry_pb2.Model]:
        return list(
            (await self.registry.ListModels(model_registry_pb2.ListModelsRequest(), **self._kw)).models
        )

    async def list_instances(self) -> list[model_registry_pb2.Instance]:
        request = model_registry_pb2.ListInstancesRequest()
        return list((await self.registry.ListInstances(request, **self._kw)).instances)
