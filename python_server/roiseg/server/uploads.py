"""Images uploaded in chunks, kept in memory for a while so Segment can refer to them.

An upload reserves its announced size against the store's capacity when it starts, so
unfinished uploads count as much as finished ones; at most `max_active` are received at once.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from roiseg.errors import InvalidInput, NotFound, TooLarge, echo


@dataclass
class _Upload:
    data: bytes
    expires: float


class UploadStore:
    """Holds uploaded images up to `capacity_bytes` in total (those being received included),
    each for `ttl_s` seconds; receives at most `max_active` at a time."""

    def __init__(self, max_upload_bytes: int, capacity_bytes: int, ttl_s: float = 900.0,
                 max_active: int = 4, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_upload_bytes = max_upload_bytes
        self.capacity_bytes = capacity_bytes
        self.ttl_s = ttl_s
        self.max_active = max_active
        self._clock = clock
        self._uploads: dict[str, _Upload] = {}
        self._reserved: dict[object, int] = {}
        self._lock = threading.Lock()

    def check_size(self, total_bytes: int) -> None:
        """TooLarge if an upload of `total_bytes` can never be accepted."""
        if total_bytes > self.max_upload_bytes:
            raise TooLarge(f"the image is {total_bytes / 2**20:.0f} MiB; this server accepts "
                           f"uploads of at most {self.max_upload_bytes / 2**20:.0f} MiB: send the "
                           "region at a larger downsample or as JPEG, or let the server read the "
                           "slide file")

    @contextmanager
    def receiving(self, expected_bytes: int) -> Iterator[None]:
        """Reserves room for an upload of `expected_bytes` while it is received; TooLarge
        when it is too large, too many uploads are under way or the store is full."""
        if expected_bytes <= 0:
            raise InvalidInput("an upload's header announces its size in bytes (total_bytes > 0)")
        self.check_size(expected_bytes)
        key = object()
        with self._lock:
            self._expire()
            if len(self._reserved) >= self.max_active:
                raise TooLarge(f"the server is receiving {self.max_active} uploads already; try "
                               "again in a moment")
            if self._used() + expected_bytes > self.capacity_bytes:
                raise TooLarge("the server holds too many uploaded images right now; try again "
                               "in a few minutes")
            self._reserved[key] = expected_bytes
        try:
            yield
        finally:
            with self._lock:
                del self._reserved[key]

    def put(self, data: bytes, expected_bytes: int) -> str:
        """Stores a complete upload (received under `receiving`) and returns its id."""
        if len(data) != expected_bytes:
            raise InvalidInput(f"the upload ended after {len(data)} of {expected_bytes} bytes; "
                               "send it again")
        with self._lock:
            upload_id = uuid.uuid4().hex
            self._uploads[upload_id] = _Upload(data, self._clock() + self.ttl_s)
            return upload_id

    def get(self, upload_id: str) -> bytes:
        with self._lock:
            self._expire()
            upload = self._uploads.get(upload_id)
        if upload is None:
            raise NotFound(f"upload {echo(upload_id)} is unknown or expired (uploads are kept "
                           f"{self.ttl_s / 60:.0f} minutes): upload the image again")
        return upload.data

    def _used(self) -> int:
        return sum(len(u.data) for u in self._uploads.values()) + sum(self._reserved.values())

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, u in self._uploads.items() if u.expires <= now]:
            del self._uploads[key]
