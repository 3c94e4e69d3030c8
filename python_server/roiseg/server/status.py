"""roiseg's errors as gRPC statuses: the one place the server maps them."""

from __future__ import annotations

import grpc

from roiseg import errors

_STATUS: dict[type[errors.RoisegError], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    errors.VersionMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.Busy: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def status_of(error: errors.RoisegError) -> grpc.StatusCode:
    """The status `error` is answered with (INTERNAL for an error without one)."""
    for kind in type(error).__mro__:
        if kind in _STATUS:
            return _STATUS[kind]
    return grpc.StatusCode.INTERNAL
