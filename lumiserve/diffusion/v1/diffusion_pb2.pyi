from lumiserve.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Task(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_UNSPECIFIED: _ClassVar[Task]
    TASK_TEXT_TO_IMAGE: _ClassVar[Task]
    TASK_IMAGE_TO_IMAGE: _ClassVar[Task]
    TASK_INPAINT: _ClassVar[Task]

class SigmaSchedule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGMA_SCHEDULE_UNSPECIFIED: _ClassVar[SigmaSchedule]
    SIGMA_SCHEDULE_KARRAS: _ClassVar[SigmaSchedule]
    SIGMA_SCHEDULE_EXPONENTIAL: _ClassVar[SigmaSchedule]
    SIGMA_SCHEDULE_BETA: _ClassVar[SigmaSchedule]

class MaskFill(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASK_FILL_UNSPECIFIED: _ClassVar[MaskFill]
    MASK_FILL_ORIGINAL: _ClassVar[MaskFill]
    MASK_FILL_FILL: _ClassVar[MaskFill]
    MASK_FILL_LATENT_NOISE: _ClassVar[MaskFill]
    MASK_FILL_LATENT_NOTHING: _ClassVar[MaskFill]

class PreviewMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREVIEW_METHOD_UNSPECIFIED: _ClassVar[PreviewMethod]
    PREVIEW_METHOD_APPROXIMATE: _ClassVar[PreviewMethod]
    PREVIEW_METHOD_FULL: _ClassVar[PreviewMethod]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
TASK_UNSPECIFIED: Task
TASK_TEXT_TO_IMAGE: Task
TASK_IMAGE_TO_IMAGE: Task
TASK_INPAINT: Task
SIGMA_SCHEDULE_UNSPECIFIED: SigmaSchedule
SIGMA_SCHEDULE_KARRAS: SigmaSchedule
SIGMA_SCHEDULE_EXPONENTIAL: SigmaSchedule
SIGMA_SCHEDULE_BETA: SigmaSchedule
MASK_FILL_UNSPECIFIED: MaskFill
MASK_FILL_ORIGINAL: MaskFill
MASK_FILL_FILL: MaskFill
MASK_FILL_LATENT_NOISE: MaskFill
MASK_FILL_LATENT_NOTHING: MaskFill
PREVIEW_METHOD_UNSPECIFIED: PreviewMethod
PREVIEW_METHOD_APPROXIMATE: PreviewMethod
PREVIEW_METHOD_FULL: PreviewMethod
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class Mask(_message.Message):
    __slots__ = ("image", "blur", "invert", "fill")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    BLUR_FIELD_NUMBER: _ClassVar[int]
    INVERT_FIELD_NUMBER: _ClassVar[int]
    FILL_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    blur: int
    invert: bool
    fill: MaskFill
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., blur: _Optional[int] = ..., invert: _Optional[bool] = ..., fill: _Optional[_Union[MaskFill, str]] = ...) -> None: ...

class ControlNetUnit(_message.Message):
    __slots__ = ("model", "image", "conditioning_scale", "guidance_start", "guidance_end")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CONDITIONING_SCALE_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_START_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_END_FIELD_NUMBER: _ClassVar[int]
    model: str
    image: _common_pb2.Image
    conditioning_scale: float
    guidance_start: float
    guidance_end: float
    def __init__(self, model: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., conditioning_scale: _Optional[float] = ..., guidance_start: _Optional[float] = ..., guidance_end: _Optional[float] = ...) -> None: ...

class PreviewOptions(_message.Message):
    __slots__ = ("every_n_steps", "method", "format")
    EVERY_N_STEPS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    every_n_steps: int
    method: PreviewMethod
    format: _common_pb2.ImageFormat
    def __init__(self, every_n_steps: _Optional[int] = ..., method: _Optional[_Union[PreviewMethod, str]] = ..., format: _Optional[_Union[_common_pb2.ImageFormat, str]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "job_id", "task", "prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "sampler", "sigma_schedule", "seed", "num_images", "clip_skip", "output_format", "output_quality", "preview", "priority", "init_image", "strength", "mask", "controlnet_units")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    SIGMA_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    CLIP_SKIP_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_QUALITY_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    INIT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    CONTROLNET_UNITS_FIELD_NUMBER: _ClassVar[int]
    model: str
    job_id: str
    task: Task
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    sampler: str
    sigma_schedule: SigmaSchedule
    seed: int
    num_images: int
    clip_skip: int
    output_format: _common_pb2.ImageFormat
    output_quality: int
    preview: PreviewOptions
    priority: _common_pb2.Priority
    init_image: _common_pb2.Image
    strength: float
    mask: Mask
    controlnet_units: _containers.RepeatedCompositeFieldContainer[ControlNetUnit]
    def __init__(self, model: _Optional[str] = ..., job_id: _Optional[str] = ..., task: _Optional[_Union[Task, str]] = ..., prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., sampler: _Optional[str] = ..., sigma_schedule: _Optional[_Union[SigmaSchedule, str]] = ..., seed: _Optional[int] = ..., num_images: _Optional[int] = ..., clip_skip: _Optional[int] = ..., output_format: _Optional[_Union[_common_pb2.ImageFormat, str]] = ..., output_quality: _Optional[int] = ..., preview: _Optional[_Union[PreviewOptions, _Mapping]] = ..., priority: _Optional[_Union[_common_pb2.Priority, str]] = ..., init_image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., strength: _Optional[float] = ..., mask: _Optional[_Union[Mask, _Mapping]] = ..., controlnet_units: _Optional[_Iterable[_Union[ControlNetUnit, _Mapping]]] = ...) -> None: ...

class Queued(_message.Message):
    __slots__ = ("position", "queue_depth")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    position: int
    queue_depth: int
    def __init__(self, position: _Optional[int] = ..., queue_depth: _Optional[int] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ("model", "device", "total_steps", "queue_seconds")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    device: str
    total_steps: int
    queue_seconds: float
    def __init__(self, model: _Optional[str] = ..., device: _Optional[str] = ..., total_steps: _Optional[int] = ..., queue_seconds: _Optional[float] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("step", "total_steps", "iterations_per_second", "eta_seconds", "elapsed_seconds", "previews")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PREVIEWS_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    iterations_per_second: float
    eta_seconds: float
    elapsed_seconds: float
    previews: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., iterations_per_second: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ..., previews: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ...) -> None: ...

class GenerationParameters(_message.Message):
    __slots__ = ("model", "task", "prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "sampler", "sigma_schedule", "seed", "num_images", "clip_skip", "strength", "controlnet_units")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    SIGMA_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    CLIP_SKIP_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    CONTROLNET_UNITS_FIELD_NUMBER: _ClassVar[int]
    model: str
    task: Task
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    sampler: str
    sigma_schedule: SigmaSchedule
    seed: int
    num_images: int
    clip_skip: int
    strength: float
    controlnet_units: _containers.RepeatedCompositeFieldContainer[ControlNetUnit]
    def __init__(self, model: _Optional[str] = ..., task: _Optional[_Union[Task, str]] = ..., prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., sampler: _Optional[str] = ..., sigma_schedule: _Optional[_Union[SigmaSchedule, str]] = ..., seed: _Optional[int] = ..., num_images: _Optional[int] = ..., clip_skip: _Optional[int] = ..., strength: _Optional[float] = ..., controlnet_units: _Optional[_Iterable[_Union[ControlNetUnit, _Mapping]]] = ...) -> None: ...

class GeneratedImage(_message.Message):
    __slots__ = ("image", "seed", "infotext")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    INFOTEXT_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    seed: int
    infotext: str
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., seed: _Optional[int] = ..., infotext: _Optional[str] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("images", "parameters", "timing")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[GeneratedImage]
    parameters: GenerationParameters
    timing: _common_pb2.Timing
    def __init__(self, images: _Optional[_Iterable[_Union[GeneratedImage, _Mapping]]] = ..., parameters: _Optional[_Union[GenerationParameters, _Mapping]] = ..., timing: _Optional[_Union[_common_pb2.Timing, _Mapping]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("job_id", "queued", "started", "progress", "result", "final")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    queued: Queued
    started: Started
    progress: Progress
    result: Result
    final: bool
    def __init__(self, job_id: _Optional[str] = ..., queued: _Optional[_Union[Queued, _Mapping]] = ..., started: _Optional[_Union[Started, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ..., final: _Optional[bool] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    def __init__(self, state: _Optional[_Union[JobState, str]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "model", "state", "position", "step", "total_steps")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model: str
    state: JobState
    position: int
    step: int
    total_steps: int
    def __init__(self, job_id: _Optional[str] = ..., model: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., position: _Optional[int] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListSamplersRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class Sampler(_message.Message):
    __slots__ = ("name", "sigma_schedules", "scheduler")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIGMA_SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    name: str
    sigma_schedules: _containers.RepeatedScalarFieldContainer[SigmaSchedule]
    scheduler: str
    def __init__(self, name: _Optional[str] = ..., sigma_schedules: _Optional[_Iterable[_Union[SigmaSchedule, str]]] = ..., scheduler: _Optional[str] = ...) -> None: ...

class ListSamplersResponse(_message.Message):
    __slots__ = ("samplers",)
    SAMPLERS_FIELD_NUMBER: _ClassVar[int]
    samplers: _containers.RepeatedCompositeFieldContainer[Sampler]
    def __init__(self, samplers: _Optional[_Iterable[_Union[Sampler, _Mapping]]] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: _common_pb2.ModelLoadSpec
    def __init__(self, spec: _Optional[_Union[_common_pb2.ModelLoadSpec, _Mapping]] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("model", "evicted")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.LoadedModel
    evicted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[_Union[_common_pb2.LoadedModel, _Mapping]] = ..., evicted: _Optional[_Iterable[str]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("cache",)
    CACHE_FIELD_NUMBER: _ClassVar[int]
    cache: _common_pb2.ModelCache
    def __init__(self, cache: _Optional[_Union[_common_pb2.ModelCache, _Mapping]] = ...) -> None: ...
