-- Raw priced events: one row per metered call, kept for 400 days.
-- ReplacingMergeTree on (org_id, started_at, event_id): a duplicate of an event (same id, same
-- gateway timestamp) collapses into one row, a second line of defence behind insert dedup tokens.
-- non_replicated_deduplication_window makes inserts that carry a token the pricer already used
-- no-ops, which is what makes a batch written twice after a crash count once.
CREATE TABLE IF NOT EXISTS usage_events
(
    event_id UUID,
    request_id String,
    org_id LowCardinality(String),
    team_id LowCardinality(String),
    key_id LowCardinality(String),
    provider LowCardinality(String),
    route LowCardinality(String),
    model_requested LowCardinality(String),
    model LowCardinality(String),
    priced_model LowCardinality(String),
    started_at DateTime64(3, 'UTC'),
    latency_ms Float64,
    ttft_ms Nullable(Float64),
    status LowCardinality(String),
    http_status UInt16,
    streamed Bool,
    sandbox Bool,
    usage_reported Bool,
    input_tokens UInt64,
    output_tokens UInt64,
    cache_read_tokens UInt64,
    cache_write_tokens UInt64,
    reasoning_tokens UInt64,
    input_cost Decimal(38, 12),
    cache_read_cost Decimal(38, 12),
    cache_write_cost Decimal(38, 12),
    output_cost Decimal(38, 12),
    total_cost Decimal(38, 12),
    pricing_status LowCardinality(String),
    price_source LowCardinality(String),
    prompt_key LowCardinality(String),
    prompt_version UInt32,
    feature_tags Array(LowCardinality(String)),
    tags Array(LowCardinality(String)),
    customer_id String,
    feature LowCardinality(String),
    user_id String,
    kafka_topic LowCardinality(String),
    kafka_partition UInt32,
    kafka_offset UInt64,
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX idx_event_id event_id TYPE bloom_filter(0.001) GRANULARITY 4,
    INDEX idx_request_id request_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(started_at)
ORDER BY (org_id, started_at, event_id)
TTL toDateTime(started_at) + INTERVAL 400 DAY
SETTINGS non_replicated_deduplication_window = 10000;
