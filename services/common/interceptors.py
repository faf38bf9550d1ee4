"""Server interceptors: the single place where exceptions become gRPC status codes, plus RPC metrics."""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.common.errors import ServiceError
from services.common.metrics import RpcMetrics

log = logging.getLogger(__name__)

Handler = grpc.RpcMethodHandler


def _split_method(full_method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    _, service, method = full_method.split("/")
    return service, method


async def _abort(context: grpc.aio.ServicerContext, error: BaseException, method: str) -> None:
    """Ends the call with the status the exception maps to. Unknown exceptions are INTERNAL and logged."""
    if isinstance(error, ServiceError):
        await context.abort(error.code, error.message, error.trailing_metadata())
    if isinstance(error, NotImplementedError):  # generated servicer bases raise it for missing RPCs
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented by this service")
    log.exception("unhandled error in %s", method, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(error).__name__}")


_HANDLER_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def _wrap(handler: Handler, around: Callable[..., Any]) -> Handler:
    """Rebuilds a method handler with its behaviour wrapped by `around(behaviour, yields)`, where
    `yields` tells an async-generator behaviour from a coroutine (which may stream via context.write)."""
    for kind, make in _HANDLER_KINDS:
        behaviour = getattr(handler, kind)
        if behaviour:
            wrapped = around(behaviour, inspect.isasyncgenfunction(behaviour))
            return make(wrapped, handler.request_deserializer, handler.response_serializer)
    return handler


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """The one wrapper around every RPC: records its metrics (requests by status code, duration,
    in-flight) and maps exceptions to status codes — ServiceError subclasses to theirs, anything else to
    INTERNAL (never a crash). One layer, not two: each streamed message passes through it."""

    def __init__(self, metrics: RpcMetrics, skip_metrics_services: tuple[str, ...] = ()) -> None:
        self._metrics = metrics
        self._skip = skip_metrics_services

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        if handler is None:
            return handler
        path = details.method
        service, method = _split_method(path)
        metrics = None if service in self._skip else self._metrics

        def tracked(context: grpc.aio.ServicerContext) -> contextlib.AbstractContextManager:
            return metrics.track(service, method, context) if metrics else contextlib.nullcontext()

        def around(behaviour: Callable[..., Any], yields: bool) -> Callable[..., Any]:
            if yields:

                async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                    with tracked(context):
                        try:
                            async for response in behaviour(request, context):
                                yield response
                        except Exception as error:
                            await _abort(context, error, path)

                return stream

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                with tracked(context):
                    try:
                        return await behaviour(request, context)
                    except Exception as error:
                        await _abort(context, error, path)

            return unary

        return _wrap(handler, around)
