-- llmspend DuckDB views over the Parquet lake (loaded by pipeline.analytics.connect).
-- {calls_source}, {agg_1m_source}, {alerts_source}, {agg_1h_source} and
-- {agg_1d_source} are the datasets' files
-- (read_parquet over their hive-partitioned globs, or an empty typed relation while a
-- dataset has no file yet); the other {placeholders} are column lists from schemas/.
-- Hive partition columns: tenant (VARCHAR), dt (DATE, UTC), hour (INTEGER, calls only).

-- Every call once: a client retry's twin (same call_id, hence same tenant and start
-- time, hence same partition, and the same content) is dropped. DISTINCT ON the
-- columns twins share (not only call_id) lets filters on tenant/dt/hour prune files
-- and filters on start_time skip row groups.
-- cost_usd and list_cost_usd are DECIMAL(38,12).
CREATE OR REPLACE VIEW calls AS
SELECT DISTINCT ON (tenant, dt, hour, start_time, call_id)
       * EXCLUDE (_kafka_partition, _kafka_offset)
FROM {calls_source};

-- The latest version of each 1-minute partial (a re-emission replaces its predecessor;
-- an agg_id always lands on the same llm_agg_1m partition, so offsets order them).
-- An agg_id fixes its window, so partitioning by view and window_start too changes
-- nothing but lets filters on them reach the files.
CREATE OR REPLACE VIEW agg_1m_partials AS
SELECT * EXCLUDE (_kafka_partition, _kafka_offset)
FROM {agg_1m_source}
QUALIFY row_number() OVER (PARTITION BY tenant, dt, view, window_start, agg_id
                           ORDER BY _kafka_offset DESC) = 1;

-- 1-minute aggregates: the partials of every llm_calls partition merged per
-- (view, window, key): counts and costs summed, latency sketches added (the partials'
-- bucket lists concatenated: a bucket may repeat, which every llmspend_ macro accepts;
-- llmspend_sketch_merge gives the canonical form), distinct units united. Filter on
-- view ('group', 'user' or 'unit') before adding rows up.
CREATE OR REPLACE VIEW agg_1m AS
SELECT view, {agg_keys}, window_start, any_value(window_end) AS window_end,
       any_value(dt) AS dt,
       {agg_count_sums},
       sum(cost_usd) AS cost_usd, sum(list_cost_usd) AS list_cost_usd,
       flatten(list(latency_buckets)) AS latency_buckets,
       flatten(list(ttft_buckets)) AS ttft_buckets,
       CASE WHEN view = 'unit' THEN len(list_distinct(flatten(
           list(unit_hashes) FILTER (unit_hashes IS NOT NULL)))) END AS units,
       CASE WHEN view = 'unit' THEN list_sort(list_distinct(flatten(
           list(unit_hashes) FILTER (unit_hashes IS NOT NULL)))) END AS unit_hashes,
       count(*) AS partials
FROM agg_1m_partials
GROUP BY view, {agg_keys}, window_start;

-- Hourly and daily rollups of closed days (written by jobs/rollup.py from the agg_1m
-- partials; one row per view, key and hour or day; sketches merged, units united).
-- Days not rolled up yet (today, until jobs.closed_after_s past midnight) are only in
-- agg_1m.
CREATE OR REPLACE VIEW agg_1h AS
SELECT * FROM {agg_1h_source};

CREATE OR REPLACE VIEW agg_1d AS
SELECT * FROM {agg_1d_source};

-- Every alert record once (a record re-written after a restart has its twin's id),
-- evidence as JSON.
CREATE OR REPLACE VIEW alert_events AS
SELECT * EXCLUDE (evidence, _kafka_partition, _kafka_offset), evidence::JSON AS evidence,
       _kafka_offset AS _seq
FROM {alerts_source}
QUALIFY row_number() OVER (PARTITION BY id ORDER BY _kafka_offset) = 1;

-- The latest state of each incident (a dedup_key always lands on the same partition).
CREATE OR REPLACE VIEW alerts AS
SELECT * EXCLUDE (_seq)
FROM alert_events
QUALIFY row_number() OVER (PARTITION BY dedup_key ORDER BY _seq DESC) = 1;
