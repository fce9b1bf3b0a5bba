"""Storage faults that need a real server behind them, for the pipeline's withdraw tests.

    LostAnswers(upstream, method="PUT", path_part="/out/")
        a loopback HTTP proxy: every matching request reaches the real server (the object lands)
        and the server's answer is thrown away: the client sees the connection close, as when a
        server or a network dies between committing a write and answering it. `seen` lists every
        request line forwarded; with a method no request uses it is a counting proxy.
    Trap(on_connect, port=0)
        a loopback listener that calls `on_connect()` at its first connection and closes every
        connection unanswered: a store that fails exactly when the client reaches it (or, on
        a dead server's port, one that keeps it from starting again while it is held).

Both serve one request per connection (they ask the server to close after answering, and pass
that on), so an HTTP client never reuses a connection they have finished with.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable
from urllib.parse import urlsplit


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read up to the end of the HTTP head: (head, whatever of the body came with it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the connection closed inside an HTTP head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _with_connection_close(head: bytes) -> bytes:
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
            raise ValueError("a chunked request body: LostAnswers reads Content-Length bodies only")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handle: Callable[[socket.socket], None], port: int = 0) -> None:
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    outer.handle_connection(self.request)
                except (OSError, ValueError) as exc:
                    outer.errors.append(f"{type(exc).__name__}: {exc}")

        self.handle_connection = handle
        self.errors: list[str] = []
        super().__init__(("127.0.0.1", port), Handler)
        threading.Thread(target=self.serve_forever, name="lossy-server", daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class LostAnswers(_Server):
    def __init__(self, upstream: str, method: str = "PUT", path_part: str = "/") -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.method, self.path_part = method.encode(), path_part.encode()
        self.dropped: list[tuple[bytes, bytes]] = []  # (request line, the status line the client never saw)
        self.seen: list[bytes] = []  # every request line forwarded, in order
        super().__init__(self._proxy)

    def _proxy(self, client: socket.socket) -> None:
        head, body = _read_head(client)
        length = _content_length(head)
        while len(body) < length:
            chunk = client.recv(min(1 << 20, length - len(body)))
            if not chunk:
                raise ConnectionError("the client closed inside a request body")
            body += chunk
        with socket.create_connection(self.upstream, timeout=30) as up:
            up.sendall(_with_connection_close(head) + body)
            answer = b""
            while chunk := up.recv(65536):
                answer += chunk
        request_line = head.split(b"\r\n", 1)[0]
        self.seen.append(request_line)
        verb, _, rest = request_line.partition(b" ")
        if verb == self.method and self.path_part in rest.split(b" ", 1)[0]:
            self.dropped.append((request_line, answer.split(b"\r\n", 1)[0]))
            client.shutdown(socket.SHUT_RDWR)  # the write happened; its answer is lost
            return
        client.sendall(answer)


class Trap(_Server):
    def __init__(self, on_connect: Callable[[], None] = lambda: None, port: int = 0) -> None:
        self.on_connect = on_connect
        self.connections = 0
        self._lock = threading.Lock()
        super().__init__(self._spring, port)

    def _spring(self, client: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            first = self.connections == 1
        if first:
            self.on_connect()
        client.shutdown(socket.SHUT_RDWR)
