// The checks of flow steps 4 and 5, shared by every driver: each driver gathers the facts of its
// hypervisor, these functions decide, with reasons that carry the numbers.
#ifndef LIVEMIG_DRIVER_CHECKS_H_
#define LIVEMIG_DRIVER_CHECKS_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "driver/compute_driver.h"

namespace livemig::driver {

// A migration id names files (probe, staged XML): only [A-Za-z0-9._-], 1..128 characters.
absl::Status ValidateMigrationId(const std::string& migration_id);
absl::Status ValidateUuid(const std::string& uuid);

// The probe file a destination creates on its instance path for one migration.
std::string ProbePath(const std::string& instance_path, const std::string& migration_id);

// FailedPrecondition naming the hypervisor and the feature for every requested option that the
// backend lacks, e.g. "Xen (libxl) does not support a bandwidth limit (--bandwidth): ...".
// Unset optional fields and false bools request nothing.
absl::Status CheckOptionsSupported(const v1::MigrationOptions& options,
                                   const v1::BackendCapabilities& caps,
                                   const std::string& hypervisor);

// Facts a destination driver gathers for step 4.
struct DestFacts {
  std::string hostname;
  std::string hypervisor_type;
  uint64_t hypervisor_version = 0;
  v1::CpuInfo cpu;
  uint64_t memory_free_mib = 0;
  uint64_t memory_reserved_mib = 0;
  std::vector<std::string> bridges;
  std::string instance_path;
  v1::BackendCapabilities capabilities;
  // The hypervisor's own CPU comparison (CompareCPU) of the source CPU on this host: nullopt
  // when not available (then features are compared). `cpu_reason` explains an incompatibility.
  std::optional<bool> cpu_compatible;
  std::string cpu_reason;
  // Whether the probe file could be written (and the error if not).
  bool probe_written = false;
  std::string probe_error;
};

// The facts of step 4 that a host's inventory gives (everything but the CPU comparison), with
// the probe file for `migration_id` written on `instance_path`.
DestFacts DestFactsFrom(const v1::HostInventory& inv, const std::string& hostname,
                        const std::vector<std::string>& bridges, const std::string& instance_path,
                        const v1::BackendCapabilities& caps, const std::string& migration_id);

// Whether this host sees the probe file of `migration_id` (same shared storage); removing it.
bool ProbeVisible(const std::string& instance_path, const std::string& migration_id);
void RemoveProbe(const std::string& instance_path, const std::string& migration_id);

// Decides step 4 from the request and the facts; fills dest_check_data.
cv1::CheckCanLiveMigrateOnDestResponse EvaluateDestChecks(
    const cv1::CheckCanLiveMigrateOnDestRequest& req, const DestFacts& facts);

// Decides step 5: shared storage from the probe's visibility, else block migration when
// requested (yes/auto) and supported; and the options against the backend.
cv1::CheckCanLiveMigrateOnSrcResponse EvaluateSrcChecks(
    const cv1::CheckCanLiveMigrateOnSrcRequest& req, bool probe_visible,
    const v1::BackendCapabilities& caps, const std::string& hypervisor,
    const v1::DomainInfo& domain, const std::string& domain_xml);

// "4.17.0" for 4017000.
std::string FormatVersion(uint64_t v);

}  // namespace livemig::driver

#endif  // LIVEMIG_DRIVER_CHECKS_H_
