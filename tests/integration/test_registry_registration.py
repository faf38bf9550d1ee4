"""services/common/registration.py against a real registry: register, heartbeat with load, register
again when forgotten, survive the registry being down, deregister on stop."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest

from lumiserve.common.v1 import common_pb2
from lumiserve.model_registry.v1 import model_registry_pb2 as pb
from lumiserve.model_registry.v1 import model_registry_pb2_grpc as pb_grpc
from services.common.registration import LoadReport, Registration, RegistrationSettings, advertised_endpoint
from services.common.settings import ServerSettings
from services.model_registry import testing

WAIT = 10.0


def me(instance_id: str = "diffusion-0") -> pb.Instance:
    return pb.Instance(
        id=instance_id,
        endpoint="127.0.0.1:50051",
        hardware=common_pb2.Hardware(type="cpu", accelerator=common_pb2.ACCELERATOR_CPU, arch="x86_64"),
        families=[common_pb2.MODEL_FAMILY_DIFFUSION],
        capacity=8,
        version="0.1.0",
    )


async def eventually(check, timeout: float = WAIT) -> None:
    """Polls an async condition until it holds (bounded; the test fails if it never does)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.02)


@pytest.fixture
async def registry(tmp_path):
    with testing.database_url("sqlite", tmp_path) as url:
        async with testing.running_registry(url) as app:
            channel = grpc.aio.insecure_channel(app.address)
            yield app, pb_grpc.ModelRegistryServiceStub(channel)
            await channel.close()


async def listed(stub) -> list[pb.Instance]:
    return list((await stub.ListInstances(pb.ListInstancesRequest(include_down=True))).instances)


async def test_registers_heartbeats_with_load_and_deregisters(registry):
    app, stub = registry
    load = LoadReport(queue_depth=2, in_flight=1, queue_depth_by_model={"toyworld-sd": 2})
    models = [("toyworld-sd", "default")]

    async def report() -> LoadReport:  # async callbacks work as well as plain ones
        return load

    registration = Registration(
        app.address,
        me(),
        token=testing.INSTANCE_TOKEN,
        load=report,
        loaded_models=lambda: models,
        heartbeat_interval=0.05,
    )
    await registration.start()
    await asyncio.wait_for(registration.registered.wait(), WAIT)
    (instance,) = await listed(stub)
    assert instance.endpoint == "127.0.0.1:50051" and instance.capacity == 8
    assert [(m.model_id, m.variant) for m in instance.loaded_models] == models

    load = LoadReport(queue_depth=5, in_flight=3)
    models = [("toyworld-sd", "default"), ("other", "")]

    async def heartbeat_arrived() -> bool:
        (current,) = await listed(stub)
        return current.load.queue_depth == 5 and len(current.loaded_models) == 2

    await eventually(heartbeat_arrived)
    await registration.stop()
    assert await listed(stub) == []


async def test_registers_again_when_the_registry_forgets(registry):
    app, stub = registry
    registration = Registration(app.address, me(), token=testing.INSTANCE_TOKEN, heartbeat_interval=0.05)
    await registration.start()
    await asyncio.wait_for(registration.registered.wait(), WAIT)
    await stub.DeregisterInstance(
        pb.DeregisterInstanceRequest(instance_id="diffusion-0"), metadata=testing.INSTANCE
    )

    async def back() -> bool:
        return registration.registrations >= 2 and len(await listed(stub)) == 1

    await eventually(back)
    await registration.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_waits_out_a_registry_that_is_down(tmp_path):
    port = free_port()
    registration = Registration(
        f"127.0.0.1:{port}",
        me(),
        token=testing.INSTANCE_TOKEN,
        heartbeat_interval=0.05,
        retry_initial_seconds=0.05,
        retry_max_seconds=0.2,
        rpc_timeout=1.0,
    )
    await registration.start()
    await asyncio.sleep(0.3)  # several failed attempts; nothing raised
    assert not registration.registered.is_set()
    with testing.database_url("sqlite", tmp_path) as url:
        async with testing.running_registry(url, port=port) as app:
            await asyncio.wait_for(registration.registered.wait(), WAIT)
            channel = grpc.aio.insecure_channel(app.address)
            assert [i.id for i in await listed(pb_grpc.ModelRegistryServiceStub(channel))] == ["diffusion-0"]
            await registration.stop()
            await channel.close()


async def test_a_rejected_token_is_retried_not_fatal(registry):
    app, stub = registry
    registration = Registration(
        app.address,
        me(),
        token="wrong",
        heartbeat_interval=0.05,
        retry_initial_seconds=0.05,
        retry_max_seconds=0.1,
    )
    await registration.start()
    await asyncio.sleep(0.3)
    assert not registration.registered.is_set() and await listed(stub) == []
    await registration.stop()  # never registered: nothing to deregister, no error


def test_registration_settings_mix_into_service_settings(tmp_path):
    class Settings(RegistrationSettings, ServerSettings):
        pass

    token_file = tmp_path / "token"
    token_file.write_text("secret\n")
    settings = Settings.load(
        ["--registry-address", "registry:50060", "--registry-instance-token-file", str(token_file)],
        environ={},
    )
    assert settings.registry_address == "registry:50060" and settings.instance_token() == "secret"
    assert advertised_endpoint("127.0.0.1", 50051) == "127.0.0.1:50051"
    assert advertised_endpoint("0.0.0.0", 50051) == f"{socket.gethostname()}:50051"
    assert advertised_endpoint("0.0.0.0", 50051, "pod.svc:50051") == "pod.svc:50051"
