"""A static HTTP server for an OCI layout directory, run as its own process, that can misbehave on purpose.

    python layout_server.py DIR PORT RECORD [--die-after BYTES] [--corrupt] [--ignore-range] [--trickle SECONDS]

Serves files under DIR like a plain web server (nginx serving a layout),
with single `Range: bytes=N-` and `bytes=N-M` requests answered 206, and
appends one JSON line per request (method, path, headers) to RECORD. Blobs
of at least 1 MiB can be broken: --die-after kills the process with SIGKILL
once that many body bytes of one are out; --corrupt flips one byte in the
middle of each; --ignore-range answers every Range request with 200 and the
whole file; --trickle sends one byte every SECONDS, and closes the connection
after TRICKLE_LIMIT of them, so that a client which never gives up still ends.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import time
import typing as t

BIG = 1024 * 1024
BLOCK = 64 * 1024
# What a trickling answer sends at most, one byte at a time, before it hangs up.
TRICKLE_LIMIT = 300


def make_handler(args: argparse.Namespace) -> type[http.server.BaseHTTPRequestHandler]:
    root = os.path.realpath(args.directory)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args: t.Any) -> None:
            pass

        def _record(self) -> None:
            entry = {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
            with open(args.record, "a", encoding="utf-8") as stream:
                stream.write(json.dumps(entry) + "\n")

        def do_GET(self) -> None:
            self._record()
            path = os.path.realpath(os.path.join(root, self.path.split("?", 1)[0].lstrip("/")))
            if not path.startswith(root + os.sep) or not os.path.isfile(path):
                self.send_error(404)
                return
            size = os.path.getsize(path)
            big = size >= BIG
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            ranged = bool(match) and not (big and args.ignore_range)
            start = int(match.group(1)) if match and ranged else 0
            last = min(int(match.group(2)), size - 1) if match and ranged and match.group(2) else size - 1
            if start >= size > 0 or last < start:
                self.send_error(416)
                return
            self.send_response(206 if ranged else 200)
            self.send_header("Content-Length", str(last + 1 - start))
            if ranged:
                self.send_header("Content-Range", "bytes %d-%d/%d" % (start, last, size))
            self.end_headers()
            if big and args.trickle:
                self._trickle(path, start)
                return
            sent = 0
            with open(path, "rb") as stream:
                stream.seek(start)
                position = start
                while position <= last:
                    block = bytearray(stream.read(min(BLOCK, last + 1 - position)))
                    if not block:
                        break
                    middle = size // 2
                    if big and args.corrupt and position <= middle < position + len(block):
                        block[middle - position] ^= 0xFF
                    if big and args.die_after and sent + len(block) >= args.die_after:
                        self.wfile.write(block[: args.die_after - sent])
                        self.wfile.flush()
                        os.kill(os.getpid(), signal.SIGKILL)
                    self.wfile.write(block)
                    sent += len(block)
                    position += len(block)

        def _trickle(self, path: str, start: int) -> None:
            with open(path, "rb") as stream:
                stream.seek(start)
                data = stream.read(TRICKLE_LIMIT)
            for byte in data:
                time.sleep(args.trickle)
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            self.close_connection = True

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("port", type=int)
    parser.add_argument("record")
    parser.add_argument("--die-after", type=int, default=0)
    parser.add_argument("--corrupt", action="store_true")
    parser.add_argument("--ignore-range", action="store_true")
    parser.add_argument("--trickle", type=float, default=0.0)
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args))
    server.serve_forever()


class LayoutServer:
    """The server above in a subprocess; `requests()` reads back what it was asked."""

    def __init__(self, directory: str, record: str, *flags: str):
        # Imported here: this file also runs as a script, outside the tests' path.
        from helpers.registry import free_port, wait_for_port

        self.port = free_port()
        self.record = record
        self.url = "http://127.0.0.1:%d" % self.port
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), directory, str(self.port), record, *flags],
            stdin=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.process)

    def requests(self) -> list[dict[str, t.Any]]:
        if not os.path.exists(self.record):
            return []
        with open(self.record, encoding="utf-8") as stream:
            return [json.loads(line) for line in stream if line.strip()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


if __name__ == "__main__":
    main()
