// FakeDriver: a fake hypervisor that follows libvirt peer-to-peer's contract (docs/DESIGN.md
// § Testing topology) for unit tests, fault-injection tests and benchmarks.
//
// The hypervisors' state lives in a state directory shared by the fake hosts of one test
// (state.json under an flock), outside the agent processes: killing an agent does not kill its
// "hypervisor". A transfer proceeds without its agent: it completes at its scheduled time,
// evaluated whenever the state is read.
//
//   FakeHypervisor hv("/tmp/state");
//   hv.CreateDomain("fake-a", uuid, "web-1", 1024);        // a running guest
//   hv.SetFailure("fake-b", "pre_live_migration", "disk full");   // fail that step once
//   FakeDriver a({.state_dir = "/tmp/state", .hostname = "fake-a"});
//
// Action journal: every mutating driver action (a step that reached the driver, a transfer
// started, aborted or forced, and the transfer ending by itself, marked `automatic`) appends an
// entry {host, step, migration_id, time} to <state_dir>/journal.jsonl, so that fault tests can
// check that the scheduler recorded each step's intent before the hypervisor acted
// (FakeHypervisor::Journal). Repeated steps answered from an agent's record never reach the driver
// and are not journaled. The journal is never truncated: it grows with every action (about 100
// bytes each) for as long as the state directory lives.
//
// Cost: each process keeps the parsed state of a state directory in memory (shared by every
// FakeHypervisor/FakeDriver object of that process on that directory) and re-reads state.json
// only when its identity (device, inode, size, mtime in ns) differs from what the process last
// read or wrote; writers give each new state.json a strictly later mtime than the one it
// replaces, so that a write by another process is always seen. Only running transfers are
// scanned on each call; finished transfers are pruned (FakeHypervisor::kFinishedTransferKeep,
// kMaxFinishedTransfers).
//
// Contract: after pre_live_migration the destination holds only staged configuration; during
// the transfer it has an incoming paused domain; when the transfer succeeds the destination runs
// the domain and the source has none.
//
// Profiles: fake-qemu has everything QEMU has (byte counters, abort, post-copy...); an incoming
// domain shows as INCOMING_PAUSED (reason "migration") and any job as a migration job.
// fake-libxl behaves as Xen 4.17 under libvirt 9.0's libxl driver does (XEN_LAB_FACTS.md): the
// fake hypervisor has a Domain-0 (all-zero UUID, domain id 0, Options::dom0_memory_mib) that the
// driver never reports as an instance and whose memory is not free (as `xl info`'s free_memory);
// an incoming domain shows as PAUSED with reason "user"; a job has no byte counters and no
// operation, so it shows as job_active, and as migration_job_active only while this driver object
// runs the transfer's monitor (as LibvirtDriver on libxl). In both, a rollback at the destination
// destroys a paused domain only when it is half-received by the rules of ComputeDriver (an
// incoming domain on fake-qemu; any paused one with source_runs_domain), and destroying an
// incoming domain fails its transfer (the VM stays on the source).
// fake-libxl also models Xen's paging modes (Options::xen_virt_caps, by default with shadow paging)
// and each domain's guest kind (PV unless CreateDomain says pvh or hvm), so that a PV guest's
// migration from or to a host without shadow paging is refused as LibvirtDriver refuses it.
#ifndef LIVEMIG_DRIVER_FAKE_DRIVER_H_
#define LIVEMIG_DRIVER_FAKE_DRIVER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/clock.h"
#include "driver/compute_driver.h"
#include "nlohmann/json.hpp"

namespace livemig::driver {

namespace internal {
struct FakeStateCache;  // the per-process, per-directory parsed state (fake_driver.cc)
struct FakeStateIndex;  // derived from the state: running transfers, finished ones' count
}  // namespace internal

class FakeDriver;

// Direct access to the shared fake hypervisor state (for tests, tools and benchmarks).
// Thread- and process-safe (every operation holds the state directory's lock).
class FakeHypervisor {
 public:
  // One journaled driver action (see the file comment).
  struct JournalEntry {
    std::string host;  // the fake host whose driver acted (the source for a transfer's end)
    std::string step;  // the driver method's step name, e.g. "pre_live_migration", or
                       // "transfer_completed" / "transfer_failed" / "completion_timeout"
    std::string migration_id;
    absl::Time time;         // when it happened (the hypervisor's clock, ms resolution)
    bool automatic = false;  // no agent call: the transfer progressing by itself
  };

  // A finished transfer (completed, failed, cancelled) stays in the state, so that its progress
  // can still be asked for (e.g. by an agent restarted after a crash), for at least this long
  // after it finished, unless more than kMaxFinishedTransfers finished after it: only that many
  // of the most recently finished are kept. Running transfers are never pruned. Pruning happens
  // in any call (time is the hypervisor's clock).
  static constexpr absl::Duration kFinishedTransferKeep = absl::Minutes(10);
  static constexpr size_t kMaxFinishedTransfers = 1000;

  explicit FakeHypervisor(std::string state_dir, Clock* clock = Clock::Real());

  // Runs `fn` on the state under the lock, after advancing transfers to `now`; writes the state
  // back if fn sets *changed (also when fn returns an error). fn must set *changed whenever it
  // modifies the state: a modification without it is discarded, as if fn had not run (the
  // process's cached copy is dropped and the next call re-reads state.json).
  absl::Status Mutate(const std::function<absl::Status(nlohmann::json&, bool* changed)>& fn);
  // Runs `fn` on the state under the lock, after advancing transfers to `now`, read-only.
  absl::Status Read(const std::function<absl::Status(const nlohmann::json&)>& fn);

  // Creates a domain on `host` (state: running, paused or shutoff). AlreadyExists if present.
  // `kind`: its Xen guest kind, "pv", "pvh" or "hvm" (kept when it migrates); "" (default): PV.
  // A fake-libxl host reports it (DomainInfo.guest_kind), a fake-qemu host never does.
  absl::Status CreateDomain(const std::string& host, const std::string& uuid,
                            const std::string& name, uint64_t memory_mib,
                            const std::string& state = "running",
                            std::vector<std::string> bridges = {"br-guest"},
                            const std::string& kind = "");
  // Fails the next `times` calls of `step` on `host` with `message` (status code `code`).
  // Steps: check_can_live_migrate_on_dest, check_can_live_migrate_on_src, pre_live_migration,
  // live_migration (refused at start), transfer (fails mid-way), post_live_migration,
  // post_live_migration_at_destination, rollback_live_migration,
  // rollback_live_migration_at_destination, abort, force_complete.
  // `reason`: the machine-readable reason the failure carries (common/status_map.h).
  absl::Status SetFailure(const std::string& host, const std::string& step,
                          const std::string& message, int times = 1,
                          absl::StatusCode code = absl::StatusCode::kInternal,
                          v1::ErrorReason reason = v1::ERROR_REASON_UNSPECIFIED);
  // Every later transfer from `host` takes this long (default 0: immediate).
  absl::Status SetTransferDuration(const std::string& host, absl::Duration d);
  // Every later completed transfer from `host` reports this guest downtime, as QEMU's job
  // statistics do (default: none reported). Only the fake-qemu profile reports it; fake-libxl,
  // like Xen, never does.
  absl::Status SetTransferDowntime(const std::string& host, absl::Duration d);
  // Where the domain runs now: the hosts that have it, with their state ("running",
  // "paused", "incoming").
  absl::StatusOr<std::vector<std::pair<std::string, std::string>>> Locate(const std::string& uuid);
  // A copy of the whole state (after advancing transfers).
  absl::StatusOr<nlohmann::json> Snapshot();
  // Every journaled driver action so far, oldest first (after advancing transfers).
  absl::StatusOr<std::vector<JournalEntry>> Journal();

  Clock* clock() const { return clock_; }
  const std::string& state_dir() const { return dir_; }

 private:
  friend class FakeDriver;
  using MutateFn = std::function<absl::Status(nlohmann::json&, bool* changed,
                                              const internal::FakeStateIndex& before_fn)>;
  using ReadFn =
      std::function<absl::Status(const nlohmann::json&, const internal::FakeStateIndex&)>;
  // The one transaction: exactly one of `mutate` and `read` is set. The index passed to
  // `mutate` describes the state before fn ran.
  absl::Status Transact(const MutateFn* mutate, const ReadFn* read);
  absl::Status MutateIndexed(const MutateFn& fn) { return Transact(&fn, nullptr); }
  absl::Status ReadIndexed(const ReadFn& fn) { return Transact(nullptr, &fn); }

  std::string dir_;
  Clock* clock_;
  std::shared_ptr<internal::FakeStateCache> cache_;  // shared with this process's objects on dir_
};

class FakeDriver : public ComputeDriver {
 public:
  struct Options {
    std::string state_dir;  // shared by the fake hosts of one test
    std::string hostname = "fake-a";
    std::string profile = "fake-qemu";  // fake-qemu (everything) or fake-libxl (Xen's set)
    std::string hypervisor_type = "Xen";
    uint64_t hypervisor_version = 4017000;
    uint64_t libvirt_version = 9000000;
    std::string cpu_arch = "x86_64";
    std::string cpu_model = "Skylake-Server";
    std::vector<std::string> cpu_features = {"sse4.2", "avx", "avx2", "aes"};
    uint64_t memory_total_mib = 16384;
    uint64_t memory_reserved_mib = 512;  // dom0 reserve
    uint64_t dom0_memory_mib = 640;      // fake-libxl: Domain-0's memory (as the Xen lab's dom0)
    // fake-libxl: the fake Xen's paging modes, as `xl info`'s virt_caps line lists them (the
    // capabilities' xen_virt_caps and pv_live_migration: "shadow" or not); empty: unknown, as
    // when the agent cannot run `xl info`. Without "shadow" (Debian 12's 4.17.7 security build:
    // "pv hvm hap gnttab-v1 gnttab-v2") the agents refuse to live-migrate a PV guest from or to
    // the host (check "xen_pv_shadow_paging").
    std::string xen_virt_caps = "pv hvm hap shadow gnttab-v1 gnttab-v2";
    std::vector<std::string> bridges = {"br-guest"};
    std::string instance_path;  // default: <state_dir>/instances (shared by every fake host)
    // The longest wait between two progress reports of LiveMigration's monitor; it also wakes
    // at the transfer's scheduled end, so that the end is reported when it happens.
    absl::Duration poll_interval = absl::Milliseconds(20);
    Clock* clock = Clock::Real();
  };

  // Registers the host in the shared state (its configuration is refreshed, its domains kept).
  static absl::StatusOr<std::unique_ptr<FakeDriver>> Create(Options options);

  static v1::BackendCapabilities ProfileCapabilities(const std::string& profile);

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

  FakeHypervisor& hypervisor() { return hv_; }

 private:
  FakeDriver(Options options);
  std::string HypervisorName() const;
  // The transfer's report; *end_ms (if given) is its scheduled end while it runs, else -1.
  absl::StatusOr<cv1::MigrationProgressReport> Report(const std::string& migration_id,
                                                      int64_t* end_ms = nullptr);
  bool Libxl() const { return options_.profile == "fake-libxl"; }
  // The domain `d` (stored state) as this host's hypervisor shows it, in this driver's profile.
  v1::DomainInfo DomainInfoOf(const std::string& uuid, const nlohmann::json& d,
                              const nlohmann::json& st, const internal::FakeStateIndex& idx);

  Options options_;
  v1::BackendCapabilities caps_;
  FakeHypervisor hv_;
  // The transfers whose monitor loop runs in this object (LiveMigration): what a real driver
  // knows of its own transfers, lost with the agent process.
  std::mutex monitoring_mu_;
  std::set<std::string> monitoring_;
};

}  // namespace livemig::driver

#endif  // LIVEMIG_DRIVER_FAKE_DRIVER_H_
