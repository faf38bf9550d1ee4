"""Persistence of models, artifacts and instances, with every change appended to the change log in
the same transaction. Synchronous (SQLAlchemy Core); the registry calls it from worker threads."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Select, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from services.common.errors import AlreadyExists, NotFound
from services.model_registry.db import CHANGE_LOG_LOCK, Database
from services.model_registry.records import (
    KINDS,
    LIVE_STATES,
    Artifact,
    Change,
    Instance,
    Load,
    LoadedModelRef,
    ModelRecord,
    Record,
    kind_of,
    now_us,
)
from services.model_registry.schema import (
    artifacts,
    changes,
    instance_models,
    instances,
    model_hardware,
    model_tasks,
    models,
    registry_meta,
)

COMPACTED_KEY = "compacted_revision"


def _dump(record: Record) -> str:
    return json.dumps(dataclasses.asdict(record), separators=(",", ":"))


def _model(body: str) -> ModelRecord:
    return ModelRecord.from_dict(json.loads(body))


def _artifact(body: str) -> Artifact:
    return Artifact.from_dict(json.loads(body))


def _instance(body: str) -> Instance:
    return Instance.from_dict(json.loads(body))


@dataclasses.dataclass(frozen=True)
class Listing:
    items: list[Any]
    has_more: bool
    total: int


def _list(
    connection: Connection, query: Select, key: Any, after: str, limit: int, parse: Callable
) -> Listing:
    total = connection.scalar(select(func.count()).select_from(query.subquery())) or 0
    if after:
        query = query.where(key > after)
    rows = connection.execute(query.order_by(key).limit(limit + 1)).all()
    return Listing([parse(row.body) for row in rows[:limit]], len(rows) > limit, total)


class Store:
    def __init__(self, database: Database) -> None:
        self.db = database

    # ----- change log

    def _log(self, connection: Connection, change_type: str, record: Record) -> int:
        """Appends a change; taking the lock here assigns revisions in commit order."""
        self.db.lock(connection, CHANGE_LOG_LOCK)
        result = connection.execute(
            insert(changes).values(
                kind=kind_of(record),
                object_id=record.id,
                change_type=change_type,
                body=_dump(record),
                create_time=now_us(),
            )
        )
        return int(result.inserted_primary_key[0])

    def latest_revision(self) -> int:
        with self.db.read() as connection:
            return self._latest_revision(connection)

    @staticmethod
    def _latest_revision(connection: Connection) -> int:
        return int(connection.scalar(select(func.max(changes.c.revision))) or 0)

    def compacted_revision(self) -> int:
        """Changes up to this revision were deleted; watchers cannot resume before it."""
        with self.db.read() as connection:
            value = connection.scalar(
                select(registry_meta.c.value).where(registry_meta.c.key == COMPACTED_KEY)
            )
            return int(value or 0)

    def changes_since(self, revision: int, limit: int) -> list[Change]:
        with self.db.read() as connection:
            rows = connection.execute(
                select(changes).where(changes.c.revision > revision).order_by(changes.c.revision).limit(limit)
            ).all()
        return [
            Change(row.revision, row.change_type, KINDS[row.kind].from_dict(json.loads(row.body)))
            for row in rows
        ]

    def snapshot(self) -> tuple[int, list[Record]]:
        """Every model, artifact and instance, and the revision they are current at, consistently."""
        with self.db.read(snapshot=True) as connection:
            revision = self._latest_revision(connection)
            records: list[Record] = [
                _model(b) for b in connection.scalars(select(models.c.body).order_by("id"))
            ]
            records += [_artifact(b) for b in connection.scalars(select(artifacts.c.body).order_by("id"))]
            records += [_instance(b) for b in connection.scalars(select(instances.c.body).order_by("id"))]
        return revision, records

    def compact(self, before_time: int) -> int:
        """Deletes changes older than `before_time`, always keeping the newest one. Returns the count."""
        with self.db.write() as connection:
            newest = self._latest_revision(connection)
            through = connection.scalar(
                select(func.max(changes.c.revision)).where(
                    changes.c.create_time < before_time, changes.c.revision < newest
                )
            )
            if not through:
                return 0
            deleted = connection.execute(delete(changes).where(changes.c.revision <= through)).rowcount
            updated = connection.execute(
                update(registry_meta).where(registry_meta.c.key == COMPACTED_KEY).values(value=str(through))
            ).rowcount
            if not updated:
                connection.execute(insert(registry_meta).values(key=COMPACTED_KEY, value=str(through)))
            return int(deleted)

    # ----- models

    @staticmethod
    def _find_model(connection: Connection, model_id: str, lock: bool = False) -> ModelRecord | None:
        query = select(models.c.body).where(models.c.id == model_id)
        body = connection.scalar(query.with_for_update() if lock else query)
        return _model(body) if body is not None else None

    def _require_model(self, connection: Connection, model_id: str, lock: bool = False) -> ModelRecord:
        model = self._find_model(connection, model_id, lock)
        if model is None:
            raise NotFound(f"model {model_id!r} does not exist")
        return model

    @staticmethod
    def _write_model_indexes(connection: Connection, model: ModelRecord) -> None:
        connection.execute(delete(model_tasks).where(model_tasks.c.model_id == model.id))
        connection.execute(delete(model_hardware).where(model_hardware.c.model_id == model.id))
        if model.tasks:
            connection.execute(insert(model_tasks), [{"model_id": model.id, "task": t} for t in model.tasks])
        targets = sorted({t for v in model.variants for t in v.hardware_targets})
        if targets:
            connection.execute(
                insert(model_hardware), [{"model_id": model.id, "hardware_type": t} for t in targets]
            )

    def get_model(self, model_id: str) -> ModelRecord:
        with self.db.read() as connection:
            return self._require_model(connection, model_id)

    def create_model(self, model: ModelRecord, now: int) -> ModelRecord:
        model = dataclasses.replace(model, create_time=now, update_time=now)
        try:
            with self.db.write() as connection:
                if self._find_model(connection, model.id) is not None:
                    raise AlreadyExists(f"model {model.id!r} already exists")
                connection.execute(
                    insert(models).values(
                        id=model.id, family=model.family, body=_dump(model), create_time=now, update_time=now
                    )
                )
                self._write_model_indexes(connection, model)
                self._log(connection, "created", model)
        except IntegrityError:  # a concurrent writer created it first
            raise AlreadyExists(f"model {model.id!r} already exists") from None
        return model

    def update_model(
        self, model_id: str, change: Callable[[ModelRecord], ModelRecord], now: int
    ) -> tuple[ModelRecord, bool]:
        """Applies `change` to the stored model (it validates); returns the model and whether it changed."""
        with self.db.write() as connection:
            current = self._require_model(connection, model_id, lock=True)
            changed = change(dataclasses.replace(current))
            if changed.same_content(current):
                return current, False
            changed = dataclasses.replace(
                changed, id=current.id, create_time=current.create_time, update_time=now
            )
            connection.execute(
                update(models)
                .where(models.c.id == model_id)
                .values(family=changed.family, body=_dump(changed), update_time=now)
            )
            self._write_model_indexes(connection, changed)
            self._log(connection, "updated", changed)
        return changed, True

    def delete_model(self, model_id: str) -> None:
        """Deletes a model and its artifacts (each deletion is a change)."""
        with self.db.write() as connection:
            model = self._require_model(connection, model_id, lock=True)
            for body in connection.scalars(
                select(artifacts.c.body).where(artifacts.c.model_id == model_id).order_by("id")
            ):
                self._log(connection, "deleted", _artifact(body))
            connection.execute(delete(artifacts).where(artifacts.c.model_id == model_id))
            connection.execute(delete(model_tasks).where(model_tasks.c.model_id == model_id))
            connection.execute(delete(model_hardware).where(model_hardware.c.model_id == model_id))
            connection.execute(delete(models).where(models.c.id == model_id))
            self._log(connection, "deleted", model)

    def list_models(self, family: str, task: str, hardware_type: str, after: str, limit: int) -> Listing:
        query = select(models.c.id, models.c.body)
        if family:
            query = query.where(models.c.family == family)
        if task:
            query = query.where(
                models.c.id.in_(select(model_tasks.c.model_id).where(model_tasks.c.task == task))
            )
        if hardware_type:
            query = query.where(
                models.c.id.in_(
                    select(model_hardware.c.model_id).where(model_hardware.c.hardware_type == hardware_type)
                )
            )
        with self.db.read(snapshot=True) as connection:
            return _list(connection, query, models.c.id, after, limit, _model)

    # ----- artifacts

    def create_artifact(
        self, artifact: Artifact, validate: Callable[[Artifact, ModelRecord], Artifact], now: int
    ) -> Artifact:
        """Validates the artifact against its model and stores it; ids are assigned when empty."""
        try:
            with self.db.write() as connection:
                model = self._require_model(connection, artifact.model_id, lock=True)
                artifact = validate(dataclasses.replace(artifact), model)
                artifact.id = artifact.id or f"art-{uuid.uuid4().hex[:16]}"
                artifact.create_time = now
                same_key = connection.scalar(
                    select(artifacts.c.id).where(
                        artifacts.c.model_id == artifact.model_id,
                        artifacts.c.variant == artifact.variant,
                        artifacts.c.backend == artifact.backend,
                        artifacts.c.gpu_arch == artifact.gpu_arch,
                        artifacts.c.shape_profile == artifact.shape_profile,
                    )
                )
                if same_key is not None:
                    raise AlreadyExists(f"artifact {same_key!r} already has key {'/'.join(artifact.key)}")
                if connection.scalar(select(artifacts.c.id).where(artifacts.c.id == artifact.id)):
                    raise AlreadyExists(f"artifact {artifact.id!r} already exists")
                connection.execute(
                    insert(artifacts).values(
                        id=artifact.id,
                        model_id=artifact.model_id,
                        variant=artifact.variant,
                        backend=artifact.backend,
                        gpu_arch=artifact.gpu_arch,
                        shape_profile=artifact.shape_profile,
                        body=_dump(artifact),
                        create_time=now,
                    )
                )
                self._log(connection, "created", artifact)
        except IntegrityError:
            raise AlreadyExists(f"artifact with key {'/'.join(artifact.key)} already exists") from None
        return artifact

    def delete_artifact(self, artifact_id: str) -> None:
        with self.db.write() as connection:
            body = connection.scalar(select(artifacts.c.body).where(artifacts.c.id == artifact_id))
            if body is None:
                raise NotFound(f"artifact {artifact_id!r} does not exist")
            connection.execute(delete(artifacts).where(artifacts.c.id == artifact_id))
            self._log(connection, "deleted", _artifact(body))

    def list_artifacts(self, filters: dict[str, str], after: str, limit: int) -> Listing:
        query = select(artifacts.c.id, artifacts.c.body)
        for name, value in filters.items():
            if value:
                query = query.where(artifacts.c[name] == value)
        with self.db.read(snapshot=True) as connection:
            return _list(connection, query, artifacts.c.id, after, limit, _artifact)

    # ----- instances

    @staticmethod
    def _find_instance(connection: Connection, instance_id: str) -> Instance | None:
        body = connection.scalar(
            select(instances.c.body).where(instances.c.id == instance_id).with_for_update()
        )
        return _instance(body) if body is not None else None

    @staticmethod
    def _write_instance(connection: Connection, instance: Instance, exists: bool) -> None:
        values = {
            "hardware_type": instance.hardware.type,
            "families": ",".join(sorted(instance.families)),
            "state": instance.state,
            "heartbeat_time": instance.heartbeat_time,
            "body": _dump(instance),
        }
        if exists:
            connection.execute(update(instances).where(instances.c.id == instance.id).values(**values))
            connection.execute(delete(instance_models).where(instance_models.c.instance_id == instance.id))
        else:
            connection.execute(insert(instances).values(id=instance.id, **values))
        refs = {(ref.model_id, ref.variant) for ref in instance.loaded_models}
        if refs:
            connection.execute(
                insert(instance_models),
                [{"instance_id": instance.id, "model_id": m, "variant": v} for m, v in sorted(refs)],
            )

    def register_instance(self, instance: Instance, now: int) -> Instance:
        """Creates or replaces an instance (a restarted pod registers again under its name)."""
        instance = dataclasses.replace(instance, register_time=now, heartbeat_time=now)
        with self.db.write() as connection:
            existing = self._find_instance(connection, instance.id)
            self._write_instance(connection, instance, exists=existing is not None)
            self._log(connection, "created" if existing is None else "updated", instance)
        return instance

    def heartbeat(
        self,
        instance_id: str,
        load: Load,
        loaded_models: Sequence[LoadedModelRef],
        state: str,
        now: int,
    ) -> tuple[Instance, bool]:
        """Records load and loaded models. A load-only heartbeat is not a change (the log would grow by
        every instance every few seconds); new state or loaded models are. Returns (instance, changed)."""
        with self.db.write() as connection:
            current = self._find_instance(connection, instance_id)
            if current is None:
                raise NotFound(f"instance {instance_id!r} is not registered: register it again")
            new_state = state or ("serving" if current.state == "down" else current.state)
            updated = dataclasses.replace(
                current, load=load, loaded_models=list(loaded_models), state=new_state, heartbeat_time=now
            )
            changed = new_state != current.state or set(updated.loaded_models) != set(current.loaded_models)
            self._write_instance(connection, updated, exists=True)
            if changed:
                self._log(connection, "updated", updated)
        return updated, changed

    def deregister_instance(self, instance_id: str) -> None:
        with self.db.write() as connection:
            current = self._find_instance(connection, instance_id)
            if current is None:
                raise NotFound(f"instance {instance_id!r} is not registered")
            connection.execute(delete(instance_models).where(instance_models.c.instance_id == instance_id))
            connection.execute(delete(instances).where(instances.c.id == instance_id))
            self._log(connection, "deleted", current)

    def list_instances(
        self, family: str, hardware_type: str, include_down: bool, after: str, limit: int
    ) -> Listing:
        query = select(instances.c.id, instances.c.body)
        if family:
            query = query.where(instances.c.families.contains(family, autoescape=True))
        if hardware_type:
            query = query.where(instances.c.hardware_type == hardware_type)
        if not include_down:
            query = query.where(instances.c.state != "down")
        with self.db.read(snapshot=True) as connection:
            return _list(connection, query, instances.c.id, after, limit, _instance)

    def expire_instances(self, heartbeat_before: int) -> list[Instance]:
        """Marks live instances whose last heartbeat is older than `heartbeat_before` down."""
        with self.db.write() as connection:
            bodies = connection.scalars(
                select(instances.c.body)
                .where(instances.c.state.in_(LIVE_STATES), instances.c.heartbeat_time < heartbeat_before)
                .order_by("id")
                .with_for_update()
            ).all()
            expired = []
            for body in bodies:
                instance = dataclasses.replace(_instance(body), state="down")
                self._write_instance(connection, instance, exists=True)
                self._log(connection, "updated", instance)
                expired.append(instance)
        return expired

    def purge_instances(self, down_before: int) -> list[Instance]:
        """Forgets instances that have been down since before `down_before`."""
        with self.db.write() as connection:
            bodies = connection.scalars(
                select(instances.c.body)
                .where(instances.c.state == "down", instances.c.heartbeat_time < down_before)
                .order_by("id")
                .with_for_update()
            ).all()
            purged = [_instance(body) for body in bodies]
            for instance in purged:
                connection.execute(
                    delete(instance_models).where(instance_models.c.instance_id == instance.id)
                )
                connection.execute(delete(instances).where(instances.c.id == instance.id))
                self._log(connection, "deleted", instance)
        return purged

    def resolve_candidates(
        self, model_id: str, variant: str, heartbeat_after: int
    ) -> tuple[ModelRecord, list[Instance], list[Instance], list[Artifact]]:
        """The model, serving instances with it loaded, serving instances of its family (only looked up
        when none has it loaded or a variant is asked for), and its artifacts."""
        with self.db.read(snapshot=True) as connection:
            model = self._require_model(connection, model_id)
            serving = select(instances.c.body).where(
                instances.c.state == "serving", instances.c.heartbeat_time >= heartbeat_after
            )
            warm_ids = select(instance_models.c.instance_id).where(instance_models.c.model_id == model_id)
            warm = [_instance(b) for b in connection.scalars(serving.where(instances.c.id.in_(warm_ids)))]
            cold: list[Instance] = []
            if not warm or variant:
                family = instances.c.families.contains(model.family, autoescape=True)
                cold = [_instance(b) for b in connection.scalars(serving.where(family))]
            found = [
                _artifact(b)
                for b in connection.scalars(select(artifacts.c.body).where(artifacts.c.model_id == model_id))
            ]
        return model, warm, cold, found
