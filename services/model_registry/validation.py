"""Checks on records coming from clients or the catalog file. Each failure names the field (dotted
path) and what is allowed; normalisation (e.g. a default variant) happens here too."""

from __future__ import annotations

import re
from collections.abc import Sequence

from services.common.errors import InvalidArgument
from services.model_registry.records import (
    ACCELERATORS,
    BACKENDS,
    FAMILIES,
    PRECISIONS,
    TASKS,
    Artifact,
    Instance,
    LoadedModelRef,
    ModelRecord,
)

MODEL_ID = re.compile(r"^[a-z0-9](?:[a-z0-9._/-]{0,126}[a-z0-9])?$")
NAME = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62})$")
HARDWARE_TYPE = re.compile(r"^(?=.{1,64}$)[a-z0-9]+(?:-[a-z0-9]+){0,7}$")
GPU_ARCH = re.compile(r"^[a-z0-9_]{1,32}$")
INSTANCE_ID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._:-]{0,252})$")
LABEL_KEY = re.compile(r"^[a-z0-9](?:[a-z0-9._/-]{0,61}[a-z0-9])?$")
CHECKSUM = re.compile(r"^sha256:[0-9a-f]{64}$")
URI = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$")
PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]*$")
UINT32_MAX = 2**32 - 1


def _one_of(field: str, value: str, allowed: tuple[str, ...] | list[str], required: bool = False) -> None:
    if (value or required) and value not in allowed:
        shown = repr(value) if value else "missing"
        raise InvalidArgument(field, f"{shown} is not one of {', '.join(allowed)}")


def _pattern(field: str, value: str, pattern: re.Pattern[str], what: str) -> None:
    if not pattern.match(value):
        raise InvalidArgument(field, f"{value!r} is not valid: {what}")


def _text(field: str, value: str, max_len: int, required: bool = False) -> None:
    if required and not value.strip():
        raise InvalidArgument(field, "required")
    if len(value) > max_len:
        raise InvalidArgument(field, f"at most {max_len} characters (got {len(value)})")
    if not PRINTABLE.match(value):
        raise InvalidArgument(field, "must not contain control characters")


def _unique(field: str, values: list[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise InvalidArgument(field, f"{value!r} appears twice")
        seen.add(value)


def _labels(field: str, labels: dict[str, str]) -> None:
    if len(labels) > 64:
        raise InvalidArgument(field, "at most 64 labels")
    for key, value in labels.items():
        _pattern(f"{field}[{key}]", key, LABEL_KEY, "lower-case letters, digits, '.', '_', '-', '/' (≤ 63)")
        _text(f"{field}[{key}]", value, 256)


def check_filter(field: str, value: str) -> None:
    """A free-text filter or id that only goes into a query: printable and of a storable length."""
    _text(field, value, 256)


def check_model_id(field: str, value: str) -> None:
    if not value:
        raise InvalidArgument(field, "required")
    _pattern(field, value, MODEL_ID, "lower-case letters, digits, '.', '_', '-', '/' (1-128 characters)")
    if ".." in value or "//" in value:
        raise InvalidArgument(field, f"{value!r} must not contain '..' or '//'")


def validate_model(model: ModelRecord, prefix: str = "model") -> ModelRecord:
    """Validates a model; fills default_variant with the first variant when empty."""
    check_model_id(f"{prefix}.id", model.id)
    _one_of(f"{prefix}.family", model.family, FAMILIES, required=True)
    _text(f"{prefix}.source", model.source, 1024, required=True)
    if any(c.isspace() for c in model.source):
        raise InvalidArgument(f"{prefix}.source", "must not contain whitespace")
    _text(f"{prefix}.revision", model.revision, 256)
    _text(f"{prefix}.description", model.description, 4096)
    if not model.tasks:
        raise InvalidArgument(f"{prefix}.tasks", f"at least one of {', '.join(TASKS[model.family])}")
    for i, task in enumerate(model.tasks):
        _one_of(f"{prefix}.tasks[{i}]", task, TASKS[model.family], required=True)
    _unique(f"{prefix}.tasks", model.tasks)
    for i, variant in enumerate(model.variants):
        where = f"{prefix}.variants[{i}]"
        _pattern(f"{where}.name", variant.name, NAME, "lower-case letters, digits, '.', '_', '-' (1-63)")
        if variant.size:
            _pattern(f"{where}.size", variant.size, NAME, "lower-case letters, digits, '.', '_', '-' (1-63)")
        _one_of(f"{where}.precision", variant.precision, PRECISIONS)
        _one_of(f"{where}.backend", variant.backend, BACKENDS)
        if not 0 <= variant.context_window <= UINT32_MAX:
            raise InvalidArgument(f"{where}.context_window", f"must be 0-{UINT32_MAX}")
        if variant.context_window and model.family != "vision_language":
            raise InvalidArgument(f"{where}.context_window", "only vision_language models have one")
        for name in ("parameter_count", "memory_bytes"):
            if not 0 <= getattr(variant, name) < 2**64:
                raise InvalidArgument(f"{where}.{name}", "must be 0 or more")
        for j, target in enumerate(variant.hardware_targets):
            _pattern(
                f"{where}.hardware_targets[{j}]", target, HARDWARE_TYPE, "lower-case words joined by '-'"
            )
        _unique(f"{where}.hardware_targets", variant.hardware_targets)
        _text(f"{where}.source", variant.source, 1024)
    _unique(f"{prefix}.variants.name", [v.name for v in model.variants])
    names = [v.name for v in model.variants]
    if model.default_variant and model.default_variant not in names:
        allowed = ", ".join(names) if names else "empty (the model has no variants)"
        raise InvalidArgument(
            f"{prefix}.default_variant", f"{model.default_variant!r} must be one of {allowed}"
        )
    if not model.default_variant and names:
        model.default_variant = names[0]
    _labels(f"{prefix}.labels", model.labels)
    return model


def validate_artifact(artifact: Artifact, model: ModelRecord, prefix: str = "artifact") -> Artifact:
    """Validates an artifact against its model; an empty variant means the model's default."""
    if artifact.id:
        _pattern(f"{prefix}.id", artifact.id, NAME, "lower-case letters, digits, '.', '_', '-' (1-63)")
    artifact.variant = artifact.variant or model.default_variant
    names = [v.name for v in model.variants]
    if artifact.variant and artifact.variant not in names:
        allowed = ", ".join(names) if names else "empty (the model has no variants)"
        raise InvalidArgument(f"{prefix}.variant", f"{artifact.variant!r} must be one of {allowed}")
    _one_of(f"{prefix}.backend", artifact.backend, BACKENDS, required=True)
    if not artifact.gpu_arch:
        raise InvalidArgument(f"{prefix}.gpu_arch", "required (e.g. sm_90, sm_89, gfx942, x86_64)")
    _pattern(
        f"{prefix}.gpu_arch", artifact.gpu_arch, GPU_ARCH, "lower-case letters, digits, '_' (e.g. sm_90)"
    )
    _text(f"{prefix}.shape_profile", artifact.shape_profile, 256)
    if artifact.size_bytes <= 0:
        raise InvalidArgument(f"{prefix}.size_bytes", "must be more than 0")
    if not artifact.checksum:
        raise InvalidArgument(f"{prefix}.checksum", "required: 'sha256:<64 hex digits>'")
    _pattern(f"{prefix}.checksum", artifact.checksum, CHECKSUM, "'sha256:<64 lower-case hex digits>'")
    if not artifact.uri:
        raise InvalidArgument(f"{prefix}.uri", "required (e.g. s3://..., file:///..., hf://...)")
    _text(f"{prefix}.uri", artifact.uri, 2048)
    _pattern(f"{prefix}.uri", artifact.uri, URI, "'<scheme>://<location>'")
    return artifact


def check_endpoint(field: str, endpoint: str) -> None:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidArgument(field, f"{endpoint!r} must be host:port with port 1-65535")
    _text(field, endpoint, 256)
    if any(c.isspace() for c in endpoint):
        raise InvalidArgument(field, "must not contain whitespace")


def check_instance_id(field: str, value: str) -> None:
    if not value:
        raise InvalidArgument(field, "required (e.g. the pod name)")
    _pattern(field, value, INSTANCE_ID, "letters, digits, '.', '_', ':', '-' (1-253)")


def validate_instance(instance: Instance, prefix: str = "instance") -> Instance:
    """Validates a registration; an unspecified state means serving."""
    check_instance_id(f"{prefix}.id", instance.id)
    check_endpoint(f"{prefix}.endpoint", instance.endpoint)
    hardware = instance.hardware
    if not hardware.type:
        raise InvalidArgument(f"{prefix}.hardware.type", "required (e.g. cpu, nvidia-l4, nvidia-h100)")
    _pattern(f"{prefix}.hardware.type", hardware.type, HARDWARE_TYPE, "lower-case words joined by '-'")
    _one_of(f"{prefix}.hardware.accelerator", hardware.accelerator, ACCELERATORS)
    if hardware.arch:
        _pattern(f"{prefix}.hardware.arch", hardware.arch, GPU_ARCH, "lower-case letters, digits, '_'")
    if not instance.families:
        raise InvalidArgument(f"{prefix}.families", f"at least one of {', '.join(FAMILIES)}")
    for i, family in enumerate(instance.families):
        _one_of(f"{prefix}.families[{i}]", family, FAMILIES, required=True)
    _unique(f"{prefix}.families", instance.families)
    validate_loaded_models(f"{prefix}.loaded_models", instance.loaded_models)
    if instance.capacity < 1:
        raise InvalidArgument(f"{prefix}.capacity", f"must be 1-{UINT32_MAX} concurrent jobs")
    instance.state = instance.state or "serving"
    _one_of(f"{prefix}.state", instance.state, ("starting", "serving", "draining"))
    _labels(f"{prefix}.labels", instance.labels)
    _text(f"{prefix}.version", instance.version, 64)
    return instance


def validate_loaded_models(field: str, refs: Sequence[LoadedModelRef]) -> None:
    if len(refs) > 256:
        raise InvalidArgument(field, "at most 256 models")
    for i, ref in enumerate(refs):
        check_model_id(f"{field}[{i}].model_id", ref.model_id)
        if ref.variant:
            _pattern(f"{field}[{i}].variant", ref.variant, NAME, "lower-case letters, digits, '.', '_', '-'")
