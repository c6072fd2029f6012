"""Tracking metadata (gateway/metadata.py)."""

from __future__ import annotations

import copy

import pytest

from services.gateway.metadata import (
    MAX_ID_LENGTH,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    METADATA_FIELDS,
    MetadataError,
    Tracking,
    extract,
)

BODY = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0.2,
    "metadata": {"provider_side": "kept"},
}


def body_with(**extra):
    b = copy.deepcopy(BODY)
    b.update(extra)
    return b


def test_nothing_given():
    b = body_with()
    t = extract(b, {})
    assert t == Tracking()
    assert t.prompt_version is None
    assert b == BODY


@pytest.mark.parametrize("field", METADATA_FIELDS)
def test_body_object_read_and_removed(field):
    b = body_with(**{field: {"prompt_key": "summarise", "version": 3, "feature_tags": ["search", "beta"]}})
    t = extract(b, {})
    assert t.prompt_key == "summarise"
    assert t.prompt_version == 3
    assert t.feature_tags == ["search", "beta"]
    assert field not in b
    assert b == BODY  # nothing else removed or changed


def test_both_fields_removed():
    b = body_with(_meterline={"prompt_key": "a"}, _aipromptcost={"prompt_key": "b"})
    t = extract(b, {})
    assert "_meterline" not in b and "_aipromptcost" not in b
    assert b == BODY
    assert t.prompt_key in ("a", "b")


@pytest.mark.parametrize("meta", [None, {}])
def test_empty_or_null_metadata(meta):
    b = body_with(_meterline=meta)
    assert extract(b, {}) == Tracking()
    assert "_meterline" not in b


def test_prompt_key_trimmed():
    assert extract({"_meterline": {"prompt_key": "  welcome  "}}, {}).prompt_key == "welcome"


@pytest.mark.parametrize(("version", "expected"), [(1, 1), (7, 7), (2**31, 2**31), ("1", 1), ("42", 42), ("007", 7), (None, None)])
def test_version_int_or_digit_string(version, expected):
    t = extract({"_meterline": {"prompt_key": "p", "version": version}}, {})
    assert t.prompt_version == expected
    assert t.prompt_version is None or type(t.prompt_version) is int


@pytest.mark.parametrize("version", [0, -1, -100, True, False, "abc", "0", "-1", "", " 1", "1.5", 1.0, 2.5, [1], {"v": 1}])
def test_version_rejected(version):
    with pytest.raises(MetadataError, match="version"):
        extract({"_meterline": {"prompt_key": "p", "version": version}}, {})


@pytest.mark.parametrize("version", ["²", "9" * 5000])
def test_version_odd_digit_strings_are_metadata_errors(version):
    with pytest.raises(MetadataError):
        extract({"_meterline": {"prompt_key": "p", "version": version}}, {})


@pytest.mark.parametrize("meta", ["summarise", 3, ["prompt_key", "x"], True])
def test_non_dict_metadata_rejected(meta):
    with pytest.raises(MetadataError):
        extract({"_meterline": meta}, {})


@pytest.mark.parametrize("meta", ["x", [1]])
def test_non_dict_aipromptcost_rejected(meta):
    with pytest.raises(MetadataError):
        extract({"_aipromptcost": meta}, {})


@pytest.mark.parametrize("tags", [{"a": 1}, 5, True, ("a",)])
def test_non_list_feature_tags_rejected(tags):
    with pytest.raises(MetadataError, match="feature_tags"):
        extract({"_meterline": {"feature_tags": tags}}, {})


def test_feature_tags_single_string_accepted():
    assert extract({"_meterline": {"feature_tags": "search"}}, {}).feature_tags == ["search"]


@pytest.mark.parametrize("tags", [None, [], "", {}, 0])
def test_feature_tags_empty_values(tags):
    assert extract({"_meterline": {"feature_tags": tags}}, {}).feature_tags == []


def test_feature_tags_trimmed_and_empties_dropped():
    t = extract({"_meterline": {"feature_tags": [" a ", "", "  ", None, "b"]}}, {})
    assert t.feature_tags == ["a", "b"]


@pytest.mark.parametrize("tag", [1, 1.5, True, ["x"], {"k": "v"}])
def test_feature_tags_non_string_rejected(tag):
    with pytest.raises(MetadataError, match="feature_tags"):
        extract({"_meterline": {"feature_tags": ["ok", tag]}}, {})


def test_too_many_feature_tags():
    extract({"_meterline": {"feature_tags": [f"t{i}" for i in range(MAX_TAGS)]}}, {})
    with pytest.raises(MetadataError, match="feature_tags"):
        extract({"_meterline": {"feature_tags": [f"t{i}" for i in range(MAX_TAGS + 1)]}}, {})


def test_feature_tag_length_limit():
    assert extract({"_meterline": {"feature_tags": ["x" * MAX_TAG_LENGTH]}}, {}).feature_tags == ["x" * MAX_TAG_LENGTH]
    with pytest.raises(MetadataError, match="longer"):
        extract({"_meterline": {"feature_tags": ["x" * (MAX_TAG_LENGTH + 1)]}}, {})


def test_prompt_key_length_limit():
    assert extract({"_meterline": {"prompt_key": "k" * MAX_ID_LENGTH}}, {}).prompt_key == "k" * MAX_ID_LENGTH
    with pytest.raises(MetadataError, match="prompt_key"):
        extract({"_meterline": {"prompt_key": "k" * (MAX_ID_LENGTH + 1)}}, {})


@pytest.mark.parametrize("value", [1, True, ["p"], {"k": 1}])
def test_prompt_key_must_be_string(value):
    with pytest.raises(MetadataError, match="prompt_key"):
        extract({"_meterline": {"prompt_key": value}}, {})


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\tb", "\x00", "x\x1b[31m", "\x1f"])
@pytest.mark.parametrize(
    "where",
    ["prompt_key", "feature_tags", "x-customer-id", "x-feature", "x-meterline-tags", "user"],
)
def test_control_characters_rejected(bad, where):
    body: dict = {"_meterline": {}}
    headers: dict = {}
    if where == "prompt_key":
        body["_meterline"]["prompt_key"] = bad
    elif where == "feature_tags":
        body["_meterline"]["feature_tags"] = [bad]
    elif where == "user":
        body["user"] = bad
    else:
        headers[where] = bad
    with pytest.raises(MetadataError, match="control"):
        extract(body, headers)


def test_unicode_is_fine():
    t = extract({"_meterline": {"prompt_key": "résumé-✓", "feature_tags": ["日本"]}}, {"x-feature": "café"})
    assert (t.prompt_key, t.feature_tags, t.feature) == ("résumé-✓", ["日本"], "café")


# ------------------------------------------------------------------------------------- headers


def test_headers():
    t = extract(body_with(), {"x-customer-id": " cust_42 ", "x-feature": " chat ", "x-meterline-tags": "env:prod, team:a ,,  , x"})
    assert t.customer_id == "cust_42"
    assert t.feature == "chat"
    assert t.tags == ["env:prod", "team:a", "x"]


@pytest.mark.parametrize(("header", "expected"), [("", []), (",", []), (" , ,", []), ("a", ["a"]), ("a,b", ["a", "b"])])
def test_tag_header_split(header, expected):
    assert extract({}, {"x-meterline-tags": header}).tags == expected


def test_too_many_header_tags():
    extract({}, {"x-meterline-tags": ",".join(f"t{i}" for i in range(MAX_TAGS))})
    with pytest.raises(MetadataError, match="x-meterline-tags"):
        extract({}, {"x-meterline-tags": ",".join(f"t{i}" for i in range(MAX_TAGS + 1))})


def test_header_tag_too_long():
    with pytest.raises(MetadataError, match="x-meterline-tags"):
        extract({}, {"x-meterline-tags": "ok," + "x" * (MAX_TAG_LENGTH + 1)})


@pytest.mark.parametrize("header", ["x-customer-id", "x-feature"])
def test_header_id_too_long(header):
    extract({}, {header: "c" * MAX_ID_LENGTH})
    with pytest.raises(MetadataError, match=header):
        extract({}, {header: "c" * (MAX_ID_LENGTH + 1)})


def test_headers_and_body_together():
    b = body_with(user="user-123", _meterline={"prompt_key": "p", "version": "2", "feature_tags": ["f"]})
    t = extract(b, {"x-customer-id": "c", "x-feature": "feat", "x-meterline-tags": "k:v"})
    assert t == Tracking(prompt_key="p", prompt_version=2, feature_tags=["f"], tags=["k:v"], customer_id="c",
                         feature="feat", user="user-123")
    assert b["user"] == "user-123"  # OpenAI's own field is forwarded untouched


# ------------------------------------------------------------------------------------- user


def test_openai_user_field():
    b = body_with(user="alice@example.com")
    assert extract(b, {}).user == "alice@example.com"
    assert b["user"] == "alice@example.com"


@pytest.mark.parametrize("user", [123, None, {"id": "x"}, ["u"]])
def test_non_string_user_ignored(user):
    assert extract(body_with(user=user), {}).user == ""


def test_user_too_long_rejected():
    with pytest.raises(MetadataError, match="user"):
        extract({"user": "u" * (MAX_ID_LENGTH + 1)}, {})


def test_metadata_error_is_value_error():
    assert issubclass(MetadataError, ValueError)
