"""The registry client's stall watch, against a loopback server that trickles a blob one byte at a time."""

from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest
from helpers import registry as test_registry

from ansible_collections.ironcore.image.plugins.module_utils._client import RegistryClient
from ansible_collections.ironcore.image.plugins.module_utils._errors import RegistryError
from ansible_collections.ironcore.image.plugins.module_utils._registry_args import RegistryOptions

DIGEST = "sha256:" + "0" * 64
# Without the watch the read lasts this many bytes times the pause (far past the window), then breaks.
TRICKLED = 200
PAUSE = 0.1


def _trickle(listener: socket.socket, done: threading.Event, context: ssl.SSLContext | None) -> None:
    accepted, _address = listener.accept()
    connection = context.wrap_socket(accepted, server_side=True) if context is not None else accepted
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


@pytest.fixture(params=["http", "https"])
def trickling_server(request, tmp_path):
    """(host:port, the options to reach it) of a server that trickles, over plain HTTP or TLS."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()
    context = None
    options = RegistryOptions(plain_http=True, timeout=1.0, retries=0, min_rate=64 * 1024)
    if request.param == "https":
        pki = test_registry.TestPki.create(str(tmp_path))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        options = RegistryOptions(ca_cert=pki.ca_cert, timeout=1.0, retries=0, min_rate=64 * 1024)
    thread = threading.Thread(target=_trickle, args=(listener, done, context), daemon=True)
    thread.start()
    yield "127.0.0.1:%d" % listener.getsockname()[1], options
    done.set()
    listener.close()
    thread.join(10)


def test_a_trickling_stream_is_cut_at_the_first_window(trickling_server):
    host, options = trickling_server
    stream = RegistryClient(host, options).open_blob("os", DIGEST)
    with pytest.raises(RegistryError) as caught:
        for _chunk in stream.iter_chunks(1024 * 1024):
            pass
    stream.close()
    assert caught.value.code == "STALLED" and caught.value.retryable
    assert "stalled" in str(caught.value) and "minimum rate of 64 KiB/s" in str(caught.value)
