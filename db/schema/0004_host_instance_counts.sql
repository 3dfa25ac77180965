-- Schema version 4: instance counts per host kept at write time, so that v_host_summary does not
-- count every instance on each read (35 ms at 100,000 instances; bench/README.md, benchmark 3).
--
-- A trigger on instances appends +1/-1 deltas whenever an instance arrives on, leaves, goes
-- missing from or comes back to a host. Appending takes no lock another writer waits for: a
-- migration's completing statement and a host report never block each other on a counter row.
-- fold_host_instance_counts() moves the deltas into host_instance_counts (one caller at a time,
-- others skip; the scheduler calls it after host reports, at most every few seconds). Readers
-- add the two, in one snapshot, so a count is exact whether or not a fold has run.

CREATE TABLE host_instance_counts (
  host  text PRIMARY KEY,
  n     bigint NOT NULL
);

CREATE TABLE host_instance_count_deltas (
  id     bigserial PRIMARY KEY,
  host   text NOT NULL,
  delta  integer NOT NULL
);

CREATE FUNCTION instances_count_delta() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.host IS NOT NULL AND NOT OLD.missing THEN
    INSERT INTO host_instance_count_deltas (host, delta) VALUES (OLD.host, -1);
  END IF;
  IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.host IS NOT NULL AND NOT NEW.missing THEN
    INSERT INTO host_instance_count_deltas (host, delta) VALUES (NEW.host, 1);
  END IF;
  RETURN NULL;
END $$;

-- Only rows whose counted state changes fire (the WHEN clauses are checked without calling
-- the function): claims, power states and timestamps cost nothing.
CREATE TRIGGER instances_count_insert AFTER INSERT ON instances
  FOR EACH ROW WHEN (NEW.host IS NOT NULL AND NOT NEW.missing)
  EXECUTE FUNCTION instances_count_delta();
CREATE TRIGGER instances_count_update AFTER UPDATE OF host, missing ON instances
  FOR EACH ROW WHEN (OLD.host IS DISTINCT FROM NEW.host OR OLD.missing IS DISTINCT FROM NEW.missing)
  EXECUTE FUNCTION instances_count_delta();
CREATE TRIGGER instances_count_delete AFTER DELETE ON instances
  FOR EACH ROW WHEN (OLD.host IS NOT NULL AND NOT OLD.missing)
  EXECUTE FUNCTION instances_count_delta();

-- The counts as they are now (the schema is applied under a lock that holds off writers).
INSERT INTO host_instance_counts (host, n)
  SELECT host, count(*) FROM instances WHERE host IS NOT NULL AND NOT missing GROUP BY host;

-- Folds the deltas into the counts; returns how many deltas it folded (0 if another session
-- is folding right now).
CREATE FUNCTION fold_host_instance_counts() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  folded bigint;
BEGIN
  IF NOT pg_try_advisory_xact_lock(hashtext('livemig.fold_host_instance_counts')) THEN
    RETURN 0;
  END IF;
  WITH d AS (DELETE FROM host_instance_count_deltas RETURNING host, delta),
       s AS (SELECT host, sum(delta) AS n, count(*) AS k FROM d GROUP BY host),
       u AS (INSERT INTO host_instance_counts AS c (host, n)
               SELECT host, n FROM s ORDER BY host
             ON CONFLICT (host) DO UPDATE SET n = c.n + excluded.n)
  SELECT COALESCE(sum(k), 0) INTO folded FROM s;
  DELETE FROM host_instance_counts WHERE n = 0;
  RETURN folded;
END $$;

-- Instances present per host: the folded count plus the deltas not folded yet.
CREATE VIEW v_host_instance_counts AS
SELECT host, sum(n)::bigint AS n FROM (
  SELECT host, n FROM host_instance_counts
  UNION ALL
  SELECT host, delta FROM host_instance_count_deltas) x
GROUP BY host;

-- Same columns, same meaning as version 2's. The instance count reads the counters; the
-- active migrations are aggregated once for both directions. Two hash joins instead of four.
CREATE OR REPLACE VIEW v_host_summary AS
SELECT h.hostname, h.enabled, h.disabled_reason, h.hypervisor_type, h.hypervisor_version,
       h.last_report_at, now() - h.last_report_at AS report_age,
       h.memory_total_mib, h.memory_free_mib, h.memory_reserved_mib,
       COALESCE(m.claimed, 0) AS memory_claimed_mib,
       COALESCE(ic.n, 0) AS instances,
       COALESCE(m.n_out, 0) AS migrations_out,
       COALESCE(m.n_in, 0) AS migrations_in
  FROM hosts h
  LEFT JOIN (SELECT host, sum(claimed)::numeric AS claimed, sum(n_in)::bigint AS n_in,
                    sum(n_out)::bigint AS n_out
               FROM (SELECT dest_host AS host, memory_claim_mib AS claimed, 1 AS n_in, 0 AS n_out
                       FROM migrations
                      WHERE status NOT IN ('completed', 'failed', 'cancelled')
                        AND dest_host IS NOT NULL
                     UNION ALL
                     SELECT source_host, 0, 0, 1 FROM migrations
                      WHERE status NOT IN ('completed', 'failed', 'cancelled')) a
              GROUP BY host) m
         ON m.host = h.hostname
  LEFT JOIN v_host_instance_counts ic ON ic.host = h.hostname;
