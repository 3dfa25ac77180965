// The checks of flow steps 4 and 5, shared by every driver: each driver gathers the facts of its
// hypervisor, these functions decide, with reasons that carry the numbers.
#ifndef LIVEMIG_DRIVER_CHECKS_H_
#define LIVEMIG_DRIVER_CHECKS_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "driver/compute_driver.h"

namespace livemig::driver {

// A migration id names files (probe, staged XML): only [A-Za-z0-9._-], 1..128 characters.
absl::Status ValidateMigrationId(const std::string& migration_id);
absl::Status ValidateUuid(const std::string& uuid);

// The probe file a destination creates on its instance path for one migration.
std::string ProbePath(const std::string& instance_path, const std::string& migration_id);

// What a backend supports, written once for every driver (the real ones and the fake's
// profiles). Every backend: live, offline, peer-to-peer and tunnelled migration and CPU
// comparison. `qemu_features`: libvirt's QEMU driver also has abort, force-complete, post-copy,
// bandwidth, maximum downtime, byte counts in the job stats, block migration, auto-converge and
// the completion timeout; libvirt's libxl driver (Xen) has none of them (docs/DESIGN.md § Xen
// facts that shape the driver). `profile` is reported as given.
v1::BackendCapabilities BackendCapabilitiesFor(const std::string& profile, bool qemu_features);

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

// (What the checks read from libvirt's domain XML -- PciHostDevices, LocalFileDisks, DomainDisks,
// XenGuestKind -- is read in libvirt_xml.h.)

// "4.17.0" for 4017000.
std::string FormatVersion(uint64_t v);

// The memory check's reason, with the figures as they are (shared by the agent's destination
// check and the scheduler's pre-check): "destination H has F MiB free; the R MiB dom0 reserve
// [and C MiB claimed by inbound migrations] leave(s) A MiB; instance I needs N MiB", or, when the
// reserve (and claims) exceed what is free, "... that is within its R MiB dom0 reserve [and C MiB
// claimed by inbound migrations], so none is available; ...". `claimed` < 0: not mentioned.
std::string MemoryReason(const std::string& host, int64_t free_mib, int64_t reserved_mib,
                         int64_t claimed_mib, const std::string& instance, int64_t need_mib);

// ---- Xen's paging modes and guest kinds (check "xen_pv_shadow_paging") --------------------------
//
// A PV guest live-migrates only with log-dirty mode, which Xen runs on shadow paging; a Xen built
// without it (CONFIG_SHADOW_PAGING off, e.g. Debian 12's 4.17.7 security build, XSA-495) starts
// the migration and fails after about 2 s ("Failed to enable logdirty"). PVH and HVM guests run on
// HAP and migrate there. libvirt cannot tell the builds apart; `xl info`'s virt_caps line can
// ("pv hvm hap shadow gnttab-v1 gnttab-v2" with shadow paging, no "shadow" without).

// The words of the virt_caps line of `xl info`'s output ("virt_caps : pv hvm hap shadow ...").
// NotFound when the output has no such line or the line lists nothing.
absl::StatusOr<std::vector<std::string>> ParseXenVirtCaps(const std::string& xl_info_output);

// Fills caps' xen_virt_caps, pv_live_migration (has "shadow") and xen_info_error from the output
// of the host's `xl info` (or why it could not be had): unknown -- no virt caps, pv_live_migration
// unset, the reason in xen_info_error -- when `xl_info` is an error or has no virt_caps line.
void SetXenPagingCaps(const absl::StatusOr<std::string>& xl_info, v1::BackendCapabilities* caps);

// Check "xen_pv_shadow_paging" for `instance` on `host` (its role: "source" or "destination"),
// from that host's capabilities; nullopt when the instance is not a Xen guest (no guest_kind).
// Refuses a PV guest where caps.pv_live_migration() is false, with the reason and the ways out;
// passes otherwise (a PVH or HVM guest; shadow paging present; unknown, saying so).
std::optional<v1::CheckResult> XenPvShadowPagingCheck(const v1::DomainInfo& instance,
                                                      const std::string& role,
                                                      const std::string& host,
                                                      const v1::BackendCapabilities& caps);

}  // namespace livemig::driver

#endif  // LIVEMIG_DRIVER_CHECKS_H_
