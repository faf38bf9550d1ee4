"""One pipeline call for a batch of compatible jobs: model-specific checks, the call's inputs, and the
images split back per job and encoded with their A1111 infotext."""

from __future__ import annotations

import copy
import functools
import inspect
import secrets
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image, ImageFilter, ImageOps

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.images import MEDIA_TYPES, encode_image
from services.diffusion.devices import Device
from services.diffusion.infotext import infotext
from services.diffusion.jobs import EncodedImage, GeneratedImage, Job
from services.diffusion.model_cache import CacheEntry, ModelCache
from services.diffusion.requests import GenerationRequest, Limits, MaskSpec, with_size
from services.diffusion.samplers import SAMPLERS, build_scheduler, planned_steps

MAX_RANDOM_SEED = 2**32 - 1  # A1111 picks 32-bit seeds; any int64 >= 0 is accepted


def check_request(
    cache: ModelCache, entry: CacheEntry, request: GenerationRequest, limits: Limits
) -> GenerationRequest:
    """Checks a validated request against the loaded model; fills in its size. Raises before queuing
    when the model is loaded, else when the job starts."""
    task = request.task
    if task not in entry.tasks:
        raise FailedPrecondition(
            f"model {entry.id!r} cannot serve {task}; it serves {', '.join(entry.tasks) or 'nothing'}"
        )
    if request.controlnet_units and "controlnet" not in entry.tasks:
        raise FailedPrecondition(f"model {entry.id!r} has no ControlNet pipeline")
    for i, unit in enumerate(request.controlnet_units):
        if not cache.known_controlnet(unit.model):
            raise NotFound(f"controlnet_units[{i}].model: ControlNet model {unit.model!r} is not served here")
    if request.sampler and request.sampler not in entry.samplers:
        raise InvalidArgument(
            "sampler",
            f"{request.sampler!r} does not work with model {entry.id!r}; valid: {', '.join(entry.samplers)}",
        )
    if request.sampler and request.steps < entry.samplers[request.sampler].min_steps:
        low = entry.samplers[request.sampler].min_steps
        raise InvalidArgument(
            "steps",
            f"sampler {request.sampler!r} needs at least {low} steps; allowed [{low}, {limits.max_steps}]",
        )
    if request.sigma_schedule != "default":
        supported = entry.samplers[request.sampler].sigma_schedules if request.sampler else ()
        if request.sigma_schedule not in supported:
            raise InvalidArgument(
                "sigma_schedule",
                f"{request.sigma_schedule} is not supported by sampler {request.sampler or 'default'!r}; "
                f"supported: default{''.join(', ' + s for s in supported)}",
            )
    if request.clip_skip > 1 and request.clip_skip > entry.text_layers:
        raise InvalidArgument(
            "clip_skip", f"{request.clip_skip} is out of range; allowed [0, {entry.text_layers}]"
        )
    return with_size(request, entry.default_size, limits)


def sampler_label(entry: CacheEntry, request: GenerationRequest) -> str:
    """The A1111 name of the sampler used (the model's own scheduler mapped back when unset)."""
    if request.sampler:
        return request.sampler
    config = entry.scheduler_config
    own = config.get("_class_name", "")
    matches = (
        s.name
        for s in SAMPLERS.values()
        if s.scheduler == own
        and all(config.get(k) == v for k, v in s.options.items() if k != "lower_order_final")
    )
    return next(matches, own)


def _mask(mask: MaskSpec, size: tuple[int, int]) -> Image.Image:
    image = mask.image.convert("L")
    if mask.invert:
        image = ImageOps.invert(image)
    if mask.blur:
        image = image.filter(ImageFilter.GaussianBlur(mask.blur))
    return image.resize(size, Image.Resampling.LANCZOS)


def _fill(image: Image.Image, mask: Image.Image, fill: str) -> Image.Image:
    """A1111's "masked content": what the masked area holds before denoising."""
    if fill == "fill":  # the surrounding colours, smeared in by repeated blurs
        smeared, keep = image, ImageOps.invert(mask)
        for radius in (64, 32, 16, 8, 4, 2, 1):
            smeared = Image.composite(image, smeared.filter(ImageFilter.GaussianBlur(radius)), keep)
        return Image.composite(smeared, image, mask)
    if fill == "latent_nothing":  # mid-grey encodes to near-zero latents
        return Image.composite(Image.new("RGB", image.size, (127, 127, 127)), image, mask)
    return image


def _new_scheduler(entry: CacheEntry, key: tuple[str, str]) -> Any:
    """A copy of a never-run template (6x cheaper than from_config)."""
    template = entry.scheduler_templates.get(key)
    if template is None:
        template = entry.scheduler_templates[key] = build_scheduler(entry.scheduler_config, *key)
    return copy.deepcopy(template)


def _fresh_scheduler(entry: CacheEntry, key: tuple[str, str]) -> Any:
    """A scheduler no other call has touched: the spare made after the last call, else a new copy.
    Schedulers keep per-run state, so calls never share one."""
    spare = entry.spare_schedulers.pop(key, None)
    return spare if spare is not None else _new_scheduler(entry, key)


def make_spare_scheduler(entry: CacheEntry, call: PreparedCall) -> None:
    """Copies the next call's scheduler once this call's results are out (on the worker's encoder
    thread): the copy (~0.5 ms on a slow CPU) stays off the next request's path and the device's. The
    device thread may take the spare at any time; `dict.pop` hands it to one call only."""
    if call.scheduler_key not in entry.spare_schedulers:
        entry.spare_schedulers[call.scheduler_key] = _new_scheduler(entry, call.scheduler_key)


@dataclass
class PreparedCall:
    jobs: list[Job]
    requests: list[GenerationRequest]  # resolved: size filled in, seed set
    seeds: list[list[int]]  # per job, one per image
    pipe: Any
    kwargs: dict[str, Any]
    total_steps: int
    sampler: str
    scheduler_key: tuple[str, str]  # (sampler, sigma schedule) as requested


def prepare(
    cache: ModelCache, entry: CacheEntry, jobs: list[Job], requests: list[GenerationRequest], device: Device
) -> PreparedCall:
    """The pipeline and its arguments for jobs sharing a batch key (or a single job)."""
    first = requests[0]
    controlnet_ids = tuple(u.model for u in first.controlnet_units)
    pipe = cache.pipeline_for(entry, first.task, controlnet_ids)
    scheduler_key = (first.sampler, first.sigma_schedule)
    scheduler = _fresh_scheduler(entry, scheduler_key)
    strength = first.strength
    if first.mask is not None and first.mask.fill == "latent_noise":
        strength = 1.0  # masked area starts from pure noise
    plan = (first.sampler, first.sigma_schedule, first.steps, None if first.task == "txt2img" else strength)
    if plan not in entry.plans:  # set_timesteps costs; the pipeline calls it again anyway
        entry.plans[plan] = planned_steps(scheduler, first.steps, plan[3])
    total = entry.plans[plan]
    pipe.scheduler = scheduler  # a fresh one per call: schedulers keep per-run state

    seeds, prompts, negatives, generators = [], [], [], []
    resolved = []
    for request in requests:
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_RANDOM_SEED)
        job_seeds = [seed + i for i in range(request.num_images)]
        seeds.append(job_seeds)
        resolved.append(replace(request, seed=seed))
        prompts += [request.prompt] * request.num_images
        negatives += [request.negative_prompt] * request.num_images
        generators += [device.generator(s) for s in job_seeds]
    count = len(prompts)
    size = (first.width, first.height)
    kwargs: dict[str, Any] = {
        "prompt": prompts,
        "negative_prompt": negatives,
        "num_inference_steps": first.steps,
        "guidance_scale": first.guidance_scale,
        "generator": generators,
        "num_images_per_prompt": 1,  # one prompt per image: any image can be reproduced alone
        "output_type": "pil",
        "height": first.height,
        "width": first.width,
    }
    if first.clip_skip > 1:
        kwargs["clip_skip"] = first.clip_skip - 1  # diffusers counts skipped layers: A1111 2 = diffusers 1
    if first.task != "txt2img":
        assert first.init_image is not None
        init = first.init_image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        if first.task == "inpaint":
            assert first.mask is not None
            mask = _mask(first.mask, size)
            init = _fill(init, mask, first.mask.fill)
            kwargs["mask_image"] = [mask] * count
        kwargs["image"] = [init] * count
        kwargs["strength"] = strength
    if first.controlnet_units:
        images = [
            u.image.convert("RGB").resize(size, Image.Resampling.LANCZOS) for u in first.controlnet_units
        ]
        single = len(images) == 1
        kwargs["control_image" if first.task != "txt2img" else "image"] = images[0] if single else images
        kwargs["controlnet_conditioning_scale"] = [u.scale for u in first.controlnet_units]
        kwargs["control_guidance_start"] = [u.start for u in first.controlnet_units]
        kwargs["control_guidance_end"] = [u.end for u in first.controlnet_units]
        if single:
            for key in ("controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end"):
                kwargs[key] = kwargs[key][0]
    _fit_signature(pipe, kwargs)
    label = sampler_label(entry, first)
    return PreparedCall(jobs, resolved, seeds, pipe, kwargs, total, label, scheduler_key)


@functools.cache
def _named_parameters(pipeline_class: type) -> frozenset[str]:
    variadic = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    parameters = inspect.signature(pipeline_class.__call__).parameters
    return frozenset(name for name, p in parameters.items() if p.kind not in variadic)


def _fit_signature(pipe: Any, kwargs: dict[str, Any]) -> None:
    """Drops arguments a pipeline family does not take (FLUX has no negative prompt, img2img pipelines
    take their size from the image); refuses the ones the user really asked for."""
    accepted = _named_parameters(type(pipe))
    for key in list(kwargs):
        if key in accepted:
            continue
        value = kwargs.pop(key)
        if key == "negative_prompt" and any(value):
            raise InvalidArgument("negative_prompt", f"{type(pipe).__name__} takes no negative prompt")
        if key == "clip_skip":
            raise InvalidArgument("clip_skip", f"{type(pipe).__name__} does not support clip skip")


def encode_images(
    call: PreparedCall, images: list[Image.Image], png_level: int
) -> list[list[GeneratedImage]]:
    """Splits the call's images back per job and encodes them with their infotext."""
    results, offset = [], 0
    for request, seeds in zip(call.requests, call.seeds, strict=True):
        encoded = []
        for image, seed in zip(images[offset : offset + len(seeds)], seeds, strict=True):
            text = infotext(request, seed, call.sampler)
            data = encode_image(
                image,
                request.output_format,
                request.output_quality or 95,
                {"parameters": text} if request.output_format == "PNG" else None,
                png_level,
            )
            encoded.append(
                GeneratedImage(
                    EncodedImage(data, MEDIA_TYPES[request.output_format], *image.size), seed, text
                )
            )
        results.append(encoded)
        offset += len(seeds)
    return results
