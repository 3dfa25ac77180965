-- Schema version 2: indexes and a view shape for 10,000 hosts and 100,000 instances/migrations
-- (bench/README.md, benchmark 3), and JIT off for this OLTP database.

-- Active outbound migrations per host (like migrations_dest_active for inbound ones): the host
-- queries count them per host.
CREATE INDEX migrations_source_active ON migrations(source_host)
  WHERE status NOT IN ('completed', 'failed', 'cancelled');

-- Instances present on a host: counted per host by the host queries and v_host_summary
-- (an index-only scan in host order instead of reading the table).
CREATE INDEX instances_host_present ON instances(host) WHERE NOT missing;

-- Destination choice reads hosts by memory available after the dom0 reserve, best first, and
-- stops after the few it needs (HostStore::ListDestinationCandidates) instead of reading and
-- sorting every host.
CREATE INDEX hosts_memory_available ON hosts ((memory_free_mib - memory_reserved_mib) DESC,
  hostname);

-- Same columns, same meaning; the per-host counts are aggregated once and joined instead of
-- four correlated subqueries per host (581 ms -> tens of ms at 10,000 hosts).
CREATE OR REPLACE VIEW v_host_summary AS
SELECT h.hostname, h.enabled, h.disabled_reason, h.hypervisor_type, h.hypervisor_version,
       h.last_report_at, now() - h.last_report_at AS report_age,
       h.memory_total_mib, h.memory_free_mib, h.memory_reserved_mib,
       COALESCE(mi.claimed, 0) AS memory_claimed_mib,
       COALESCE(ic.n, 0) AS instances,
       COALESCE(mo.n, 0) AS migrations_out,
       COALESCE(mi.n, 0) AS migrations_in
  FROM hosts h
  LEFT JOIN (SELECT dest_host, sum(memory_claim_mib) AS claimed, count(*) AS n FROM migrations
              WHERE status NOT IN ('completed', 'failed', 'cancelled') GROUP BY dest_host) mi
         ON mi.dest_host = h.hostname
  LEFT JOIN (SELECT source_host, count(*) AS n FROM migrations
              WHERE status NOT IN ('completed', 'failed', 'cancelled') GROUP BY source_host) mo
         ON mo.source_host = h.hostname
  LEFT JOIN (SELECT host, count(*) AS n FROM instances WHERE NOT missing GROUP BY host) ic
         ON ic.host = h.hostname;

-- Debian's PostgreSQL 15 compiles any plan above jit_above_cost with LLVM: 200-400 ms spent
-- compiling queries that run in milliseconds (v_host_summary, the host list). Off for every
-- session of this database (dashboards included; the scheduler's connections also set it).
-- Only the database's owner may do this: otherwise a notice, and the schema still applies.
DO $$
BEGIN
  EXECUTE format('ALTER DATABASE %I SET jit = off', current_database());
EXCEPTION WHEN insufficient_privilege THEN
  RAISE NOTICE 'jit not turned off for database %: not its owner (set it in postgresql.conf)',
    current_database();
END $$;
