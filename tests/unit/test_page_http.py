"""The page servers' HTTP/1.1 (worker/page_http.py), spoken to over a real socket on loopback."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator

import pytest
import yarl
from aiohttp import web

from worker import page_http
from worker.broker import free_port


async def echo(request: page_http.Request) -> web.Response:
    if "slow" in request.query:
        await asyncio.sleep(0.05)  # answered after the requests behind it would have been
    body = f"{request.method} {request.path} {sorted(request.query.items())} {request.remote}"
    return web.Response(text=body, headers={"X-Frame-Options": "DENY"})


async def broken(_: page_http.Request) -> web.Response:
    raise RuntimeError("a bug")


@pytest.fixture
async def port() -> AsyncIterator[int]:
    server = page_http.Server({"/echo": echo, "/broken": broken})
    number = free_port()
    await server.start("127.0.0.1", number)
    yield number
    await server.stop()


async def exchange(port: int, sent: bytes, expect: int | None = None) -> list[tuple[int, dict[str, str], bytes]]:
    """Send ``sent``; read ``expect`` answers, or every answer until the server closes (soon:
    an idle connection is closed only after a minute)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(sent)
    answers = []
    try:
        async with asyncio.timeout(5):
            while expect is None or len(answers) < expect:
                head = await reader.readuntil(b"\r\n\r\n")
                status_line, *lines = head.decode("latin-1").strip().split("\r\n")
                headers = dict(line.split(": ", 1) for line in lines)
                body = await reader.readexactly(int(headers["Content-Length"]))
                answers.append((int(status_line.split()[1]), headers, body))
    except asyncio.IncompleteReadError as end:
        assert end.partial == b"", end.partial  # closed between answers, never inside one
    finally:
        writer.close()
    return answers


def get(path: str, *headers: str) -> bytes:
    return "\r\n".join([f"GET {path} HTTP/1.1", "Host: x", *headers, "", ""]).encode()


async def test_a_route_answers_with_its_status_headers_and_body(port):
    [(status, headers, body)] = await exchange(port, get("/echo?order=SO-1&email=a%2Bb%40x.cn"), 1)
    assert status == 200 and headers["X-Frame-Options"] == "DENY"
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert body == b"GET /echo [('email', 'a+b@x.cn'), ('order', 'SO-1')] 127.0.0.1"


async def test_the_query_reads_as_aiohttps_does():
    for query in ("order=SO+1&email=a%2Bb%40x.cn", "a=&b", "lang=zh-CN&x=%E4%B8%AD", "a=1&a=2"):
        ours = page_http.Request("GET", f"/track?{query}", page_http.CIMultiDict(), "", True).query
        assert list(ours.items()) == list(yarl.URL(f"/track?{query}", encoded=True).query.items())


async def test_keep_alive_and_pipelined_requests_are_answered_in_the_order_asked(port):
    sent = get("/echo?n=1&slow") + get("/echo?n=2") + get("/nowhere") + get("/echo?n=3")
    answers = await exchange(port, sent, 4)
    assert [a[0] for a in answers] == [200, 200, 404, 200]
    assert [b"'n', '1'" in answers[0][2], b"'n', '2'" in answers[1][2], b"'n', '3'" in answers[3][2]] == [True] * 3


async def test_a_client_that_asks_much_before_reading_gets_every_answer(port):
    answers = await exchange(port, b"".join(get(f"/echo?n={n}") for n in range(300)), 300)
    assert [a[2].split(b"'n', '")[1].split(b"'")[0] for a in answers] == [str(n).encode() for n in range(300)]


async def test_head_has_the_headers_and_no_body(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/echo").replace(b"GET", b"HEAD", 1) + get("/echo"))
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"200 OK" in head and b"Content-Length: " in head
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 OK")  # the next answer at once
    writer.close()


async def test_other_methods_are_refused_and_a_failing_route_answers_500_and_goes_on(port):
    post = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    answers = await exchange(port, post + get("/broken") + get("/echo"), 3)
    assert [a[0] for a in answers] == [405, 500, 200]
    assert answers[0][1]["Allow"] == "GET, HEAD" and b"a bug" not in answers[1][2]


@pytest.mark.parametrize(("sent", "status"), [
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
    (get("/echo?" + "x" * 9000), 414),
    (get("/echo", *(f"X-H{n}: v" for n in range(200))), 431),
    (get("/echo", "X-Long: " + "v" * 9000), 431),
    (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100000, 413),
])
async def test_what_cannot_be_read_is_refused_after_the_answers_before_it_and_closed(port, sent, status):
    answers = await exchange(port, get("/echo?first") + sent + get("/echo?never"))
    assert [a[0] for a in answers] == [200, status]
    assert answers[1][1]["Connection"] == "close"


async def test_a_client_without_keep_alive_is_answered_and_closed(port):
    answers = await exchange(port, b"GET /echo HTTP/1.0\r\n\r\n")
    assert [a[0] for a in answers] == [200] and answers[0][1]["Connection"] == "close"


async def test_a_client_that_half_closes_after_asking_gets_its_answers(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(get("/echo?n=1&slow") + get("/echo?n=2"))
    writer.write_eof()  # as `printf ... | nc` does
    answers = await asyncio.wait_for(reader.read(), timeout=5)  # to the server's close
    assert answers.count(b"HTTP/1.1 200 OK") == 2 and b"'n', '2'" in answers
    writer.close()


async def test_an_idle_connection_is_closed(monkeypatch):
    monkeypatch.setattr(page_http, "IDLE_SECONDS", 0.25)
    server = page_http.Server({"/echo": echo})
    number = free_port()
    await server.start("127.0.0.1", number)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", number)
        assert await asyncio.wait_for(reader.read(), timeout=3) == b""  # closed by the server
        writer.close()
    finally:
        await server.stop()


async def test_a_route_still_waiting_when_its_client_leaves_is_stopped():
    waiting, stopped = asyncio.Event(), asyncio.Event()

    async def forever(_: page_http.Request) -> web.Response:
        waiting.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()
        raise AssertionError("never answered")

    server = page_http.Server({"/forever": forever, "/echo": echo})
    number = free_port()
    await server.start("127.0.0.1", number)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", number)
        writer.write(get("/forever"))
        await asyncio.wait_for(waiting.wait(), timeout=3)
        # Reset, not closed: a close reads as a half-close, whose client still gets its answer.
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   struct.pack("ii", 1, 0))
        writer.close()
        await asyncio.wait_for(stopped.wait(), timeout=3)
        assert [a[0] for a in await exchange(number, get("/echo"), 1)] == [200]
    finally:
        await server.stop()
