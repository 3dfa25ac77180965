-- Schema version 11: each instance's disks as its host last reported them (issue 21).
--
-- A JSON array of the agent's DomainDisk messages in proto3 JSON with the proto's field names
-- ({"target_dev": "xvda", "kind": "DISK_KIND_ISCSI", "iscsi_target": "iqn...", "iscsi_lun": 1,
-- "device_id": "naa...", ...}): the kind and identity of each disk (file, block device, iSCSI
-- LUN, DRBD resource; WWID or DRBD minor). A host report writes it together with the instance's
-- other fields (so not while a migration holds the instance); '[]' until a report with disks
-- arrived, and for the instances reported before this version.
ALTER TABLE instances ADD COLUMN disks jsonb NOT NULL DEFAULT '[]'
  CHECK (jsonb_typeof(disks) = 'array');
