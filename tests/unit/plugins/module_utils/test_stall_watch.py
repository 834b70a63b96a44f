"""The registry client's stall watch, against a loopback server that trickles a blob one byte at a time."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient
from ansible_collections.ironcore.image.plugins.module_utils._errors import RegistryError
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import RegistryOptions

DIGEST = "sha256:" + "0" * 64
# Without the watch the read lasts this many bytes times the pause (far past the window), then breaks.
TRICKLED = 200
PAUSE = 0.1


def _trickle(listener: socket.socket, done: threading.Event) -> None:
    connection, _address = listener.accept()
    with connection:
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n")
        for _byte in range(TRICKLED):
            if done.is_set():
                return
            time.sleep(PAUSE)
            try:
                connection.sendall(b"x")
            except OSError:
                return


@pytest.fixture
def trickling_server():
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()
    thread = threading.Thread(target=_trickle, args=(listener, done), daemon=True)
    thread.start()
    yield "127.0.0.1:%d" % listener.getsockname()[1]
    done.set()
    listener.close()
    thread.join(10)


def test_a_trickling_stream_is_cut_at_the_first_window(trickling_server):
    options = RegistryOptions(plain_http=True, timeout=1.0, retries=0, min_rate=64 * 1024)
    stream = RegistryClient(trickling_server, options).open_blob("os", DIGEST)
    with pytest.raises(RegistryError) as caught:
        for _chunk in stream.iter_chunks(1024 * 1024):
            pass
    stream.close()
    assert caught.value.code == "STALLED" and caught.value.retryable
    assert "stalled" in str(caught.value) and "minimum rate of 64 KiB/s" in str(caught.value)
