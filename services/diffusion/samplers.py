"""A1111 / SD.Next sampler names -> diffusers schedulers, built per request from the model's own config.

A scheduler holds per-run state (timesteps, step index, multistep history), so every job gets a fresh
one made with `from_config(model_scheduler_config, **overrides)`; the loaded pipeline's own scheduler
only supplies the config. Which samplers work depends on the model's config and on optional packages
(LMS needs scipy, DPM++ SDE needs torchsde): `probe_samplers` runs each one through a tiny denoising
loop and keeps the ones that really work.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import InvalidArgument

log = logging.getLogger(__name__)

SIGMA_SCHEDULES = ("default", "karras", "exponential", "beta")
_SIGMA_FLAGS = {
    "karras": "use_karras_sigmas",
    "exponential": "use_exponential_sigmas",
    "beta": "use_beta_sigmas",
}


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    scheduler: str  # diffusers class name
    options: dict[str, Any] = field(default_factory=dict)


# Spelling as in A1111 / SD.Next; the mapping follows diffusers' own A1111 equivalence table.
_MULTISTEP = "DPMSolverMultistepScheduler"
_SINGLESTEP = "DPMSolverSinglestepScheduler"
_DPMPP = {"algorithm_type": "dpmsolver++"}
_SINGLE = {**_DPMPP, "lower_order_final": True}
SAMPLERS: dict[str, SamplerSpec] = {
    s.name: s
    for s in [
        SamplerSpec("Euler", "EulerDiscreteScheduler"),
        SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler"),
        SamplerSpec("Heun", "HeunDiscreteScheduler"),
        SamplerSpec("DPM2", "KDPM2DiscreteScheduler"),
        SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler"),
        SamplerSpec("DPM++ 2M", _MULTISTEP, {**_DPMPP, "solver_order": 2}),
        SamplerSpec("DPM++ 3M", _MULTISTEP, {**_DPMPP, "solver_order": 3}),
        SamplerSpec("DPM++ 2M SDE", _MULTISTEP, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
        SamplerSpec("DPM++ 1S", _SINGLESTEP, {**_SINGLE, "solver_order": 1}),
        SamplerSpec("DPM++ 2S", _SINGLESTEP, {**_SINGLE, "solver_order": 2}),
        SamplerSpec("DPM++ SDE", "DPMSolverSDEScheduler"),
        SamplerSpec("DDIM", "DDIMScheduler"),
        SamplerSpec("DDPM", "DDPMScheduler"),
        SamplerSpec("PNDM", "PNDMScheduler"),
        SamplerSpec("LMS", "LMSDiscreteScheduler"),
        SamplerSpec("UniPC", "UniPCMultistepScheduler"),
        SamplerSpec("DEIS", "DEISMultistepScheduler"),
        SamplerSpec("SA Solver", "SASolverScheduler"),
        SamplerSpec("LCM", "LCMScheduler"),
        SamplerSpec("TCD", "TCDScheduler"),
    ]
}


@dataclass(frozen=True)
class SamplerInfo:
    """A sampler that works with a given model: its name, class and the sigma schedules it accepts."""

    name: str
    scheduler: str
    sigma_schedules: tuple[str, ...]  # besides "default"
    min_steps: int = 1  # PNDM's warm-up needs 4


def _scheduler_class(class_name: str) -> type:
    import diffusers  # here, not at the top: the server process uses the table above without torch

    # diffusers raises ImportError on attribute access when a backend (scipy, torchsde) is missing
    return getattr(diffusers, class_name)


def build_scheduler(config: Any, sampler: str, sigma_schedule: str = "default") -> Any:
    """A fresh scheduler for one job. Empty sampler = the model's own scheduler class."""
    if not sampler:
        base = _scheduler_class(config["_class_name"]) if "_class_name" in config else None
        if base is None:
            raise InvalidArgument("sampler", "the model's scheduler config names no class; choose a sampler")
        spec = SamplerSpec("", config["_class_name"])
    else:
        spec = SAMPLERS[sampler]
    cls = _scheduler_class(spec.scheduler)
    options = dict(spec.options)
    if sigma_schedule != "default":
        flag = _SIGMA_FLAGS[sigma_schedule]
        accepted = inspect.signature(cls.__init__).parameters
        if flag not in accepted:
            label = sampler or spec.scheduler
            raise InvalidArgument("sigma_schedule", f"{sigma_schedule} is not supported by sampler {label!r}")
        options.update({f: False for f in _SIGMA_FLAGS.values() if f in accepted})
        options[flag] = True
    return cls.from_config(config, **options)


def _runs(scheduler: Any, steps: int = 4) -> bool:
    """Runs a tiny denoising loop with a fake model output; True when it completes with finite values."""
    import torch

    scheduler.set_timesteps(steps, device="cpu")
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator) * float(getattr(scheduler, "init_noise_sigma", 1.0))
    accepts_generator = "generator" in inspect.signature(scheduler.step).parameters
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, t)
        extra = {"generator": generator} if accepts_generator else {}
        sample = scheduler.step(0.1 * model_input, t, sample, **extra).prev_sample
    return bool(torch.isfinite(sample).all())


def probe_samplers(config: Any) -> dict[str, SamplerInfo]:
    """The samplers (and their sigma schedules) that construct and run with this scheduler config."""
    return dict(_probe(json.dumps(dict(config), sort_keys=True, default=str)))


@functools.lru_cache(maxsize=64)
def _probe(config_json: str) -> tuple[tuple[str, SamplerInfo], ...]:
    """Probing costs ~0.5 s on CPU; models sharing a scheduler config (variants, reloads) share it."""
    config = json.loads(config_json)
    working: dict[str, SamplerInfo] = {}
    for spec in SAMPLERS.values():
        min_steps = _min_steps(config, spec.name)
        if min_steps is None:
            continue
        schedules = []
        for schedule in SIGMA_SCHEDULES[1:]:
            try:
                if _runs(build_scheduler(config, spec.name, schedule)):
                    schedules.append(schedule)
            except Exception as error:
                log.debug("sampler %s with %s sigmas unavailable: %s", spec.name, schedule, error)
        working[spec.name] = SamplerInfo(spec.name, spec.scheduler, tuple(schedules), min_steps)
    return tuple(working.items())


def _min_steps(config: Any, sampler: str, most: int = 4) -> int | None:
    """The fewest steps the sampler runs with (None: it does not work with this config at all)."""
    for steps in range(1, most + 1):
        try:
            if _runs(build_scheduler(config, sampler), steps):
                return steps
        except ImportError as error:  # missing optional package (scipy, torchsde)
            log.debug("sampler %s unavailable: %s", sampler, error)
            return None
        except Exception as error:  # incompatible config, or too few steps
            log.debug("sampler %s with %d steps fails: %s", sampler, steps, error)
    return None


def planned_steps(scheduler: Any, steps: int, strength: float | None) -> int:
    """Denoising iterations the pipeline will run: scheduler order and img2img strength included.
    Mirrors diffusers' get_timesteps; the scheduler is set up again by the pipeline itself."""
    try:
        scheduler.set_timesteps(steps, device="cpu")
    except ValueError as error:  # e.g. LCM refuses more steps than its original schedule
        raise InvalidArgument("steps", f"{steps} steps do not work with this sampler: {error}") from None
    total = len(scheduler.timesteps)
    if strength is None:
        return total
    init_steps = min(int(steps * strength), steps)
    if init_steps < 1:
        raise InvalidArgument(
            "strength", f"steps × strength must be at least 1 (steps={steps}, strength={strength:g})"
        )
    return max(total - max(steps - init_steps, 0) * scheduler.order, 1)
