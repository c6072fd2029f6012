-- Spend per day and model, per day and key, and per day and user, kept inside usage_events as
-- aggregate projections, for the spend log summary (spend per date, with spend per model, key
-- and user).
--
-- No rollup has users, so the summary read every call of its window: 3 s for 90 days at 10M
-- calls, growing with traffic. These projections hold a row per (day, model), (day, key) and
-- (day, user), and ClickHouse answers a query grouped by day and one of them from its projection
-- when the query filters on nothing else (the summary without a key or user filter, over whole
-- days). Projections of usage_events rather than the daily rollups, so the summary still agrees
-- with the calls themselves, as it did when it read them: a day's spend is the sum of its models,
-- of its keys and of its users, also after ReplacingMergeTree has dropped a duplicate or the
-- TTL has expired old calls (the rollups keep both). MATERIALIZE builds them for the calls
-- already stored, as a mutation, so there is no backfill to race with the pricer's inserts.
--
-- 'rebuild': a merge that replaces rows, and a lightweight DELETE (an erasure), rebuild the
-- projections of the parts they touch, so they always agree with the table (ClickHouse refuses
-- both on a table with projections otherwise).
ALTER TABLE usage_events MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild', lightweight_mutation_projection_mode = 'rebuild';

ALTER TABLE usage_events ADD PROJECTION IF NOT EXISTS by_day_model
(
    SELECT org_id, sandbox, toDate(started_at), model, sum(total_cost), count()
    GROUP BY org_id, sandbox, toDate(started_at), model
);

ALTER TABLE usage_events ADD PROJECTION IF NOT EXISTS by_day_key
(
    SELECT org_id, sandbox, toDate(started_at), key_id, sum(total_cost), count()
    GROUP BY org_id, sandbox, toDate(started_at), key_id
);

ALTER TABLE usage_events ADD PROJECTION IF NOT EXISTS by_day_user
(
    SELECT org_id, sandbox, toDate(started_at), user_id, sum(total_cost), count()
    GROUP BY org_id, sandbox, toDate(started_at), user_id
);

ALTER TABLE usage_events MATERIALIZE PROJECTION by_day_model;

ALTER TABLE usage_events MATERIALIZE PROJECTION by_day_key;

ALTER TABLE usage_events MATERIALIZE PROJECTION by_day_user;
