"""Teams, keys, roles, prompts and versions, and attribution of spend to them."""

from __future__ import annotations

import json
from decimal import Decimal

import openai

from tests.e2e.conftest import OPERATOR_KEY, Org


def client(org: Org, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{org.stack.gateway_url}/api/proxy/v1/openai", api_key=key,
        default_headers={"X-Provider-Key": "sk-up"}, max_retries=0,
    )


def call(c: openai.OpenAI, meta: dict | None = None, prompt_tokens: int = 1_000, completion_tokens: int = 100) -> None:
    c.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
        extra_body={"_meterline": meta} if meta else None,
        extra_headers={"x-fake-usage": json.dumps({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens})},
    )


UNIT = (1_000 * Decimal("2.50") + 100 * Decimal("10")) / 1_000_000  # one default call of gpt-4o


def test_spend_is_attributed_to_the_keys_team(org: Org) -> None:
    backend = org.post("/api/teams", {"name": "backend"})
    search = org.post("/api/teams", {"name": "search"})
    k1, k2 = org.new_key(backend["id"]), org.new_key(search["id"])
    for _ in range(3):
        call(client(org, k1["key"]))
    call(client(org, k2["key"]))
    org.wait_for_requests(4)
    teams = {t["team_name"]: t for t in org.get("/api/aggregations/by-team")["teams"]}
    assert teams["backend"]["total_cost"] == 3 * UNIT and teams["backend"]["request_count"] == 3
    assert teams["search"]["total_cost"] == UNIT
    assert org.stack.query(org.admin_key, "POST", "/api/teams", json={"name": "backend"}).status_code == 409


def test_member_keys_cannot_use_admin_endpoints(org: Org) -> None:
    member = org.new_key(role="member")["key"]
    for method, path, body in [("POST", "/api/teams", {"name": "x"}), ("POST", "/api/keys", {}), ("GET", "/api/keys", None),
                               ("POST", "/api/prompts", {"prompt_key": "p"}), ("POST", "/api/orgs", {"name": "o"})]:
        assert org.stack.query(member, method, path, json=body).status_code == 403, path
    assert org.stack.query(member, "GET", "/api/aggregations/monthly").status_code == 200
    # An organisation's own admin is not the operator: it cannot create organisations.
    assert org.stack.query(org.admin_key, "POST", "/api/orgs", json={"name": "o"}).status_code == 403


def test_prompt_versions_and_attribution_to_the_active_version(org: Org) -> None:
    created = org.post("/api/prompts", {"prompt_key": "summarizer", "description": "Summarises documents", "model": "gpt-4o"})
    assert created["active_version"] == 1 and created["description"] == "Summarises documents"
    c = client(org, org.admin_key)
    call(c, {"prompt_key": "summarizer"})  # -> v1, active
    org.wait_for_requests(1)
    v2 = org.post("/api/prompts/summarizer/versions", {"model": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 256})
    assert v2["active_version"] == 2
    call(c, {"prompt_key": "summarizer"})  # -> v2, now active
    call(c, {"prompt_key": "summarizer"})
    call(c, {"prompt_key": "summarizer", "version": 1})  # explicit
    org.wait_for_requests(4)
    versions = {v["version_number"]: v for v in org.get("/api/aggregations/version-comparison", prompt_key="summarizer")["versions"]}
    assert versions[1]["request_count"] == 2 and versions[2]["request_count"] == 2
    assert versions[2]["avg_cost_per_request"] == UNIT
    activated = org.post("/api/prompts/summarizer/versions/1/activate", {})
    assert activated["active_version"] == 1
    assert [v["active"] for v in activated["versions"]] == [True, False]
    assert org.stack.query(org.admin_key, "POST", "/api/prompts/summarizer/versions/9/activate").status_code == 404


def test_prompts_are_created_on_first_use(org: Org) -> None:
    call(client(org, org.admin_key), {"prompt_key": "brand-new", "feature_tags": ["beta"]})
    org.wait_for_requests(1)
    prompt = org.get("/api/prompts/brand-new")
    assert prompt["active_version"] == 1
    assert [p["prompt_key"] for p in org.get("/api/prompts")["prompts"]] == ["brand-new"]
    assert org.get("/api/aggregations/by-prompt")["prompts"][0]["total_cost"] == UNIT


def test_aggregation_parameters_are_validated(org: Org) -> None:
    q = org.stack.query
    r = q(org.admin_key, "GET", "/api/aggregations/monthly", params={"start": "yesterday"})
    assert r.status_code == 400 and "start" in r.text
    r = q(org.admin_key, "GET", "/api/aggregations/monthly", params={"start": "2026-02-10", "end": "2026-02-01"})
    assert r.status_code == 400 and "end" in r.text
    r = q(org.admin_key, "GET", "/api/aggregations/version-comparison")
    assert r.status_code == 400 and "prompt_key" in r.text
    r = q(org.admin_key, "GET", "/api/aggregations/monthly", params={"start": "2026-02-01", "end": "2026-02-28"})
    assert r.json() == {"total_cost": 0, "request_count": 0, "period": {"start": "2026-02-01", "end": "2026-02-28"}}


def test_organisations_never_see_each_other(org: Org) -> None:
    call(client(org, org.admin_key), {"prompt_key": "mine"})
    org.wait_for_requests(1)
    stranger = org.stack.query(OPERATOR_KEY, "POST", "/api/orgs", json={"name": "stranger"}).json()["admin_key"]
    assert org.stack.query(stranger, "GET", "/api/aggregations/monthly").json()["request_count"] == 0
    assert org.stack.query(stranger, "GET", "/api/prompts").json()["prompts"] == []
    my_key = org.new_key()
    assert org.stack.query(stranger, "DELETE", f"/api/keys/{my_key['id']}").status_code == 404
    assert org.stack.query(stranger, "GET", "/api/prompts/mine").status_code == 404


def test_price_overrides_are_validated_and_admin_only(org: Org) -> None:
    q = org.stack.query
    body = {"provider": "openai", "model": "gpt-4o", "input_per_mtok": "-1", "output_per_mtok": "4"}
    r = q(org.admin_key, "POST", "/api/prices", json=body)
    assert r.status_code == 400 and "input_per_mtok" in r.text
    r = q(org.admin_key, "POST", "/api/prices", json={**body, "input_per_mtok": "1", "provider": "mistral"})
    assert r.status_code == 400 and "provider" in r.text
    member = org.new_key(role="member")["key"]
    assert q(member, "POST", "/api/prices", json={**body, "input_per_mtok": "1"}).status_code == 403
    assert q(member, "GET", "/api/prices").json() == {"overrides": []}
