-- Schema version 1: hosts, instances, migrations with their event log, evacuations.
-- Applied by the scheduler at start-up (db/schema.cc) inside one transaction, under an advisory
-- lock. Roles are server-wide, so this file creates none (deploy/ creates the dashboard role).

CREATE TABLE hosts (
  hostname              text PRIMARY KEY CHECK (hostname ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$'),
  agent_address         text NOT NULL DEFAULT '',
  agent_version         text NOT NULL DEFAULT '',
  hypervisor_type       text NOT NULL DEFAULT '',
  -- libvirt's encoding: major*1000000 + minor*1000 + release (Xen 4.17 -> 4017000)
  hypervisor_version    bigint NOT NULL DEFAULT 0,
  libvirt_version       bigint NOT NULL DEFAULT 0,
  cpu_arch              text NOT NULL DEFAULT '',
  cpu_model             text NOT NULL DEFAULT '',
  cpu_features          jsonb NOT NULL DEFAULT '[]',   -- array of feature names
  cpu_xml               text NOT NULL DEFAULT '',      -- host CPU definition, for CompareCPU
  memory_total_mib      bigint NOT NULL DEFAULT 0,
  memory_free_mib       bigint NOT NULL DEFAULT 0,
  memory_reserved_mib   bigint NOT NULL DEFAULT 0,     -- dom0 reserve
  network_segments      jsonb NOT NULL DEFAULT '[]',   -- bridges / L2 segments
  shared_storage        jsonb NOT NULL DEFAULT '[]',   -- shared mounts
  instance_path         text NOT NULL DEFAULT '',
  capabilities          jsonb NOT NULL DEFAULT '{}',   -- backend capabilities (abort, post-copy, ...)
  agent_boot_id         text NOT NULL DEFAULT '',      -- changes when the agent restarts
  report_seq            bigint NOT NULL DEFAULT 0,     -- last accepted report sequence number
  last_report_at        timestamptz,
  enabled               boolean NOT NULL DEFAULT true,
  disabled_reason       text,
  disabled_by           text,
  disabled_at           timestamptz,
  created_at            timestamptz NOT NULL DEFAULT now(),
  updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE instances (
  uuid                  uuid PRIMARY KEY,
  name                  text NOT NULL DEFAULT '',
  host                  text REFERENCES hosts(hostname),
  -- the hypervisor's view: running, paused, shutoff, crashed, ...
  power_state           text NOT NULL DEFAULT 'unknown',
  memory_mib            bigint NOT NULL DEFAULT 0,
  vcpus                 integer NOT NULL DEFAULT 0,
  -- compare-and-swap claim: NULL when idle, 'migrating' while a migration holds the instance
  task_state            text CHECK (task_state IS NULL OR task_state IN ('migrating')),
  missing               boolean NOT NULL DEFAULT false,  -- no longer reported by its host
  missing_since         timestamptz,
  last_seen_at          timestamptz,
  created_at            timestamptz NOT NULL DEFAULT now(),
  updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX instances_host ON instances(host);

CREATE TABLE migrations (
  id                    bigserial PRIMARY KEY,   -- the operator-facing number (Nova's id)
  uuid                  uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),  -- agents' step key
  request_id            text UNIQUE,  -- the caller's idempotency key (NULL: none given)
  instance_uuid         uuid NOT NULL REFERENCES instances(uuid),
  source_host           text NOT NULL REFERENCES hosts(hostname),
  dest_host             text REFERENCES hosts(hostname),  -- NULL until the scheduler chose one
  requested_dest        text,                             -- what the caller asked for, if anything
  status                text NOT NULL CHECK (status IN ('accepted', 'queued', 'preparing',
                          'running', 'running (post-copy)', 'post-migrating', 'completed',
                          'failed', 'cancelled', 'error')),
  step                  text NOT NULL DEFAULT '',   -- the flow step in progress or last done
  live                  boolean NOT NULL DEFAULT true,
  block_migration       text NOT NULL DEFAULT 'auto' CHECK (block_migration IN ('auto', 'yes', 'no')),
  options               jsonb NOT NULL DEFAULT '{}',  -- completion timeout/action, downtime, ...
  memory_claim_mib      bigint NOT NULL DEFAULT 0,    -- claimed on dest while the row is active
  requested_by          text NOT NULL,
  aborted_by            text,
  abort_requested_at    timestamptz,
  force_complete_requested_by text,
  force_complete_requested_at timestamptz,
  failure_reason        text,
  -- progress (written at a bounded rate while running)
  phase                 text NOT NULL DEFAULT '',     -- pre-copy, post-copy, paused-to-complete
  bytes_total           bigint,
  bytes_processed       bigint,
  bytes_remaining       bigint,
  percent               real,
  downtime_ms           bigint,
  elapsed_ms            bigint,
  progress_at           timestamptz,
  -- ownership: the scheduler process driving the row
  owner                 text,
  lease_expires_at      timestamptz,
  created_at            timestamptz NOT NULL DEFAULT now(),
  updated_at            timestamptz NOT NULL DEFAULT now(),
  started_at            timestamptz,   -- the transfer started
  finished_at           timestamptz,
  CHECK (dest_host IS NULL OR dest_host <> source_host),
  CHECK ((status IN ('completed', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
);
-- One active migration per instance, enforced by the database whatever the processes do.
CREATE UNIQUE INDEX migrations_one_active_per_instance ON migrations(instance_uuid)
  WHERE status NOT IN ('completed', 'failed', 'cancelled');
CREATE INDEX migrations_active ON migrations(status, lease_expires_at)
  WHERE status NOT IN ('completed', 'failed', 'cancelled');
CREATE INDEX migrations_dest_active ON migrations(dest_host)
  WHERE status NOT IN ('completed', 'failed', 'cancelled');
CREATE INDEX migrations_instance ON migrations(instance_uuid, id DESC);
CREATE INDEX migrations_source ON migrations(source_host, id DESC);
CREATE INDEX migrations_dest ON migrations(dest_host, id DESC);
CREATE INDEX migrations_status_id ON migrations(status, id DESC);
CREATE INDEX migrations_finished ON migrations(finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE migration_events (
  id                    bigserial PRIMARY KEY,
  migration_id          bigint NOT NULL REFERENCES migrations(id) ON DELETE CASCADE,
  step                  text NOT NULL,
  -- intent (before the side effect), result (after it), info (anything else)
  kind                  text NOT NULL CHECK (kind IN ('intent', 'result', 'info')),
  outcome               text NOT NULL DEFAULT '',   -- ok, failed, retry, ... ('' for an intent)
  status                text NOT NULL DEFAULT '',   -- the migration's status after this event
  actor                 text NOT NULL DEFAULT '',   -- scheduler id or the requesting user
  detail                text NOT NULL DEFAULT '',
  started_at            timestamptz NOT NULL DEFAULT now(),
  finished_at           timestamptz,
  duration_ms           bigint,
  created_at            timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX migration_events_migration ON migration_events(migration_id, id);

-- The event log is append-only: rows are never changed (purging whole migrations deletes them).
CREATE FUNCTION migration_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'migration_events is append-only (event %)', OLD.id
    USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER migration_events_no_update BEFORE UPDATE ON migration_events
  FOR EACH ROW EXECUTE FUNCTION migration_events_append_only();

CREATE TABLE evacuations (
  id                    bigserial PRIMARY KEY,
  host                  text NOT NULL REFERENCES hosts(hostname),
  status                text NOT NULL CHECK (status IN ('running', 'completed', 'failed',
                          'cancelled')),
  max_parallel          integer NOT NULL CHECK (max_parallel > 0),
  requested_by          text NOT NULL,
  reason                text NOT NULL DEFAULT '',
  created_at            timestamptz NOT NULL DEFAULT now(),
  updated_at            timestamptz NOT NULL DEFAULT now(),
  finished_at           timestamptz
);
CREATE INDEX evacuations_host ON evacuations(host, id DESC);

-- Each instance's outcome in an evacuation plan.
CREATE TABLE evacuation_items (
  evacuation_id         bigint NOT NULL REFERENCES evacuations(id) ON DELETE CASCADE,
  instance_uuid         uuid NOT NULL REFERENCES instances(uuid),
  migration_id          bigint REFERENCES migrations(id) ON DELETE SET NULL,
  outcome               text NOT NULL DEFAULT 'pending' CHECK (outcome IN ('pending',
                          'migrating', 'completed', 'failed', 'skipped')),
  reason                text NOT NULL DEFAULT '',
  updated_at            timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (evacuation_id, instance_uuid)
);

-- Views for dashboards: stable, documented in db/README.md; external dashboards read these.
CREATE VIEW v_migrations_in_flight AS
SELECT m.id, m.instance_uuid, i.name AS instance_name, m.source_host, m.dest_host, m.status,
       m.step, m.phase, m.percent, m.bytes_processed, m.bytes_total, m.bytes_remaining,
       m.elapsed_ms, m.requested_by, m.owner, m.lease_expires_at, m.created_at, m.updated_at,
       now() - m.created_at AS age
  FROM migrations m JOIN instances i ON i.uuid = m.instance_uuid
 WHERE m.status NOT IN ('completed', 'failed', 'cancelled');

CREATE VIEW v_host_summary AS
SELECT h.hostname, h.enabled, h.disabled_reason, h.hypervisor_type, h.hypervisor_version,
       h.last_report_at, now() - h.last_report_at AS report_age,
       h.memory_total_mib, h.memory_free_mib, h.memory_reserved_mib,
       COALESCE((SELECT sum(m.memory_claim_mib) FROM migrations m
                  WHERE m.dest_host = h.hostname
                    AND m.status NOT IN ('completed', 'failed', 'cancelled')), 0)
         AS memory_claimed_mib,
       (SELECT count(*) FROM instances i WHERE i.host = h.hostname AND NOT i.missing)
         AS instances,
       (SELECT count(*) FROM migrations m WHERE m.source_host = h.hostname
           AND m.status NOT IN ('completed', 'failed', 'cancelled')) AS migrations_out,
       (SELECT count(*) FROM migrations m WHERE m.dest_host = h.hostname
           AND m.status NOT IN ('completed', 'failed', 'cancelled')) AS migrations_in
  FROM hosts h;

CREATE VIEW v_migration_history AS
SELECT m.id, m.instance_uuid, m.source_host, m.dest_host, m.status, m.failure_reason,
       m.requested_by, m.aborted_by, m.created_at, m.finished_at,
       EXTRACT(EPOCH FROM (m.finished_at - m.created_at)) * 1000 AS total_ms
  FROM migrations m
 WHERE m.status IN ('completed', 'failed', 'cancelled');
