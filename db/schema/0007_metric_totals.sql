-- Schema version 7: Prometheus counters that never decrease (issue 20).
--
-- /metrics derives its counters and histograms from the rows present (migrations and their
-- event log) plus what purges removed: the purge of finished migrations folds the purged rows'
-- contributions into metric_totals in the same statement as the delete (PgStores'
-- PurgeFinished), so a scrape sees either the rows or their totals, never neither. Counters then
-- survive purges and restarts, and every scheduler replica reports the same figures.

-- The pre-check that refused the migration (a scheduler check's name such as "memory", or the
-- agent's, e.g. "cpu_compatible"); NULL when no pre-check refused it.
ALTER TABLE migrations ADD COLUMN refused_check text;

-- When the migration first entered `error` (it may leave it: error -> completed | failed); NULL
-- when it never did.
ALTER TABLE migrations ADD COLUMN error_at timestamptz;
UPDATE migrations m SET error_at = e.at
  FROM (SELECT migration_id, min(created_at) AS at FROM migration_events
         WHERE status = 'error' GROUP BY migration_id) e
 WHERE e.migration_id = m.id;

-- One row per counter or histogram bucket, in the shape of the live figures: `family` (e.g.
-- migrations, step_duration), `label` (outcome, check or step; '' when none), `le_ms` (a
-- histogram bucket's upper bound in ms, -1 for +Inf; 0 for a counter), `count` (rows) and `sum`
-- (bytes, or the bucket's values in ms). Only purges write it (adding, never subtracting).
CREATE TABLE metric_totals (
  family  text NOT NULL,
  label   text NOT NULL DEFAULT '',
  le_ms   bigint NOT NULL DEFAULT 0,
  count   bigint NOT NULL DEFAULT 0 CHECK (count >= 0),
  sum     numeric NOT NULL DEFAULT 0 CHECK (sum >= 0),
  PRIMARY KEY (family, label, le_ms)
);
