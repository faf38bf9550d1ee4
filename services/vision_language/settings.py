"""Settings of the vision-language service (flags and LUMISERVE_* variables; `lumiserve vlm --help`)."""

from __future__ import annotations

import dataclasses

from services.common.registration import RegistrationSettings
from services.common.settings import ServerSettings, SettingsError, describe, setting
from services.vision_language.catalog import ModelSpec, parse_model_entry


@dataclasses.dataclass
class VisionLanguageSettings(RegistrationSettings, ServerSettings):
    """lumiserve vision-language service: LLaVA / LLaVA-NeXT chat, captioning, VQA and OCR."""

    port: int = setting(50062, "gRPC port; 0 picks a free one.", min=0, max=65535)
    metrics_port: int = setting(
        9162, "Prometheus /metrics HTTP port; 0 picks a free one, -1 disables.", min=-1, max=65535
    )
    models: list[str] = setting(
        ["toyworld-llava=models/toyworld-llava;family=toyworld"],
        "Models loaded at start, comma-separated entries ID=SOURCE[;key=value...] where SOURCE is a "
        "Hugging Face repo id or a local folder and keys are dtype (auto|float32|float16|bfloat16), "
        "context_window, max_images, family (llava|llava_next|toyworld|generic), variant, revision, "
        "device and pin (true|false).",
    )
    default_model: str = setting("", "Model used when a request names none; empty = the first of models.")
    device: str = setting("auto", "Torch device of the models: auto (cuda:0 when available), cpu, cuda:N.")
    dtype: str = setting(
        "auto",
        "Default weight dtype; auto = bfloat16/float16 on CUDA, float32 on CPU.",
        choices=["auto", "float32", "float16", "bfloat16"],
    )
    memory_budget_bytes: int = setting(
        0, "Memory the model cache may hold; least recently used models are evicted. 0 = no limit.", min=0
    )
    load_on_demand: bool = setting(True, "Load a known but unloaded model when a request names it.")
    max_batch_size: int = setting(8, "Concurrent requests to one model generated together.", min=1, max=256)
    max_batch_wait_ms: float = setting(
        2.0, "How long the first request of a batch waits for others to join it.", min=0, max=1000
    )
    stream_interval_ms: float = setting(
        10.0,
        "Shortest interval between two token messages of one stream; tokens generated faster are sent "
        "together in one delta (a model slower than this streams every token on its own).",
        min=0,
        max=1000,
    )
    max_queue: int = setting(64, "Requests waiting per model before RESOURCE_EXHAUSTED.", min=1)
    default_max_new_tokens: int = setting(256, "max_new_tokens when a request sets none.", min=1)
    max_new_tokens_limit: int = setting(4096, "Largest max_new_tokens a request may ask for.", min=1)
    max_images_per_request: int = setting(
        8, "Images one conversation may hold, unless the model entry sets max_images.", min=1
    )
    max_image_bytes: int = setting(20 * 1024 * 1024, "Largest encoded image accepted.", min=1024)
    max_image_pixels: int = setting(4096 * 4096, "Largest image (width x height) accepted.", min=64)
    max_caption_items: int = setting(4096, "Images one CaptionBatch call may carry.", min=1)
    session_ttl_seconds: int = setting(1800, "Idle time after which a session expires (default).", min=1)
    max_session_ttl_seconds: int = setting(86400, "Largest ttl_seconds a session may ask for.", min=1)
    max_sessions: int = setting(1024, "Sessions kept; the least recently used is evicted beyond.", min=1)
    session_kv_budget_bytes: int = setting(
        2 * 1024**3,
        "Memory the sessions' KV caches may hold; least recently used caches are dropped beyond "
        "(their history stays; the next turn recomputes it).",
        min=0,
    )
    torch_threads: int = setting(
        0, "torch.set_num_threads for the compute worker; 0 = torch's default.", min=0
    )

    def model_specs(self) -> list[ModelSpec]:
        specs = []
        for entry in self.models:
            try:
                specs.append(parse_model_entry(entry, default_dtype=self.dtype))
            except ValueError as error:
                raise SettingsError(f"{describe('models')}: {error}") from None
        return specs

    def validate(self) -> None:
        super().validate()
        specs = self.model_specs()
        ids = [spec.model for spec in specs]
        if len(set(ids)) != len(ids):
            raise SettingsError(f"{describe('models')}: model ids must be unique, got {', '.join(ids)}")
        if self.default_model and self.default_model not in ids:
            raise SettingsError(
                f"{describe('default_model')}={self.default_model!r}: "
                f"not one of the models ({', '.join(ids)})"
            )
        if self.max_session_ttl_seconds < self.session_ttl_seconds:
            raise SettingsError(
                f"{describe('max_session_ttl_seconds')} must be >= {describe('session_ttl_seconds')}"
            )
