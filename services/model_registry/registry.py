"""The registry's data plane: validation, the store (on worker threads), Resolve and Watch.

The servicer converts protobuf to the records used here and back; nothing here knows about gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from services.common.errors import InvalidArgument
from services.model_registry import validation
from services.model_registry.records import (
    Artifact,
    Change,
    Instance,
    Load,
    LoadedModelRef,
    ModelRecord,
    now_us,
)
from services.model_registry.resolve import Resolved, rank
from services.model_registry.store import Listing, Store
from services.model_registry.watch import ChangeHub

log = logging.getLogger(__name__)

T = TypeVar("T")

# Fields of a model UpdateModel may change (paths of its update_mask).
MUTABLE_MODEL_FIELDS = (
    "family",
    "source",
    "revision",
    "tasks",
    "default_variant",
    "variants",
    "description",
    "labels",
)


class Registry:
    def __init__(
        self,
        store: Store,
        *,
        heartbeat_ttl: float,
        threads: int = 4,
        poll_interval: float = 0.25,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self.store = store
        self.heartbeat_ttl = heartbeat_ttl
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="registry-db")
        self.hub = ChangeHub(store, self.run, poll_interval=poll_interval)

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Runs a blocking store call on a database worker thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *args))

    async def write(self, function: Callable[..., T], *args: Any) -> T:
        result = await self.run(function, *args)
        self.hub.poke()
        return result

    async def close(self, timeout: float = 10.0) -> None:
        """Drops queued database work and waits (at most `timeout` s, off the event loop) for the
        queries already running, so that none outlives the service and holds locks or connections."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(self._executor.shutdown, wait=True), timeout)

    # ----- catalog

    async def create_model(self, model: ModelRecord) -> ModelRecord:
        validation.validate_model(model)
        return await self.write(self.store.create_model, model, self._clock())

    async def get_model(self, model_id: str) -> ModelRecord:
        validation.check_model_id("id", model_id)
        return await self.run(self.store.get_model, model_id)

    async def list_models(
        self, family: str, task: str, hardware_type: str, after: str, limit: int
    ) -> Listing:
        validation.check_filter("task", task)
        validation.check_filter("hardware_type", hardware_type)
        return await self.run(self.store.list_models, family, task, hardware_type, after, limit)

    async def update_model(self, model: ModelRecord, paths: Sequence[str]) -> ModelRecord:
        validation.check_model_id("model.id", model.id)
        for path in paths:
            if path not in MUTABLE_MODEL_FIELDS:
                raise InvalidArgument(
                    "update_mask.paths",
                    f"{path!r} cannot be updated; allowed: {', '.join(MUTABLE_MODEL_FIELDS)}",
                )
        fields = list(paths) or list(MUTABLE_MODEL_FIELDS)

        def change(current: ModelRecord) -> ModelRecord:
            updated = dataclasses.replace(current, **{f: getattr(model, f) for f in fields})
            if (
                "variants" in fields
                and "default_variant" not in fields
                and not updated.variant(updated.default_variant)
            ):
                updated.default_variant = ""  # the old default is gone: take the first variant
            return validation.validate_model(updated)

        updated, changed = await self.run(self.store.update_model, model.id, change, self._clock())
        if changed:
            self.hub.poke()
        return updated

    async def put_model(self, model: ModelRecord) -> tuple[ModelRecord, bool]:
        """Replaces a stored model's content (catalog seeding with overwrite)."""
        validation.validate_model(model)
        updated, changed = await self.run(
            self.store.update_model, model.id, lambda _current: model, self._clock()
        )
        if changed:
            self.hub.poke()
        return updated, changed

    async def delete_model(self, model_id: str) -> None:
        validation.check_model_id("id", model_id)
        await self.write(self.store.delete_model, model_id)

    # ----- artifacts

    async def create_artifact(self, artifact: Artifact) -> Artifact:
        validation.check_model_id("artifact.model_id", artifact.model_id)
        return await self.write(
            self.store.create_artifact, artifact, validation.validate_artifact, self._clock()
        )

    async def list_artifacts(self, filters: dict[str, str], after: str, limit: int) -> Listing:
        for name, value in filters.items():
            validation.check_filter(name, value)
        return await self.run(self.store.list_artifacts, filters, after, limit)

    async def delete_artifact(self, artifact_id: str) -> None:
        if not artifact_id:
            raise InvalidArgument("id", "required")
        validation.check_filter("id", artifact_id)
        await self.write(self.store.delete_artifact, artifact_id)

    # ----- instances

    async def register_instance(self, instance: Instance) -> Instance:
        validation.validate_instance(instance)
        return await self.write(self.store.register_instance, instance, self._clock())

    async def heartbeat(
        self, instance_id: str, load: Load, loaded_models: list[LoadedModelRef], state: str
    ) -> Instance:
        validation.check_instance_id("instance_id", instance_id)
        validation.validate_loaded_models("loaded_models", loaded_models)
        if state not in ("", "starting", "serving", "draining"):
            raise InvalidArgument("state", f"{state!r} cannot be reported; use starting, serving or draining")
        instance, changed = await self.run(
            self.store.heartbeat, instance_id, load, loaded_models, state, self._clock()
        )
        if changed:
            self.hub.poke()
        return instance

    async def deregister_instance(self, instance_id: str) -> None:
        validation.check_instance_id("instance_id", instance_id)
        await self.write(self.store.deregister_instance, instance_id)

    async def list_instances(
        self, family: str, hardware_type: str, include_down: bool, after: str, limit: int
    ) -> Listing:
        validation.check_filter("hardware_type", hardware_type)
        return await self.run(self.store.list_instances, family, hardware_type, include_down, after, limit)

    def _heartbeat_cutoff(self, ttl: float | None = None) -> int:
        return self._clock() - int((self.heartbeat_ttl if ttl is None else ttl) * 1_000_000)

    async def expire_instances(self) -> list[Instance]:
        """Marks instances without a heartbeat for longer than the TTL down."""
        expired = await self.run(self.store.expire_instances, self._heartbeat_cutoff())
        if expired:
            self.hub.poke()
            log.info(
                "instances down (no heartbeat for %.1f s): %s", self.heartbeat_ttl, [i.id for i in expired]
            )
        return expired

    async def purge_instances(self, down_for: float) -> list[Instance]:
        purged = await self.run(self.store.purge_instances, self._heartbeat_cutoff(down_for))
        if purged:
            self.hub.poke()
        return purged

    async def compact(self, keep_seconds: float) -> int:
        return await self.run(self.store.compact, self._clock() - int(keep_seconds * 1_000_000))

    # ----- resolve and watch

    async def resolve(
        self, model_id: str, task: str, hardware_preference: Sequence[str], variant: str
    ) -> tuple[ModelRecord, list[Resolved]]:
        validation.check_model_id("model", model_id)
        model, warm, cold, artifacts = await self.run(
            self.store.resolve_candidates, model_id, variant, self._heartbeat_cutoff()
        )
        if task and task not in model.tasks:
            raise InvalidArgument("task", f"model {model_id!r} serves {', '.join(model.tasks)}, not {task!r}")
        if variant and not model.variant(variant):
            names = ", ".join(v.name for v in model.variants) or "none"
            raise InvalidArgument("variant", f"model {model_id!r} has variants {names}, not {variant!r}")
        return model, rank(model, warm, cold, artifacts, hardware_preference, variant)

    def watch(self, resume_revision: int) -> AsyncIterator[Change]:
        return self.hub.subscribe(resume_revision)
