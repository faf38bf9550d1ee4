"""The model cache: pipelines loaded with from_pretrained, bounded by a memory budget, LRU-evicted.

Task pipelines (img2img, inpainting, ControlNet variants) are made with `from_pipe` from the loaded
text-to-image pipeline, so they share its weights; they are cached on the entry. ControlNet models
are cache entries of their own, counted in the same budget.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    ControlNetModel,
)
from diffusers.pipelines.auto_pipeline import AUTO_TEXT2IMAGE_PIPELINES_MAPPING

from services.common.errors import FailedPrecondition, NotFound, ResourceExhausted, ServiceError
from services.diffusion.devices import (
    DTYPE_NAMES,
    Device,
    apply_memory_options,
    is_out_of_memory,
    module_bytes,
)
from services.diffusion.devices import resolve_dtype as _resolve_dtype
from services.diffusion.metrics import FAMILY, DiffusionMetrics
from services.diffusion.samplers import SamplerInfo, probe_samplers
from services.diffusion.settings import ModelConfig
from services.diffusion.status import ModelStatus

log = logging.getLogger(__name__)

_AUTO_FOR_TASK = {
    "txt2img": AutoPipelineForText2Image,
    "img2img": AutoPipelineForImage2Image,
    "inpaint": AutoPipelineForInpainting,
}


@dataclass
class CacheEntry:
    """A loaded model (kind "model": a text-to-image pipeline) or ControlNet (kind "controlnet")."""

    config: ModelConfig
    kind: str
    obj: Any
    dtype: torch.dtype
    memory_bytes: int
    load_seconds: float
    last_used: float = field(default_factory=time.time)
    in_use: int = 0
    tasks: tuple[str, ...] = ()
    samplers: dict[str, SamplerInfo] = field(default_factory=dict)
    scheduler_config: Any = None  # the model's own: jobs replace pipe.scheduler, never this
    default_size: int = 512
    text_layers: int = 0
    derived: dict[tuple, Any] = field(default_factory=dict)
    plans: dict[tuple, int] = field(default_factory=dict)  # (sampler, sigmas, steps, strength) -> iterations
    # (sampler, sigmas) -> a never-run scheduler to copy, and one copy made ahead for the next call
    scheduler_templates: dict[tuple, Any] = field(default_factory=dict)
    spare_schedulers: dict[tuple, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def key(self) -> str:
        return _key(self.kind, self.config.id)

    @property
    def pipe(self) -> Any:
        return self.obj


def _key(kind: str, model_id: str) -> str:
    return model_id if kind == "model" else f"{kind}:{model_id}"


def _estimate_bytes(config: ModelConfig, dtype: torch.dtype) -> int:
    """Weights on disk for a local folder, scaled to the load dtype; 0 when unknown (a repo id)."""
    folder = Path(config.source)
    if not folder.is_dir():
        return 0
    files = [
        p for p in folder.rglob("*.safetensors") if not config.variant or f".{config.variant}." in p.name
    ]
    size = sum(p.stat().st_size for p in files)
    # Files are usually fp32 (or named fp16 variants); 2-byte dtypes halve fp32 files.
    return size // 2 if dtype in (torch.float16, torch.bfloat16) and not config.variant else size


def _alias_clip_text_model(pipe: Any) -> None:
    """diffusers 0.42 applies clip skip through `text_encoder.text_model.final_layer_norm`; transformers 5
    flattened CLIPTextModel (no `.text_model`). Alias it to the model itself, outside the module tree
    (object.__setattr__), so state_dict and .to() are unaffected."""
    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, name, None)
        flattened = isinstance(encoder, torch.nn.Module) and hasattr(encoder, "final_layer_norm")
        if flattened and "text_model" not in encoder.__dict__ and "text_model" not in encoder._modules:
            object.__setattr__(encoder, "text_model", encoder)


def _family_key(pipe: Any) -> str | None:
    for key, cls in AUTO_TEXT2IMAGE_PIPELINES_MAPPING.items():
        if type(pipe) is cls:
            return key
    return None


def _tasks(pipe: Any) -> tuple[str, ...]:
    """Tasks the loaded pipeline serves: a 9-channel inpainting UNet serves only inpainting."""
    unet = getattr(pipe, "unet", None)
    tasks: list[str] = []
    if unet is not None and unet.config.in_channels != 4:
        candidates = ["inpaint"] if unet.config.in_channels == 9 else []
    else:
        candidates = ["txt2img", "img2img", "inpaint"]
    for task in candidates:
        try:
            if task != "txt2img":
                _AUTO_FOR_TASK[task].from_pipe(pipe)
            tasks.append(task)
        except Exception as error:
            log.debug("%s has no %s pipeline: %s", type(pipe).__name__, task, error)
    family = _family_key(pipe)
    if family and f"{family}-controlnet" in AUTO_TEXT2IMAGE_PIPELINES_MAPPING:
        tasks.append("controlnet")
    return tuple(tasks)


class ModelCache:
    """Thread-safe: the device worker and LoadModel calls (on other threads) use it at once."""

    def __init__(
        self,
        device: Device,
        budget_bytes: int,
        catalog: list[ModelConfig],
        controlnets: list[ModelConfig],
        metrics: DiffusionMetrics,
        default_dtype: str = "auto",
    ) -> None:
        self.device = device
        self.budget_bytes = budget_bytes
        self.default_dtype = default_dtype
        self._catalog = {c.id: c for c in catalog}
        self._controlnet_catalog = {c.id: c for c in controlnets}
        self._metrics = metrics
        self._lock = threading.RLock()
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()  # least recently used first
        self._loading: dict[str, tuple[ModelConfig, threading.Event]] = {}
        self._failed: dict[str, tuple[ModelConfig, str]] = {}
        metrics.cache_budget.labels(FAMILY).set(budget_bytes)

    # ------------------------------------------------------------------ lookups

    def catalog(self) -> list[ModelConfig]:
        with self._lock:
            return list(self._catalog.values())

    def known(self, model_id: str) -> bool:
        return self.config(model_id) is not None

    def config(self, model_id: str) -> ModelConfig | None:
        with self._lock:
            return self._catalog.get(model_id)

    def get(self, model_id: str) -> CacheEntry | None:
        """The loaded entry, or None (not loaded yet, or evicted)."""
        with self._lock:
            return self._entries.get(model_id)

    def loaded_ids(self) -> list[str]:
        with self._lock:
            return [e.id for e in self._entries.values() if e.kind == "model"]

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return sum(e.memory_bytes for e in self._entries.values())

    def statuses(self) -> list[ModelStatus]:
        with self._lock:
            rows = [
                ModelStatus(
                    e.config,
                    "ready",
                    self.device.name,
                    DTYPE_NAMES.get(e.dtype, ""),
                    e.memory_bytes,
                    e.load_seconds,
                    e.last_used,
                    e.tasks,
                )
                for e in self._entries.values()
                if e.kind == "model"
            ]
            rows += [ModelStatus(config, "loading") for config, _ in self._loading.values()]
            rows += [ModelStatus(config, "failed", error=error) for config, error in self._failed.values()]
            return rows

    # ------------------------------------------------------------------ use

    @contextmanager
    def use(self, model_id: str) -> Iterator[CacheEntry]:
        """The model's entry, loaded if needed, protected from eviction while the block runs."""
        while True:
            entry = self.load(model_id)[0]
            with self._lock:
                if self._entries.get(model_id) is entry:  # not evicted between load and here
                    entry.in_use += 1
                    self._touch(entry)
                    break
        try:
            yield entry
        finally:
            with self._lock:
                entry.in_use -= 1

    def pipeline_for(self, entry: CacheEntry, task: str, controlnet_ids: tuple[str, ...] = ()) -> Any:
        """The pipeline for a task (and ControlNet units), made once with from_pipe and cached."""
        if task not in entry.tasks or (controlnet_ids and "controlnet" not in entry.tasks):
            wanted = f"{task} with ControlNet" if controlnet_ids else task
            raise FailedPrecondition(
                f"model {entry.id!r} cannot serve {wanted}; it serves {', '.join(entry.tasks) or 'nothing'}"
            )
        if task == "txt2img" and not controlnet_ids:
            return entry.pipe
        key = (task, controlnet_ids)
        with self._lock:
            pipe = entry.derived.get(key)
        if pipe is not None:
            return pipe
        extra: dict[str, Any] = {}
        if controlnet_ids:
            nets = [self._controlnet(cid).obj for cid in controlnet_ids]
            extra["controlnet"] = nets[0] if len(nets) == 1 else nets
        pipe = _AUTO_FOR_TASK[task].from_pipe(entry.pipe, **extra)
        pipe.set_progress_bar_config(disable=True)
        with self._lock:
            entry.derived[key] = pipe
        return pipe

    # ------------------------------------------------------------------ load / unload

    def add_to_catalog(self, config: ModelConfig) -> None:
        with self._lock:
            current = self._catalog.get(config.id)
            if current is not None and current.source != config.source and config.id in self._entries:
                raise FailedPrecondition(
                    f"model {config.id!r} is loaded from {current.source}; "
                    "unload it before loading another source"
                )
            self._catalog[config.id] = config
            loaded = self._entries.get(config.id)
            if loaded is not None:  # pinning applies at once; a new dtype or variant needs an unload first
                loaded.config = replace(loaded.config, pin=config.pin)

    def load(self, model_id: str) -> tuple[CacheEntry, list[str]]:
        """Loads a catalog model unless loaded (waiting for a concurrent load of it). Returns the
        entry and the ids evicted to make room."""
        with self._lock:
            config = self._catalog.get(model_id)
            if config is None:
                raise NotFound(
                    f"model {model_id!r} is not served here; known: {', '.join(self._catalog) or 'none'}"
                )
        return self._load("model", config)

    def _controlnet(self, controlnet_id: str) -> CacheEntry:
        with self._lock:
            config = self._controlnet_catalog.get(controlnet_id)
            if config is None:
                known = ", ".join(self._controlnet_catalog) or "none"
                raise NotFound(f"ControlNet model {controlnet_id!r} is not served here; known: {known}")
        entry = self._load("controlnet", config)[0]
        with self._lock:
            self._touch(entry)
        return entry

    def known_controlnet(self, controlnet_id: str) -> bool:
        with self._lock:
            return controlnet_id in self._controlnet_catalog

    def _load(self, kind: str, config: ModelConfig) -> tuple[CacheEntry, list[str]]:
        key = _key(kind, config.id)
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    return entry, []
                pending = self._loading.get(key)
                if pending is None:
                    done = threading.Event()
                    self._loading[key] = (config, done)
                    self._failed.pop(key, None)
                    self._metrics.loading.labels(FAMILY).set(len(self._loading))
                    break
            pending[1].wait()
            with self._lock:
                if key in self._failed and key not in self._entries:
                    raise FailedPrecondition(f"loading {config.id!r} failed: {self._failed[key][1]}")
        evicted: list[str] = []
        try:
            dtype = _resolve_dtype(
                config.dtype if config.dtype != "auto" else self.default_dtype, self.device
            )
            with self._lock:
                evicted += self._make_room(_estimate_bytes(config, dtype), config.id)
            entry = self._build(kind, config, dtype)
            with self._lock:
                self._entries[key] = entry
                if kind == "model":
                    self._metrics.model_memory.labels(config.id, FAMILY).set(entry.memory_bytes)
                evicted += self._make_room(0, config.id)  # the estimate may have been short (repo ids)
            self._metrics.load_time.labels(config.id, FAMILY).observe(entry.load_seconds)
            log.info(
                "loaded %s %s from %s in %.2f s (%.1f MiB, %s)",
                kind,
                config.id,
                config.source,
                entry.load_seconds,
                entry.memory_bytes / 2**20,
                entry.tasks,
            )
            return entry, evicted
        except Exception as error:
            with self._lock:
                self._failed[key] = (config, getattr(error, "message", None) or str(error))
            if is_out_of_memory(error):
                self.device.free_cached_memory()
                raise ResourceExhausted(f"out of device memory loading {config.id!r}") from None
            if isinstance(error, ServiceError):
                raise
            raise FailedPrecondition(f"cannot load {config.id!r} from {config.source}: {error}") from None
        finally:
            with self._lock:
                self._loading.pop(key)[1].set()
                self._metrics.loading.labels(FAMILY).set(len(self._loading))
                self._update_loaded()

    def _build(self, kind: str, config: ModelConfig, dtype: torch.dtype) -> CacheEntry:
        start = time.perf_counter()
        options: dict[str, Any] = {"use_safetensors": True, "dtype": dtype}
        if config.variant:
            options["variant"] = config.variant
        if config.revision:
            options["revision"] = config.revision
        if kind == "controlnet":
            net = ControlNetModel.from_pretrained(config.source, **options).to(self.device.torch_device)
            return CacheEntry(config, kind, net, dtype, module_bytes(net), time.perf_counter() - start)
        pipe = AutoPipelineForText2Image.from_pretrained(config.source, **options)
        pipe.set_progress_bar_config(disable=True)
        _alias_clip_text_model(pipe)
        apply_memory_options(pipe, self.device, config)
        modules = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
        text_encoder = getattr(pipe, "text_encoder", None)
        unet = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        sample_size = getattr(unet.config, "sample_size", 64) if unet is not None else 64
        if isinstance(sample_size, (list, tuple)):
            sample_size = sample_size[0]
        return CacheEntry(
            config,
            kind,
            pipe,
            dtype,
            module_bytes(*modules),
            time.perf_counter() - start,
            tasks=_tasks(pipe),
            scheduler_config=pipe.scheduler.config,
            samplers=probe_samplers(pipe.scheduler.config),
            default_size=int(sample_size) * int(getattr(pipe, "vae_scale_factor", 8)),
            text_layers=getattr(getattr(text_encoder, "config", None), "num_hidden_layers", 0),
        )

    def _make_room(self, needed: int, loading_id: str) -> list[str]:
        """Evicts least recently used, unpinned, idle entries until `needed` more bytes fit."""
        evicted = []
        for key in list(self._entries):
            if self.used_bytes + needed <= self.budget_bytes:
                break
            entry = self._entries[key]
            if entry.config.pin or entry.in_use or entry.id == loading_id:
                continue
            self._drop(key)
            evicted.append(entry.id)
        if self.used_bytes + needed > self.budget_bytes:
            loaded = self._entries.get(loading_id)
            if loaded is not None and not loaded.in_use:  # just loaded, pinned or not: it does not fit
                self._drop(loaded.key)
            raise ResourceExhausted(
                f"model {loading_id!r} does not fit the cache budget of {self.budget_bytes} bytes "
                f"({self.used_bytes} held by pinned or busy models, {needed} more needed)"
            )
        return evicted

    def unload(self, model_id: str) -> None:
        with self._lock:
            if model_id not in self._entries:
                if model_id in self._catalog:
                    return  # known but not loaded: nothing to do
                raise NotFound(f"model {model_id!r} is not loaded")
            self._drop(model_id)
            self._update_loaded()

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        if entry.kind == "controlnet":  # task pipelines built with this ControlNet go too
            for model in self._entries.values():
                for derived_key in [k for k in model.derived if entry.id in k[1]]:
                    del model.derived[derived_key]
        if entry.kind == "model":
            self._metrics.model_memory.remove(entry.id, FAMILY)
        log.info("unloaded %s %s", entry.kind, entry.id)
        del entry
        self.device.free_cached_memory()

    def _touch(self, entry: CacheEntry) -> None:
        entry.last_used = time.time()
        self._entries.move_to_end(entry.key)

    def _update_loaded(self) -> None:
        self._metrics.loaded.labels(FAMILY).set(sum(1 for e in self._entries.values() if e.kind == "model"))

    def unload_all(self) -> None:
        with self._lock:
            for key in list(self._entries):
                self._drop(key)
            self._update_loaded()
