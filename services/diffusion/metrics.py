"""Prometheus metrics of the diffusion service, on the host's registry.

`lumiserve_queue_depth{model, family="diffusion"}` is what autoscalers read.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS

FAMILY = "diffusion"
_RATE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500)


class DiffusionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        model = ["model", "family"]
        self.requests = Counter(
            "lumiserve_generation_requests",
            "Generation jobs by final status.",
            [*model, "status"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "lumiserve_queue_depth", "Jobs waiting, per model.", model, registry=registry
        )
        self.queue_time = Histogram(
            "lumiserve_queue_time_seconds",
            "Time from acceptance to the start of work.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge("lumiserve_jobs_in_flight", "Jobs running now.", model, registry=registry)
        self.first_event = Histogram(
            "lumiserve_time_to_first_event_seconds",
            "Time from acceptance to the first progress event.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "lumiserve_generation_seconds",
            "Time from acceptance to the result.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.steps = Counter("lumiserve_denoising_steps", "Denoising steps run.", model, registry=registry)
        self.steps_per_second = Histogram(
            "lumiserve_denoising_steps_per_second",
            "Denoising speed of each pipeline call.",
            model,
            buckets=_RATE_BUCKETS,
            registry=registry,
        )
        self.load_time = Histogram(
            "lumiserve_model_load_seconds",
            "Model load time.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.loaded = Gauge("lumiserve_models_loaded", "Models in the cache.", ["family"], registry=registry)
        self.loading = Gauge(
            "lumiserve_models_loading", "Models being loaded now.", ["family"], registry=registry
        )
        self.model_memory = Gauge(
            "lumiserve_model_memory_bytes",
            "Estimated memory held per cached model.",
            model,
            registry=registry,
        )
        self.cache_budget = Gauge(
            "lumiserve_model_cache_budget_bytes",
            "Memory budget of the model cache.",
            ["family"],
            registry=registry,
        )
        self.loaded.labels(FAMILY).set(0)
        self.loading.labels(FAMILY).set(0)
