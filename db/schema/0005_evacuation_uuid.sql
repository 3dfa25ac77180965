-- Schema version 5: evacuations get the public UUID the API promises (Evacuation.id,
-- GetEvacuationRequest.evacuation_id), as migrations have one; the bigserial id stays the
-- internal key (evacuation_items refer to it, logs show it). Each existing evacuation gets one.
ALTER TABLE evacuations ADD COLUMN uuid uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE;

-- The evacuation a migration belongs to (Migration.evacuation_id); NULL when requested on its
-- own. A column on the row, not a join through evacuation_items, so that reading a migration
-- stays one row of one table. It never changes, so it costs the hot updates nothing.
ALTER TABLE migrations ADD COLUMN evacuation_uuid uuid
  REFERENCES evacuations(uuid) ON DELETE SET NULL;
-- A migration's evacuation, and the foreign key's check when an evacuation goes, without a scan
-- (partial: most migrations belong to none).
CREATE INDEX migrations_evacuation ON migrations(evacuation_uuid)
  WHERE evacuation_uuid IS NOT NULL;

-- Migrations an evacuation started before this version belong to it too.
UPDATE migrations m SET evacuation_uuid = e.uuid
  FROM evacuation_items it JOIN evacuations e ON e.id = it.evacuation_id
 WHERE it.migration_id = m.id;
