// The disks a libvirt host reports for a guest on shared volumes, for tests of what reads them
// (the scheduler's records, the dry run, cloudctl's tables): an iSCSI LUN and a DRBD volume, as
// driver/volumes.cc describes them (the FakeDriver reports no disks).
#ifndef LIVEMIG_TESTING_SAMPLE_DISKS_H_
#define LIVEMIG_TESTING_SAMPLE_DISKS_H_

#include "proto/common.pb.h"

namespace livemig::testing {

// xvda: iSCSI LUN 1 of iqn.2026-12.net.example:db1 at 10.0.2.101:3260 (volume data1, 20 GiB);
// xvdb: DRBD resource r0 on /dev/drbd0 (volume r0). Both shared.
google::protobuf::RepeatedPtrField<livemig::v1::DomainDisk> SharedVolumeDisks();

}  // namespace livemig::testing

#endif  // LIVEMIG_TESTING_SAMPLE_DISKS_H_
