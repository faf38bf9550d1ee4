"""Gateway metrics. `lumiserve_gateway_waiting_requests{model,family}` is the gauge autoscalers read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.errors import ServiceError
from services.common.metrics import LATENCY_BUCKETS


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "lumiserve_gateway_requests",
            "Calls through the gateway, by final status.",
            ["service", "method", "model", "tenant_class", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "lumiserve_gateway_request_duration_seconds",
            "End-to-end call time through the gateway.",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.first_event = Histogram(
            "lumiserve_gateway_time_to_first_event_seconds",
            "Time to the first streamed event (the first token for Chat).",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "lumiserve_gateway_in_flight_requests",
            "Calls being relayed now.",
            ["model", "family"],
            registry=registry,
        )
        self.waiting = Gauge(
            "lumiserve_gateway_waiting_requests",
            "Admitted generation calls not yet started by a backend (queued). Autoscaling reads this.",
            ["model", "family"],
            registry=registry,
        )
        self.replicas = Gauge(
            "lumiserve_gateway_backend_replicas",
            "Healthy backend replicas serving a model.",
            ["model", "family"],
            registry=registry,
        )
        self.retries = Counter(
            "lumiserve_gateway_retries",
            "Calls retried on another replica.",
            ["service", "method"],
            registry=registry,
        )

    @contextmanager
    def track(self, service: str, method: str, labels: dict[str, str]) -> Iterator[None]:
        """Times a call and counts it by the status it ends with. `labels` (model, tenant_class) may be
        filled in while the call runs."""
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            yield
        except ServiceError as error:
            code = error.code
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = grpc.StatusCode.INTERNAL
            raise
        finally:
            self.latency.labels(service, method).observe(time.perf_counter() - start)
            self.requests.labels(
                service, method, labels.get("model", ""), labels.get("tenant_class", ""), code.name
            ).inc()

    def set_replicas(self, counts: dict[tuple[str, str], int]) -> None:
        self.replicas.clear()
        for (model, family), count in counts.items():
            self.replicas.labels(model, family).set(count)
