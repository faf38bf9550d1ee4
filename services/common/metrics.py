"""Prometheus metrics: a registry per server host, RPC metrics every service shares, the /metrics endpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Latency buckets from 1 ms to ~2 min: covers unary lookups up to long diffusion jobs.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class RpcMetrics:
    """Requests by status, duration and in-flight per gRPC method, recorded by the ServiceInterceptor."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["service", "method"]
        self.requests = Counter(
            "lumiserve_rpc_requests",
            "RPCs handled, by final status code.",
            [*labels, "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "lumiserve_rpc_duration_seconds",
            "RPC wall time, to the last response.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "lumiserve_rpc_in_flight", "RPCs being handled now.", labels, registry=registry
        )

    @contextmanager
    def track(self, service: str, method: str, context: grpc.aio.ServicerContext) -> Iterator[None]:
        in_flight = self.in_flight.labels(service, method)
        in_flight.inc()
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            yield
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        finally:
            in_flight.dec()
            self.duration.labels(service, method).observe(time.perf_counter() - start)
            self.requests.labels(service, method, code.name).inc()


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> tuple[int, Callable[[], None]]:
    """Serves /metrics on its own HTTP port (0 = ephemeral). Returns the bound port and a stop function."""
    server, thread = start_http_server(port, host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return server.server_port, stop
