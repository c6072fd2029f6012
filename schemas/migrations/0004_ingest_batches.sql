-- What each pricer insert was about to write, recorded just before the insert: its partition and
-- offset range, its deduplication token and the event ids in it. ClickHouse does not apply an
-- insert to a table and its materialized views atomically: a pricer killed mid-insert can leave
-- the rows in usage_events but not yet in every rollup. The next owner of the partition replays
-- the recorded batch with the same token, which ClickHouse turns into exactly the missing writes.
CREATE TABLE IF NOT EXISTS ingest_batches
(
    kafka_topic LowCardinality(String),
    kafka_partition UInt32,
    first_offset UInt64,
    last_offset UInt64,
    dedup_token String,
    event_ids Array(UUID),
    created_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(created_at)
ORDER BY (kafka_topic, kafka_partition, first_offset)
TTL toDateTime(created_at) + INTERVAL 7 DAY;
