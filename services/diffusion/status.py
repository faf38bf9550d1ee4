"""What the data plane reports about its models: plain dataclasses, no torch. They cross the engine's
pipe and become protobuf in the servicer, whose process never imports torch."""

from __future__ import annotations

from dataclasses import dataclass

from services.diffusion.settings import ModelConfig


@dataclass(frozen=True)
class ModelStatus:
    """One row of ListModels: a loaded, loading or failed model."""

    config: ModelConfig
    state: str  # "loading", "ready", "failed"
    device: str = ""
    precision: str = ""
    memory_bytes: int = 0
    load_seconds: float = 0.0
    last_used: float = 0.0
    tasks: tuple[str, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class CacheView:
    """The model cache as ListModels shows it."""

    models: list[ModelStatus]
    budget_bytes: int
    used_bytes: int
