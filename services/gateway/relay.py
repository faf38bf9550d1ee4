"""The gateway's RPC handler: authenticate, admit, route, then relay bytes to a backend and back.

Requests are parsed once (to route and check them); responses pass through as raw bytes, read from the
backend only as fast as the client takes them (gRPC flow control bounds what is buffered). Client
cancellation and deadlines reach the backend. A backend that fails before its first event is retried
once on another replica.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack

import grpc
from google.protobuf.message import DecodeError

from lumiserve.diffusion.v1 import diffusion_pb2
from lumiserve.vision_language.v1 import vision_language_pb2
from services.common.errors import InvalidArgument, PermissionDenied, RelayedError, Unavailable
from services.common.tenancy import TENANT_METADATA_KEY
from services.gateway.admission import Admission
from services.gateway.auth import LOCAL_PRINCIPAL, ApiKeyStore, Principal
from services.gateway.methods import MethodPolicy, Route, Target, requested_model
from services.gateway.metrics import GatewayMetrics
from services.gateway.router import Router

log = logging.getLogger(__name__)

FORWARDED_HEADERS = ("x-request-id",)  # passed through to backends; everything else is dropped
ROLES_METADATA_KEY = "x-lumiserve-roles"  # read by the registry from callers with a gateway token
PIN_KINDS = {Route.SESSION: "session", Route.JOB: "job"}


class Gateway(grpc.GenericRpcHandler):
    def __init__(
        self,
        policies: dict[str, MethodPolicy],
        router: Router,
        keys: ApiKeyStore | None,
        admission: Admission,
        metrics: GatewayMetrics,
        max_request_bytes: int,
        registry_metadata: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self._policies = policies
        self._router = router
        self._keys = keys  # None = auth disabled (embedded stack on localhost)
        self._admission = admission
        self._metrics = metrics
        self._max_request_bytes = max_request_bytes
        self._registry_metadata = registry_metadata

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        policy = self._policies.get(handler_call_details.method)
        if policy is None:
            return None
        if policy.streaming:
            return grpc.unary_stream_rpc_method_handler(functools.partial(self._relay_stream, policy))
        return grpc.unary_unary_rpc_method_handler(functools.partial(self._relay_unary, policy))

    # -- the two call shapes

    async def _relay_unary(
        self, policy: MethodPolicy, raw: bytes, context: grpc.aio.ServicerContext
    ) -> bytes:
        labels: dict[str, str] = {}
        with self._metrics.track(policy.service, policy.method, labels), ExitStack() as stack:
            principal, target = self._admit(policy, raw, context, labels, stack)
            endpoints = self._endpoints(policy, target, principal)
            if target.route is Route.FAN_OUT:
                return await self._fan_out(policy, raw, endpoints, principal, context)
            for attempt, endpoint in enumerate(endpoints):
                call = self._router.channel(endpoint).unary_unary(policy.path)
                try:
                    with self._router.calling(endpoint):
                        response = await call(
                            raw,
                            metadata=self._metadata(policy, principal, context),
                            timeout=_remaining(context),
                        )
                except grpc.aio.AioRpcError as error:
                    if self._try_next(policy, target, error, attempt, endpoints):
                        continue
                    raise RelayedError.from_call_error(error) from None
                self._learn(policy, target, principal, endpoint, response)
                return response
            raise AssertionError("unreachable: the last attempt returns or raises")

    async def _relay_stream(
        self, policy: MethodPolicy, raw: bytes, context: grpc.aio.ServicerContext
    ) -> None:
        # A coroutine writing with context.write, not an async generator: each relayed event then
        # costs one read and one write, with no generator layers (ours and the interceptor's) between.
        labels: dict[str, str] = {}
        with self._metrics.track(policy.service, policy.method, labels), ExitStack() as stack:
            principal, target = self._admit(policy, raw, context, labels, stack)
            endpoints = self._endpoints(policy, target, principal)
            started, start = False, time.perf_counter()
            waiting = self._metrics.waiting.labels(labels["model"], policy.family)
            waiting.inc()
            stack.callback(lambda: None if started else waiting.dec())
            for attempt, endpoint in enumerate(endpoints):
                call = self._router.channel(endpoint).unary_stream(policy.path)(
                    raw, metadata=self._metadata(policy, principal, context), timeout=_remaining(context)
                )
                sent = False
                try:
                    with self._router.calling(endpoint):
                        response = await call.read()
                        if response is not grpc.aio.EOF:
                            self._metrics.first_event.labels(policy.service, policy.method).observe(
                                time.perf_counter() - start
                            )
                            self._learn(policy, target, principal, endpoint, response)
                        # The next event is read only once the client has taken this one (flow control).
                        while response is not grpc.aio.EOF:
                            if not started and _has_started(policy, response):
                                started = True
                                waiting.dec()
                            await context.write(response)
                            sent = True
                            response = await call.read()
                    return
                except grpc.aio.AioRpcError as error:
                    if not sent and self._try_next(policy, target, error, attempt, endpoints):
                        continue
                    if sent and error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN):
                        raise Unavailable(
                            f"backend {endpoint} failed mid-stream: {error.details()}"
                        ) from None
                    raise RelayedError.from_call_error(error) from None
                finally:
                    call.cancel()  # no-op when finished; stops the backend when the client went away

    # -- steps

    def _admit(
        self,
        policy: MethodPolicy,
        raw: bytes,
        context: grpc.aio.ServicerContext,
        labels: dict[str, str],
        stack: ExitStack,
    ) -> tuple[Principal, Target]:
        """Auth, role, size and admission checks, then parses the request for routing."""
        labels.update(model="", tenant_class="unauthenticated")
        principal = self._keys.authenticate(context.invocation_metadata()) if self._keys else LOCAL_PRINCIPAL
        labels["tenant_class"] = principal.tenant_class
        if policy.admin and not principal.is_admin:
            raise PermissionDenied(
                f"{policy.method} needs the admin role; tenant {principal.tenant!r} is a user"
            )
        if len(raw) > self._max_request_bytes:
            raise InvalidArgument(
                "request", f"{len(raw)} bytes is over the gateway's limit of {self._max_request_bytes} bytes"
            )
        try:
            request = policy.request_type.FromString(raw)
        except DecodeError:
            raise InvalidArgument(
                "request", f"not a valid {policy.request_type.DESCRIPTOR.full_name}"
            ) from None
        model = requested_model(request)
        labels["model"] = self._router.model_label(model)
        stack.enter_context(self._admission.admit(principal.tenant))
        in_flight = self._metrics.in_flight.labels(labels["model"], policy.family)
        in_flight.inc()
        stack.callback(in_flight.dec)
        return principal, policy.target(request)

    def _endpoints(self, policy: MethodPolicy, target: Target, principal: Principal) -> list[str]:
        """Replicas to try, in order."""
        if target.route is Route.REGISTRY:
            endpoint = self._router.registry_endpoint()
            if endpoint is None:
                raise Unavailable("no model registry is configured for this gateway")
            return [endpoint]
        if target.route in PIN_KINDS:
            if not target.key:
                raise InvalidArgument(f"{PIN_KINDS[target.route]}_id", "is required")
            pinned = self._router.pinned(PIN_KINDS[target.route], principal.tenant, target.key)
            if pinned:
                return [pinned]
        model = target.key if target.route is Route.MODEL else ""
        endpoints = [r.endpoint for r in self._router.replicas(policy.family, model)]
        if not endpoints:
            what = f"model {model!r}" if model else policy.family.replace("_", "-")
            raise Unavailable(f"no healthy replica serves {what} right now")
        return endpoints

    def _try_next(
        self,
        policy: MethodPolicy,
        target: Target,
        error: grpc.aio.AioRpcError,
        attempt: int,
        endpoints: Sequence[str],
    ) -> bool:
        """Whether to go on to the next replica after `error` from replica `attempt`."""
        if attempt + 1 >= len(endpoints):
            return False
        if target.route in PIN_KINDS and error.code() == grpc.StatusCode.NOT_FOUND:
            return True  # looking for the replica that holds the session / job
        if error.code() == grpc.StatusCode.UNAVAILABLE and attempt == 0:
            self._metrics.retries.labels(policy.service, policy.method).inc()
            log.warning(
                "%s: backend %s unavailable (%s); retrying on %s",
                policy.method,
                endpoints[attempt],
                error.details(),
                endpoints[attempt + 1],
            )
            return True
        return False

    async def _fan_out(
        self,
        policy: MethodPolicy,
        raw: bytes,
        endpoints: list[str],
        principal: Principal,
        context: grpc.aio.ServicerContext,
    ) -> bytes:
        """Asks every replica and merges the answers (repeated fields concatenate; paging is per replica)."""
        merged = policy.response_type()
        for endpoint in endpoints:
            call = self._router.channel(endpoint).unary_unary(policy.path)
            try:
                merged.MergeFromString(
                    await call(
                        raw, metadata=self._metadata(policy, principal, context), timeout=_remaining(context)
                    )
                )
            except grpc.aio.AioRpcError as error:
                raise RelayedError.from_call_error(error, prefix=f"backend {endpoint}: ") from None
        if hasattr(merged, "page_info"):
            merged.ClearField("page_info")
        return merged.SerializeToString()

    def _metadata(
        self, policy: MethodPolicy, principal: Principal, context: grpc.aio.ServicerContext
    ) -> tuple[tuple[str, str], ...]:
        forwarded = tuple((k, v) for k, v in context.invocation_metadata() if k in FORWARDED_HEADERS)
        extra: tuple[tuple[str, str], ...] = ()
        if policy.family == "registry":  # the registry trusts the roles the gateway vouches for
            extra = (*self._registry_metadata, (ROLES_METADATA_KEY, ",".join(sorted(principal.roles))))
        return ((TENANT_METADATA_KEY, principal.tenant), *forwarded, *extra)

    def _learn(
        self, policy: MethodPolicy, target: Target, principal: Principal, endpoint: str, response: bytes
    ) -> None:
        """Remembers which replica holds a new session or job, so later calls find it."""
        if policy.method == "Generate":
            job_id = diffusion_pb2.GenerateResponse.FromString(response).job_id
            self._router.pin("job", principal.tenant, job_id, endpoint)
        elif policy.method == "CreateSession":
            session = vision_language_pb2.CreateSessionResponse.FromString(response).session
            self._router.pin("session", principal.tenant, session.session_id, endpoint)
        elif policy.method == "DeleteSession":
            self._router.unpin("session", principal.tenant, target.key)
        elif target.route in PIN_KINDS:
            self._router.pin(PIN_KINDS[target.route], principal.tenant, target.key, endpoint)


def _has_started(policy: MethodPolicy, response: bytes) -> bool:
    """A generation has started once the backend sends anything but a queue position."""
    if policy.method == "Generate":
        return diffusion_pb2.GenerateResponse.FromString(response).WhichOneof("event") != "queued"
    return True


def _remaining(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return remaining if remaining is not None and remaining < 1e6 else None
