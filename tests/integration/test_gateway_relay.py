"""The gateway's streaming relay against an in-process backend: flow control, deadline and cancellation
propagation, and the per-call stream metrics (time to first event, waiting gauge)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from lumiserve.common.v1 import common_pb2
from lumiserve.diffusion.v1 import diffusion_pb2, diffusion_pb2_grpc
from services.common.server import ServiceBinding, ServiceHost
from services.common.settings import ServerSettings
from services.gateway.main import GatewayApp
from services.gateway.settings import GatewaySettings

PREVIEW = b"\0" * 256 * 1024  # big events, so that transport buffers hold only a few of them
EVENTS = 200


class Backend(diffusion_pb2_grpc.DiffusionServiceServicer):
    """Queues each call until `start` is set, then streams EVENTS progress events, counting them."""

    def __init__(self) -> None:
        self.produced = 0
        self.time_remaining: float | None = None
        self.cancelled = asyncio.Event()
        self.start = asyncio.Event()

    async def Generate(
        self, request: diffusion_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[diffusion_pb2.GenerateResponse]:
        self.produced, self.time_remaining = 0, context.time_remaining()
        try:
            yield diffusion_pb2.GenerateResponse(queued=diffusion_pb2.Queued())
            await self.start.wait()
            for step in range(1, EVENTS + 1):
                preview = common_pb2.Image(data=PREVIEW)
                yield diffusion_pb2.GenerateResponse(
                    progress=diffusion_pb2.Progress(step=step, total_steps=EVENTS, previews=[preview])
                )
                self.produced = step
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@pytest.fixture(scope="module")
async def relay() -> AsyncIterator[tuple[Backend, GatewayApp, diffusion_pb2_grpc.DiffusionServiceStub]]:
    backend = Backend()
    host = ServiceHost(
        ServerSettings(port=0, metrics_port=-1),
        [ServiceBinding.of(diffusion_pb2_grpc, "DiffusionService", backend)],
    )
    await host.start()
    settings = GatewaySettings.load(
        ["--port", "0", "--metrics-port", "-1", "--auth-disabled", "true",
         "--static-backends", f"diffusion={host.address}"],
        environ={},
    )  # fmt: skip
    app = GatewayApp(settings)
    await app.host.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.host.port}") as channel:
            yield backend, app, diffusion_pb2_grpc.DiffusionServiceStub(channel)
    finally:
        await app.host.drain(0)
        await app.shutdown()
        await host.drain(0)


def sample(app: GatewayApp, name: str) -> float:
    labels = {"service": "lumiserve.diffusion.v1.DiffusionService", "method": "Generate"}
    if name == "lumiserve_gateway_waiting_requests":
        labels = {"model": "m", "family": "diffusion"}
    return app.metrics_registry.get_sample_value(name, labels) or 0.0


async def test_the_backend_is_read_only_as_fast_as_the_client_takes_events(relay) -> None:
    backend, app, stub = relay
    backend.start.clear()
    first_events = sample(app, "lumiserve_gateway_time_to_first_event_seconds_count")
    call = stub.Generate(diffusion_pb2.GenerateRequest(model="m"), timeout=30)
    assert (await call.read()).HasField("queued")
    assert sample(app, "lumiserve_gateway_waiting_requests") == 1  # queued: counted as waiting
    backend.start.set()
    assert (await call.read()).progress.step == 1
    assert sample(app, "lumiserve_gateway_waiting_requests") == 0
    assert sample(app, "lumiserve_gateway_time_to_first_event_seconds_count") == first_events + 1
    await asyncio.sleep(1.0)  # a stalled client: only transport buffers may fill meanwhile
    assert backend.produced < EVENTS // 2, f"the relay read {backend.produced} events ahead of its client"
    steps = []
    while (event := await call.read()) is not grpc.aio.EOF:
        steps.append(event.progress.step)
    assert steps == list(range(2, EVENTS + 1))


async def test_deadline_and_cancellation_reach_the_backend(relay) -> None:
    backend, _, stub = relay
    backend.start.clear()
    backend.cancelled.clear()
    call = stub.Generate(diffusion_pb2.GenerateRequest(model="m"), timeout=5)
    assert (await call.read()).HasField("queued")
    assert backend.time_remaining is not None and 0 < backend.time_remaining < 6  # not unlimited
    call.cancel()
    await asyncio.wait_for(backend.cancelled.wait(), 5)
