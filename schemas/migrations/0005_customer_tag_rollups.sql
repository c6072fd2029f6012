-- Rollups for customer, feature and tag analytics and for the billing export's page index.

-- Per customer and feature: customer lists and details, feature analytics, the cross table.
CREATE TABLE IF NOT EXISTS spend_daily_by_customer
(
    org_id LowCardinality(String),
    day Date,
    provider LowCardinality(String),
    sandbox Bool,
    customer_id String,
    feature LowCardinality(String),
    model LowCardinality(String),
    request_count UInt64,
    input_tokens UInt64,
    output_tokens UInt64,
    total_cost Decimal(38, 12)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (org_id, day, provider, sandbox, customer_id, feature, model)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS spend_daily_by_customer_mv TO spend_daily_by_customer AS
SELECT
    org_id, toDate(started_at) AS day, provider, sandbox, customer_id, feature, model,
    count() AS request_count,
    sum(input_tokens) AS input_tokens,
    sum(output_tokens) AS output_tokens,
    sum(total_cost) AS total_cost
FROM usage_events
GROUP BY org_id, day, provider, sandbox, customer_id, feature, model;

-- Per tag: feature tags, the x-feature header and key:value tags, each counted once per call.
CREATE TABLE IF NOT EXISTS spend_daily_by_tag
(
    org_id LowCardinality(String),
    day Date,
    provider LowCardinality(String),
    sandbox Bool,
    tag String,
    request_count UInt64,
    total_cost Decimal(38, 12)
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (org_id, day, provider, sandbox, tag)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS spend_daily_by_tag_mv TO spend_daily_by_tag AS
SELECT
    org_id, toDate(started_at) AS day, provider, sandbox, tag,
    count() AS request_count,
    sum(total_cost) AS total_cost
FROM usage_events
ARRAY JOIN arrayDistinct(arrayConcat(feature_tags, tags, if(feature = '', [], [feature]))) AS tag
GROUP BY org_id, day, provider, sandbox, tag;

-- Billing line items per day (one per kind of token a call used): lets the paginated billing
-- export find the day a page starts on without counting raw rows.
CREATE TABLE IF NOT EXISTS billing_items_daily
(
    org_id LowCardinality(String),
    day Date,
    sandbox Bool,
    items UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (org_id, day, sandbox)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS billing_items_daily_mv TO billing_items_daily AS
SELECT
    org_id, toDate(started_at) AS day, sandbox,
    sum((input_tokens > cache_read_tokens + cache_write_tokens) + (cache_read_tokens > 0)
        + (cache_write_tokens > 0) + (output_tokens > 0)) AS items
FROM usage_events
GROUP BY org_id, day, sandbox;
