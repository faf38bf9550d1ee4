"""The YAML catalog file: parsing into records, and seeding a registry from it (idempotent).

models:
  - id: toyworld-sd
    family: diffusion            # or vision_language
    source: models/toyworld-sd   # Hugging Face repo id or local folder
    revision: main               # optional
    tasks: [txt2img, img2img]
    default_variant: default     # optional: the first variant
    description: ...
    labels: {team: platform}
    variants:
      - name: default
        size: tiny
        parameters: 1.1m         # or parameter_count: 1100000
        precision: fp32          # fp32 fp16 bf16 int8 fp8 int4
        backend: torch           # torch onnx tensorrt
        context_window: 4096     # vision_language only
        memory: 2GiB             # or memory_bytes: 2147483648
        hardware_targets: [cpu, nvidia-l4]   # empty = any hardware
        source: other/repo       # when this variant lives elsewhere
artifacts:
  - {model_id: ..., variant: ..., backend: tensorrt, gpu_arch: sm_90, shape_profile: ...,
     size_bytes: ..., checksum: "sha256:...", uri: "s3://..."}
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from services.common.errors import AlreadyExists, InvalidArgument
from services.model_registry.records import Artifact, ModelRecord, Variant
from services.model_registry.validation import check_model_id, validate_model

log = logging.getLogger(__name__)


class CatalogError(ValueError):
    """The catalog file is malformed; the message names the file, entry and field."""


_UNITS = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_BINARY = {
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_quantity(value: Any, field_name: str, units: dict[str, int]) -> int:
    """An int, or a number with a unit suffix ("14GiB", "7b", "1.1m")."""
    if isinstance(value, bool):
        raise InvalidArgument(field_name, f"{value!r} is not a number")
    if isinstance(value, int):
        if value < 0:
            raise InvalidArgument(field_name, "must be 0 or more")
        return value
    match = _QUANTITY.match(str(value))
    if not match or match.group(2).lower() not in units:
        raise InvalidArgument(
            field_name, f"{value!r}: expected a number with one of {', '.join(u for u in units if u)}"
        )
    return int(float(match.group(1)) * units[match.group(2).lower()])


def parse_bytes(value: Any, field_name: str) -> int:
    return parse_quantity(value, field_name, {"": 1, "b": 1, **_BINARY})


def _str_list(value: Any, field_name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(field_name, "expected a list of strings")
    return list(value)


def _mapping(value: Any, field_name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(field_name, f"expected a mapping, got {type(value).__name__}")
    return value


def _check_keys(entry: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise InvalidArgument(f"{where}.{unknown[0]}", f"unknown key; allowed: {', '.join(sorted(allowed))}")


_VARIANT_KEYS = {f.name for f in fields(Variant)} | {"parameters", "memory"}
_MODEL_KEYS = {f.name for f in fields(ModelRecord)} - {"create_time", "update_time"}
_ARTIFACT_KEYS = {f.name for f in fields(Artifact)} - {"create_time"}


def variant_from_dict(entry: Any, where: str) -> Variant:
    """A variant from a mapping (catalog file or `lumiserve models add --variant k=v,...`)."""
    entry = _mapping(entry, where)
    _check_keys(entry, _VARIANT_KEYS, where)
    params = entry.get("parameter_count", entry.get("parameters", 0))
    memory = entry.get("memory_bytes", entry.get("memory", 0))
    try:
        context = int(entry.get("context_window", 0) or 0)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{where}.context_window", "expected an integer") from None
    return Variant(
        name=str(entry.get("name", "")),
        size=str(entry.get("size", "") or ""),
        parameter_count=parse_quantity(params, f"{where}.parameters", _UNITS),
        precision=str(entry.get("precision", "") or "").lower(),
        backend=str(entry.get("backend", "") or "").lower(),
        context_window=context,
        memory_bytes=parse_bytes(memory, f"{where}.memory"),
        hardware_targets=_str_list(entry.get("hardware_targets"), f"{where}.hardware_targets"),
        source=str(entry.get("source", "") or ""),
    )


def model_from_dict(entry: Any, where: str) -> ModelRecord:
    entry = _mapping(entry, where)
    _check_keys(entry, _MODEL_KEYS, where)
    labels = _mapping(entry.get("labels") or {}, f"{where}.labels")
    variants = entry.get("variants") or []
    if not isinstance(variants, list):
        raise InvalidArgument(f"{where}.variants", "expected a list")
    model = ModelRecord(
        id=str(entry.get("id", "")),
        family=str(entry.get("family", "")).lower(),
        source=str(entry.get("source", "")),
        revision=str(entry.get("revision", "") or ""),
        tasks=_str_list(entry.get("tasks"), f"{where}.tasks"),
        default_variant=str(entry.get("default_variant", "") or ""),
        variants=[variant_from_dict(v, f"{where}.variants[{i}]") for i, v in enumerate(variants)],
        description=str(entry.get("description", "") or "").strip(),
        labels={str(k): str(v) for k, v in labels.items()},
    )
    return validate_model(model, where)


def artifact_from_dict(entry: Any, where: str) -> Artifact:
    entry = _mapping(entry, where)
    _check_keys(entry, _ARTIFACT_KEYS, where)
    artifact = Artifact(
        id=str(entry.get("id", "") or ""),
        model_id=str(entry.get("model_id", "")),
        variant=str(entry.get("variant", "") or ""),
        backend=str(entry.get("backend", "")).lower(),
        gpu_arch=str(entry.get("gpu_arch", "")),
        shape_profile=str(entry.get("shape_profile", "") or ""),
        size_bytes=parse_bytes(entry.get("size_bytes", 0), f"{where}.size_bytes"),
        checksum=str(entry.get("checksum", "")),
        uri=str(entry.get("uri", "")),
    )
    check_model_id(f"{where}.model_id", artifact.model_id)
    return artifact


def model_to_dict(model: ModelRecord) -> dict[str, Any]:
    """A model as a catalog-file entry (empty fields left out): `lumiserve models show` prints it."""
    entry: dict[str, Any] = {
        "id": model.id,
        "family": model.family,
        "source": model.source,
        "revision": model.revision,
        "tasks": model.tasks,
        "default_variant": model.default_variant,
        "description": model.description,
        "labels": model.labels,
        "variants": [{k: v for k, v in asdict(variant).items() if v} for variant in model.variants],
    }
    return {k: v for k, v in entry.items() if v}


@dataclass
class Catalog:
    models: list[ModelRecord] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)


def parse_catalog(text: str, origin: str = "catalog") -> Catalog:
    try:
        document = yaml.safe_load(text) or {}
        _mapping(document, "catalog")
        _check_keys(document, {"models", "artifacts"}, "catalog")
        models = document.get("models") or []
        artifacts = document.get("artifacts") or []
        if not isinstance(models, list) or not isinstance(artifacts, list):
            raise InvalidArgument("catalog", "models and artifacts must be lists")
        catalog = Catalog(
            [model_from_dict(m, f"models[{i}]") for i, m in enumerate(models)],
            [artifact_from_dict(a, f"artifacts[{i}]") for i, a in enumerate(artifacts)],
        )
    except yaml.YAMLError as error:
        raise CatalogError(f"{origin}: not valid YAML: {error}") from None
    except InvalidArgument as error:
        raise CatalogError(f"{origin}: {error.message}") from None
    ids = [m.id for m in catalog.models]
    duplicate = next((i for i in ids if ids.count(i) > 1), None)
    if duplicate:
        raise CatalogError(f"{origin}: model {duplicate!r} appears twice")
    return catalog


def load_catalog(path: Path) -> Catalog:
    try:
        text = path.read_text()
    except OSError as error:
        raise CatalogError(f"{path}: cannot read: {error.strerror}") from None
    return parse_catalog(text, str(path))


@dataclass
class SeedResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


async def seed(registry: Any, catalog: Catalog, overwrite: bool = False) -> SeedResult:
    """Adds the catalog's models and artifacts that the registry lacks. Stored models are kept as
    edited at runtime unless `overwrite`. Running it again changes nothing (and logs no change)."""
    result = SeedResult()
    for model in catalog.models:
        try:
            await registry.create_model(model)
            result.created.append(model.id)
        except AlreadyExists:
            changed = overwrite and (await registry.put_model(model))[1]
            (result.updated if changed else result.unchanged).append(model.id)
    for artifact in catalog.artifacts:
        try:
            await registry.create_artifact(artifact)
            result.created.append(f"artifact {'/'.join(artifact.key)}")
        except AlreadyExists:
            pass
    log.info(
        "catalog seeded: %d created, %d updated, %d unchanged",
        len(result.created),
        len(result.updated),
        len(result.unchanged),
    )
    return result
