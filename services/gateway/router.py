"""Picks backend replicas for a call: least loaded first, sessions and jobs pinned to their replica."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from lumiserve.common.v1 import common_pb2
from lumiserve.model_registry.v1 import model_registry_pb2 as registry_pb2
from services.common.settings import SettingsError
from services.gateway.methods import DIFFUSION, REGISTRY, VISION_LANGUAGE
from services.gateway.registry_cache import RegistryCache

FAMILY_NAMES = {
    common_pb2.MODEL_FAMILY_DIFFUSION: DIFFUSION,
    common_pb2.MODEL_FAMILY_VISION_LANGUAGE: VISION_LANGUAGE,
}
PIN_CAPACITY = 100_000
STATIC_MODEL_LABELS = 64  # remembered session / job locations; the oldest are forgotten first


@dataclass(frozen=True)
class Replica:
    endpoint: str
    family: str
    # Models it has loaded; None = unknown (a static backend): it is asked for any model.
    models: frozenset[str] | None = None
    # Registry-reported load: (queued + in flight) / capacity.
    load: float = 0.0

    def serves(self, model: str) -> bool:
        return not model or self.models is None or model in self.models


def parse_static_backends(entries: Iterable[str]) -> list[Replica]:
    """'diffusion=host:port' entries (family one of diffusion, vision_language, registry)."""
    replicas = []
    for entry in entries:
        family, _, endpoint = entry.partition("=")
        if family not in (DIFFUSION, VISION_LANGUAGE, REGISTRY) or ":" not in endpoint:
            raise SettingsError(
                f"static backend {entry!r}: expected 'diffusion|vision_language|registry=host:port'"
            )
        replicas.append(Replica(endpoint, family))
    return replicas


def instance_load(instance: registry_pb2.Instance) -> float:
    load = instance.load
    return (load.queue_depth + load.in_flight) / max(instance.capacity, 1)


class Router:
    def __init__(
        self,
        static: list[Replica],
        cache: RegistryCache | None,
        channel_options: list,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._static = static
        self._cache = cache
        self._options = channel_options
        self._credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.outstanding: dict[str, int] = {}  # calls this gateway has open per endpoint
        self._pins: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._static_models: set[str] = set()

    def set_cache(self, cache: RegistryCache) -> None:
        self._cache = cache

    def replicas(self, family: str, model: str = "") -> list[Replica]:
        """Healthy replicas of a family that serve `model`, least loaded first (this gateway's own
        open calls first, they are fresher than the registry's last heartbeat)."""
        candidates = [r for r in self._all(family) if r.serves(model)]
        return sorted(candidates, key=lambda r: (self.outstanding.get(r.endpoint, 0), r.load))

    def _all(self, family: str) -> list[Replica]:
        replicas = [r for r in self._static if r.family == family]
        if self._cache is not None:
            for instance in self._cache.serving_instances():
                families = {FAMILY_NAMES.get(f) for f in instance.families}
                if family in families:
                    models = frozenset(m.model_id for m in instance.loaded_models)
                    replicas.append(Replica(instance.endpoint, family, models, instance_load(instance)))
        return replicas

    def registry_endpoint(self) -> str | None:
        replicas = self._all(REGISTRY)
        return replicas[0].endpoint if replicas else None

    def model_label(self, model: str) -> str:
        """The model as a metrics label: known models by name, anything else as "other" (clients
        must not be able to create label values at will). Static backends don't list their models:
        then the first STATIC_MODEL_LABELS names seen are kept."""
        if not model:
            return ""
        if self._cache is not None:
            if model in self._cache.models or any(
                model == m.model_id for i in self._cache.serving_instances() for m in i.loaded_models
            ):
                return model
        elif model in self._static_models or len(self._static_models) < STATIC_MODEL_LABELS:
            self._static_models.add(model)
            return model
        return "other"

    @contextmanager
    def calling(self, endpoint: str) -> Iterator[None]:
        """Counts this gateway's open calls per endpoint while a call runs, for least-loaded routing."""
        self.outstanding[endpoint] = self.outstanding.get(endpoint, 0) + 1
        try:
            yield
        finally:
            self.outstanding[endpoint] -= 1

    # -- pins: which replica holds a session or runs a job, per tenant

    def pin(self, kind: str, tenant: str, key: str, endpoint: str) -> None:
        self._pins[(kind, tenant, key)] = endpoint
        self._pins.move_to_end((kind, tenant, key))
        while len(self._pins) > PIN_CAPACITY:
            self._pins.popitem(last=False)

    def pinned(self, kind: str, tenant: str, key: str) -> str | None:
        return self._pins.get((kind, tenant, key))

    def unpin(self, kind: str, tenant: str, key: str) -> None:
        self._pins.pop((kind, tenant, key), None)

    # -- channels

    def channel(self, endpoint: str) -> grpc.aio.Channel:
        channel = self._channels.get(endpoint)
        if channel is None:
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(endpoint, self._credentials, options=self._options)
            else:
                channel = grpc.aio.insecure_channel(endpoint, options=self._options)
            self._channels[endpoint] = channel
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
