"""Compute devices: detection (cuda / rocm / xpu / mps / cpu), dtypes, memory options, OOM recovery."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Any

import psutil
import torch

from services.common.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class Device:
    """A torch device plus what kind of accelerator it is ("cpu", "cuda", "rocm", "xpu", "mps")."""

    torch_device: torch.device
    kind: str

    @property
    def name(self) -> str:
        return str(self.torch_device)

    @property
    def accelerated(self) -> bool:
        return self.kind != "cpu"

    def default_dtype(self) -> torch.dtype:
        # fp16 halves memory and is fast on every accelerator; CPUs compute fp16 slowly or not at all.
        return torch.float16 if self.accelerated else torch.float32

    def total_memory(self) -> int:
        if self.kind in ("cuda", "rocm"):
            return torch.cuda.get_device_properties(self.torch_device).total_memory
        if self.kind == "xpu":
            return torch.xpu.get_device_properties(self.torch_device).total_memory
        if self.kind == "mps":
            return int(torch.mps.recommended_max_memory())
        return psutil.virtual_memory().total

    def default_budget(self) -> int:
        """The cache budget when none is configured: 90% of device memory, half the RAM on CPU."""
        return int(self.total_memory() * (0.9 if self.accelerated else 0.5))

    def free_cached_memory(self) -> None:
        """Returns the allocator's cached blocks to the device (after an OOM or an unload)."""
        gc.collect()
        if self.kind in ("cuda", "rocm"):
            torch.cuda.empty_cache()
        elif self.kind == "xpu":
            torch.xpu.empty_cache()
        elif self.kind == "mps":
            torch.mps.empty_cache()

    def generator(self, seed: int) -> torch.Generator:
        # MPS generators are not supported for every op: CPU generators give the same images everywhere.
        device = "cpu" if self.kind in ("mps", "cpu") else self.torch_device
        return torch.Generator(device=device).manual_seed(seed)


def detect_device(choice: str = "auto") -> Device:
    """The device a setting names, or the best one present for "auto"."""
    choice = choice.strip().lower()
    has_cuda = torch.cuda.is_available()
    is_rocm = has_cuda and torch.version.hip is not None
    has_xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    has_mps = torch.backends.mps.is_available()
    if choice == "auto":
        if has_cuda:
            return Device(torch.device("cuda", torch.cuda.current_device()), "rocm" if is_rocm else "cuda")
        if has_xpu:
            return Device(torch.device("xpu", 0), "xpu")
        if has_mps:
            return Device(torch.device("mps"), "mps")
        return Device(torch.device("cpu"), "cpu")
    kind, _, index = choice.partition(":")
    available = {
        "cpu": True,
        "cuda": has_cuda and not is_rocm,
        "rocm": is_rocm,
        "xpu": has_xpu,
        "mps": has_mps,
    }
    if kind not in available:
        raise ValueError(f"device {choice!r}: use auto, cpu, cuda[:N], rocm[:N], xpu[:N] or mps")
    if not available[kind]:
        raise ValueError(f"device {choice!r} is not available on this machine")
    torch_kind = "cuda" if kind == "rocm" else kind  # ROCm builds of torch expose HIP devices as cuda
    return Device(torch.device(torch_kind, int(index)) if index else torch.device(torch_kind), kind)


def resolve_dtype(name: str, device: Device) -> torch.dtype:
    if name in ("", "auto"):
        return device.default_dtype()
    if name not in DTYPES:
        raise InvalidArgument("precision", f"{name!r} is not supported; use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def apply_memory_options(pipe: Any, device: Device, config: Any) -> None:
    """Places the pipeline and applies the per-model memory options (`config` is a ModelConfig)."""
    if config.offload != "none":
        if not device.accelerated:
            raise FailedPrecondition(f"model {config.id!r}: offload={config.offload} needs an accelerator")
        if config.offload == "model":
            pipe.enable_model_cpu_offload(device=device.torch_device)
        else:
            pipe.enable_sequential_cpu_offload(device=device.torch_device)
    else:
        pipe.to(device.torch_device)
    if config.attention_slicing:
        pipe.enable_attention_slicing()
    vae = getattr(pipe, "vae", None)
    if vae is not None and config.vae_slicing:
        vae.enable_slicing()
    if vae is not None and config.vae_tiling:
        vae.enable_tiling()


def module_bytes(*modules: Any) -> int:
    """Bytes held by the parameters and buffers of torch modules (None and non-modules are skipped)."""
    total = 0
    for module in modules:
        if isinstance(module, torch.nn.Module):
            total += sum(t.numel() * t.element_size() for t in module.parameters())
            total += sum(t.numel() * t.element_size() for t in module.buffers())
    return total


def is_out_of_memory(error: BaseException) -> bool:
    """torch.OutOfMemoryError, or the RuntimeError some backends (MPS, XPU) raise instead."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def set_threads(count: int) -> None:
    if count > 0:
        torch.set_num_threads(count)
        log.info("torch CPU threads: %d", count)
