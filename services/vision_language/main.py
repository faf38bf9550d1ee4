"""`lumiserve vlm [flags]`: the vision-language service process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from lumiserve.common.v1 import common_pb2
from lumiserve.vision_language.v1 import vision_language_pb2_grpc
from services.common.logs import configure_logging
from services.common.registration import run_model_service
from services.common.server import ServiceBinding, ServiceHost
from services.vision_language.settings import VisionLanguageSettings


def build(
    settings: VisionLanguageSettings, loader: Callable[..., Any] | None = None
) -> tuple[ServiceHost, Any]:
    """The host with the servicer bound, and the data plane (not started: call `plane.start()`).
    `loader` replaces model_cache.load_model (tests slow it down)."""
    from services.vision_language.dataplane import VisionLanguageDataPlane
    from services.vision_language.metrics import VlmMetrics
    from services.vision_language.model_cache import load_model
    from services.vision_language.servicer import VisionLanguageServicer

    host = ServiceHost(settings, [])
    plane = VisionLanguageDataPlane(settings, VlmMetrics(host.metrics_registry), loader=loader or load_model)
    host.bindings.append(
        ServiceBinding.of(vision_language_pb2_grpc, "VisionLanguageService", VisionLanguageServicer(plane))
    )
    return host, plane


async def serve(settings: VisionLanguageSettings) -> int:
    host, plane = build(settings)
    return await run_model_service(
        host,
        plane,
        settings,
        common_pb2.MODEL_FAMILY_VISION_LANGUAGE,
        capacity=settings.max_queue + settings.max_batch_size,
    )


def main(argv: Sequence[str]) -> int:
    settings = VisionLanguageSettings.load(list(argv))
    configure_logging(settings.log_level, settings.log_json)
    return asyncio.run(serve(settings))
