"""The gRPC server every lumiserve service runs in: health, reflection, interceptors, metrics, drain.

host = ServiceHost(settings, [ServiceBinding.of(diffusion_pb2_grpc, "DiffusionService", servicer)])
await host.start()          # listening, health NOT_SERVING
...load models...
await host.set_serving(True)
await host.drain()          # NOT_SERVING, refuse new calls, finish in-flight within the grace
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from services.common.interceptors import ServiceInterceptor
from services.common.metrics import RpcMetrics, serve_metrics
from services.common.settings import ServerSettings

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer and how to add it to a server, under its full service name."""

    name: str
    servicer: object
    add_to_server: Callable[[object, grpc.aio.Server], None]

    @classmethod
    def of(cls, grpc_module: ModuleType, service: str, servicer: object) -> ServiceBinding:
        """Binds `servicer` as `service` of a generated `*_pb2_grpc` module."""
        pb2 = grpc_module.__name__.removesuffix("_grpc")
        descriptor = __import__(pb2, fromlist=["DESCRIPTOR"]).DESCRIPTOR
        name = descriptor.services_by_name[service].full_name
        return cls(name, servicer, getattr(grpc_module, f"add_{service}Servicer_to_server"))

    @classmethod
    def generic(cls, name: str, handler: grpc.GenericRpcHandler) -> ServiceBinding:
        """Binds a generic handler (e.g. the gateway's relay) that serves the methods of `name`."""
        return cls(name, handler, lambda h, server: server.add_generic_rpc_handlers((h,)))


def server_options(settings: ServerSettings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", int(settings.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.so_reuseport", 0),  # a port already in use is an error, not a silent second listener
    ]


class ServiceHost:
    """Owns one grpc.aio server with the services bound, health, reflection and the metrics endpoint."""

    def __init__(
        self,
        settings: ServerSettings,
        bindings: Sequence[ServiceBinding],
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.bindings = list(bindings)
        self.metrics_registry = metrics_registry or CollectorRegistry()
        self.rpc_metrics = RpcMetrics(self.metrics_registry)
        self.health = health_aio.HealthServicer()
        self._extra_interceptors = list(interceptors)
        self._server: grpc.aio.Server | None = None
        self._stop_metrics: Callable[[], None] | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.draining = False

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> None:
        """Binds and starts serving; every service reports NOT_SERVING until set_serving(True)."""
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        interceptors = [
            ServiceInterceptor(self.rpc_metrics, skip_metrics_services=(health_name,)),
            *self._extra_interceptors,
        ]
        server = grpc.aio.server(interceptors=interceptors, options=server_options(self.settings))
        for binding in self.bindings:
            binding.add_to_server(binding.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [b.name for b in self.bindings]
        reflection.enable_server_reflection(
            [*names, health_name, reflection.SERVICE_NAME],
            server,
        )
        address = f"{self.settings.host}:{self.settings.port}"
        try:
            if self.settings.tls_cert_file and self.settings.tls_key_file:
                credentials = grpc.ssl_server_credentials(
                    [(self.settings.tls_key_file.read_bytes(), self.settings.tls_cert_file.read_bytes())]
                )
                self.port = server.add_secure_port(address, credentials)
            else:
                self.port = server.add_insecure_port(address)
        except RuntimeError:  # grpc reports a failed bind without the reason
            raise OSError(f"cannot listen on {address}: address in use or not available") from None
        for name in ["", *names]:
            await self.health.set(name, NOT_SERVING)
        await server.start()
        self._server = server
        if self.settings.metrics_port >= 0:
            self.metrics_port, self._stop_metrics = serve_metrics(
                self.metrics_registry, self.settings.host, self.settings.metrics_port
            )
        log.info("listening on %s (metrics port %s)", f"{self.settings.host}:{self.port}", self.metrics_port)

    async def set_serving(self, serving: bool, service: str | None = None) -> None:
        """Reports SERVING / NOT_SERVING for one service, or for all and the overall status."""
        names = [service] if service is not None else ["", *(b.name for b in self.bindings)]
        for name in names:
            await self.health.set(name, SERVING if serving else NOT_SERVING)

    async def drain(self, grace: float | None = None) -> None:
        """NOT_SERVING at once, refuse new calls, give in-flight calls `grace` seconds, then stop."""
        if self._server is None or self.draining:
            return
        self.draining = True
        await self.health.enter_graceful_shutdown()
        grace = self.settings.drain_grace_seconds if grace is None else grace
        log.info("draining: finishing in-flight calls within %.1f s", grace)
        await self._server.stop(grace)
        if self._stop_metrics:
            self._stop_metrics()
        log.info("stopped")

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def run_until_signal(
    host: ServiceHost,
    startup: Callable[[], Awaitable[None]] | None = None,
    shutdown: Callable[[], Awaitable[None]] | None = None,
    after_serving: Callable[[], Awaitable[None]] | None = None,
    before_drain: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """Runs a service process: start, `startup` (e.g. load models) while NOT_SERVING, report SERVING
    and call `after_serving` (e.g. register with the registry), serve until SIGTERM or SIGINT, call
    `before_drain` (deregister), drain within the grace period, `shutdown`, return exit status 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await host.start()
        if startup is not None:
            starting = asyncio.ensure_future(startup())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not starting.done():
                starting.cancel()
            elif starting.exception() is not None:
                await host.drain(grace=0)
                raise starting.exception()  # type: ignore[misc]
        if not stop.is_set():
            await host.set_serving(True)
            write_ready_file(host)
            log.info("serving")
            if after_serving is not None:
                await after_serving()
            await stop.wait()
            if before_drain is not None:
                await before_drain()
        await host.drain()
        if shutdown is not None:
            await shutdown()
        return 0
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        if host.settings.ready_file is not None:
            host.settings.ready_file.unlink(missing_ok=True)


def write_ready_file(host: ServiceHost) -> None:
    """Tells a launcher the bound ports, atomically (it polls for the file)."""
    path = host.settings.ready_file
    if path is None:
        return
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"port": host.port, "metrics_port": host.metrics_port, "pid": os.getpid()}))
    partial.replace(path)
