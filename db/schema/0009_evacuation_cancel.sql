-- Schema version 9: an evacuation can be cancelled (CancelEvacuation). The cancel is recorded on
-- the row (when, who, why); from then on no new migration of the evacuation starts (the
-- migration's creation checks it under a share lock of this row, so a cancel and a start are
-- ordered), its pending items become 'cancelled', and the migrations in flight are left to
-- finish. Until they have, the evacuation stays 'running' with cancel_requested_at set (the API's
-- CANCELLING); its driver then finishes it as 'cancelled'.
ALTER TABLE evacuations ADD COLUMN cancel_requested_at timestamptz;
ALTER TABLE evacuations ADD COLUMN cancelled_by text;
ALTER TABLE evacuations ADD COLUMN cancel_reason text;

-- An item not attempted because its evacuation was cancelled first.
ALTER TABLE evacuation_items DROP CONSTRAINT evacuation_items_outcome_check;
ALTER TABLE evacuation_items ADD CONSTRAINT evacuation_items_outcome_check CHECK (outcome IN
  ('pending', 'migrating', 'completed', 'failed', 'skipped', 'cancelled'));
