"""The gRPC face of the registry: checks the caller's role for writes, converts protobuf to records,
calls the Registry, converts back. Errors are domain exceptions, mapped by the error interceptor."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import grpc

from lumiserve.common.v1 import common_pb2
from lumiserve.model_registry.v1 import model_registry_pb2 as pb
from lumiserve.model_registry.v1 import model_registry_pb2_grpc as pb_grpc
from services.common.errors import InvalidArgument
from services.model_registry import convert
from services.model_registry.auth import ADMIN, INSTANCE, Authorizer
from services.model_registry.paging import decode_token, encode_token, page_size
from services.model_registry.registry import Registry
from services.model_registry.store import Listing

Context = grpc.aio.ServicerContext


def _page(pagination: common_pb2.Pagination) -> tuple[str, int]:
    return decode_token(pagination.page_token), page_size(pagination.page_size)


def _page_info(listing: Listing) -> common_pb2.PageInfo:
    token = encode_token(listing.items[-1].id) if listing.has_more and listing.items else ""
    return common_pb2.PageInfo(next_page_token=token, total_size=listing.total)


def _family(value: int, field: str) -> str:
    return convert.enum_name(common_pb2.ModelFamily, value, field)


class ModelRegistryServicer(pb_grpc.ModelRegistryServiceServicer):
    def __init__(
        self, registry: Registry, auth: Authorizer, heartbeat_interval: float, heartbeat_ttl: float
    ) -> None:
        self.registry = registry
        self.auth = auth
        # The contract speaks whole seconds: round the interval down and the TTL up (at least 1).
        self.heartbeat_interval_seconds = max(1, math.floor(heartbeat_interval))
        self.heartbeat_ttl_seconds = max(1, math.ceil(heartbeat_ttl))

    def _require(self, context: Context, role: str, action: str) -> None:
        self.auth.require(context.invocation_metadata() or (), role, action)

    # ----- catalog

    async def CreateModel(self, request: pb.CreateModelRequest, context: Context) -> pb.CreateModelResponse:
        self._require(context, ADMIN, "CreateModel")
        if not request.HasField("model"):
            raise InvalidArgument("model", "required")
        model = await self.registry.create_model(convert.model_from_pb(request.model))
        return pb.CreateModelResponse(model=convert.model_to_pb(model))

    async def GetModel(self, request: pb.GetModelRequest, context: Context) -> pb.GetModelResponse:
        model = await self.registry.get_model(request.id)
        return pb.GetModelResponse(model=convert.model_to_pb(model))

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        after, limit = _page(request.pagination)
        listing = await self.registry.list_models(
            _family(request.family, "family"), request.task, request.hardware_type, after, limit
        )
        return pb.ListModelsResponse(
            models=[convert.model_to_pb(m) for m in listing.items], page_info=_page_info(listing)
        )

    async def UpdateModel(self, request: pb.UpdateModelRequest, context: Context) -> pb.UpdateModelResponse:
        self._require(context, ADMIN, "UpdateModel")
        if not request.HasField("model"):
            raise InvalidArgument("model", "required")
        model = await self.registry.update_model(
            convert.model_from_pb(request.model), list(request.update_mask.paths)
        )
        return pb.UpdateModelResponse(model=convert.model_to_pb(model))

    async def DeleteModel(self, request: pb.DeleteModelRequest, context: Context) -> pb.DeleteModelResponse:
        self._require(context, ADMIN, "DeleteModel")
        await self.registry.delete_model(request.id)
        return pb.DeleteModelResponse()

    # ----- artifacts

    async def CreateArtifact(
        self, request: pb.CreateArtifactRequest, context: Context
    ) -> pb.CreateArtifactResponse:
        self._require(context, ADMIN, "CreateArtifact")
        if not request.HasField("artifact"):
            raise InvalidArgument("artifact", "required")
        artifact = await self.registry.create_artifact(convert.artifact_from_pb(request.artifact))
        return pb.CreateArtifactResponse(artifact=convert.artifact_to_pb(artifact))

    async def ListArtifacts(
        self, request: pb.ListArtifactsRequest, context: Context
    ) -> pb.ListArtifactsResponse:
        after, limit = _page(request.pagination)
        filters = {
            "model_id": request.model_id,
            "variant": request.variant,
            "backend": convert.enum_name(common_pb2.Backend, request.backend, "backend"),
            "gpu_arch": request.gpu_arch,
            "shape_profile": request.shape_profile,
        }
        listing = await self.registry.list_artifacts(filters, after, limit)
        return pb.ListArtifactsResponse(
            artifacts=[convert.artifact_to_pb(a) for a in listing.items], page_info=_page_info(listing)
        )

    async def DeleteArtifact(
        self, request: pb.DeleteArtifactRequest, context: Context
    ) -> pb.DeleteArtifactResponse:
        self._require(context, ADMIN, "DeleteArtifact")
        await self.registry.delete_artifact(request.id)
        return pb.DeleteArtifactResponse()

    # ----- instances

    async def RegisterInstance(
        self, request: pb.RegisterInstanceRequest, context: Context
    ) -> pb.RegisterInstanceResponse:
        self._require(context, INSTANCE, "RegisterInstance")
        if not request.HasField("instance"):
            raise InvalidArgument("instance", "required")
        instance = await self.registry.register_instance(convert.instance_from_pb(request.instance))
        return pb.RegisterInstanceResponse(
            instance=convert.instance_to_pb(instance),
            heartbeat_interval_seconds=self.heartbeat_interval_seconds,
            heartbeat_ttl_seconds=self.heartbeat_ttl_seconds,
        )

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Context) -> pb.HeartbeatResponse:
        self._require(context, INSTANCE, "Heartbeat")
        instance = await self.registry.heartbeat(
            request.instance_id,
            convert.load_from_pb(request.load),
            convert.refs_from_pb(list(request.loaded_models)),
            convert.instance_state(request.state, "state"),
        )
        return pb.HeartbeatResponse(instance=convert.instance_to_pb(instance))

    async def DeregisterInstance(
        self, request: pb.DeregisterInstanceRequest, context: Context
    ) -> pb.DeregisterInstanceResponse:
        self._require(context, INSTANCE, "DeregisterInstance")
        await self.registry.deregister_instance(request.instance_id)
        return pb.DeregisterInstanceResponse()

    async def ListInstances(
        self, request: pb.ListInstancesRequest, context: Context
    ) -> pb.ListInstancesResponse:
        after, limit = _page(request.pagination)
        listing = await self.registry.list_instances(
            _family(request.family, "family"), request.hardware_type, request.include_down, after, limit
        )
        return pb.ListInstancesResponse(
            instances=[convert.instance_to_pb(i) for i in listing.items], page_info=_page_info(listing)
        )

    # ----- resolve and watch

    async def Resolve(self, request: pb.ResolveRequest, context: Context) -> pb.ResolveResponse:
        model, ranked = await self.registry.resolve(
            request.model, request.task, list(request.hardware_preference), request.variant
        )
        return pb.ResolveResponse(
            model=convert.model_to_pb(model),
            instances=[
                pb.ResolvedInstance(
                    instance=convert.instance_to_pb(r.instance),
                    load_score=r.load_score,
                    artifact=convert.artifact_to_pb(r.artifact) if r.artifact else None,
                )
                for r in ranked
            ],
        )

    async def Watch(self, request: pb.WatchRequest, context: Context) -> AsyncIterator[pb.WatchResponse]:
        async for change in self.registry.watch(request.resume_revision):
            yield convert.change_to_pb(change)
