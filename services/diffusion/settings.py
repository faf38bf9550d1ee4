"""Settings of the diffusion service (flags / LUMISERVE_* variables), on top of the common server ones."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from services.common.registration import RegistrationSettings
from services.common.settings import (
    ServerSettings,
    SettingsError,
    describe,
    parse_field,
    setting,
    split_model_entry,
)
from services.diffusion.samplers import SAMPLERS

DTYPES = ("auto", "fp32", "fp16", "bf16")
OFFLOAD = ("none", "model", "sequential")


@dataclass(frozen=True)
class ModelConfig:
    """One servable model: its id, where it loads from, its memory options and its own generation
    defaults (what its card recommends) for what a request leaves unset."""

    id: str
    source: str
    dtype: str = "auto"
    variant: str = ""
    revision: str = ""
    attention_slicing: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    offload: str = "none"
    pin: bool = False
    steps: int = 0  # 0: the service's default_steps
    guidance_scale: float | None = None  # None: the service's default_guidance
    sampler: str = ""  # "": the model's own scheduler

    def __post_init__(self) -> None:
        if not self.id or not self.source:
            raise SettingsError(f"model {self.id!r}: both id and source are required")
        if self.steps < 0 or (self.guidance_scale is not None and self.guidance_scale < 0):
            raise SettingsError(f"model {self.id!r}: steps and guidance_scale must be >= 0")
        if self.sampler and self.sampler not in SAMPLERS:
            raise SettingsError(
                f"model {self.id!r}: sampler {self.sampler!r} must be one of {', '.join(SAMPLERS)}"
            )
        if self.dtype not in DTYPES:
            raise SettingsError(f"model {self.id!r}: dtype {self.dtype!r} must be one of {', '.join(DTYPES)}")
        if self.offload not in OFFLOAD:
            raise SettingsError(
                f"model {self.id!r}: offload {self.offload!r} must be one of {', '.join(OFFLOAD)}"
            )


def _option(model_id: str, option: str) -> tuple[str, object]:
    """One `key=value` model option, parsed as its ModelConfig field's type."""
    key, sep, raw = (part.strip() for part in option.partition("="))
    keys = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in ("id", "source")]
    if not sep or key not in keys:
        raise SettingsError(
            f"model {model_id!r}: option {option!r} is not key=value with key one of {', '.join(keys)}"
        )
    return key, parse_field(ModelConfig, key, raw, f"model {model_id!r}: {key}")


def parse_pairs(items: list[str], what: str) -> list[ModelConfig]:
    """'id=source;key=value;...' entries (a bare source serves under its own name) into model configs;
    the options are ModelConfig fields, e.g. `toy=models/toyworld-sd;steps=25;guidance_scale=5`."""
    configs = []
    for item in items:
        model_id, source, options = split_model_entry(item)
        fields = dict(_option(model_id, option) for option in options)
        configs.append(ModelConfig(id=model_id, source=source, **fields))  # type: ignore[arg-type]
    ids = [c.id for c in configs]
    if len(set(ids)) != len(ids):
        raise SettingsError(f"{describe(what)}: duplicate ids in {ids}")
    return configs


@dataclass
class DiffusionSettings(RegistrationSettings, ServerSettings):
    """lumiserve diffusion: serves diffusers pipelines over gRPC."""

    port: int = setting(50061, "gRPC port; 0 picks a free one.", min=0, max=65535)
    metrics_port: int = setting(
        9161, "Prometheus /metrics HTTP port; 0 picks a free one, -1 disables.", min=-1, max=65535
    )
    models: list[str] = setting(
        ["toyworld-sd=models/toyworld-sd;steps=25;guidance_scale=5"],
        "Models to serve, comma-separated id=source[;option=value...] (source: HF repo id or local folder; "
        "options: ModelConfig fields, e.g. steps=25;guidance_scale=5;sampler=DPM++ 2M;dtype=fp16).",
    )
    models_file: Path | None = setting(
        None, "YAML with `models:` and `controlnets:` lists of {id, source, dtype, vae_tiling, steps, ...}."
    )
    controlnets: list[str] = setting([], "ControlNet models, comma-separated id=source pairs.")
    engine: str = setting(
        "process",
        "Where the device work runs: process (a child process: the denoising loop never waits for the "
        "server's event loop, and a crash there does not take the server down) or thread (in the server "
        "process).",
        choices=("process", "thread"),
    )
    pin_cpus: bool = setting(
        True,
        "With engine=process on 2+ CPUs: the server keeps the last allowed CPU and the engine the others, "
        "so that the server's work never preempts the denoising loop (turn off where something else "
        "manages CPU placement).",
    )
    load_at_start: bool = setting(True, "Load the configured models at start (health NOT_SERVING till done).")
    device: str = setting("auto", "auto, cpu, cuda, cuda:N, rocm, xpu or mps.")
    dtype: str = setting(
        "auto", "Default weight dtype (auto: fp16 on accelerators, fp32 on CPU).", choices=DTYPES
    )
    num_threads: int = setting(0, "torch CPU threads; 0 = torch's default.", min=0, max=1024)
    memory_budget_mb: int = setting(
        0, "Model cache budget in MiB; 0 = 0.9 x device memory, 0.5 x RAM on CPU.", min=0
    )
    max_queue: int = setting(32, "Jobs waiting per model before RESOURCE_EXHAUSTED.", min=1, max=100000)
    model_streak: int = setting(
        8, "Jobs served in a row for the loaded model before another model's waiting job goes first.", min=1
    )
    batch_max_size: int = setting(8, "Images per batched pipeline call (1 disables batching).", min=1, max=64)
    batch_max_delay_ms: float = setting(
        0.0, "How long a job waits for compatible jobs to batch with (0 = only those already queued).", min=0
    )
    job_history: int = setting(1000, "Finished jobs remembered for GetJob.", min=1)
    png_compress_level: int = setting(
        6,
        "zlib level of PNG results and previews, 0-9: 1 encodes a 512x512 image about twice as fast as 6 "
        "for about a tenth more bytes.",
        min=0,
        max=9,
    )
    default_steps: int = setting(20, "Steps when a request asks for 0.", min=1, max=1000)
    max_steps: int = setting(150, "Largest steps a request may ask.", min=1, max=1000)
    default_guidance: float = setting(7.0, "Guidance scale when a request leaves it unset.", min=0)
    max_guidance: float = setting(30.0, "Largest guidance scale.", min=0)
    min_size: int = setting(64, "Smallest width / height in pixels.", min=8)
    max_size: int = setting(2048, "Largest width / height in pixels.", min=8)
    max_pixels: int = setting(4096 * 4096, "Largest input image in pixels (checked before decoding).", min=64)
    max_images: int = setting(8, "Largest num_images per request.", min=1, max=64)
    max_controlnet_units: int = setting(4, "Most ControlNet units per request.", min=0, max=16)
    max_prompt_chars: int = setting(8000, "Longest prompt or negative prompt.", min=1)

    def validate(self) -> None:
        super().validate()
        if self.min_size > self.max_size:
            raise SettingsError(f"{describe('min_size')} must be <= {describe('max_size')}")
        if self.models_file is not None and not self.models_file.is_file():
            raise SettingsError(f"{describe('models_file')}: {self.models_file} does not exist")
        for config in self.model_configs():  # a model's defaults must pass the request limits
            for name, value, limit in [
                ("steps", config.steps, "max_steps"),
                ("guidance_scale", config.guidance_scale or 0, "max_guidance"),
            ]:
                highest = getattr(self, limit)
                if value > highest:
                    raise SettingsError(
                        f"model {config.id!r}: {name}={value} is above {describe(limit)}, {highest}"
                    )
        self.controlnet_configs()

    def _file(self) -> dict:
        if self.models_file is None:
            return {}
        data = yaml.safe_load(self.models_file.read_text()) or {}
        if not isinstance(data, dict):
            raise SettingsError(f"{self.models_file}: expected a mapping with `models:` / `controlnets:`")
        return data

    def _configs(self, key: str, pairs: list[str]) -> list[ModelConfig]:
        configs = parse_pairs(pairs, key)
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        for entry in self._file().get(key) or []:
            unknown = set(entry) - names
            if unknown:
                raise SettingsError(f"{self.models_file}: unknown keys {sorted(unknown)} in {key}")
            configs = [c for c in configs if c.id != entry.get("id")]
            configs.append(ModelConfig(**entry))
        return configs

    def model_configs(self) -> list[ModelConfig]:
        return self._configs("models", self.models)

    def controlnet_configs(self) -> list[ModelConfig]:
        return self._configs("controlnets", self.controlnets)
