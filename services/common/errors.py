"""Domain exceptions. Service code raises these; the error interceptor turns them into gRPC statuses.

Each exception carries the one status code it maps to, so the mapping lives here and nowhere else.
"""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"


class ServiceError(Exception):
    """Base of every error a client should see with a specific status code and message."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list[object]:
        """google.rpc detail messages sent with the status (none by default)."""
        return []

    def to_status(self) -> status_pb2.Status:
        """The rich google.rpc.Status carried in the `grpc-status-details-bin` trailer."""
        status = status_pb2.Status(code=getattr(code_pb2, self.code.name), message=self.message)
        for detail in self.details():
            status.details.add().Pack(detail)
        return status

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return ((STATUS_DETAILS_KEY, self.to_status().SerializeToString()),)

    def __reduce__(self) -> tuple:
        # Errors cross process boundaries (the diffusion engine) pickled; subclasses' __init__ differ.
        return (_rebuild_error, (type(self), self.message, self.__dict__))


def _rebuild_error(cls: type[ServiceError], message: str, state: dict) -> ServiceError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class InvalidArgument(ServiceError):
    """A request field is malformed or out of range. `field` names it (dotted path)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.description = message

    def details(self) -> list[object]:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=self.field, description=self.description
        )
        return [error_details_pb2.BadRequest(field_violations=[violation])]


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Cancelled(ServiceError):
    code = grpc.StatusCode.CANCELLED


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(ServiceError):
    """Draining, a backend or the database down: the client may retry elsewhere or later."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ServiceError):
    """Queue full, rate limited or out of device memory. `retry_after` (seconds) becomes a RetryInfo."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def details(self) -> list[object]:
        if self.retry_after is None:
            return []
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(self.retry_after * 1e9))
        return [error_details_pb2.RetryInfo(retry_delay=delay)]


class RelayedError(ServiceError):
    """A backend's status passed on to the client unchanged: code, message and rich details."""

    def __init__(self, code: grpc.StatusCode, message: str, details_bin: bytes | None = None) -> None:
        super().__init__(message)
        self.code = code
        self._details_bin = details_bin

    @classmethod
    def from_call_error(cls, error: grpc.aio.AioRpcError, prefix: str = "") -> RelayedError:
        details = dict(error.trailing_metadata() or ()).get(STATUS_DETAILS_KEY)
        return cls(
            error.code(), prefix + (error.details() or ""), details if isinstance(details, bytes) else None
        )

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return ((STATUS_DETAILS_KEY, self._details_bin),) if self._details_bin else ()


def status_details(error: grpc.aio.AioRpcError | grpc.RpcError) -> list[object]:
    """Unpacks the google.rpc detail messages of a failed call (BadRequest, RetryInfo, ...)."""
    metadata = error.trailing_metadata() or ()
    for key, value in metadata:
        if key == STATUS_DETAILS_KEY:
            status = status_pb2.Status.FromString(value)
            unpacked = []
            for any_detail in status.details:
                for kind in (error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
                    if any_detail.Is(kind.DESCRIPTOR):
                        message = kind()
                        any_detail.Unpack(message)
                        unpacked.append(message)
            return unpacked
    return []
