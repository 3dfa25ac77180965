// The thin layer between LibvirtDriver and libvirt's C API: one method per libvirt call the
// driver makes, with RAII handles and libvirt's own error messages in the returned Status.
//
// Two implementations:
//   - RealLibvirtApi: passes every call through to libvirt.
//   - StrictLibxlApi (a ForwardingLibvirtApi): wraps another LibvirtApi and refuses, with libvirt's
//   own messages, every
//     flag, parameter and call that libvirt 9.0's libxl (Xen) driver refuses
//     (LIBVIRT_FACTS.md). Running the libxl profile through it over a real QEMU connection
//     makes a call Xen would refuse fail the test instead of passing.
#ifndef LIVEMIG_DRIVER_LIBVIRT_API_H_
#define LIVEMIG_DRIVER_LIBVIRT_API_H_

#include <libvirt/libvirt.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace livemig::driver {

struct ConnCloser {
  void operator()(virConnectPtr c) const {
    if (c) virConnectClose(c);
  }
};
struct DomFreer {
  void operator()(virDomainPtr d) const {
    if (d) virDomainFree(d);
  }
};
using ConnHandle = std::shared_ptr<virConnect>;  // shared by the driver's threads
using DomHandle = std::unique_ptr<virDomain, DomFreer>;

struct NodeInfo {
  uint64_t memory_kib = 0;
  std::string cpu_model;
  uint32_t cpus = 0;
  uint32_t mhz = 0;
};

struct DomainBasics {
  std::string uuid;
  std::string name;
  int state = 0;   // virDomainState
  int reason = 0;  // the state's reason (e.g. VIR_DOMAIN_PAUSED_MIGRATION)
  uint64_t memory_kib = 0;
  uint32_t vcpus = 0;
  bool persistent = false;
  int id = -1;
};

// What virDomainGetJobStats returns that the driver uses; absent fields stay nullopt.
struct JobStats {
  int type = VIR_DOMAIN_JOB_NONE;
  std::optional<uint64_t> time_elapsed_ms;
  std::optional<uint64_t> data_total;
  std::optional<uint64_t> data_processed;
  std::optional<uint64_t> data_remaining;
  std::optional<uint64_t> memory_iteration;
  std::optional<uint64_t> memory_bps;
  std::optional<uint64_t> downtime_ms;
  int operation = 0;  // VIR_DOMAIN_JOB_OPERATION_*
};

struct MigrateParams {
  std::string uri;                          // VIR_MIGRATE_PARAM_URI (data URI); empty: none
  std::string dest_name;                    // VIR_MIGRATE_PARAM_DEST_NAME
  std::string dest_xml;                     // VIR_MIGRATE_PARAM_DEST_XML
  std::optional<uint64_t> bandwidth_mib_s;  // VIR_MIGRATE_PARAM_BANDWIDTH
};

class LibvirtApi {
 public:
  virtual ~LibvirtApi() = default;
  virtual absl::StatusOr<ConnHandle> Open(const std::string& uri) = 0;
  virtual bool IsAlive(virConnectPtr c) = 0;
  virtual absl::StatusOr<std::string> GetType(virConnectPtr c) = 0;
  virtual absl::StatusOr<uint64_t> GetVersion(virConnectPtr c) = 0;
  virtual absl::StatusOr<uint64_t> GetLibVersion(virConnectPtr c) = 0;
  virtual absl::StatusOr<std::string> GetCapabilities(virConnectPtr c) = 0;
  // virConnectCompareCPU: VIR_CPU_COMPARE_INCOMPATIBLE / IDENTICAL / SUPERSET.
  virtual absl::StatusOr<int> CompareCPU(virConnectPtr c, const std::string& cpu_xml) = 0;
  virtual absl::StatusOr<NodeInfo> GetNodeInfo(virConnectPtr c) = 0;
  virtual absl::StatusOr<uint64_t> GetFreeMemoryBytes(virConnectPtr c) = 0;
  virtual absl::StatusOr<std::vector<DomHandle>> ListAllDomains(virConnectPtr c) = 0;
  // NotFound when no domain has this UUID.
  virtual absl::StatusOr<DomHandle> LookupByUUID(virConnectPtr c, const std::string& uuid) = 0;
  virtual absl::StatusOr<DomHandle> DefineXML(virConnectPtr c, const std::string& xml) = 0;
  virtual absl::StatusOr<DomainBasics> Describe(virDomainPtr d) = 0;
  virtual absl::StatusOr<std::string> GetXMLDesc(virDomainPtr d, unsigned int flags) = 0;
  virtual absl::StatusOr<JobStats> GetJobStats(virDomainPtr d, unsigned int flags) = 0;
  virtual absl::Status MigrateToURI3(virDomainPtr d, const std::string& dconnuri,
                                     const MigrateParams& params, unsigned int flags) = 0;
  // virDomainGetBlockInfo's capacity: the virtual size, in bytes, of the disk `disk` (its target
  // name or its source path).
  virtual absl::StatusOr<uint64_t> GetBlockCapacity(virDomainPtr d, const std::string& disk) = 0;
  virtual absl::Status AbortJob(virDomainPtr d) = 0;
  virtual absl::Status MigrateSetMaxDowntime(virDomainPtr d, uint64_t ms) = 0;
  virtual absl::Status MigrateSetMaxSpeed(virDomainPtr d, uint64_t mib_s) = 0;
  virtual absl::Status MigrateStartPostCopy(virDomainPtr d) = 0;
  virtual absl::Status Suspend(virDomainPtr d) = 0;
  virtual absl::Status Resume(virDomainPtr d) = 0;
  virtual absl::Status Destroy(virDomainPtr d) = 0;
  virtual absl::Status Undefine(virDomainPtr d) = 0;
};

// A LibvirtApi that passes every call to another (`inner_`): the base of the wrappers, which
// override only the calls they change.
class ForwardingLibvirtApi : public LibvirtApi {
 public:
  explicit ForwardingLibvirtApi(std::unique_ptr<LibvirtApi> inner) : inner_(std::move(inner)) {}
  absl::StatusOr<ConnHandle> Open(const std::string& uri) override;
  bool IsAlive(virConnectPtr c) override;
  absl::StatusOr<std::string> GetType(virConnectPtr c) override;
  absl::StatusOr<uint64_t> GetVersion(virConnectPtr c) override;
  absl::StatusOr<uint64_t> GetLibVersion(virConnectPtr c) override;
  absl::StatusOr<std::string> GetCapabilities(virConnectPtr c) override;
  absl::StatusOr<int> CompareCPU(virConnectPtr c, const std::string& cpu_xml) override;
  absl::StatusOr<NodeInfo> GetNodeInfo(virConnectPtr c) override;
  absl::StatusOr<uint64_t> GetFreeMemoryBytes(virConnectPtr c) override;
  absl::StatusOr<std::vector<DomHandle>> ListAllDomains(virConnectPtr c) override;
  absl::StatusOr<DomHandle> LookupByUUID(virConnectPtr c, const std::string& uuid) override;
  absl::StatusOr<DomHandle> DefineXML(virConnectPtr c, const std::string& xml) override;
  absl::StatusOr<DomainBasics> Describe(virDomainPtr d) override;
  absl::StatusOr<std::string> GetXMLDesc(virDomainPtr d, unsigned int flags) override;
  absl::StatusOr<JobStats> GetJobStats(virDomainPtr d, unsigned int flags) override;
  absl::Status MigrateToURI3(virDomainPtr d, const std::string& dconnuri,
                             const MigrateParams& params, unsigned int flags) override;
  absl::StatusOr<uint64_t> GetBlockCapacity(virDomainPtr d, const std::string& disk) override;
  absl::Status AbortJob(virDomainPtr d) override;
  absl::Status MigrateSetMaxDowntime(virDomainPtr d, uint64_t ms) override;
  absl::Status MigrateSetMaxSpeed(virDomainPtr d, uint64_t mib_s) override;
  absl::Status MigrateStartPostCopy(virDomainPtr d) override;
  absl::Status Suspend(virDomainPtr d) override;
  absl::Status Resume(virDomainPtr d) override;
  absl::Status Destroy(virDomainPtr d) override;
  absl::Status Undefine(virDomainPtr d) override;

 protected:
  std::unique_ptr<LibvirtApi> inner_;
};

std::unique_ptr<LibvirtApi> NewRealLibvirtApi();
// Takes ownership of `inner`.
std::unique_ptr<LibvirtApi> NewStrictLibxlApi(std::unique_ptr<LibvirtApi> inner);

// The flags and parameters libvirt 9.0's libxl driver accepts for migration.
constexpr unsigned int kLibxlMigrationFlags = VIR_MIGRATE_LIVE | VIR_MIGRATE_PEER2PEER |
                                              VIR_MIGRATE_TUNNELLED | VIR_MIGRATE_PERSIST_DEST |
                                              VIR_MIGRATE_UNDEFINE_SOURCE | VIR_MIGRATE_PAUSED;

// libvirt's last error as a Status: "what: libvirt's message", with a code that says what to do
// (no connection → Unavailable, no domain → NotFound, unsupported → FailedPrecondition, ...).
absl::Status LastLibvirtError(const std::string& what);

}  // namespace livemig::driver

#endif  // LIVEMIG_DRIVER_LIBVIRT_API_H_
