-- Schema version 4: instance counts per host kept at write time, so that v_host_summary does not
-- count every instance on each read (35 ms at 100,000 instances; bench/README.md, benchmark 3).
--
-- A trigger on instances appends +1/-1 rows to host_instance_count_deltas whenever an instance
-- arrives on, leaves, goes missing from or comes back to a host. Appending takes no lock that
-- another writer waits for: a migration's completing statement and a host report never queue on
-- a counter. fold_host_instance_counts() moves the deltas into hosts.instance_count_folded (one
-- caller at a time, others skip; the scheduler calls it after host reports, at most every 5 s).
-- Readers add the two in one snapshot, so a count is exact whether or not a fold has run.
--
-- Locks: a fold updates the hosts rows that have deltas. The other writers of hosts rows (a host
-- report, enabling or disabling a host) lock one row each and wait for no lock a fold holds, so
-- a fold can make them wait briefly but can never deadlock with them.

ALTER TABLE hosts ADD COLUMN instance_count_folded bigint NOT NULL DEFAULT 0;

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

-- The counts as they are now (creating the triggers locked out writers of instances until this
-- transaction commits).
UPDATE hosts h SET instance_count_folded = c.n
  FROM (SELECT host, count(*) AS n FROM instances WHERE host IS NOT NULL AND NOT missing
         GROUP BY host) c
 WHERE c.host = h.hostname;

-- Folds the deltas into hosts.instance_count_folded; returns how many deltas it folded (0 if
-- another session is folding right now).
CREATE FUNCTION fold_host_instance_counts() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  folded bigint;
BEGIN
  IF NOT pg_try_advisory_xact_lock(hashtext('livemig.fold_host_instance_counts')) THEN
    RETURN 0;
  END IF;
  WITH d AS (DELETE FROM host_instance_count_deltas RETURNING host, delta),
       s AS (SELECT host, sum(delta) AS n, count(*) AS k FROM d GROUP BY host),
       u AS (UPDATE hosts h SET instance_count_folded = h.instance_count_folded + s.n
               FROM s WHERE h.hostname = s.host AND s.n <> 0)
  SELECT COALESCE(sum(k), 0) INTO folded FROM s;
  RETURN folded;
END $$;

-- Instances present per host: the folded count plus the deltas not folded yet.
CREATE VIEW v_host_instance_counts AS
SELECT h.hostname AS host, h.instance_count_folded + COALESCE(d.n, 0) AS n
  FROM hosts h
  LEFT JOIN (SELECT host, sum(delta) AS n FROM host_instance_count_deltas GROUP BY host) d
         ON d.host = h.hostname;

-- Same columns, same meaning as version 2's. The instance count is the host's folded counter
-- plus its unfolded deltas; the active migrations (both directions) and the deltas, all few,
-- are aggregated together and joined once.
CREATE OR REPLACE VIEW v_host_summary AS
SELECT h.hostname, h.enabled, h.disabled_reason, h.hypervisor_type, h.hypervisor_version,
       h.last_report_at, now() - h.last_report_at AS report_age,
       h.memory_total_mib, h.memory_free_mib, h.memory_reserved_mib,
       COALESCE(x.claimed, 0) AS memory_claimed_mib,
       h.instance_count_folded + COALESCE(x.instances, 0) AS instances,
       COALESCE(x.n_out, 0) AS migrations_out,
       COALESCE(x.n_in, 0) AS migrations_in
  FROM hosts h
  LEFT JOIN (SELECT host, sum(claimed)::numeric AS claimed, sum(n_in)::bigint AS n_in,
                    sum(n_out)::bigint AS n_out, sum(instances)::bigint AS instances
               FROM (SELECT dest_host AS host, memory_claim_mib AS claimed, 1 AS n_in, 0 AS n_out,
                            0 AS instances
                       FROM migrations
                      WHERE status NOT IN ('completed', 'failed', 'cancelled')
                        AND dest_host IS NOT NULL
                     UNION ALL
                     SELECT source_host, 0, 0, 1, 0 FROM migrations
                      WHERE status NOT IN ('completed', 'failed', 'cancelled')
                     UNION ALL
                     SELECT host, 0, 0, 0, delta FROM host_instance_count_deltas) a
              GROUP BY host) x
         ON x.host = h.hostname;
