"""A static HTTP server for an OCI layout directory, run as its own process, that can misbehave on purpose.

    python layout_server.py DIR PORT RECORD [--die-after BYTES] [--corrupt] [--ignore-range]

Serves files under DIR like a plain web server (nginx serving a layout),
with single `Range: bytes=N-` requests answered 206, and appends one JSON
line per request (method, path, headers) to RECORD. Blobs of at least 1 MiB
can be broken: --die-after kills the process with SIGKILL once that many
body bytes of one are out; --corrupt flips one byte in the middle of each;
--ignore-range answers every Range request with 200 and the whole file.
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
import typing as t

BIG = 1024 * 1024
BLOCK = 64 * 1024


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
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            start = int(match.group(1)) if match and not (big and args.ignore_range) else 0
            if start >= size > 0:
                self.send_error(416)
                return
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(size - start))
            if start:
                self.send_header("Content-Range", "bytes %d-%d/%d" % (start, size - 1, size))
            self.end_headers()
            sent = 0
            with open(path, "rb") as stream:
                stream.seek(start)
                position = start
                while True:
                    block = bytearray(stream.read(BLOCK))
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

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("port", type=int)
    parser.add_argument("record")
    parser.add_argument("--die-after", type=int, default=0)
    parser.add_argument("--corrupt", action="store_true")
    parser.add_argument("--ignore-range", action="store_true")
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
