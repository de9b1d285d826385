"""The page servers' HTTP/1.1: just the part a handful of GET routes answered from memory
need, parsed by llhttp (the ``httptools`` binding, as uvicorn uses it).

aiohttp's server spent about 70 µs of the two cores on a request before the page's own
code ran, a fifth of a drawn lookup, and a bare asyncio protocol about 30; the page servers
answer a fifth more drawn lookups a second through this (docs/performance.md, Tracking
page). The worker keeps aiohttp: its routes are many, and lookups go to the page servers.

What it does: keep-alive and pipelining (answers in the order asked), HEAD, the request
line and headers bounded as aiohttp bounds them (414, 431), a request body read and
dropped (up to 64 KiB, then 413), 400 for what is not HTTP, 404 and 405, 500 with the
error logged; reading paused while a client does not read its answers or has asked too
many at once; a client that half-closes answered before the close; a connection closed
after ``IDLE_SECONDS`` without a byte.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import unquote_plus

import httptools
from aiohttp import web
from multidict import CIMultiDict, MultiDict

log = logging.getLogger("worker.pages")

MAX_LINE = 8190  # the request line and each header, as aiohttp
MAX_HEADERS = 128
MAX_BODY = 64 * 1024  # a GET has none; a client sending one gets it read and dropped
MAX_QUEUED = 32  # pipelined requests a connection may have waiting before reading pauses
IDLE_SECONDS = 75.0  # aiohttp's keep-alive
REASONS = {s.value: s.phrase for s in HTTPStatus}


@dataclass(slots=True)
class Request:
    """What a route reads of a request: the attributes of aiohttp's it uses."""

    method: str
    path_qs: str
    headers: CIMultiDict[str]
    remote: str
    keep_alive: bool
    path: str = field(init=False)
    query_string: str = field(init=False)
    query: MultiDict[str] = field(init=False)

    def __post_init__(self) -> None:
        self.path, _, self.query_string = self.path_qs.partition("?")
        self.query = _query(self.query_string)


def _query(query_string: str) -> MultiDict[str]:
    """The query's pairs as ``parse_qsl(..., keep_blank_values=True)`` reads them, in a
    third of its time: only the parts with a ``%`` or a ``+`` are decoded."""
    pairs = []
    for part in query_string.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((_decoded(name), _decoded(value)))
    return MultiDict(pairs)


def _decoded(text: str) -> str:
    return unquote_plus(text) if "%" in text or "+" in text else text


Route = Callable[[Request], Awaitable[web.Response]]


class Refused(Exception):
    """A request this server will not read further: answered with ``status``, then closed."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class Server:
    """GET (and HEAD) ``routes`` on a port, beside other processes (``SO_REUSEPORT``)."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._sweeping: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Connection(self), host, port,
                                                backlog=1024, reuse_port=True)
        self._sweeping = asyncio.ensure_future(self._sweep())

    async def stop(self) -> None:
        if self._sweeping:
            self._sweeping.cancel()
        if self._server:
            self._server.close()
            for connection in list(self.connections):
                connection.transport.close()
            await self._server.wait_closed()

    async def _sweep(self) -> None:
        """Close the connections idle for longer than ``IDLE_SECONDS``: one timer for all,
        rather than one re-armed on every request."""
        while True:
            await asyncio.sleep(IDLE_SECONDS / 5)
            idle_since = time.monotonic() - IDLE_SECONDS
            for connection in [c for c in self.connections if c.last_read < idle_since]:
                if connection.answering is None:
                    connection.transport.close()


class Connection(asyncio.Protocol):
    """One client's connection: requests parsed as they arrive, answered one after another."""

    transport: asyncio.Transport

    def __init__(self, server: Server) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.queue: collections.deque[Request] = collections.deque()
        self.answering: asyncio.Task[None] | None = None
        self.last_read = time.monotonic()
        self.final: bytes | None = None  # written once the queue is answered, then closed
        self.paused_for = set[str]()  # why reading is paused: "queue", "writing", "final"
        self._url = b""
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._body_size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if peer else ""
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.answering:
            self.answering.cancel()

    def data_received(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        if self.final is not None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._finish_with(b"")  # answered as a plain request, then closed: no upgrades
        except httptools.HttpParserCallbackError as e:
            self._refuse(e.__context__.status if isinstance(e.__context__, Refused) else 400)
        except httptools.HttpParserError:
            self._refuse(400)
        if len(self.queue) >= MAX_QUEUED:
            self._pause("queue")

    def eof_received(self) -> bool:
        """The client has sent all it will (a half-close): answer it, then close."""
        self._finish_with(b"")
        return True  # keep the transport open for the answers

    def pause_writing(self) -> None:  # the client is not reading its answers
        self._pause("writing")

    def resume_writing(self) -> None:
        self._resume("writing")

    # -- the parser's callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url, self._headers, self._body_size = b"", CIMultiDict(), 0

    def on_url(self, part: bytes) -> None:
        self._url += part
        if len(self._url) > MAX_LINE:
            raise Refused(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_LINE or len(self._headers) >= MAX_HEADERS:
            raise Refused(431)
        self._headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_body(self, part: bytes) -> None:
        self._body_size += len(part)
        if self._body_size > MAX_BODY:
            raise Refused(413)

    def on_message_complete(self) -> None:
        self.queue.append(Request(self.parser.get_method().decode("latin-1"),
                                  self._url.decode("utf-8", "surrogateescape"), self._headers,
                                  self.remote, self.parser.should_keep_alive()))
        if self.answering is None:
            self.answering = asyncio.ensure_future(self._answer_queued())

    # -- answering -------------------------------------------------------------------

    async def _answer_queued(self) -> None:
        try:
            while self.queue:
                request = self.queue.popleft()
                response = await self._answer(request)
                self.transport.write(encode(response, request.method == "HEAD", request.keep_alive))
                if not request.keep_alive:
                    self.transport.close()
                    return
            if self.final is not None:
                self._close_with_final()
            self._resume("queue")
        finally:
            self.answering = None

    async def _answer(self, request: Request) -> web.Response:
        route = self.server.routes.get(request.path)
        if route is None:
            return web.Response(status=404, text="Not Found")
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="Method Not Allowed", headers={"Allow": "GET, HEAD"})
        try:
            return await route(request)
        except Exception:
            log.exception("a page request failed")
            return web.Response(status=500, text="Internal Server Error")

    def _refuse(self, status: int) -> None:
        self._finish_with(encode(web.Response(status=status, text=REASONS[status]), False, False))

    def _finish_with(self, final: bytes) -> None:
        """Answer what was asked before, then write ``final`` and close."""
        self.final = final
        self._pause("final")
        if self.answering is None:
            self._close_with_final()

    def _close_with_final(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(self.final or b"")
            self.transport.close()

    def _pause(self, reason: str) -> None:
        if not self.paused_for:
            self.transport.pause_reading()
        self.paused_for.add(reason)

    def _resume(self, reason: str) -> None:
        if reason in self.paused_for:
            self.paused_for.discard(reason)
            if not self.paused_for:
                self.transport.resume_reading()


def encode(response: web.Response, head_only: bool, keep_alive: bool) -> bytes:
    """An answer as HTTP/1.1 puts it on the wire."""
    body = response.body if isinstance(response.body, bytes) else b""
    head = _head(response.status, tuple(response.headers.items()), keep_alive)
    length = b"Content-Length: %d\r\n\r\n" % len(body)
    return head + length if head_only else b"".join((head, length, body))


@functools.lru_cache(256)  # a few kinds of answer, each with the same headers every time
def _head(status: int, headers: tuple[tuple[str, str], ...], keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, '')}", *(f"{n}: {v}" for n, v in headers)]
    if not keep_alive:
        lines.append("Connection: close")
    return "".join(line + "\r\n" for line in lines).encode("latin-1")
