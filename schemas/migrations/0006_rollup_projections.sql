-- Coarser copies of the two widest daily rollups, as projections, so the aggregation endpoints
-- read rows in proportion to what they show, not to how many calls there were.
--
-- At 10M calls over 90 days, spend_daily_by_key holds a row per key, model and day (about 400k)
-- and spend_daily_by_customer one per customer, feature, model and day (millions): a 90-day
-- total read all of them. Each projection here keeps only the columns one family of reads
-- groups and filters by, and puts sandbox right after org_id, so the default read (no sandbox
-- traffic) skips sandbox rows through the primary key instead of filtering them row by row.
-- ClickHouse picks, per query, whichever projection (or the table) reads the fewest granules:
-- the queries stay as they are.
--
-- Projections are kept in step with the table on insert and rebuilt when SummingMergeTree
-- merges rows ('rebuild'); MATERIALIZE builds them for the parts already there (a mutation:
-- safe to run again, and reads stay correct while it runs).
ALTER TABLE spend_daily_by_key MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild';

-- monthly, by-team, daily, and billing analytics by date and by model
ALTER TABLE spend_daily_by_key ADD PROJECTION IF NOT EXISTS by_team_model
(
    SELECT org_id, sandbox, day, provider, team_id, model,
        sum(request_count), sum(input_tokens), sum(output_tokens), sum(total_cost)
    GROUP BY org_id, sandbox, day, provider, team_id, model
);

-- by-key, and billing analytics by key
ALTER TABLE spend_daily_by_key ADD PROJECTION IF NOT EXISTS by_key_day
(
    SELECT org_id, sandbox, day, provider, team_id, key_id,
        sum(request_count), sum(input_tokens), sum(output_tokens), sum(total_cost)
    GROUP BY org_id, sandbox, day, provider, team_id, key_id
);

ALTER TABLE spend_daily_by_key MATERIALIZE PROJECTION by_team_model;

ALTER TABLE spend_daily_by_key MATERIALIZE PROJECTION by_key_day;

ALTER TABLE spend_daily_by_customer MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild';

-- the customer list
ALTER TABLE spend_daily_by_customer ADD PROJECTION IF NOT EXISTS by_customer_day
(
    SELECT org_id, sandbox, day, provider, customer_id, sum(request_count), sum(total_cost)
    GROUP BY org_id, sandbox, day, provider, customer_id
);

-- one customer's detail: its rows are together, found through the primary key
ALTER TABLE spend_daily_by_customer ADD PROJECTION IF NOT EXISTS customer_first
(
    SELECT org_id, customer_id, sandbox, day, provider, model, sum(request_count), sum(total_cost)
    GROUP BY org_id, customer_id, sandbox, day, provider, model
);

-- features
ALTER TABLE spend_daily_by_customer ADD PROJECTION IF NOT EXISTS by_feature_day
(
    SELECT org_id, sandbox, day, provider, feature, sum(request_count), sum(total_cost)
    GROUP BY org_id, sandbox, day, provider, feature
);

-- the customer x feature cross table
ALTER TABLE spend_daily_by_customer ADD PROJECTION IF NOT EXISTS by_customer_feature
(
    SELECT org_id, sandbox, day, provider, customer_id, feature, sum(request_count), sum(total_cost)
    GROUP BY org_id, sandbox, day, provider, customer_id, feature
);

ALTER TABLE spend_daily_by_customer MATERIALIZE PROJECTION by_customer_day;

ALTER TABLE spend_daily_by_customer MATERIALIZE PROJECTION customer_first;

ALTER TABLE spend_daily_by_customer MATERIALIZE PROJECTION by_feature_day;

ALTER TABLE spend_daily_by_customer MATERIALIZE PROJECTION by_customer_feature;
