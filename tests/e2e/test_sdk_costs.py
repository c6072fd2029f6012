"""The real OpenAI and Anthropic SDKs, through the gateway, priced to the provider's rules.

Expected costs are computed here from the providers' published per-million-token prices and
their token conventions, not by calling Meterline's pricing code:
- OpenAI: ``prompt_tokens`` include ``cached_tokens``; cached input bills at the cached price.
- Anthropic: ``input_tokens`` exclude cache reads and cache writes; each bills at its own price.
"""

from __future__ import annotations

import json
from decimal import Decimal

import anthropic
import openai
import pytest

from tests.e2e.conftest import Org
from tests.fakes.provider import FakeProvider

M = Decimal(1_000_000)
# Published prices, USD per million tokens.
GPT_4O = {"input": Decimal("2.50"), "cached": Decimal("1.25"), "output": Decimal("10.00")}
SONNET_45 = {"input": Decimal("3"), "cache_read": Decimal("0.30"), "cache_write": Decimal("3.75"), "output": Decimal("15")}


def openai_cost(prompt: int, completion: int, cached: int) -> Decimal:
    return ((prompt - cached) * GPT_4O["input"] + cached * GPT_4O["cached"] + completion * GPT_4O["output"]) / M


def anthropic_cost(inp: int, out: int, read: int, write: int) -> Decimal:
    p = SONNET_45
    return (inp * p["input"] + read * p["cache_read"] + write * p["cache_write"] + out * p["output"]) / M


def oai(org: Org, key: str | None = None, **kw) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{org.stack.gateway_url}/api/proxy/v1/openai", api_key=key or org.admin_key,
        default_headers={"X-Provider-Key": "sk-upstream-test"}, max_retries=0, **kw,
    )


def ant(org: Org, key: str | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=f"{org.stack.gateway_url}/api/proxy/v1/anthropic", api_key=key or org.admin_key,
        default_headers={"X-Provider-Key": "sk-ant-upstream-test"}, max_retries=0,
    )


def usage_header(**counts: int) -> dict[str, str]:
    return {"x-fake-usage": json.dumps(counts)}


def by_prompt(org: Org) -> dict[str, Decimal]:
    return {p["prompt_key"]: p["total_cost"] for p in org.get("/api/aggregations/by-prompt")["prompts"]}


def test_openai_streamed_call_priced_exactly_like_the_same_call_not_streamed(org: Org, fake_provider: FakeProvider) -> None:
    client = oai(org)
    usage = usage_header(prompt_tokens=12_345, completion_tokens=678, cached_tokens=4_096, reasoning_tokens=100)
    messages = [{"role": "user", "content": "Summarise the quarterly report."}]
    reply = client.chat.completions.create(
        model="gpt-4o", messages=messages, extra_headers=usage, extra_body={"_meterline": {"prompt_key": "plain"}}
    )
    assert reply.usage is not None and reply.usage.prompt_tokens == 12_345
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=messages, stream=True, extra_headers=usage,
            extra_body={"_meterline": {"prompt_key": "streamed"}},
        )
    )
    # The client did not ask for usage: it must not get the usage-only chunk the gateway asked for.
    assert chunks and all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "The fake provider says hello."
    upstream = fake_provider.requests[-1].json
    assert upstream["stream_options"] == {"include_usage": True}

    expected = openai_cost(12_345, 678, 4_096)
    totals = org.wait_for_requests(2)
    assert totals["total_cost"] == 2 * expected
    assert by_prompt(org) == {"plain": expected, "streamed": expected}


async def test_openai_async_stream_keeps_the_usage_chunk_the_client_asked_for(org: Org) -> None:
    client = openai.AsyncOpenAI(
        base_url=f"{org.stack.gateway_url}/api/proxy/v1/openai", api_key=org.admin_key,
        default_headers={"X-Provider-Key": "sk-upstream-test"}, max_retries=0,
    )
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}, extra_headers=usage_header(prompt_tokens=2_000, completion_tokens=300),
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 2_000
    reply = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
        extra_headers=usage_header(prompt_tokens=1_000, completion_tokens=100, cached_tokens=1_000),
    )
    assert reply.choices[0].message.content
    await client.close()
    totals = org.wait_for_requests(2)
    assert totals["total_cost"] == openai_cost(2_000, 300, 0) + openai_cost(1_000, 100, 1_000)


def test_anthropic_cache_reads_and_writes_are_priced_on_top_of_input(org: Org) -> None:
    client = ant(org)
    counts = dict(input_tokens=1_500, output_tokens=420, cache_read_input_tokens=30_000, cache_creation_input_tokens=2_048)
    msg = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=512, messages=[{"role": "user", "content": "hello"}],
        extra_headers=usage_header(**counts), extra_body={"_meterline": {"prompt_key": "plain"}},
    )
    assert msg.usage.cache_read_input_tokens == 30_000
    with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=512, messages=[{"role": "user", "content": "hello"}],
        extra_headers=usage_header(**counts), extra_body={"_meterline": {"prompt_key": "streamed"}},
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == 420
    expected = anthropic_cost(1_500, 420, 30_000, 2_048)
    totals = org.wait_for_requests(2, provider="anthropic")
    assert totals["total_cost"] == 2 * expected
    assert by_prompt(org) == {"plain": expected, "streamed": expected}
    # Provider filter: none of this is OpenAI spend.
    assert org.monthly(provider="openai")["request_count"] == 0


async def test_anthropic_async_client(org: Org) -> None:
    client = anthropic.AsyncAnthropic(
        base_url=f"{org.stack.gateway_url}/api/proxy/v1/anthropic", api_key=org.admin_key,
        default_headers={"X-Provider-Key": "sk-ant-upstream-test"}, max_retries=0,
    )
    msg = await client.messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}],
        extra_headers=usage_header(input_tokens=10, output_tokens=20),
    )
    assert msg.content[0].text
    async with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}],
        extra_headers=usage_header(input_tokens=100, output_tokens=200, cache_read_input_tokens=50),
    ) as stream:
        await stream.get_final_message()
    await client.close()
    totals = org.wait_for_requests(2)
    assert totals["total_cost"] == anthropic_cost(10, 20, 0, 0) + anthropic_cost(100, 200, 50, 0)


def test_unknown_model_is_stored_unpriced_not_dropped(org: Org) -> None:
    client = oai(org)
    client.chat.completions.create(
        model="my-finetune-that-nobody-prices", messages=[{"role": "user", "content": "x"}],
        extra_headers=usage_header(prompt_tokens=50, completion_tokens=5),
    )
    totals = org.wait_for_requests(1)
    assert totals == {**totals, "request_count": 1, "total_cost": 0}


@pytest.mark.parametrize("sdk_stream", [False, True])
def test_sandbox_calls_never_reach_upstream_and_are_left_out_of_spend(org: Org, fake_provider: FakeProvider, sdk_stream: bool) -> None:
    before = len(fake_provider.requests)
    client = openai.OpenAI(
        base_url=f"{org.stack.gateway_url}/api/proxy/v1/openai", api_key=org.admin_key,
        default_headers={"X-Sandbox": "true"}, max_retries=0,
    )
    if sdk_stream:
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True))
        assert "sandbox" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        reply = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hello there"}])
        assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert len(fake_provider.requests) == before
    with_sandbox = org.wait_for_requests(1, include_sandbox="true")
    assert with_sandbox["total_cost"] > 0
    assert org.monthly()["request_count"] == 0


def test_sandbox_calls_quoting_a_special_token_or_naming_any_model_are_answered(org: Org) -> None:
    # "<|endoftext|>" in a prompt is text to count, and a model whose encoding the tokenizer
    # cannot load (or does not know) is estimated with o200k: neither may fail the call.
    client = openai.OpenAI(base_url=f"{org.stack.gateway_url}/api/proxy/v1/openai", api_key=org.admin_key,
                           default_headers={"X-Sandbox": "true"}, max_retries=0)
    for model in ("gpt-4o", "text-davinci-003", "my-own-model"):
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "what is <|endoftext|>?"}])
        assert reply.usage is not None and reply.usage.prompt_tokens > 4 + 3
    claude = anthropic.Anthropic(base_url=f"{org.stack.gateway_url}/api/proxy/v1/anthropic", api_key=org.admin_key,
                                 default_headers={"X-Sandbox": "true"}, max_retries=0)
    message = claude.messages.create(model="claude-sonnet-4-5", max_tokens=10, system="say <|endoftext|>",
                                     messages=[{"role": "user", "content": "<|endoftext|>"}])
    assert message.usage.input_tokens > 4 + 3
    assert org.wait_for_requests(4, include_sandbox="true")["request_count"] == 4


def test_embeddings_and_responses_routes_are_forwarded_and_metered(org: Org) -> None:
    client = oai(org)
    vectors = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"],
                                       extra_headers=usage_header(prompt_tokens=50_000))
    assert len(vectors.data) == 2
    reply = client.responses.create(model="gpt-4o", input="hi",
                                    extra_headers=usage_header(input_tokens=3_000, output_tokens=200, cached_tokens=1_000))
    assert reply.usage is not None and reply.usage.input_tokens == 3_000
    totals = org.wait_for_requests(2)
    # text-embedding-3-small: $0.02 per million input tokens, no output price.
    assert totals["total_cost"] == 50_000 * Decimal("0.02") / M + openai_cost(3_000, 200, 1_000)


def test_a_price_override_applies_to_calls_after_it(org: Org) -> None:
    client = oai(org)
    counts = usage_header(prompt_tokens=1_000_000, completion_tokens=1_000_000, cached_tokens=500_000)
    calls = 0

    def call_cost() -> Decimal:
        """One call under its own prompt key, so the by-prompt rollup shows its cost alone."""
        nonlocal calls
        calls += 1
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}],
                                       extra_headers=counts, extra_body={"_meterline": {"prompt_key": f"call-{calls}"}})
        org.wait_for_requests(calls)
        return by_prompt(org)[f"call-{calls}"]

    published = openai_cost(1_000_000, 1_000_000, 500_000)
    assert call_cost() == published
    override = org.post("/api/prices", {"provider": "openai", "model": "gpt-4o", "input_per_mtok": "1.00",
                                        "output_per_mtok": "4.00", "cache_read_per_mtok": "0.10"})
    assert override["model"] == "gpt-4o"
    assert [o["model"] for o in org.get("/api/prices")["overrides"]] == ["gpt-4o"]
    negotiated = Decimal("0.5") + Decimal("0.05") + Decimal("4")  # 0.5M uncached, 0.5M cached, 1M out
    # The very next call is priced at the override: the pricer reloads prices whenever a batch
    # holds calls newer than its last load.
    assert call_cost() == negotiated
    assert by_prompt(org)["call-1"] == published  # stored costs never change behind the user's back
