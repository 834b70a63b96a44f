"""Where an upload resumes (the registry's Range answer) and what one request body carries."""

from __future__ import annotations

import io

import pytest

from ansible_collections.ironcore.image.plugins.module_utils import _upload as upload


@pytest.mark.parametrize(
    ("header", "default", "expected"),
    [
        ("0-99", 0, 100),
        ("bytes=0-4194303", 7, 4194304),
        # distribution says 0-0 for an empty session as well as for one byte received.
        ("0-0", 0, 0),
        ("0-0", 1, 1),
        (None, 42, 42),
        ("", 42, 42),
        ("garbage", 5, 5),
    ],
)
def test_received_bytes(header, default, expected):
    assert upload.received_bytes(header, default) == expected


def test_file_slice_sends_its_window_only_and_counts_it():
    counter = upload.ByteCounter()
    body = upload.FileSlice(io.BytesIO(b"0123456789"), 3, 4, counter)
    assert len(body) == 4
    assert body.read(3) == b"345"
    assert body.read() == b"6"
    assert body.read() == b""
    assert counter.value == 4


def test_file_slice_of_a_file_that_shrank_fails_instead_of_hanging():
    body = upload.FileSlice(io.BytesIO(b"0123"), 2, 5, upload.ByteCounter())
    assert body.read() == b"23"
    with pytest.raises(OSError, match="3 bytes early"):
        body.read()


def test_byte_counter_sums_across_windows():
    counter = upload.ByteCounter()
    data = io.BytesIO(bytes(10))
    for start in (0, 5):
        upload.FileSlice(data, start, 5, counter).read()
    assert counter.value == 10
