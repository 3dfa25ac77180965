// ComputeDriver: the one seam between a compute agent and its hypervisor, shaped after the steps
// of the live-migration flow (docs/DESIGN.md § The migration flow) and after Nova's
// nova/virt/driver.py.
//
// Implementations: LibvirtDriver (libvirt; the libxl profile for Xen in production, the QEMU
// profile in the lab) and FakeDriver (a fake hypervisor whose state outlives the agent).
//
// Idempotency: every step is keyed by the request's migration_id and safe to repeat: repeating a
// step returns the same answer and changes nothing more. Thread-safety: every method may be
// called from several threads at once.
//
// Errors: InvalidArgument (malformed request), NotFound (no such domain), FailedPrecondition
// (an option the backend lacks, naming the hypervisor and the feature; a step that cannot apply
// in the current state), Unavailable (the hypervisor connection is down; retry), and libvirt's
// own message for anything libvirt refuses. A refused *check* is not an error: the check
// responses carry passed=false and the reasons.
#ifndef LIVEMIG_DRIVER_COMPUTE_DRIVER_H_
#define LIVEMIG_DRIVER_COMPUTE_DRIVER_H_

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/common.pb.h"
#include "proto/compute_agent.pb.h"

namespace livemig::driver {

namespace v1 = ::livemig::v1;
namespace cv1 = ::livemig::compute::v1;

// Receives progress while a transfer runs (from the monitor loop's thread).
using ProgressSink = std::function<void(const cv1::MigrationProgressReport&)>;

class ComputeDriver {
 public:
  virtual ~ComputeDriver() = default;

  // What this backend can do (profile name, abort, post-copy, bandwidth, ...); on Xen also the
  // host's paging modes (xen_virt_caps, pv_live_migration), learned once when the driver starts.
  virtual v1::BackendCapabilities capabilities() const = 0;

  // The host's inventory (hypervisor, versions, CPU, memory, networks, instance path,
  // capabilities) with its domains. report_seq/reported_at are left to the caller. Domain-0
  // (Xen's control domain: id 0, the all-zero UUID) is never reported as a domain, here, in
  // ListDomains or by DescribeDomain; on Xen free memory excludes it (the hypervisor's free pages).
  // Every DomainInfo here, in ListDomains and DescribeDomain carries its Xen guest_kind (pv, pvh,
  // hvm; "" off Xen).
  virtual absl::StatusOr<v1::HostInventory> GetHostInfo() = 0;
  virtual absl::StatusOr<std::vector<v1::DomainInfo>> ListDomains() = 0;
  // nullopt when the domain is not on this host.
  virtual absl::StatusOr<std::optional<v1::DomainInfo>> DescribeDomain(const std::string& uuid) = 0;

  // Flow step 4, on the destination: hypervisor type and version, CPU (CompareCPU against the
  // source's CPU), memory after the dom0 reserve, the instance's bridges, a PV guest against this
  // host's shadow paging (Xen), and a probe file on the shared instance path (named after the
  // migration id).
  virtual absl::StatusOr<cv1::CheckCanLiveMigrateOnDestResponse> CheckCanLiveMigrateOnDest(
      const cv1::CheckCanLiveMigrateOnDestRequest& req) = 0;
  // Flow step 5, on the source: probe file visible → shared storage; else block migration if
  // requested (or auto) and supported; options supported by the backend; a PV guest against
  // this host's and the destination's shadow paging (Xen). Returns the domain XML.
  virtual absl::StatusOr<cv1::CheckCanLiveMigrateOnSrcResponse> CheckCanLiveMigrateOnSrc(
      const cv1::CheckCanLiveMigrateOnSrcRequest& req) = 0;
  // Removes the destination's probe file (the source check failed). Succeeds if already gone.
  virtual absl::Status CheckCanLiveMigrateOnDestCleanup(
      const cv1::CheckCanLiveMigrateOnDestCleanupRequest& req) = 0;
  // Flow step 6, on the destination: networks present, volumes, the staged domain definition;
  // returns the migrate data (peer URI, data URI, destination XML).
  virtual absl::StatusOr<cv1::PreLiveMigrationData> PreLiveMigration(
      const cv1::PreLiveMigrationRequest& req) = 0;

  // Flow step 7, on the source: starts the transfer — or, when a transfer for this migration is
  // already running on the hypervisor (an agent restarted), attaches to it — and runs the
  // monitor loop with the request's options until the transfer ends. Blocks; reports progress
  // to `sink`. The returned report's state is COMPLETED, FAILED (with `error`) or CANCELLED.
  // A non-OK status means the transfer was not started (e.g. an unsupported option).
  virtual absl::StatusOr<cv1::MigrationProgressReport> LiveMigration(
      const cv1::LiveMigrationRequest& req, const ProgressSink& sink) = 0;
  // The transfer's current state as the hypervisor shows it, or NotFound when the hypervisor
  // has no trace of it.
  virtual absl::StatusOr<cv1::MigrationProgressReport> GetMigrationProgress(
      const std::string& migration_id, const std::string& instance_uuid) = 0;
  // Abort a running transfer (the source keeps running). FailedPrecondition where the backend
  // cannot abort (Xen), after post-copy started, or when no transfer runs.
  virtual absl::Status AbortLiveMigration(const std::string& migration_id,
                                          const std::string& instance_uuid) = 0;
  // Make a running transfer converge: post-copy if the migration allows it and the backend has
  // it, else pause the guest so the copy completes. FailedPrecondition where unsupported.
  virtual absl::Status ForceCompleteLiveMigration(const std::string& migration_id,
                                                  const std::string& instance_uuid) = 0;

  // Flow step 8, on the source: clean up what is left of the domain (never a running one).
  virtual absl::Status PostLiveMigration(const cv1::PostLiveMigrationRequest& req) = 0;
  // Flow step 9, on the destination: the domain runs here; make it persistent, finalize the
  // network. FailedPrecondition if the domain is not running here.
  virtual absl::StatusOr<v1::DomainInfo> PostLiveMigrationAtDestination(
      const cv1::PostLiveMigrationAtDestinationRequest& req) = 0;
  // Pauses the domain (idempotent: a paused domain stays paused). NotFound when it is not on this
  // host; FailedPrecondition when it is shut off. The scheduler's last resort when the domain
  // runs on two hosts at once.
  virtual absl::StatusOr<v1::DomainInfo> PauseInstance(const std::string& uuid) = 0;
  // Rollback, on the destination: remove what pre_live_migration staged and an incoming
  // (paused) domain: one the hypervisor shows paused for an incoming migration (QEMU), or any
  // paused one when req.source_runs_domain() (Xen's libxl pauses the incoming domain with reason
  // "user"). Never destroys a running domain (it may be the only running copy), nor a paused one
  // not proven half-received: FailedPrecondition then, with the reason
  // ERROR_REASON_ONLY_RUNNING_COPY (common/status_map.h: WithReason).
  virtual absl::Status RollbackLiveMigrationAtDestination(
      const cv1::RollbackLiveMigrationAtDestinationRequest& req) = 0;
  // Rollback, on the source: the domain must be here; resume it if the migration paused it.
  virtual absl::StatusOr<v1::DomainInfo> RollbackLiveMigration(
      const cv1::RollbackLiveMigrationRequest& req) = 0;
};

}  // namespace livemig::driver

#endif  // LIVEMIG_DRIVER_COMPUTE_DRIVER_H_
