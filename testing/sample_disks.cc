#include "testing/sample_disks.h"

namespace livemig::testing {

google::protobuf::RepeatedPtrField<livemig::v1::DomainDisk> SharedVolumeDisks() {
  namespace v1 = ::livemig::v1;
  google::protobuf::RepeatedPtrField<v1::DomainDisk> disks;
  v1::DomainDisk* a = disks.Add();
  a->set_target_dev("xvda");
  a->set_type("block");
  a->set_kind(v1::DISK_KIND_ISCSI);
  a->set_source("/dev/disk/by-path/ip-10.0.2.101:3260-iscsi-iqn.2026-12.net.example:db1-lun-1");
  a->set_iscsi_target("iqn.2026-12.net.example:db1");
  a->set_iscsi_lun(1);
  a->set_iscsi_portal("10.0.2.101:3260");
  a->set_device_id("naa.60000000000000000e00000000010001");
  a->set_volume("data1");
  a->set_shared(true);
  a->set_capacity_mib(20480);
  v1::DomainDisk* b = disks.Add();
  b->set_target_dev("xvdb");
  b->set_type("block");
  b->set_kind(v1::DISK_KIND_DRBD);
  b->set_source("/dev/drbd0");
  b->set_drbd_resource("r0");
  b->set_device_id("drbd:r0/0");
  b->set_volume("r0");
  b->set_shared(true);
  return disks;
}

}  // namespace livemig::testing
