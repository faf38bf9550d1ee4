"""The engine process (services/diffusion/engine.py): the data plane in a child process behind the gRPC
server. The whole service suite (test_diffusion_service.py) runs through it; these tests cover what is
the engine's own: identical results to the in-process plane, errors and jobs crossing the pipe, the
engine dying and being replaced, and the CPU split."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import threading
import time
from unittest import mock

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from test_diffusion_service import events, request, result, settings_for, start_service, stop_service

from lumiserve.diffusion.v1 import diffusion_pb2 as pb
from lumiserve.diffusion.v1 import diffusion_pb2_grpc
from services.common import errors
from services.diffusion.engine import EngineClient, cpu_split

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers"),
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]


@pytest.fixture
async def engine_service(tiny_models):
    host, plane, channel, _ = await start_service(settings_for(tiny_models))
    assert isinstance(plane, EngineClient) and plane.pid not in (None, os.getpid())
    yield host, plane, diffusion_pb2_grpc.DiffusionServiceStub(channel), channel
    await stop_service(host, plane, channel)


async def test_the_engine_gives_the_same_images_as_the_in_process_plane(tiny_models, engine_service):
    _, _, stub, _ = engine_service
    host, plane, channel, _ = await start_service(settings_for(tiny_models, engine="thread"))
    try:
        thread_stub = diffusion_pb2_grpc.DiffusionServiceStub(channel)
        req = request(seed=11, num_images=2, steps=3)
        engine_images = [i.image.data for i in (await result(stub, req)).images]
        thread_images = [i.image.data for i in (await result(thread_stub, req)).images]
        assert engine_images == thread_images and len(engine_images) == 2
    finally:
        await stop_service(host, plane, channel)


async def test_errors_jobs_and_cancellation_cross_the_pipe(engine_service):
    _, plane, stub, _ = engine_service
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await events(stub, request(steps=100000))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "steps" in refused.value.details()
    (violation,) = errors.status_details(refused.value)[0].field_violations
    assert violation.field == "steps"

    call = stub.Generate(request(job_id="long", steps=1000))
    async for event in call:
        if event.HasField("progress") and event.progress.step >= 2:
            break
    assert (await stub.Cancel(pb.CancelRequest(job_id="long"))).state == pb.JOB_STATE_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as cancelled:
        async for _ in call:
            pass
    assert cancelled.value.code() == grpc.StatusCode.CANCELLED
    job = (await stub.GetJob(pb.GetJobRequest(job_id="long"))).job
    assert job.state == pb.JOB_STATE_CANCELLED and 2 <= job.step < 1000
    assert (await plane.get_job("default", "long")).step == job.step  # a snapshot from the engine
    other = (("x-lumiserve-tenant", "someone-else"),)
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await stub.GetJob(pb.GetJobRequest(job_id="long"), metadata=other)
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_client_going_away_cancels_its_job_in_the_engine(engine_service):
    _, plane, stub, _ = engine_service
    call = stub.Generate(request(job_id="gone", steps=1000))
    async for event in call:
        if event.HasField("progress"):
            break
    call.cancel()
    for _ in range(100):
        if (await plane.get_job("default", "gone")).state.final:
            break
        await asyncio.sleep(0.05)
    job = await plane.get_job("default", "gone")
    assert job.state.value == "cancelled" and job.step < 1000


async def health_becomes(channel, status: int, seconds: float) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(int(seconds / 0.05)):
        if (await health.Check(health_pb2.HealthCheckRequest())).status == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"health never became {status}")


async def test_a_dead_engine_ends_its_streams_unavailable_and_a_new_one_takes_over(engine_service):
    host, plane, stub, channel = engine_service
    call = stub.Generate(request(steps=1000))
    async for event in call:
        if event.HasField("progress"):
            break
    dead = plane.pid
    os.kill(dead, signal.SIGKILL)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        async for _ in call:
            pass
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE and "engine" in ended.value.details()
    await health_becomes(channel, health_pb2.HealthCheckResponse.NOT_SERVING, 5)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await events(stub, request(steps=2))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    await health_becomes(channel, health_pb2.HealthCheckResponse.SERVING, 90)  # models loaded again
    assert plane.pid not in (None, dead)
    assert (await result(stub, request(steps=2))).images
    restarts = host.metrics_registry.get_sample_value(
        "lumiserve_engine_restarts_total", {"family": "diffusion"}
    )
    assert restarts == 1


def payload_size(plane, payload: bytes) -> int:
    """Runs on the engine's device thread (pickled by reference)."""
    return len(payload)


async def test_a_large_message_to_the_engine_never_blocks_the_event_loop(engine_service):
    _, plane, _, _ = engine_service
    payload = bytes(64 * 2**20)  # far more than the pipe buffers
    os.kill(plane.pid, signal.SIGSTOP)  # the engine reads nothing meanwhile
    resume = threading.Timer(10, os.kill, (plane.pid, signal.SIGCONT))  # never hang the suite
    resume.start()
    try:
        started = time.monotonic()
        call = asyncio.ensure_future(plane.run_on_device(payload_size, payload))
        await asyncio.sleep(0.1)  # the loop goes on while the message waits for the engine
        assert time.monotonic() - started < 5, "sending the message blocked the event loop"
    finally:
        os.kill(plane.pid, signal.SIGCONT)
        resume.cancel()
    assert await call == len(payload)
    with pytest.raises(Exception, match="pickle"):  # an argument that cannot cross fails its call only
        await asyncio.wait_for(plane.run_on_device(lambda plane: 1), 10)
    assert await plane.run_on_device(payload_size, b"abc") == 3


def test_the_server_keeps_the_last_cpu_and_the_engine_the_others():
    allowed = sorted(os.sched_getaffinity(0))
    split = cpu_split()
    if len(allowed) < 2:
        assert split is None
    else:
        assert split == (set(allowed[:-1]), {allowed[-1]})


async def test_an_engine_that_cannot_be_spawned_reports_why(tiny_models):
    client = EngineClient(settings_for(tiny_models), CollectorRegistry())
    refused = OSError("fork: no more processes")
    spawning = mock.patch.object(multiprocessing.context.SpawnProcess, "start", side_effect=refused)
    with spawning, pytest.raises(OSError, match="no more processes"):
        await client.start()
