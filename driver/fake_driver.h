// FakeDriver: a fake hypervisor that follows libvirt peer-to-peer's contract (docs/DESIGN.md
// § Testing topology) for unit tests, fault-injection tests and benchmarks. Each FakeDriver is the
// driver of one fake host over the shared model that FakeHypervisor (driver/fake_hypervisor.h)
// keeps in a state directory, outside the agent processes.
//
//   FakeHypervisor hv("/tmp/state");
//   hv.CreateDomain("fake-a", uuid, "web-1", 1024);        // a running guest
//   FakeDriver a({.state_dir = "/tmp/state", .hostname = "fake-a"});
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
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/clock.h"
#include "driver/compute_driver.h"
#include "driver/fake_hypervisor.h"
#include "nlohmann/json.hpp"

namespace livemig::driver {

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
