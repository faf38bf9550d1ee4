"""The registry store on a real database: the same tests on SQLite (WAL file) and PostgreSQL."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from sqlalchemy import inspect, select

from services.common.errors import AlreadyExists, NotFound
from services.model_registry import migrations, schema, testing
from services.model_registry.catalog import load_catalog, seed
from services.model_registry.db import Database
from services.model_registry.records import (
    Artifact,
    Hardware,
    Instance,
    Load,
    LoadedModelRef,
    ModelRecord,
    Variant,
)
from services.model_registry.registry import Registry
from services.model_registry.settings import DEFAULT_CATALOG
from services.model_registry.store import Store
from services.model_registry.validation import validate_artifact, validate_model

SHA = "sha256:" + "cd" * 32


@pytest.fixture(params=testing.BACKENDS)
def database(request, tmp_path):
    if request.param == "postgresql" and (reason := testing.postgres_unavailable_reason()):
        pytest.skip(reason)
    with testing.database_url(request.param, tmp_path) as url:
        db = Database(url)
        yield db
        db.dispose()


@pytest.fixture
def store(database) -> Store:
    migrations.migrate(database)
    return Store(database)


def model(model_id: str = "sd", **changes) -> ModelRecord:
    record = ModelRecord(
        model_id,
        "diffusion",
        f"repo/{model_id}",
        tasks=["txt2img"],
        variants=[
            Variant("fp16", precision="fp16", hardware_targets=["nvidia-l4"]),
            Variant("cpu", backend="torch"),
        ],
    )
    return validate_model(dataclasses.replace(record, **changes))


def instance(instance_id: str = "pod-1", **changes) -> Instance:
    record = Instance(
        instance_id, f"{instance_id}:50051", Hardware("cpu"), ["diffusion"], [LoadedModelRef("sd")]
    )
    return dataclasses.replace(record, **changes)


def test_migrations_from_empty_build_the_declared_schema(database):
    assert migrations.applied_versions(database) == []
    assert migrations.migrate(database) == [migrations.LATEST]
    assert migrations.migrate(database) == []  # idempotent
    assert migrations.applied_versions(database) == [m.VERSION for m in migrations.MIGRATIONS]
    with database.read() as connection:
        inspector = inspect(connection)
        for table in schema.metadata.sorted_tables:
            columns = {c["name"] for c in inspector.get_columns(table.name)}
            assert columns == set(table.columns.keys()), table.name


def test_concurrent_migrations_apply_each_version_once(database):
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrations.migrate(database)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with database.read() as connection:
        assert list(connection.scalars(select(schema.schema_migrations.c.version))) == [1]


def test_model_lifecycle_is_logged_in_order(store):
    created = store.create_model(model(), now=100)
    assert created.create_time == created.update_time == 100
    with pytest.raises(AlreadyExists):
        store.create_model(model(), now=101)
    assert store.get_model("sd") == created

    updated, changed = store.update_model("sd", lambda m: dataclasses.replace(m, description="new"), now=200)
    assert (
        changed and updated.description == "new" and updated.create_time == 100 and updated.update_time == 200
    )
    same, changed = store.update_model("sd", lambda m: m, now=300)
    assert not changed and same.update_time == 200

    store.create_artifact(
        Artifact("eng", "sd", "fp16", "tensorrt", "sm_90", "", 1, SHA, "s3://x"), validate_artifact, 400
    )
    store.delete_model("sd")
    with pytest.raises(NotFound):
        store.get_model("sd")
    with pytest.raises(NotFound):
        store.delete_model("sd")

    log = store.changes_since(0, 100)
    assert [(c.change_type, type(c.record).__name__, c.record.id) for c in log] == [
        ("created", "ModelRecord", "sd"),
        ("updated", "ModelRecord", "sd"),
        ("created", "Artifact", "eng"),
        ("deleted", "Artifact", "eng"),
        ("deleted", "ModelRecord", "sd"),
    ]
    revisions = [c.revision for c in log]
    assert revisions == sorted(set(revisions))
    assert store.changes_since(revisions[2], 100)[0].revision == revisions[3]
    assert store.latest_revision() == revisions[-1]


def test_list_filters_and_pages(store):
    for name in ("a", "b", "c", "d"):
        store.create_model(model(name), now=1)
    store.create_model(
        validate_model(
            ModelRecord("v", "vision_language", "repo/v", tasks=["chat"], variants=[Variant("x")])
        ),
        now=1,
    )
    first = store.list_models("", "", "", after="", limit=2)
    assert [m.id for m in first.items] == ["a", "b"] and first.has_more and first.total == 5
    rest = store.list_models("", "", "", after="b", limit=10)
    assert [m.id for m in rest.items] == ["c", "d", "v"] and not rest.has_more
    assert [m.id for m in store.list_models("vision_language", "", "", "", 10).items] == ["v"]
    assert [m.id for m in store.list_models("", "chat", "", "", 10).items] == ["v"]
    assert store.list_models("", "", "nvidia-l4", "", 10).total == 4
    assert store.list_models("", "", "nvidia-h100", "", 10).items == []


def test_artifacts_are_unique_by_key(store):
    store.create_model(model(), now=1)
    engine = Artifact("", "sd", "fp16", "tensorrt", "sm_90", "b1:512", 10, SHA, "s3://e")
    first = store.create_artifact(engine, validate_artifact, 2)
    assert first.id.startswith("art-")
    with pytest.raises(AlreadyExists, match=first.id):
        store.create_artifact(engine, validate_artifact, 3)
    other_arch = store.create_artifact(dataclasses.replace(engine, gpu_arch="sm_89"), validate_artifact, 4)
    assert [a.id for a in store.list_artifacts({"gpu_arch": "sm_89"}, "", 10).items] == [other_arch.id]
    with pytest.raises(NotFound, match="model 'nope'"):
        store.create_artifact(dataclasses.replace(engine, model_id="nope"), validate_artifact, 5)
    store.delete_artifact(first.id)
    with pytest.raises(NotFound):
        store.delete_artifact(first.id)


def test_instances_heartbeat_expire_and_purge(store):
    store.register_instance(instance(), now=1_000)
    start = store.latest_revision()
    # Load alone is not a change; new loaded models are.
    beat, changed = store.heartbeat("pod-1", Load(queue_depth=3), [LoadedModelRef("sd")], "", now=2_000)
    assert not changed and beat.load.queue_depth == 3 and beat.heartbeat_time == 2_000
    assert store.latest_revision() == start
    _, changed = store.heartbeat("pod-1", Load(), [LoadedModelRef("sd"), LoadedModelRef("v")], "", now=3_000)
    assert changed
    with pytest.raises(NotFound, match="register it again"):
        store.heartbeat("ghost", Load(), [], "", now=3_000)

    assert store.expire_instances(heartbeat_before=3_000) == []
    expired = store.expire_instances(heartbeat_before=3_001)
    assert [(i.id, i.state) for i in expired] == [("pod-1", "down")]
    assert store.expire_instances(heartbeat_before=3_001) == []  # once
    assert store.list_instances("", "", include_down=False, after="", limit=10).items == []
    assert store.list_instances("diffusion", "cpu", include_down=True, after="", limit=10).total == 1

    revived, changed = store.heartbeat("pod-1", Load(), [LoadedModelRef("sd")], "", now=4_000)
    assert changed and revived.state == "serving"
    store.expire_instances(heartbeat_before=5_000)
    assert [i.id for i in store.purge_instances(down_before=5_000)] == ["pod-1"]
    with pytest.raises(NotFound):
        store.deregister_instance("pod-1")
    last = store.changes_since(0, 100)[-1]
    assert (last.change_type, last.record.id) == ("deleted", "pod-1")


def test_resolve_candidates_only_fresh_serving_instances(store):
    store.create_model(model(), now=1)
    store.register_instance(instance("warm"), now=10)
    store.register_instance(instance("stale"), now=1)
    store.register_instance(instance("draining", state="draining"), now=10)
    store.register_instance(instance("cold", loaded_models=[]), now=10)
    _, warm, cold, _ = store.resolve_candidates("sd", "", heartbeat_after=5)
    assert [i.id for i in warm] == ["warm"] and cold == []
    _, warm, cold, _ = store.resolve_candidates("sd", "fp16", heartbeat_after=5)
    assert {i.id for i in cold} == {"warm", "cold"}
    store.deregister_instance("warm")
    _, warm, cold, _ = store.resolve_candidates("sd", "", heartbeat_after=5)
    assert warm == [] and [i.id for i in cold] == ["cold"]


def test_compaction_keeps_the_newest_change_and_records_the_floor(store):
    for name in ("a", "b", "c"):
        store.create_model(model(name), now=1)
    latest = store.latest_revision()
    assert store.compact(before_time=10**18) == 2
    assert store.compacted_revision() == latest - 1
    assert [c.revision for c in store.changes_since(0, 10)] == [latest]


def test_snapshot_holds_everything_at_one_revision(store):
    store.create_model(model(), now=1)
    store.register_instance(instance(), now=1)
    revision, records = store.snapshot()
    assert revision == store.latest_revision()
    assert [type(r).__name__ for r in records] == ["ModelRecord", "Instance"]


async def test_catalog_seeding_is_idempotent(store):
    registry = Registry(store, heartbeat_ttl=10)
    catalog = load_catalog(DEFAULT_CATALOG)
    try:
        first = await seed(registry, catalog)
        assert sorted(first.created) == ["toyworld-llava", "toyworld-sd"]
        revision = store.latest_revision()
        again = await seed(registry, catalog)
        assert again.created == [] and sorted(again.unchanged) == ["toyworld-llava", "toyworld-sd"]
        assert store.latest_revision() == revision  # no change logged
        # An edit made at runtime survives seeding, unless the file is told to win.
        await registry.update_model(
            dataclasses.replace(catalog.models[0], description="edited"), ["description"]
        )
        await seed(registry, catalog)
        assert store.get_model(catalog.models[0].id).description == "edited"
        result = await seed(registry, catalog, overwrite=True)
        assert result.updated == [catalog.models[0].id]
        assert store.get_model(catalog.models[0].id).description == catalog.models[0].description
    finally:
        await registry.close()
