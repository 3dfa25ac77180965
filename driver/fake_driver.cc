// Size: every ComputeDriver method of FakeDriver in both profiles (fake-qemu, fake-libxl), each a
// transaction on FakeHypervisor's state (the model itself is driver/fake_hypervisor.cc); the
// transfer's methods (LiveMigration to RollbackLiveMigration) could be a file of their own.
#include "driver/fake_driver.h"

#include <algorithm>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/status_map.h"
#include "driver/checks.h"
#include "driver/fake_state.h"

namespace livemig::driver {

using json = nlohmann::json;

namespace {

using internal::FakeStateIndex;
using internal::Get;
using internal::IsRunning;
using internal::Journal;
using internal::MkdirP;
using internal::NowMs;
using internal::TakeFailure;

constexpr uint64_t kMiB = 1ull << 20;

// Domain-0 on Xen: libvirt lists it with domain id 0 and this UUID (fake-libxl hosts have one).
constexpr char kDomain0Uuid[] = "00000000-0000-0000-0000-000000000000";

// A stored domain state as the hypervisor shows it. "incoming" is the destination's domain of a
// running transfer: QEMU pauses it with reason "migration", Xen's libxl with reason "user".
v1::DomainState StateOf(const std::string& s, bool libxl) {
  if (s == "running") return v1::DOMAIN_STATE_RUNNING;
  if (s == "paused") return v1::DOMAIN_STATE_PAUSED;
  if (s == "shutoff") return v1::DOMAIN_STATE_SHUTOFF;
  if (s == "incoming") return libxl ? v1::DOMAIN_STATE_PAUSED : v1::DOMAIN_STATE_INCOMING_PAUSED;
  return v1::DOMAIN_STATE_UNSPECIFIED;
}

std::string ReasonOf(const std::string& s, bool libxl) {
  if (s == "paused") return "user";
  if (s == "incoming") return libxl ? "user" : "migration";
  return "";
}

// Domain-0 is the host's control domain, listed by the hypervisor but never an instance.
bool IsDomain0(const std::string& uuid, const json& d) {
  return uuid == kDomain0Uuid || Get(d, "domid") == 0;
}

absl::Status RefuseDomain0(const std::string& uuid) {
  if (uuid != kDomain0Uuid) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat("instance uuid ", uuid,
                   " is Domain-0, the host's control domain: not an instance, it cannot migrate"));
}

std::string DomainXml(const std::string& uuid, const json& d) {
  return absl::StrCat("<domain type='fake'><name>", d.value("name", std::string()), "</name><uuid>",
                      uuid, "</uuid><memory unit='MiB'>", d.value("memory_mib", 0ull),
                      "</memory></domain>");
}

}  // namespace

v1::BackendCapabilities FakeDriver::ProfileCapabilities(const std::string& profile) {
  return BackendCapabilitiesFor(profile, /*qemu_features=*/profile != "fake-libxl");
}

FakeDriver::FakeDriver(Options options)
    : options_(std::move(options)),
      caps_(ProfileCapabilities(options_.profile)),
      hv_(options_.state_dir, options_.clock) {
  if (Libxl()) {
    // As LibvirtDriver reads `xl info` on Xen: the configured virt_caps, or unknown.
    SetXenPagingCaps(options_.xen_virt_caps.empty()
                         ? absl::StatusOr<std::string>(absl::UnavailableError(
                               "the fake host has no virt_caps (--fake-xen-virt-caps is empty), "
                               "as if `xl info` had failed"))
                         : absl::StatusOr<std::string>("virt_caps : " + options_.xen_virt_caps),
                     &caps_);
  }
}

absl::StatusOr<std::unique_ptr<FakeDriver>> FakeDriver::Create(Options o) {
  if (o.state_dir.empty()) return absl::InvalidArgumentError("the fake driver needs a state_dir");
  if (o.profile != "fake-qemu" && o.profile != "fake-libxl") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown fake profile '", o.profile, "': use fake-qemu or fake-libxl"));
  }
  if (o.instance_path.empty()) o.instance_path = o.state_dir + "/instances";
  RETURN_IF_ERROR(MkdirP(o.instance_path));
  auto d = std::unique_ptr<FakeDriver>(new FakeDriver(o));
  RETURN_IF_ERROR(d->hv_.Mutate([&](json& st, bool* changed) -> absl::Status {
    json& h = st["hosts"][o.hostname];
    if (!h.contains("domains")) h["domains"] = json::object();
    if (!h.contains("staged")) h["staged"] = json::object();
    if (!h.contains("failures")) h["failures"] = json::object();
    h["hypervisor_type"] = o.hypervisor_type;
    h["hypervisor_version"] = o.hypervisor_version;
    h["memory_total_mib"] = o.memory_total_mib;
    h["instance_path"] = o.instance_path;
    // Xen's hypervisor lists its control domain (libvirt: id 0, the all-zero UUID); QEMU has none.
    if (o.profile == "fake-libxl") {
      h["domains"][kDomain0Uuid] = {{"name", "Domain-0"},
                                    {"state", "running"},
                                    {"memory_mib", o.dom0_memory_mib},
                                    {"vcpus", 1},
                                    {"persistent", true},
                                    {"domid", 0},
                                    {"bridges", json::array()}};
    } else {
      h["domains"].erase(kDomain0Uuid);
    }
    *changed = true;
    return absl::OkStatus();
  }));
  return d;
}

std::string FakeDriver::HypervisorName() const {
  return options_.profile == "fake-libxl" ? "Xen (libxl, fake)" : "QEMU (fake)";
}

v1::DomainInfo FakeDriver::DomainInfoOf(const std::string& uuid, const json& d, const json& st,
                                        const FakeStateIndex& idx) {
  const bool libxl = Libxl();
  v1::DomainInfo info;
  info.set_uuid(uuid);
  info.set_name(d.value("name", std::string()));
  const std::string state = d.value("state", std::string());
  info.set_state(StateOf(state, libxl));
  info.set_state_reason(ReasonOf(state, libxl));
  info.set_memory_mib(d.value("memory_mib", 0ull));
  info.set_max_memory_mib(d.value("memory_mib", 0ull));
  info.set_vcpus(d.value("vcpus", 1u));
  info.set_persistent(d.value("persistent", true));
  // Xen's guest kind (PV when the domain does not say); QEMU's domains have none.
  if (libxl) info.set_guest_kind(d.value("kind", std::string("pv")));
  // PCI devices passed through ("hostdevs": ["0000:03:00.0", ...]), as a test set them.
  if (d.contains("hostdevs") && d["hostdevs"].is_array()) {
    for (const auto& dev : d["hostdevs"]) {
      if (dev.is_string()) info.add_host_devices(dev.get<std::string>());
    }
  }
  for (const auto& b : d.value("bridges", json::array())) {
    auto* nic = info.add_interfaces();
    nic->set_bridge(b.get<std::string>());
    nic->set_model("e1000");
  }
  const int64_t now = NowMs(hv_.clock());
  for (const auto& [id, running_uuid] : idx.running) {  // the last one in id order, as ever
    if (running_uuid != uuid) continue;
    // A job of the transfer, on both of its hosts. QEMU names it a migration; libxl shows an
    // "unbounded" job of unknown operation, which this driver can call a migration only while it
    // runs the transfer's monitor itself (like LibvirtDriver on libxl).
    info.set_job_active(true);
    const json& start = Get(Get(Get(st, "transfers"), id), "start_ms");
    info.set_job_elapsed_ms(start.is_number() ? std::max<int64_t>(0, now - start.get<int64_t>())
                                              : 0);
    bool ours = !libxl;
    if (libxl) {
      std::lock_guard<std::mutex> l(monitoring_mu_);
      ours = monitoring_.count(id) > 0;
    }
    if (ours) {
      info.set_migration_job_active(true);
      info.set_migration_id(id);
    }
  }
  return info;
}

absl::StatusOr<v1::HostInventory> FakeDriver::GetHostInfo() {
  v1::HostInventory inv;
  RETURN_IF_ERROR(hv_.ReadIndexed([&](const json& st, const FakeStateIndex& idx) -> absl::Status {
    const json& h = Get(Get(st, "hosts"), options_.hostname);
    uint64_t used = 0;
    for (const auto& [uuid, d] : Get(h, "domains").items()) {
      used += d.value("memory_mib", 0ull);  // Domain-0's too: Xen's free memory excludes it
      if (!IsDomain0(uuid, d)) *inv.add_domains() = DomainInfoOf(uuid, d, st, idx);
    }
    inv.set_memory_free_mib(options_.memory_total_mib > used ? options_.memory_total_mib - used
                                                             : 0);
    return absl::OkStatus();
  }));
  inv.set_hostname(options_.hostname);
  inv.set_hypervisor_type(options_.hypervisor_type);
  inv.set_hypervisor_version(options_.hypervisor_version);
  inv.set_libvirt_version(options_.libvirt_version);
  inv.set_driver_uri("fake://" + options_.state_dir);
  inv.set_host_uuid(options_.hostname);
  auto* cpu = inv.mutable_cpu();
  cpu->set_arch(options_.cpu_arch);
  cpu->set_model(options_.cpu_model);
  for (const auto& f : options_.cpu_features) cpu->add_features(f);
  inv.set_memory_total_mib(options_.memory_total_mib);
  inv.set_memory_reserved_mib(options_.memory_reserved_mib);
  for (const auto& b : options_.bridges) {
    auto* n = inv.add_networks();
    n->set_name(b);
    n->set_segment(b);
    n->set_up(true);
  }
  inv.set_instance_path(options_.instance_path);
  *inv.mutable_capabilities() = caps_;
  return inv;
}

absl::StatusOr<std::vector<v1::DomainInfo>> FakeDriver::ListDomains() {
  ASSIGN_OR_RETURN(v1::HostInventory inv, GetHostInfo());
  return std::vector<v1::DomainInfo>(inv.domains().begin(), inv.domains().end());
}

absl::StatusOr<std::optional<v1::DomainInfo>> FakeDriver::DescribeDomain(const std::string& uuid) {
  RETURN_IF_ERROR(ValidateUuid(uuid));
  std::optional<v1::DomainInfo> out;
  RETURN_IF_ERROR(hv_.ReadIndexed([&](const json& st, const FakeStateIndex& idx) -> absl::Status {
    const json& d = Get(Get(Get(Get(st, "hosts"), options_.hostname), "domains"), uuid);
    if (!d.is_null() && !IsDomain0(uuid, d)) out = DomainInfoOf(uuid, d, st, idx);
    return absl::OkStatus();
  }));
  return out;
}

absl::StatusOr<cv1::CheckCanLiveMigrateOnDestResponse> FakeDriver::CheckCanLiveMigrateOnDest(
    const cv1::CheckCanLiveMigrateOnDestRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(RefuseDomain0(req.instance_uuid()));
  RETURN_IF_ERROR(ValidateUuid(req.instance_uuid()));
  ASSIGN_OR_RETURN(v1::HostInventory inv, GetHostInfo());
  RETURN_IF_ERROR(hv_.Mutate([&](json& st, bool* changed) {
    Journal(st, options_.hostname, "check_can_live_migrate_on_dest", req.migration_id(),
            NowMs(hv_.clock()));
    return TakeFailure(st, options_.hostname, "check_can_live_migrate_on_dest", changed);
  }));
  return EvaluateDestChecks(req, DestFactsFrom(inv, options_.hostname, options_.bridges,
                                               options_.instance_path, caps_, req.migration_id()));
}

absl::StatusOr<cv1::CheckCanLiveMigrateOnSrcResponse> FakeDriver::CheckCanLiveMigrateOnSrc(
    const cv1::CheckCanLiveMigrateOnSrcRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(RefuseDomain0(req.instance_uuid()));
  RETURN_IF_ERROR(ValidateUuid(req.instance_uuid()));
  v1::DomainInfo dom;
  std::string xml;
  RETURN_IF_ERROR(hv_.MutateIndexed([&](json& st, bool* changed,
                                        const FakeStateIndex& idx) -> absl::Status {
    Journal(st, options_.hostname, "check_can_live_migrate_on_src", req.migration_id(),
            NowMs(hv_.clock()));
    RETURN_IF_ERROR(TakeFailure(st, options_.hostname, "check_can_live_migrate_on_src", changed));
    const json& doms = st["hosts"][options_.hostname]["domains"];
    if (!doms.contains(req.instance_uuid())) {
      return absl::NotFoundError(
          absl::StrCat("domain ", req.instance_uuid(), " is not on ", options_.hostname));
    }
    dom = DomainInfoOf(req.instance_uuid(), doms[req.instance_uuid()], st, idx);
    xml = DomainXml(req.instance_uuid(), doms[req.instance_uuid()]);
    return absl::OkStatus();
  }));
  return EvaluateSrcChecks(req, ProbeVisible(options_.instance_path, req.migration_id()), caps_,
                           HypervisorName(), dom, xml);
}

absl::Status FakeDriver::CheckCanLiveMigrateOnDestCleanup(
    const cv1::CheckCanLiveMigrateOnDestCleanupRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(hv_.Mutate([&](json& st, bool* changed) -> absl::Status {
    Journal(st, options_.hostname, "check_can_live_migrate_on_dest_cleanup", req.migration_id(),
            NowMs(hv_.clock()));
    return absl::OkStatus();
  }));
  RemoveProbe(options_.instance_path, req.migration_id());
  return absl::OkStatus();
}

absl::StatusOr<cv1::PreLiveMigrationData> FakeDriver::PreLiveMigration(
    const cv1::PreLiveMigrationRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(RefuseDomain0(req.instance_uuid()));
  RETURN_IF_ERROR(ValidateUuid(req.instance_uuid()));
  cv1::PreLiveMigrationData data;
  RETURN_IF_ERROR(hv_.Mutate([&](json& st, bool* changed) -> absl::Status {
    Journal(st, options_.hostname, "pre_live_migration", req.migration_id(), NowMs(hv_.clock()));
    RETURN_IF_ERROR(TakeFailure(st, options_.hostname, "pre_live_migration", changed));
    const auto& domain = req.migrate_data().src_check().domain();
    for (const auto& nic : domain.interfaces()) {
      bool have = false;
      for (const auto& b : options_.bridges) have = have || b == nic.bridge();
      if (!have) {
        return absl::FailedPreconditionError(absl::StrCat("cannot plug the instance's NIC: bridge ",
                                                          nic.bridge(), " is absent on ",
                                                          options_.hostname));
      }
      data.add_plugged_bridges(nic.bridge());
    }
    json& staged = st["hosts"][options_.hostname]["staged"];
    if (!staged.contains(req.migration_id())) {
      staged[req.migration_id()] = {{"uuid", req.instance_uuid()},
                                    {"xml", req.migrate_data().src_check().domain_xml()}};
      *changed = true;
    }
    data.set_dest_xml(staged[req.migration_id()]["xml"].get<std::string>());
    return absl::OkStatus();
  }));
  data.set_migration_uri("fake://" + options_.hostname);
  data.set_data_uri("fake-tcp://" + options_.hostname);
  data.set_dest_name(req.migrate_data().src_check().domain().name());
  return data;
}

absl::StatusOr<cv1::MigrationProgressReport> FakeDriver::Report(const std::string& id,
                                                                int64_t* end_ms) {
  cv1::MigrationProgressReport r;
  bool found = false;
  if (end_ms != nullptr) *end_ms = -1;
  RETURN_IF_ERROR(hv_.Read([&](const json& st) -> absl::Status {
    const json& t = Get(Get(st, "transfers"), id);
    if (t.is_null()) return absl::OkStatus();
    found = true;
    r.set_migration_id(id);
    r.set_instance_uuid(t["uuid"].get<std::string>());
    const std::string state = t["state"];
    r.set_state(state == "running"     ? cv1::TRANSFER_STATE_RUNNING
                : state == "completed" ? cv1::TRANSFER_STATE_COMPLETED
                : state == "cancelled" ? cv1::TRANSFER_STATE_CANCELLED
                                       : cv1::TRANSFER_STATE_FAILED);
    r.set_error(t.value("error", std::string()));
    r.set_post_copy_started(t.value("post_copy", false));
    r.set_completion_timeout_expired(t.value("timeout_expired", false));
    r.set_abort_requested(t.value("abort_requested", false));
    r.set_force_complete_requested(t.value("force_complete_requested", false));
    const int64_t start = t["start_ms"], dur = t["duration_ms"];
    if (end_ms != nullptr && state == "running") *end_ms = start + dur;
    const int64_t end = t.value("finished_ms", NowMs(hv_.clock()));
    const int64_t elapsed = std::max<int64_t>(0, end - start);
    auto* p = r.mutable_progress();
    p->set_phase(t.value("post_copy", false)    ? v1::MIGRATION_PHASE_POST_COPY
                 : t.value("paused_src", false) ? v1::MIGRATION_PHASE_PAUSED_TO_COMPLETE
                 : t.value("live", true)        ? v1::MIGRATION_PHASE_PRE_COPY
                                                : v1::MIGRATION_PHASE_OFFLINE_COPY);
    p->set_elapsed_ms(elapsed);
    if (caps_.supports_job_stats_bytes()) {
      const uint64_t total = t.value("memory_mib", 0ull) * kMiB;
      const uint64_t done =
          state == "completed" || dur == 0
              ? total
              : std::min<uint64_t>(total, total * static_cast<uint64_t>(elapsed) / dur);
      p->set_has_bytes(true);
      p->set_bytes_total(total);
      p->set_bytes_processed(done);
      p->set_bytes_remaining(total - done);
      p->set_percent(total ? 100.0 * done / total : 100.0);
      // The measured downtime, once completed (QEMU reports it; libxl has no such counter).
      if (state == "completed") p->set_downtime_ms(t.value("downtime_ms", 0ull));
    }
    return absl::OkStatus();
  }));
  if (!found) {
    return absl::NotFoundError(
        absl::StrCat("no transfer for migration ", id, " on ", options_.hostname));
  }
  return r;
}

absl::StatusOr<cv1::MigrationProgressReport> FakeDriver::LiveMigration(
    const cv1::LiveMigrationRequest& req, const ProgressSink& sink) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(RefuseDomain0(req.instance_uuid()));
  RETURN_IF_ERROR(ValidateUuid(req.instance_uuid()));
  const v1::MigrationOptions& o = req.options();
  const std::string& id = req.migration_id();
  // This object runs the transfer's monitor from here until it returns (see DomainInfoOf):
  // registered before the transfer appears in the state, so that no one describing the domain
  // sees the job without knowing it is this migration.
  struct Monitoring {
    FakeDriver* d;
    std::string id;
    Monitoring(FakeDriver* driver, const std::string& mid) : d(driver), id(mid) {
      std::lock_guard<std::mutex> l(d->monitoring_mu_);
      d->monitoring_.insert(id);
    }
    ~Monitoring() {
      std::lock_guard<std::mutex> l(d->monitoring_mu_);
      d->monitoring_.erase(id);
    }
  } monitoring(this, id);
  bool attached = false;
  RETURN_IF_ERROR(hv_.Mutate([&](json& st, bool* changed) -> absl::Status {
    if (st["transfers"].contains(id)) {
      attached = true;  // a restarted agent, or a repeated call: never a second transfer
      return absl::OkStatus();
    }
    RETURN_IF_ERROR(CheckOptionsSupported(o, caps_, HypervisorName()));
    Journal(st, options_.hostname, "live_migration", id, NowMs(hv_.clock()));
    RETURN_IF_ERROR(TakeFailure(st, options_.hostname, "live_migration", changed));
    json& src = st["hosts"][options_.hostname];
    if (!src["domains"].contains(req.instance_uuid())) {
      return absl::NotFoundError(
          absl::StrCat("domain ", req.instance_uuid(), " is not on ", options_.hostname));
    }
    if (!st["hosts"].contains(req.dest_host()) || req.dest_host() == options_.hostname) {
      return absl::InvalidArgumentError(
          absl::StrCat("destination '", req.dest_host(), "' is not another fake host"));
    }
    json& dom = src["domains"][req.instance_uuid()];
    const std::string prior = dom.value("state", std::string("running"));
    if (prior != "running" && prior != "paused") {
      return absl::FailedPreconditionError(absl::StrCat("domain ", req.instance_uuid(), " is ",
                                                        prior,
                                                        ": only a running or paused domain "
                                                        "can migrate"));
    }
    json incoming = dom;
    incoming["state"] = "incoming";
    incoming["persistent"] = false;
    st["hosts"][req.dest_host()]["domains"][req.instance_uuid()] = incoming;
    json t = {{"uuid", req.instance_uuid()},
              {"src", options_.hostname},
              {"dst", req.dest_host()},
              {"start_ms", NowMs(hv_.clock())},
              {"duration_ms", src.value("transfer_duration_ms", 0ll)},
              {"downtime_ms", src.value("transfer_downtime_ms", 0ll)},
              {"state", "running"},
              {"memory_mib", dom.value("memory_mib", 0ull)},
              {"prior_state", prior},
              {"live", o.mode() != v1::MIGRATION_MODE_OFFLINE},
              {"allow_post_copy", o.allow_post_copy()}};
    if (src.contains("fail_transfer")) {
      t["fail_transfer"] = src["fail_transfer"];
      src.erase("fail_transfer");
    }
    if (o.mode() == v1::MIGRATION_MODE_OFFLINE) {
      dom["state"] = "paused";  // the guest is paused during an offline transfer
      t["paused_src"] = true;
    }
    st["transfers"][id] = t;
    *changed = true;
    return absl::OkStatus();
  }));
  (void)attached;
  const absl::Time started = hv_.clock()->Now();
  const bool has_timeout = o.has_completion_timeout_s() && o.completion_timeout_s() > 0;
  while (true) {
    int64_t end_ms = -1;
    ASSIGN_OR_RETURN(cv1::MigrationProgressReport r, Report(id, &end_ms));
    r.set_monitor_attached(true);
    if (r.state() != cv1::TRANSFER_STATE_RUNNING) return r;
    if (sink) sink(r);
    if (has_timeout && !r.completion_timeout_expired() &&
        hv_.clock()->Now() - started > absl::Seconds(o.completion_timeout_s())) {
      RETURN_IF_ERROR(hv_.Mutate([&](json& st, bool* changed) -> absl::Status {
        json& t = st["transfers"][id];
        if (t["state"] != "running") return absl::OkStatus();
        t["timeout_expired"] = true;
        Journal(st, options_.hostname, "completion_timeout", id, NowMs(hv_.clock()),
                /*automatic=*/true);
        *changed = true;
        if (o.completion_action() == v1::COMPLETION_ACTION_FORCE_COMPLETE) {
          t["duration_ms"] = NowMs(hv_.clock()) - t["start_ms"].get<int64_t>();
          if (o.allow_post_copy())
            t["post_copy"] = true;
          else
            t["paused_src"] = true;
        } else {
          t["state"] = "failed";
          t["error"] = absl::StrCat("completion timeout of ", o.completion_timeout_s(),
                                    " s expired: transfer aborted");
          t["finished_ms"] = NowMs(hv_.clock());
          st["hosts"][t["dst"].get<std::string>()]["domains"].erase(t["uuid"].get<std::string>());
        }
        return absl::OkStatus();
      }));
      continue;
    }
    // Wake at the scheduled end (or the completion timeout) if it comes before the next poll.
    const absl::Time now = hv_.clock()->Now();
    absl::Duration wait = options_.poll_interval;
    if (end_ms >= 0) {
      wait = std::min(wait, std::max(absl::Milliseconds(1), absl::FromUnixMillis(end_ms) - now));
    }
    if (has_timeout && !r.completion_timeout_expired()) {
      const absl::Time expiry = started + absl::Seconds(o.completion_timeout_s());
      wait = std::min(wait, std::max(absl::Milliseconds(1), expiry - now + absl::Milliseconds(1)));
    }
    absl::SleepFor(wait);
  }
}

absl::StatusOr<cv1::MigrationProgressReport> FakeDriver::GetMigrationProgress(
    const std::string& migration_id, const std::string& instance_uuid) {
  RETURN_IF_ERROR(ValidateMigrationId(migration_id));
  (void)instance_uuid;
  return Report(migration_id);
}

absl::Status FakeDriver::AbortLiveMigration(const std::string& migration_id,
                                            const std::string& instance_uuid) {
  RETURN_IF_ERROR(ValidateMigrationId(migration_id));
  if (!caps_.supports_abort()) {
    return absl::FailedPreconditionError(
        absl::StrCat(HypervisorName(), " cannot abort a running migration: wait for it to finish"));
  }
  return hv_.Mutate([&](json& st, bool* changed) -> absl::Status {
    Journal(st, options_.hostname, "abort", migration_id, NowMs(hv_.clock()));
    RETURN_IF_ERROR(TakeFailure(st, options_.hostname, "abort", changed));
    if (!st["transfers"].contains(migration_id)) {
      return absl::NotFoundError(absl::StrCat("no transfer for migration ", migration_id));
    }
    json& t = st["transfers"][migration_id];
    if (t["state"] != "running") {
      return absl::FailedPreconditionError(absl::StrCat("the transfer of migration ", migration_id,
                                                        " already ended (",
                                                        t["state"].get<std::string>(), ")"));
    }
    if (t.value("post_copy", false)) {
      return absl::FailedPreconditionError(
          "post-copy has started: the destination holds the only complete copy; cannot abort");
    }
    t["state"] = "cancelled";
    t["abort_requested"] = true;
    t["error"] = "aborted";
    t["finished_ms"] = NowMs(hv_.clock());
    const std::string uuid = t["uuid"];
    st["hosts"][t["dst"].get<std::string>()]["domains"].erase(uuid);
    json& src = st["hosts"][t["src"].get<std::string>()];
    if (src["domains"].contains(uuid) && t.value("paused_src", false)) {
      src["domains"][uuid]["state"] = t.value("prior_state", std::string("running"));
    }
    (void)instance_uuid;
    *changed = true;
    return absl::OkStatus();
  });
}

absl::Status FakeDriver::ForceCompleteLiveMigration(const std::string& migration_id,
                                                    const std::string& instance_uuid) {
  RETURN_IF_ERROR(ValidateMigrationId(migration_id));
  (void)instance_uuid;
  if (!caps_.supports_force_complete()) {
    return absl::FailedPreconditionError(
        absl::StrCat(HypervisorName(), " cannot force a running migration to complete"));
  }
  return hv_.Mutate([&](json& st, bool* changed) -> absl::Status {
    Journal(st, options_.hostname, "force_complete", migration_id, NowMs(hv_.clock()));
    RETURN_IF_ERROR(TakeFailure(st, options_.hostname, "force_complete", changed));
    if (!st["transfers"].contains(migration_id)) {
      return absl::NotFoundError(absl::StrCat("no transfer for migration ", migration_id));
    }
    json& t = st["transfers"][migration_id];
    if (t["state"] != "running") {
      return absl::FailedPreconditionError(
          absl::StrCat("the transfer of migration ", migration_id, " already ended"));
    }
    t["force_complete_requested"] = true;
    if (t.value("allow_post_copy", false)) {
      t["post_copy"] = true;
    } else {
      t["paused_src"] = true;
    }
    // Converges quickly now: a tenth of what is left, at most 100 ms.
    const int64_t now = NowMs(hv_.clock());
    const int64_t end = t["start_ms"].get<int64_t>() + t["duration_ms"].get<int64_t>();
    if (end > now + 100) t["duration_ms"] = now + 100 - t["start_ms"].get<int64_t>();
    *changed = true;
    return absl::OkStatus();
  });
}

absl::Status FakeDriver::PostLiveMigration(const cv1::PostLiveMigrationRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(RefuseDomain0(req.instance_uuid()));
  return hv_.Mutate([&](json& st, bool* changed) -> absl::Status {
    Journal(st, options_.hostname, "post_live_migration", req.migration_id(), NowMs(hv_.clock()));
    RETURN_IF_ERROR(TakeFailure(st, options_.hostname, "post_live_migration", changed));
    json& doms = st["hosts"][options_.hostname]["domains"];
    if (doms.contains(req.instance_uuid())) {
      const std::string state = doms[req.instance_uuid()].value("state", std::string());
      if (state == "running" || state == "paused") {
        return absl::FailedPreconditionError(absl::StrCat(
            "domain ", req.instance_uuid(), " still runs on the source ", options_.hostname,
            ": the transfer has not completed; refusing to clean it up"));
      }
      doms.erase(req.instance_uuid());  // a leftover inactive definition
      *changed = true;
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<v1::DomainInfo> FakeDriver::PostLiveMigrationAtDestination(
    const cv1::PostLiveMigrationAtDestinationRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(RefuseDomain0(req.instance_uuid()));
  v1::DomainInfo info;
  RETURN_IF_ERROR(
      hv_.MutateIndexed([&](json& st, bool* changed, const FakeStateIndex& idx) -> absl::Status {
        Journal(st, options_.hostname, "post_live_migration_at_destination", req.migration_id(),
                NowMs(hv_.clock()));
        RETURN_IF_ERROR(
            TakeFailure(st, options_.hostname, "post_live_migration_at_destination", changed));
        json& h = st["hosts"][options_.hostname];
        if (!h["domains"].contains(req.instance_uuid())) {
          return absl::FailedPreconditionError(absl::StrCat(
              "domain ", req.instance_uuid(), " is not on the destination ", options_.hostname));
        }
        json& d = h["domains"][req.instance_uuid()];
        const std::string state = d.value("state", std::string());
        // libxl shows an incoming domain paused with reason "user", which this step accepts as a
        // guest paused before the migration (as LibvirtDriver does): it runs only after the
        // source's transfer completed.
        if (state != "running" && state != "paused" && !(Libxl() && state == "incoming")) {
          return absl::FailedPreconditionError(absl::StrCat("domain ", req.instance_uuid(), " is ",
                                                            state, " on ", options_.hostname,
                                                            ": the transfer has not completed"));
        }
        if (!d.value("persistent", false)) {
          d["persistent"] = true;
          *changed = true;
        }
        if (h["staged"].contains(req.migration_id())) {
          h["staged"].erase(req.migration_id());
          *changed = true;
        }
        info = DomainInfoOf(req.instance_uuid(), d, st, idx);
        return absl::OkStatus();
      }));
  RemoveProbe(options_.instance_path, req.migration_id());
  return info;
}

absl::StatusOr<v1::DomainInfo> FakeDriver::PauseInstance(const std::string& uuid) {
  RETURN_IF_ERROR(ValidateUuid(uuid));
  RETURN_IF_ERROR(RefuseDomain0(uuid));
  v1::DomainInfo info;
  RETURN_IF_ERROR(hv_.MutateIndexed([&](json& st, bool* changed,
                                        const FakeStateIndex& idx) -> absl::Status {
    json& doms = st["hosts"][options_.hostname]["domains"];
    if (!doms.contains(uuid)) {
      return absl::NotFoundError(absl::StrCat("domain ", uuid, " is not on ", options_.hostname));
    }
    json& d = doms[uuid];
    const std::string state = d.value("state", std::string());
    if (state == "shutoff") {
      return absl::FailedPreconditionError(absl::StrCat("domain ", uuid, " is shut off on ",
                                                        options_.hostname, ": nothing to pause"));
    }
    if (state != "paused") {
      d["state"] = "paused";
      *changed = true;
    }
    info = DomainInfoOf(uuid, d, st, idx);
    return absl::OkStatus();
  }));
  return info;
}

absl::Status FakeDriver::RollbackLiveMigrationAtDestination(
    const cv1::RollbackLiveMigrationAtDestinationRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(RefuseDomain0(req.instance_uuid()));
  RETURN_IF_ERROR(hv_.Mutate([&](json& st, bool* changed) -> absl::Status {
    Journal(st, options_.hostname, "rollback_live_migration_at_destination", req.migration_id(),
            NowMs(hv_.clock()));
    RETURN_IF_ERROR(
        TakeFailure(st, options_.hostname, "rollback_live_migration_at_destination", changed));
    json& h = st["hosts"][options_.hostname];
    if (h["domains"].contains(req.instance_uuid())) {
      const std::string state = h["domains"][req.instance_uuid()].value("state", std::string());
      // The rule of LibvirtDriver: a paused domain is destroyed when the hypervisor says it is
      // paused for an incoming migration (fake-qemu's "incoming"), or when the scheduler saw the
      // source holding the domain (libxl pauses an incoming domain with reason "user", so there
      // only that tells it from a paused guest). A running domain never.
      const bool paused = state == "incoming" || state == "paused";
      bool post_copy = false;  // the destination runs the guest: never destroyed
      for (const auto& [id, t] : st["transfers"].items()) {
        post_copy =
            post_copy || (IsRunning(t) && Get(t, "uuid") == req.instance_uuid() &&
                          Get(t, "dst") == options_.hostname && t.value("post_copy", false));
      }
      if (post_copy) {
        return WithReason(
            absl::FailedPreconditionError(absl::StrCat(
                "domain ", req.instance_uuid(), " is in post-copy on the destination ",
                options_.hostname, ": it is the only running copy; not destroying it")),
            v1::ERROR_REASON_ONLY_RUNNING_COPY);
      }
      const bool half_received =
          paused && ((state == "incoming" && !Libxl()) || req.source_runs_domain());
      if (!half_received) {
        return WithReason(
            absl::FailedPreconditionError(absl::StrCat(
                "domain ", req.instance_uuid(), " is ", paused ? "paused" : state,
                " on the destination ", options_.hostname,
                paused ? " (reason user) and the request does not say that the source still runs it"
                       : "",
                ": it may be the only running copy; not destroying it")),
            v1::ERROR_REASON_ONLY_RUNNING_COPY);
      }
      h["domains"].erase(req.instance_uuid());
      // Destroying the incoming domain breaks its transfer: it fails, the source keeps the VM.
      for (auto& [id, t] : st["transfers"].items()) {
        if (IsRunning(t) && Get(t, "uuid") == req.instance_uuid() &&
            Get(t, "dst") == options_.hostname) {
          t["state"] = "failed";
          t["error"] = absl::StrCat("the incoming domain on ", options_.hostname,
                                    " was destroyed (rollback at the destination)");
          t["finished_ms"] = NowMs(hv_.clock());
          json& src = st["hosts"][t["src"].get<std::string>()];
          if (src["domains"].contains(req.instance_uuid()) && t.value("paused_src", false)) {
            src["domains"][req.instance_uuid()]["state"] =
                t.value("prior_state", std::string("running"));
          }
        }
      }
      *changed = true;
    }
    if (h["staged"].contains(req.migration_id())) {
      h["staged"].erase(req.migration_id());
      *changed = true;
    }
    return absl::OkStatus();
  }));
  RemoveProbe(options_.instance_path, req.migration_id());
  return absl::OkStatus();
}

absl::StatusOr<v1::DomainInfo> FakeDriver::RollbackLiveMigration(
    const cv1::RollbackLiveMigrationRequest& req) {
  RETURN_IF_ERROR(ValidateMigrationId(req.migration_id()));
  RETURN_IF_ERROR(RefuseDomain0(req.instance_uuid()));
  v1::DomainInfo info;
  RETURN_IF_ERROR(
      hv_.MutateIndexed([&](json& st, bool* changed, const FakeStateIndex& idx) -> absl::Status {
        Journal(st, options_.hostname, "rollback_live_migration", req.migration_id(),
                NowMs(hv_.clock()));
        RETURN_IF_ERROR(TakeFailure(st, options_.hostname, "rollback_live_migration", changed));
        json& doms = st["hosts"][options_.hostname]["domains"];
        if (!doms.contains(req.instance_uuid())) {
          return absl::FailedPreconditionError(absl::StrCat(
              "domain ", req.instance_uuid(), " is not on the source ", options_.hostname,
              ": it cannot be rolled back here (check where it runs)"));
        }
        json& d = doms[req.instance_uuid()];
        const bool was_running = req.state_before_migration() != v1::DOMAIN_STATE_PAUSED;
        if (d.value("state", std::string()) == "paused" && was_running) {
          // As LibvirtDriver: never resumed while a transfer still works on it.
          for (const auto& [id, t] : st["transfers"].items()) {
            if (IsRunning(t) && Get(t, "uuid") == req.instance_uuid() &&
                Get(t, "src") == options_.hostname) {
              return absl::FailedPreconditionError(absl::StrCat(
                  "domain ", req.instance_uuid(), " is paused on the source ", options_.hostname,
                  " and transfer ", id, " still runs on it: not resuming it until it ends"));
            }
          }
          d["state"] = "running";
          *changed = true;
        }
        info = DomainInfoOf(req.instance_uuid(), d, st, idx);
        return absl::OkStatus();
      }));
  return info;
}

}  // namespace livemig::driver
