"""gRPC servicer: protobuf <-> domain objects, delegating everything else to the data plane."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import grpc
from google.protobuf import timestamp_pb2

from lumiserve.common.v1 import common_pb2
from lumiserve.vision_language.v1 import vision_language_pb2 as pb
from lumiserve.vision_language.v1 import vision_language_pb2_grpc as pb_grpc
from services.common.errors import InvalidArgument
from services.common.images import ImageLimits, decode_image_pb
from services.common.tenancy import caller_tenant
from services.vision_language.catalog import ModelSpec
from services.vision_language.dataplane import CaptionInput, ChatCompletion, VisionLanguageDataPlane
from services.vision_language.jobs import Delta, GenerationResult
from services.vision_language.model_cache import TASKS, LoadedModel
from services.vision_language.prompts import presets_for
from services.vision_language.requests import (
    ChatMessage,
    ChatRequest,
    FinishReason,
    ImagePart,
    Part,
    Preset,
    Role,
    SamplingParams,
    TextPart,
)
from services.vision_language.sessions import Session

ROLES = {pb.ROLE_SYSTEM: Role.SYSTEM, pb.ROLE_USER: Role.USER, pb.ROLE_ASSISTANT: Role.ASSISTANT}
ROLES_PB = {role: number for number, role in ROLES.items()}
FINISH_REASONS = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.STOP_SEQUENCE: pb.FINISH_REASON_STOP_SEQUENCE,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
}
PRIORITIES = {
    common_pb2.PRIORITY_UNSPECIFIED: 0,
    common_pb2.PRIORITY_NORMAL: 0,
    common_pb2.PRIORITY_LOW: -1,
    common_pb2.PRIORITY_HIGH: 1,
}
PRECISION_DTYPES = {
    common_pb2.PRECISION_FP32: "float32",
    common_pb2.PRECISION_FP16: "float16",
    common_pb2.PRECISION_BF16: "bfloat16",
}
DTYPE_PRECISIONS = {"torch.float32": common_pb2.PRECISION_FP32, "torch.float16": common_pb2.PRECISION_FP16,
                    "torch.bfloat16": common_pb2.PRECISION_BF16}  # fmt: skip
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class VisionLanguageServicer(pb_grpc.VisionLanguageServiceServicer):
    def __init__(self, plane: VisionLanguageDataPlane) -> None:
        self.plane = plane
        settings = plane.settings
        self.image_limits = ImageLimits(
            max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        )

    # ------------------------------------------------------------------ protobuf -> domain

    def _image(self, image: common_pb2.Image, field: str) -> ImagePart:
        decoded = decode_image_pb(image, field, self.image_limits)
        return ImagePart(decoded, bytes(image.data), image.media_type)

    def _messages(self, messages: list[pb.Message], field: str = "messages") -> list[ChatMessage]:
        out = []
        for i, message in enumerate(messages):
            parts: list[Part] = []
            for j, part in enumerate(message.content):
                where = f"{field}[{i}].content[{j}]"
                kind = part.WhichOneof("part")
                if kind == "text":
                    parts.append(TextPart(part.text))
                elif kind == "image":
                    parts.append(self._image(part.image, f"{where}.image"))
                else:
                    raise InvalidArgument(where, "must set text or image")
            if message.role not in ROLES and message.role != pb.ROLE_UNSPECIFIED:
                raise InvalidArgument(f"{field}[{i}].role", f"unknown role {message.role}")
            out.append(ChatMessage(ROLES.get(message.role), tuple(parts)))
        return out

    @staticmethod
    def _sampling(sampling: pb.SamplingParameters) -> SamplingParams:
        return SamplingParams(
            temperature=sampling.temperature if sampling.HasField("temperature") else 0.0,
            top_p=sampling.top_p if sampling.HasField("top_p") else 1.0,
            top_k=sampling.top_k if sampling.HasField("top_k") else 0,
            repetition_penalty=sampling.repetition_penalty
            if sampling.HasField("repetition_penalty")
            else 1.0,
            max_new_tokens=sampling.max_new_tokens,
            min_new_tokens=sampling.min_new_tokens,
            stop=tuple(sampling.stop),
            seed=sampling.seed if sampling.HasField("seed") else None,
        )

    @staticmethod
    def _preset(value: int, field: str = "preset") -> Preset:
        try:
            return Preset(value)
        except ValueError:
            raise InvalidArgument(field, f"unknown task preset {value}") from None

    @staticmethod
    def _priority(value: int) -> int:
        if value not in PRIORITIES:
            raise InvalidArgument("priority", f"unknown priority {value}")
        return PRIORITIES[value]

    # ------------------------------------------------------------------ domain -> protobuf

    @staticmethod
    def _usage(result: GenerationResult) -> common_pb2.TokenUsage:
        return common_pb2.TokenUsage(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cached_prompt_tokens=result.cached_prompt_tokens,
            time_to_first_token_seconds=result.time_to_first_token,
            tokens_per_second=result.tokens_per_second,
            total_seconds=result.total_seconds,
            queue_seconds=result.queue_seconds,
        )

    def _completion(self, completion: ChatCompletion) -> pb.Completion:
        result = completion.result
        message = pb.Completion(
            finish_reason=FINISH_REASONS[result.finish_reason],
            usage=self._usage(result),
            text=result.text,
            session_id=completion.session_id,
        )
        if completion.truncation:
            t = completion.truncation
            message.truncation.CopyFrom(
                pb.ContextTruncation(
                    dropped_messages=t.dropped_messages,
                    dropped_tokens=t.dropped_tokens,
                    context_window=t.context_window,
                )
            )
        return message

    @staticmethod
    def _message_pb(message: ChatMessage, include_images: bool) -> pb.Message:
        content = []
        for part in message.parts:
            if isinstance(part, TextPart):
                content.append(pb.ContentPart(text=part.text))
            else:  # without include_images: the image's size and type, not its bytes
                image = common_pb2.Image(
                    media_type=part.media_type, width=part.image.width, height=part.image.height,
                    data=part.data if include_images else b"",
                )  # fmt: skip
                content.append(pb.ContentPart(image=image))
        return pb.Message(role=ROLES_PB[message.role], content=content)  # type: ignore[index]

    def _session(self, session: Session, with_messages: bool, include_images: bool = False) -> pb.Session:
        return pb.Session(
            session_id=session.session_id,
            model=session.model,
            messages=[self._message_pb(m, include_images) for m in session.messages] if with_messages else [],
            context_tokens=session.context_tokens,
            context_window=self.plane.context_window(session.model),
            create_time=_timestamp(session.created),
            expire_time=_timestamp(session.expires_at),
            ttl_seconds=session.ttl_seconds,
        )

    @staticmethod
    def _loaded_pb(model: LoadedModel) -> common_pb2.LoadedModel:
        return common_pb2.LoadedModel(
            model=model.name,
            variant=model.spec.variant,
            source=model.spec.source,
            state=common_pb2.MODEL_STATE_READY,
            device=model.device,
            precision=DTYPE_PRECISIONS.get(str(model.dtype), common_pb2.PRECISION_UNSPECIFIED),
            backend=common_pb2.BACKEND_TORCH,
            memory_bytes=model.memory_bytes,
            load_seconds=model.load_seconds,
            last_used_time=_timestamp(model.last_used),
            tasks=list(TASKS),
            pinned=model.spec.pinned,
        )

    # ------------------------------------------------------------------ RPCs

    async def Chat(
        self, request: pb.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChatResponse]:
        request_id = request.request_id or uuid.uuid4().hex
        chat = ChatRequest(
            model=request.model,
            messages=self._messages(list(request.messages)),
            sampling=self._sampling(request.sampling),
            preset=self._preset(request.preset),
            session_id=request.session_id,
            request_id=request_id,
            priority=self._priority(request.priority),
        )
        async for event in self.plane.chat(chat, caller_tenant(context), _deadline(context)):
            if isinstance(event, Delta):
                yield pb.ChatResponse(
                    request_id=request_id, delta=pb.TokenDelta(text=event.text, token_ids=event.token_ids)
                )
            else:
                yield pb.ChatResponse(request_id=request_id, completion=self._completion(event), final=True)

    async def CaptionBatch(
        self, request: pb.CaptionBatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.CaptionBatchResponse]:
        items = []
        for i, item in enumerate(request.items):
            try:
                items.append(CaptionInput(item.id, self._image(item.image, f"items[{i}].image")))
            except InvalidArgument as error:  # one bad image does not stop the batch
                items.append(CaptionInput(item.id, None, error.message))
        outcomes = self.plane.caption_batch(
            request.model,
            items,
            self._preset(request.preset),
            request.prompt,
            self._sampling(request.sampling),
            _deadline(context),
        )
        async for outcome in outcomes:
            caption = pb.Caption(id=outcome.id, index=outcome.index, text=outcome.text, error=outcome.error)
            if outcome.result is not None:
                caption.usage.CopyFrom(self._usage(outcome.result))
            yield pb.CaptionBatchResponse(
                caption=caption,
                completed=outcome.completed,
                total=outcome.total,
                final=outcome.completed == outcome.total,
            )

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateSessionResponse:
        session = await self.plane.create_session(
            request.model, self._messages(list(request.messages)), request.ttl_seconds, caller_tenant(context)
        )
        return pb.CreateSessionResponse(session=self._session(session, with_messages=True))

    async def GetSession(
        self, request: pb.GetSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSessionResponse:
        session = self.plane.sessions.get(request.session_id, caller_tenant(context))
        return pb.GetSessionResponse(session=self._session(session, True, request.include_images))

    async def DeleteSession(
        self, request: pb.DeleteSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteSessionResponse:
        self.plane.sessions.delete(request.session_id, caller_tenant(context))
        return pb.DeleteSessionResponse()

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSessionsResponse:
        size = request.pagination.page_size or DEFAULT_PAGE_SIZE
        if size > MAX_PAGE_SIZE:
            raise InvalidArgument("pagination.page_size", f"must be in [0, {MAX_PAGE_SIZE}], got {size}")
        token = request.pagination.page_token
        if token and not token.isdigit():
            raise InvalidArgument("pagination.page_token", "not a token returned by ListSessions")
        start = int(token or 0)
        sessions = self.plane.sessions.list(caller_tenant(context))
        page = sessions[start : start + size]
        next_token = str(start + size) if start + size < len(sessions) else ""
        return pb.ListSessionsResponse(
            sessions=[self._session(s, with_messages=False) for s in page],
            page_info=common_pb2.PageInfo(next_page_token=next_token, total_size=len(sessions)),
        )

    async def ListTaskPresets(
        self, request: pb.ListTaskPresetsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTaskPresetsResponse:
        loaded = await self.plane.model_for(request.model)
        return pb.ListTaskPresetsResponse(
            presets=[
                pb.TaskPresetTemplate(
                    preset=t.preset.value, prompt=t.prompt, default_max_new_tokens=t.default_max_new_tokens
                )
                for t in presets_for(loaded.family)
            ]
        )

    async def LoadModel(
        self, request: pb.LoadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadModelResponse:
        spec = request.spec
        model = spec.model or spec.source
        if not model:
            raise InvalidArgument("spec.model", "required (or spec.source)")
        if spec.source:
            base = ModelSpec(model=model, source=spec.source, dtype=self.plane.settings.dtype)
        else:
            base = self.plane.models.spec(model)
        changes: dict[str, object] = {}
        if spec.precision != common_pb2.PRECISION_UNSPECIFIED:
            if spec.precision not in PRECISION_DTYPES:
                name = (
                    common_pb2.Precision.Name(spec.precision)
                    if spec.precision in common_pb2.Precision.values()
                    else spec.precision
                )
                raise InvalidArgument(
                    "spec.precision",
                    f"{name} is not supported; use PRECISION_FP32, PRECISION_FP16 or PRECISION_BF16",
                )
            changes["dtype"] = PRECISION_DTYPES[spec.precision]
        if spec.revision:
            changes["revision"] = spec.revision
        if spec.variant:
            changes["variant"] = spec.variant
        if spec.pin:
            changes["pinned"] = True
        loaded, evicted = await self.plane.load(base.replace(**changes))
        return pb.LoadModelResponse(model=self._loaded_pb(loaded), evicted=evicted)

    async def UnloadModel(
        self, request: pb.UnloadModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnloadModelResponse:
        if not request.model:
            raise InvalidArgument("model", "required")
        await self.plane.unload(request.model)
        return pb.UnloadModelResponse()

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        cache = self.plane.models
        return pb.ListModelsResponse(
            cache=common_pb2.ModelCache(
                models=[self._loaded_pb(m) for m in cache.loaded()],
                memory_budget_bytes=cache.budget,
                memory_used_bytes=cache.used_bytes,
            )
        )
