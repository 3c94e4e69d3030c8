"""roiseg's errors as gRPC statuses: the one place the server maps them."""

from __future__ import annotations

import grpc

from roiseg.errors import (
    Cancelled,
    Forbidden,
    InvalidInput,
    NotFound,
    RoisegError,
    TooLarge,
    VersionMismatch,
)

_STATUS: dict[type[RoisegError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    VersionMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    Cancelled: grpc.StatusCode.CANCELLED,
}


def status_of(error: RoisegError) -> grpc.StatusCode:
    """The status `error` is answered with (INTERNAL for an error without one)."""
    for kind in type(error).__mro__:
        if kind in _STATUS:
            return _STATUS[kind]
    return grpc.StatusCode.INTERNAL
