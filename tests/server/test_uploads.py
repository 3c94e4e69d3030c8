"""The upload store: sizes, capacity and expiry."""

from __future__ import annotations

import pytest
from roiseg.errors import InvalidInput, NotFound, TooLarge
from roiseg.server.uploads import UploadStore


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_put_get_expire():
    clock = Clock()
    store = UploadStore(max_upload_bytes=10, capacity_bytes=15, ttl_s=60, clock=clock)
    key = store.put(b"abcdefgh", 8)
    assert store.get(key) == b"abcdefgh"
    with pytest.raises(TooLarge, match="too many"):
        store.put(b"12345678", 8)
    clock.now = 61
    with pytest.raises(NotFound, match="expired"):
        store.get(key)
    assert store.get(store.put(b"12345678", 8)) == b"12345678"


def test_sizes_are_checked():
    store = UploadStore(max_upload_bytes=4, capacity_bytes=100)
    with pytest.raises(TooLarge, match="at most"):
        store.put(b"12345", 5)
    with pytest.raises(InvalidInput, match="ended after 3 of 4"):
        store.put(b"123", 4)
