"""`lumiserve diffusion`: the diffusion service process."""

from __future__ import annotations

import asyncio
import logging

from lumiserve.common.v1 import common_pb2
from lumiserve.diffusion.v1 import diffusion_pb2_grpc
from services.common.errors import ServiceError
from services.common.logs import configure_logging
from services.common.registration import run_model_service
from services.common.server import ServiceBinding, ServiceHost
from services.diffusion.settings import DiffusionSettings

log = logging.getLogger(__name__)


def build(settings: DiffusionSettings):
    """The host with the diffusion service bound, and its data plane (not started): in the engine
    process (services/diffusion/engine.py) or, with `engine=thread`, in this one."""
    from services.diffusion.engine import EngineClient
    from services.diffusion.servicer import DiffusionServicer

    host = ServiceHost(settings, [])
    if settings.engine == "process":
        plane = EngineClient(settings, host.metrics_registry, on_health=host.set_serving)
    else:
        from services.diffusion.dataplane import DiffusionDataPlane  # torch: only with the data plane here

        plane = DiffusionDataPlane(settings, host.metrics_registry)
    host.bindings.append(ServiceBinding.of(diffusion_pb2_grpc, "DiffusionService", DiffusionServicer(plane)))
    return host, plane


async def serve(settings: DiffusionSettings) -> int:
    host, plane = build(settings)
    return await run_model_service(
        host,
        plane,
        settings,
        common_pb2.MODEL_FAMILY_DIFFUSION,
        capacity=settings.max_queue + settings.batch_max_size,
    )


def main(argv: list[str]) -> int:
    settings = DiffusionSettings.load(argv)
    configure_logging(settings.log_level, settings.log_json)
    log.info("diffusion service: models %s on %s", [c.id for c in settings.model_configs()], settings.device)
    try:
        return asyncio.run(serve(settings))
    except ServiceError as error:  # e.g. a configured model that cannot load: one line, not a traceback
        log.error("diffusion service stopped: %s", error.message)
        return 1
