#include "scheduler/prechecks.h"

#include <algorithm>
#include <set>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "driver/checks.h"
#include "google/protobuf/util/json_util.h"

namespace livemig::sched {
namespace {

v1::CheckResult Result(const std::string& host, const std::string& name, bool ok,
                       const std::string& reason) {
  v1::CheckResult c;
  c.set_host(host);
  c.set_name(name);
  c.set_passed(ok);
  c.set_reason(reason);
  return c;
}

// Parsing a host's capabilities JSON costs about 20 us; hosts share a few distinct texts, so
// each text is parsed once per process (bounded: cleared when it grows past kMaxCached).
v1::BackendCapabilities Caps(const db::HostRecord& h) {
  static constexpr size_t kMaxCached = 1024;
  static absl::Mutex mu(absl::kConstInit);
  static auto* cache = new std::unordered_map<std::string, v1::BackendCapabilities>();
  const std::string& json = h.report.capabilities_json;
  {
    absl::MutexLock l(&mu);
    auto it = cache->find(json);
    if (it != cache->end()) return it->second;
  }
  v1::BackendCapabilities c;
  google::protobuf::util::JsonParseOptions p;
  p.ignore_unknown_fields = true;
  (void)google::protobuf::util::JsonStringToMessage(json, &c, p);
  absl::MutexLock l(&mu);
  if (cache->size() >= kMaxCached) cache->clear();
  cache->emplace(json, c);
  return c;
}

std::string Hypervisor(const db::HostRecord& h, const v1::BackendCapabilities& caps) {
  const std::string& profile = caps.profile();
  return absl::StrCat(
      h.report.hypervisor_type.empty() ? "the hypervisor" : h.report.hypervisor_type,
      profile.empty() ? "" : absl::StrCat(" (", profile, ")"), " on ", h.report.hostname);
}

}  // namespace

absl::Status HostSupportsOptions(const db::HostRecord& h, const v1::MigrationOptions& options) {
  const v1::BackendCapabilities caps = Caps(h);
  return driver::CheckOptionsSupported(options, caps, Hypervisor(h, caps));
}

std::string FirstFailure(const google::protobuf::RepeatedPtrField<v1::CheckResult>& checks) {
  for (const auto& c : checks) {
    if (!c.passed()) return c.reason();
  }
  return "";
}

std::string FirstFailedCheck(const google::protobuf::RepeatedPtrField<v1::CheckResult>& checks) {
  for (const auto& c : checks) {
    if (!c.passed()) return c.name();
  }
  return "";
}

std::string HostDownReason(const std::string& role, const db::HostRecord& h, absl::Time now) {
  const std::string& name = h.report.hostname;
  const std::string since =
      h.last_report_at
          ? absl::StrCat(
                "no report since ",
                absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", *h.last_report_at, absl::UTCTimeZone()),
                " (", absl::FormatDuration(absl::Trunc(now - *h.last_report_at, absl::Seconds(1))),
                " ago, longer than the scheduler's service_down_time)")
          : "its agent has never reported";
  const std::string todo =
      role == "source"
          ? "the instance can be migrated once the host reports again: check its compute agent "
            "(running? its log; can it reach the scheduler's registry?)"
          : "choose another destination, or check its compute agent (running? its log; can it "
            "reach the scheduler's registry?)";
  return absl::StrCat(role, " ", name, " is down: ", since, "; ", todo);
}

std::vector<v1::CheckResult> CheckSource(const db::InstanceRecord& inst, const db::HostRecord& src,
                                         const v1::MigrationOptions& options) {
  std::vector<v1::CheckResult> out;
  const std::string& h = src.report.hostname;
  out.push_back(Result(
      h, "source_up", src.up,
      src.up ? absl::StrCat("source ", h, " reports in time") : HostDownReason("source", src)));
  absl::Status s = HostSupportsOptions(src, options);
  out.push_back(
      Result(h, "source_options", s.ok(),
             s.ok() ? "the source supports every requested option" : std::string(s.message())));
  (void)inst;
  return out;
}

sv1::HostCheck CheckDestination(const db::InstanceRecord& inst, const db::HostRecord& src,
                                const db::HostRecord& dst, const v1::MigrationOptions& options) {
  sv1::HostCheck hc;
  const std::string& h = dst.report.hostname;
  hc.set_host(h);
  auto add = [&](const std::string& name, bool ok, const std::string& reason) {
    *hc.add_checks() = Result(h, name, ok, reason);
  };
  add("dest_up", dst.up,
      dst.up ? absl::StrCat("destination ", h, " reports in time")
             : HostDownReason("destination", dst));
  add("dest_enabled", dst.enabled,
      dst.enabled ? absl::StrCat("destination ", h, " is enabled")
                  : absl::StrCat("destination ", h, " is disabled",
                                 dst.disabled_reason.empty() ? "" : ": ", dst.disabled_reason));
  const bool same_type = src.report.hypervisor_type == dst.report.hypervisor_type;
  add("hypervisor_type", same_type,
      same_type ? absl::StrCat("both hosts run ", dst.report.hypervisor_type)
                : absl::StrCat("source runs ", src.report.hypervisor_type, ", destination ", h,
                               " runs ", dst.report.hypervisor_type));
  const bool version_ok = dst.report.hypervisor_version >= src.report.hypervisor_version;
  add("hypervisor_version", version_ok,
      absl::StrCat("destination ", h, " has ", dst.report.hypervisor_type, " ",
                   driver::FormatVersion(dst.report.hypervisor_version),
                   version_ok ? " >= " : " < ", "the source's ",
                   driver::FormatVersion(src.report.hypervisor_version)));
  const int64_t avail =
      dst.report.memory_free_mib - dst.report.memory_reserved_mib - dst.memory_claimed_mib;
  hc.set_memory_available_mib(avail);
  hc.set_migrations_in_flight(static_cast<uint32_t>(dst.migrations_in + dst.migrations_out));
  add("memory", avail >= inst.memory_mib,
      driver::MemoryReason(h, dst.report.memory_free_mib, dst.report.memory_reserved_mib,
                           dst.memory_claimed_mib, inst.name.empty() ? inst.uuid : inst.name,
                           inst.memory_mib));
  if (src.report.cpu_arch != dst.report.cpu_arch) {
    add("cpu", false,
        absl::StrCat("CPU architecture differs: source ", src.report.cpu_arch, ", destination ", h,
                     " ", dst.report.cpu_arch));
  } else {
    std::set<std::string> have(dst.report.cpu_features.begin(), dst.report.cpu_features.end());
    std::vector<std::string> lacking;
    for (const auto& f : src.report.cpu_features) {
      if (!have.count(f)) lacking.push_back(f);
    }
    add("cpu", lacking.empty(),
        lacking.empty()
            ? absl::StrCat("destination ", h, " has every source CPU feature (",
                           dst.report.cpu_arch, ")")
            : absl::StrCat("destination ", h,
                           " CPU lacks source features: ", absl::StrJoin(lacking, ", ")));
  }
  std::set<std::string> segs(dst.report.network_segments.begin(),
                             dst.report.network_segments.end());
  std::vector<std::string> missing;
  for (const auto& s : src.report.network_segments) {
    if (!segs.count(s)) missing.push_back(s);
  }
  add("network", missing.empty(),
      missing.empty() ? absl::StrCat("destination ", h, " is on the source's network segments")
                      : absl::StrCat("destination ", h, " lacks network segment(s) ",
                                     absl::StrJoin(missing, ", "), " of the source"));
  const bool same_path = src.report.instance_path == dst.report.instance_path;
  const v1::BackendCapabilities dcaps = Caps(dst);
  const bool block_ok =
      options.block_migration() != v1::BLOCK_MIGRATION_NO && dcaps.supports_block_migration();
  add("storage", same_path || block_ok,
      same_path
          ? absl::StrCat("both hosts use the instance path ", dst.report.instance_path,
                         " (shared storage is probed by the agents)")
          : absl::StrCat("destination ", h, " uses instance path ", dst.report.instance_path,
                         ", the source ", src.report.instance_path, ", and block migration is ",
                         block_ok ? "possible" : "not possible"));
  absl::Status s = HostSupportsOptions(dst, options);
  add("options", s.ok(),
      s.ok() ? "the destination supports every requested option" : std::string(s.message()));
  bool passed = true;
  for (const auto& c : hc.checks()) passed = passed && c.passed();
  hc.set_passed(passed);
  return hc;
}

std::vector<sv1::HostCheck> RankDestinations(const db::InstanceRecord& inst,
                                             const db::HostRecord& src,
                                             const std::vector<db::HostRecord>& hosts,
                                             const v1::MigrationOptions& options) {
  std::vector<sv1::HostCheck> all;
  for (const auto& h : hosts) {
    if (h.report.hostname == src.report.hostname) continue;
    all.push_back(CheckDestination(inst, src, h, options));
  }
  std::stable_sort(all.begin(), all.end(), [](const sv1::HostCheck& a, const sv1::HostCheck& b) {
    if (a.passed() != b.passed()) return a.passed();
    if (a.memory_available_mib() != b.memory_available_mib()) {
      return a.memory_available_mib() > b.memory_available_mib();
    }
    if (a.migrations_in_flight() != b.migrations_in_flight()) {
      return a.migrations_in_flight() < b.migrations_in_flight();
    }
    return a.host() < b.host();
  });
  uint32_t rank = 0;
  for (auto& c : all) {
    if (c.passed()) c.set_rank(++rank);
  }
  return all;
}

absl::StatusOr<std::vector<sv1::HostCheck>> ChooseDestinations(
    db::HostStore& hosts, const db::InstanceRecord& inst, const db::HostRecord& src,
    const v1::MigrationOptions& options, absl::Duration service_down_time, int limit) {
  db::DestinationQuery q;
  q.source = src.report.hostname;
  q.hypervisor_type = src.report.hypervisor_type;
  q.min_hypervisor_version = src.report.hypervisor_version;
  q.cpu_arch = src.report.cpu_arch;
  q.memory_mib = inst.memory_mib;
  q.limit = limit;
  auto few = hosts.ListDestinationCandidates(q, service_down_time);
  if (!few.ok()) return few.status();
  std::vector<sv1::HostCheck> ranked = RankDestinations(inst, src, *few, options);
  if (!ranked.empty() && ranked.front().passed()) return ranked;
  // None of them passes: check every host, so that the reasons name each one.
  auto all = hosts.ListHosts(service_down_time);
  if (!all.ok()) return all.status();
  return RankDestinations(inst, src, *all, options);
}

}  // namespace livemig::sched
