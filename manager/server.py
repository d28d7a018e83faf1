"""Uvicorn inside our own event loop, without its signal handlers (the process owns SIGTERM/SIGINT)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Generator

import anyio
import uvicorn
from anyio.abc import TaskStatus
from starlette.types import ASGIApp


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class PortInUse(OSError):
    pass


def bind(host: str, port: int) -> socket.socket:
    """Bind before serving so a taken port is a clear error, not uvicorn's sys.exit()."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}; set SCHEDULER_HTTP_PORT or --port") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve_http(
    app: ASGIApp, sock: socket.socket, *, task_status: TaskStatus[uvicorn.Server] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled or `server.should_exit` is set; reports started once accepting connections."""
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=5)
    server = _EmbeddedServer(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
            await anyio.sleep(0.01)
        task_status.started(server)
