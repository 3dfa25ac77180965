-- Schema version 6: an evacuation keeps what it was asked for, and has an owner lease like a
-- migration's (issue 18).
--
-- EvacuateHostRequest.destination and .options were held only by the scheduler process that
-- took the request: a scheduler resuming the evacuation migrated the rest anywhere, with default
-- options. And every scheduler that started resumed every running evacuation. Now a running
-- evacuation is driven by its owner while the owner's lease is live (the database's clock); a
-- scheduler takes over only an evacuation whose lease expired (or that has no owner), with a
-- compare-and-swap, and the owner's writes are compare-and-swap on its live lease.

-- The destination for every instance (NULL: the scheduler chooses per instance) and the options
-- for every migration (livemig.v1.MigrationOptions as proto3 JSON, as migrations.options).
-- Evacuations created before this version did not store them: they resume with neither.
ALTER TABLE evacuations ADD COLUMN destination text;
ALTER TABLE evacuations ADD COLUMN options jsonb NOT NULL DEFAULT '{}'
  CHECK (jsonb_typeof(options) = 'object');

-- Ownership: the scheduler process driving a running evacuation, until lease_expires_at; both
-- NULL once it finished, and for evacuations running from before this version (any scheduler
-- may take those over).
ALTER TABLE evacuations ADD COLUMN owner text;
ALTER TABLE evacuations ADD COLUMN lease_expires_at timestamptz;

-- The running evacuations (few) by lease: the takeover scan and the lease renewal.
CREATE INDEX evacuations_running ON evacuations(owner, lease_expires_at)
  WHERE status = 'running';
