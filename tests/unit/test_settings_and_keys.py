"""Settings from the environment (common/settings.py) and platform keys (query/keys.py)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from services.common.settings import DLQ_TOPIC, RAW_TOPIC, SettingsError, load_settings
from services.query.keys import KEY_PREFIX, hash_key, mask, new_id, new_key

# ------------------------------------------------------------------------------------ settings


def test_defaults():
    s = load_settings({})
    assert s.gateway.port == 8080
    assert s.query.port == 8081
    assert s.gateway.host == s.query.host == "127.0.0.1"
    assert s.gateway.openai_base_url == "https://api.openai.com/v1"
    assert s.gateway.anthropic_base_url == "https://api.anthropic.com"
    assert s.gateway.query_url == "http://127.0.0.1:8081"
    assert s.gateway.max_body_bytes == 32 * 1024 * 1024
    assert s.gateway.connect_timeout_s == 10.0
    assert s.gateway.read_timeout_s == 600.0
    assert s.gateway.event_queue_size == 100_000
    assert s.kafka.bootstrap is None
    assert s.kafka.partitions is None
    assert s.kafka.raw_partitions() == 1  # the embedded broker: one pricer, one insert per batch
    assert load_settings({"METERLINE_KAFKA_BOOTSTRAP": "kafka:9092"}).kafka.raw_partitions() == 6
    assert load_settings({"METERLINE_KAFKA_PARTITIONS": "3"}).kafka.raw_partitions() == 3  # chosen, even embedded
    assert (s.kafka.raw_topic, s.kafka.dlq_topic) == (RAW_TOPIC, DLQ_TOPIC) == ("meterline.usage.raw", "meterline.usage.dlq")
    assert s.pricer.group_id == "meterline-pricer"
    assert s.pricer.batch_max_events == 20_000
    assert s.pricer.dlq_breaker_ratio == 0.5
    assert s.pricer.dlq_breaker_window == 1000
    assert s.admin_key is None
    assert s.log_level == "info"
    assert s.log_json is False
    assert s.data_dir == Path("./.meterline")


def test_default_store_is_embedded_chdb_under_data_dir():
    s = load_settings({})
    expected = (Path(".meterline") / "clickhouse").resolve()
    assert s.store.url == f"chdb://{expected}"
    assert s.store.is_embedded
    assert s.store.chdb_path == expected
    assert s.store.chdb_path.is_absolute()


def test_data_dir_env_and_argument(tmp_path):
    s = load_settings({"METERLINE_DATA_DIR": str(tmp_path)})
    assert s.data_dir == tmp_path
    assert s.store.chdb_path == (tmp_path / "clickhouse").resolve()
    other = tmp_path / "arg"
    s = load_settings({"METERLINE_DATA_DIR": str(tmp_path)}, data_dir=other)
    assert s.data_dir == other
    assert s.store.chdb_path == (other / "clickhouse").resolve()


def test_env_overrides():
    env = {
        "METERLINE_GATEWAY_PORT": "9000",
        "METERLINE_QUERY_PORT": "9001",
        "METERLINE_HOST": "0.0.0.0",
        "METERLINE_OPENAI_BASE_URL": "http://fake-openai:1234/v1/",
        "METERLINE_ANTHROPIC_BASE_URL": "https://proxy.example.com/anthropic/",
        "METERLINE_KAFKA_BOOTSTRAP": "kafka:9092",
        "METERLINE_KAFKA_PARTITIONS": "12",
        "METERLINE_CLICKHOUSE_URL": "http://user:pw@clickhouse:8123/meterline",
        "METERLINE_MAX_BODY_BYTES": "2048",
        "METERLINE_UPSTREAM_CONNECT_TIMEOUT": "1.5",
        "METERLINE_UPSTREAM_READ_TIMEOUT": "30",
        "METERLINE_KEY_CACHE_TTL": "0",
        "METERLINE_EVENT_QUEUE_SIZE": "10",
        "METERLINE_PRICER_GROUP": "g",
        "METERLINE_BATCH_MAX_EVENTS": "7",
        "METERLINE_BATCH_MAX_WAIT": "0.01",
        "METERLINE_CATALOG_REFRESH": "60",
        "METERLINE_DLQ_BREAKER_RATIO": "0.25",
        "METERLINE_DLQ_BREAKER_WINDOW": "50",
        "METERLINE_ADMIN_KEY": "secret",
        "METERLINE_LOG_LEVEL": "DEBUG",
        "METERLINE_LOG_JSON": "true",
    }
    s = load_settings(env)
    assert (s.gateway.port, s.query.port) == (9000, 9001)
    assert s.gateway.host == s.query.host == "0.0.0.0"
    assert s.gateway.openai_base_url == "http://fake-openai:1234/v1"  # trailing slash dropped
    assert s.gateway.anthropic_base_url == "https://proxy.example.com/anthropic"
    assert s.gateway.query_url == "http://127.0.0.1:9001"  # follows the query port
    assert s.kafka.bootstrap == "kafka:9092"
    assert s.kafka.partitions == s.kafka.raw_partitions() == 12
    assert s.store.url == "http://user:pw@clickhouse:8123/meterline"
    assert not s.store.is_embedded
    assert s.gateway.max_body_bytes == 2048
    assert (s.gateway.connect_timeout_s, s.gateway.read_timeout_s) == (1.5, 30.0)
    assert s.gateway.key_cache_ttl_s == s.query.key_cache_ttl_s == 0.0
    assert s.gateway.event_queue_size == 10
    assert (s.pricer.group_id, s.pricer.batch_max_events, s.pricer.batch_max_wait_s) == ("g", 7, 0.01)
    assert s.pricer.catalog_refresh_s == 60.0
    assert (s.pricer.dlq_breaker_ratio, s.pricer.dlq_breaker_window) == (0.25, 50)
    assert s.admin_key == "secret"
    assert s.log_level == "debug"
    assert s.log_json is True


def test_query_url_override():
    s = load_settings({"METERLINE_QUERY_URL": "https://query.internal:443/"})
    assert s.gateway.query_url == "https://query.internal:443"


@pytest.mark.parametrize("url", ["chdb:///var/lib/meterline/ch", "https://u:p@ch.example.com:8443/db", "http://ch:8123"])
def test_store_url_schemes(url):
    s = load_settings({"METERLINE_CLICKHOUSE_URL": url})
    assert s.store.url == url
    assert s.store.is_embedded == url.startswith("chdb://")


def test_chdb_path_from_url():
    assert load_settings({"METERLINE_CLICKHOUSE_URL": "chdb:///srv/ch"}).store.chdb_path == Path("/srv/ch")


@pytest.mark.parametrize(("value", "expected"), [("1", True), ("true", True), ("yes", True), ("0", False), ("", False),
                                                 ("false", False), ("TRUE", False)])
def test_log_json(value, expected):
    assert load_settings({"METERLINE_LOG_JSON": value}).log_json is expected


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error", "INFO", "Warning"])
def test_log_levels(level):
    assert load_settings({"METERLINE_LOG_LEVEL": level}).log_level == level.lower()


@pytest.mark.parametrize("level", ["verbose", "warn", "critical", "trace", "0"])
def test_bad_log_level(level):
    with pytest.raises(SettingsError, match="METERLINE_LOG_LEVEL"):
        load_settings({"METERLINE_LOG_LEVEL": level})


@pytest.mark.parametrize(
    "name",
    ["METERLINE_GATEWAY_PORT", "METERLINE_QUERY_PORT", "METERLINE_KAFKA_PARTITIONS", "METERLINE_MAX_BODY_BYTES",
     "METERLINE_EVENT_QUEUE_SIZE", "METERLINE_BATCH_MAX_EVENTS", "METERLINE_DLQ_BREAKER_WINDOW"],
)
@pytest.mark.parametrize("value", ["abc", "1.5", "8080x", "0x10", " "])
def test_bad_int(name, value):
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("METERLINE_GATEWAY_PORT", "65536"),
        ("METERLINE_GATEWAY_PORT", "-1"),
        ("METERLINE_QUERY_PORT", "70000"),
        ("METERLINE_KAFKA_PARTITIONS", "0"),
        ("METERLINE_KAFKA_PARTITIONS", "1025"),
        ("METERLINE_MAX_BODY_BYTES", "1023"),
        ("METERLINE_EVENT_QUEUE_SIZE", "0"),
        ("METERLINE_BATCH_MAX_EVENTS", "0"),
        ("METERLINE_DLQ_BREAKER_WINDOW", "0"),
    ],
)
def test_int_out_of_range(name, value):
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})


@pytest.mark.parametrize(("name", "value"), [("METERLINE_GATEWAY_PORT", "0"), ("METERLINE_GATEWAY_PORT", "65535"),
                                             ("METERLINE_KAFKA_PARTITIONS", "1024"), ("METERLINE_MAX_BODY_BYTES", "1024")])
def test_int_range_bounds_accepted(name, value):
    load_settings({name: value})


def test_empty_string_means_default():
    s = load_settings({"METERLINE_GATEWAY_PORT": "", "METERLINE_UPSTREAM_READ_TIMEOUT": "", "METERLINE_OPENAI_BASE_URL": "",
                       "METERLINE_KAFKA_BOOTSTRAP": "", "METERLINE_ADMIN_KEY": "", "METERLINE_CLICKHOUSE_URL": ""})
    assert s.gateway.port == 8080
    assert s.gateway.read_timeout_s == 600.0
    assert s.gateway.openai_base_url == "https://api.openai.com/v1"
    assert s.kafka.bootstrap is None
    assert s.admin_key is None
    assert s.store.is_embedded


@pytest.mark.parametrize(
    "name",
    ["METERLINE_UPSTREAM_CONNECT_TIMEOUT", "METERLINE_UPSTREAM_READ_TIMEOUT", "METERLINE_KEY_CACHE_TTL",
     "METERLINE_BATCH_MAX_WAIT", "METERLINE_CATALOG_REFRESH", "METERLINE_DLQ_BREAKER_RATIO"],
)
@pytest.mark.parametrize("value", ["abc", "-1", "-0.5", "1,5"])
def test_bad_float(name, value):
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})


@pytest.mark.parametrize(
    "name", ["METERLINE_OPENAI_BASE_URL", "METERLINE_ANTHROPIC_BASE_URL", "METERLINE_QUERY_URL"]
)
@pytest.mark.parametrize("value", ["api.openai.com", "ftp://host/x", "http://", "localhost:8080", "/v1", "file:///etc/passwd"])
def test_bad_url(name, value):
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})


@pytest.mark.parametrize("value", ["clickhouse:8123", "tcp://ch:9000", "ftp://ch/db", "/var/lib/ch", "postgres://x"])
def test_bad_store_url_scheme(value):
    with pytest.raises(SettingsError, match="METERLINE_CLICKHOUSE_URL"):
        load_settings({"METERLINE_CLICKHOUSE_URL": value})


def test_settings_error_is_value_error():
    assert issubclass(SettingsError, ValueError)


def test_settings_are_frozen():
    s = load_settings({})
    with pytest.raises(AttributeError):
        s.gateway.port = 1  # type: ignore[misc]


# ------------------------------------------------------------------------------------ keys


def test_new_key_prefix_and_shape():
    k = new_key()
    assert KEY_PREFIX == "mtl_"
    assert k.startswith("mtl_")
    body = k[len("mtl_"):]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", body)  # 32 random bytes, urlsafe base64 without padding


def test_new_keys_are_unique():
    keys = {new_key() for _ in range(500)}
    assert len(keys) == 500


@pytest.mark.parametrize("key", ["mtl_abc", "mtl_" + "x" * 43, "", "ünïcödé"])
def test_hash_key_deterministic_hex(key):
    h = hash_key(key)
    assert h == hash_key(key)
    assert re.fullmatch(r"[0-9a-f]{64}", h)


def test_hash_key_known_vector():
    # SHA-256("mtl_abc")
    import hashlib

    assert hash_key("mtl_abc") == hashlib.sha256(b"mtl_abc").hexdigest()
    assert hash_key("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_hash_key_distinguishes_keys():
    a, b = new_key(), new_key()
    assert hash_key(a) != hash_key(b)
    assert hash_key("mtl_a") != hash_key("mtl_A")


def test_mask():
    assert mask("mtl_", "abcd") == "mtl_…abcd"
    k = new_key()
    assert mask(k[:4], k[-4:]) == f"mtl_…{k[-4:]}"
    assert "…" in mask("mtl_", "wxyz") and mask("mtl_", "wxyz").endswith("wxyz")


@pytest.mark.parametrize("kind", ["team", "key", "org"])
def test_new_id(kind):
    ids = {new_id(kind) for _ in range(100)}
    assert len(ids) == 100
    for i in ids:
        assert re.fullmatch(rf"{kind}_[0-9a-f]{{16}}", i)


def test_spool_dir_names_the_host_so_replicas_sharing_a_volume_do_not_share_a_directory() -> None:
    import socket

    settings = load_settings({"METERLINE_SPOOL_DIR": "/var/lib/meterline/spool/{hostname}"})
    assert str(settings.gateway.spool_dir) == f"/var/lib/meterline/spool/{socket.gethostname()}"


def test_each_gateway_worker_spools_in_a_directory_of_its_own() -> None:
    env = {"METERLINE_SPOOL_DIR": "/var/lib/meterline/spool/{hostname}", "METERLINE_GATEWAY_WORKERS": "4"}
    assert load_settings(env).gateway.workers == 4
    assert load_settings(env).gateway.worker_index is None  # the supervisor itself
    worker = load_settings({**env, "METERLINE_GATEWAY_WORKER_INDEX": "3"}).gateway
    assert str(worker.spool_dir) == f"/var/lib/meterline/spool/{socket.gethostname()}/worker-3"
    with pytest.raises(SettingsError, match="METERLINE_GATEWAY_WORKERS"):
        load_settings({"METERLINE_GATEWAY_WORKERS": "0"})
