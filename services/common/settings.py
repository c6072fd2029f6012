"""Typed settings, built once from ``METERLINE_*`` environment variables and validated at start-up.

This is the only module that reads the environment. Each service takes the part it needs.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """A setting is present but unusable; raised at start-up, never later."""


RAW_TOPIC = "meterline.usage.raw"
DLQ_TOPIC = "meterline.usage.dlq"


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap: str | None  # None: the embedded default starts its own broker
    raw_topic: str = RAW_TOPIC
    dlq_topic: str = DLQ_TOPIC
    partitions: int | None = None  # of the raw topic, when Meterline creates it; None: see raw_partitions

    def raw_partitions(self) -> int:
        """Partitions of the raw topic to create. On a broker of your own, 6: room for six pricers
        to share the work. On the embedded broker, one: ``meterline up`` runs one pricer, so more
        partitions share nothing out, and each adds a row to every insert's record and a range to
        read back when an insert is replayed."""
        if self.partitions is not None:
            return self.partitions
        return 1 if self.bootstrap is None else 6


@dataclass(frozen=True)
class StoreSettings:
    url: str  # chdb:///path or http(s)://user:pass@host:8123/db

    @property
    def is_embedded(self) -> bool:
        return self.url.startswith("chdb://")

    @property
    def chdb_path(self) -> Path:
        return Path(urlsplit(self.url).path or "./.meterline/clickhouse")


@dataclass(frozen=True)
class GatewaySettings:
    port: int
    host: str
    openai_base_url: str
    anthropic_base_url: str
    query_url: str  # where the gateway learns who a platform key belongs to
    max_body_bytes: int
    connect_timeout_s: float
    read_timeout_s: float
    key_cache_ttl_s: float
    event_queue_size: int
    spool_dir: Path
    spool_max_bytes: int
    publish_timeout_s: float
    # `meterline gateway` runs this many processes sharing the port (SO_REUSEPORT).
    workers: int = 1
    # Set by the supervisor in each worker: its index, its own spool directory, a shared port.
    worker_index: int | None = None


@dataclass(frozen=True)
class PricerSettings:
    group_id: str
    batch_max_events: int
    batch_max_wait_s: float
    catalog_refresh_s: float
    dlq_breaker_ratio: float  # stop when more than this share of a window is poison
    dlq_breaker_window: int
    session_timeout_ms: int  # how soon the group notices a dead pricer and hands its partitions on


@dataclass(frozen=True)
class QuerySettings:
    port: int
    host: str
    key_cache_ttl_s: float


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings
    store: StoreSettings
    gateway: GatewaySettings
    pricer: PricerSettings
    query: QuerySettings
    admin_key: str | None
    data_dir: Path
    log_level: str = "info"
    log_json: bool = False


def _optional_int(env: Mapping[str, str], name: str, lo: int = 0, hi: int = 2**31) -> int | None:
    """The setting as an integer within [lo, hi], or None when it is unset or empty."""
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, lo: int = 0, hi: int = 2**31) -> int:
    value = _optional_int(env, name, lo, hi)
    return default if value is None else value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise SettingsError(f"{name} must be a finite number, got {raw!r}")
    if value < 0:
        raise SettingsError(f"{name} must not be negative, got {value}")
    return value


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name) or default
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SettingsError(f"{name} must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


def _store_url(env: Mapping[str, str], data_dir: Path) -> str:
    value = env.get("METERLINE_CLICKHOUSE_URL") or f"chdb://{(data_dir / 'clickhouse').resolve()}"
    scheme = urlsplit(value).scheme
    if scheme not in ("chdb", "http", "https"):
        raise SettingsError(
            f"METERLINE_CLICKHOUSE_URL must be chdb:///path or http(s)://user:pass@host:8123/db, got {value!r}"
        )
    return value


def load_settings(env: Mapping[str, str] | None = None, data_dir: Path | None = None) -> Settings:
    env = os.environ if env is None else env
    data_dir = Path(data_dir or env.get("METERLINE_DATA_DIR") or "./.meterline")
    query_port = _int(env, "METERLINE_QUERY_PORT", 8081, 0, 65535)
    gateway_port = _int(env, "METERLINE_GATEWAY_PORT", 8080, 0, 65535)
    host = env.get("METERLINE_HOST", "127.0.0.1")
    log_level = (env.get("METERLINE_LOG_LEVEL") or "info").lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise SettingsError(f"METERLINE_LOG_LEVEL must be debug, info, warning or error, got {log_level!r}")
    worker_index = _optional_int(env, "METERLINE_GATEWAY_WORKER_INDEX", 0, 1023)
    # "{hostname}" keeps replicas that share a volume in directories of their own; a worker of
    # a multi-process gateway keeps a directory of its own below that, which the worker that
    # takes its index after a restart replays.
    spool_dir = Path((env.get("METERLINE_SPOOL_DIR") or str(data_dir / "spool")).replace("{hostname}", socket.gethostname()))
    if worker_index is not None:
        spool_dir = spool_dir / f"worker-{worker_index}"
    return Settings(
        kafka=KafkaSettings(
            bootstrap=env.get("METERLINE_KAFKA_BOOTSTRAP") or None,
            partitions=_optional_int(env, "METERLINE_KAFKA_PARTITIONS", 1, 1024),
        ),
        store=StoreSettings(url=_store_url(env, data_dir)),
        gateway=GatewaySettings(
            port=gateway_port,
            host=host,
            openai_base_url=_url(env, "METERLINE_OPENAI_BASE_URL", "https://api.openai.com/v1"),
            anthropic_base_url=_url(env, "METERLINE_ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
            query_url=_url(env, "METERLINE_QUERY_URL", f"http://127.0.0.1:{query_port}"),
            max_body_bytes=_int(env, "METERLINE_MAX_BODY_BYTES", 32 * 1024 * 1024, 1024),
            connect_timeout_s=_float(env, "METERLINE_UPSTREAM_CONNECT_TIMEOUT", 10.0),
            read_timeout_s=_float(env, "METERLINE_UPSTREAM_READ_TIMEOUT", 600.0),
            key_cache_ttl_s=_float(env, "METERLINE_KEY_CACHE_TTL", 2.0),
            event_queue_size=_int(env, "METERLINE_EVENT_QUEUE_SIZE", 100_000, 1),
            spool_dir=spool_dir,
            spool_max_bytes=_int(env, "METERLINE_SPOOL_MAX_BYTES", 1024**3, 1024, 2**50),
            publish_timeout_s=_float(env, "METERLINE_PUBLISH_TIMEOUT", 5.0),
            workers=_int(env, "METERLINE_GATEWAY_WORKERS", 1, 1, 256),
            worker_index=worker_index,
        ),
        pricer=PricerSettings(
            group_id=env.get("METERLINE_PRICER_GROUP", "meterline-pricer"),
            batch_max_events=_int(env, "METERLINE_BATCH_MAX_EVENTS", 20_000, 1),
            batch_max_wait_s=_float(env, "METERLINE_BATCH_MAX_WAIT", 0.5),
            catalog_refresh_s=_float(env, "METERLINE_CATALOG_REFRESH", 2.0),
            dlq_breaker_ratio=_float(env, "METERLINE_DLQ_BREAKER_RATIO", 0.5),
            dlq_breaker_window=_int(env, "METERLINE_DLQ_BREAKER_WINDOW", 1000, 1),
            session_timeout_ms=_int(env, "METERLINE_PRICER_SESSION_TIMEOUT_MS", 10_000, 1_000, 300_000),
        ),
        query=QuerySettings(
            port=query_port,
            host=host,
            key_cache_ttl_s=_float(env, "METERLINE_KEY_CACHE_TTL", 2.0),
        ),
        admin_key=env.get("METERLINE_ADMIN_KEY") or None,
        data_dir=data_dir,
        log_level=log_level,
        log_json=env.get("METERLINE_LOG_JSON", "") in ("1", "true", "yes"),
    )
