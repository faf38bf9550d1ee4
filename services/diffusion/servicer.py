"""gRPC servicer: protobuf <-> domain objects, delegating everything else to the data plane."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import grpc
from google.protobuf import timestamp_pb2

from lumiserve.common.v1 import common_pb2
from lumiserve.diffusion.v1 import diffusion_pb2, diffusion_pb2_grpc
from services.common.errors import InvalidArgument
from services.common.images import FORMAT_NAMES, ImageLimits, decode_image
from services.common.tenancy import caller_tenant
from services.diffusion.jobs import (
    EncodedImage,
    Event,
    Job,
    JobState,
    JobView,
    ProgressEvent,
    QueuedEvent,
    ResultEvent,
    StartedEvent,
)
from services.diffusion.requests import ControlUnit, GenerationRequest, MaskSpec, PreviewSpec
from services.diffusion.status import ModelStatus

if TYPE_CHECKING:  # the server process runs without torch; only the engine imports the data plane
    from services.diffusion.dataplane import DiffusionDataPlane
    from services.diffusion.engine import EngineClient

TASKS = {
    diffusion_pb2.TASK_UNSPECIFIED: "",
    diffusion_pb2.TASK_TEXT_TO_IMAGE: "txt2img",
    diffusion_pb2.TASK_IMAGE_TO_IMAGE: "img2img",
    diffusion_pb2.TASK_INPAINT: "inpaint",
}
TASK_ENUMS = {name: value for value, name in TASKS.items() if name}
SIGMAS = {
    diffusion_pb2.SIGMA_SCHEDULE_UNSPECIFIED: "default",
    diffusion_pb2.SIGMA_SCHEDULE_KARRAS: "karras",
    diffusion_pb2.SIGMA_SCHEDULE_EXPONENTIAL: "exponential",
    diffusion_pb2.SIGMA_SCHEDULE_BETA: "beta",
}
SIGMA_ENUMS = {name: value for value, name in SIGMAS.items()}
FILLS = {
    diffusion_pb2.MASK_FILL_UNSPECIFIED: "original",
    diffusion_pb2.MASK_FILL_ORIGINAL: "original",
    diffusion_pb2.MASK_FILL_FILL: "fill",
    diffusion_pb2.MASK_FILL_LATENT_NOISE: "latent_noise",
    diffusion_pb2.MASK_FILL_LATENT_NOTHING: "latent_nothing",
}
PREVIEW_METHODS = {
    diffusion_pb2.PREVIEW_METHOD_UNSPECIFIED: "approximate",
    diffusion_pb2.PREVIEW_METHOD_APPROXIMATE: "approximate",
    diffusion_pb2.PREVIEW_METHOD_FULL: "full",
}
PRIORITIES = {
    common_pb2.PRIORITY_UNSPECIFIED: 2,
    common_pb2.PRIORITY_LOW: 1,
    common_pb2.PRIORITY_NORMAL: 2,
    common_pb2.PRIORITY_HIGH: 3,
}
JOB_STATES = {
    JobState.QUEUED: diffusion_pb2.JOB_STATE_QUEUED,
    JobState.RUNNING: diffusion_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: diffusion_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: diffusion_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: diffusion_pb2.JOB_STATE_CANCELLED,
}
MODEL_STATES = {
    "loading": common_pb2.MODEL_STATE_LOADING,
    "ready": common_pb2.MODEL_STATE_READY,
    "failed": common_pb2.MODEL_STATE_FAILED,
}
PRECISIONS = {
    common_pb2.PRECISION_UNSPECIFIED: "",
    common_pb2.PRECISION_FP32: "fp32",
    common_pb2.PRECISION_FP16: "fp16",
    common_pb2.PRECISION_BF16: "bf16",
}
PRECISION_ENUMS = {name: value for value, name in PRECISIONS.items() if name}


def _enum(mapping: dict, value: int, field: str):
    if value not in mapping:
        raise InvalidArgument(field, f"unknown value {value}; allowed: {sorted(mapping)}")
    return mapping[value]


def _format(value: int, field: str, default: str) -> str:
    if value == common_pb2.IMAGE_FORMAT_UNSPECIFIED:
        return default
    return _enum(FORMAT_NAMES, value, field)


def request_from_pb(pb: diffusion_pb2.GenerateRequest, image_limits: ImageLimits) -> GenerationRequest:
    """Converts (and decodes the images of) a GenerateRequest; range checks are the domain's."""
    init = decode_image(pb.init_image.data, "init_image", image_limits) if pb.HasField("init_image") else None
    mask = None
    if pb.HasField("mask") and pb.mask.HasField("image"):
        mask = MaskSpec(
            decode_image(pb.mask.image.data, "mask.image", image_limits, mode="L"),
            pb.mask.blur,
            pb.mask.invert,
            _enum(FILLS, pb.mask.fill, "mask.fill"),
        )
    elif pb.HasField("mask"):
        raise InvalidArgument("mask.image", "is required when a mask is given")
    units = []
    for i, unit in enumerate(pb.controlnet_units):
        name = f"controlnet_units[{i}]"
        if not unit.HasField("image"):
            raise InvalidArgument(f"{name}.image", "is required")
        units.append(
            ControlUnit(
                unit.model,
                decode_image(unit.image.data, f"{name}.image", image_limits),
                unit.conditioning_scale if unit.HasField("conditioning_scale") else 1.0,
                unit.guidance_start if unit.HasField("guidance_start") else 0.0,
                unit.guidance_end if unit.HasField("guidance_end") else 1.0,
            )
        )
    preview = PreviewSpec(
        pb.preview.every_n_steps,
        _enum(PREVIEW_METHODS, pb.preview.method, "preview.method"),
        _format(pb.preview.format, "preview.format", "JPEG"),
    )
    return GenerationRequest(
        model=pb.model,
        prompt=pb.prompt,
        negative_prompt=pb.negative_prompt,
        task=_enum(TASKS, pb.task, "task"),
        job_id=pb.job_id,
        width=pb.width,
        height=pb.height,
        steps=pb.steps,
        guidance_scale=pb.guidance_scale if pb.HasField("guidance_scale") else None,
        sampler=pb.sampler,
        sigma_schedule=_enum(SIGMAS, pb.sigma_schedule, "sigma_schedule"),
        seed=pb.seed if pb.HasField("seed") else None,
        num_images=pb.num_images,
        clip_skip=pb.clip_skip,
        output_format=_format(pb.output_format, "output_format", "PNG"),
        output_quality=pb.output_quality,
        preview=preview,
        priority=_enum(PRIORITIES, pb.priority, "priority"),
        init_image=init,
        strength=pb.strength if pb.HasField("strength") else None,
        mask=mask,
        controlnet_units=tuple(units),
    )


def _image_pb(image: EncodedImage) -> common_pb2.Image:
    return common_pb2.Image(
        data=image.data, media_type=image.media_type, width=image.width, height=image.height
    )


def parameters_pb(request: GenerationRequest, sampler: str) -> diffusion_pb2.GenerationParameters:
    return diffusion_pb2.GenerationParameters(
        model=request.model,
        task=TASK_ENUMS[request.task],
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=request.width,
        height=request.height,
        steps=request.steps,
        guidance_scale=request.guidance_scale or 0.0,
        sampler=sampler,
        sigma_schedule=SIGMA_ENUMS[request.sigma_schedule],
        seed=request.seed or 0,
        num_images=request.num_images,
        clip_skip=request.clip_skip,
        strength=request.strength or 0.0,
        controlnet_units=[
            diffusion_pb2.ControlNetUnit(
                model=u.model, conditioning_scale=u.scale, guidance_start=u.start, guidance_end=u.end
            )
            for u in request.controlnet_units
        ],
    )


def event_pb(job_id: str, event: Event) -> diffusion_pb2.GenerateResponse:
    if isinstance(event, QueuedEvent):
        queued = diffusion_pb2.Queued(position=event.position, queue_depth=event.queue_depth)
        return diffusion_pb2.GenerateResponse(job_id=job_id, queued=queued)
    if isinstance(event, StartedEvent):
        started = diffusion_pb2.Started(
            model=event.model,
            device=event.device,
            total_steps=event.total_steps,
            queue_seconds=event.queue_seconds,
        )
        return diffusion_pb2.GenerateResponse(job_id=job_id, started=started)
    if isinstance(event, ProgressEvent):
        progress = diffusion_pb2.Progress(
            step=event.step,
            total_steps=event.total_steps,
            iterations_per_second=event.iterations_per_second,
            eta_seconds=event.eta_seconds,
            elapsed_seconds=event.elapsed_seconds,
            previews=[_image_pb(p) for p in event.previews],
        )
        return diffusion_pb2.GenerateResponse(job_id=job_id, progress=progress)
    assert isinstance(event, ResultEvent)
    result = diffusion_pb2.Result(
        images=[
            diffusion_pb2.GeneratedImage(image=_image_pb(i.image), seed=i.seed, infotext=i.infotext)
            for i in event.images
        ],
        parameters=parameters_pb(event.parameters, event.sampler),
        timing=common_pb2.Timing(
            queue_seconds=event.timing.queue_seconds,
            time_to_first_event_seconds=event.timing.time_to_first_event_seconds,
            total_seconds=event.timing.total_seconds,
        ),
    )
    return diffusion_pb2.GenerateResponse(job_id=job_id, result=result, final=True)


def job_pb(job: Job | JobView) -> diffusion_pb2.Job:
    return diffusion_pb2.Job(
        job_id=job.id,
        model=job.model,
        state=JOB_STATES[job.state],
        position=max(job.position, 0) if job.state is JobState.QUEUED else 0,
        step=job.step,
        total_steps=job.total_steps,
    )


def model_pb(status: ModelStatus) -> common_pb2.LoadedModel:
    last_used = timestamp_pb2.Timestamp()
    if status.last_used:
        last_used.FromNanoseconds(int(status.last_used * 1e9))
    return common_pb2.LoadedModel(
        model=status.config.id,
        variant=status.config.variant,
        source=status.config.source,
        state=MODEL_STATES[status.state],
        device=status.device,
        precision=PRECISION_ENUMS.get(status.precision, common_pb2.PRECISION_UNSPECIFIED),
        backend=common_pb2.BACKEND_TORCH,
        memory_bytes=status.memory_bytes,
        load_seconds=status.load_seconds,
        last_used_time=last_used if status.last_used else None,
        tasks=list(status.tasks),
        pinned=status.config.pin,
        error=status.error,
    )


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class DiffusionServicer(diffusion_pb2_grpc.DiffusionServiceServicer):
    def __init__(self, plane: DiffusionDataPlane | EngineClient) -> None:
        self.plane = plane
        self.image_limits = ImageLimits(
            max_bytes=plane.settings.max_message_bytes, max_pixels=plane.settings.max_pixels
        )

    async def Generate(
        self, request: diffusion_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[diffusion_pb2.GenerateResponse]:
        has_images = (
            request.HasField("init_image") or request.HasField("mask") or len(request.controlnet_units)
        )
        if has_images:  # decoding is CPU work: keep it off the event loop
            domain = await asyncio.to_thread(request_from_pb, request, self.image_limits)
        else:
            domain = request_from_pb(request, self.image_limits)
        job = await self.plane.submit(domain, caller_tenant(context), _deadline(context))
        try:
            async for event in job.events():
                yield event_pb(job.id, event)
        finally:
            await self.plane.end_stream(job)  # cancels the job if the client went away first

    async def Cancel(self, request: diffusion_pb2.CancelRequest, context: grpc.aio.ServicerContext):
        state = await self.plane.cancel(caller_tenant(context), request.job_id)
        return diffusion_pb2.CancelResponse(state=JOB_STATES[state])

    async def GetJob(self, request: diffusion_pb2.GetJobRequest, context: grpc.aio.ServicerContext):
        return diffusion_pb2.GetJobResponse(
            job=job_pb(await self.plane.get_job(caller_tenant(context), request.job_id))
        )

    async def ListSamplers(
        self, request: diffusion_pb2.ListSamplersRequest, context: grpc.aio.ServicerContext
    ):
        samplers = [
            diffusion_pb2.Sampler(
                name=s.name,
                scheduler=s.scheduler,
                sigma_schedules=[SIGMA_ENUMS[x] for x in s.sigma_schedules],
            )
            for s in await self.plane.samplers(request.model)
        ]
        return diffusion_pb2.ListSamplersResponse(samplers=samplers)

    async def LoadModel(self, request: diffusion_pb2.LoadModelRequest, context: grpc.aio.ServicerContext):
        spec = request.spec
        if not spec.model:
            raise InvalidArgument("spec.model", "is required")
        precision = PRECISIONS.get(spec.precision)
        if precision is None:
            raise InvalidArgument("spec.precision", "diffusion models load as FP32, FP16 or BF16")
        status, evicted = await self.plane.load_model(
            spec.model, spec.source, precision, spec.variant, spec.revision, spec.pin
        )
        return diffusion_pb2.LoadModelResponse(model=model_pb(status), evicted=evicted)

    async def UnloadModel(self, request: diffusion_pb2.UnloadModelRequest, context: grpc.aio.ServicerContext):
        if not request.model:
            raise InvalidArgument("model", "is required")
        await self.plane.unload_model(request.model)
        return diffusion_pb2.UnloadModelResponse()

    async def ListModels(self, request: diffusion_pb2.ListModelsRequest, context: grpc.aio.ServicerContext):
        view = await self.plane.models()
        cache = common_pb2.ModelCache(
            models=[model_pb(s) for s in view.models],
            memory_budget_bytes=view.budget_bytes,
            memory_used_bytes=view.used_bytes,
        )
        return diffusion_pb2.ListModelsResponse(cache=cache)
