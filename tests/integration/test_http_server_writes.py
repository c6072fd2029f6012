"""The services' HTTP server (uvicorn with ``CoalescingHttpToolsProtocol``) over a real socket:
a response written in one step of the event loop reaches the socket as one write, a streamed
one still leaves chunk by chunk, and a closed connection delivers all it was sent first."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvicorn

from services.common.broker import free_port
from services.common.coalescing import CoalescingHttpToolsProtocol, CoalescingTransport

WRITES: list[bytes] = []  # what reached the socket's transport, write by write


class _Counting:
    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        WRITES.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _CountedProtocol(CoalescingHttpToolsProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(_Counting(transport))  # type: ignore[arg-type]


first_chunk_read = asyncio.Event()


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Callable[[Any], Awaitable[None]]) -> None:
    await receive()
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await first_chunk_read.wait()  # the client has the first chunk while the response goes on
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": False})
        return
    body = b"x" * 3000
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", http=_CountedProtocol,
                                           log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), task.result()
        await asyncio.sleep(0.01)
    WRITES.clear()
    first_chunk_read.clear()
    yield port
    server.should_exit = True
    await task


async def _response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return head, await reader.readexactly(length)


async def test_each_response_reaches_the_socket_as_one_write(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(3):  # one keep-alive connection
        writer.write(b"POST /call HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
        head, body = await _response(reader)
        assert head.startswith(b"HTTP/1.1 200") and body == b"x" * 3000
    assert len(WRITES) == 3  # uvicorn alone writes the head and the body apart: 6
    assert all(w.startswith(b"HTTP/1.1 200") and w.endswith(b"x" * 3000) for w in WRITES)
    writer.close()


async def test_a_streamed_response_leaves_chunk_by_chunk(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    first = await asyncio.wait_for(reader.readuntil(b"data: 1\n\n\r\n"), 5)  # not held back for the rest
    assert first.endswith(b"data: 1\n\n\r\n")
    first_chunk_read.set()
    rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
    assert b"data: 2\n\n" in rest
    writer.close()


async def test_a_closed_connection_delivers_the_whole_response_first(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /call HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}")
    everything = await asyncio.wait_for(reader.read(), 5)  # to the end: the server closed
    head, _, body = everything.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head and body == b"x" * 3000
    with contextlib.suppress(ConnectionError):
        writer.close()
        await writer.wait_closed()


async def test_what_was_written_goes_out_before_the_end_of_the_stream_and_in_order() -> None:
    """``close`` and ``write_eof`` flush first; ``writelines`` queues behind earlier writes."""
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await received.put(await reader.read())  # everything up to the end of the stream
        writer.close()

    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    for end in ("write_eof", "close"):
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        coalescing = CoalescingTransport(transport, loop)  # type: ignore[arg-type]
        coalescing.write(b"head;")
        coalescing.writelines([b"one;", b"two;"])
        getattr(coalescing, end)()
        assert await asyncio.wait_for(received.get(), 5) == b"head;one;two;", end
        transport.close()
    server.close()
    await server.wait_closed()
