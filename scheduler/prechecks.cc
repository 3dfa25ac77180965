#include "scheduler/prechecks.h"

#include <algorithm>
#include <set>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "driver/checks.h"
#include "google/protobuf/util/json_util.h"
#include "scheduler/checks_registry.h"

namespace livemig::sched {

// Parsing a host's capabilities JSON costs about 20 us; hosts share a few distinct texts, so
// each text is parsed once per process (bounded: cleared when it grows past kMaxCached).
v1::BackendCapabilities HostCapabilities(const db::HostRecord& h) {
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

namespace {

std::string Hypervisor(const db::HostRecord& h, const v1::BackendCapabilities& caps) {
  const std::string& profile = caps.profile();
  return absl::StrCat(
      h.report.hypervisor_type.empty() ? "the hypervisor" : h.report.hypervisor_type,
      profile.empty() ? "" : absl::StrCat(" (", profile, ")"), " on ", h.report.hostname);
}

}  // namespace

absl::Status HostSupportsOptions(const db::HostRecord& h, const v1::MigrationOptions& options) {
  const v1::BackendCapabilities caps = HostCapabilities(h);
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
  return RunChecks(kSourcePrecheck, CheckSubject::kSource,
                   CheckContext{inst, &src, nullptr, options});
}

sv1::HostCheck CheckDestination(const db::InstanceRecord& inst, const db::HostRecord& src,
                                const db::HostRecord& dst, const v1::MigrationOptions& options) {
  sv1::HostCheck hc;
  hc.set_host(dst.report.hostname);
  hc.set_memory_available_mib(dst.report.memory_free_mib - dst.report.memory_reserved_mib -
                              dst.memory_claimed_mib);
  hc.set_migrations_in_flight(static_cast<uint32_t>(dst.migrations_in + dst.migrations_out));
  bool passed = true;
  for (auto& c : RunChecks(kDestPrecheck, CheckSubject::kDestination,
                           CheckContext{inst, &src, &dst, options})) {
    passed = passed && c.passed();
    *hc.add_checks() = std::move(c);
  }
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
  q.limit = limit;
  NarrowQuery(CheckContext{inst, &src, nullptr, options}, &q);
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
