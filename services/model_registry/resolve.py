"""Ranking of instances for Resolve (pure: no database, no protobuf).

Which instances answer:
- serving instances with a fresh heartbeat that have the model loaded (of the requested variant, or
  of any variant when none is requested) — "warm";
- only when no instance is warm: serving instances of the model's family that could load it ("cold"),
  restricted to the variant's hardware targets when it lists any. A caller sending work there pays
  the model load, which beats having nowhere to send it.
Order: hardware preference first (earlier types first; types not listed after all listed ones), then
load score (in-flight plus queued relative to capacity), then id for a stable answer.
Each instance gets the newest artifact for the model, the variant it serves, and its hardware arch,
preferring the variant's backend when it names one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.model_registry.records import Artifact, Instance, ModelRecord


@dataclass(frozen=True)
class Resolved:
    instance: Instance
    load_score: float
    artifact: Artifact | None


def pick_artifact(
    model: ModelRecord, instance: Instance, variant: str, candidates: Sequence[Artifact]
) -> Artifact | None:
    wanted = variant or instance.loaded_variant(model.id) or model.default_variant
    arch = instance.hardware.arch
    if not arch:
        return None
    matching = [a for a in candidates if a.variant == wanted and a.gpu_arch == arch]
    backend = model.variant(wanted).backend if model.variant(wanted) else ""
    # Newest first, and those of the variant's own backend before others.
    matching.sort(key=lambda a: (backend != "" and a.backend != backend, -a.create_time, a.id))
    return matching[0] if matching else None


def rank(
    model: ModelRecord,
    warm: Sequence[Instance],
    cold: Sequence[Instance],
    artifacts: Sequence[Artifact],
    hardware_preference: Sequence[str] = (),
    variant: str = "",
) -> list[Resolved]:
    candidates = [i for i in warm if i.has_loaded(model.id, variant, model.default_variant)]
    if not candidates:
        spec = model.variant(variant or model.default_variant)
        targets = set(spec.hardware_targets) if spec else set()
        candidates = [i for i in cold if not targets or i.hardware.type in targets]
    order = {hardware: index for index, hardware in enumerate(hardware_preference)}

    def key(instance: Instance) -> tuple[int, float, str]:
        return (order.get(instance.hardware.type, len(order)), instance.load_score, instance.id)

    return [
        Resolved(i, i.load_score, pick_artifact(model, i, variant, artifacts))
        for i in sorted(candidates, key=key)
    ]
