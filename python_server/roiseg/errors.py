"""Errors a user can act on, each tied to the gRPC status it is answered with."""

from __future__ import annotations

import grpc


class RoisegError(Exception):
    """Base of the errors roiseg reports to users; the message says what to fix."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInput(RoisegError):
    """Malformed image, degenerate or out-of-image ROI, missing pixel size, bad option."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(RoisegError):
    """Unknown model id, missing slide file or expired upload."""

    code = grpc.StatusCode.NOT_FOUND


class TooLarge(RoisegError):
    """A region, image or upload above the server's limits."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Forbidden(RoisegError):
    """A slide path outside the server's allowed roots."""

    code = grpc.StatusCode.PERMISSION_DENIED


class VersionMismatch(RoisegError):
    """A client speaking another major version of the contract."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Cancelled(RoisegError):
    """The caller cancelled the work or its deadline passed."""

    code = grpc.StatusCode.CANCELLED
