"""A real HTTP server on loopback for sink tests, with faults on demand.

Each test gives it an `app(request) -> (status, headers, body)`; the server records every
request. Faults queued with `fail_next` are served before the app sees the request: a status
with headers (429 + Retry-After, 500, 503), a stall longer than the client's timeout, or a
dropped connection (closed without an answer).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


Response = tuple[int, dict[str, str], Any]
App = Callable[[Request], Response]


@dataclass
class Fault:
    # "status" (answered before the app acts), "after" (the app acts, then this status is
    # answered instead), "stall" (no answer for `seconds`) or "drop" (connection closed).
    kind: str
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    # Only requests whose method and path start match (None: any).
    method: str | None = None


class StubServer:
    def __init__(self, app: App, port: int = 0) -> None:
        self.app = app
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.faulted: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = port
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def _take_fault(self, request: Request) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self.faults):
                if fault.method is None or fault.method == request.method:
                    return self.faults.pop(index)
        return None

    def start(self) -> None:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Request(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                fault = stub._take_fault(request)
                if fault is not None:
                    stub.faulted.append(request)
                    if fault.kind == "drop":
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    if fault.kind == "after":
                        with stub._lock:
                            stub.requests.append(request)
                            stub.app(request)
                        self._answer(fault.status, fault.headers, {"error": "injected"})
                        return
                    if fault.kind == "stall":
                        time.sleep(fault.seconds)
                        self.close_connection = True
                        return
                    self._answer(fault.status, fault.headers, {"error": "injected"})
                    return
                with stub._lock:
                    stub.requests.append(request)
                    status, headers, payload = stub.app(request)
                self._answer(status, headers, payload)

            def _answer(self, status: int, headers: dict[str, str], payload: Any) -> None:
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Down: the port refuses connections until `start` again."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
