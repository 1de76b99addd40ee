"""What the two local web servers share (the review workbench and ``counterfeit serve``): binding a
socket, uvicorn with idle timeouts, and request limits that hold before a body is read.

:class:`Limits` is ASGI middleware. A request that announces more than its route's byte limit is
refused with 413 before one byte of its body is read; one that sends more than it announced, or
streams past the limit, is cut off at the limit; one that stops sending its body for
``idle_s`` seconds is answered 408. Refusals are the app's own JSON error shape (``error_body``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from typing import Callable, Iterator

from detector.errors import UserError

IDLE_S = 10.0
"""Seconds a client may leave a started request body (or a kept-alive connection) silent."""
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class BodyTooLarge(Exception):
    """A request body went past its route's limit while it was read."""


class BodyStalled(Exception):
    """A client stopped sending a request body it had started."""


class Limits:
    """ASGI middleware: a byte limit per request (``limit_for(scope)``: bytes, for the route)
    checked against Content-Length before reading and against the bytes as they arrive, and an
    idle timeout while a body is read. ``error_body(code, message)`` makes the JSON of a refusal."""

    def __init__(self, app, limit_for: Callable[[dict], int], error_body: Callable[[str, str], dict],
                 idle_s: float = IDLE_S):
        self.app, self.limit_for, self.error_body, self.idle_s = app, limit_for, error_body, idle_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope)
        announced = dict(scope.get("headers", [])).get(b"content-length")
        if announced is not None:
            try:
                size = int(announced)
            except ValueError:
                return await self._refuse(send, 400, "bad_request", "Content-Length is not a number")
            if size > limit:
                return await self._refuse(send, 413, "request_too_large",
                                          f"the request body is {size:,} bytes, over this route's {limit:,}-byte limit")
        seen = 0

        async def limited_receive():
            nonlocal seen
            try:
                message = await asyncio.wait_for(receive(), self.idle_s)
            except asyncio.TimeoutError:
                raise BodyStalled(f"no part of the request body arrived for {self.idle_s:g} s") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(f"the request body went over this route's {limit:,}-byte limit")
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, send, status: int, code: str, message: str) -> None:
        body = json.dumps(self.error_body(code, message)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def read_json(body: bytes):
    """A request body's JSON; ValueError (a 400) for anything that is not JSON, nesting too deep
    for the parser included."""
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port), or a clear error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        # With its protocol named (IPPROTO_TCP), asyncio turns Nagle's algorithm off on each accepted
        # connection; without, a kept-alive client waited 40 ms per answer for a delayed ACK.
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.set_inheritable(True)
        return sock
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or --host") from None


def base_url(sock: socket.socket) -> str:
    """The ``http://host:port`` a bound socket serves (an IPv6 host in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def server(app):
    """uvicorn for ``app``: quiet, closing kept-alive connections idle for ``IDLE_S``."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=int(IDLE_S),
                                         timeout_graceful_shutdown=5))


def serve(app, sock: socket.socket) -> None:
    """Run the app on an already bound socket until interrupted."""
    server(app).run(sockets=[sock])


@contextlib.contextmanager
def running(app) -> Iterator[str]:
    """``app`` served from a background thread on a free local port, for as long as the ``with``
    block lasts; yields its base URL (tests and scripts drive it)."""
    sock = bind("127.0.0.1", 0)
    srv = server(app)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started and thread.is_alive():
        time.sleep(0.05)
    try:
        yield base_url(sock)
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def limit_handlers(error: Callable[[int, str, str], object]) -> dict:
    """Starlette exception handlers answering a body cut off by :class:`Limits` (413) or left
    silent (408) with the app's ``error(status, code, message)`` response."""

    async def too_large(request, exc):
        return error(413, "request_too_large", str(exc))

    async def stalled(request, exc):
        response = error(408, "timeout", str(exc))
        response.headers["connection"] = "close"
        return response

    return {BodyTooLarge: too_large, BodyStalled: stalled}
