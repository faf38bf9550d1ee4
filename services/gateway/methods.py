"""What the gateway does with each RPC it serves: which backend family, how to route, who may call.

The table is derived from the generated descriptors, so a new RPC in a backend contract is relayed
(routed to any replica of its family) without a gateway change; entries below refine the routing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from google.protobuf import descriptor, message, symbol_database

from lumiserve.diffusion.v1 import diffusion_pb2
from lumiserve.model_registry.v1 import model_registry_pb2
from lumiserve.vision_language.v1 import vision_language_pb2

DIFFUSION = "diffusion"
VISION_LANGUAGE = "vision_language"
REGISTRY = "registry"


class Route(Enum):
    MODEL = "model"  # a replica serving the request's model, least loaded first
    SESSION = "session"  # the replica holding the session
    JOB = "job"  # the replica running the job
    ANY = "any"  # any replica of the family, least loaded first
    FAN_OUT = "fan_out"  # every replica of the family, answers merged
    REGISTRY = "registry"  # the registry


@dataclass(frozen=True)
class Target:
    """Where one request goes: the route and its key (model id, session id, job id)."""

    route: Route
    key: str = ""


@dataclass(frozen=True)
class MethodPolicy:
    path: str  # "/lumiserve.diffusion.v1.DiffusionService/Generate"
    service: str
    method: str
    family: str
    request_type: type[message.Message]
    response_type: type[message.Message]
    streaming: bool
    admin: bool
    target: Callable[[Any], Target]


def _by_model(request: Any) -> Target:
    return Target(Route.MODEL, request.model) if request.model else Target(Route.ANY)


def _chat(request: vision_language_pb2.ChatRequest) -> Target:
    return Target(Route.SESSION, request.session_id) if request.session_id else _by_model(request)


def _to_registry(request: Any) -> Target:
    return Target(Route.REGISTRY)


def _to_any(request: Any) -> Target:
    return Target(Route.ANY)


def requested_model(request: Any) -> str:
    """The model a request names ("" if none), for routing and metrics."""
    if hasattr(request, "spec"):
        return request.spec.model
    model = getattr(request, "model", "")
    return model if isinstance(model, str) else ""  # registry requests carry a Model message there


ROUTES: dict[str, Callable[[Any], Target]] = {
    "DiffusionService/Generate": _by_model,
    "DiffusionService/Cancel": lambda r: Target(Route.JOB, r.job_id),
    "DiffusionService/GetJob": lambda r: Target(Route.JOB, r.job_id),
    "DiffusionService/ListSamplers": _by_model,
    "DiffusionService/UnloadModel": _by_model,
    "VisionLanguageService/Chat": _chat,
    "VisionLanguageService/CaptionBatch": _by_model,
    "VisionLanguageService/CreateSession": _by_model,
    "VisionLanguageService/GetSession": lambda r: Target(Route.SESSION, r.session_id),
    "VisionLanguageService/DeleteSession": lambda r: Target(Route.SESSION, r.session_id),
    "VisionLanguageService/ListSessions": lambda r: Target(Route.FAN_OUT),
    "VisionLanguageService/ListTaskPresets": _by_model,
    "VisionLanguageService/UnloadModel": _by_model,
}

# Calls that change what is served or registered: admin role only.
ADMIN_METHODS = {
    "DiffusionService/LoadModel", "DiffusionService/UnloadModel",
    "VisionLanguageService/LoadModel", "VisionLanguageService/UnloadModel",
    "ModelRegistryService/CreateModel", "ModelRegistryService/UpdateModel",
    "ModelRegistryService/DeleteModel",
    "ModelRegistryService/CreateArtifact", "ModelRegistryService/DeleteArtifact",
    "ModelRegistryService/RegisterInstance", "ModelRegistryService/Heartbeat",
    "ModelRegistryService/DeregisterInstance",
}  # fmt: skip

SERVICES: list[tuple[descriptor.ServiceDescriptor, str]] = [
    (diffusion_pb2.DESCRIPTOR.services_by_name["DiffusionService"], DIFFUSION),
    (vision_language_pb2.DESCRIPTOR.services_by_name["VisionLanguageService"], VISION_LANGUAGE),
    (model_registry_pb2.DESCRIPTOR.services_by_name["ModelRegistryService"], REGISTRY),
]


def build_policies() -> dict[str, MethodPolicy]:
    """One policy per RPC path of the three public services."""
    database = symbol_database.Default()
    policies = {}
    for service, family in SERVICES:
        for method in service.methods:
            short = f"{service.name}/{method.name}"
            default = (
                (lambda r: Target(Route.REGISTRY)) if family == REGISTRY else (lambda r: Target(Route.ANY))
            )
            path = f"/{service.full_name}/{method.name}"
            policies[path] = MethodPolicy(
                path=path,
                service=service.full_name,
                method=method.name,
                family=family,
                request_type=database.GetSymbol(method.input_type.full_name),
                response_type=database.GetSymbol(method.output_type.full_name),
                streaming=method.server_streaming,
                admin=short in ADMIN_METHODS,
                target=ROUTES.get(short, default),
            )
    return policies


def service_names() -> list[str]:
    return [service.full_name for service, _ in SERVICES]
