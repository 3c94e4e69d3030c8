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


def _upload(store: UploadStore, data: bytes) -> str:
    with store.receiving(len(data)):
        return store.put(data, len(data))


def test_put_get_expire():
    clock = Clock()
    store = UploadStore(max_upload_bytes=10, capacity_bytes=15, ttl_s=60, clock=clock)
    key = _upload(store, b"abcdefgh")
    assert store.get(key) == b"abcdefgh"
    with pytest.raises(TooLarge, match="too many"):
        _upload(store, b"12345678")
    clock.now = 61
    with pytest.raises(NotFound, match="expired"):
        store.get(key)
    assert store.get(_upload(store, b"12345678")) == b"12345678"


def test_uploads_being_received_count_against_the_capacity_and_their_number():
    store = UploadStore(max_upload_bytes=10, capacity_bytes=15, max_active=2)
    with store.receiving(10):
        with pytest.raises(TooLarge, match="too many uploaded images"):
            store.receiving(6).__enter__()
        with store.receiving(5):
            with pytest.raises(TooLarge, match="receiving 2 uploads already"):
                store.receiving(1).__enter__()
    with store.receiving(10), store.receiving(5):  # both reservations were released
        pass


def test_an_echoed_upload_id_is_cut_short():
    with pytest.raises(NotFound) as refused:
        UploadStore(10, 10).get("x" * 20_000)
    assert len(str(refused.value)) < 300


def test_sizes_are_checked():
    store = UploadStore(max_upload_bytes=4, capacity_bytes=100)
    with pytest.raises(TooLarge, match="at most"):
        store.receiving(5).__enter__()
    with pytest.raises(InvalidInput, match="ended after 3 of 4"):
        store.put(b"123", 4)
