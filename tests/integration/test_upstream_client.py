"""The gateway's provider client over real sockets on loopback: keep-alive, framing, streaming,
timeouts, broken and misbehaving providers, and an egress proxy (absolute form for HTTP, a
CONNECT tunnel with TLS end to end for HTTPS).

Each provider here is a small asyncio server that answers with exact bytes, so every framing
case (chunked, Content-Length, ended by close, interim 100, malformed) is what the wire says.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from services.gateway.upstream import Origin, UpstreamBroken, UpstreamClient

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
JSON_OK = b'{"ok":true}'


class Provider:
    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[bytes] = []  # request heads, as received
        self.port = 0


@asynccontextmanager
async def serve(handler: Callable[[Provider, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                tls: ssl.SSLContext | None = None) -> AsyncIterator[Provider]:
    provider = Provider()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        provider.connections += 1
        try:
            await handler(provider, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0, ssl=tls)
    provider.port = server.sockets[0].getsockname()[1]
    try:
        yield provider
    finally:
        server.close()


async def read_request(provider: Provider, reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    provider.requests.append(head)
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    return await reader.readexactly(length)


def ok(body: bytes = JSON_OK, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: req_1\r\n" + extra + \
        b"content-length: %d\r\n\r\n" % len(body) + body


async def keep_answering(provider: Provider, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await read_request(provider, reader)
        writer.write(ok())
        await writer.drain()


def origin(provider: Provider, path: str = "/v1", scheme: str = "http") -> Origin:
    return Origin.parse(f"{scheme}://127.0.0.1:{provider.port}{path}")


async def test_sequential_calls_share_one_keep_alive_connection_and_send_what_they_were_given() -> None:
    client = UpstreamClient(2, 2)
    async with serve(keep_answering) as provider:
        for _ in range(3):
            response = await client.post(origin(provider), "/chat/completions?x=1", {"authorization": "Bearer sk-1"}, b"{}")
            assert (response.status, await response.read()) == (200, JSON_OK)
            assert response.header(b"x-request-id") == "req_1" and response.content_type == "application/json"
        await client.close()
    assert provider.connections == 1
    head = provider.requests[0].decode()
    assert head.startswith("POST /v1/chat/completions?x=1 HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{provider.port}\r\n" in head and "authorization: Bearer sk-1\r\n" in head
    assert "content-length: 2\r\n" in head


async def test_a_get_carries_no_body_and_no_framing_header_and_shares_the_pool_with_posts() -> None:
    client = UpstreamClient(2, 2)
    async with serve(keep_answering) as provider:
        response = await client.get(origin(provider, "/api"), "/auth/whoami", {"authorization": "Bearer mtl_1"})
        assert (response.status, await response.read()) == (200, JSON_OK)
        response = await client.post(origin(provider, "/api"), "/x", {}, b"{}")
        assert (response.status, await response.read()) == (200, JSON_OK)
        await client.close()
    assert provider.connections == 1
    head = provider.requests[0].decode()
    assert head.startswith("GET /api/auth/whoami HTTP/1.1\r\n") and "authorization: Bearer mtl_1\r\n" in head
    assert "content-length" not in head and "transfer-encoding" not in head
    assert provider.requests[1].decode().startswith("POST /api/x HTTP/1.1\r\n")


async def test_concurrent_calls_each_get_a_connection_and_all_are_pooled_after() -> None:
    client = UpstreamClient(2, 2)
    async with serve(keep_answering) as provider:
        async def call() -> bytes:
            return await (await client.post(origin(provider), "/x", {}, b"{}")).read()
        assert await asyncio.gather(*(call() for _ in range(5))) == [JSON_OK] * 5
        assert await asyncio.gather(*(call() for _ in range(5))) == [JSON_OK] * 5
        await client.close()
    assert provider.connections == 5


async def test_connections_left_idle_after_a_burst_are_closed_once_past_the_keep_alive_window() -> None:
    client = UpstreamClient(2, 2, keepalive_s=0.3)
    async with serve(keep_answering) as provider:
        async def call() -> bytes:
            return await (await client.post(origin(provider), "/x", {}, b"{}")).read()
        await asyncio.gather(*(call() for _ in range(5)))
        [pool] = client._idle.values()
        assert len(pool) == 5
        loop = asyncio.get_running_loop()
        start = loop.time()
        while loop.time() - start < 0.5:  # steady sequential traffic: only the newest connection is taken
            await call()
        assert len(pool) == 1 and provider.connections == 5
        await client.close()


async def test_a_chunked_stream_is_handed_over_as_it_arrives() -> None:
    next_chunk = asyncio.Event()

    async def stream(provider: Provider, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(provider, reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n")
        for data in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            await next_chunk.wait()  # the next one is sent only once the client has the previous one
            next_chunk.clear()
        writer.write(b"0\r\n\r\n")
        await keep_answering(provider, reader, writer)

    client = UpstreamClient(2, 2)
    async with serve(stream) as provider:
        response = await client.post(origin(provider), "/x", {}, b"{}")
        assert response.content_type == "text/event-stream"
        received = []
        async for chunk in response.chunks():
            received.append(chunk)
            next_chunk.set()
        assert received == [b"data: 1\n\n", b"data: 2\n\n"]
        assert await (await client.post(origin(provider), "/x", {}, b"{}")).read() == JSON_OK
        await client.close()
    assert provider.connections == 1  # the finished stream's connection was reused


async def test_a_provider_silent_past_the_read_timeout_times_out_but_a_slow_live_stream_does_not() -> None:
    async def stall(provider: Provider, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(provider, reader)
        await asyncio.sleep(5)

    async def trickle(provider: Provider, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(provider, reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(6):  # 0.6 s in all, never 0.3 s without a byte
            await asyncio.sleep(0.1)
            writer.write(b"1\r\n.\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    client = UpstreamClient(2, 0.3)
    async with serve(stall) as provider:
        with pytest.raises(TimeoutError):
            await client.post(origin(provider), "/x", {}, b"{}")
    async with serve(trickle) as provider:
        response = await client.post(origin(provider), "/x", {}, b"{}")
        assert await response.read() == b"......"
    await client.close()


async def test_a_connection_broken_mid_answer_is_an_error_not_a_short_answer() -> None:
    async def cut(provider: Provider, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(provider, reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial\":")
        await writer.drain()

    client = UpstreamClient(2, 2)
    async with serve(cut) as provider:
        response = await client.post(origin(provider), "/x", {}, b"{}")
        with pytest.raises(UpstreamBroken):
            await response.read()
    await client.close()


async def test_a_body_ended_by_close_is_read_whole_and_its_connection_not_reused() -> None:
    async def close_framed(provider: Provider, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(provider, reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + JSON_OK)
        await writer.drain()

    client = UpstreamClient(2, 2)
    async with serve(close_framed) as provider:
        for _ in range(2):
            assert await (await client.post(origin(provider), "/x", {}, b"{}")).read() == JSON_OK
        await client.close()
    assert provider.connections == 2


async def test_connection_close_from_the_provider_and_idle_closes_are_honoured() -> None:
    async def answer_once(provider: Provider, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(provider, reader)
        writer.write(ok())  # keep-alive by HTTP/1.1's default, then closed while idle
        await writer.drain()

    async def says_close(provider: Provider, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(provider, reader)
        writer.write(ok(extra=b"connection: close\r\n"))
        await writer.drain()
        await asyncio.sleep(1)  # keeps the socket open: only the header says not to reuse it

    client = UpstreamClient(2, 2)
    async with serve(answer_once) as provider:
        assert await (await client.post(origin(provider), "/x", {}, b"{}")).read() == JSON_OK
        for _ in range(100):  # the provider's close reaches the idle pooled connection
            if provider.connections and all(c.closed for pool in client._idle.values() for c in pool):
                break
            await asyncio.sleep(0.01)
        assert await (await client.post(origin(provider), "/x", {}, b"{}")).read() == JSON_OK
    assert provider.connections == 2
    async with serve(says_close) as provider:
        for _ in range(2):
            assert await (await client.post(origin(provider), "/x", {}, b"{}")).read() == JSON_OK
    assert provider.connections == 2
    await client.close()


async def test_an_interim_100_continue_is_skipped() -> None:
    async def interim(provider: Provider, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(provider, reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # not a synchronisation: it puts the final answer in a later read than the 100
        writer.write(ok())
        await keep_answering(provider, reader, writer)

    client = UpstreamClient(2, 2)
    async with serve(interim) as provider:
        response = await client.post(origin(provider), "/x", {}, b"{}")
        assert (response.status, await response.read()) == (200, JSON_OK)
        await client.close()


async def test_not_http_and_nobody_listening_are_broken_upstreams() -> None:
    async def garbage(provider: Provider, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(provider, reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    client = UpstreamClient(2, 2)
    async with serve(garbage) as provider:
        with pytest.raises(UpstreamBroken, match="not valid HTTP"):
            await client.post(origin(provider), "/x", {}, b"{}")
    with pytest.raises(UpstreamBroken, match="cannot connect"):
        await client.post(origin(provider), "/x", {}, b"{}")  # the server is gone: connection refused
    await client.close()


async def test_a_header_value_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    client = UpstreamClient(2, 2)
    async with serve(keep_answering) as provider:
        with pytest.raises(ValueError, match="line break"):
            await client.post(origin(provider), "/x", {"x-a": "1\r\nx-injected: 1"}, b"{}")
    assert provider.requests == []
    await client.close()


async def test_a_slow_reader_pauses_the_socket_instead_of_queueing_the_whole_stream() -> None:
    total = 8 * 1024 * 1024
    sent = 0

    async def firehose(provider: Provider, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_request(provider, reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        block = b"x" * 65536
        while sent < total:
            writer.write(block)
            sent += len(block)
            await writer.drain()

    client = UpstreamClient(2, 5)
    async with serve(firehose) as provider:
        response = await client.post(origin(provider), "/x", {}, b"{}")
        first = await anext(response.chunks().__aiter__())
        for _ in range(50):  # give the provider every chance to push the rest
            await asyncio.sleep(0.01)
        queued = response._conn._queued
        assert queued < 1024 * 1024, f"{queued} bytes queued behind a reader that stopped"
        assert sent < total  # the provider is held back too: the kernel buffers filled, then drain() waited
        received = len(first)
        async for chunk in response.chunks():
            received += len(chunk)
        assert received == total
    await client.close()


# -- an egress proxy -------------------------------------------------------------------------


async def test_a_plain_http_provider_is_asked_in_absolute_form_through_the_proxy_with_its_credentials() -> None:
    client = UpstreamClient(2, 2)
    async with serve(keep_answering) as proxy:
        via = Origin.parse("http://api.provider.test/v1", f"http://user:p%40ss@127.0.0.1:{proxy.port}")
        assert await (await client.post(via, "/chat/completions", {}, b"{}")).read() == JSON_OK
        await client.close()
    head = proxy.requests[0].decode()
    assert head.startswith("POST http://api.provider.test/v1/chat/completions HTTP/1.1\r\n")
    assert "host: api.provider.test\r\n" in head
    assert "proxy-authorization: Basic dXNlcjpwQHNz\r\n" in head  # user:p@ss


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1: the provider's TLS context and a client one
    that trusts it."""
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is needed to make a test certificate (Debian package openssl)"
    tmp: Path = tmp_path_factory.mktemp("tls")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem")],
                   check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    client = ssl.create_default_context(cafile=str(tmp / "cert.pem"))
    return server, client


async def test_an_https_provider_is_reached_directly_with_tls(tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_tls, client_tls = tls_pair
    client = UpstreamClient(2, 2, ssl_context=client_tls)
    async with serve(keep_answering, tls=server_tls) as provider:
        for _ in range(2):
            assert await (await client.post(origin(provider, scheme="https"), "/x", {}, b"{}")).read() == JSON_OK
        await client.close()
    assert provider.connections == 1


async def test_an_https_provider_is_reached_through_a_connect_tunnel(tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_tls, client_tls = tls_pair
    tunnels: list[bytes] = []

    async with serve(keep_answering, tls=server_tls) as provider:
        async def connect_proxy(proxy: Provider, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            tunnels.append(head)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", provider.port)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                dst.close()
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        async with serve(connect_proxy) as proxy:
            client = UpstreamClient(2, 2, ssl_context=client_tls)
            via = Origin.parse(f"https://127.0.0.1:{provider.port}/v1", f"http://u:p@127.0.0.1:{proxy.port}")
            for _ in range(2):
                response = await client.post(via, "/messages", {"x-api-key": "sk-ant"}, b"{}")
                assert await response.read() == JSON_OK
            await client.close()
    assert len(tunnels) == 1  # one tunnel, kept alive for both calls
    assert tunnels[0].startswith(f"CONNECT 127.0.0.1:{provider.port} HTTP/1.1\r\n".encode())
    assert b"proxy-authorization: Basic dTpw\r\n" in tunnels[0]
    # Inside the tunnel the provider saw an ordinary origin-form request: the proxy saw only ciphertext.
    assert provider.requests[0].startswith(b"POST /v1/messages HTTP/1.1\r\n")


async def test_a_refused_tunnel_is_a_broken_upstream() -> None:
    async def refuse(proxy: Provider, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()

    client = UpstreamClient(2, 2)
    async with serve(refuse) as proxy:
        via = Origin.parse("https://api.provider.test/v1", f"http://127.0.0.1:{proxy.port}")
        with pytest.raises(UpstreamBroken, match="407"):
            await client.post(via, "/x", {}, b"{}")
    await client.close()


async def test_a_tunnel_that_never_opens_times_out_and_its_proxy_connection_is_closed() -> None:
    closed = asyncio.Event()

    async def silent(proxy: Provider, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the CONNECT, never answered
        await reader.read()  # returns at the client's close
        closed.set()

    client = UpstreamClient(0.3, 2)
    async with serve(silent) as proxy:
        via = Origin.parse("https://api.provider.test/v1", f"http://127.0.0.1:{proxy.port}")
        with pytest.raises(TimeoutError, match="connecting"):
            await client.post(via, "/x", {}, b"{}")
        await asyncio.wait_for(closed.wait(), 5)
    await client.close()


def test_origins_parse_what_base_urls_and_proxy_settings_say() -> None:
    o = Origin.parse("https://api.openai.com/v1/")
    assert (o.scheme, o.host, o.port, o.base_path, o.authority, o.proxy) == ("https", "api.openai.com", 443, "/v1", "api.openai.com", None)
    assert Origin.parse("http://[::1]:8080").authority == "[::1]:8080"
    assert Origin.parse("https://x.test/v1", "egress:3128").proxy == Origin("http", "egress", 3128, "")
    with pytest.raises(ValueError, match="http"):
        Origin.parse("ftp://x.test")
