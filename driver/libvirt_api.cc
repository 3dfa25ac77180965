#include "driver/libvirt_api.h"

#include <libvirt/virterror.h>

#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace livemig::driver {
namespace {

void SilentErrorHandler(void*, virErrorPtr) {}

// Installs a silent default error handler once (libvirt prints every error to stderr otherwise;
// the driver reports them itself).
void InitLibvirtOnce() {
  static const bool done = [] {
    virInitialize();
    virSetErrorFunc(nullptr, SilentErrorHandler);
    return true;
  }();
  (void)done;
}

absl::Status Unsupported(const std::string& fn) {
  return absl::FailedPreconditionError(
      absl::StrCat("this function is not supported by the connection driver: ", fn));
}

class RealLibvirtApi : public LibvirtApi {
 public:
  RealLibvirtApi() { InitLibvirtOnce(); }

  absl::StatusOr<ConnHandle> Open(const std::string& uri) override {
    virConnectPtr c = virConnectOpen(uri.c_str());
    if (c == nullptr) {
      absl::Status s = LastLibvirtError(absl::StrCat("cannot connect to libvirt at ", uri));
      return absl::UnavailableError(s.message());
    }
    return ConnHandle(c, ConnCloser());
  }
  bool IsAlive(virConnectPtr c) override { return virConnectIsAlive(c) == 1; }
  absl::StatusOr<std::string> GetType(virConnectPtr c) override {
    const char* t = virConnectGetType(c);
    if (t == nullptr) return LastLibvirtError("virConnectGetType");
    return std::string(t);
  }
  absl::StatusOr<uint64_t> GetVersion(virConnectPtr c) override {
    unsigned long v = 0;
    if (virConnectGetVersion(c, &v) < 0) return LastLibvirtError("virConnectGetVersion");
    return static_cast<uint64_t>(v);
  }
  absl::StatusOr<uint64_t> GetLibVersion(virConnectPtr c) override {
    unsigned long v = 0;
    if (virConnectGetLibVersion(c, &v) < 0) return LastLibvirtError("virConnectGetLibVersion");
    return static_cast<uint64_t>(v);
  }
  absl::StatusOr<std::string> GetCapabilities(virConnectPtr c) override {
    char* x = virConnectGetCapabilities(c);
    if (x == nullptr) return LastLibvirtError("virConnectGetCapabilities");
    std::string out(x);
    free(x);
    return out;
  }
  absl::StatusOr<int> CompareCPU(virConnectPtr c, const std::string& xml) override {
    int r = virConnectCompareCPU(c, xml.c_str(), 0);
    if (r < 0) return LastLibvirtError("virConnectCompareCPU");
    return r;
  }
  absl::StatusOr<NodeInfo> GetNodeInfo(virConnectPtr c) override {
    virNodeInfo info;
    if (virNodeGetInfo(c, &info) < 0) return LastLibvirtError("virNodeGetInfo");
    NodeInfo n;
    n.memory_kib = info.memory;
    n.cpu_model = info.model;
    n.cpus = info.cpus;
    n.mhz = info.mhz;
    return n;
  }
  absl::StatusOr<uint64_t> GetFreeMemoryBytes(virConnectPtr c) override {
    unsigned long long b = virNodeGetFreeMemory(c);
    if (b == 0) return LastLibvirtError("virNodeGetFreeMemory");
    return static_cast<uint64_t>(b);
  }
  absl::StatusOr<std::vector<DomHandle>> ListAllDomains(virConnectPtr c) override {
    virDomainPtr* doms = nullptr;
    int n = virConnectListAllDomains(c, &doms, 0);
    if (n < 0) return LastLibvirtError("virConnectListAllDomains");
    std::vector<DomHandle> out;
    for (int i = 0; i < n; ++i) out.emplace_back(doms[i]);
    free(doms);
    return out;
  }
  absl::StatusOr<DomHandle> LookupByUUID(virConnectPtr c, const std::string& uuid) override {
    virDomainPtr d = virDomainLookupByUUIDString(c, uuid.c_str());
    if (d == nullptr) return LastLibvirtError(absl::StrCat("domain ", uuid));
    return DomHandle(d);
  }
  absl::StatusOr<DomHandle> DefineXML(virConnectPtr c, const std::string& xml) override {
    virDomainPtr d = virDomainDefineXML(c, xml.c_str());
    if (d == nullptr) return LastLibvirtError("virDomainDefineXML");
    return DomHandle(d);
  }
  absl::StatusOr<DomainBasics> Describe(virDomainPtr d) override {
    DomainBasics b;
    char uuid[VIR_UUID_STRING_BUFLEN];
    if (virDomainGetUUIDString(d, uuid) < 0) return LastLibvirtError("virDomainGetUUIDString");
    b.uuid = uuid;
    const char* name = virDomainGetName(d);
    b.name = name ? name : "";
    virDomainInfo info;
    if (virDomainGetInfo(d, &info) < 0) return LastLibvirtError("virDomainGetInfo " + b.uuid);
    b.memory_kib = info.memory ? info.memory : info.maxMem;
    b.vcpus = info.nrVirtCpu;
    if (virDomainGetState(d, &b.state, &b.reason, 0) < 0) {
      return LastLibvirtError("virDomainGetState " + b.uuid);
    }
    b.persistent = virDomainIsPersistent(d) == 1;
    b.id = static_cast<int>(virDomainGetID(d));
    return b;
  }
  absl::StatusOr<std::string> GetXMLDesc(virDomainPtr d, unsigned int flags) override {
    char* x = virDomainGetXMLDesc(d, flags);
    if (x == nullptr) return LastLibvirtError("virDomainGetXMLDesc");
    std::string out(x);
    free(x);
    return out;
  }
  absl::StatusOr<JobStats> GetJobStats(virDomainPtr d, unsigned int flags) override {
    int type = 0;
    virTypedParameterPtr params = nullptr;
    int n = 0;
    if (virDomainGetJobStats(d, &type, &params, &n, flags) < 0) {
      return LastLibvirtError("virDomainGetJobStats");
    }
    JobStats s;
    s.type = type;
    auto get = [&](const char* name) -> std::optional<uint64_t> {
      unsigned long long v = 0;
      if (virTypedParamsGetULLong(params, n, name, &v) == 1) return v;
      return std::nullopt;
    };
    s.time_elapsed_ms = get(VIR_DOMAIN_JOB_TIME_ELAPSED);
    s.data_total = get(VIR_DOMAIN_JOB_DATA_TOTAL);
    s.data_processed = get(VIR_DOMAIN_JOB_DATA_PROCESSED);
    s.data_remaining = get(VIR_DOMAIN_JOB_DATA_REMAINING);
    s.memory_iteration = get(VIR_DOMAIN_JOB_MEMORY_ITERATION);
    s.memory_bps = get(VIR_DOMAIN_JOB_MEMORY_BPS);
    s.downtime_ms = get(VIR_DOMAIN_JOB_DOWNTIME);
    int op = 0;
    if (virTypedParamsGetInt(params, n, VIR_DOMAIN_JOB_OPERATION, &op) == 1) s.operation = op;
    virTypedParamsFree(params, n);
    return s;
  }
  absl::Status MigrateToURI3(virDomainPtr d, const std::string& dconnuri, const MigrateParams& p,
                             unsigned int flags) override {
    virTypedParameterPtr params = nullptr;
    int n = 0, max = 0;
    if (!p.uri.empty())
      virTypedParamsAddString(&params, &n, &max, VIR_MIGRATE_PARAM_URI, p.uri.c_str());
    if (!p.dest_name.empty()) {
      virTypedParamsAddString(&params, &n, &max, VIR_MIGRATE_PARAM_DEST_NAME, p.dest_name.c_str());
    }
    if (!p.dest_xml.empty()) {
      virTypedParamsAddString(&params, &n, &max, VIR_MIGRATE_PARAM_DEST_XML, p.dest_xml.c_str());
    }
    if (p.bandwidth_mib_s) {
      virTypedParamsAddULLong(&params, &n, &max, VIR_MIGRATE_PARAM_BANDWIDTH, *p.bandwidth_mib_s);
    }
    int r = virDomainMigrateToURI3(d, dconnuri.c_str(), params, n, flags);
    absl::Status s = r < 0 ? LastLibvirtError("migration") : absl::OkStatus();
    virTypedParamsFree(params, n);
    return s;
  }
  absl::StatusOr<uint64_t> GetBlockCapacity(virDomainPtr d, const std::string& disk) override {
    virDomainBlockInfo info;
    if (virDomainGetBlockInfo(d, disk.c_str(), &info, 0) < 0) {
      return LastLibvirtError("virDomainGetBlockInfo " + disk);
    }
    return static_cast<uint64_t>(info.capacity);
  }
  absl::Status AbortJob(virDomainPtr d) override {
    return virDomainAbortJob(d) < 0 ? LastLibvirtError("virDomainAbortJob") : absl::OkStatus();
  }
  absl::Status MigrateSetMaxDowntime(virDomainPtr d, uint64_t ms) override {
    return virDomainMigrateSetMaxDowntime(d, ms, 0) < 0
               ? LastLibvirtError("virDomainMigrateSetMaxDowntime")
               : absl::OkStatus();
  }
  absl::Status MigrateSetMaxSpeed(virDomainPtr d, uint64_t mib_s) override {
    return virDomainMigrateSetMaxSpeed(d, mib_s, 0) < 0
               ? LastLibvirtError("virDomainMigrateSetMaxSpeed")
               : absl::OkStatus();
  }
  absl::Status MigrateStartPostCopy(virDomainPtr d) override {
    return virDomainMigrateStartPostCopy(d, 0) < 0
               ? LastLibvirtError("virDomainMigrateStartPostCopy")
               : absl::OkStatus();
  }
  absl::Status Suspend(virDomainPtr d) override {
    return virDomainSuspend(d) < 0 ? LastLibvirtError("virDomainSuspend") : absl::OkStatus();
  }
  absl::Status Resume(virDomainPtr d) override {
    return virDomainResume(d) < 0 ? LastLibvirtError("virDomainResume") : absl::OkStatus();
  }
  absl::Status Destroy(virDomainPtr d) override {
    return virDomainDestroy(d) < 0 ? LastLibvirtError("virDomainDestroy") : absl::OkStatus();
  }
  absl::Status Undefine(virDomainPtr d) override {
    return virDomainUndefine(d) < 0 ? LastLibvirtError("virDomainUndefine") : absl::OkStatus();
  }
};

// Refuses what libvirt 9.0's libxl driver refuses, with libvirt's own messages.
class StrictLibxlApi : public ForwardingLibvirtApi {
 public:
  using ForwardingLibvirtApi::ForwardingLibvirtApi;

  absl::StatusOr<JobStats> GetJobStats(virDomainPtr d, unsigned int flags) override {
    // libxlDomainGetJobStats: no flags (no COMPLETED stats), and only the elapsed time.
    if (flags != 0) {
      return absl::InvalidArgumentError(
          absl::StrFormat("unsupported flags (0x%x) in function libxlDomainGetJobStats", flags));
    }
    auto s = inner_->GetJobStats(d, 0);
    if (!s.ok()) return s;
    JobStats out;
    out.type = s->type;
    out.time_elapsed_ms = s->time_elapsed_ms;
    return out;
  }
  absl::Status MigrateToURI3(virDomainPtr d, const std::string& dconnuri, const MigrateParams& p,
                             unsigned int flags) override {
    if (flags & ~kLibxlMigrationFlags) {
      return absl::InvalidArgumentError(
          absl::StrFormat("unsupported flags (0x%x) in function libxlDomainMigrateToURI3",
                          flags & ~kLibxlMigrationFlags));
    }
    if (!(flags & VIR_MIGRATE_PEER2PEER)) {
      return absl::FailedPreconditionError(
          "Requested operation is not valid: migration without peer-to-peer is not supported "
          "by the libxl driver");
    }
    if (p.bandwidth_mib_s) {
      return absl::InvalidArgumentError("parameter 'bandwidth' not supported");
    }
    return inner_->MigrateToURI3(d, dconnuri, p, flags);
  }
  absl::Status AbortJob(virDomainPtr) override { return Unsupported("virDomainAbortJob"); }
  absl::StatusOr<uint64_t> GetBlockCapacity(virDomainPtr, const std::string&) override {
    return Unsupported("virDomainGetBlockInfo");
  }
  absl::Status MigrateSetMaxDowntime(virDomainPtr, uint64_t) override {
    return Unsupported("virDomainMigrateSetMaxDowntime");
  }
  absl::Status MigrateSetMaxSpeed(virDomainPtr, uint64_t) override {
    return Unsupported("virDomainMigrateSetMaxSpeed");
  }
  absl::Status MigrateStartPostCopy(virDomainPtr) override {
    return Unsupported("virDomainMigrateStartPostCopy");
  }
};

}  // namespace

absl::StatusOr<ConnHandle> ForwardingLibvirtApi::Open(const std::string& uri) {
  return inner_->Open(uri);
}
bool ForwardingLibvirtApi::IsAlive(virConnectPtr c) { return inner_->IsAlive(c); }
absl::StatusOr<std::string> ForwardingLibvirtApi::GetType(virConnectPtr c) {
  return inner_->GetType(c);
}
absl::StatusOr<uint64_t> ForwardingLibvirtApi::GetVersion(virConnectPtr c) {
  return inner_->GetVersion(c);
}
absl::StatusOr<uint64_t> ForwardingLibvirtApi::GetLibVersion(virConnectPtr c) {
  return inner_->GetLibVersion(c);
}
absl::StatusOr<std::string> ForwardingLibvirtApi::GetCapabilities(virConnectPtr c) {
  return inner_->GetCapabilities(c);
}
absl::StatusOr<int> ForwardingLibvirtApi::CompareCPU(virConnectPtr c, const std::string& cpu_xml) {
  return inner_->CompareCPU(c, cpu_xml);
}
absl::StatusOr<NodeInfo> ForwardingLibvirtApi::GetNodeInfo(virConnectPtr c) {
  return inner_->GetNodeInfo(c);
}
absl::StatusOr<uint64_t> ForwardingLibvirtApi::GetFreeMemoryBytes(virConnectPtr c) {
  return inner_->GetFreeMemoryBytes(c);
}
absl::StatusOr<std::vector<DomHandle>> ForwardingLibvirtApi::ListAllDomains(virConnectPtr c) {
  return inner_->ListAllDomains(c);
}
absl::StatusOr<DomHandle> ForwardingLibvirtApi::LookupByUUID(virConnectPtr c,
                                                             const std::string& uuid) {
  return inner_->LookupByUUID(c, uuid);
}
absl::StatusOr<DomHandle> ForwardingLibvirtApi::DefineXML(virConnectPtr c, const std::string& xml) {
  return inner_->DefineXML(c, xml);
}
absl::StatusOr<DomainBasics> ForwardingLibvirtApi::Describe(virDomainPtr d) {
  return inner_->Describe(d);
}
absl::StatusOr<std::string> ForwardingLibvirtApi::GetXMLDesc(virDomainPtr d, unsigned int flags) {
  return inner_->GetXMLDesc(d, flags);
}
absl::StatusOr<JobStats> ForwardingLibvirtApi::GetJobStats(virDomainPtr d, unsigned int flags) {
  return inner_->GetJobStats(d, flags);
}
absl::Status ForwardingLibvirtApi::MigrateToURI3(virDomainPtr d, const std::string& dconnuri,
                                                 const MigrateParams& params, unsigned int flags) {
  return inner_->MigrateToURI3(d, dconnuri, params, flags);
}
absl::StatusOr<uint64_t> ForwardingLibvirtApi::GetBlockCapacity(virDomainPtr d,
                                                                const std::string& disk) {
  return inner_->GetBlockCapacity(d, disk);
}
absl::Status ForwardingLibvirtApi::AbortJob(virDomainPtr d) { return inner_->AbortJob(d); }
absl::Status ForwardingLibvirtApi::MigrateSetMaxDowntime(virDomainPtr d, uint64_t ms) {
  return inner_->MigrateSetMaxDowntime(d, ms);
}
absl::Status ForwardingLibvirtApi::MigrateSetMaxSpeed(virDomainPtr d, uint64_t mib_s) {
  return inner_->MigrateSetMaxSpeed(d, mib_s);
}
absl::Status ForwardingLibvirtApi::MigrateStartPostCopy(virDomainPtr d) {
  return inner_->MigrateStartPostCopy(d);
}
absl::Status ForwardingLibvirtApi::Suspend(virDomainPtr d) { return inner_->Suspend(d); }
absl::Status ForwardingLibvirtApi::Resume(virDomainPtr d) { return inner_->Resume(d); }
absl::Status ForwardingLibvirtApi::Destroy(virDomainPtr d) { return inner_->Destroy(d); }
absl::Status ForwardingLibvirtApi::Undefine(virDomainPtr d) { return inner_->Undefine(d); }

absl::Status LastLibvirtError(const std::string& what) {
  virErrorPtr e = virGetLastError();
  std::string msg = e && e->message ? e->message : "unknown libvirt error";
  const int code = e ? e->code : VIR_ERR_INTERNAL_ERROR;
  std::string full = absl::StrCat(what, ": ", msg);
  switch (code) {
    case VIR_ERR_NO_DOMAIN:
      return absl::NotFoundError(full);
    case VIR_ERR_NO_CONNECT:
    case VIR_ERR_INVALID_CONN:
    case VIR_ERR_SYSTEM_ERROR:
    case VIR_ERR_RPC:
    case VIR_ERR_AUTH_FAILED:
      return absl::UnavailableError(full);
    case VIR_ERR_NO_SUPPORT:
    case VIR_ERR_ARGUMENT_UNSUPPORTED:
    case VIR_ERR_OPERATION_UNSUPPORTED:
      return absl::FailedPreconditionError(full);
    case VIR_ERR_INVALID_ARG:
      return absl::InvalidArgumentError(full);
    case VIR_ERR_OPERATION_INVALID:
    case VIR_ERR_OPERATION_FAILED:
      return absl::FailedPreconditionError(full);
    case VIR_ERR_OPERATION_ABORTED:
      return absl::CancelledError(full);
    case VIR_ERR_OPERATION_TIMEOUT:
    case VIR_ERR_AGENT_UNRESPONSIVE:
      return absl::DeadlineExceededError(full);
    default:
      return absl::InternalError(full);
  }
}

std::unique_ptr<LibvirtApi> NewRealLibvirtApi() { return std::make_unique<RealLibvirtApi>(); }

std::unique_ptr<LibvirtApi> NewStrictLibxlApi(std::unique_ptr<LibvirtApi> inner) {
  return std::make_unique<StrictLibxlApi>(std::move(inner));
}

}  // namespace livemig::driver
