"""The shared service runtime on a real grpc.aio server on 127.0.0.1 with ephemeral ports.

A probe servicer implements two RPCs of the diffusion contract just enough to exercise the runtime:
errors raised by service code, a call that waits until released, and a stream of events.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lumiserve.diffusion.v1 import diffusion_pb2, diffusion_pb2_grpc
from services.common import errors
from services.common.server import ServiceBinding, ServiceHost, run_until_signal
from services.common.settings import ServerSettings

SERVICE = "lumiserve.diffusion.v1.DiffusionService"

ERRORS = {
    "invalid": (
        errors.InvalidArgument("job_id", "must be 1-64 characters"),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "missing": (errors.NotFound("job 'missing' does not exist"), grpc.StatusCode.NOT_FOUND),
    "exists": (errors.AlreadyExists("job exists"), grpc.StatusCode.ALREADY_EXISTS),
    "precondition": (errors.FailedPrecondition("model not loaded"), grpc.StatusCode.FAILED_PRECONDITION),
    "full": (
        errors.ResourceExhausted("queue full (16 jobs)", retry_after=2.5),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    "draining": (errors.Unavailable("draining"), grpc.StatusCode.UNAVAILABLE),
    "denied": (errors.PermissionDenied("not yours"), grpc.StatusCode.PERMISSION_DENIED),
    "anonymous": (errors.Unauthenticated("no API key"), grpc.StatusCode.UNAUTHENTICATED),
    "late": (errors.DeadlineExceeded("deadline passed"), grpc.StatusCode.DEADLINE_EXCEEDED),
    "bug": (RuntimeError("kaput"), grpc.StatusCode.INTERNAL),
    "keyerror": (KeyError("x"), grpc.StatusCode.INTERNAL),
}


class ProbeServicer(diffusion_pb2_grpc.DiffusionServiceServicer):
    def __init__(self) -> None:
        self.slow_started = asyncio.Event()
        self.release = asyncio.Event()

    async def GetJob(self, request, context):
        if request.job_id in ERRORS:
            raise ERRORS[request.job_id][0]
        if request.job_id == "slow":
            self.slow_started.set()
            await self.release.wait()
        return diffusion_pb2.GetJobResponse(job=diffusion_pb2.Job(job_id=request.job_id))

    async def Generate(self, request, context):
        for step in range(1, 4):
            yield diffusion_pb2.GenerateResponse(
                job_id="j", progress=diffusion_pb2.Progress(step=step, total_steps=3)
            )
        if request.prompt == "fail":
            raise errors.InvalidArgument("prompt", "refused after 3 steps")
        yield diffusion_pb2.GenerateResponse(job_id="j", result=diffusion_pb2.Result(), final=True)


def _settings(**overrides) -> ServerSettings:
    values = {"host": "127.0.0.1", "port": 0, "metrics_port": 0, "drain_grace_seconds": 5.0, **overrides}
    return ServerSettings(**values)


@pytest.fixture
async def probe():
    servicer = ProbeServicer()
    host = ServiceHost(_settings(), [ServiceBinding.of(diffusion_pb2_grpc, "DiffusionService", servicer)])
    await host.start()
    channel = grpc.aio.insecure_channel(host.address)
    yield host, servicer, channel
    servicer.release.set()
    await channel.close()
    await host.drain(grace=0)


async def _health(channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(service=service))).status


async def test_health_is_not_serving_until_started_then_serving(probe):
    host, _, channel = probe
    assert await _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await _health(channel, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    await host.set_serving(True)
    assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    assert await _health(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING


async def test_health_turns_not_serving_when_draining(probe):
    host, _, channel = probe
    await host.set_serving(True)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
    drain = asyncio.create_task(host.drain(grace=1))
    assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()
    await drain


async def test_reflection_lists_the_services(probe):
    _, _, channel = probe
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    response = await call.read()
    names = {s.name for s in response.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    call.cancel()


async def test_drain_finishes_in_flight_call_and_refuses_new_ones(probe):
    host, servicer, channel = probe
    stub = diffusion_pb2_grpc.DiffusionServiceStub(channel)
    in_flight = asyncio.ensure_future(stub.GetJob(diffusion_pb2.GetJobRequest(job_id="slow")))
    await asyncio.wait_for(servicer.slow_started.wait(), 5)
    drain = asyncio.create_task(host.drain(grace=10))
    await asyncio.sleep(0.2)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetJob(diffusion_pb2.GetJobRequest(job_id="new"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not drain.done()
    servicer.release.set()
    assert (await in_flight).job.job_id == "slow"
    await asyncio.wait_for(drain, 5)


@pytest.mark.parametrize("job_id", sorted(ERRORS))
async def test_errors_map_to_status_codes(probe, job_id):
    _, _, channel = probe
    stub = diffusion_pb2_grpc.DiffusionServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await stub.GetJob(diffusion_pb2.GetJobRequest(job_id=job_id))
    error, code = ERRORS[job_id]
    assert excinfo.value.code() == code
    if isinstance(error, errors.ServiceError):
        assert excinfo.value.details() == error.message
    else:
        assert excinfo.value.details() == f"internal error in /{SERVICE}/GetJob: {type(error).__name__}"


async def test_rich_details_name_the_field_and_the_retry_delay(probe):
    _, _, channel = probe
    stub = diffusion_pb2_grpc.DiffusionServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await stub.GetJob(diffusion_pb2.GetJobRequest(job_id="invalid"))
    (bad_request,) = errors.status_details(invalid.value)
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert bad_request.field_violations[0].field == "job_id"
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await stub.GetJob(diffusion_pb2.GetJobRequest(job_id="full"))
    (retry,) = errors.status_details(full.value)
    assert retry.retry_delay.ToMilliseconds() == 2500


async def test_stream_delivers_events_then_the_mapped_error(probe):
    _, _, channel = probe
    stub = diffusion_pb2_grpc.DiffusionServiceStub(channel)
    call = stub.Generate(diffusion_pb2.GenerateRequest(prompt="fail"))
    steps = []
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        async for event in call:
            steps.append(event.progress.step)
    assert steps == [1, 2, 3]
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    events = [e async for e in stub.Generate(diffusion_pb2.GenerateRequest(prompt="ok"))]
    assert events[-1].final and events[-1].HasField("result")


async def test_metrics_endpoint_counts_requests_by_code(probe):
    host, _, channel = probe
    stub = diffusion_pb2_grpc.DiffusionServiceStub(channel)
    await stub.GetJob(diffusion_pb2.GetJobRequest(job_id="a"))
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetJob(diffusion_pb2.GetJobRequest(job_id="missing"))
    [e async for e in stub.Generate(diffusion_pb2.GenerateRequest())]
    url = f"http://127.0.0.1:{host.metrics_port}/metrics"
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    labels = f'service="{SERVICE}"'
    assert f'lumiserve_rpc_requests_total{{code="OK",method="GetJob",{labels}}} 1.0' in text
    assert f'lumiserve_rpc_requests_total{{code="NOT_FOUND",method="GetJob",{labels}}} 2.0' in text
    assert f'lumiserve_rpc_requests_total{{code="OK",method="Generate",{labels}}} 1.0' in text
    assert f'lumiserve_rpc_in_flight{{method="GetJob",{labels}}} 0.0' in text
    assert "grpc.health.v1.Health" not in text


async def test_run_until_signal_drains_on_sigterm_and_returns_zero():
    servicer = ProbeServicer()
    host = ServiceHost(_settings(), [ServiceBinding.of(diffusion_pb2_grpc, "DiffusionService", servicer)])
    loaded = asyncio.Event()

    async def startup():
        loaded.set()

    runner = asyncio.create_task(run_until_signal(host, startup))
    await asyncio.wait_for(loaded.wait(), 5)
    await asyncio.sleep(0.1)
    async with grpc.aio.insecure_channel(host.address) as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(runner, 10) == 0
    assert host.draining


async def test_failed_startup_stops_the_server_and_raises():
    host = ServiceHost(
        _settings(), [ServiceBinding.of(diffusion_pb2_grpc, "DiffusionService", ProbeServicer())]
    )

    async def startup():
        raise errors.FailedPrecondition("model folder /nope does not exist")

    with pytest.raises(errors.FailedPrecondition):
        await run_until_signal(host, startup)
    assert host.draining


async def test_port_in_use_is_an_error(probe):
    host, _, _ = probe
    clash = ServiceHost(_settings(port=host.port, metrics_port=-1), [])
    with pytest.raises(OSError, match="cannot listen"):
        await clash.start()


async def test_tls_port(tmp_path: Path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    host = ServiceHost(
        _settings(tls_cert_file=cert, tls_key_file=key, metrics_port=-1),
        [ServiceBinding.of(diffusion_pb2_grpc, "DiffusionService", ProbeServicer())],
    )
    await host.start()
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{host.port}", credentials) as channel:
        stub = diffusion_pb2_grpc.DiffusionServiceStub(channel)
        assert (await stub.GetJob(diffusion_pb2.GetJobRequest(job_id="tls"))).job.job_id == "tls"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as plain:
        with pytest.raises(grpc.aio.AioRpcError):
            await diffusion_pb2_grpc.DiffusionServiceStub(plain).GetJob(
                diffusion_pb2.GetJobRequest(), timeout=2
            )
    await host.drain(grace=0)
