"""Domain records of the registry, free of protobuf. Enumerations are lower-case names ("diffusion",
"fp16", "tensorrt", "serving"); "" means unspecified. Times are microseconds since the epoch."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("diffusion", "vision_language")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8", "int4")
BACKENDS = ("torch", "onnx", "tensorrt")
ACCELERATORS = ("cpu", "cuda", "rocm", "xpu", "mps")
INSTANCE_STATES = ("starting", "serving", "draining", "down")
LIVE_STATES = ("starting", "serving", "draining")

# Tasks each family can be catalogued with; one place to extend.
TASKS = {
    "diffusion": ("txt2img", "img2img", "inpaint", "controlnet", "upscale"),
    "vision_language": ("chat", "caption", "vqa", "ocr", "grounding", "multi_image"),
}


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Variant:
    name: str
    size: str = ""
    parameter_count: int = 0
    precision: str = ""
    backend: str = ""
    context_window: int = 0
    memory_bytes: int = 0
    # Empty = fits any hardware.
    hardware_targets: list[str] = field(default_factory=list)
    source: str = ""


@dataclass
class ModelRecord:
    id: str
    family: str
    source: str
    revision: str = ""
    tasks: list[str] = field(default_factory=list)
    default_variant: str = ""
    variants: list[Variant] = field(default_factory=list)
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    create_time: int = 0
    update_time: int = 0

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)

    def same_content(self, other: ModelRecord) -> bool:
        """Equal apart from timestamps (catalog seeding uses it to stay idempotent)."""
        return dataclasses.replace(self, create_time=0, update_time=0) == dataclasses.replace(
            other, create_time=0, update_time=0
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelRecord:
        values = dict(data)
        values["variants"] = [Variant(**v) for v in values.get("variants", [])]
        return cls(**values)


@dataclass
class Artifact:
    id: str
    model_id: str
    variant: str
    backend: str
    gpu_arch: str
    shape_profile: str = ""
    size_bytes: int = 0
    checksum: str = ""
    uri: str = ""
    create_time: int = 0

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.model_id, self.variant, self.backend, self.gpu_arch, self.shape_profile)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Artifact:
        return cls(**data)


@dataclass
class Hardware:
    type: str
    accelerator: str = ""
    arch: str = ""
    device_count: int = 0
    device_memory_bytes: int = 0


@dataclass
class Load:
    queue_depth: int = 0
    in_flight: int = 0
    memory_used_bytes: int = 0
    queue_depth_by_model: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadedModelRef:
    model_id: str
    variant: str = ""


@dataclass
class Instance:
    id: str
    endpoint: str
    hardware: Hardware
    families: list[str] = field(default_factory=list)
    loaded_models: list[LoadedModelRef] = field(default_factory=list)
    capacity: int = 1
    load: Load = field(default_factory=Load)
    state: str = "serving"
    register_time: int = 0
    heartbeat_time: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    version: str = ""

    @property
    def load_score(self) -> float:
        """In-flight plus queued work relative to capacity; lower is better."""
        return (self.load.queue_depth + self.load.in_flight) / max(self.capacity, 1)

    def has_loaded(self, model_id: str, variant: str = "", default_variant: str = "") -> bool:
        """Whether the model is loaded; with `variant`, that variant (a ref without one is the default)."""
        return any(
            ref.model_id == model_id and (not variant or (ref.variant or default_variant) == variant)
            for ref in self.loaded_models
        )

    def loaded_variant(self, model_id: str) -> str:
        return next((ref.variant for ref in self.loaded_models if ref.model_id == model_id), "")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Instance:
        values = dict(data)
        values["hardware"] = Hardware(**values["hardware"])
        values["load"] = Load(**values.get("load", {}))
        values["loaded_models"] = [LoadedModelRef(**ref) for ref in values.get("loaded_models", [])]
        return cls(**values)


Record = ModelRecord | Artifact | Instance
KINDS: dict[str, type] = {"model": ModelRecord, "artifact": Artifact, "instance": Instance}
CHANGE_TYPES = ("created", "updated", "deleted", "synced")


def kind_of(record: Record) -> str:
    return {ModelRecord: "model", Artifact: "artifact", Instance: "instance"}[type(record)]


@dataclass(frozen=True)
class Change:
    """One entry of the change log. `record` is None only for the "synced" marker."""

    revision: int
    change_type: str
    record: Record | None = None


@dataclass(frozen=True)
class Page:
    items: list[Any]
    next_page_token: str
    total_size: int
