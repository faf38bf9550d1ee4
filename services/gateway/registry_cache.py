"""The gateway's view of the registry, kept current by its Watch stream (no registry call per request)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from lumiserve.model_registry.v1 import model_registry_pb2 as pb
from lumiserve.model_registry.v1 import model_registry_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class RegistryCache:
    """Models and instances as last reported by Watch. Reconnects and resumes from the last revision."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        metadata: tuple[tuple[str, str], ...] = (),
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._stub = pb_grpc.ModelRegistryServiceStub(channel)
        self._metadata = metadata
        self._on_change = on_change or (lambda: None)
        self.models: dict[str, pb.Model] = {}
        self.instances: dict[str, pb.Instance] = {}
        self.revision = 0
        self.synced = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                call = self._stub.Watch(
                    pb.WatchRequest(resume_revision=self.revision), metadata=self._metadata
                )
                async for change in call:
                    self.apply(change)
                    delay = 0.2
            except grpc.aio.AioRpcError as error:
                log.warning(
                    "registry watch interrupted (%s: %s); retrying in %.1f s",
                    error.code().name,
                    error.details(),
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def apply(self, change: pb.WatchResponse) -> None:
        """Applies one change in revision order."""
        self.revision = max(self.revision, change.revision)
        if change.change_type == pb.CHANGE_TYPE_SYNCED:
            self.synced.set()
            return
        kind = change.WhichOneof("object")
        if kind == "model":
            _upsert(self.models, change.model.id, change.model, change.change_type)
        elif kind == "instance":
            _upsert(self.instances, change.instance.id, change.instance, change.change_type)
        self._on_change()

    def serving_instances(self) -> list[pb.Instance]:
        return [i for i in self.instances.values() if i.state == pb.INSTANCE_STATE_SERVING]


def _upsert(table: dict, key: str, value, change_type: int) -> None:
    if change_type == pb.CHANGE_TYPE_DELETED:
        table.pop(key, None)
    else:
        table[key] = value
