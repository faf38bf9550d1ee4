"""Models held in memory: AutoModelForImageTextToText + AutoProcessor, LRU under a memory budget.

Loading and unloading are blocking (run them on the device worker); lookups are cheap and thread-safe.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from services.common.errors import FailedPrecondition, NotFound, ResourceExhausted
from services.vision_language.catalog import ModelSpec

log = logging.getLogger(__name__)

TASKS = ("chat", "caption", "vqa", "ocr")
FAMILY_OF_MODEL_TYPE = {"llava": "llava", "llava_next": "llava_next"}
FALLBACK_CONTEXT_WINDOW = 4096


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: Any  # a transformers PreTrainedModel
    processor: Any  # its ProcessorMixin
    family: str
    device: str
    dtype: torch.dtype
    context_window: int
    max_images: int
    memory_bytes: int
    load_seconds: float
    image_token_id: int | None
    eos_token_ids: frozenset[int]
    pad_token_id: int
    last_used: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.spec.model

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer


def resolve_device(device: str) -> str:
    if device in ("", "auto"):
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def _module_bytes(model: torch.nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _local_weight_bytes(source: str) -> int:
    """Size of the safetensors files of a local folder (0 for a repo id): the estimate before loading."""
    folder = Path(source)
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors")) if folder.is_dir() else 0


def _context_window(config: Any) -> int:
    text_config = getattr(config, "text_config", None) or config
    for name in ("max_position_embeddings", "max_sequence_length", "n_positions"):
        value = getattr(text_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return FALLBACK_CONTEXT_WINDOW


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


def load_model(spec: ModelSpec, default_device: str, default_max_images: int) -> LoadedModel:
    """from_pretrained (safetensors only) of the model and its processor, moved to the device."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    looks_local = spec.source.startswith(("/", "./", "../", "~")) or Path(spec.source).exists()
    if looks_local and not Path(spec.source).expanduser().is_dir():
        raise NotFound(f"model {spec.model!r}: folder {spec.source} does not exist")
    source = str(Path(spec.source).expanduser()) if looks_local else spec.source
    device = resolve_device(spec.device or default_device)
    dtype = resolve_dtype(spec.dtype, device)
    start = time.perf_counter()
    try:
        processor = AutoProcessor.from_pretrained(source, revision=spec.revision)
        model = AutoModelForImageTextToText.from_pretrained(
            source, revision=spec.revision, dtype=dtype, use_safetensors=True
        )
    except (OSError, ValueError) as error:
        raise NotFound(f"model {spec.model!r}: cannot load {spec.source}: {error}") from None
    model = model.to(device).eval()
    tokenizer = processor.tokenizer
    if not (getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)):
        raise FailedPrecondition(f"model {spec.model!r} ({spec.source}) has no chat template")
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    image_token_id = getattr(model.config, "image_token_id", None) or getattr(
        model.config, "image_token_index", None
    )
    return LoadedModel(
        spec=spec,
        model=model,
        processor=processor,
        family=spec.family or FAMILY_OF_MODEL_TYPE.get(model.config.model_type, "generic"),
        device=device,
        dtype=dtype,
        context_window=spec.context_window or _context_window(model.config),
        max_images=spec.max_images or default_max_images,
        memory_bytes=_module_bytes(model),
        load_seconds=time.perf_counter() - start,
        image_token_id=image_token_id,
        eos_token_ids=_eos_ids(model, tokenizer),
        pad_token_id=pad,
    )


class ModelCache:
    """Known specs (configured and ever loaded) and the loaded models, least recently used first out."""

    def __init__(
        self,
        specs: list[ModelSpec],
        memory_budget_bytes: int,
        default_device: str,
        default_max_images: int,
        is_busy: Callable[[str], bool] = lambda model: False,
        loader: Callable[[ModelSpec, str, int], LoadedModel] = load_model,
    ) -> None:
        self.specs: dict[str, ModelSpec] = {spec.model: spec for spec in specs}
        self.budget = memory_budget_bytes
        self.default_device = default_device
        self.default_max_images = default_max_images
        self.is_busy = is_busy
        self._loader = loader
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, model: str) -> LoadedModel | None:
        with self._lock:
            loaded = self._loaded.get(model)
        if loaded is not None:
            loaded.last_used = time.time()
        return loaded

    def spec(self, model: str) -> ModelSpec:
        spec = self.specs.get(model)
        if spec is None:
            known = ", ".join(sorted(self.specs)) or "none"
            raise NotFound(f"model {model!r} is not known to this service (known: {known})")
        return spec

    def device_of(self, model: str) -> str:
        return resolve_device(self.spec(model).device or self.default_device)

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._loaded.values())

    @property
    def used_bytes(self) -> int:
        return sum(m.memory_bytes for m in self.loaded())

    def load(self, spec: ModelSpec) -> tuple[LoadedModel, list[str]]:
        """Loads `spec` unless loaded; evicts least recently used unpinned idle models to stay in budget."""
        existing = self.get(spec.model)
        if existing is not None:
            return existing, []
        evicted = self._make_room(_local_weight_bytes(spec.source), spec.model)
        loaded = self._loader(spec, self.default_device, self.default_max_images)
        with self._lock:
            self._loaded[spec.model] = loaded
            self.specs[spec.model] = spec
        try:
            evicted += self._make_room(0, spec.model)
        except ResourceExhausted:
            self.unload(spec.model)
            raise
        log.info(
            "loaded %s from %s on %s (%s, %.1f MB, %.2f s)",
            spec.model, spec.source, loaded.device, loaded.dtype,
            loaded.memory_bytes / 1e6, loaded.load_seconds,
        )  # fmt: skip
        return loaded, evicted

    def _make_room(self, incoming: int, keep: str) -> list[str]:
        """Evicts least recently used idle unpinned models until `incoming` more bytes fit; evicts
        nothing when even evicting all of them would not be enough."""
        if not self.budget or self.used_bytes + incoming <= self.budget:
            return []
        candidates = sorted(
            (m for m in self.loaded() if m.name != keep and not m.spec.pinned and not self.is_busy(m.name)),
            key=lambda m: m.last_used,
        )
        if self.used_bytes - sum(m.memory_bytes for m in candidates) + incoming > self.budget:
            raise ResourceExhausted(
                f"model {keep!r} does not fit the memory budget of {self.budget / 1e6:.1f} MB "
                "next to the pinned and busy models"
            )
        evicted = []
        for victim in candidates:
            if self.used_bytes + incoming <= self.budget:
                break
            self.unload(victim.name)
            evicted.append(victim.name)
        return evicted

    def unload(self, model: str) -> None:
        with self._lock:
            loaded = self._loaded.pop(model, None)
        if loaded is None:
            raise NotFound(f"model {model!r} is not loaded")
        device = loaded.device
        del loaded
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        log.info("unloaded %s", model)
