-- Daily rollups the aggregation endpoints read. SummingMergeTree folds rows with equal keys in
-- the background, so readers always sum() and GROUP BY. The targets carry a dedup window so that
-- a deduplicated insert into usage_events is deduplicated here too.
CREATE TABLE IF NOT EXISTS spend_daily_by_key
(
    org_id LowCardinality(String),
    day Date,
    provider LowCardinality(String),
    sandbox Bool,
    team_id LowCardinality(String),
    key_id LowCardinality(String),
    model LowCardinality(String),
    request_count UInt64,
    error_count UInt64,
    input_tokens UInt64,
    output_tokens UInt64,
    cache_read_tokens UInt64,
    cache_write_tokens UInt64,
    input_cost Decimal(38, 12),
    cache_read_cost Decimal(38, 12),
    cache_write_cost Decimal(38, 12),
    output_cost Decimal(38, 12),
    total_cost Decimal(38, 12)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (org_id, day, provider, sandbox, team_id, key_id, model)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS spend_daily_by_key_mv TO spend_daily_by_key AS
SELECT
    org_id, toDate(started_at) AS day, provider, sandbox, team_id, key_id, model,
    count() AS request_count,
    countIf(status NOT IN ('ok', 'recorded')) AS error_count,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(input_cost) AS input_cost,
    sum(cache_read_cost) AS cache_read_cost,
    sum(cache_write_cost) AS cache_write_cost,
    sum(output_cost) AS output_cost,
    sum(total_cost) AS total_cost
FROM usage_events
GROUP BY org_id, day, provider, sandbox, team_id, key_id, model;

CREATE TABLE IF NOT EXISTS spend_daily_by_prompt
(
    org_id LowCardinality(String),
    day Date,
    provider LowCardinality(String),
    sandbox Bool,
    prompt_key LowCardinality(String),
    prompt_version UInt32,
    model LowCardinality(String),
    request_count UInt64,
    error_count UInt64,
    input_tokens UInt64,
    output_tokens UInt64,
    cache_read_tokens UInt64,
    cache_write_tokens UInt64,
    input_cost Decimal(38, 12),
    cache_read_cost Decimal(38, 12),
    cache_write_cost Decimal(38, 12),
    output_cost Decimal(38, 12),
    total_cost Decimal(38, 12)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (org_id, day, provider, sandbox, prompt_key, prompt_version, model)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS spend_daily_by_prompt_mv TO spend_daily_by_prompt AS
SELECT
    org_id, toDate(started_at) AS day, provider, sandbox, prompt_key, prompt_version, model,
    count() AS request_count,
    countIf(status NOT IN ('ok', 'recorded')) AS error_count,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(cache_read_tokens) AS cache_read_tokens,
    sum(cache_write_tokens) AS cache_write_tokens,
    sum(input_cost) AS input_cost,
    sum(cache_read_cost) AS cache_read_cost,
    sum(cache_write_cost) AS cache_write_cost,
    sum(output_cost) AS output_cost,
    sum(total_cost) AS total_cost
FROM usage_events
WHERE prompt_key != ''
GROUP BY org_id, day, provider, sandbox, prompt_key, prompt_version, model;
