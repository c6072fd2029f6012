-- Spend per user and day, kept inside usage_events as an aggregate projection, for the spend
-- log summary (spend per date, with spend per model, key and user).
--
-- Models and keys per day come from spend_daily_by_key; no rollup has users, so the summary read
-- every call of its window: 3 s for 90 days at 10M calls, growing with traffic. This projection
-- holds a row per (day, user), and ClickHouse answers a query grouped by day and user from it
-- when the query filters on nothing else (the summary without a key or user filter, over whole
-- days). A projection rather than a new rollup table: MATERIALIZE builds it for the calls
-- already stored, as a mutation, so there is no backfill to race with the pricer's inserts.
--
-- usage_events is a ReplacingMergeTree: 'rebuild' rebuilds the projection whenever a merge
-- replaces rows, so it always agrees with the table.
ALTER TABLE usage_events MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild';

ALTER TABLE usage_events ADD PROJECTION IF NOT EXISTS by_user_day
(
    SELECT org_id, sandbox, toDate(started_at), user_id, sum(total_cost), count()
    GROUP BY org_id, sandbox, toDate(started_at), user_id
);

ALTER TABLE usage_events MATERIALIZE PROJECTION by_user_day;
