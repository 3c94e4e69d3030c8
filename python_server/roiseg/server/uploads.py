"""Images uploaded in chunks, kept in memory for a while so Segment can refer to them."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

from roiseg.errors import InvalidInput, NotFound, TooLarge


@dataclass
class _Upload:
    data: bytes
    expires: float


class UploadStore:
    """Holds uploaded images up to `capacity_bytes` in total, each for `ttl_s` seconds."""

    def __init__(self, max_upload_bytes: int, capacity_bytes: int, ttl_s: float = 900.0,
                 clock=time.monotonic) -> None:
        self.max_upload_bytes = max_upload_bytes
        self.capacity_bytes = capacity_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._uploads: dict[str, _Upload] = {}
        self._lock = threading.Lock()

    def check_size(self, total_bytes: int) -> None:
        """TooLarge if an upload of `total_bytes` can never be accepted."""
        if total_bytes > self.max_upload_bytes:
            raise TooLarge(f"the image is {total_bytes / 2**20:.0f} MiB; this server accepts "
                           f"uploads of at most {self.max_upload_bytes / 2**20:.0f} MiB: send the "
                           "region at a larger downsample or as JPEG, or let the server read the "
                           "slide file")

    def put(self, data: bytes, expected_bytes: int) -> str:
        """Stores a complete upload and returns its id."""
        if len(data) != expected_bytes:
            raise InvalidInput(f"the upload ended after {len(data)} of {expected_bytes} bytes; "
                               "send it again")
        self.check_size(len(data))
        with self._lock:
            self._expire()
            used = sum(len(u.data) for u in self._uploads.values())
            if used + len(data) > self.capacity_bytes:
                raise TooLarge("the server holds too many uploaded images right now; try again "
                               "in a few minutes")
            upload_id = uuid.uuid4().hex
            self._uploads[upload_id] = _Upload(data, self._clock() + self.ttl_s)
            return upload_id

    def get(self, upload_id: str) -> bytes:
        with self._lock:
            self._expire()
            upload = self._uploads.get(upload_id)
        if upload is None:
            raise NotFound(f"upload {upload_id!r} is unknown or expired (uploads are kept "
                           f"{self.ttl_s / 60:.0f} minutes): upload the image again")
        return upload.data

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, u in self._uploads.items() if u.expires <= now]:
            del self._uploads[key]
