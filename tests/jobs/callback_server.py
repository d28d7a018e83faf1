"""A loopback callback receiver for dispatch tests: counts every element it is POSTed, raw and by fire id."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class CallbackServer:
    """``raw[fire_id]`` counts deliveries (duplicates included); ``by_job[job_id]`` the distinct fire times."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.status = status
        self.delay = delay  # seconds before answering: keeps a dispatcher's claims held longer
        self.lock = threading.Lock()
        self.raw: Counter[str] = Counter()
        self.first_seen: dict[str, float] = {}  # fire_id -> first receipt (epoch seconds): receiver-side lag
        self.by_job: dict[str, set[str]] = {}
        self.last: dict[str, str] = {}  # newest fire time per job (ISO text of one format orders like time)
        self.requests = 0
        self.sizes: list[int] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                now = time.time()
                elements: list[dict[str, Any]] = json.loads(body)
                with server.lock:
                    server.requests += 1
                    server.sizes.append(len(elements))
                    for element in elements:
                        server.raw[element["fire_id"]] += 1
                        server.first_seen.setdefault(element["fire_id"], now)
                        server.by_job.setdefault(element["id"], set()).add(element["fire_time"])
                        if element["fire_time"] > server.last.get(element["id"], ""):
                            server.last[element["id"]] = element["fire_time"]
                if server.delay:
                    time.sleep(server.delay)  # a slow receiver, in the server's own thread
                self.send_response(server.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/callback"

    def __enter__(self) -> CallbackServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def snapshot(self) -> tuple[Counter[str], dict[str, set[str]]]:
        with self.lock:
            return Counter(self.raw), {k: set(v) for k, v in self.by_job.items()}

    def reached(self, jobs: int, moment: str) -> bool:
        """True once ``jobs`` jobs have each been hit with a fire at or after ``moment`` (same ISO format)."""
        with self.lock:
            return len(self.last) >= jobs and min(self.last.values()) >= moment

    @property
    def distinct(self) -> int:
        with self.lock:
            return len(self.raw)

    @property
    def duplicates(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.raw.values())
