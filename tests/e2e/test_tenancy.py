"""No organisation reads, lists, changes or aggregates another's data, on any endpoint; revoked
keys are refused everywhere."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.e2e.conftest import OPERATOR_KEY, Org
from tests.support import wait_until

READS = [
    "/api/teams", "/api/prompts", "/api/prices", "/api/aggregations/monthly", "/api/aggregations/by-prompt",
    "/api/aggregations/by-team", "/spend/logs", "/spend/tags", "/v1/usage", "/api/v1/billing/usage",
    "/api/v1/billing/usage-analytics", "/api/customers", "/api/customers/secret-customer", "/api/features",
    "/api/features/by-customer", "/api/aggregations/by-key", "/api/aggregations/by-tag", "/api/aggregations/daily",
    "/api/export", "/api/export?format=json",
    "/api/aggregations/version-comparison?prompt_key=secret-prompt",
]


@pytest.fixture
def populated(org: Org) -> dict:
    """Organisation A with a team, keys, a prompt, a price and spend."""
    team = org.post("/api/teams", {"name": "a-team"})
    member = org.new_key(team["id"])
    org.post("/api/prompts", {"prompt_key": "secret-prompt", "description": "A's"})
    org.post("/api/prices", {"provider": "openai", "model": "gpt-4o", "input_per_mtok": "1", "output_per_mtok": "2"})
    r = httpx.post(f"{org.stack.gateway_url}/api/proxy/v1/openai/chat/completions", timeout=30,
                   json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}], "_meterline": {"prompt_key": "secret-prompt"}},
                   headers={"authorization": f"Bearer {member['key']}", "x-provider-key": "sk",
                            "x-customer-id": "secret-customer", "x-feature": "secret-feature"})
    assert r.status_code == 200
    r = httpx.post(f"{org.stack.gateway_url}/v1/usage/record", timeout=30, headers={"authorization": f"Bearer {member['key']}"},
                   json={"accountId": "secret-customer", "transactionId": "secret-tx", "modelId": "gpt-4o", "inputTokens": 5})
    assert r.status_code == 200
    org.wait_for_requests(2)
    return {"team": team, "member": member}


def test_another_organisation_sees_nothing(org: Org, populated: dict) -> None:
    q = org.stack.query
    other = q(OPERATOR_KEY, "POST", "/api/orgs", json={"name": "b"}).json()["admin_key"]
    for path in READS:
        mine, theirs = q(org.admin_key, "GET", path), q(other, "GET", path)
        assert mine.status_code == theirs.status_code == 200, path
        # the echoed parameters are not a leak
        body = theirs.text.replace('"prompt_key":"secret-prompt"', "").replace('"customer_id":"secret-customer"', "")
        for secret in ("a-team", "secret-prompt", "secret-customer", "secret-feature", "secret-tx",
                       populated["team"]["id"], populated["member"]["id"]):
            assert secret not in body, (path, secret)
    assert q(other, "GET", "/api/aggregations/monthly").json()["request_count"] == 0
    assert q(other, "GET", READS[-1]).json()["versions"] == [] and q(org.admin_key, "GET", READS[-1]).json()["versions"]
    assert populated["member"]["id"] not in q(other, "GET", "/api/keys").text
    # Writes aimed at A's objects by id or name behave as if they did not exist.
    assert q(other, "GET", "/api/prompts/secret-prompt").status_code == 404
    assert q(other, "POST", "/api/prompts/secret-prompt/versions", json={"model": "x"}).status_code == 404
    assert q(other, "POST", "/api/prompts/secret-prompt/versions/1/activate").status_code == 404
    assert q(other, "DELETE", f"/api/keys/{populated['member']['id']}").status_code == 404
    assert q(other, "POST", "/api/keys", json={"team_id": populated["team"]["id"]}).status_code == 409
    # ... and A's data is untouched by all of that.
    assert q(populated["member"]["key"], "GET", "/api/teams").status_code == 200
    assert q(org.admin_key, "GET", "/api/prompts/secret-prompt").json()["active_version"] == 1
    assert q(org.admin_key, "GET", "/api/aggregations/monthly").json()["request_count"] == 2
    assert "secret-customer" in q(org.admin_key, "GET", "/api/customers").text  # the sweep can see a leak


def test_revoked_keys_are_refused_everywhere(org: Org, populated: dict) -> None:
    q = org.stack.query
    admin2 = org.new_key(role="admin")
    assert q(org.admin_key, "DELETE", f"/api/keys/{admin2['id']}").status_code == 200
    for path in READS + ["/api/keys", "/api/auth/whoami"]:
        assert q(admin2["key"], "GET", path).status_code == 401, path
    assert q(admin2["key"], "POST", "/api/teams", json={"name": "x"}).status_code == 401
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    for route in ("openai/chat/completions", "anthropic/messages"):
        wait_until(
            lambda: httpx.post(f"{org.stack.gateway_url}/api/proxy/v1/{route}", json=body, timeout=30,
                               headers={"authorization": f"Bearer {admin2['key']}", "x-provider-key": "sk"}).status_code == 401,
            timeout_s=5, what=f"revoked key refused on {route}",
        )


def test_gateway_rejects_odd_input_without_a_server_error(org: Org) -> None:
    url = f"{org.stack.gateway_url}/api/proxy/v1"
    auth = {"authorization": f"Bearer {org.admin_key}", "x-provider-key": "sk", "content-type": "application/json"}
    cases = [
        ("openai/chat/completions", json.dumps({"model": 42, "messages": []}).encode()),
        ("openai/chat/completions", json.dumps({"model": "gpt-4o", "messages": "hi"}).encode()),
        ("openai/chat/completions", b'{"model": "gpt-4o", "messages": [], "_meterline": {"feature_tags": [1, 2]}}'),
        ("openai/chat/completions", b'{"model": "gpt-4o", "messages": [], "_meterline": {"prompt_key": "a\\u0000b"}}'),
        ("openai/chat/completions", b""),
        ("anthropic/messages", b"null"),
        ("openai/chat/completions", b'{"model": "gpt-4o", "messages": [], "_meterline": {"version": "' + b"9" * 5000 + b'"}}'),
    ]
    for route, content in cases:
        r = httpx.post(f"{url}/{route}", content=content, headers=auth, timeout=30)
        assert r.status_code == 400, (route, content[:80], r.status_code, r.text)
    r = httpx.post(f"{url}/openai/chat/completions", json={"model": "gpt-4o", "messages": []},
                   headers={**auth, "x-customer-id": "a" * 300}, timeout=30)
    assert r.status_code == 400 and "x-customer-id" in r.text
    r = httpx.get(f"{org.stack.gateway_url}/api/proxy/v2/nothing", headers=auth, timeout=30)
    assert r.status_code in (404, 405) and r.json()["error"]["message"]
