-- Schema version 10: the host a migration event's step ran on.
--
-- The scheduler records it with the event, for the steps an agent runs on one host (the source's
-- or the destination's checks, pre_live_migration, the transfer, the post and rollback steps):
-- the API's MigrationEvent.host, Nova's instance-action events and cloudctl's timeline read it.
-- NULL for the scheduler's own steps and for the events written before this version (their
-- host is not recovered from the free-text detail).
ALTER TABLE migration_events ADD COLUMN host text;
