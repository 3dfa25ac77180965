// Shared volumes: guest disks on storage both hosts reach -- an iSCSI LUN (each host logs in to
// the same target) or a DRBD volume replicated between the two hosts -- handed over by the
// migration's steps, as Nova connects volumes on the destination in pre_live_migration and
// disconnects them on the source after, and as Ganeti promotes DRBD for the switch-over:
//
//   check (destination)      the destination has the volume configured and sees the same device
//                            (same WWID) or can reach the iSCSI portal; a DRBD resource is
//                            connected, up to date on both sides and allows two primaries
//   check (source)           a DRBD resource is connected and up to date here too
//   PreLiveMigration (dest)  logs in to the iSCSI target / promotes the DRBD resource (both
//                            primaries for the switch-over); each action recorded before it is done
//   LiveMigration (src)      records the volumes the guest holds there
//   PostLiveMigration (src)  logs out / demotes the source's side (what LiveMigration recorded)
//   Rollback (dest)          undoes exactly the recorded actions (a volume the destination
//                            already held is left as it was)
//
// A host attaches only the volumes its agent's volumes file lists (--volumes-file), never a
// target named by a request. The commands (iscsiadm, drbdadm, udevadm) run through a Runner (the
// driver's host shell); the device files are read under Options::root (tests use a directory).
#ifndef LIVEMIG_DRIVER_VOLUMES_H_
#define LIVEMIG_DRIVER_VOLUMES_H_

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "driver/compute_driver.h"

namespace livemig::driver {

// One line of the volumes file.
struct VolumeSpec {
  std::string name;
  v1::DiskKind kind = v1::DISK_KIND_UNSPECIFIED;  // ISCSI or DRBD
  // iSCSI
  std::string portal;  // "10.0.20.5:3260"
  std::string target;  // "iqn.2026-12.net.example:db1"
  uint32_t lun = 0;
  // DRBD
  std::string resource;  // "r0"
  std::string device;    // "/dev/drbd0"; for iSCSI optional (default: the by-path name)
};

// Parses a volumes file: one volume a line, `#` comments, blank lines ignored:
//   <name> iscsi portal=<host:port> target=<iqn> lun=<n> [device=<path>]
//   <name> drbd resource=<res> device=</dev/drbdN>
// InvalidArgument naming the file, the line and what is wrong.
absl::StatusOr<std::vector<VolumeSpec>> ParseVolumesFile(const std::string& text,
                                                         const std::string& path);

// The udev name of an iSCSI LUN: /dev/disk/by-path/ip-<portal>-iscsi-<target>-lun-<lun>.
std::string IscsiByPath(const std::string& portal, const std::string& target, uint32_t lun);

// A DRBD resource's state as `drbdadm role|cstate|dstate` and `drbdsetup show` print it.
struct DrbdState {
  std::string role, peer_role;  // "Primary", "Secondary", "Unknown"
  std::string cstate;           // "Connected", "StandAlone", "WFConnection", ...
  std::string disk, peer_disk;  // "UpToDate", "Inconsistent", "DUnknown", ...
  bool two_primaries = false;   // net { allow-two-primaries yes; }
};
// From the outputs of those four commands (8.4's "Primary/Secondary" or 9's one word).
DrbdState ParseDrbdState(const std::string& role, const std::string& cstate,
                         const std::string& dstate, const std::string& show);

class Volumes {
 public:
  using Runner = std::function<absl::StatusOr<std::string>(const std::string& script)>;
  struct Options {
    std::string hostname;
    std::string volumes_file;  // shown in reasons; empty: none configured
    std::vector<VolumeSpec> specs;
    std::string state_dir;  // records of what PreLiveMigration did (state_dir/volumes/<id>.list)
    std::string root;       // prefix of /dev and /sys paths (tests); "" in production
    // An iSCSI LUN's device to appear after the login: well under the scheduler's per-step
    // deadline (--agent-deadline, 30 s), so that the agent's reason reaches the migration.
    absl::Duration device_timeout = absl::Seconds(15);
    absl::Duration release_timeout = absl::Seconds(20);  // a DRBD device to be closed by Xen
    // Whether the iSCSI portal answers on TCP (default: a connect with a 3 s deadline).
    std::function<absl::Status(const std::string& portal)> reach;
  };
  Volumes(Options options, Runner run);

  // Reads the volumes file (empty path: no volumes).
  static absl::StatusOr<std::vector<VolumeSpec>> Load(const std::string& path);

  // Fills each disk's kind and identity from its type and source: a configured volume, an iSCSI
  // by-path name, a DRBD device, another block device, a file. Reads only files (no command):
  // the host reporter calls it for every domain.
  void Describe(v1::DomainDisk* disk) const;

  // Check "shared_volumes" on this host in `role` ("destination" or "source") for the
  // instance's disks as the source described them; nullopt when it has none on a block device.
  std::optional<v1::CheckResult> Check(const v1::DomainInfo& instance,
                                       const std::string& role) const;

  // PreLiveMigration at the destination: attaches every volume of the instance's disks that is
  // not attached here yet; idempotent. The attached volumes' names ("iscsi:<target>:<lun>",
  // "drbd:<resource>"), as PreLiveMigrationData.connected_volumes.
  absl::StatusOr<std::vector<std::string>> Attach(const std::string& migration_id,
                                                  const v1::DomainInfo& instance);
  // Rollback at the destination: detaches what Attach recorded for the migration; idempotent.
  absl::Status Undo(const std::string& migration_id);
  // LiveMigration at the source, before the transfer: records the volumes the guest holds here
  // (state_dir/volumes/<id>.held), which PostLiveMigration releases once the guest runs
  // elsewhere -- the domain, and so its description, is gone from this host by then.
  absl::Status NoteHeld(const std::string& migration_id, const v1::DomainInfo& instance);
  // PostLiveMigration at the source: detaches the volumes recorded by NoteHeld and those of
  // `instance` (when the request describes it); idempotent.
  absl::Status Release(const std::string& migration_id, const v1::DomainInfo& instance);
  // RollbackLiveMigration at the source: the guest keeps its volumes here; drops the record.
  void ForgetHeld(const std::string& migration_id);
  // PostLiveMigrationAtDestination: the attached volumes are the guest's now; drops the record.
  void Forget(const std::string& migration_id);

 private:
  const VolumeSpec* Find(const v1::DomainDisk& d) const;  // by its source path
  // The configured volume of a described disk: the same iSCSI target and LUN, or DRBD resource.
  const VolumeSpec* Configured(const v1::DomainDisk& d) const;
  // Why the guest's disk path does not open volume v's device on this host; "" when it does.
  std::string PathMismatch(const v1::DomainDisk& d, const VolumeSpec& v) const;
  std::string Resolve(const std::string& path) const;   // realpath under root, root stripped
  std::string Wwid(const std::string& dev_path) const;  // "" when unknown
  absl::StatusOr<DrbdState> Drbd(const std::string& resource) const;
  bool LoggedIn(const std::string& portal, const std::string& target, uint32_t lun) const;
  absl::Status IscsiLogin(const std::string& portal, const std::string& target, uint32_t lun);
  absl::Status IscsiLogout(const std::string& portal, const std::string& target, uint32_t lun);
  absl::Status DrbdRole(const std::string& resource, bool primary);
  absl::Status Detach(const std::string& volume);  // "iscsi ..." / "drbd ..." record line
  std::string RecordPath(const std::string& migration_id) const;
  std::string HeldPath(const std::string& migration_id) const;
  // The record lines ("iscsi <portal> <target> <lun>", "drbd <resource>") of the configured
  // volumes the instance's disks are on.
  std::vector<std::string> HeldLines(const v1::DomainInfo& instance) const;

  Options options_;
  Runner run_;
};

}  // namespace livemig::driver

#endif  // LIVEMIG_DRIVER_VOLUMES_H_
