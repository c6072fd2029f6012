"""What the gateway promises callers and providers: auth, stripping, pass-through, errors."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.e2e.conftest import Org
from tests.fakes.provider import FakeProvider
from tests.support import wait_until


def chat(org: Org, body: dict, key: str | None = "admin", provider_key: str | None = "sk-up", headers: dict | None = None,
         route: str = "openai/chat/completions", content: bytes | None = None) -> httpx.Response:
    h = {"content-type": "application/json", **(headers or {})}
    if key is not None:
        h["authorization"] = f"Bearer {org.admin_key if key == 'admin' else key}"
    if provider_key is not None:
        h["x-provider-key"] = provider_key
    return httpx.post(f"{org.stack.gateway_url}/api/proxy/v1/{route}", content=content if content is not None else json.dumps(body), headers=h, timeout=30)


BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.25, "user": "u-42"}


def test_tracking_metadata_is_stripped_and_credentials_swapped(org: Org, fake_provider: FakeProvider) -> None:
    body = {**BODY, "_meterline": {"prompt_key": "greeter", "version": 1, "feature_tags": ["onboarding"]}}
    r = chat(org, body, headers={"x-customer-id": "cust-7", "x-feature": "chat", "x-meterline-tags": "env:test,project:x"})
    assert r.status_code == 200, r.text
    seen = fake_provider.last_request
    assert seen.json == BODY  # everything else arrives unchanged
    assert seen.headers["authorization"] == "Bearer sk-up"
    assert org.admin_key not in json.dumps(seen.headers)
    for header in ("x-customer-id", "x-feature", "x-meterline-tags", "x-provider-key"):
        assert header not in seen.headers

    r = chat(org, {**BODY, "_aipromptcost": {"prompt_key": "legacy"}})
    assert r.status_code == 200
    assert "_aipromptcost" not in fake_provider.last_request.json

    r = chat(org, BODY)
    assert fake_provider.last_request.body == json.dumps(BODY).encode()  # untouched bytes when nothing is stripped


def test_anthropic_key_and_version_headers(org: Org, fake_provider: FakeProvider) -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    r = chat(org, body, provider_key="sk-ant-1", route="anthropic/messages")
    assert r.status_code == 200, r.text
    seen = fake_provider.last_request
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == "sk-ant-1"
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers
    chat(org, body, provider_key="sk-ant-1", route="anthropic/messages", headers={"anthropic-version": "2026-01-01"})
    assert fake_provider.last_request.headers["anthropic-version"] == "2026-01-01"


def test_a_repeated_header_reaches_the_provider_with_every_value(org: Org, fake_provider: FakeProvider) -> None:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    headers = [("authorization", f"Bearer {org.admin_key}"), ("x-provider-key", "sk-ant-1"),
               ("content-type", "application/json"), ("anthropic-beta", "prompt-caching-2024-07-31"),
               ("anthropic-beta", "output-128k-2025-02-19")]
    r = httpx.post(f"{org.stack.gateway_url}/api/proxy/v1/anthropic/messages", content=json.dumps(body),
                   headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    assert fake_provider.last_request.headers["anthropic-beta"] == "prompt-caching-2024-07-31, output-128k-2025-02-19"


def test_two_platform_keys_are_no_key(org: Org) -> None:
    """Two Authorization lines are ambiguous: refused, not resolved by picking one."""
    headers = [("authorization", f"Bearer {org.admin_key}"), ("authorization", f"Bearer {org.admin_key}"),
               ("x-provider-key", "sk-up"), ("content-type", "application/json")]
    r = httpx.post(f"{org.stack.gateway_url}/api/proxy/v1/openai/chat/completions", content=json.dumps(BODY),
                   headers=headers, timeout=30)
    assert r.status_code == 401, r.text


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"key": None}, 401),
        ({"key": "mtl_not_a_real_key"}, 401),
        ({"provider_key": None}, 401),
        ({"content": b"{not json"}, 400),
        ({"content": b"\xff\xfe\x00garbage"}, 400),
        ({"content": b"[1, 2]"}, 400),
        ({"body": {"model": "gpt-4o"}}, 400),
        ({"body": {"messages": []}}, 400),
        ({"body": {**BODY, "_meterline": "not-an-object"}}, 400),
        ({"body": {**BODY, "_meterline": {"version": "one"}}}, 400),
        ({"content": b'{"model": "gpt-4o", "messages": [], "pad": "' + b"x" * 300_000 + b'"}'}, 413),
    ],
)
def test_bad_requests_get_a_clear_error_in_the_providers_shape(org: Org, kwargs: dict, status: int) -> None:
    body = kwargs.pop("body", BODY)
    r = chat(org, body, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]


def test_anthropic_errors_use_anthropics_shape(org: Org) -> None:
    r = chat(org, {"model": "claude-sonnet-4-5"}, route="anthropic/messages")
    assert r.status_code == 400
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"


def test_upstream_errors_pass_through_and_are_recorded(org: Org) -> None:
    client = openai.OpenAI(
        base_url=f"{org.stack.gateway_url}/api/proxy/v1/openai", api_key=org.admin_key,
        default_headers={"X-Provider-Key": "sk-up"}, max_retries=0,
    )
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-fake-status": "429"})
    r = chat(org, BODY, headers={"x-fake-delay-ms": "5000"})  # the stack's read timeout is 3 s
    assert r.status_code == 504
    totals = org.wait_for_requests(2)
    assert totals["total_cost"] == 0


def test_revoked_key_is_refused_within_five_seconds(org: Org) -> None:
    key = org.new_key(role="member")
    assert chat(org, BODY, key=key["key"]).status_code == 200
    assert key["masked_key"].startswith("mtl_…") and key["key"] not in json.dumps(org.get("/api/keys"))
    r = org.stack.query(org.admin_key, "DELETE", f"/api/keys/{key['id']}")
    assert r.status_code == 200 and r.json()["revoked_at"]
    wait_until(lambda: chat(org, BODY, key=key["key"]).status_code == 401, timeout_s=5, what="revocation at the gateway")
    assert org.stack.query(key["key"], "GET", "/api/teams").status_code == 401


def test_anthropic_sdk_with_x_api_key_style_auth(org: Org) -> None:
    """Older Anthropic SDKs send the api key as x-api-key; the gateway accepts that as the platform key."""
    r = chat(org, {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
             key=None, route="anthropic/messages", headers={"x-api-key": org.admin_key})
    assert r.status_code == 200, r.text


def test_gateway_health_and_metrics(org: Org) -> None:
    health = httpx.get(f"{org.stack.gateway_url}/healthz", timeout=10).json()
    assert health["status"] == "ok" and health["dropped"] == 0 and "spool_bytes" in health
    metrics = httpx.get(f"{org.stack.gateway_url}/metrics", timeout=10).text
    lines = dict(line.split(" ") for line in metrics.strip().splitlines())
    assert int(lines["meterline_gateway_events_published_total"]) > 0
    assert lines["meterline_gateway_events_dropped_total"] == "0"


def test_the_providers_headers_pass_through_and_the_response_is_dated_once(org: Org) -> None:
    r = chat(org, BODY)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers.get("x-request-id", "").startswith("req_")  # the provider's, for support tickets
    assert len(r.headers.get_list("date")) == 1
    assert int(r.headers["content-length"]) == len(r.content)
    assert r.json()["usage"]["prompt_tokens"] > 0


def test_a_client_leaving_mid_stream_stops_the_relay_and_is_recorded(org: Org, fake_provider: FakeProvider) -> None:
    """The gateway notices the disconnect while the provider is still generating, stops reading
    the stream, and records the call as client_disconnected (not as a complete, ok call)."""
    headers = {"authorization": f"Bearer {org.admin_key}", "x-provider-key": "sk-up", "x-fake-chunk-gap-ms": "400"}
    body = {**BODY, "stream": True}
    with httpx.stream("POST", f"{org.stack.gateway_url}/api/proxy/v1/openai/chat/completions", json=body,
                      headers=headers, timeout=30) as r:
        assert r.status_code == 200
        first = next(r.iter_raw())
        assert first.startswith(b"data: ")
    # Leaving the block closed the connection after the first chunk, seconds before the last.
    org.wait_for_requests(1)
    [log] = org.get("/spend/logs", summarize="false")
    assert log["status"] == "client_disconnected" and log["http_status"] == 200
