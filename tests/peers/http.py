"""A real HTTP server on 127.0.0.1 in a thread: answers each request with a function and records every request."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HANG = object()  # answer nothing until the server stops (a peer that never answers in time)
HANG_LIMIT = 30.0  # seconds: a hung handler gives up even if nobody stops the server


@dataclass(frozen=True)
class Request:
    """One request as the server received it (header names in lower case)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Respond = Callable[[Request], Any]  # returns (status, JSON-able body), or HANG


class HttpPeer:
    """Serve `respond` on 127.0.0.1 at a free port; `requests` holds every request received, in order."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests: list[Request] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # else each answer waits ~40 ms for a delayed ACK

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                  self.rfile.read(length))
                with peer._lock:
                    peer.requests.append(request)
                answer = peer.respond(request)
                if answer is HANG:
                    peer.release.wait(HANG_LIMIT)
                    self.close_connection = True
                    return
                status, payload = answer
                data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass  # keep test output quiet

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def start(self) -> HttpPeer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()  # let hung handlers go first, so shutdown does not wait on them
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


@contextmanager
def http_peer(respond: Respond) -> Iterator[HttpPeer]:
    """Run an HttpPeer for the duration of the block."""
    peer = HttpPeer(respond).start()
    try:
        yield peer
    finally:
        peer.stop()
