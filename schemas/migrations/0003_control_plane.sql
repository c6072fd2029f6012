-- Control plane: organisations, teams, platform keys, prompts and versions, price overrides.
-- The operator organisation (created on first start) is the one whose admins may create others.
-- Rows are never updated in place: a change is a new row with a later updated_at, and readers use
-- FINAL (these tables are small) so the newest row wins.
CREATE TABLE IF NOT EXISTS orgs
(
    org_id String,
    name String,
    operator Bool DEFAULT false,
    created_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY org_id;

CREATE TABLE IF NOT EXISTS teams
(
    org_id String,
    team_id String,
    name String,
    created_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (org_id, team_id);

-- Platform keys are stored as SHA-256 of the full key; only prefix and last four are kept to show.
CREATE TABLE IF NOT EXISTS api_keys
(
    org_id String,
    key_id String,
    key_hash String,
    prefix String,
    last4 String,
    name String,
    team_id String,
    role LowCardinality(String),
    created_at DateTime64(3, 'UTC'),
    revoked_at Nullable(DateTime64(3, 'UTC')),
    updated_at DateTime64(3, 'UTC'),
    INDEX idx_key_hash key_hash TYPE bloom_filter(0.001) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (org_id, key_id);

CREATE TABLE IF NOT EXISTS prompts
(
    org_id String,
    prompt_key String,
    description String,
    created_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (org_id, prompt_key);

CREATE TABLE IF NOT EXISTS prompt_versions
(
    org_id String,
    prompt_key String,
    version UInt32,
    model String,
    temperature Nullable(Float64),
    max_tokens Nullable(UInt32),
    created_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(created_at)
ORDER BY (org_id, prompt_key, version);

-- Activation history, append-only: the active version at time T is the newest activation at or
-- before T, so re-pricing an old event attributes it the way it was attributed when it happened.
CREATE TABLE IF NOT EXISTS prompt_activations
(
    org_id String,
    prompt_key String,
    version UInt32,
    activated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (org_id, prompt_key, activated_at, version);

-- Negotiated or custom prices, per organisation ('' = every organisation), taking precedence over
-- the genai-prices catalog from effective_from on. Prices are USD per million tokens.
CREATE TABLE IF NOT EXISTS price_overrides
(
    org_id String,
    provider LowCardinality(String),
    model String,
    effective_from DateTime64(3, 'UTC'),
    input_per_mtok Decimal(38, 12),
    cache_read_per_mtok Nullable(Decimal(38, 12)),
    cache_write_per_mtok Nullable(Decimal(38, 12)),
    output_per_mtok Decimal(38, 12),
    created_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(created_at)
ORDER BY (org_id, provider, model, effective_from);
