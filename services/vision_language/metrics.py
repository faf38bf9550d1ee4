"""Prometheus metrics of the vision-language service, on the host's registry.

`lumiserve_queue_depth{model, family="vision_language"}` is what autoscaling reads.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS

FAMILY = "vision_language"
TOKENS_PER_SECOND_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
TOKEN_COUNT_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128, 256)


class VlmMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        model = ["model"]
        self.queue_depth = Gauge(
            "lumiserve_queue_depth", "Requests waiting per model.", ["model", "family"], registry=registry
        )
        self.queue_seconds = Histogram(
            "lumiserve_queue_seconds",
            "Time from queueing to the start of generation.",
            ["model", "family"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "lumiserve_vlm_in_flight", "Generations queued or running, per model.", model, registry=registry
        )
        self.time_to_first_token = Histogram(
            "lumiserve_vlm_time_to_first_token_seconds",
            "From the request's arrival to its first generated token.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens_per_second = Histogram(
            "lumiserve_vlm_tokens_per_second",
            "Generated tokens per second of one request, from the start of its batch.",
            model,
            buckets=TOKENS_PER_SECOND_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "lumiserve_vlm_prompt_tokens", "Prompt tokens (image tokens included).", model, registry=registry
        )
        self.cached_prompt_tokens = Counter(
            "lumiserve_vlm_cached_prompt_tokens",
            "Prompt tokens served from a session's KV cache instead of recomputed.",
            model,
            registry=registry,
        )
        self.completion_tokens = Counter(
            "lumiserve_vlm_completion_tokens", "Generated tokens.", model, registry=registry
        )
        self.completion_tokens_per_request = Histogram(
            "lumiserve_vlm_completion_tokens_per_request",
            "Generated tokens per request.",
            ["model", "finish_reason"],
            buckets=TOKEN_COUNT_BUCKETS,
            registry=registry,
        )
        self.generations = Counter(
            "lumiserve_vlm_generations",
            "Finished generations by finish reason.",
            ["model", "finish_reason"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "lumiserve_vlm_batch_size",
            "Requests generated together.",
            model,
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.active_sessions = Gauge(
            "lumiserve_vlm_active_sessions", "Live chat sessions.", registry=registry
        )
        self.session_kv_bytes = Gauge(
            "lumiserve_vlm_session_kv_cache_bytes",
            "Memory held by the sessions' KV caches.",
            registry=registry,
        )
        self.context_truncations = Counter(
            "lumiserve_vlm_context_truncations",
            "Requests whose oldest turns were dropped to fit the context window.",
            model,
            registry=registry,
        )
        self.model_load_seconds = Histogram(
            "lumiserve_model_load_seconds",
            "Model load time.",
            model,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.loaded_models = Gauge(
            "lumiserve_loaded_models", "Models in the cache.", ["family"], registry=registry
        )
        self.model_memory_bytes = Gauge(
            "lumiserve_model_memory_bytes", "Estimated memory of each loaded model.", model, registry=registry
        )
