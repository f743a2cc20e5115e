-- llmspend DuckDB macros (loaded by pipeline.analytics.connect).
-- {placeholders} are the latency bucket layout's constants (schemas/latency_buckets.py).
-- Quantile definition everywhere: the lower nearest rank, the value at 0-based rank
-- floor(q * (n - 1)) of the sorted values, reported as its bucket's representative.

-- Bucket of one latency in ms (identical to pipeline.sketch.bucket_indices).
CREATE OR REPLACE MACRO llmspend_latency_bucket(ms) AS
    CASE WHEN ms IS NULL OR isnan(ms) OR NOT ms > {min_ms} THEN 0
         ELSE least({max_bucket}, ceil(ln(ms) / {log_gamma}))::SMALLINT END;

-- The value a bucket reports (within 1 % of everything in it).
CREATE OR REPLACE MACRO llmspend_bucket_value(b) AS
    CASE WHEN b <= 0 THEN {min_ms}
         ELSE 2 * pow({gamma}, least(b, {max_bucket})) / ({gamma} + 1) END;

-- Quantile q (0..1) of a sketch given as a list of {bucket, count} (duplicates of a
-- bucket allowed: flatten(list(latency_buckets)) over any grouping is a valid sketch).
-- One pass over the sorted list, no subquery: the fold starts from a sentinel whose
-- count is -(rank + 1), so the running count turns >= 0 at the bucket holding the
-- 0-based rank floor(q * (n - 1)), and that bucket is kept from then on.
CREATE OR REPLACE MACRO llmspend_sketch_quantile(sketch, q) AS
    CASE WHEN coalesce(len(sketch), 0) = 0 THEN NULL ELSE llmspend_bucket_value(list_reduce(
        [{'bucket': -1::SMALLINT,
          'count': (-1 - floor(q * (list_sum(list_transform(sketch, lambda y: y.count)) - 1)))
                   ::BIGINT}] || list_sort(sketch),
        lambda acc, x: {'bucket': CASE WHEN acc.count >= 0 THEN acc.bucket ELSE x.bucket END,
                        'count': acc.count + x.count}).bucket) END;
CREATE OR REPLACE MACRO llmspend_p50(sketch) AS llmspend_sketch_quantile(sketch, 0.50);
CREATE OR REPLACE MACRO llmspend_p95(sketch) AS llmspend_sketch_quantile(sketch, 0.95);
CREATE OR REPLACE MACRO llmspend_p99(sketch) AS llmspend_sketch_quantile(sketch, 0.99);

-- One sketch from many: counts added per bucket, buckets ascending.
CREATE OR REPLACE MACRO llmspend_sketch_merge(sketch) AS (
    SELECT coalesce(list({'bucket': bucket, 'count': n} ORDER BY bucket), [])
    FROM (SELECT u.bucket AS bucket, sum(u.count)::BIGINT AS n
          FROM (SELECT unnest(sketch) AS u) GROUP BY u.bucket)
);

-- Aggregate: the sketch of raw latencies (nulls skipped), e.g. over the calls view:
--   SELECT model, llmspend_p95(llmspend_sketch_of(latency_ms)) FROM calls GROUP BY model
CREATE OR REPLACE MACRO llmspend_sketch_of(ms) AS
    list({'bucket': llmspend_latency_bucket(ms), 'count': 1::BIGINT})
        FILTER (WHERE ms IS NOT NULL AND NOT isnan(ms));
