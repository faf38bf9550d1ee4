"""Generation requests as domain objects, and their validation (field names as in the proto).

The servicer builds a GenerationRequest from protobuf (images already decoded); `with_model_defaults`
fills in the model's own defaults, then `validate` checks it against the configured limits and fills
in the service's defaults. Model-specific checks (the sampler works with that model, clip skip within
its text encoder, the task is supported) happen once the model is known.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from PIL import Image

from services.common.errors import InvalidArgument
from services.diffusion.samplers import SAMPLERS, SIGMA_SCHEDULES

if TYPE_CHECKING:
    from services.diffusion.settings import ModelConfig

TASKS = ("txt2img", "img2img", "inpaint")
MASK_FILLS = ("original", "fill", "latent_noise", "latent_nothing")
PREVIEW_METHODS = ("approximate", "full")
OUTPUT_FORMATS = ("PNG", "JPEG", "WEBP")
PRIORITIES = {"low": 1, "normal": 2, "high": 3}
JOB_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
MAX_SEED = 2**63 - 1
DEFAULT_STRENGTH = 0.75


@dataclass(frozen=True)
class Limits:
    """What requests may ask for; from the service settings."""

    default_steps: int = 20
    max_steps: int = 150
    default_guidance: float = 7.0
    max_guidance: float = 30.0
    min_size: int = 64
    max_size: int = 2048
    max_images: int = 8
    max_controlnet_units: int = 4
    max_prompt_chars: int = 8000
    max_mask_blur: int = 256


@dataclass(frozen=True)
class MaskSpec:
    image: Image.Image  # mode "L": white = repaint
    blur: int = 0
    invert: bool = False
    fill: str = "original"


@dataclass(frozen=True)
class ControlUnit:
    model: str
    image: Image.Image
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0


@dataclass(frozen=True)
class PreviewSpec:
    every_n_steps: int = 0
    method: str = "approximate"
    format: str = "JPEG"


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    prompt: str = ""
    negative_prompt: str = ""
    task: str = ""  # "" = derived from the inputs
    job_id: str = ""
    width: int = 0  # 0 = the model's default (or the init image's size)
    height: int = 0
    steps: int = 0
    guidance_scale: float | None = None
    sampler: str = ""
    sigma_schedule: str = "default"
    seed: int | None = None  # None / -1 = random
    num_images: int = 1
    clip_skip: int = 0
    output_format: str = "PNG"
    output_quality: int = 0
    preview: PreviewSpec = field(default_factory=PreviewSpec)
    priority: int = PRIORITIES["normal"]
    init_image: Image.Image | None = None
    strength: float | None = None
    mask: MaskSpec | None = None
    controlnet_units: tuple[ControlUnit, ...] = ()

    def without_images(self) -> GenerationRequest:
        """What finished jobs keep: the parameters, not the (possibly large) input images."""
        units = tuple(replace(u, image=None) for u in self.controlnet_units)
        mask = replace(self.mask, image=None) if self.mask is not None else None
        return replace(self, init_image=None, mask=mask, controlnet_units=units)

    def batch_key(self) -> tuple | None:
        """Requests with equal keys can share one pipeline call; None = never batched."""
        if self.task != "txt2img" or self.controlnet_units:
            return None
        return (
            self.model,
            self.width,
            self.height,
            self.steps,
            self.guidance_scale,
            self.sampler,
            self.sigma_schedule,
            self.clip_skip,
        )


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidArgument(name, f"{value:g} is out of range; allowed [{low:g}, {high:g}]")


def _derive_task(request: GenerationRequest) -> str:
    task = request.task
    if request.mask is not None and request.init_image is None:
        raise InvalidArgument("init_image", "is required with a mask (inpainting)")
    if not task:
        if request.init_image is None:
            return "txt2img"
        return "inpaint" if request.mask is not None else "img2img"
    if task == "txt2img" and request.init_image is not None:
        raise InvalidArgument(
            "init_image", "is not used by TASK_TEXT_TO_IMAGE; leave it empty or use img2img"
        )
    if task in ("img2img", "inpaint") and request.init_image is None:
        raise InvalidArgument("init_image", f"is required for task {task}")
    if task == "inpaint" and request.mask is None:
        raise InvalidArgument("mask.image", "is required for inpainting")
    if task != "inpaint" and request.mask is not None:
        raise InvalidArgument("mask", f"is only used by inpainting, not {task}")
    return task


def _check_size(name: str, value: int, limits: Limits) -> None:
    if value == 0:
        return
    _check_range(name, value, limits.min_size, limits.max_size)
    if value % 8:
        raise InvalidArgument(name, f"{value} is not a multiple of 8")


def with_model_defaults(request: GenerationRequest, config: ModelConfig) -> GenerationRequest:
    """Fills what the request leaves unset with the model's own defaults (its card's steps, guidance
    and sampler), before the service-wide defaults in `validate`."""
    return replace(
        request,
        steps=request.steps or config.steps,
        guidance_scale=config.guidance_scale if request.guidance_scale is None else request.guidance_scale,
        sampler=request.sampler or config.sampler,
    )


def validate(request: GenerationRequest, limits: Limits) -> GenerationRequest:
    """Checks every field; returns the request with the task, steps, guidance and seed defaults set.
    Width and height stay 0 when left to the model (resolved by `with_size`)."""
    if not request.model:
        raise InvalidArgument("model", "is required")
    if request.job_id and not JOB_ID.match(request.job_id):
        raise InvalidArgument("job_id", "must be 1-64 characters of letters, digits, '.', '_', ':' or '-'")
    for name in ("prompt", "negative_prompt"):
        if len(getattr(request, name)) > limits.max_prompt_chars:
            raise InvalidArgument(name, f"is longer than {limits.max_prompt_chars} characters")
    task = _derive_task(request)
    _check_size("width", request.width, limits)
    _check_size("height", request.height, limits)
    steps = request.steps or limits.default_steps
    _check_range("steps", steps, 1, limits.max_steps)
    guidance = limits.default_guidance if request.guidance_scale is None else request.guidance_scale
    _check_range("guidance_scale", guidance, 0, limits.max_guidance)
    if request.sampler and request.sampler not in SAMPLERS:
        raise InvalidArgument("sampler", f"unknown sampler {request.sampler!r}; valid: {', '.join(SAMPLERS)}")
    if request.sigma_schedule not in SIGMA_SCHEDULES:
        raise InvalidArgument("sigma_schedule", f"must be one of {', '.join(SIGMA_SCHEDULES)}")
    if request.seed is not None and request.seed != -1:
        _check_range("seed", request.seed, 0, MAX_SEED)
    num_images = request.num_images or 1
    _check_range("num_images", num_images, 1, limits.max_images)
    _check_range("clip_skip", request.clip_skip, 0, 12)
    _check_range("output_quality", request.output_quality, 0, 100)
    if request.output_format not in OUTPUT_FORMATS:
        raise InvalidArgument("output_format", f"must be one of {', '.join(OUTPUT_FORMATS)}")
    if request.preview.method not in PREVIEW_METHODS:
        raise InvalidArgument("preview.method", f"must be one of {', '.join(PREVIEW_METHODS)}")
    if request.preview.format not in OUTPUT_FORMATS:
        raise InvalidArgument("preview.format", f"must be one of {', '.join(OUTPUT_FORMATS)}")
    strength = request.strength
    if task == "txt2img":
        if strength is not None:
            raise InvalidArgument("strength", "is only used with an init image (img2img, inpainting)")
    else:
        strength = DEFAULT_STRENGTH if strength is None else strength
        _check_range("strength", strength, 0, 1)
    if request.mask is not None:
        _check_mask(request, limits)
    _check_units(request.controlnet_units, limits)
    seed = request.seed if request.seed is not None and request.seed >= 0 else None
    return replace(
        request,
        task=task,
        steps=steps,
        guidance_scale=guidance,
        num_images=num_images,
        strength=strength,
        seed=seed,
    )


def _check_mask(request: GenerationRequest, limits: Limits) -> None:
    mask = request.mask
    assert mask is not None and request.init_image is not None
    if mask.image.size != request.init_image.size:
        raise InvalidArgument(
            "mask.image",
            f"is {mask.image.width}x{mask.image.height}; it must match init_image "
            f"({request.init_image.width}x{request.init_image.height})",
        )
    _check_range("mask.blur", mask.blur, 0, limits.max_mask_blur)
    if mask.fill not in MASK_FILLS:
        raise InvalidArgument("mask.fill", f"must be one of {', '.join(MASK_FILLS)}")


def _check_units(units: tuple[ControlUnit, ...], limits: Limits) -> None:
    if len(units) > limits.max_controlnet_units:
        raise InvalidArgument(
            "controlnet_units", f"{len(units)} units; at most {limits.max_controlnet_units} allowed"
        )
    for i, unit in enumerate(units):
        name = f"controlnet_units[{i}]"
        if not unit.model:
            raise InvalidArgument(f"{name}.model", "is required")
        _check_range(f"{name}.conditioning_scale", unit.scale, 0, 2)
        _check_range(f"{name}.guidance_start", unit.start, 0, 1)
        _check_range(f"{name}.guidance_end", unit.end, 0, 1)
        if unit.start >= unit.end:
            raise InvalidArgument(
                f"{name}.guidance_end", f"{unit.end:g} must be greater than guidance_start ({unit.start:g})"
            )


def with_size(request: GenerationRequest, default_size: int, limits: Limits) -> GenerationRequest:
    """Fills width / height: the init image's size (rounded down to a multiple of 8) or the model's."""
    width, height = request.width, request.height
    if request.init_image is not None:
        width = width or max(8, request.init_image.width // 8 * 8)
        height = height or max(8, request.init_image.height // 8 * 8)
    width, height = width or default_size, height or default_size
    _check_range("width", width, 8, limits.max_size)
    _check_range("height", height, 8, limits.max_size)
    return replace(request, width=width, height=height)
