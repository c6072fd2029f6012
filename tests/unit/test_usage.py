"""Reading token usage out of provider responses (gateway/usage.py)."""

from __future__ import annotations

import json

import pytest

from services.gateway.usage import StreamUsage, Usage, anthropic_usage, openai_usage, usage_from_body


def counts(u: Usage) -> tuple[int, int, int, int, int]:
    return (u.input, u.output, u.cache_read, u.cache_write, u.reasoning)


# ---------------------------------------------------------------------------------- OpenAI


def test_openai_chat_completion_with_details():
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": 2006,
            "completion_tokens": 300,
            "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 192, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        },
    }
    u = openai_usage(body)
    # prompt_tokens already include cached tokens: not added again
    assert counts(u) == (2006, 300, 1920, 0, 192)
    assert u.reported is True
    assert u.model == "gpt-4o-2024-08-06"


def test_openai_chat_completion_without_details():
    u = openai_usage({"model": "gpt-4o-mini", "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}})
    assert counts(u) == (9, 12, 0, 0, 0)
    assert u.reported


def test_openai_details_null():
    u = openai_usage({"usage": {"prompt_tokens": 9, "completion_tokens": 12, "prompt_tokens_details": None,
                                "completion_tokens_details": None}})
    assert counts(u) == (9, 12, 0, 0, 0)


def test_openai_responses_api_naming():
    body = {
        "id": "resp_1",
        "object": "response",
        "model": "o3-mini-2025-01-31",
        "output": [],
        "usage": {
            "input_tokens": 5000,
            "input_tokens_details": {"cached_tokens": 4096},
            "output_tokens": 800,
            "output_tokens_details": {"reasoning_tokens": 640},
            "total_tokens": 5800,
        },
    }
    u = openai_usage(body)
    assert counts(u) == (5000, 800, 4096, 0, 640)
    assert u.reported
    assert u.model == "o3-mini-2025-01-31"


def test_openai_responses_api_ignores_chat_detail_names():
    # In Responses naming the chat-style detail keys mean nothing
    u = openai_usage({"usage": {"input_tokens": 10, "output_tokens": 5,
                                "prompt_tokens_details": {"cached_tokens": 7}}})
    assert counts(u) == (10, 5, 0, 0, 0)


def test_openai_embeddings_only_prompt_tokens():
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
    u = openai_usage(body)
    assert counts(u) == (8, 0, 0, 0, 0)
    assert u.reported
    assert u.model == "text-embedding-3-small"


@pytest.mark.parametrize("usage", [None, "12", 12, [1, 2], True])
def test_openai_missing_or_malformed_usage_is_not_reported(usage):
    body = {"model": "gpt-4o"}
    if usage is not None:
        body["usage"] = usage
    u = openai_usage(body)
    assert u.reported is False
    assert counts(u) == (0, 0, 0, 0, 0)
    assert u.model == "gpt-4o"


def test_openai_usage_absent_key():
    assert openai_usage({}).reported is False
    assert openai_usage({}).model == ""


@pytest.mark.parametrize("bad", [True, False, "100", 1.5, None, [3], {"n": 3}])
def test_openai_non_int_values_are_ignored(bad):
    u = openai_usage({
        "usage": {
            "prompt_tokens": bad,
            "completion_tokens": 4,
            "prompt_tokens_details": {"cached_tokens": bad},
            "completion_tokens_details": {"reasoning_tokens": bad},
        }
    })
    assert counts(u) == (0, 4, 0, 0, 0)
    assert u.reported is True


@pytest.mark.parametrize("model", [123, None, ["gpt-4o"], {"id": "x"}])
def test_non_string_model_is_ignored(model):
    assert openai_usage({"model": model, "usage": {"prompt_tokens": 1}}).model == ""
    assert anthropic_usage({"model": model, "usage": {"input_tokens": 1}}).model == ""


def test_openai_details_not_a_dict():
    u = openai_usage({"usage": {"prompt_tokens": 10, "completion_tokens": 2,
                                "prompt_tokens_details": 5, "completion_tokens_details": "x"}})
    assert counts(u) == (10, 2, 0, 0, 0)


# ---------------------------------------------------------------------------------- Anthropic


def test_anthropic_input_includes_cache_reads_and_writes():
    body = {
        "id": "msg_1",
        "type": "message",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "hi"}],
        "usage": {
            "input_tokens": 21,
            "cache_creation_input_tokens": 188086,
            "cache_read_input_tokens": 1000,
            "output_tokens": 393,
        },
    }
    u = anthropic_usage(body)
    assert counts(u) == (21 + 188086 + 1000, 393, 1000, 188086, 0)
    assert u.reported
    assert u.model == "claude-sonnet-4-5-20250929"


def test_anthropic_without_cache_fields():
    u = anthropic_usage({"usage": {"input_tokens": 10, "output_tokens": 20}})
    assert counts(u) == (10, 20, 0, 0, 0)


def test_anthropic_null_cache_fields():
    u = anthropic_usage({"usage": {"input_tokens": 10, "output_tokens": 20, "cache_creation_input_tokens": None,
                                   "cache_read_input_tokens": None}})
    assert counts(u) == (10, 20, 0, 0, 0)


@pytest.mark.parametrize("bad", [True, "5", 5.0, None])
def test_anthropic_non_int_values_ignored(bad):
    u = anthropic_usage({"usage": {"input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": bad,
                                   "cache_creation_input_tokens": bad}})
    assert counts(u) == (10, 1, 0, 0, 0)


@pytest.mark.parametrize("usage", [None, "x", 3, []])
def test_anthropic_missing_usage(usage):
    body = {"model": "claude-3-5-haiku-20241022"}
    if usage is not None:
        body["usage"] = usage
    u = anthropic_usage(body)
    assert u.reported is False
    assert counts(u) == (0, 0, 0, 0, 0)
    assert u.model == "claude-3-5-haiku-20241022"


# ---------------------------------------------------------------------------------- usage_from_body


def test_usage_from_body_dispatches_on_provider():
    body = json.dumps({"model": "m", "usage": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 5}}).encode()
    # Anthropic adds the cache reads to the input; the Responses-style OpenAI reader does not.
    assert counts(usage_from_body("anthropic", body)) == (8, 4, 5, 0, 0)
    assert counts(usage_from_body("openai", body)) == (3, 4, 0, 0, 0)
    chat = json.dumps({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}).encode()
    assert counts(usage_from_body("openai", chat)) == (3, 4, 0, 0, 0)
    assert usage_from_body("openai", chat).reported


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"{", b'{"usage": {"prompt_tokens": 3}', b"<html>502 Bad Gateway</html>",
     b"[]", b'[{"usage": {"prompt_tokens": 3}}]', b"null", b"42", b'"usage"', b"\xff\xfe"],
)
def test_usage_from_body_bad_or_non_dict(provider, body):
    u = usage_from_body(provider, body)
    assert u == Usage()
    assert u.reported is False


def test_usage_from_body_error_response_has_no_usage():
    body = json.dumps({"error": {"message": "rate limited", "type": "rate_limit_error"}}).encode()
    assert usage_from_body("openai", body).reported is False
    assert usage_from_body("anthropic", body).reported is False


# ---------------------------------------------------------------------------------- streaming: OpenAI


def openai_chunk(content=None, *, model="gpt-4o-2024-08-06", finish=None, usage="absent", choices=True):
    c = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model}
    if choices:
        delta = {} if content is None else {"content": content}
        c["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    else:
        c["choices"] = []
    if usage != "absent":
        c["usage"] = usage
    return c


def test_openai_stream_usage_in_final_chunk_only():
    chunks = [
        openai_chunk("", usage=None),
        openai_chunk("Hel", usage=None),
        openai_chunk("lo", usage=None),
        openai_chunk(finish="stop", usage=None),
        openai_chunk(choices=False, usage={
            "prompt_tokens": 1200, "completion_tokens": 40, "total_tokens": 1240,
            "prompt_tokens_details": {"cached_tokens": 1024},
            "completion_tokens_details": {"reasoning_tokens": 8},
        }),
    ]
    s = StreamUsage("openai")
    results = [s.feed(c) for c in chunks]
    assert results == [False, False, False, False, True]
    assert counts(s.usage) == (1200, 40, 1024, 0, 8)
    assert s.usage.reported
    assert s.usage.model == "gpt-4o-2024-08-06"


def test_openai_stream_without_include_usage():
    s = StreamUsage("openai")
    for c in [openai_chunk("a"), openai_chunk("b"), openai_chunk(finish="stop")]:
        assert s.feed(c) is False
    assert s.usage.reported is False
    assert counts(s.usage) == (0, 0, 0, 0, 0)
    assert s.usage.model == "gpt-4o-2024-08-06"


def test_openai_stream_model_from_first_chunk():
    s = StreamUsage("openai")
    s.feed(openai_chunk("a", model="first"))
    s.feed(openai_chunk("b", model="second"))
    assert s.usage.model == "first"
    s.feed(openai_chunk("c", model=None))
    assert s.usage.model == "first"


def test_openai_stream_usage_chunk_model_is_taken_when_present():
    # Current behaviour: the usage chunk is read like a whole response, its own model included.
    s = StreamUsage("openai")
    s.feed(openai_chunk("a", model="first"))
    s.feed(openai_chunk(choices=False, model="third", usage={"prompt_tokens": 1, "completion_tokens": 1}))
    assert s.usage.model == "third"


def test_openai_stream_model_kept_when_usage_chunk_has_none():
    s = StreamUsage("openai")
    s.feed(openai_chunk("a", model="gpt-4o-mini"))
    final = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 6}}
    assert s.feed(final) is True
    assert s.usage.model == "gpt-4o-mini"
    assert counts(s.usage) == (5, 6, 0, 0, 0)


def test_openai_usage_in_a_chunk_with_choices_is_not_held_back():
    # Some compatible providers attach usage to the last content chunk: counted, but forwarded.
    s = StreamUsage("openai")
    assert s.feed(openai_chunk("x", finish="stop", usage={"prompt_tokens": 3, "completion_tokens": 2})) is False
    assert counts(s.usage) == (3, 2, 0, 0, 0)
    assert s.usage.reported


def test_openai_empty_choices_without_usage_is_not_held_back():
    s = StreamUsage("openai")
    assert s.feed({"choices": [], "model": "m"}) is False
    assert s.feed({"choices": [], "usage": None}) is False


def test_openai_top_level_responses_naming_in_stream():
    s = StreamUsage("openai")
    assert s.feed({"usage": {"input_tokens": 5, "output_tokens": 2, "input_tokens_details": {"cached_tokens": 4}}}) is False
    assert counts(s.usage) == (5, 2, 4, 0, 0)


def test_openai_responses_stream_completed_event_usage():
    s = StreamUsage("openai")
    events = [
        {"type": "response.created", "sequence_number": 0,
         "response": {"id": "resp_1", "object": "response", "model": "gpt-4.1-2025-04-14", "status": "in_progress",
                      "usage": None}},
        {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_1", "delta": "hi"},
        {"type": "response.completed", "sequence_number": 2,
         "response": {"id": "resp_1", "object": "response", "model": "gpt-4.1-2025-04-14", "status": "completed",
                      "usage": {"input_tokens": 50, "input_tokens_details": {"cached_tokens": 10},
                                "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 0},
                                "total_tokens": 70}}},
    ]
    for e in events:
        s.feed(e)
    assert s.usage.reported
    assert counts(s.usage) == (50, 20, 10, 0, 0)
    assert s.usage.model == "gpt-4.1-2025-04-14"


# ---------------------------------------------------------------------------------- streaming: Anthropic


def anthropic_stream(start_usage, delta_usage, model="claude-sonnet-4-5-20250929"):
    return [
        {"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
                                               "content": [], "stop_reason": None, "usage": start_usage}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": delta_usage},
        {"type": "message_stop"},
    ]


def test_anthropic_stream_message_start_then_cumulative_delta():
    s = StreamUsage("anthropic")
    events = anthropic_stream(
        {"input_tokens": 25, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 2000, "output_tokens": 1},
        {"output_tokens": 15},
    )
    assert [s.feed(e) for e in events] == [False] * len(events)
    assert counts(s.usage) == (25 + 100 + 2000, 15, 2000, 100, 0)
    assert s.usage.reported
    assert s.usage.model == "claude-sonnet-4-5-20250929"


def test_anthropic_stream_after_message_start_only():
    s = StreamUsage("anthropic")
    s.feed(anthropic_stream({"input_tokens": 25, "output_tokens": 1}, {})[0])
    assert counts(s.usage) == (25, 1, 0, 0, 0)
    assert s.usage.reported


def test_anthropic_multiple_deltas_last_wins():
    s = StreamUsage("anthropic")
    s.feed(anthropic_stream({"input_tokens": 10, "output_tokens": 1}, {})[0])
    s.feed({"type": "message_delta", "usage": {"output_tokens": 5}})
    s.feed({"type": "message_delta", "usage": {"output_tokens": 9}})
    assert counts(s.usage) == (10, 9, 0, 0, 0)


def test_anthropic_delta_with_input_and_cache_counts_overrides_start():
    s = StreamUsage("anthropic")
    events = anthropic_stream(
        {"input_tokens": 25, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 2000, "output_tokens": 1},
        {"input_tokens": 30, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2100, "output_tokens": 50},
    )
    for e in events:
        s.feed(e)
    assert counts(s.usage) == (30 + 0 + 2100, 50, 2100, 0, 0)


def test_anthropic_delta_partial_keys_keep_other_start_values():
    s = StreamUsage("anthropic")
    s.feed(anthropic_stream({"input_tokens": 25, "cache_read_input_tokens": 75, "output_tokens": 1}, {})[0])
    s.feed({"type": "message_delta", "usage": {"output_tokens": 7, "cache_read_input_tokens": 80}})
    assert counts(s.usage) == (25 + 80, 7, 80, 0, 0)


def test_anthropic_delta_null_counts_do_not_erase():
    s = StreamUsage("anthropic")
    s.feed(anthropic_stream({"input_tokens": 25, "cache_read_input_tokens": 75, "output_tokens": 1}, {})[0])
    s.feed({"type": "message_delta", "usage": {"output_tokens": 7, "input_tokens": None, "cache_read_input_tokens": None}})
    assert counts(s.usage) == (100, 7, 75, 0, 0)


def test_anthropic_model_kept_through_deltas():
    s = StreamUsage("anthropic")
    for e in anthropic_stream({"input_tokens": 1, "output_tokens": 1}, {"output_tokens": 2}, model="claude-3-5-haiku-20241022"):
        s.feed(e)
    assert s.usage.model == "claude-3-5-haiku-20241022"


def test_anthropic_stream_without_usage_is_not_reported():
    s = StreamUsage("anthropic")
    for e in [{"type": "ping"}, {"type": "content_block_delta", "delta": {"text": "x"}}, {"type": "message_stop"},
              {"type": "message_start", "message": "not a dict"}, {"type": "message_delta", "usage": None}]:
        assert s.feed(e) is False
    assert s.usage.reported is False
    assert counts(s.usage) == (0, 0, 0, 0, 0)


def test_anthropic_usage_outside_message_events_is_ignored():
    s = StreamUsage("anthropic")
    s.feed({"type": "content_block_delta", "usage": {"input_tokens": 99, "output_tokens": 99}})
    assert s.usage.reported is False
    assert counts(s.usage) == (0, 0, 0, 0, 0)


def test_anthropic_error_event_mid_stream_keeps_usage():
    s = StreamUsage("anthropic")
    s.feed(anthropic_stream({"input_tokens": 40, "output_tokens": 1}, {})[0])
    s.feed({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert counts(s.usage) == (40, 1, 0, 0, 0)
    assert s.usage.reported
