"""A loopback TCP proxy a test can cut and restore, to simulate a database outage for real processes.

    with TcpProxy("127.0.0.1", 5432) as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/db"   # give this to the process under test
        proxy.cut("reset")       # or proxy.cut("blackhole")
        proxy.restore()

One background thread runs a selector loop over the listening socket and every proxied connection; the
test thread only posts commands to it (and waits for them to be done), so `cut()` has taken effect when it
returns. Modes:

* ``open``: bytes are forwarded both ways (with back-pressure: at most `_BUFFER` bytes queued per direction).
* ``reset`` (`cut("reset")`): every connection is closed with a TCP reset, and new connections are accepted
  and reset at once, so the driver sees connection errors immediately, like a database that went away.
* ``blackhole`` (`cut("blackhole")`): nothing is forwarded any more. Existing connections stay open but
  silent; new ones are accepted (the kernel completes the handshake) and then hear nothing. Statements and
  connection attempts hang until the driver's own timeouts, like a network partition. The bytes sent into
  the hole are lost, so these connections cannot be resumed: `restore()` resets them.

`restore()` goes back to ``open``; connections made from then on are forwarded again.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

Mode = Literal["open", "reset", "blackhole"]

_BUFFER = 1 << 20  # bytes queued per direction before we stop reading the sender
_CHUNK = 1 << 16
_COMMAND_TIMEOUT = 10.0
_CONNECT_TIMEOUT = 5.0


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0) instead of FIN: the peer's next read or write fails at once."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass(eq=False)
class _Pair:
    """One proxied connection: the client's socket, ours to the target, and the bytes queued each way."""

    client: socket.socket
    upstream: socket.socket | None  # None: accepted into a blackhole, never connected
    to_upstream: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    eof: bool = False  # one side closed: deliver what is queued for the other, then close both
    frozen: bool = False  # in the blackhole: not watched at all until restore() resets it

    def peer(self, sock: socket.socket) -> socket.socket | None:
        return self.upstream if sock is self.client else self.client

    def outbox(self, sock: socket.socket) -> bytearray:
        """The bytes waiting to be written to `sock`."""
        return self.to_client if sock is self.client else self.to_upstream


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server((host, 0), backlog=128)
        self._listener.setblocking(False)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self.mode: Mode = "open"
        self.accepted = 0  # connections accepted, whatever happened to them
        self._pairs: set[_Pair] = set()
        self._selector = selectors.DefaultSelector()
        self._wakeup_r, self._wakeup_w = socket.socketpair()
        self._wakeup_r.setblocking(False)
        self._commands: list[tuple[Callable[[], None], threading.Event]] = []
        self._lock = threading.Lock()
        self._closing = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=f"tcp-proxy-{self.port}", daemon=True)

    # ------------------------------------------------------------------ the test's side

    def start(self) -> TcpProxy:
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, None)
        self._thread.start()
        return self

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @property
    def connections(self) -> int:
        """Connections currently held (forwarded, or silent in the blackhole)."""
        return len(self._pairs)

    def cut(self, mode: Literal["reset", "blackhole"] = "reset") -> None:
        """Start an outage; returns once every existing connection has been reset or silenced."""
        if mode not in ("reset", "blackhole"):
            raise ValueError(f"mode must be 'reset' or 'blackhole', not {mode!r}")
        self._call(lambda: self._set_mode(mode))

    def restore(self) -> None:
        """End the outage: connections silenced by a blackhole are reset, new ones are forwarded again."""
        self._call(lambda: self._set_mode("open"))

    def close(self) -> None:
        """Reset every connection, stop the thread and close the listening socket. Idempotent."""
        if self._thread.is_alive():
            self._call(self._stop)
            self._thread.join(_COMMAND_TIMEOUT)
            if self._thread.is_alive():
                raise RuntimeError("the proxy thread did not stop")
        self._selector.close()
        for sock in (self._listener, self._wakeup_r, self._wakeup_w):
            sock.close()

    def _call(self, command: Callable[[], None]) -> None:
        """Run `command` on the proxy thread and wait until it has run."""
        if not self._thread.is_alive():
            raise RuntimeError(f"the proxy thread is not running (failure: {self._failure!r})")
        done = threading.Event()
        with self._lock:
            self._commands.append((command, done))
        self._wakeup_w.send(b"x")
        if not done.wait(_COMMAND_TIMEOUT):
            raise RuntimeError(f"the proxy thread did not answer within {_COMMAND_TIMEOUT}s ({self._failure!r})")

    # ------------------------------------------------------------------ the proxy thread

    def _main(self) -> None:
        try:
            while not self._closing:
                for key, events in self._selector.select():
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wakeup_r:
                        self._run_commands()
                    else:
                        assert isinstance(key.fileobj, socket.socket) and isinstance(key.data, _Pair)
                        self._transfer(key.data, key.fileobj, events)
        except BaseException as exc:  # pragma: no cover - reported through _call/close
            self._failure = exc
            raise
        finally:
            for pair in list(self._pairs):
                self._drop(pair)
            self._run_commands()  # release anyone waiting on a command

    def _run_commands(self) -> None:
        try:
            while self._wakeup_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        with self._lock:
            commands, self._commands = self._commands, []
        for command, done in commands:
            try:
                command()
            finally:
                done.set()

    def _stop(self) -> None:
        self._closing = True

    def _set_mode(self, mode: Mode) -> None:
        previous, self.mode = self.mode, mode
        for pair in list(self._pairs):
            if mode == "reset" or (mode == "open" and previous == "blackhole"):
                self._drop(pair)
            elif mode == "blackhole":
                self._freeze(pair)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            self.accepted += 1
            if self.mode == "reset":
                _reset(client)
                continue
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.mode == "blackhole":
                self._pairs.add(_Pair(client, None, frozen=True))
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=_CONNECT_TIMEOUT)
            except OSError:
                _reset(client)
                continue
            upstream.setblocking(False)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, upstream)
            self._pairs.add(pair)
            self._watch(pair)

    def _transfer(self, pair: _Pair, sock: socket.socket, events: int) -> None:
        if pair.frozen or pair not in self._pairs:  # silenced or dropped earlier in this batch of events
            return
        peer = pair.peer(sock)
        assert peer is not None
        try:
            if events & selectors.EVENT_WRITE:
                outbox = pair.outbox(sock)
                del outbox[: sock.send(outbox)]
            if events & selectors.EVENT_READ:
                data = sock.recv(_CHUNK)
                if data:
                    pair.outbox(peer).extend(data)
                else:
                    pair.eof = True
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(pair)
            return
        if pair.eof and not pair.to_client and not pair.to_upstream:
            self._drop(pair)
        else:
            self._watch(pair)

    def _watch(self, pair: _Pair) -> None:
        """(Re)register both sockets for what they can do now: read unless backed up, write when owed bytes."""
        assert pair.upstream is not None
        for sock, peer in ((pair.client, pair.upstream), (pair.upstream, pair.client)):
            events = 0
            if not pair.eof and len(pair.outbox(peer)) < _BUFFER:
                events |= selectors.EVENT_READ
            if pair.outbox(sock):
                events |= selectors.EVENT_WRITE
            self._register(sock, events, pair)

    def _register(self, sock: socket.socket, events: int, pair: _Pair) -> None:
        try:
            current = self._selector.get_key(sock).events
        except KeyError:
            current = 0
        if events == current:
            return
        if not events:
            self._selector.unregister(sock)
        elif not current:
            self._selector.register(sock, events, pair)
        else:
            self._selector.modify(sock, events, pair)

    def _freeze(self, pair: _Pair) -> None:
        pair.frozen = True
        for sock in (pair.client, pair.upstream):
            if sock is not None:
                self._register(sock, 0, pair)

    def _drop(self, pair: _Pair) -> None:
        if pair not in self._pairs:
            return
        self._pairs.discard(pair)
        for sock in (pair.client, pair.upstream):
            if sock is not None:
                self._register(sock, 0, pair)
                _reset(sock)
