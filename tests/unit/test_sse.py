"""SSE framing (gateway/sse.py): incremental splitting and data extraction."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from services.gateway.sse import SSESplitter, event_data


def split_at(data: bytes, positions) -> list[bytes]:
    cuts = [0, *sorted(positions), len(data)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:])]


def run(chunks) -> tuple[list[bytes], bytes]:
    s = SSESplitter()
    out: list[bytes] = []
    for c in chunks:
        out.extend(s.feed(c))
    return out, s.rest()


def splittings(n: int, seed: int = 0, random_samples: int = 200):
    """Every single cut, every pair of cuts, every-byte, and a seeded sample of 3..n cuts."""
    positions = range(1, n)
    yield from ((p,) for p in positions)
    yield from itertools.combinations(positions, 2)
    yield tuple(positions)
    rng = random.Random(seed)
    for _ in range(random_samples):
        k = rng.randint(3, max(3, n - 1))
        yield tuple(rng.sample(list(positions), min(k, n - 1)))


OPENAI_EVENTS = [
    b'data: {"id":"c1","choices":[{"delta":{"content":"Hel"}}]}\n\n',
    b'data: {"id":"c1","choices":[{"delta":{"content":"lo\\n\\nworld"}}]}\n\n',
    b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n',
    b"data: [DONE]\n\n",
]
ANTHROPIC_EVENTS = [
    b'event: message_start\ndata: {"type":"message_start","message":{"model":"claude","usage":{"input_tokens":5}}}\n\n',
    b"event: ping\ndata: {\"type\": \"ping\"}\n\n",
    b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"hi"}}\n\n',
    b'event: message_delta\ndata: {"type":"message_delta","usage":{"output_tokens":9}}\n\n',
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
]
CRLF_EVENTS = [
    b"event: a\r\ndata: one\r\n\r\n",
    b"data: two\r\ndata: more\r\n\r\n",
    b": comment\r\n\r\n",
]
CR_EVENTS = [b"data: one\r\r", b"data: two\r\r"]
MIXED_EVENTS = [b"data: lf\n\n", b"data: crlf\r\n\r\n", b"data: cr\r\r", b"data: lf again\n\n"]


@pytest.mark.parametrize(
    "events",
    [OPENAI_EVENTS, ANTHROPIC_EVENTS, CRLF_EVENTS, CR_EVENTS, MIXED_EVENTS, [b"data: x\n\n"], [b"\n\n", b"\n\n"]],
    ids=["openai", "anthropic", "crlf", "cr", "mixed", "single", "empty-events"],
)
def test_any_chunking_yields_the_same_events(events):
    data = b"".join(events)
    whole, rest = run([data])
    assert whole == events
    assert rest == b""
    for i, positions in enumerate(splittings(len(data), seed=len(data))):
        chunks = split_at(data, positions)
        assert b"".join(chunks) == data
        got, rest = run(chunks)
        assert got == events, (i, positions)
        assert b"".join(got) == data
        assert rest == b""


@pytest.mark.parametrize("seed", range(20))
def test_random_streams_roundtrip(seed):
    rng = random.Random(seed)
    terminators = [b"\n\n", b"\r\n\r\n"]
    events = []
    for _ in range(rng.randint(1, 8)):
        term = rng.choice(terminators)
        nl = term[: len(term) // 2]
        lines = [b"data: " + json.dumps({"i": rng.randint(0, 10**6), "t": "x" * rng.randint(0, 20)}).encode()
                 for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.5:
            lines.insert(0, b"event: e" + str(rng.randint(0, 9)).encode())
        events.append(nl.join(lines) + term)
    data = b"".join(events)
    tail = b'data: {"cut": "sho' if seed % 2 else b""
    stream = data + tail
    positions = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(1, 30))))
    got, rest = run(split_at(stream, positions))
    assert got == events
    assert b"".join(got) + rest == stream
    assert rest == tail


def test_feed_is_lazy_and_keeps_partial_event():
    s = SSESplitter()
    assert list(s.feed(b"data: a")) == []
    assert list(s.feed(b"\n")) == []
    assert list(s.feed(b"\ndata: b\n")) == [b"data: a\n\n"]
    assert s.rest() == b"data: b\n"
    assert s.rest() == b""  # rest() drains the buffer


def test_several_events_in_one_chunk():
    assert run([b"data: 1\n\ndata: 2\n\ndata: 3\n\n"])[0] == [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"]


def test_crlf_terminator_kept_whole():
    got, rest = run([b"data: a\r\n\r\ndata: b\r\n\r\n"])
    assert got == [b"data: a\r\n\r\n", b"data: b\r\n\r\n"]
    assert rest == b""


def test_crlf_terminator_split_in_every_place():
    for k in range(1, 4):
        got, _ = run([b"data: a\r\n\r\n"[: 7 + k], b"data: a\r\n\r\n"[7 + k :]])
        assert got == [b"data: a\r\n\r\n"], k


@pytest.mark.parametrize("tail", [b"data: {\"partial\": tr", b"event: x\n", b"data: x\r\n\r", b"data: x\n"])
def test_rest_returns_unterminated_tail(tail):
    got, rest = run([b"data: a\n\n" + tail])
    assert got == [b"data: a\n\n"]
    assert rest == tail


def test_rest_after_split_tail():
    s = SSESplitter()
    list(s.feed(b"data: a\n\nda"))
    list(s.feed(b"ta: b"))
    assert s.rest() == b"data: b"
    # the splitter starts clean afterwards
    assert list(s.feed(b"data: c\n\n")) == [b"data: c\n\n"]


def test_empty_feed():
    s = SSESplitter()
    assert list(s.feed(b"")) == []
    assert s.rest() == b""


# ------------------------------------------------------------------------------- event_data


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (b"data: hello\n\n", b"hello"),
        (b"data:hello\n\n", b"hello"),
        (b"data: {\"a\": 1}\n\n", b'{"a": 1}'),
        (b"data: line1\ndata: line2\n\n", b"line1\nline2"),
        (b"data:line1\ndata: line2\ndata:line3\n\n", b"line1\nline2\nline3"),
        (b"event: message_delta\ndata: {\"x\":1}\n\n", b'{"x":1}'),
        (b"id: 7\nevent: e\ndata: a\nretry: 10\ndata: b\n\n", b"a\nb"),
        (b"data: hello\r\n\r\n", b"hello"),
        (b"event: a\r\ndata: x\r\ndata: y\r\n\r\n", b"x\ny"),
        (b"data: cr\r\r", b"cr"),
        (b"data: [DONE]\n\n", b"[DONE]"),
        (b"data:\n\n", b""),
        (b"data: \n\n", b""),
        (b": keep-alive\ndata: x\n\n", b"x"),
        (b"data: a: b\n\n", b"a: b"),
        (b"data: hello", b"hello"),  # unterminated (e.g. from rest())
    ],
)
def test_event_data(event, expected):
    assert event_data(event) == expected


@pytest.mark.parametrize(
    "event",
    [
        b"event: ping\n\n",
        b"event: ping\r\n\r\n",
        b": comment\n\n",
        b"id: 3\nretry: 1000\n\n",
        b"\n\n",
        b"",
        b"Data: x\n\n",  # field names are case-sensitive
        b" data: x\n\n",
        b"datum: x\n\n",
    ],
)
def test_event_data_none_without_data_lines(event):
    assert event_data(event) is None


def test_event_data_of_split_events_parses_as_json():
    data = b"".join(ANTHROPIC_EVENTS)
    got, _ = run(split_at(data, range(1, len(data), 7)))
    parsed = [json.loads(event_data(e)) for e in got]
    assert [p["type"] for p in parsed] == ["message_start", "ping", "content_block_delta", "message_delta", "message_stop"]
