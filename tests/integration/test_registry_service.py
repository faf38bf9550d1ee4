"""The registry's gRPC service on a real server (127.0.0.1, ephemeral port), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2

from lumiserve.common.v1 import common_pb2
from lumiserve.model_registry.v1 import model_registry_pb2 as pb
from lumiserve.model_registry.v1 import model_registry_pb2_grpc as pb_grpc
from services.common.errors import status_details
from services.model_registry import testing
from services.model_registry.testing import ADMIN, INSTANCE, bearer

DIFFUSION = common_pb2.MODEL_FAMILY_DIFFUSION
VLM = common_pb2.MODEL_FAMILY_VISION_LANGUAGE
SHA = "sha256:" + "ef" * 32
WAIT = 10.0  # generous bound for events to arrive; tests never depend on timing otherwise


def skip_without_postgres(backend: str) -> None:
    if backend == "postgresql" and (reason := testing.postgres_unavailable_reason()):
        pytest.skip(reason)


@contextlib.asynccontextmanager
async def serve(backend: str, tmp_path, **overrides):
    skip_without_postgres(backend)
    with testing.database_url(backend, tmp_path) as url:
        async with testing.running_registry(url, **overrides) as app:
            channel = grpc.aio.insecure_channel(app.address)
            try:
                yield app, pb_grpc.ModelRegistryServiceStub(channel)
            finally:
                await channel.close()


@pytest.fixture(params=testing.BACKENDS)
async def registry(request, tmp_path):
    async with serve(request.param, tmp_path) as served:
        yield served


def llava(model_id: str = "llava-hf/llava-1.5-7b-hf") -> pb.Model:
    return pb.Model(
        id=model_id,
        family=VLM,
        source=model_id,
        tasks=["chat", "vqa"],
        variants=[
            pb.Variant(name="7b", size="7b", precision=common_pb2.PRECISION_FP16, context_window=4096),
            pb.Variant(
                name="7b-trt",
                size="7b",
                backend=common_pb2.BACKEND_TENSORRT,
                hardware_targets=["nvidia-h100", "nvidia-l4"],
            ),
        ],
    )


def instance(
    instance_id: str, hardware: str, arch: str = "", models=("llava-hf/llava-1.5-7b-hf",)
) -> pb.Instance:
    return pb.Instance(
        id=instance_id,
        endpoint=f"{instance_id}.svc:50051",
        hardware=common_pb2.Hardware(type=hardware, arch=arch),
        families=[VLM],
        loaded_models=[pb.LoadedModelRef(model_id=m) for m in models],
        capacity=4,
    )


async def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


async def read(stream) -> pb.WatchResponse:
    return await asyncio.wait_for(stream.read(), WAIT)


async def test_writes_need_the_admin_role_and_reads_are_open(registry):
    _, stub = registry
    create = pb.CreateModelRequest(model=llava())
    assert await code_of(stub.CreateModel(create)) == grpc.StatusCode.UNAUTHENTICATED
    assert (
        await code_of(stub.CreateModel(create, metadata=bearer("wrong"))) == grpc.StatusCode.UNAUTHENTICATED
    )
    assert await code_of(stub.CreateModel(create, metadata=INSTANCE)) == grpc.StatusCode.PERMISSION_DENIED
    untrusted = (("x-lumiserve-roles", "admin"),)
    assert await code_of(stub.CreateModel(create, metadata=untrusted)) == grpc.StatusCode.UNAUTHENTICATED
    gateway_user = (*bearer(testing.GATEWAY_TOKEN), ("x-lumiserve-roles", "viewer"))
    assert await code_of(stub.CreateModel(create, metadata=gateway_user)) == grpc.StatusCode.PERMISSION_DENIED
    gateway_admin = (*bearer(testing.GATEWAY_TOKEN), ("x-lumiserve-roles", "admin"))
    assert (await stub.CreateModel(create, metadata=gateway_admin)).model.id == llava().id
    assert (await stub.GetModel(pb.GetModelRequest(id=llava().id))).model.variants[0].context_window == 4096
    register = pb.RegisterInstanceRequest(instance=instance("pod", "cpu"))
    assert await code_of(stub.RegisterInstance(register)) == grpc.StatusCode.UNAUTHENTICATED
    assert (await stub.RegisterInstance(register, metadata=INSTANCE)).heartbeat_interval_seconds >= 1


async def test_catalog_errors_have_precise_codes(registry):
    _, stub = registry
    created = (await stub.CreateModel(pb.CreateModelRequest(model=llava()), metadata=ADMIN)).model
    assert created.default_variant == "7b" and created.create_time.seconds > 0
    assert await code_of(stub.CreateModel(pb.CreateModelRequest(model=llava()), metadata=ADMIN)) == (
        grpc.StatusCode.ALREADY_EXISTS
    )
    assert await code_of(stub.GetModel(pb.GetModelRequest(id="nope"))) == grpc.StatusCode.NOT_FOUND
    assert await code_of(stub.DeleteModel(pb.DeleteModelRequest(id="nope"), metadata=ADMIN)) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert await code_of(stub.DeleteArtifact(pb.DeleteArtifactRequest(id="nope"), metadata=ADMIN)) == (
        grpc.StatusCode.NOT_FOUND
    )
    bad = llava("other")
    bad.variants[0].context_window = 0
    bad.tasks.append("txt2img")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateModel(pb.CreateModelRequest(model=bad), metadata=ADMIN)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model.tasks[2]" in caught.value.details()
    (details,) = status_details(caught.value)
    assert isinstance(details, error_details_pb2.BadRequest)
    assert details.field_violations[0].field == "model.tasks[2]"
    assert (
        await code_of(stub.CreateModel(pb.CreateModelRequest(), metadata=ADMIN))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    bad_page = pb.ListModelsRequest(pagination=common_pb2.Pagination(page_token="garbage"))
    assert await code_of(stub.ListModels(bad_page)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_update_model_with_a_field_mask(registry):
    _, stub = registry
    await stub.CreateModel(pb.CreateModelRequest(model=llava()), metadata=ADMIN)
    change = pb.Model(id=llava().id, description="LLaVA 1.5", source="ignored/not-in-mask")
    mask = field_mask_pb2.FieldMask(paths=["description"])
    updated = (
        await stub.UpdateModel(pb.UpdateModelRequest(model=change, update_mask=mask), metadata=ADMIN)
    ).model
    assert updated.description == "LLaVA 1.5" and updated.source == llava().source
    assert updated.update_time.ToMicroseconds() > updated.create_time.ToMicroseconds()
    bad_mask = field_mask_pb2.FieldMask(paths=["create_time"])
    call = stub.UpdateModel(pb.UpdateModelRequest(model=change, update_mask=bad_mask), metadata=ADMIN)
    assert await code_of(call) == grpc.StatusCode.INVALID_ARGUMENT
    missing = pb.UpdateModelRequest(model=pb.Model(id="nope", description="x"), update_mask=mask)
    assert await code_of(stub.UpdateModel(missing, metadata=ADMIN)) == grpc.StatusCode.NOT_FOUND


async def test_list_models_pages_through_everything(registry):
    _, stub = registry
    for n in range(5):
        await stub.CreateModel(pb.CreateModelRequest(model=llava(f"m{n}")), metadata=ADMIN)
    seen, token = [], ""
    while True:
        page = await stub.ListModels(
            pb.ListModelsRequest(pagination=common_pb2.Pagination(page_size=2, page_token=token))
        )
        seen += [m.id for m in page.models]
        assert page.page_info.total_size == 5
        token = page.page_info.next_page_token
        if not token:
            break
    assert seen == [f"m{n}" for n in range(5)]
    assert len((await stub.ListModels(pb.ListModelsRequest(family=DIFFUSION))).models) == 0


async def test_resolve_ranks_healthy_instances_and_attaches_the_engine_for_their_gpu(registry):
    _, stub = registry
    model_id = llava().id
    await stub.CreateModel(pb.CreateModelRequest(model=llava()), metadata=ADMIN)
    engine = pb.Artifact(
        model_id=model_id,
        variant="7b-trt",
        backend=common_pb2.BACKEND_TENSORRT,
        gpu_arch="sm_90",
        shape_profile="b1-8:336x336",
        size_bytes=123,
        checksum=SHA,
        uri="s3://engines/llava/sm_90.plan",
    )
    engine = (await stub.CreateArtifact(pb.CreateArtifactRequest(artifact=engine), metadata=ADMIN)).artifact
    duplicate = pb.CreateArtifactRequest(artifact=pb.Artifact(**{**_fields(engine), "id": ""}))
    assert await code_of(stub.CreateArtifact(duplicate, metadata=ADMIN)) == grpc.StatusCode.ALREADY_EXISTS

    h100 = instance("h100", "nvidia-h100", "sm_90")
    h100.loaded_models[0].variant = "7b-trt"
    for pod in (
        h100,
        instance("cpu-a", "cpu"),
        instance("cpu-b", "cpu"),
        instance("other", "cpu", models=()),
    ):
        await stub.RegisterInstance(pb.RegisterInstanceRequest(instance=pod), metadata=INSTANCE)
    await stub.Heartbeat(
        pb.HeartbeatRequest(
            instance_id="cpu-a",
            load=pb.InstanceLoad(queue_depth=3, in_flight=1),
            loaded_models=[pb.LoadedModelRef(model_id=model_id)],
        ),
        metadata=INSTANCE,
    )
    await stub.Heartbeat(
        pb.HeartbeatRequest(
            instance_id="h100",
            load=pb.InstanceLoad(in_flight=2),
            loaded_models=h100.loaded_models,
            state=pb.INSTANCE_STATE_SERVING,
        ),
        metadata=INSTANCE,
    )

    answer = await stub.Resolve(pb.ResolveRequest(model=model_id, task="chat"))
    assert [r.instance.id for r in answer.instances] == ["cpu-b", "h100", "cpu-a"]  # by load score
    assert [r.load_score for r in answer.instances] == [0.0, 0.5, 1.0]
    preferred = await stub.Resolve(pb.ResolveRequest(model=model_id, hardware_preference=["nvidia-h100"]))
    assert [r.instance.id for r in preferred.instances] == ["h100", "cpu-b", "cpu-a"]
    assert preferred.instances[0].artifact.id == engine.id
    assert not preferred.instances[1].HasField("artifact")

    await stub.Heartbeat(
        pb.HeartbeatRequest(
            instance_id="h100", loaded_models=h100.loaded_models, state=pb.INSTANCE_STATE_DRAINING
        ),
        metadata=INSTANCE,
    )
    await stub.DeregisterInstance(pb.DeregisterInstanceRequest(instance_id="cpu-b"), metadata=INSTANCE)
    answer = await stub.Resolve(pb.ResolveRequest(model=model_id))
    assert [r.instance.id for r in answer.instances] == ["cpu-a"]

    assert await code_of(stub.Resolve(pb.ResolveRequest(model="nope"))) == grpc.StatusCode.NOT_FOUND
    assert await code_of(stub.Resolve(pb.ResolveRequest(model=model_id, task="txt2img"))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert await code_of(stub.Resolve(pb.ResolveRequest(model=model_id, variant="70b"))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert await code_of(stub.Heartbeat(pb.HeartbeatRequest(instance_id="ghost"), metadata=INSTANCE)) == (
        grpc.StatusCode.NOT_FOUND
    )


def _fields(message) -> dict:
    return {f.name: v for f, v in message.ListFields()}


async def test_watch_snapshot_synced_live_changes_and_resume(registry):
    _, stub = registry
    await stub.CreateModel(pb.CreateModelRequest(model=llava("a")), metadata=ADMIN)
    await stub.RegisterInstance(
        pb.RegisterInstanceRequest(instance=instance("pod", "cpu")), metadata=INSTANCE
    )

    watch = stub.Watch(pb.WatchRequest(resume_revision=0))
    snapshot = [await read(watch) for _ in range(3)]
    assert [s.WhichOneof("object") for s in snapshot[:2]] == ["model", "instance"]
    assert {s.change_type for s in snapshot[:2]} == {pb.CHANGE_TYPE_CREATED}
    assert snapshot[2].change_type == pb.CHANGE_TYPE_SYNCED
    synced_at = snapshot[2].revision

    await stub.CreateModel(pb.CreateModelRequest(model=llava("b")), metadata=ADMIN)
    await stub.UpdateModel(
        pb.UpdateModelRequest(
            model=pb.Model(id="b", description="x"),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        ),
        metadata=ADMIN,
    )
    await stub.DeleteModel(pb.DeleteModelRequest(id="a"), metadata=ADMIN)
    await stub.DeregisterInstance(pb.DeregisterInstanceRequest(instance_id="pod"), metadata=INSTANCE)
    live = [await read(watch) for _ in range(4)]
    watch.cancel()
    assert [(c.change_type, c.WhichOneof("object")) for c in live] == [
        (pb.CHANGE_TYPE_CREATED, "model"),
        (pb.CHANGE_TYPE_UPDATED, "model"),
        (pb.CHANGE_TYPE_DELETED, "model"),
        (pb.CHANGE_TYPE_DELETED, "instance"),
    ]
    revisions = [synced_at] + [c.revision for c in live]
    assert revisions == sorted(set(revisions))  # strictly increasing

    resumed = stub.Watch(pb.WatchRequest(resume_revision=live[1].revision))
    again = [await read(resumed) for _ in range(3)]
    resumed.cancel()
    assert [c.revision for c in again[:2]] == [live[2].revision, live[3].revision]
    assert again[2].change_type == pb.CHANGE_TYPE_SYNCED and again[2].revision == live[3].revision

    ahead = stub.Watch(pb.WatchRequest(resume_revision=live[3].revision + 100))
    assert await code_of(ahead.read()) == grpc.StatusCode.INVALID_ARGUMENT


async def test_watch_follows_many_streams_without_loss(registry):
    _, stub = registry
    streams = [stub.Watch(pb.WatchRequest(resume_revision=0)) for _ in range(5)]
    for stream in streams:
        assert (await read(stream)).change_type == pb.CHANGE_TYPE_SYNCED
    await asyncio.gather(
        *(stub.CreateModel(pb.CreateModelRequest(model=llava(f"m{n}")), metadata=ADMIN) for n in range(12))
    )
    for stream in streams:
        got = [await read(stream) for _ in range(12)]
        stream.cancel()
        assert sorted(c.model.id for c in got) == sorted(f"m{n}" for n in range(12))
        assert [c.revision for c in got] == sorted({c.revision for c in got})


@pytest.mark.parametrize("backend", testing.BACKENDS)
async def test_missed_heartbeats_mark_an_instance_down(backend, tmp_path):
    async with serve(
        backend,
        tmp_path,
        heartbeat_interval_seconds=0.1,
        heartbeat_ttl_seconds=0.5,
        expiry_check_seconds=0.05,
    ) as (_, stub):
        await stub.CreateModel(pb.CreateModelRequest(model=llava()), metadata=ADMIN)
        watch = stub.Watch(pb.WatchRequest())
        while (await read(watch)).change_type != pb.CHANGE_TYPE_SYNCED:
            pass
        registered = await stub.RegisterInstance(
            pb.RegisterInstanceRequest(instance=instance("pod", "cpu")), metadata=INSTANCE
        )
        assert registered.heartbeat_ttl_seconds == 1  # whole seconds on the wire, rounded up
        assert (await read(watch)).instance.state == pb.INSTANCE_STATE_SERVING
        assert len((await stub.Resolve(pb.ResolveRequest(model=llava().id))).instances) == 1
        down = await read(watch)  # no heartbeats: the TTL runs out
        assert (down.change_type, down.instance.id, down.instance.state) == (
            pb.CHANGE_TYPE_UPDATED,
            "pod",
            pb.INSTANCE_STATE_DOWN,
        )
        assert (await stub.Resolve(pb.ResolveRequest(model=llava().id))).instances == []
        listed = await stub.ListInstances(pb.ListInstancesRequest(include_down=True))
        assert [i.state for i in listed.instances] == [pb.INSTANCE_STATE_DOWN]
        assert (await stub.ListInstances(pb.ListInstancesRequest())).instances == []
        # A heartbeat brings it back.
        await stub.Heartbeat(
            pb.HeartbeatRequest(instance_id="pod", loaded_models=[pb.LoadedModelRef(model_id=llava().id)]),
            metadata=INSTANCE,
        )
        assert (await read(watch)).instance.state == pb.INSTANCE_STATE_SERVING
        watch.cancel()


async def test_watch_streams_end_with_unavailable_when_the_registry_drains(tmp_path):
    async with serve("sqlite", tmp_path) as (app, stub):
        watch = stub.Watch(pb.WatchRequest())
        assert (await read(watch)).change_type == pb.CHANGE_TYPE_SYNCED
        await app.registry.hub.close()
        assert await code_of(read(watch)) == grpc.StatusCode.UNAVAILABLE


class TcpProxy:
    """A TCP forwarder we can cut and restore, standing between the registry and PostgreSQL."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        if self._server is None or not self._server.is_serving():  # cut while connecting
            writer.transport.abort()
            upstream_writer.transport.abort()
            return
        self._writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


async def test_database_outage_answers_unavailable_and_recovers():
    skip_without_postgres("postgresql")
    from sqlalchemy.engine import make_url

    with testing.postgres_schema() as direct_url:
        url = make_url(direct_url)
        proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
        await proxy.start()
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        async with testing.running_registry(proxied, db_connect_timeout_seconds=2) as app:
            channel = grpc.aio.insecure_channel(app.address)
            stub = pb_grpc.ModelRegistryServiceStub(channel)
            await stub.CreateModel(pb.CreateModelRequest(model=llava("before")), metadata=ADMIN)
            watch = stub.Watch(pb.WatchRequest())
            while (await read(watch)).change_type != pb.CHANGE_TYPE_SYNCED:
                pass

            await proxy.stop()  # the database is gone
            assert (
                await code_of(stub.GetModel(pb.GetModelRequest(id="before"))) == grpc.StatusCode.UNAVAILABLE
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateModel(pb.CreateModelRequest(model=llava("during")), metadata=ADMIN)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "database unavailable" in caught.value.details()
            assert (
                await code_of(stub.Resolve(pb.ResolveRequest(model="before"))) == grpc.StatusCode.UNAVAILABLE
            )

            await proxy.start()  # it is back, on the same port
            assert (await stub.GetModel(pb.GetModelRequest(id="before"))).model.id == "before"
            await stub.CreateModel(pb.CreateModelRequest(model=llava("after")), metadata=ADMIN)
            change = await read(watch)  # the open stream carries on
            assert (change.change_type, change.model.id) == (pb.CHANGE_TYPE_CREATED, "after")
            watch.cancel()
            await channel.close()
        await proxy.stop()


async def test_malformed_requests_never_end_in_internal(registry):
    _, stub = registry
    await stub.CreateModel(pb.CreateModelRequest(model=llava("ok")), metadata=ADMIN)
    nasty = ["\x00", "x" * 5000, "ü" * 300, "a\nb", "../../etc", "-" * 70]
    calls = []
    for text in nasty:
        calls += [
            stub.GetModel(pb.GetModelRequest(id=text)),
            stub.ListModels(pb.ListModelsRequest(task=text, hardware_type=text)),
            stub.ListModels(pb.ListModelsRequest(pagination=common_pb2.Pagination(page_token=text))),
            stub.ListArtifacts(pb.ListArtifactsRequest(model_id=text, gpu_arch=text, shape_profile=text)),
            stub.ListInstances(pb.ListInstancesRequest(hardware_type=text)),
            stub.Resolve(pb.ResolveRequest(model=text, task=text, hardware_preference=[text], variant=text)),
            stub.Resolve(
                pb.ResolveRequest(model="ok", task="chat", hardware_preference=[text], variant=text)
            ),
            stub.DeleteArtifact(pb.DeleteArtifactRequest(id=text), metadata=ADMIN),
            stub.DeleteModel(pb.DeleteModelRequest(id=text), metadata=ADMIN),
            stub.Heartbeat(pb.HeartbeatRequest(instance_id=text), metadata=INSTANCE),
            stub.CreateModel(
                pb.CreateModelRequest(model=pb.Model(**{**_fields(llava(text)), "description": text})),
                metadata=ADMIN,
            ),
            stub.CreateModel(
                pb.CreateModelRequest(
                    model=pb.Model(id="m", family=VLM, source=text, tasks=["chat"], labels={text: text})
                ),
                metadata=ADMIN,
            ),
            stub.CreateArtifact(
                pb.CreateArtifactRequest(
                    artifact=pb.Artifact(
                        model_id="ok",
                        backend=2,
                        gpu_arch="sm_90",
                        shape_profile=text,
                        size_bytes=1,
                        checksum=SHA,
                        uri=f"s3://{text}",
                    )
                ),
                metadata=ADMIN,
            ),
            stub.RegisterInstance(
                pb.RegisterInstanceRequest(
                    instance=pb.Instance(
                        id="pod",
                        endpoint=f"{text}:1",
                        hardware=common_pb2.Hardware(type=text),
                        families=[VLM],
                        capacity=1,
                        labels={"k": text},
                    )
                ),
                metadata=INSTANCE,
            ),
        ]
    for call in calls:
        try:
            await call
        except grpc.aio.AioRpcError as error:
            assert error.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), error.details()
    assert (await stub.GetModel(pb.GetModelRequest(id="ok"))).model.id == "ok"  # still serving
