// LibvirtDriver: the product's ComputeDriver over libvirt.
//
// It opens a configured URI (default xen:///system) and derives a capability profile from the
// backend (virConnectGetType) or from configuration:
//   - libxl (Xen): only the flags LIVE, PEER2PEER, PERSIST_DEST, UNDEFINE_SOURCE, PAUSED,
//     TUNNELLED and the params URI, DEST_NAME, DEST_XML; never abort, max downtime, max speed or
//     post-copy; progress as elapsed time only. The migration stream is tunnelled through the
//     libvirt connection (TUNNELLED over xen+tls://) unless configured otherwise. libxl reports
//     every job as "unbounded" of unknown operation: a domain's job shows as job_active, and as
//     migration_job_active only while this driver runs its transfer (or the operation says
//     migration). Xen lists Domain-0 (id 0, all-zero UUID): never reported; libxl pauses an
//     incoming domain with reason "user", so rollback at the destination destroys a paused domain
//     only with the scheduler's word that the source runs the domain (source_runs_domain).
//     On start it reads the host's paging modes from `xl info`'s virt_caps (Options::
//     xen_info_command; libvirt cannot tell a Xen without shadow paging, on which PV guests
//     cannot live-migrate) and reports each domain's Xen guest kind (pv, pvh, hvm) from its XML.
//   - libxl-strict: the libxl profile through StrictLibxlApi, which refuses with libvirt's own
//     messages whatever libxl refuses (for the lab, over QEMU).
//   - qemu: the full set: job stats in bytes, bandwidth, max downtime raised in steps (as Nova
//     does), completion timeout with abort or force-complete (post-copy when allowed, else
//     pause), auto-converge, block migration (NON_SHARED_DISK: the source sizes the local file
//     disks, the destination creates each missing one with qemu-img before the transfer, as
//     libvirt creates only storage-pool volumes, and removes those it created at rollback).
//
// The monitor loop runs here, next to libvirt, with the options passed in LiveMigration.
// Thread-safe; the connection is re-opened when it drops.
//
// Memory: a transfer is remembered while it runs; once it ended, its last report (what
// GetMigrationProgress and a repeated LiveMigration answer) is kept for
// Options::finished_transfer_keep (1 h) and only for the Options::max_finished_transfers (1000)
// most recently ended, whichever is smaller (common/retention.h, as the agent's records and the
// FakeDriver's transfers); after that, the driver answers from the hypervisor alone, as a
// restarted agent's driver does. Pruning happens on LiveMigration and GetMigrationProgress.
#ifndef LIVEMIG_DRIVER_LIBVIRT_DRIVER_H_
#define LIVEMIG_DRIVER_LIBVIRT_DRIVER_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/retention.h"
#include "driver/compute_driver.h"
#include "driver/libvirt_api.h"
#include "driver/volumes.h"

namespace livemig::driver {

class LibvirtDriver : public ComputeDriver {
 public:
  struct Options {
    std::string uri = "xen:///system";
    std::string profile = "auto";                              // auto, libxl, libxl-strict, qemu
    std::string hostname;                                      // default: the system's hostname
    std::string instance_path = "/var/lib/livemig/instances";  // shared instance directory
    uint64_t memory_reserved_mib = 512;                        // dom0 reserve
    // The URI the source's libvirtd uses to reach this host's libvirtd (peer-to-peer), e.g.
    // xen+tls://host-b/system or qemu+tcp://10.250.0.2/system. Default: from the hostname.
    std::string migration_uri;
    // The host the migration data stream goes to (tcp://<host>). Default: the hostname.
    std::string migration_data_host;
    std::optional<bool> tunnelled;                     // default: true on libxl, false on qemu
    std::vector<std::string> bridges;                  // default: the bridges in /sys/class/net
    std::string state_dir = "/var/lib/livemig/agent";  // staged domain definitions
    // Overrides the CPU this host reports and checks against (feature comparison instead of
    // CompareCPU), e.g. to model an incompatible CPU.
    std::optional<std::string> cpu_model_override;
    std::optional<std::vector<std::string>> cpu_features_override;
    // Overrides the hypervisor version this host reports and checks with (libvirt's encoding,
    // major*1000000 + minor*1000 + micro), e.g. to model an older Xen next to a newer one.
    std::optional<uint64_t> hypervisor_version_override;
    absl::Duration poll_interval = absl::Milliseconds(200);
    // QEMU defaults when a migration gives none (Nova's live_migration_downtime*).
    uint32_t default_max_downtime_ms = 500;
    uint32_t default_downtime_steps = 10;
    uint32_t default_downtime_step_delay_s = 5;
    bool auto_converge = true;
    // libxl profiles: the command (run with /bin/sh -c once, when the driver is created) whose
    // output holds `xl info`'s virt_caps line: the host's paging modes, reported in the
    // capabilities (xen_virt_caps, pv_live_migration; BackendCapabilities) for check
    // "xen_pv_shadow_paging". Empty: not run, the paging modes are unknown (never refused on).
    std::string xen_info_command = "xl info";
    absl::Duration xen_info_timeout = absl::Seconds(10);  // then the command is killed: unknown
    // Prepended to the commands the driver runs on its host for block migration (qemu-img create
    // of a destination disk, rm at rollback), which must see the files as libvirtd does: empty
    // where the agent shares libvirtd's filesystem (production); the lab's
    // "lab.sh exec DIR b --".
    std::string host_command_prefix;
    absl::Duration host_command_timeout = absl::Seconds(60);
    // The shared volumes (iSCSI LUNs, DRBD resources) this host may attach for a migrating
    // guest (driver/volumes.h): read from volumes_file at Create (an unreadable or malformed
    // file refuses the start); `volumes` as given when the file is empty.
    std::string volumes_file;
    std::vector<VolumeSpec> volumes;
    // Ended transfers are kept this long, and at most this many (see the file comment).
    absl::Duration finished_transfer_keep = absl::Hours(1);
    size_t max_finished_transfers = 1000;
    Clock* clock = Clock::Real();  // when a transfer ended, for that window
  };

  // Opens the connection and derives the profile. `api` defaults to the real libvirt API.
  static absl::StatusOr<std::unique_ptr<LibvirtDriver>> Create(
      Options options, std::unique_ptr<LibvirtApi> api = nullptr);

  static v1::BackendCapabilities ProfileCapabilities(const std::string& profile, bool tunnelled);

  // Runs `command` with /bin/sh -c; its standard output, or an error with its exit status and
  // the start of its standard error (killed, and an error, after `timeout`).
  static absl::StatusOr<std::string> RunHostCommand(const std::string& command,
                                                    absl::Duration timeout);

  const std::string& profile() const { return profile_; }

  v1::BackendCapabilities capabilities() const override { return caps_; }
  absl::StatusOr<v1::HostInventory> GetHostInfo() override;
  absl::StatusOr<std::vector<v1::DomainInfo>> ListDomains() override;
  absl::StatusOr<std::optional<v1::DomainInfo>> DescribeDomain(const std::string& uuid) override;
  absl::StatusOr<cv1::CheckCanLiveMigrateOnDestResponse> CheckCanLiveMigrateOnDest(
      const cv1::CheckCanLiveMigrateOnDestRequest& req) override;
  absl::StatusOr<cv1::CheckCanLiveMigrateOnSrcResponse> CheckCanLiveMigrateOnSrc(
      const cv1::CheckCanLiveMigrateOnSrcRequest& req) override;
  absl::Status CheckCanLiveMigrateOnDestCleanup(
      const cv1::CheckCanLiveMigrateOnDestCleanupRequest& req) override;
  absl::StatusOr<cv1::PreLiveMigrationData> PreLiveMigration(
      const cv1::PreLiveMigrationRequest& req) override;
  absl::StatusOr<cv1::MigrationProgressReport> LiveMigration(const cv1::LiveMigrationRequest& req,
                                                             const ProgressSink& sink) override;
  absl::StatusOr<cv1::MigrationProgressReport> GetMigrationProgress(
      const std::string& migration_id, const std::string& instance_uuid) override;
  absl::Status AbortLiveMigration(const std::string& migration_id,
                                  const std::string& instance_uuid) override;
  absl::Status ForceCompleteLiveMigration(const std::string& migration_id,
                                          const std::string& instance_uuid) override;
  absl::Status PostLiveMigration(const cv1::PostLiveMigrationRequest& req) override;
  absl::StatusOr<v1::DomainInfo> PostLiveMigrationAtDestination(
      const cv1::PostLiveMigrationAtDestinationRequest& req) override;
  absl::StatusOr<v1::DomainInfo> PauseInstance(const std::string& uuid) override;
  absl::Status RollbackLiveMigrationAtDestination(
      const cv1::RollbackLiveMigrationAtDestinationRequest& req) override;
  absl::StatusOr<v1::DomainInfo> RollbackLiveMigration(
      const cv1::RollbackLiveMigrationRequest& req) override;

 private:
  struct Transfer {
    std::string uuid;
    v1::MigrationOptions options;
    cv1::MigrationProgressReport report;  // latest
    bool running = true;
    bool post_copy = false;
    bool force_completing = false;
  };

  LibvirtDriver(Options options, std::unique_ptr<LibvirtApi> api);
  absl::StatusOr<ConnHandle> Conn();
  std::string HypervisorName() const;
  bool IsLibxl() const { return profile_ == "libxl" || profile_ == "libxl-strict"; }
  absl::StatusOr<v1::DomainInfo> ToDomainInfo(virDomainPtr d);
  absl::StatusOr<DomHandle> Lookup(const std::string& uuid);  // NotFound when absent
  std::vector<std::string> Bridges() const;
  v1::CpuInfo HostCpu(const std::string& caps_xml) const;
  cv1::MigrationProgressReport ReportFromStats(const std::string& migration_id,
                                               const std::string& uuid, const JobStats& s,
                                               const DomainBasics* state);
  absl::StatusOr<cv1::MigrationProgressReport> Monitor(const std::string& migration_id,
                                                       virDomainPtr dom, const ProgressSink& sink,
                                                       const std::function<bool()>& done,
                                                       absl::Notification* wake = nullptr);
  // Stores a new sample of the transfer, keeping the marks of what happened to it (completion
  // timeout, abort and force-complete requested); returns the sample as stored.
  cv1::MigrationProgressReport UpdateTransfer(const std::string& id,
                                              cv1::MigrationProgressReport r);
  // Block migration. The source: each local file disk libvirt copies, sized (check
  // "local_disks"). The destination: creates each missing disk file before the transfer
  // (recorded in state_dir/disks/<migration id>.list), and removes those at rollback.
  void AddLocalDisks(virDomainPtr dom, const std::string& xml, const std::string& host,
                     cv1::CheckCanLiveMigrateOnSrcResponse* resp);
  absl::Status CreateDestinationDisks(const cv1::PreLiveMigrationRequest& req);
  absl::Status RemoveCreatedDisks(const std::string& migration_id);
  // Runs `script` with sh -c on this host (after Options::host_command_prefix).
  absl::StatusOr<std::string> HostShell(const std::string& script);
  // Forgets the ended transfers past their retention (see the file comment).
  void PruneTransfersLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  std::unique_ptr<LibvirtApi> api_;
  std::string profile_;
  v1::BackendCapabilities caps_;
  std::string hypervisor_type_;
  Volumes volumes_;  // shared volumes: described, checked, attached and released here

  absl::Mutex conn_mu_;
  ConnHandle conn_ ABSL_GUARDED_BY(conn_mu_);

  absl::Mutex mu_;
  std::map<std::string, Transfer> transfers_ ABSL_GUARDED_BY(mu_);  // by migration id
  FinishedRetention<std::string> finished_ ABSL_GUARDED_BY(mu_);    // the ended ones of transfers_
};

}  // namespace livemig::driver

#endif  // LIVEMIG_DRIVER_LIBVIRT_DRIVER_H_
