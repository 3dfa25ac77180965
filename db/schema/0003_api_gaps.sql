-- Schema version 3: what the API accepted but did not store (found by the security test), and
-- keyset paging of instances.

-- AbortMigrationRequest.reason, returned as Migration.abort_reason (NULL: not aborted, or no
-- reason given).
ALTER TABLE migrations ADD COLUMN abort_reason text;

-- The destination candidates the scheduler ranked when it chose the destination (best first,
-- each with its checks, as a JSON array of scheduler.v1.HostCheck; bounded by the scheduler).
-- NULL when the destination was requested or not chosen yet.
ALTER TABLE migrations ADD COLUMN candidates jsonb
  CHECK (candidates IS NULL OR jsonb_typeof(candidates) = 'array');

-- EvacuateHostRequest.request_id: a retried request with the same id returns the same
-- evacuation (NULL: none given).
ALTER TABLE evacuations ADD COLUMN request_id text UNIQUE;

-- The instance's name at planning time (EvacuationItem.instance_name).
ALTER TABLE evacuation_items ADD COLUMN instance_name text NOT NULL DEFAULT '';

-- ListInstances pages by (name, uuid).
CREATE INDEX instances_name_uuid ON instances(name, uuid);
