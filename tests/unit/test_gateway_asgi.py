"""The gateway's ASGI front and its upstream client settings: routing, bounded body reads,
egress proxies."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from services.gateway.asgi import BodyTooLarge, ClientGone, GatewayFront, read_body, request_headers
from services.gateway.upstream import proxy_for


def _receiver(*messages: dict[str, Any]):
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    return receive


def _body(chunk: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": chunk, "more_body": more}


def test_a_body_in_one_message_is_returned_as_is() -> None:
    assert asyncio.run(read_body(_receiver(_body(b'{"a":1}')), 100, "7")) == b'{"a":1}'


def test_a_body_in_many_messages_is_joined() -> None:
    receive = _receiver(_body(b"ab", True), _body(b"cd", True), _body(b"e"))
    assert asyncio.run(read_body(receive, 100, None)) == b"abcde"


@pytest.mark.parametrize("declared", ["11", None])
def test_a_body_over_the_limit_is_refused_declared_or_not(declared: str | None) -> None:
    receive = _receiver(_body(b"x" * 6, True), _body(b"x" * 5))
    with pytest.raises(BodyTooLarge):
        asyncio.run(read_body(receive, 10, declared))


def test_a_client_gone_mid_body_is_told_apart() -> None:
    with pytest.raises(ClientGone):
        asyncio.run(read_body(_receiver(_body(b"ab", True), {"type": "http.disconnect"}), 100, None))


def test_request_headers_are_decoded_by_name() -> None:
    scope = {"headers": [(b"authorization", b"Bearer k"), (b"x-feature", b"search")]}
    assert request_headers(scope) == {"authorization": "Bearer k", "x-feature": "search"}


def test_a_repeated_header_keeps_every_value() -> None:
    scope = {"headers": [(b"anthropic-beta", b"a-1"), (b"accept", b"*/*"), (b"anthropic-beta", b"b-2")]}
    assert request_headers(scope) == {"anthropic-beta": "a-1, b-2", "accept": "*/*"}


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def serve(self, scope: Any, receive: Any, send: Any, provider: str, route: str) -> None:
        self.calls.append((provider, route))


def _run_front(method: str, path: str) -> tuple[_Recorder, list[str], list[dict[str, Any]]]:
    proxy, app_paths, sent = _Recorder(), [], []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        app_paths.append(scope["path"])

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(GatewayFront(proxy, app)(scope, _receiver(), send))
    return proxy, app_paths, sent


def test_proxy_routes_go_to_the_proxy_with_their_provider_and_route() -> None:
    proxy, app_paths, _ = _run_front("POST", "/api/proxy/v1/anthropic/v1/messages")
    assert proxy.calls == [("anthropic", "v1/messages")] and app_paths == []


def test_everything_else_goes_to_the_framework_app() -> None:
    for path in ("/healthz", "/v1/usage/record", "/api/proxy/v1/azure/chat", "/api/proxy/v1/openai"):
        proxy, app_paths, _ = _run_front("POST", path)
        assert proxy.calls == [] and app_paths == [path]


def test_a_proxy_route_answers_405_in_the_providers_shape_to_other_methods() -> None:
    proxy, app_paths, sent = _run_front("GET", "/api/proxy/v1/anthropic/messages")
    assert proxy.calls == [] and app_paths == []
    assert sent[0]["status"] == 405 and (b"allow", b"POST") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["type"] == "error"  # Anthropic's error envelope


def test_egress_proxy_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://egress:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example,127.0.0.1")
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert proxy_for("https://api.openai.com/v1") == "http://egress:3128"
    assert proxy_for("https://internal.example/v1") is None
    assert proxy_for("http://127.0.0.1:9000/v1") is None  # plain http has no proxy configured
