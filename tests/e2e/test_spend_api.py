"""The LiteLLM-style spend API and the usage record API, end to end with data sent by the SDK
and by the record API."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

import httpx
import openai

from tests.e2e.conftest import Org

M = Decimal(1_000_000)


def gpt4o(prompt: int, completion: int, cached: int = 0) -> Decimal:
    return ((prompt - cached) * Decimal("2.50") + cached * Decimal("1.25") + completion * Decimal("10")) / M


def record(org: Org, body: dict, key_header: str = "authorization") -> httpx.Response:
    value = f"Bearer {org.admin_key}" if key_header == "authorization" else org.admin_key
    return httpx.post(f"{org.stack.gateway_url}/v1/usage/record", json=body, headers={key_header: value}, timeout=30)


def test_usage_records_are_priced_idempotent_and_listed(org: Org) -> None:
    body = {"accountId": "acct-9", "transactionId": "tx-1", "modelId": "gpt-4o", "usageType": "batch",
            "inputTokens": 10_000, "outputTokens": 2_000, "cachedTokens": 4_000}
    first = record(org, body)
    assert first.status_code == 200, first.text
    answer = first.json(parse_float=Decimal)
    expected = gpt4o(10_000, 2_000, 4_000)
    assert answer["success"] is True and answer["usageRecord"]["estimatedCostUsd"] == expected
    retry = record(org, body, key_header="x-api-key")  # a retry, authenticated the other way
    assert retry.json()["usageRecord"]["id"] == answer["usageRecord"]["id"]
    system = record(org, {"context": "system", "transactionId": "tx-2", "modelId": "claude-sonnet-4-5",
                          "inputTokens": 1_000, "outputTokens": 100})
    assert system.status_code == 200 and system.json()["usageRecord"]["accountId"] is None
    org.wait_for_requests(2)

    listed = org.get("/v1/usage")
    assert listed["success"] is True and len(listed["usageRecords"]) == 2
    mine = org.get("/v1/usage", accountId="acct-9")["usageRecords"]
    assert [(r["transactionId"], r["cachedTokens"], r["costUsd"], r["usageType"]) for r in mine] == [("tx-1", 4_000, expected, "batch")]
    assert [r["context"] for r in org.get("/v1/usage", context="system")["usageRecords"]] == ["system"]
    summary = org.get("/v1/usage", summary="true")["summary"]
    sonnet = (1_000 * Decimal(3) + 100 * Decimal(15)) / M
    assert summary["totalCostUsd"] == expected + sonnet
    assert summary["totalInputTokens"] == 11_000 and summary["totalOutputTokens"] == 2_100
    assert summary["byContext"] == {"customer": {"costUsd": expected, "count": 1}, "system": {"costUsd": sonnet, "count": 1}}
    assert summary["byModel"]["gpt-4o"] == {"costUsd": expected, "count": 1}
    r = httpx.get(f"{org.stack.query_url}/v1/usage", headers={"x-api-key": org.admin_key}, timeout=30)
    assert r.status_code == 200 and len(r.json()["usageRecords"]) == 2


def test_bad_usage_records_are_refused_with_a_reason(org: Org) -> None:
    base = {"accountId": "a", "transactionId": "t", "modelId": "gpt-4o", "inputTokens": 10, "outputTokens": 1}
    for body, needle in [
        ({**base, "cachedTokens": 11}, "cachedTokens"),
        ({**base, "inputTokens": -1}, "inputTokens"),
        ({**base, "modelId": "made-up-model"}, "provider"),
        ({k: v for k, v in base.items() if k != "accountId"}, "accountId"),
        ({k: v for k, v in base.items() if k != "transactionId"}, "transactionId"),
    ]:
        r = record(org, body)
        assert r.status_code == 400 and needle in r.json()["error"], (body, r.text)
    assert httpx.post(f"{org.stack.gateway_url}/v1/usage/record", json=base, timeout=30).status_code == 401


def _calls(org: Org) -> list[str]:
    """Three calls: two by the admin key (one with a user and tags), one by a member key."""
    client = openai.OpenAI(base_url=f"{org.stack.gateway_url}/api/proxy/v1/openai", api_key=org.admin_key,
                           default_headers={"X-Provider-Key": "sk"}, max_retries=0)
    usage = {"x-fake-usage": json.dumps({"prompt_tokens": 1_000, "completion_tokens": 100})}
    first = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "x"}], user="user-1",
        extra_body={"_meterline": {"prompt_key": "p", "version": 1, "feature_tags": ["search"]}},
        extra_headers={**usage, "x-meterline-tags": "project:atlas,env:prod", "x-feature": "chat", "x-customer-id": "c-1"},
    )
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}], extra_headers=usage)
    member = org.new_key()
    openai.OpenAI(base_url=f"{org.stack.gateway_url}/api/proxy/v1/openai", api_key=member["key"],
                  default_headers={"X-Provider-Key": "sk"}, max_retries=0).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "x"}], extra_headers=usage)
    org.wait_for_requests(3)
    return [first.headers["x-request-id"], member["key"], member["id"]]


def test_spend_logs_by_request_key_user_and_date(org: Org) -> None:
    request_id, member_key, member_id = _calls(org)
    one = org.get("/spend/logs", request_id=request_id)
    assert len(one) == 1
    log = one[0]
    assert log["request_id"] == request_id and log["user"] == "user-1" and log["customer_id"] == "c-1"
    assert log["spend"] == gpt4o(1_000, 100) and log["prompt_tokens"] == 1_000 and log["completion_tokens"] == 100
    assert sorted(log["tags"]) == ["chat", "env:prod", "project:atlas", "search"]
    assert log["prompt_key"] == "p" and log["prompt_version"] == 1 and log["call_type"] == "chat/completions"
    assert log["api_key"].startswith("mtl_…") and org.admin_key not in str(one)
    assert log["startTime"] <= log["endTime"]

    by_member = org.get("/spend/logs", api_key=member_key, summarize="false")
    assert [l["key_id"] for l in by_member] == [member_id]
    assert len(org.get("/spend/logs", user_id="user-1")) == 1
    today = datetime.now(timezone.utc).date().isoformat()
    days = org.get("/spend/logs", start_date=today, end_date=today)
    assert len(days) == 1 and days[0]["spend"] == 3 * gpt4o(1_000, 100)
    assert days[0]["models"] == {"gpt-4o-2024-08-06": 3 * gpt4o(1_000, 100)}
    assert days[0]["api_keys"][member_id] == gpt4o(1_000, 100) and days[0]["users"]["user-1"] == gpt4o(1_000, 100)
    assert len(org.get("/spend/logs", start_date=today, end_date=today, summarize="false")) == 3
    r = org.stack.query(org.admin_key, "GET", "/spend/logs", params={"start_date": "13/01/2026", "end_date": today})
    assert r.status_code == 400 and "start_date" in r.text


def test_spend_per_tag(org: Org) -> None:
    _calls(org)
    tags = {t["tag"]: t for t in org.get("/spend/tags")}
    assert set(tags) == {"chat", "env:prod", "project:atlas", "search"}
    assert tags["project:atlas"]["total_spend"] == gpt4o(1_000, 100) and tags["project:atlas"]["log_count"] == 1


def test_spend_calculate_before_and_after_a_call(org: Org) -> None:
    estimate = org.post("/spend/calculate", {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}]})
    assert estimate["estimate"] is True and estimate["prompt_tokens"] == 9  # 2 text tokens + 4 per message + 3
    assert estimate["cost"] == gpt4o(9, 0)
    openai_response = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-2024-08-06", "choices": [],
                       "usage": {"prompt_tokens": 5_000, "completion_tokens": 500, "prompt_tokens_details": {"cached_tokens": 1_000}}}
    priced = org.post("/spend/calculate", {"completion_response": openai_response})
    assert priced["estimate"] is False and priced["cost"] == gpt4o(5_000, 500, 1_000)
    anthropic_response = {"id": "msg_1", "type": "message", "model": "claude-sonnet-4-5", "content": [],
                          "usage": {"input_tokens": 100, "output_tokens": 10, "cache_read_input_tokens": 1_000,
                                    "cache_creation_input_tokens": 200}}
    priced = org.post("/spend/calculate", {"completion_response": anthropic_response})
    assert priced["cost"] == (100 * Decimal(3) + 1_000 * Decimal("0.30") + 200 * Decimal("3.75") + 10 * Decimal(15)) / M
    quoted = org.post("/spend/calculate", {"model": "gpt-4o", "messages": [{"role": "user", "content": "<|endoftext|>"}]})
    assert quoted["prompt_tokens"] > 4 + 3  # the special token's text, counted as text
    r = org.stack.query(org.admin_key, "POST", "/spend/calculate", json={"model": "no-such-model", "messages": []})
    assert r.status_code == 400 and "no known price" in r.text
