"""Server interceptors: the single place where exceptions become gRPC status codes, plus RPC metrics."""

from __future__ import annotations

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


def _wrap(handler: Handler, method: str, around: Callable[..., Any]) -> Handler:
    """Rebuilds a method handler with its behaviour wrapped by `around(behaviour, yields)`, where
    `yields` tells an async-generator behaviour from a coroutine (which may stream via context.write)."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            around(handler.unary_unary, inspect.isasyncgenfunction(handler.unary_unary)),
            handler.request_deserializer,
            handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            around(handler.unary_stream, inspect.isasyncgenfunction(handler.unary_stream)),
            handler.request_deserializer,
            handler.response_serializer,
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            around(handler.stream_unary, inspect.isasyncgenfunction(handler.stream_unary)),
            handler.request_deserializer,
            handler.response_serializer,
        )
    return grpc.stream_stream_rpc_method_handler(
        around(handler.stream_stream, inspect.isasyncgenfunction(handler.stream_stream)),
        handler.request_deserializer,
        handler.response_serializer,
    )


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps ServiceError subclasses to their status codes; anything else to INTERNAL (never a crash)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method

        def around(behaviour: Callable[..., Any], yields: bool) -> Callable[..., Any]:
            if yields:

                async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                    try:
                        async for response in behaviour(request, context):
                            yield response
                    except Exception as error:
                        await _abort(context, error, method)

                return stream

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await behaviour(request, context)
                except Exception as error:
                    await _abort(context, error, method)

            return unary

        return _wrap(handler, method, around)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts requests by method and status code, times them, and tracks the in-flight gauge."""

    def __init__(self, metrics: RpcMetrics, skip_services: tuple[str, ...] = ()) -> None:
        self._metrics = metrics
        self._skip = skip_services

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        service, method = _split_method(details.method)
        if handler is None or service in self._skip:
            return handler
        metrics = self._metrics

        def around(behaviour: Callable[..., Any], yields: bool) -> Callable[..., Any]:
            if yields:

                async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                    with metrics.track(service, method, context):
                        async for response in behaviour(request, context):
                            yield response

                return stream

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                with metrics.track(service, method, context):
                    return await behaviour(request, context)

            return unary

        return _wrap(handler, details.method, around)
