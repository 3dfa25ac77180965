// Size: one ComputeDriver over libvirt (QEMU and Xen's libxl): every contract method with its
// libvirt error mapping, the transfer's monitor and the host commands (libvirt's XML is read in
// libvirt_xml.cc); the transfer (Monitor to ForceCompleteLiveMigration, ~320 lines) could be a
// file of its own.
#include "driver/libvirt_driver.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/status_map.h"
#include "driver/checks.h"
#include "driver/host_files.h"
#include "driver/libvirt_xml.h"

namespace livemig::driver {
namespace {

// Domain-0 on Xen: libvirt lists it with id 0 and this UUID.
constexpr char kDomain0Uuid[] = "00000000-0000-0000-0000-000000000000";

constexpr uint64_t kMiB = 1ull << 20;

std::string SystemHostname() {
  char buf[256] = {0};
  gethostname(buf, sizeof(buf) - 1);
  return buf;
}

absl::Status MkdirP(const std::string& path) {
  std::string cur;
  for (size_t i = 0; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      if (!cur.empty() && mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST) {
        return absl::InternalError(absl::StrCat("mkdir ", cur, ": ", std::strerror(errno)));
      }
    }
    if (i < path.size()) cur += path[i];
  }
  return absl::OkStatus();
}

v1::DomainState StateFrom(int state, int reason) {
  switch (state) {
    case VIR_DOMAIN_RUNNING:
      return v1::DOMAIN_STATE_RUNNING;
    case VIR_DOMAIN_BLOCKED:
      return v1::DOMAIN_STATE_BLOCKED;
    case VIR_DOMAIN_PAUSED:
      if (reason == VIR_DOMAIN_PAUSED_MIGRATION) return v1::DOMAIN_STATE_INCOMING_PAUSED;
      if (reason == VIR_DOMAIN_PAUSED_POSTCOPY) return v1::DOMAIN_STATE_INCOMING_POST_COPY;
      return v1::DOMAIN_STATE_PAUSED;
    case VIR_DOMAIN_SHUTDOWN:
      return v1::DOMAIN_STATE_SHUTDOWN;
    case VIR_DOMAIN_SHUTOFF:
      return v1::DOMAIN_STATE_SHUTOFF;
    case VIR_DOMAIN_CRASHED:
      return v1::DOMAIN_STATE_CRASHED;
    case VIR_DOMAIN_PMSUSPENDED:
      return v1::DOMAIN_STATE_PMSUSPENDED;
    default:
      return v1::DOMAIN_STATE_UNSPECIFIED;
  }
}

// libvirt's name of a state's reason, as virsh domstate --reason shows it (DomainInfo's
// state_reason); "" for reasons this driver does not name.
std::string ReasonName(int state, int reason) {
  switch (state) {
    case VIR_DOMAIN_RUNNING:
      switch (reason) {
        case VIR_DOMAIN_RUNNING_BOOTED:
          return "booted";
        case VIR_DOMAIN_RUNNING_MIGRATED:
          return "migrated";
        case VIR_DOMAIN_RUNNING_RESTORED:
          return "restored";
        case VIR_DOMAIN_RUNNING_UNPAUSED:
          return "unpaused";
        case VIR_DOMAIN_RUNNING_MIGRATION_CANCELED:
          return "migration canceled";
        case VIR_DOMAIN_RUNNING_POSTCOPY:
          return "post-copy";
        default:
          return "";
      }
    case VIR_DOMAIN_PAUSED:
      switch (reason) {
        case VIR_DOMAIN_PAUSED_USER:
          return "user";
        case VIR_DOMAIN_PAUSED_MIGRATION:
          return "migration";
        case VIR_DOMAIN_PAUSED_SAVE:
          return "saving";
        case VIR_DOMAIN_PAUSED_IOERROR:
          return "I/O error";
        case VIR_DOMAIN_PAUSED_SHUTTING_DOWN:
          return "shutting down";
        case VIR_DOMAIN_PAUSED_POSTCOPY:
          return "post-copy";
        case VIR_DOMAIN_PAUSED_POSTCOPY_FAILED:
          return "post-copy failed";
        default:
          return "";
      }
    case VIR_DOMAIN_SHUTOFF:
      switch (reason) {
        case VIR_DOMAIN_SHUTOFF_SHUTDOWN:
          return "shutdown";
        case VIR_DOMAIN_SHUTOFF_DESTROYED:
          return "destroyed";
        case VIR_DOMAIN_SHUTOFF_MIGRATED:
          return "migrated";
        default:
          return "";
      }
    default:
      return "";
  }
}

bool IsRunningState(int state) {
  return state == VIR_DOMAIN_RUNNING || state == VIR_DOMAIN_BLOCKED || state == VIR_DOMAIN_PAUSED;
}

// The disk files the destination created for a migration's block migration, one path a line.
std::string DisksRecordPath(const std::string& state_dir, const std::string& migration_id) {
  return absl::StrCat(state_dir, "/disks/", migration_id, ".list");
}

Volumes::Options VolumesOptions(const LibvirtDriver::Options& o) {
  Volumes::Options v;
  v.hostname = o.hostname;
  v.volumes_file = o.volumes_file;
  v.specs = o.volumes;
  v.state_dir = o.state_dir;
  return v;
}

}  // namespace

v1::BackendCapabilities LibvirtDriver::ProfileCapabilities(const std::string& profile,
                                                           bool tunnelled) {
  v1::BackendCapabilities c = BackendCapabilitiesFor(profile, /*qemu_features=*/profile == "qemu");
  c.set_tunnel_migration_stream(tunnelled);
  return c;
}

LibvirtDriver::LibvirtDriver(Options options, std::unique_ptr<LibvirtApi> api)
    : options_(std::move(options)),
      api_(std::move(api)),
      volumes_(VolumesOptions(options_),
               [this](const std::string& script) { return HostShell(script); }),
      finished_({options_.finished_transfer_keep, options_.max_finished_transfers}) {}

void LibvirtDriver::PruneTransfersLocked() {
  for (const std::string& id : finished_.Expire(options_.clock->Now())) transfers_.erase(id);
}

absl::StatusOr<std::unique_ptr<LibvirtDriver>> LibvirtDriver::Create(
    Options o, std::unique_ptr<LibvirtApi> api) {
  if (o.profile != "auto" && o.profile != "libxl" && o.profile != "libxl-strict" &&
      o.profile != "qemu") {
    return absl::InvalidArgumentError(absl::StrCat("unknown libvirt profile '", o.profile,
                                                   "': use auto, libxl, libxl-strict or qemu"));
  }
  if (o.hostname.empty()) o.hostname = SystemHostname();
  if (!o.volumes_file.empty()) {
    // The volumes this host may attach (refusing to start on a bad file: nothing is guessed).
    ASSIGN_OR_RETURN(o.volumes, Volumes::Load(o.volumes_file));
  }
  if (!api) api = NewRealLibvirtApi();
  const std::string requested = o.profile;
  auto d = std::unique_ptr<LibvirtDriver>(new LibvirtDriver(o, std::move(api)));
  ASSIGN_OR_RETURN(ConnHandle conn, d->Conn());
  ASSIGN_OR_RETURN(d->hypervisor_type_, d->api_->GetType(conn.get()));
  std::string profile = requested;
  if (profile == "auto") {
    if (d->hypervisor_type_ == "Xen") {
      profile = "libxl";
    } else if (d->hypervisor_type_ == "QEMU") {
      profile = "qemu";
    } else {
      // The test driver and others: inventory and lifecycle only; migration is refused by
      // libvirt itself. Treat it with the strictest profile.
      profile = "libxl";
    }
  }
  if (profile == "libxl-strict") d->api_ = NewStrictLibxlApi(std::move(d->api_));
  d->profile_ = profile;
  const bool libxl = profile != "qemu";
  const bool tunnelled = o.tunnelled.value_or(libxl);
  d->caps_ = ProfileCapabilities(profile, tunnelled);
  if (d->IsLibxl()) {
    // The host's paging modes, once: a Xen without shadow paging cannot live-migrate PV guests,
    // and libvirt cannot tell (XEN_LAB_FACTS.md). Unknown when the command fails: never refused on.
    SetXenPagingCaps(o.xen_info_command.empty()
                         ? absl::StatusOr<std::string>(absl::FailedPreconditionError(
                               "the Xen info command is disabled (--xen-info-command is empty)"))
                         : RunHostCommand(o.xen_info_command, o.xen_info_timeout),
                     &d->caps_);
  }
  RETURN_IF_ERROR(MkdirP(o.state_dir + "/staged"));
  RETURN_IF_ERROR(MkdirP(o.state_dir + "/disks"));
  RETURN_IF_ERROR(MkdirP(o.state_dir + "/volumes"));
  return d;
}

absl::StatusOr<std::string> LibvirtDriver::RunHostCommand(const std::string& command,
                                                          absl::Duration timeout) {
  const std::string what = absl::StrCat("`", command, "`");
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("cannot run ", what, ": ", std::strerror(errno)));
  }
  if (pipe2(err, O_CLOEXEC) != 0) {
    const int e = errno;
    close(out[0]);
    close(out[1]);
    return absl::InternalError(absl::StrCat("cannot run ", what, ": ", std::strerror(e)));
  }
  const pid_t pid = fork();
  if (pid == 0) {
    // The child: async-signal-safe calls only (the agent has threads). Its own process group, so
    // that a timeout kills whatever the shell started; no signal blocked (the agent blocks some).
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    setpgid(0, 0);
    const int in = open("/dev/null", O_RDONLY);
    if (in >= 0) dup2(in, 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  const int fork_errno = errno;
  close(out[1]);
  close(err[1]);
  if (pid < 0) {
    close(out[0]);
    close(err[0]);
    return absl::InternalError(absl::StrCat("cannot run ", what, ": ", std::strerror(fork_errno)));
  }
  setpgid(pid, pid);  // also here: whichever runs first
  constexpr size_t kMaxOutput = 1 << 20;
  std::string stdout_text, stderr_text;
  struct pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  std::string* sinks[2] = {&stdout_text, &stderr_text};
  const absl::Time deadline = absl::Now() + timeout;
  bool timed_out = false;
  int poll_errno = 0;
  while (fds[0].fd >= 0 || fds[1].fd >= 0) {
    const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (ms <= 0) {
      timed_out = true;
      break;
    }
    const int r = poll(fds, 2, static_cast<int>(std::min<int64_t>(ms, 1000)));
    if (r < 0 && errno != EINTR) {
      poll_errno = errno;
      break;
    }
    if (r <= 0) continue;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      const ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n > 0) {
        if (sinks[i]->size() < kMaxOutput) sinks[i]->append(buf, static_cast<size_t>(n));
      } else {
        close(fds[i].fd);
        fds[i].fd = -1;
      }
    }
  }
  if (timed_out || poll_errno != 0) {  // never wait for a command left running
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
  }
  for (auto& f : fds) {
    if (f.fd >= 0) close(f.fd);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (poll_errno != 0) {
    return absl::InternalError(
        absl::StrCat("cannot read the output of ", what, ": ", std::strerror(poll_errno)));
  }
  if (timed_out) {
    return absl::DeadlineExceededError(
        absl::StrCat(what, " did not finish in ", absl::FormatDuration(timeout), " (killed)"));
  }
  std::string err_text(absl::StripAsciiWhitespace(stderr_text));
  if (err_text.size() > 300) err_text = err_text.substr(0, 300) + "...";
  if (WIFSIGNALED(status)) {
    return absl::InternalError(absl::StrCat(what, " was killed by signal ", WTERMSIG(status),
                                            err_text.empty() ? "" : absl::StrCat(": ", err_text)));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat(what, " failed (exit status ",
                                            WIFEXITED(status) ? WEXITSTATUS(status) : -1, ")",
                                            err_text.empty() ? "" : absl::StrCat(": ", err_text)));
  }
  return stdout_text;
}

std::string LibvirtDriver::HypervisorName() const {
  if (IsLibxl())
    return absl::StrCat("Xen (libxl", profile_ == "libxl-strict" ? ", strict" : "", ") on ",
                        options_.hostname);
  return absl::StrCat(hypervisor_type_, " on ", options_.hostname);
}

absl::StatusOr<ConnHandle> LibvirtDriver::Conn() {
  absl::MutexLock l(&conn_mu_);
  if (conn_ && api_->IsAlive(conn_.get())) return conn_;
  // (Re)connect: the daemon restarted or the connection dropped.
  ASSIGN_OR_RETURN(conn_, api_->Open(options_.uri));
  return conn_;
}

absl::StatusOr<DomHandle> LibvirtDriver::Lookup(const std::string& uuid) {
  RETURN_IF_ERROR(ValidateUuid(uuid));
  ASSIGN_OR_RETURN(ConnHandle c, Conn());
  return api_->LookupByUUID(c.get(), uuid);
}

std::vector<std::string> LibvirtDriver::Bridges() const {
  if (!options_.bridges.empty()) return options_.bridges;
  std::vector<std::string> out;
  DIR* dir = opendir("/sys/class/net");
  if (dir == nullptr) return out;
  while (dirent* e = readdir(dir)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    struct stat st;
    if (stat(("/sys/class/net/" + name + "/bridge").c_str(), &st) == 0) out.push_back(name);
  }
  closedir(dir);
  std::sort(out.begin(), out.end());
  return out;
}

v1::CpuInfo LibvirtDriver::HostCpu(const std::string& caps_xml) const {
  v1::CpuInfo cpu = ReadHostCapabilities(caps_xml).cpu;
  if (options_.cpu_model_override) cpu.set_model(*options_.cpu_model_override);
  if (options_.cpu_features_override) {
    cpu.clear_features();
    for (const auto& f : *options_.cpu_features_override) cpu.add_features(f);
    cpu.clear_xml();  // an overridden CPU is compared by features, not by CompareCPU
  }
  return cpu;
}

absl::StatusOr<v1::DomainInfo> LibvirtDriver::ToDomainInfo(virDomainPtr d) {
  ASSIGN_OR_RETURN(DomainBasics b, api_->Describe(d));
  // Xen: virConnectListAllDomains lists Domain-0 (id 0, all-zero UUID), the host itself; it is
  // never an instance (it cannot migrate, and a report of it would count dom0's memory twice).
  if (b.id == 0 || b.uuid == kDomain0Uuid) {
    return absl::NotFoundError("Domain-0 is the host's control domain, not an instance");
  }
  v1::DomainInfo info;
  info.set_uuid(b.uuid);
  info.set_name(b.name);
  info.set_state(StateFrom(b.state, b.reason));
  info.set_state_reason(ReasonName(b.state, b.reason));
  info.set_memory_mib(b.memory_kib / 1024);
  info.set_max_memory_mib(b.memory_kib / 1024);
  info.set_vcpus(b.vcpus);
  info.set_persistent(b.persistent);
  info.set_domain_id(b.id);
  auto xml = api_->GetXMLDesc(d, 0);
  if (xml.ok()) {
    info.set_guest_kind(XenGuestKind(*xml));  // "" for a domain that is not Xen's
    for (v1::DomainDisk disk : DomainDisks(*xml)) {
      volumes_.Describe(&disk);
      if (disk.kind() == v1::DISK_KIND_FILE) {
        disk.set_shared(absl::StartsWith(disk.source(), options_.instance_path + "/"));
      }
      *info.add_disks() = std::move(disk);
    }
    for (const auto& dev : PciHostDevices(*xml)) info.add_host_devices(dev);
    for (v1::DomainInterface& nic : BridgeInterfaces(*xml)) *info.add_interfaces() = std::move(nic);
  }
  if (IsRunningState(b.state)) {
    auto job = api_->GetJobStats(d, 0);
    if (job.ok() && job->type != VIR_DOMAIN_JOB_NONE) {
      info.set_job_active(true);
      info.set_job_elapsed_ms(job->time_elapsed_ms.value_or(0));
      bool ours = false;  // a transfer this driver started (or attached to) runs for the domain
      {
        absl::MutexLock l(&mu_);
        for (const auto& [id, t] : transfers_) {
          if (t.uuid == b.uuid && t.running) {
            info.set_migration_id(id);
            ours = true;
          }
        }
      }
      // Which job is a migration: on QEMU any job (the job types name it, and the agent only
      // ever starts migrations). libxl reports every job -- a migration or any other API call's
      // job -- as "unbounded" with operation "unknown" and only its elapsed time, so there a job
      // is a migration only when its operation says so or when this driver runs the transfer.
      // A restarted agent's driver therefore reports libxl's migration job as job_active only;
      // the scheduler, whose record says the migration runs, takes it as the transfer and sends
      // LiveMigration again, which attaches to it (see LiveMigration's `attach`).
      const bool named = job->operation == VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT ||
                         job->operation == VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN;
      info.set_migration_job_active(!IsLibxl() || named || ours);
    }
  }
  return info;
}

absl::StatusOr<v1::HostInventory> LibvirtDriver::GetHostInfo() {
  ASSIGN_OR_RETURN(ConnHandle c, Conn());
  v1::HostInventory inv;
  inv.set_hostname(options_.hostname);
  inv.set_hypervisor_type(hypervisor_type_);
  ASSIGN_OR_RETURN(uint64_t version, api_->GetVersion(c.get()));
  inv.set_hypervisor_version(options_.hypervisor_version_override.value_or(version));
  ASSIGN_OR_RETURN(uint64_t libversion, api_->GetLibVersion(c.get()));
  inv.set_libvirt_version(libversion);
  inv.set_driver_uri(options_.uri);
  ASSIGN_OR_RETURN(std::string caps, api_->GetCapabilities(c.get()));
  inv.set_host_uuid(ReadHostCapabilities(caps).uuid);
  *inv.mutable_cpu() = HostCpu(caps);
  ASSIGN_OR_RETURN(NodeInfo node, api_->GetNodeInfo(c.get()));
  inv.set_memory_total_mib(node.memory_kib / 1024);
  auto free_bytes = api_->GetFreeMemoryBytes(c.get());
  uint64_t free_mib = free_bytes.ok() ? *free_bytes / kMiB : 0;
  // libvirt's test driver reports its cell's KiB as bytes (LIBVIRT_FACTS.md).
  if (hypervisor_type_ == "TEST" && free_bytes.ok()) free_mib = *free_bytes / 1024;
  if (free_mib > inv.memory_total_mib()) free_mib = inv.memory_total_mib();
  inv.set_memory_free_mib(free_mib);
  inv.set_memory_reserved_mib(options_.memory_reserved_mib);
  inv.mutable_cpu()->set_count(node.cpus);
  inv.mutable_cpu()->set_mhz(node.mhz);
  for (const auto& b : Bridges()) {
    auto* n = inv.add_networks();
    n->set_name(b);
    n->set_segment(b);
    n->set_up(true);
  }
  inv.set_instance_path(options_.instance_path);
  *inv.mutable_capabilities() = caps_;
  ASSIGN_OR_RETURN(std::vector<v1::DomainInfo> doms, ListDomains());
  for (auto& d : doms) *inv.add_domains() = std::move(d);
  return inv;
}

absl::StatusOr<std::vector<v1::DomainInfo>> LibvirtDriver::ListDomains() {
  ASSIGN_OR_RETURN(ConnHandle c, Conn());
  ASSIGN_OR_RETURN(std::vector<DomHandle> doms, api_->ListAllDomains(c.get()));
  std::vector<v1::DomainInfo> out;
  for (auto& d : doms) {
    auto info = ToDomainInfo(d.get());
    if (info.ok()) {
      out.push_back(std::move(info).value());
    } else if (info.status().code() != absl::StatusCode::kNotFound) {
      return info.status();  // a domain that vanished meanwhile is simply not listed
    }
  }
  return out;
}

absl::StatusOr<std::optional<v1::DomainInfo>> LibvirtDriver::DescribeDomain(
    const std::string& uuid) {
  auto dom = Lookup(uuid);
  if (dom.status().code() == absl::StatusCode::kNotFound) return std::optional<v1::DomainInfo>();
  if (!dom.ok()) return dom.status();
  auto info = ToDomainInfo(dom->get());
  if (info.status().code() == absl::StatusCode::kNotFound) return std::optional<v1::DomainInfo>();
  if (!info.ok()) return info.status();
  return std::optional<v1::DomainInfo>(*info);
}

absl::StatusOr<cv1::CheckCanLiveMigrateOnDestResponse> LibvirtDriver::CheckCanLiveMigrateOnDest(
    const cv1::CheckCanLiveMigrateOnDestRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(ValidateUuid(req.instance_uuid()));
  ASSIGN_OR_RETURN(v1::HostInventory inv, GetHostInfo());
  ASSIGN_OR_RETURN(ConnHandle c, Conn());
  DestFacts f = DestFactsFrom(inv, options_.hostname, Bridges(), options_.instance_path, caps_,
                              req.migration_id());
  if (!req.source_cpu().xml().empty() && !options_.cpu_features_override) {
    auto cmp = api_->CompareCPU(c.get(), req.source_cpu().xml());
    if (cmp.ok()) {
      f.cpu_compatible = *cmp != VIR_CPU_COMPARE_INCOMPATIBLE;
      f.cpu_reason = "CompareCPU reports the source CPU as incompatible";
    } else {
      f.cpu_compatible = false;
      f.cpu_reason = std::string(cmp.status().message());
    }
  }
  auto resp = EvaluateDestChecks(req, f);
  resp.mutable_dest_check_data()->set_host_uuid(inv.host_uuid());
  if (auto v = volumes_.Check(req.instance(), "destination")) {
    if (!v->passed()) resp.set_passed(false);
    *resp.add_checks() = std::move(*v);
  }
  return resp;
}

absl::StatusOr<cv1::CheckCanLiveMigrateOnSrcResponse> LibvirtDriver::CheckCanLiveMigrateOnSrc(
    const cv1::CheckCanLiveMigrateOnSrcRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  ASSIGN_OR_RETURN(DomHandle dom, Lookup(req.instance_uuid()));
  ASSIGN_OR_RETURN(v1::DomainInfo info, ToDomainInfo(dom.get()));
  ASSIGN_OR_RETURN(std::string xml, api_->GetXMLDesc(dom.get(), VIR_DOMAIN_XML_MIGRATABLE));
  auto resp = EvaluateSrcChecks(req, ProbeVisible(options_.instance_path, req.migration_id()),
                                caps_, HypervisorName(), info, xml);
  if (resp.src_check_data().block_migration()) {
    AddLocalDisks(dom.get(), xml, req.source_host(), &resp);
  }
  if (auto v = volumes_.Check(info, "source")) {
    if (!v->passed()) resp.set_passed(false);
    *resp.add_checks() = std::move(*v);
  }
  return resp;
}

void LibvirtDriver::AddLocalDisks(virDomainPtr dom, const std::string& xml, const std::string& host,
                                  cv1::CheckCanLiveMigrateOnSrcResponse* resp) {
  uint64_t total = 0;
  std::vector<std::string> listed, failed;
  for (cv1::LocalDisk d : LocalFileDisks(xml)) {
    auto capacity = api_->GetBlockCapacity(dom, d.target().empty() ? d.path() : d.target());
    if (!capacity.ok()) {
      failed.push_back(absl::StrCat(d.path(), ": ", capacity.status().message()));
      continue;
    }
    d.set_virtual_size_bytes(*capacity);
    total += *capacity;
    listed.push_back(absl::StrCat(d.target(), " (", d.path(), ", ", d.format(), ", ",
                                  *capacity / kMiB, " MiB)"));
    *resp->mutable_src_check_data()->add_local_disks() = std::move(d);
  }
  resp->mutable_src_check_data()->set_block_migration_disk_mib((total + kMiB - 1) / kMiB);
  v1::CheckResult* c = resp->add_checks();
  c->set_host(host);
  c->set_name("local_disks");
  c->set_passed(failed.empty());
  if (!failed.empty()) {
    c->set_reason(absl::StrCat("cannot size the local disks to copy on ", host, ": ",
                               absl::StrJoin(failed, "; ")));
    resp->set_passed(false);
  } else if (listed.empty()) {
    c->set_reason("the instance has no local file disk: block migration copies its memory only");
  } else {
    c->set_reason(absl::StrCat("block migration copies the local disks ",
                               absl::StrJoin(listed, ", "), "; the destination creates them"));
  }
}

absl::StatusOr<std::string> LibvirtDriver::HostShell(const std::string& script) {
  std::string command = absl::StrCat("sh -c ", ShellQuote(script));
  if (!options_.host_command_prefix.empty()) {
    command = absl::StrCat(options_.host_command_prefix, " ", command);
  }
  return RunHostCommand(command, options_.host_command_timeout);
}

absl::Status LibvirtDriver::CreateDestinationDisks(const cv1::PreLiveMigrationRequest& req) {
  const cv1::SrcCheckData& src = req.migrate_data().src_check();
  if (!src.block_migration() || src.local_disks().empty()) return absl::OkStatus();
  static const std::regex kFormat("[a-z0-9]+");
  const std::string record = DisksRecordPath(options_.state_dir, req.migration_id());
  std::vector<std::string> created = ReadLines(record);
  for (const cv1::LocalDisk& d : src.local_disks()) {
    const std::string& path = d.path();
    if (path.size() < 2 || path[0] != '/' || path.back() == '/' ||
        absl::StrContains(path, "/../") || absl::StrContains(path, "\n")) {
      return absl::InvalidArgumentError(
          absl::StrCat("block migration: the disk path '", path, "' is not an absolute file path"));
    }
    if (!std::regex_match(d.format(), kFormat) || d.virtual_size_bytes() == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "block migration: disk ", path, " needs a format and a virtual size (got format '",
          d.format(), "', ", d.virtual_size_bytes(), " bytes)"));
    }
    // A file already there is kept as it is: one this driver created on an earlier call for this
    // migration, or one the operator put there (libvirt copies into it; never overwritten).
    ASSIGN_OR_RETURN(std::string there,
                     HostShell(absl::StrCat("if [ -e ", ShellQuote(path),
                                            " ]; then echo yes; else echo no; fi")));
    if (absl::StripAsciiWhitespace(there) == "yes") continue;
    // Recorded before it is created: a rollback removes it even if this call is cut short.
    if (std::find(created.begin(), created.end(), path) == created.end()) {
      created.push_back(path);
      RETURN_IF_ERROR(WriteLines(record, created));
    }
    const std::string dir = path.substr(0, path.rfind('/'));
    auto made = HostShell(absl::StrCat("mkdir -p ", ShellQuote(dir.empty() ? "/" : dir),
                                       " && qemu-img create -q -f ", d.format(), " ",
                                       ShellQuote(path), " ", d.virtual_size_bytes()));
    if (!made.ok()) {
      return absl::InternalError(absl::StrCat(
          "cannot create the disk ", path, " (", d.format(), ", ", d.virtual_size_bytes(),
          " bytes) for block migration on ", options_.hostname, ": ", made.status().message()));
    }
  }
  return absl::OkStatus();
}

absl::Status LibvirtDriver::RemoveCreatedDisks(const std::string& migration_id) {
  const std::string record = DisksRecordPath(options_.state_dir, migration_id);
  for (const std::string& path : ReadLines(record)) {
    auto removed = HostShell(absl::StrCat("rm -f ", ShellQuote(path)));
    if (!removed.ok()) {
      return absl::InternalError(absl::StrCat("cannot remove the disk ", path,
                                              " created for block migration on ", options_.hostname,
                                              ": ", removed.status().message()));
    }
  }
  unlink(record.c_str());
  return absl::OkStatus();
}

absl::Status LibvirtDriver::CheckCanLiveMigrateOnDestCleanup(
    const cv1::CheckCanLiveMigrateOnDestCleanupRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RemoveProbe(options_.instance_path, req.migration_id());
  return absl::OkStatus();
}

absl::StatusOr<cv1::PreLiveMigrationData> LibvirtDriver::PreLiveMigration(
    const cv1::PreLiveMigrationRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(ValidateUuid(req.instance_uuid()));
  cv1::PreLiveMigrationData data;
  const auto bridges = Bridges();
  for (const auto& nic : req.migrate_data().src_check().domain().interfaces()) {
    if (nic.bridge().empty()) continue;
    if (std::find(bridges.begin(), bridges.end(), nic.bridge()) == bridges.end()) {
      return absl::FailedPreconditionError(absl::StrCat("cannot plug the instance's NIC on ",
                                                        options_.hostname, ": bridge ",
                                                        nic.bridge(), " does not exist here"));
    }
    data.add_plugged_bridges(nic.bridge());
  }
  // Stage the definition (idempotent: the same file for the same migration).
  const std::string staged = options_.state_dir + "/staged/" + req.migration_id() + ".xml";
  std::string xml = req.migrate_data().src_check().domain_xml();
  {
    std::ifstream in(staged);
    if (in) {
      std::stringstream ss;
      ss << in.rdbuf();
      xml = ss.str();
    } else {
      std::ofstream out(staged);
      out << xml;
      if (!out) {
        return absl::InternalError(absl::StrCat("cannot stage the domain definition at ", staged,
                                                ": ", std::strerror(errno)));
      }
    }
  }
  // Block migration: libvirt creates only storage-pool volumes; the local disk files are ours.
  RETURN_IF_ERROR(CreateDestinationDisks(req));
  // Shared volumes: logged in to / promoted here before the transfer (recorded for rollback).
  ASSIGN_OR_RETURN(std::vector<std::string> volumes,
                   volumes_.Attach(req.migration_id(), req.migrate_data().src_check().domain()));
  for (auto& v : volumes) data.add_connected_volumes(std::move(v));
  const std::string data_host =
      options_.migration_data_host.empty() ? options_.hostname : options_.migration_data_host;
  std::string peer = options_.migration_uri;
  if (peer.empty()) {
    peer = IsLibxl() ? absl::StrCat(caps_.tunnel_migration_stream() ? "xen+tls://" : "xen+tcp://",
                                    options_.hostname, "/system")
                     : absl::StrCat("qemu+tcp://", options_.hostname, "/system");
  }
  data.set_migration_uri(peer);
  data.set_data_uri(absl::StrCat("tcp://", data_host));
  data.set_dest_xml(xml);
  data.set_dest_name(req.migrate_data().src_check().domain().name());
  return data;
}

cv1::MigrationProgressReport LibvirtDriver::ReportFromStats(const std::string& migration_id,
                                                            const std::string& uuid,
                                                            const JobStats& s,
                                                            const DomainBasics* state) {
  cv1::MigrationProgressReport r;
  r.set_migration_id(migration_id);
  r.set_instance_uuid(uuid);
  r.set_state(cv1::TRANSFER_STATE_RUNNING);
  auto* p = r.mutable_progress();
  p->set_elapsed_ms(s.time_elapsed_ms.value_or(0));
  v1::MigrationPhase phase = v1::MIGRATION_PHASE_PRE_COPY;
  if (state && state->state == VIR_DOMAIN_PAUSED) {
    phase = state->reason == VIR_DOMAIN_PAUSED_POSTCOPY ? v1::MIGRATION_PHASE_POST_COPY
                                                        : v1::MIGRATION_PHASE_PAUSED_TO_COMPLETE;
  }
  p->set_phase(phase);
  r.set_post_copy_started(phase == v1::MIGRATION_PHASE_POST_COPY);
  if (caps_.supports_job_stats_bytes() && s.data_total) {
    p->set_has_bytes(true);
    p->set_bytes_total(*s.data_total);
    p->set_bytes_processed(s.data_processed.value_or(0));
    p->set_bytes_remaining(s.data_remaining.value_or(0));
    p->set_iteration(s.memory_iteration.value_or(0));
    p->set_rate_bytes_s(s.memory_bps.value_or(0));
    if (*s.data_total > 0) {
      p->set_percent(100.0 * (*s.data_total - s.data_remaining.value_or(0)) / *s.data_total);
    }
  }
  if (s.downtime_ms) p->set_downtime_ms(*s.downtime_ms);
  return r;
}

cv1::MigrationProgressReport LibvirtDriver::UpdateTransfer(const std::string& id,
                                                           cv1::MigrationProgressReport r) {
  absl::MutexLock l(&mu_);
  auto it = transfers_.find(id);
  if (it == transfers_.end()) return r;
  // What happened to the transfer (its completion timeout expired, an operator asked to abort
  // or force it) stays true: a new sample of libvirt's job statistics does not know it.
  const cv1::MigrationProgressReport& old = it->second.report;
  if (old.completion_timeout_expired()) r.set_completion_timeout_expired(true);
  if (old.abort_requested()) r.set_abort_requested(true);
  if (old.force_complete_requested()) r.set_force_complete_requested(true);
  it->second.report = r;
  it->second.post_copy = it->second.post_copy || r.post_copy_started();
  return r;
}

absl::StatusOr<cv1::MigrationProgressReport> LibvirtDriver::Monitor(
    const std::string& id, virDomainPtr dom, const ProgressSink& sink,
    const std::function<bool()>& done, absl::Notification* wake) {
  v1::MigrationOptions o;
  {
    absl::MutexLock l(&mu_);
    o = transfers_[id].options;
  }
  const bool qemu = !IsLibxl();
  const absl::Time start = absl::Now();
  // Nova's downtime steps: from max/steps up to max, one step every `delay`.
  const uint32_t max_dt =
      o.has_max_downtime_ms() ? o.max_downtime_ms() : options_.default_max_downtime_ms;
  const uint32_t steps = std::max<uint32_t>(
      1, o.has_downtime_steps() ? o.downtime_steps() : options_.default_downtime_steps);
  const uint32_t delay_s = o.has_downtime_step_delay_s() ? o.downtime_step_delay_s()
                                                         : options_.default_downtime_step_delay_s;
  uint32_t step = 0;
  const bool has_timeout = o.has_completion_timeout_s() && o.completion_timeout_s() > 0;
  bool timeout_acted = false;
  cv1::MigrationProgressReport last;
  std::string uuid;
  {
    absl::MutexLock l(&mu_);
    uuid = transfers_[id].uuid;
  }
  while (!done()) {
    auto stats = api_->GetJobStats(dom, 0);
    if (stats.ok()) {
      auto state = api_->Describe(dom);
      last = ReportFromStats(id, uuid, *stats, state.ok() ? &*state : nullptr);
      last.set_monitor_attached(true);
      last.set_current_max_downtime_ms(qemu ? max_dt / steps * (step + 1) : 0);
      if (!qemu)
        last.mutable_progress()->set_elapsed_ms(absl::ToInt64Milliseconds(absl::Now() - start));
      last = UpdateTransfer(id, std::move(last));
      if (sink && stats->type != VIR_DOMAIN_JOB_NONE) sink(last);
    }
    const absl::Duration elapsed = absl::Now() - start;
    if (qemu && step + 1 < steps && elapsed >= absl::Seconds(delay_s) * (step + 1)) {
      ++step;
      // Raising the downtime lets a busy guest converge; failures are logged in the report.
      api_->MigrateSetMaxDowntime(dom, static_cast<uint64_t>(max_dt) / steps * (step + 1))
          .IgnoreError();
    }
    if (has_timeout && !timeout_acted && elapsed > absl::Seconds(o.completion_timeout_s())) {
      timeout_acted = true;
      {
        absl::MutexLock l(&mu_);
        transfers_[id].report.set_completion_timeout_expired(true);
      }
      if (o.completion_action() == v1::COMPLETION_ACTION_FORCE_COMPLETE) {
        ForceCompleteLiveMigration(id, uuid).IgnoreError();
      } else {
        api_->AbortJob(dom).IgnoreError();
      }
    }
    // `wake` ends the wait as soon as the transfer returns, so that its end is reported at
    // once rather than up to poll_interval later.
    if (wake != nullptr) {
      wake->WaitForNotificationWithTimeout(options_.poll_interval);
    } else {
      absl::SleepFor(options_.poll_interval);
    }
  }
  return last;
}

absl::StatusOr<cv1::MigrationProgressReport> LibvirtDriver::LiveMigration(
    const cv1::LiveMigrationRequest& req, const ProgressSink& sink) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  const std::string& id = req.migration_id();
  const v1::MigrationOptions& o = req.options();
  {
    absl::MutexLock l(&mu_);
    PruneTransfersLocked();
    auto it = transfers_.find(id);
    if (it != transfers_.end() && !it->second.running) return it->second.report;
  }
  RETURN_IF_ERROR(CheckOptionsSupported(o, caps_, HypervisorName()));
  ASSIGN_OR_RETURN(DomHandle dom, Lookup(req.instance_uuid()));
  ASSIGN_OR_RETURN(DomainBasics before, api_->Describe(dom.get()));
  // The shared volumes the guest holds here, recorded before the transfer for PostLiveMigration.
  ASSIGN_OR_RETURN(v1::DomainInfo held, ToDomainInfo(dom.get()));
  RETURN_IF_ERROR(volumes_.NoteHeld(id, held));
  auto job = api_->GetJobStats(dom.get(), 0);
  const bool attach =
      job.ok() && job->type != VIR_DOMAIN_JOB_NONE &&
      (job->operation == 0 || job->operation == VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT);
  {
    absl::MutexLock l(&mu_);
    auto [it, inserted] = transfers_.try_emplace(id);
    if (!inserted && it->second.running && !attach) {
      return absl::FailedPreconditionError(
          absl::StrCat("migration ", id, " is already being started on ", options_.hostname));
    }
    it->second.uuid = req.instance_uuid();
    it->second.options = o;
    it->second.running = true;
  }
  std::atomic<bool> finished{false};
  absl::Status result;
  if (attach) {
    // An agent restarted while libvirt kept migrating: monitor the running job to its end.
    auto last = Monitor(id, dom.get(), sink, [&] {
      auto s = api_->GetJobStats(dom.get(), 0);
      return !s.ok() || s->type == VIR_DOMAIN_JOB_NONE;
    });
    (void)last;
  } else {
    if (!IsRunningState(before.state)) {
      absl::MutexLock l(&mu_);
      transfers_.erase(id);
      return absl::FailedPreconditionError(
          absl::StrCat("domain ", req.instance_uuid(), " is not running on ", options_.hostname,
                       ": only a running or paused domain can be migrated"));
    }
    const auto& pre = req.migrate_data().pre_live_migration();
    if (pre.migration_uri().empty()) {
      absl::MutexLock l(&mu_);
      transfers_.erase(id);
      return absl::InvalidArgumentError(
          "LiveMigration needs the destination's migrate data (pre_live_migration.migration_uri)");
    }
    unsigned int flags = VIR_MIGRATE_PEER2PEER | VIR_MIGRATE_PERSIST_DEST;
    if (o.mode() != v1::MIGRATION_MODE_OFFLINE) flags |= VIR_MIGRATE_LIVE;
    if (before.persistent) flags |= VIR_MIGRATE_UNDEFINE_SOURCE;
    if (caps_.tunnel_migration_stream()) flags |= VIR_MIGRATE_TUNNELLED;
    MigrateParams params;
    if (!(flags & VIR_MIGRATE_TUNNELLED)) params.uri = pre.data_uri();
    params.dest_name = pre.dest_name();
    params.dest_xml = pre.dest_xml();
    if (!IsLibxl()) {
      if (options_.auto_converge) flags |= VIR_MIGRATE_AUTO_CONVERGE;
      if (o.allow_post_copy()) flags |= VIR_MIGRATE_POSTCOPY;
      if (req.migrate_data().src_check().block_migration()) flags |= VIR_MIGRATE_NON_SHARED_DISK;
      if (o.has_bandwidth_mib_s() && o.bandwidth_mib_s() > 0) {
        params.bandwidth_mib_s = o.bandwidth_mib_s();
      }
      const uint32_t steps = std::max<uint32_t>(
          1, o.has_downtime_steps() ? o.downtime_steps() : options_.default_downtime_steps);
      const uint32_t max_dt =
          o.has_max_downtime_ms() ? o.max_downtime_ms() : options_.default_max_downtime_ms;
      // Set before the transfer starts; raised in steps by the monitor.
      api_->MigrateSetMaxDowntime(dom.get(), max_dt / steps).IgnoreError();
    }
    // The blocking migrate call gets a connection of its own: a remote libvirt connection busy
    // with it answers other calls (job stats, abort, ...) only after it returns.
    auto mig_conn = api_->Open(options_.uri);
    if (!mig_conn.ok()) {
      absl::MutexLock l(&mu_);
      transfers_.erase(id);
      return mig_conn.status();
    }
    auto mig_dom = api_->LookupByUUID(mig_conn->get(), req.instance_uuid());
    if (!mig_dom.ok()) {
      absl::MutexLock l(&mu_);
      transfers_.erase(id);
      return mig_dom.status();
    }
    absl::Notification ended;
    std::thread monitor([&] {
      Monitor(
          id, dom.get(), sink, [&] { return finished.load(); }, &ended)
          .IgnoreError();
    });
    result = api_->MigrateToURI3(mig_dom->get(), pre.migration_uri(), params, flags);
    finished = true;
    ended.Notify();
    monitor.join();
  }

  // Decide the outcome from the result and what the source now shows.
  cv1::MigrationProgressReport final_report;
  {
    absl::MutexLock l(&mu_);
    final_report = transfers_[id].report;
  }
  final_report.set_migration_id(id);
  final_report.set_instance_uuid(req.instance_uuid());
  final_report.set_monitor_attached(true);
  auto after = api_->Describe(dom.get());
  const bool gone = !after.ok() || (after->state == VIR_DOMAIN_SHUTOFF &&
                                    after->reason == VIR_DOMAIN_SHUTOFF_MIGRATED);
  if (result.ok() && (gone || !attach)) {
    final_report.set_state(cv1::TRANSFER_STATE_COMPLETED);
    if (final_report.progress().has_bytes()) {
      // The job finished: everything was sent at least once (the last sample may predate it).
      auto* p = final_report.mutable_progress();
      // A transfer faster than one poll has no sample with totals: the guest's RAM was sent.
      if (p->bytes_total() == 0) p->set_bytes_total(before.memory_kib * 1024);
      p->set_bytes_processed(std::max(p->bytes_processed(), p->bytes_total()));
      p->set_bytes_remaining(0);
      p->set_percent(100.0);
    }
  } else if (attach && gone) {
    final_report.set_state(cv1::TRANSFER_STATE_COMPLETED);
  } else if (result.code() == absl::StatusCode::kCancelled ||  // VIR_ERR_OPERATION_ABORTED
             final_report.abort_requested() || final_report.completion_timeout_expired()) {
    // Cancelled: libvirt says so, or this driver asked libvirt to abort the job (an operator's
    // abort, or the completion timeout) and the transfer then failed.
    final_report.set_state(final_report.completion_timeout_expired()
                               ? cv1::TRANSFER_STATE_FAILED
                               : cv1::TRANSFER_STATE_CANCELLED);
    final_report.set_error(final_report.completion_timeout_expired()
                               ? absl::StrCat("completion timeout of ", o.completion_timeout_s(),
                                              " s expired: aborted")
                               : std::string(result.message()));
  } else {
    final_report.set_state(cv1::TRANSFER_STATE_FAILED);
    final_report.set_error(result.ok() ? "the transfer ended without the domain leaving the source"
                                       : std::string(result.message()));
  }
  {
    absl::MutexLock l(&mu_);
    Transfer& t = transfers_[id];
    t.report = final_report;
    t.running = false;
    finished_.Finished(id, options_.clock->Now());
    PruneTransfersLocked();
  }
  return final_report;
}

absl::StatusOr<cv1::MigrationProgressReport> LibvirtDriver::GetMigrationProgress(
    const std::string& migration_id, const std::string& instance_uuid) {
  RETURN_IF_ERROR(ValidateMigrationId(migration_id));
  {
    absl::MutexLock l(&mu_);
    PruneTransfersLocked();
    auto it = transfers_.find(migration_id);
    if (it != transfers_.end()) return it->second.report;
  }
  // No trace in memory (the agent restarted, or it ended long ago): ask the hypervisor.
  if (!instance_uuid.empty()) {
    auto dom = Lookup(instance_uuid);
    if (dom.ok()) {
      auto s = api_->GetJobStats(dom->get(), 0);
      if (s.ok() && s->type != VIR_DOMAIN_JOB_NONE) {
        auto state = api_->Describe(dom->get());
        auto r = ReportFromStats(migration_id, instance_uuid, *s, state.ok() ? &*state : nullptr);
        r.set_monitor_attached(false);
        return r;
      }
    }
  }
  return absl::NotFoundError(
      absl::StrCat("no transfer of migration ", migration_id, " on ", options_.hostname));
}

namespace {

// The transfer of `migration_id` among the driver's `transfers` (its lock held): nullptr when
// this agent has none; FailedPrecondition when it already ended.
template <class Transfers>
absl::StatusOr<typename Transfers::mapped_type*> RunningTransfer(Transfers& transfers,
                                                                 const std::string& migration_id) {
  auto it = transfers.find(migration_id);
  if (it == transfers.end()) return static_cast<typename Transfers::mapped_type*>(nullptr);
  if (!it->second.running) {
    return absl::FailedPreconditionError(
        absl::StrCat("the transfer of migration ", migration_id, " already ended"));
  }
  return &it->second;
}

}  // namespace

absl::Status LibvirtDriver::AbortLiveMigration(const std::string& migration_id,
                                               const std::string& instance_uuid) {
  RETURN_IF_ERROR(ValidateMigrationId(migration_id));
  if (!caps_.supports_abort()) {
    return absl::FailedPreconditionError(
        absl::StrCat(HypervisorName(),
                     " cannot abort a running migration (libxl has no job abort): wait "
                     "for it to finish"));
  }
  std::string uuid = instance_uuid;
  {
    absl::MutexLock l(&mu_);
    ASSIGN_OR_RETURN(auto* transfer, RunningTransfer(transfers_, migration_id));
    if (transfer != nullptr) {
      if (transfer->post_copy) {
        return absl::FailedPreconditionError(
            "post-copy has started: the destination holds the only complete copy; cannot abort");
      }
      uuid = transfer->uuid;
      transfer->report.set_abort_requested(true);
    }
  }
  ASSIGN_OR_RETURN(DomHandle dom, Lookup(uuid));
  auto s = api_->GetJobStats(dom.get(), 0);
  if (!s.ok() || s->type == VIR_DOMAIN_JOB_NONE) {
    return absl::FailedPreconditionError(
        absl::StrCat("no migration of ", uuid, " runs on ", options_.hostname));
  }
  return api_->AbortJob(dom.get());
}

absl::Status LibvirtDriver::ForceCompleteLiveMigration(const std::string& migration_id,
                                                       const std::string& instance_uuid) {
  RETURN_IF_ERROR(ValidateMigrationId(migration_id));
  if (!caps_.supports_force_complete()) {
    return absl::FailedPreconditionError(
        absl::StrCat(HypervisorName(),
                     " cannot force a running migration to complete (no post-copy and no "
                     "pause-to-complete on libxl): wait for it to finish"));
  }
  std::string uuid = instance_uuid;
  bool post_copy = false;
  {
    absl::MutexLock l(&mu_);
    ASSIGN_OR_RETURN(auto* transfer, RunningTransfer(transfers_, migration_id));
    if (transfer != nullptr) {
      uuid = transfer->uuid;
      post_copy = transfer->options.allow_post_copy();
      transfer->force_completing = true;
      transfer->report.set_force_complete_requested(true);
    }
  }
  ASSIGN_OR_RETURN(DomHandle dom, Lookup(uuid));
  if (post_copy) {
    absl::Status s = api_->MigrateStartPostCopy(dom.get());
    if (s.ok()) {
      absl::MutexLock l(&mu_);
      auto it = transfers_.find(migration_id);  // never re-create one that ended and was pruned
      if (it != transfers_.end()) it->second.post_copy = true;
    }
    return s;
  }
  // No post-copy: pause the guest so that the remaining pages converge (paused to complete).
  return api_->Suspend(dom.get());
}

absl::Status LibvirtDriver::PostLiveMigration(const cv1::PostLiveMigrationRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  auto dom = Lookup(req.instance_uuid());
  if (!dom.ok() && dom.status().code() != absl::StatusCode::kNotFound) return dom.status();
  if (dom.ok()) {
    ASSIGN_OR_RETURN(DomainBasics b, api_->Describe(dom->get()));
    if (IsRunningState(b.state)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "domain ", req.instance_uuid(), " still runs on the source ", options_.hostname,
          ": the transfer has not completed; refusing to clean it up"));
    }
    if (b.persistent) RETURN_IF_ERROR(api_->Undefine(dom->get()));  // a leftover definition
  }
  // The guest's shared volumes: logged out of / demoted here, now that it runs elsewhere.
  return volumes_.Release(req.migration_id(), req.migrate_data().src_check().domain());
}

absl::StatusOr<v1::DomainInfo> LibvirtDriver::PostLiveMigrationAtDestination(
    const cv1::PostLiveMigrationAtDestinationRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  auto dom = Lookup(req.instance_uuid());
  if (dom.status().code() == absl::StatusCode::kNotFound) {
    return absl::FailedPreconditionError(absl::StrCat(
        "domain ", req.instance_uuid(), " is not on the destination ", options_.hostname));
  }
  if (!dom.ok()) return dom.status();
  ASSIGN_OR_RETURN(DomainBasics b, api_->Describe(dom->get()));
  // A domain paused for another reason than an incoming migration is accepted: a guest paused
  // before the migration stays paused. On Xen that includes libxl's incoming domain (paused with
  // reason "user"), which is fine: this step runs only after the source's transfer completed.
  if (!(b.state == VIR_DOMAIN_RUNNING || b.state == VIR_DOMAIN_BLOCKED ||
        (b.state == VIR_DOMAIN_PAUSED && b.reason != VIR_DOMAIN_PAUSED_MIGRATION))) {
    return absl::FailedPreconditionError(
        absl::StrCat("domain ", req.instance_uuid(), " is not running on the destination ",
                     options_.hostname, " (state ", b.state, "): the transfer has not completed"));
  }
  if (!b.persistent) {
    ASSIGN_OR_RETURN(std::string xml, api_->GetXMLDesc(dom->get(), VIR_DOMAIN_XML_SECURE));
    ASSIGN_OR_RETURN(ConnHandle c, Conn());
    ASSIGN_OR_RETURN(DomHandle defined, api_->DefineXML(c.get(), xml));
  }
  RemoveProbe(options_.instance_path, req.migration_id());
  unlink((options_.state_dir + "/staged/" + req.migration_id() + ".xml").c_str());
  unlink(DisksRecordPath(options_.state_dir, req.migration_id()).c_str());  // the disks stay
  volumes_.Forget(req.migration_id());  // and so do the volumes it attached: the guest's now
  return ToDomainInfo(dom->get());
}

absl::StatusOr<v1::DomainInfo> LibvirtDriver::PauseInstance(const std::string& uuid) {
  RETURN_IF_ERROR(ValidateUuid(uuid));
  ASSIGN_OR_RETURN(DomHandle dom, Lookup(uuid));
  ASSIGN_OR_RETURN(DomainBasics b, api_->Describe(dom.get()));
  if (b.state == VIR_DOMAIN_SHUTOFF) {
    return absl::FailedPreconditionError(
        absl::StrCat("domain ", uuid, " is shut off on ", options_.hostname, ": nothing to pause"));
  }
  if (b.state != VIR_DOMAIN_PAUSED) RETURN_IF_ERROR(api_->Suspend(dom.get()));
  return ToDomainInfo(dom.get());
}

absl::Status LibvirtDriver::RollbackLiveMigrationAtDestination(
    const cv1::RollbackLiveMigrationAtDestinationRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  auto dom = Lookup(req.instance_uuid());
  if (dom.ok()) {
    ASSIGN_OR_RETURN(DomainBasics b, api_->Describe(dom->get()));
    // Half-received: paused, and known to be the incoming copy of this migration -- libvirt says
    // it is paused for an incoming migration (QEMU), or the scheduler saw the source still
    // holding the domain (source_runs_domain), which decides on Xen, where libxl pauses the
    // incoming domain with reason "user". Never in post-copy: then this is the only running copy.
    const bool paused = b.state == VIR_DOMAIN_PAUSED;
    const bool post_copy = paused && (b.reason == VIR_DOMAIN_PAUSED_POSTCOPY ||
                                      b.reason == VIR_DOMAIN_PAUSED_POSTCOPY_FAILED);
    const bool incoming = paused && !post_copy &&
                          (b.reason == VIR_DOMAIN_PAUSED_MIGRATION || req.source_runs_domain());
    if (b.state == VIR_DOMAIN_RUNNING || b.state == VIR_DOMAIN_BLOCKED) {
      return WithReason(
          absl::FailedPreconditionError(absl::StrCat(
              "domain ", req.instance_uuid(), " runs on the destination ", options_.hostname,
              ": it may be the only running copy; not destroying it")),
          v1::ERROR_REASON_ONLY_RUNNING_COPY);
    }
    if (paused && !incoming) {
      const std::string reason = ReasonName(b.state, b.reason);
      return WithReason(
          absl::FailedPreconditionError(absl::StrCat(
              "domain ", req.instance_uuid(), " is paused on the destination ", options_.hostname,
              " (reason ", reason.empty() ? "unknown" : reason, ")",
              post_copy ? "" : " and the request does not say that the source still runs it",
              ": it may be the only running copy; not destroying it")),
          v1::ERROR_REASON_ONLY_RUNNING_COPY);
    }
    if (incoming) RETURN_IF_ERROR(api_->Destroy(dom->get()));
    if (b.persistent) {
      absl::Status s = api_->Undefine(dom->get());
      if (!s.ok() && s.code() != absl::StatusCode::kNotFound) return s;
    }
  } else if (dom.status().code() != absl::StatusCode::kNotFound &&
             dom.status().code() != absl::StatusCode::kInvalidArgument) {
    return dom.status();
  }
  RETURN_IF_ERROR(RemoveCreatedDisks(req.migration_id()));
  RETURN_IF_ERROR(volumes_.Undo(req.migration_id()));
  RemoveProbe(options_.instance_path, req.migration_id());
  unlink((options_.state_dir + "/staged/" + req.migration_id() + ".xml").c_str());
  return absl::OkStatus();
}

absl::StatusOr<v1::DomainInfo> LibvirtDriver::RollbackLiveMigration(
    const cv1::RollbackLiveMigrationRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  auto dom = Lookup(req.instance_uuid());
  if (dom.status().code() == absl::StatusCode::kNotFound) {
    return absl::FailedPreconditionError(
        absl::StrCat("domain ", req.instance_uuid(), " is not on the source ", options_.hostname,
                     ": it cannot be rolled back here (check where it runs)"));
  }
  if (!dom.ok()) return dom.status();
  ASSIGN_OR_RETURN(DomainBasics b, api_->Describe(dom->get()));
  if (b.state == VIR_DOMAIN_PAUSED && req.state_before_migration() != v1::DOMAIN_STATE_PAUSED) {
    // Never resume a domain a job still works on: its transfer may be in its last phase (libxl
    // pauses the source to send the last pages; after an agent restart nothing else tells), and
    // a resumed source next to a destination that resumes too is two running copies. On Xen any
    // job counts (libxl reports every job as unbounded, of unknown operation).
    auto job = api_->GetJobStats(dom->get(), 0);
    if (job.ok() && job->type != VIR_DOMAIN_JOB_NONE) {
      return absl::FailedPreconditionError(absl::StrCat(
          "domain ", req.instance_uuid(), " is paused on the source ", options_.hostname,
          " and a job still runs on it (", IsLibxl() ? "libxl job" : "migration job", ", elapsed ",
          job->time_elapsed_ms.value_or(0), " ms): not resuming it until the job ends"));
    }
    RETURN_IF_ERROR(api_->Resume(dom->get()));
  }
  volumes_.ForgetHeld(req.migration_id());  // the guest keeps its volumes here
  return ToDomainInfo(dom->get());
}

}  // namespace livemig::driver
