"""Every metric and label that the autoscalers (KEDA, HPA + prometheus-adapter) and the Grafana dashboard
query is exported: a real gateway is started and scraped after relaying calls, and the model services'
metric classes are read for the metrics only they export."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections import defaultdict
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from deploy import checks
from lumiserve.diffusion.v1 import diffusion_pb2, diffusion_pb2_grpc
from services.gateway.main import GatewayApp
from services.gateway.methods import DIFFUSION, VISION_LANGUAGE, service_names
from services.gateway.settings import GatewaySettings

pytestmark = pytest.mark.skipif(checks.kubectl() is None, reason="kubectl (with kustomize) is not installed")

# Nothing listens there: the relayed call ends UNAVAILABLE after the gateway admitted it, which records
# the request, latency, in-flight and waiting series with their labels (and a retry: two replicas).
REFUSING_BACKENDS = ["diffusion=127.0.0.1:1", "diffusion=127.0.0.1:2"]


@pytest.fixture(scope="module")
async def gateway_metrics() -> dict[str, set[str]]:
    """Sample name -> label names, scraped from a gateway that relayed a Generate call."""
    settings = GatewaySettings.load(
        ["--port", "0", "--metrics-port", "0", "--auth-disabled", "true",
         "--static-backends", ",".join(REFUSING_BACKENDS)],
        environ={},
    )  # fmt: skip
    app = GatewayApp(settings)
    await app.host.start()
    try:
        await app.startup()
        await app.host.set_serving(True)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.host.port}") as channel:
            stub = diffusion_pb2_grpc.DiffusionServiceStub(channel)
            request = diffusion_pb2.GenerateRequest(model="toyworld-sd", prompt="a red circle")
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                async for _ in stub.Generate(request, timeout=10):
                    pass
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        url = f"http://127.0.0.1:{app.host.metrics_port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    finally:
        await app.host.drain(0)
        await app.shutdown()
    samples: dict[str, set[str]] = defaultdict(set)
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            samples[sample.name] |= set(sample.labels)
    # A labelled metric without observations yet (time to first event: the refusing backends sent none)
    # is exported as its # HELP / # TYPE lines: take its labels from the live gateway's declaration.
    for name, labels in class_metrics(app.metrics, app.host.rpc_metrics).items():
        if name not in samples and re.sub(r"_(total|bucket|sum|count)$", "", name) in families:
            samples[name] = labels
    return dict(samples)


def class_metrics(*instances: Any) -> dict[str, set[str]]:
    """Sample names -> label names of the metrics a service's metrics class declares."""
    samples: dict[str, set[str]] = {}
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    for instance in instances:
        for metric in vars(instance).values():
            if isinstance(metric, MetricWrapperBase):
                for suffix in suffixes.get(metric._type, [""]):
                    labels = set(metric._labelnames) | ({"le"} if suffix == "_bucket" else set())
                    samples[metric._name + suffix] = labels
    return samples


@pytest.fixture(scope="module")
def model_service_metrics() -> dict[str, set[str]]:
    from services.diffusion.metrics import DiffusionMetrics
    from services.vision_language.metrics import VlmMetrics

    return class_metrics(DiffusionMetrics(CollectorRegistry()), VlmMetrics(CollectorRegistry()))


@pytest.fixture(scope="module")
def queries(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str]]:
    """(where, query) of every PromQL query the deployment runs: all overlays, both autoscalers, the
    prometheus-adapter rules and the dashboard."""
    tree = tmp_path_factory.mktemp("k8s-hpa")
    found = []
    for overlay in checks.OVERLAYS:
        keda = checks.build(checks.K8S / "overlays" / overlay)
        found += [(f"{overlay} ScaledObject {name}", q) for name, q in checks.keda_queries(keda)]
        hpa = checks.build(checks.with_autoscaling(tree, overlay, "hpa"))
        found += [(f"{overlay} HPA {name}", q) for name, q in checks.hpa_queries(hpa)]
    found += [(f"dashboard {title}", q) for title, q in checks.dashboard_queries()]
    found += [(f"prometheus-adapter {key}", q) for key, q in checks.adapter_queries()]
    return found


def test_queries_were_found(queries: list[tuple[str, str]]) -> None:
    overlays = len(checks.OVERLAYS)
    assert sum(" ScaledObject " in where for where, _ in queries) == 4 * overlays
    assert sum(" HPA " in where for where, _ in queries) == 2 * overlays
    assert sum(where.startswith("dashboard") for where, _ in queries) >= 10
    assert sum(where.startswith("prometheus-adapter") for where, _ in queries) == 3


def test_every_queried_metric_and_label_is_exported(
    gateway_metrics: dict[str, set[str]],
    model_service_metrics: dict[str, set[str]],
    queries: list[tuple[str, str]],
) -> None:
    exported = {**model_service_metrics, **gateway_metrics}
    checked = set()
    for where, query in queries:
        for selector in checks.selectors(query):
            assert selector.metric in exported, f"{where}: {selector.metric} is not exported ({query})"
            labels = exported[selector.metric] | checks.TARGET_LABELS
            used = {m.label for m in selector.matchers} | selector.grouping
            assert used <= labels, (
                f"{where}: {selector.metric} has no label {sorted(used - labels)} ({query})"
            )
            checked.add(selector.metric)
    # The autoscalers' signal comes from the scraped gateway itself, with its labels.
    assert gateway_metrics["lumiserve_gateway_waiting_requests"] >= {"model", "family"}
    assert "lumiserve_gateway_waiting_requests" in checked
    assert "lumiserve_gateway_requests_total" in checked


def test_label_values_in_queries_are_real(queries: list[tuple[str, str]]) -> None:
    values = {
        "family": {DIFFUSION, VISION_LANGUAGE},
        "service": set(service_names()),
        "code": {code.name for code in grpc.StatusCode},
    }
    for where, query in queries:
        for selector in checks.selectors(query):
            for matcher in selector.matchers:
                # `label!=""` only asks for the label to be present.
                if matcher.label in values and matcher.op in ("=", "!=") and matcher.value:
                    assert matcher.value in values[matcher.label], f"{where}: {matcher} ({query})"


def test_relayed_call_labels_the_waiting_gauge_by_model_and_family(
    gateway_metrics: dict[str, set[str]],
) -> None:
    for name in ("lumiserve_gateway_in_flight_requests", "lumiserve_gateway_backend_replicas"):
        assert gateway_metrics[name] == {"model", "family"}
    assert gateway_metrics["lumiserve_gateway_requests_total"] >= {"service", "method", "model", "code"}
    assert "lumiserve_gateway_retries_total" in gateway_metrics
