"""Diffusion scheduling on a real gRPC server: queue limits, priorities, model grouping, batching,
cancellation (RPC, Cancel, deadline), tenancy, an injected out-of-memory, and the process entry point."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_diffusion_service import (
    events,
    max_pixel_diff,
    request,
    result,
    settings_for,
    start_service,
    stop_service,
)

from lumiserve.common.v1 import common_pb2
from lumiserve.diffusion.v1 import diffusion_pb2 as pb
from lumiserve.diffusion.v1 import diffusion_pb2_grpc
from services.common.errors import NotFound
from services.diffusion import worker
from services.diffusion.engine import cpu_split
from services.diffusion.generation import encode_images
from services.diffusion.jobs import JobState
from services.diffusion.main import build

# numpy 2 deprecations raised inside diffusers' schedulers: not ours to fix
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers"),
    pytest.mark.filterwarnings("ignore:Should have t:UserWarning:torchsde"),  # torchsde float rounding
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]

OTHER_TENANT = (("x-lumiserve-tenant", "someone-else"),)
MAX_QUEUE = 3


@pytest.fixture(scope="module")
async def service(tiny_models):
    host, plane, channel, _ = await start_service(
        settings_for(tiny_models, max_queue=MAX_QUEUE, engine="thread")
    )
    yield host, plane, diffusion_pb2_grpc.DiffusionServiceStub(channel)
    await stop_service(host, plane, channel)


def long_request(job_id: str, **fields) -> pb.GenerateRequest:
    return request(job_id=job_id, steps=1000, width=32, height=32, **fields)


async def running(stub, job_id: str, min_step: int = 1, **fields):
    """Starts a long job and returns its call once it has reported `min_step` steps."""
    call = stub.Generate(long_request(job_id, **fields))
    while (event := await call.read()) is not grpc.aio.EOF:
        if event.HasField("progress") and event.progress.step >= min_step:
            return call
    raise AssertionError(f"{job_id} ended early")


async def first_event(call) -> pb.GenerateResponse:
    return await asyncio.wait_for(call.read(), 30)


async def read_all(call) -> list[pb.GenerateResponse]:
    """The rest of a stream (read() style: calls here are read before, so no async-for)."""
    received = []
    while (event := await call.read()) is not grpc.aio.EOF:
        received.append(event)
    return received


async def ends_with(call, code: grpc.StatusCode) -> list[pb.GenerateResponse]:
    received: list[pb.GenerateResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        received += await read_all(call)
    assert excinfo.value.code() == code, excinfo.value.details()
    return received


async def cancel(stub, job_id: str) -> int:
    return (await stub.Cancel(pb.CancelRequest(job_id=job_id))).state


async def wait_final(plane, job_id: str, tenant: str = "default"):
    job = await plane.get_job(tenant, job_id)
    for _ in range(600):
        if job.state.final:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"{job_id} still {job.state}")


async def test_full_queue_is_refused_at_once_and_queued_jobs_cancel_at_once(service):
    host, plane, stub = service
    blocker = await running(stub, "full-blocker")
    waiting = [stub.Generate(request(job_id=f"wait-{i}", steps=2 + i)) for i in range(MAX_QUEUE)]
    for call in waiting:
        assert (await first_event(call)).HasField("queued")
    assert plane.load_snapshot()["queue_depth"]["tiny"] == MAX_QUEUE
    depth = host.metrics_registry.get_sample_value(
        "lumiserve_queue_depth", {"model": "tiny", "family": "diffusion"}
    )
    assert depth == MAX_QUEUE
    refused = await ends_with(
        stub.Generate(request(job_id="one-too-many")), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert refused == []
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await stub.GetJob(pb.GetJobRequest(job_id="one-too-many"))
    assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND  # never accepted
    for i, call in enumerate(waiting):
        assert await cancel(stub, f"wait-{i}") == pb.JOB_STATE_CANCELLED
        assert not [e for e in await ends_with(call, grpc.StatusCode.CANCELLED) if not e.HasField("queued")]
    assert plane.load_snapshot()["queue_depth"]["tiny"] == 0
    assert (
        await plane.get_job("default", "full-blocker")
    ).state is JobState.RUNNING  # untouched by the others
    await cancel(stub, "full-blocker")
    await ends_with(blocker, grpc.StatusCode.CANCELLED)


async def test_priorities_go_first_and_positions_move(service):
    _, _, stub = service
    blocker = await running(stub, "prio-blocker")
    calls = {}
    for name, priority, steps in [
        ("low", common_pb2.PRIORITY_LOW, 2),
        ("normal", common_pb2.PRIORITY_NORMAL, 3),
        ("high", common_pb2.PRIORITY_HIGH, 4),
    ]:
        calls[name] = stub.Generate(request(job_id=name, priority=priority, steps=steps))
        assert (await first_event(calls[name])).queued.position == 0  # each outranks those before it
    assert (await stub.GetJob(pb.GetJobRequest(job_id="low"))).job.position == 2
    assert (await stub.GetJob(pb.GetJobRequest(job_id="normal"))).job.state == pb.JOB_STATE_QUEUED
    await cancel(stub, "prio-blocker")
    await ends_with(blocker, grpc.StatusCode.CANCELLED)
    received = {name: await read_all(call) for name, call in calls.items()}
    positions = {
        name: [e.queued.position for e in evs if e.HasField("queued")] for name, evs in received.items()
    }
    assert positions == {"low": [1, 2, 1, 0], "normal": [1, 0], "high": []}
    waited = {name: evs[-1].result.timing.queue_seconds for name, evs in received.items()}
    # submitted low, normal, high: served high, normal, low
    assert waited["high"] < waited["normal"] < waited["low"]


async def test_jobs_for_the_loaded_model_go_before_switching(service, tiny_models):
    _, _, stub = service
    spec = common_pb2.ModelLoadSpec(model="tiny-b", source=str(tiny_models.sd))
    await stub.LoadModel(pb.LoadModelRequest(spec=spec))
    blocker = await running(stub, "group-blocker")  # model "tiny" is on the worker
    other = stub.Generate(request(model="tiny-b", job_id="other-model", steps=2))
    assert (await first_event(other)).HasField("queued")
    same = stub.Generate(request(job_id="same-model", steps=2))
    assert (await first_event(same)).HasField("queued")
    await cancel(stub, "group-blocker")
    await ends_with(blocker, grpc.StatusCode.CANCELLED)
    same_result = (await read_all(same))[-1].result
    other_result = (await read_all(other))[-1].result
    assert same_result.timing.queue_seconds < other_result.timing.queue_seconds
    await stub.UnloadModel(pb.UnloadModelRequest(model="tiny-b"))


async def test_compatible_jobs_run_as_one_batch_and_still_reproduce_alone(service):
    host, _, stub = service
    labels = {"model": "tiny", "family": "diffusion"}
    calls_before = (
        host.metrics_registry.get_sample_value("lumiserve_denoising_steps_per_second_count", labels) or 0
    )  # none yet when this test runs first
    blocker = await running(stub, "batch-blocker")
    calls = [
        stub.Generate(request(job_id=f"batch-{i}", seed=100 + i, steps=3, prompt=f"p{i}")) for i in range(3)
    ]
    for call in calls:
        assert (await first_event(call)).HasField("queued")
    await cancel(stub, "batch-blocker")
    await ends_with(blocker, grpc.StatusCode.CANCELLED)
    results = [(await read_all(call))[-1].result for call in calls]
    calls_after = host.metrics_registry.get_sample_value("lumiserve_denoising_steps_per_second_count", labels)
    assert calls_after - calls_before == 1  # the three jobs shared one pipeline call
    alone = await result(stub, request(seed=101, steps=3, prompt="p1"))
    assert results[1].images[0].seed == 101
    assert max_pixel_diff(alone.images[0].image.data, results[1].images[0].image.data) <= 1


async def test_cancel_rpc_stops_a_running_job_within_one_step(service):
    _, plane, stub = service
    call = await running(stub, "cancel-me", min_step=3)
    assert await cancel(stub, "cancel-me") == pb.JOB_STATE_CANCELLED
    await ends_with(call, grpc.StatusCode.CANCELLED)
    job = await wait_final(plane, "cancel-me")
    assert job.state is JobState.CANCELLED
    assert job.steps_at_cancel >= 3 and job.step - job.steps_at_cancel <= 1
    state = (await stub.GetJob(pb.GetJobRequest(job_id="cancel-me"))).job
    assert state.state == pb.JOB_STATE_CANCELLED and state.step == job.step
    assert await cancel(stub, "cancel-me") == pb.JOB_STATE_CANCELLED  # already final: stays


async def test_client_cancelling_its_rpc_stops_the_job_within_one_step(service):
    _, plane, stub = service
    call = await running(stub, "walk-away", min_step=3)
    call.cancel()
    job = await wait_final(plane, "walk-away")
    assert job.state is JobState.CANCELLED
    assert job.step - job.steps_at_cancel <= 1 and job.step < 1000


async def test_deadline_stops_the_job(service):
    _, plane, stub = service
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await events(stub, long_request("too-slow"), timeout=1.0)
    assert excinfo.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    job = await wait_final(plane, "too-slow")
    assert job.state in (JobState.CANCELLED, JobState.FAILED) and job.step < 1000
    assert (await result(stub, request(steps=2))).images  # the worker is free again


async def test_jobs_belong_to_their_tenant(service):
    _, _, stub = service
    call = await running(stub, "mine")
    for rpc in (
        stub.GetJob(pb.GetJobRequest(job_id="mine"), metadata=OTHER_TENANT),
        stub.Cancel(pb.CancelRequest(job_id="mine"), metadata=OTHER_TENANT),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as excinfo:
            await rpc
        assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await stub.GetJob(pb.GetJobRequest(job_id="mine"))).job.state == pb.JOB_STATE_RUNNING
    with pytest.raises(grpc.aio.AioRpcError) as duplicate:
        await events(stub, request(job_id="mine"))
    assert duplicate.value.code() == grpc.StatusCode.ALREADY_EXISTS
    await cancel(stub, "mine")
    await ends_with(call, grpc.StatusCode.CANCELLED)


async def test_out_of_memory_answers_resource_exhausted_and_the_service_keeps_serving(service):
    host, plane, stub = service
    await plane.inject_oom(1)
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await events(stub, request(job_id="oom", steps=3))
    assert excinfo.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "out of device memory" in excinfo.value.details()
    assert (await plane.get_job("default", "oom")).state is JobState.FAILED
    assert (await result(stub, request(steps=2))).images
    labels = {"model": "tiny", "family": "diffusion", "status": "resource_exhausted"}
    assert host.metrics_registry.get_sample_value("lumiserve_generation_requests_total", labels) >= 1


def spawned_children(pid: int) -> list[int]:
    """The multiprocessing children of a process (Linux /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


async def test_lumiserve_diffusion_command_serves_and_drains_on_sigterm(tiny_models):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "lumiserve.cli",
        "diffusion",
        "--port",
        str(port),
        "--metrics-port",
        "-1",
        "--models",
        f"tiny={tiny_models.sd}",
        "--device",
        "cpu",
        "--num-threads",
        "1",
    ]
    process = subprocess.Popen(command, cwd=os.getcwd(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 90
            status = None
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=2)).status
                except grpc.aio.AioRpcError:
                    status = None
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
                await asyncio.sleep(0.3)
            assert status == health_pb2.HealthCheckResponse.SERVING, process.stderr and process.poll()
            stub = diffusion_pb2_grpc.DiffusionServiceStub(channel)
            assert (await result(stub, request(steps=2))).images
            (engine,) = spawned_children(process.pid)  # the data plane runs in the engine process
            if (split := cpu_split()) is not None:
                assert (os.sched_getaffinity(engine), os.sched_getaffinity(process.pid)) == split
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
        assert not Path(f"/proc/{engine}").exists()  # stopped and reaped by the server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_build_without_loading_serves_models_on_demand(tiny_models):
    settings = settings_for(tiny_models, load_at_start=False, metrics_port=-1)
    host, plane = build(settings)
    await host.start()
    await plane.start()
    await host.set_serving(True)
    try:
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = diffusion_pb2_grpc.DiffusionServiceStub(channel)
            assert (await stub.ListModels(pb.ListModelsRequest())).cache.models == []
            assert (await result(stub, request(steps=2))).images  # loads "tiny" on the worker
            ids = [m.model for m in (await stub.ListModels(pb.ListModelsRequest())).cache.models]
            assert ids == ["tiny"]
    finally:
        await host.drain(grace=0)
        await plane.stop()


async def test_calls_run_on_the_device_thread_between_jobs(service):
    _, plane, _ = service
    ident = await asyncio.wrap_future(plane.worker.run_on_device(threading.get_ident))
    assert ident == plane.worker._thread.ident != threading.get_ident()
    with pytest.raises(ZeroDivisionError):
        await asyncio.wrap_future(plane.worker.run_on_device(lambda: 1 / 0))


async def test_each_call_runs_on_its_own_scheduler_copied_after_the_last_call(service):
    _, plane, stub = service
    key = ("DPM++ 2M", "default")

    async def schedulers(used_before: object = None) -> tuple:
        """(scheduler of the last call, spare, template), read on the device thread between jobs, once
        the encoder has copied the spare for the next call."""

        def read() -> tuple:
            entry = plane.cache.get("tiny")
            return entry.pipe.scheduler, entry.spare_schedulers.get(key), entry.scheduler_templates[key]

        for _ in range(200):
            used, spare, template = await asyncio.wrap_future(plane.worker.run_on_device(read))
            if spare is not None and spare is not used_before:
                return used, spare, template
            await asyncio.sleep(0.05)
        raise AssertionError("no spare scheduler was made after the call")

    first = await result(stub, request(sampler="DPM++ 2M", seed=5))
    used, spare, template = await schedulers()
    assert len({id(used), id(spare), id(template)}) == 3
    second = await result(stub, request(sampler="DPM++ 2M", seed=5))
    used_next, spare_next, _ = await schedulers(used_before=spare)
    assert used_next is spare and spare_next is not spare
    assert first.images[0].image.data == second.images[0].image.data


async def test_the_device_starts_the_next_call_while_the_last_images_encode(service, monkeypatch):
    host, plane, stub = service
    next_began = threading.Event()

    def slow_encode(call, decoded, png_level):  # holds the first call's encoding till the second job began
        if call.jobs[0].id == "encoded-first":
            for _ in range(400):
                with contextlib.suppress(NotFound):
                    if plane.jobs.get("default", "encoded-second").state is not JobState.QUEUED:
                        next_began.set()
                        break
                time.sleep(0.025)
        return encode_images(call, decoded, png_level)

    monkeypatch.setattr(worker, "encode_images", slow_encode)
    first, second = await asyncio.gather(
        result(stub, request(job_id="encoded-first", steps=2)),
        result(stub, request(job_id="encoded-second", steps=3)),  # other steps: never one batch
    )
    assert next_began.is_set(), "the device waited for the first call's images to be encoded"
    assert first.images[0].image.data and second.images[0].image.data
    assert plane.load_snapshot()["in_flight"] == 0
    labels = {"model": "tiny", "family": "diffusion"}
    assert host.metrics_registry.get_sample_value("lumiserve_jobs_in_flight", labels) == 0


async def test_a_failure_to_encode_fails_that_job_only(service, monkeypatch):
    _, _, stub = service

    def failing_encode(call, decoded, png_level):
        if call.jobs[0].id == "unencodable":
            raise OSError("disk full")
        return encode_images(call, decoded, png_level)

    monkeypatch.setattr(worker, "encode_images", failing_encode)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await events(stub, request(job_id="unencodable"))
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert "encoding the images failed: OSError: disk full" in failed.value.details()
    assert (await result(stub, request(job_id="encodable"))).images


async def test_drain_finishes_accepted_jobs_running_and_queued(tiny_models):
    host, plane, channel, _ = await start_service(
        settings_for(tiny_models, metrics_port=-1, load_at_start=True)
    )
    stub = diffusion_pb2_grpc.DiffusionServiceStub(channel)
    try:
        running_call = stub.Generate(request(job_id="in-flight", steps=30, width=32, height=32))
        while not (await running_call.read()).HasField("progress"):
            pass
        queued_call = stub.Generate(request(job_id="accepted", steps=3, seed=9))
        assert (await first_event(queued_call)).HasField("queued")
        drain = asyncio.create_task(host.drain(grace=60))
        await asyncio.sleep(0.2)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await events(stub, request(job_id="too-late"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (await read_all(running_call))[-1].result.images
        assert (await read_all(queued_call))[-1].result.images
        await asyncio.wait_for(drain, 60)
    finally:
        await stop_service(host, plane, channel)


def test_lumiserve_diffusion_exits_with_one_line_when_a_model_cannot_load(tmp_path):
    command = [
        *(sys.executable, "-m", "lumiserve.cli", "diffusion", "--port", "0", "--metrics-port", "-1"),
        *("--models", f"broken={tmp_path / 'missing'}", "--device", "cpu"),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert done.returncode == 1
    assert "diffusion service stopped: cannot load 'broken'" in done.stderr
    assert "Traceback" not in done.stderr
