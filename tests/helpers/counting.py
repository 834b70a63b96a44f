"""A TCP relay on 127.0.0.1 that counts the bytes a server sends back: how much an origin really served.

It relays below TLS, so clients still verify the server's own certificate, and what it counts is what
crossed the wire (TLS records included, a few tenths of a percent over the payload).
"""

from __future__ import annotations

import select
import socket
import threading

from helpers.loopback import LoopbackListener


class ByteCountingProxy(LoopbackListener):
    """Listens on a free loopback port and relays every connection to `target` ("host:port")."""

    def __init__(self, target: str) -> None:
        host, _colon, port = target.rpartition(":")
        self.upstream = (host, int(port))
        self.lock = threading.Lock()
        self.sent_back = 0  # bytes from the target to the clients
        self.connections = 0
        self._listen(256)

    def reset(self) -> None:
        with self.lock:
            self.sent_back = 0
            self.connections = 0

    def _handle(self, client: socket.socket) -> None:
        with self.lock:
            self.connections += 1
        try:
            upstream = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            client.close()
            return
        peers = {client: upstream, upstream: client}
        open_ends = [client, upstream]
        try:
            while open_ends and not self.stopping.is_set():
                readable, _writable, _errors = select.select(open_ends, [], [], 1.0)
                for sock in readable:
                    data = sock.recv(1024 * 1024)
                    if not data:
                        # Half-close: pass the end on, keep relaying the other direction.
                        open_ends.remove(sock)
                        try:
                            peers[sock].shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                        continue
                    peers[sock].sendall(data)
                    if sock is upstream:
                        with self.lock:
                            self.sent_back += len(data)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()
