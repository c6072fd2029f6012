"""Prompt attribution, event decoding and the poison breaker (pricer)."""

from __future__ import annotations

import gc
import json
import uuid
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from schemas.events import SCHEMA_VERSION, UsageEvent, encode_event
from services.pricer.attribution import PromptRegistry, Registration, attribute
from services.pricer.decode import Poison, decode
from services.pricer.dlq import PoisonBreaker, PoisonBreakerTripped

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
DAY = timedelta(days=1)
EVENT_ID = "2f1c6f0e-8d7a-4b8e-9a52-1f6b9c0d3e11"


def event(**kw) -> UsageEvent:
    defaults = dict(
        event_id=EVENT_ID,
        request_id="req_1",
        org_id="org_a",
        provider="openai",
        route="chat/completions",
        model_requested="gpt-4o",
        model="gpt-4o-2024-08-06",
        started_at=T0,
    )
    defaults.update(kw)
    return UsageEvent(**defaults)


def registry() -> PromptRegistry:
    """org_a/welcome: versions 1-3; 1 active from T0+1d, 2 from T0+10d, 3 from T0+20d, back to 1 from T0+30d.
    org_a/draft: version 1 exists but was never activated."""
    return PromptRegistry.build(
        versions=[("org_a", "welcome", 1), ("org_a", "welcome", 2), ("org_a", "welcome", 3), ("org_a", "draft", 1)],
        activations=[
            # deliberately out of order: build sorts them
            ("org_a", "welcome", 3, T0 + 20 * DAY),
            ("org_a", "welcome", 1, T0 + 1 * DAY),
            ("org_a", "welcome", 1, T0 + 30 * DAY),
            ("org_a", "welcome", 2, T0 + 10 * DAY),
        ],
    )


# ------------------------------------------------------------------------------- attribution


def test_no_prompt_is_version_zero():
    assert attribute(event(), registry()) == (0, None)
    assert attribute(event(prompt_version=5), registry()) == (0, None)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_explicit_known_version(version):
    # explicit version wins over what is active at the time
    assert attribute(event(prompt_key="welcome", prompt_version=version, started_at=T0 + 15 * DAY), registry()) == (version, None)


def test_explicit_unknown_version_of_known_prompt_registers_version_only():
    e = event(prompt_key="welcome", prompt_version=4, started_at=T0 + 5 * DAY)
    version, reg = attribute(e, registry())
    assert version == 4
    assert reg == Registration("org_a", "welcome", 4, "gpt-4o", T0 + 5 * DAY, new_prompt=False)


def test_explicit_version_of_unknown_prompt_registers_new_prompt():
    e = event(prompt_key="brand-new", prompt_version=3, started_at=T0 + 5 * DAY)
    version, reg = attribute(e, registry())
    assert version == 3
    assert reg == Registration("org_a", "brand-new", 3, "gpt-4o", T0 + 5 * DAY, new_prompt=True)


def test_registration_model_falls_back_to_returned_model():
    version, reg = attribute(event(prompt_key="new", model_requested="", model="gpt-4o-mini"), registry())
    assert reg.model == "gpt-4o-mini"


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (T0 + 1 * DAY, 1),  # exactly at activation
        (T0 + 5 * DAY, 1),
        (T0 + 10 * DAY - timedelta(microseconds=1), 1),
        (T0 + 10 * DAY, 2),
        (T0 + 19 * DAY, 2),
        (T0 + 20 * DAY, 3),
        (T0 + 29 * DAY, 3),
        (T0 + 30 * DAY, 1),  # rolled back
        (T0 + 400 * DAY, 1),
    ],
)
def test_no_version_uses_version_active_at_started_at(at, expected):
    assert attribute(event(prompt_key="welcome", started_at=at), registry()) == (expected, None)


@pytest.mark.parametrize("at", [T0, T0 - 365 * DAY, T0 + DAY - timedelta(microseconds=1)])
def test_event_before_first_activation_gets_first_version(at):
    reg = PromptRegistry.build(
        versions=[("o", "p", 5), ("o", "p", 6)],
        activations=[("o", "p", 6, T0 + 10 * DAY), ("o", "p", 5, T0 + DAY)],
    )
    assert attribute(event(org_id="o", prompt_key="p", started_at=at), reg) == (5, None)


def test_attribution_is_per_org():
    e = event(org_id="org_b", prompt_key="welcome", started_at=T0 + 15 * DAY)
    version, reg = attribute(e, registry())
    assert version == 1
    assert reg == Registration("org_b", "welcome", 1, "gpt-4o", T0 + 15 * DAY, new_prompt=True)


def test_unknown_prompt_without_version_registers_version_1():
    e = event(prompt_key="fresh", started_at=T0 + 3 * DAY)
    assert attribute(e, registry()) == (1, Registration("org_a", "fresh", 1, "gpt-4o", T0 + 3 * DAY, True))


def test_known_but_never_activated_prompt_without_version():
    # Current behaviour: no activation history -> treated like a new prompt (version 1, new_prompt=True)
    version, reg = attribute(event(prompt_key="draft"), registry())
    assert version == 1
    assert reg is not None and reg.version == 1


def test_record_new_prompt_is_seen_by_later_events():
    r = registry()
    first = event(prompt_key="fresh", started_at=T0 + 3 * DAY)
    v, reg = attribute(first, r)
    assert reg is not None
    r.record(reg)
    assert r.knows("org_a", "fresh")
    assert r.has_version("org_a", "fresh", 1)
    # a later event in the same batch: attributed, nothing more to register
    assert attribute(event(prompt_key="fresh", started_at=T0 + 4 * DAY), r) == (1, None)
    assert attribute(event(prompt_key="fresh", prompt_version=1, started_at=T0 + 4 * DAY), r) == (1, None)
    # and an event *earlier* than the registration still belongs to the first version
    assert attribute(event(prompt_key="fresh", started_at=T0), r) == (1, None)


def test_record_explicit_new_version_is_seen_without_activation():
    r = registry()
    v, reg = attribute(event(prompt_key="welcome", prompt_version=9, started_at=T0 + 15 * DAY), r)
    r.record(reg)
    assert attribute(event(prompt_key="welcome", prompt_version=9, started_at=T0 + 16 * DAY), r) == (9, None)
    # a version registered by use is not activated: unversioned calls still go to the active version
    assert attribute(event(prompt_key="welcome", started_at=T0 + 16 * DAY), r) == (2, None)


def test_record_explicit_version_of_new_prompt_activates_it():
    r = registry()
    v, reg = attribute(event(prompt_key="other", prompt_version=4, started_at=T0 + 2 * DAY), r)
    assert reg.new_prompt
    r.record(reg)
    # the next event naming the same new prompt at another version is a new version, not a new prompt
    v2, reg2 = attribute(event(prompt_key="other", prompt_version=5, started_at=T0 + 3 * DAY), r)
    assert (v2, reg2.new_prompt) == (5, False)
    assert attribute(event(prompt_key="other", started_at=T0 + 3 * DAY), r) == (4, None)


def test_registry_queries():
    r = registry()
    assert r.knows("org_a", "welcome")
    assert not r.knows("org_b", "welcome")
    assert r.has_version("org_a", "welcome", 3)
    assert not r.has_version("org_a", "welcome", 4)
    assert r.active_version("org_a", "nope", T0) is None
    assert r.active_version("org_a", "welcome", T0 + 25 * DAY) == 3


def test_replay_is_stable():
    r = registry()
    e = event(prompt_key="welcome", started_at=T0 + 12 * DAY)
    assert attribute(e, r) == attribute(e, r) == (2, None)


# ------------------------------------------------------------------------------- decode


def raw(**overrides) -> dict:
    d = {
        "schema_version": SCHEMA_VERSION,
        "event_id": EVENT_ID,
        "request_id": "req_1",
        "org_id": "org_a",
        "provider": "openai",
        "route": "chat/completions",
        "model": "gpt-4o",
        "started_at": "2026-03-01T12:00:00Z",
        "input_tokens": 10,
        "output_tokens": 5,
    }
    for k, v in overrides.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    return d


def enc(d) -> bytes:
    return json.dumps(d).encode()


def test_decode_valid_event():
    e = decode(enc(raw()))
    assert isinstance(e, UsageEvent)
    assert e.org_id == "org_a"
    assert e.input_tokens == 10
    assert e.started_at == datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


def test_decode_roundtrip_of_encoded_event():
    e = event(input_tokens=3, feature_tags=("a",), tags=("k:v",), prompt_key="p", prompt_version=2)
    d = decode(encode_event(e))
    assert d == e


def test_decoded_events_leave_the_collectors_sight():
    """The pricer holds tens of thousands of decoded events per batch: after one pass of the
    cyclic collector, none of them, nor their tags, is among the objects it walks again."""
    events = [decode(encode_event(event(feature_tags=("a", "b"), tags=(f"k:{i}",)))) for i in range(100)]
    events += [decode(enc(raw()))]  # no tags at all
    gc.collect()
    assert not any(gc.is_tracked(x) for e in events for x in (e, e.feature_tags, e.tags))


def test_decode_ignores_unknown_fields_from_newer_gateways():
    assert isinstance(decode(enc(raw(some_future_field=1))), UsageEvent)


@pytest.mark.parametrize("payload", [None, b""])
def test_decode_empty(payload):
    p = decode(payload)
    assert isinstance(p, Poison)
    assert "empty" in p.reason


@pytest.mark.parametrize("payload", [b"not json", b"{", b"\xff\xfe", b"[1,2]", b"null", b"42", b'"x"'])
def test_decode_invalid_json(payload):
    p = decode(payload)
    assert isinstance(p, Poison)
    assert p.reason.startswith("undecodable")


@pytest.mark.parametrize("field", ["event_id", "request_id", "org_id", "provider", "route", "started_at"])
def test_decode_missing_required_field(field):
    p = decode(enc(raw(**{field: ...})))
    assert isinstance(p, Poison)
    assert field in p.reason


@pytest.mark.parametrize(
    "overrides",
    [
        {"provider": "google"},
        {"input_tokens": "10"},
        {"input_tokens": 1.5},
        {"status": "weird"},
        {"started_at": "yesterday"},
        {"feature_tags": "a"},
    ],
)
def test_decode_wrong_types(overrides):
    assert isinstance(decode(enc(raw(**overrides))), Poison)


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, SCHEMA_VERSION + 100])
def test_decode_newer_schema_version(version):
    p = decode(enc(raw(schema_version=version)))
    assert isinstance(p, Poison)
    assert "schema version" in p.reason


def test_decode_missing_schema_version_defaults():
    e = decode(enc(raw(schema_version=...)))
    assert isinstance(e, UsageEvent)
    assert e.schema_version == SCHEMA_VERSION


@pytest.mark.parametrize("event_id", ["", "not-a-uuid", "1234", "2f1c6f0e-8d7a-4b8e-9a52-1f6b9c0d3e1", "g" * 32])
def test_decode_non_uuid_event_id(event_id):
    p = decode(enc(raw(event_id=event_id)))
    assert isinstance(p, Poison)
    assert "UUID" in p.reason


@pytest.mark.parametrize(
    "event_id",
    [
        "2F1C6F0E-8D7A-4B8E-9A52-1F6B9C0D3E11",
        "2f1c6f0e8d7a4b8e9a521f6b9c0d3e11",
        "{2f1c6f0e-8d7a-4b8e-9a52-1f6b9c0d3e11}",
        "urn:uuid:2f1c6f0e-8d7a-4b8e-9a52-1f6b9c0d3e11",
        EVENT_ID,
    ],
)
def test_decode_normalises_event_id(event_id):
    e = decode(enc(raw(event_id=event_id)))
    assert isinstance(e, UsageEvent)
    assert e.event_id == EVENT_ID
    assert e.event_id == str(uuid.UUID(EVENT_ID))


def test_decode_empty_org():
    p = decode(enc(raw(org_id="")))
    assert isinstance(p, Poison)
    assert "org_id" in p.reason


@pytest.mark.parametrize("started_at", ["2026-03-01T12:00:00", "2026-03-01T12:00:00.123456"])
def test_decode_naive_started_at(started_at):
    p = decode(enc(raw(started_at=started_at)))
    assert isinstance(p, Poison)
    assert "timezone" in p.reason


def test_decode_offset_started_at_is_accepted():
    e = decode(enc(raw(started_at="2026-03-01T14:00:00+02:00")))
    assert isinstance(e, UsageEvent)
    assert e.started_at == datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


def test_poison_reason_is_bounded_for_huge_event_id():
    p = decode(enc(raw(event_id="x" * 10_000)))
    assert isinstance(p, Poison)
    assert len(p.reason) < 200


def test_decode_never_raises_on_garbage():
    for payload in [b"\x00" * 10, msgspec.json.encode({"a": [1] * 100}), b"{" * 1000]:
        assert isinstance(decode(payload), Poison)


# ------------------------------------------------------------------------------- breaker


def feed(breaker: PoisonBreaker, flags) -> None:
    for f in flags:
        breaker.record(f)


def test_breaker_does_not_trip_before_window_is_full():
    b = PoisonBreaker(window=10, max_ratio=0.5)
    feed(b, [True] * 9)  # 9 of 9 poison, but the window is not full


def test_breaker_trips_on_full_window_above_ratio():
    b = PoisonBreaker(window=10, max_ratio=0.5)
    feed(b, [True] * 9)
    with pytest.raises(PoisonBreakerTripped, match="10 of the last 10"):
        b.record(True)


@pytest.mark.parametrize(("poison", "trips"), [(0, False), (4, False), (5, False), (6, True), (10, True)])
def test_breaker_ratio_threshold(poison, trips):
    b = PoisonBreaker(window=10, max_ratio=0.5)
    flags = [False] * (10 - poison) + [True] * poison
    if trips:
        with pytest.raises(PoisonBreakerTripped):
            feed(b, flags)
    else:
        feed(b, flags)


def test_breaker_is_a_sliding_window():
    b = PoisonBreaker(window=4, max_ratio=0.5)
    # old poison slides out: never more than 2 of the last 4
    feed(b, [True, True, False, False, True, True, False, False, True, True, False, False])
    feed(b, [False] * 100)
    feed(b, [True, True])  # 2 of 4 again
    with pytest.raises(PoisonBreakerTripped, match="3 of the last 4"):
        b.record(True)


def test_breaker_long_healthy_run_then_burst():
    b = PoisonBreaker(window=100, max_ratio=0.1)
    feed(b, [False] * 1000)
    feed(b, [True] * 10)  # exactly 10%: not above
    with pytest.raises(PoisonBreakerTripped):
        b.record(True)


def test_breaker_ratio_zero_trips_on_any_poison_in_full_window():
    b = PoisonBreaker(window=3, max_ratio=0.0)
    feed(b, [False, False, False])
    with pytest.raises(PoisonBreakerTripped):
        b.record(True)


def test_breaker_ratio_one_never_trips():
    b = PoisonBreaker(window=3, max_ratio=1.0)
    feed(b, [True] * 50)
