"""A loopback HTTP server for company feeds and transcripts: Basic auth, injectable failures, request log.

    with FeedServer(files={"/acme/sessions.csv": b"..."}, username="u", password="p") as server:
        url = server.url("/acme/sessions.csv")
        ...
        assert server.max_in_flight <= 5

Every path needs the Basic credentials (401 otherwise). ``flaky`` paths answer 500 that many times before
they succeed, ``failing`` ones always answer 500; ``delay`` makes every answer take that long on the server side
(so overlapping requests become observable — the tests themselves never sleep).
"""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any


@dataclass
class FeedServer:
    files: dict[str, bytes] = field(default_factory=dict)
    username: str = "feed-user"
    password: str = "feed-password"
    flaky: dict[str, int] = field(default_factory=dict)
    failing: set[str] = field(default_factory=set)
    delay: float = 0.0
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Authorization header)
    in_flight: int = 0
    max_in_flight: int = 0
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _httpd: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def add_tree(self, root: Path, prefix: str = "") -> None:
        """Serve every file under ``root`` at ``prefix/<relative path>``."""
        for path in sorted(root.rglob("*")):
            if path.is_file():
                self.files[f"{prefix}/{path.relative_to(root).as_posix()}"] = path.read_bytes()

    def hits(self, path: str) -> int:
        with self.lock:
            return sum(1 for seen, _ in self.requests if seen == path)

    def start(self) -> FeedServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="feed-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FeedServer:
        return self.start()

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.stop()


def _handler(state: FeedServer) -> type[BaseHTTPRequestHandler]:
    expected = "Basic " + base64.b64encode(f"{state.username}:{state.password}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def do_GET(self) -> None:
            auth = self.headers.get("Authorization")
            with state.lock:
                state.requests.append((self.path, auth))
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                if state.delay:
                    time.sleep(state.delay)  # server side: a slow feed
                self._answer(auth)
            finally:
                with state.lock:
                    state.in_flight -= 1

        def _answer(self, auth: str | None) -> None:
            if auth != expected:
                return self._send(401, b"unauthorized", {"WWW-Authenticate": 'Basic realm="feeds"'})
            if self.path in state.failing:
                return self._send(500, b"boom")
            with state.lock:
                remaining = state.flaky.get(self.path, 0)
                if remaining:
                    state.flaky[self.path] = remaining - 1
            if remaining:
                return self._send(500, b"try again")
            body = state.files.get(self.path)
            if body is None:
                return self._send(404, b"not found")
            self._send(200, body)

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
