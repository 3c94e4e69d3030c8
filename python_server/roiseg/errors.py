"""Errors a user can act on, raised by the libraries; the server (`roiseg.server.status`) and the
command line (`roiseg.cli`) each map them in one place."""

from __future__ import annotations


class RoisegError(Exception):
    """Base of the errors roiseg reports to users; the message says what to fix."""


class InvalidInput(RoisegError):
    """Malformed image, degenerate or out-of-image ROI, missing pixel size, bad option."""


class NotFound(RoisegError):
    """Unknown model id, missing slide file or expired upload."""


class TooLarge(RoisegError):
    """A region, image or upload above the server's limits."""


class Forbidden(RoisegError):
    """A slide path outside the server's allowed roots."""


class VersionMismatch(RoisegError):
    """A client speaking another major version of the contract."""


class FailedPrecondition(RoisegError):
    """The server's set-up or state does not allow the call (a feature it was started without,
    the default version of a model asked to retire)."""


class Cancelled(RoisegError):
    """The caller cancelled the work or its deadline passed."""


class Busy(RoisegError):
    """The server has as much work admitted as it takes on; try again later."""


def echo(text: object, limit: int = 80) -> str:
    """`text` quoted for an error message, cut to `limit` characters: a message never grows
    with what a request sent."""
    value = str(text)
    if len(value) > limit:
        value = f"{value[:limit - 16]}…({len(value)} characters)"
    return repr(value)
