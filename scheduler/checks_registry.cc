#include "scheduler/checks_registry.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "driver/checks.h"
#include "scheduler/prechecks.h"

namespace livemig::sched {
namespace {

v1::CheckResult Verdict(bool ok, std::string reason) {
  v1::CheckResult c;
  c.set_passed(ok);
  c.set_reason(std::move(reason));
  return c;
}

bool Runs(const db::InstanceRecord& inst) {
  return inst.power_state == "running" || inst.power_state == "paused" ||
         inst.power_state == "blocked";
}

// ---- The instance -------------------------------------------------------------------------------

v1::CheckResult InstanceState(const CheckContext& c) {
  const db::InstanceRecord& inst = c.inst;
  const bool runs = Runs(inst);
  return Verdict(runs && !inst.missing,
                 inst.missing ? absl::StrCat("instance ", inst.uuid, " is missing on ", inst.host)
                              : absl::StrCat("instance is ", inst.power_state,
                                             runs ? ""
                                                  : ": only a running or paused instance "
                                                    "can be live-migrated"));
}

Refusal RefuseInstanceState(const CheckContext& c, const v1::CheckResult&) {
  const db::InstanceRecord& inst = c.inst;
  if (inst.missing) {
    return {absl::FailedPreconditionError(
                absl::StrCat("instance ", inst.uuid, " is missing: its host ", inst.host,
                             " no longer reports it; check the host before migrating")),
            0};
  }
  // After a migration's refusal (precedence 1): an instance already migrating says so.
  return {absl::FailedPreconditionError(absl::StrCat(
              "instance ", inst.name.empty() ? inst.uuid : inst.name, " is ", inst.power_state,
              ": only a running or paused instance can be live-migrated")),
          2};
}

v1::CheckResult InstanceNotMigrating(const CheckContext& c) {
  const db::InstanceRecord& inst = c.inst;
  return Verdict(!inst.task_state.has_value(),
                 inst.task_state ? absl::StrCat("instance is already migrating",
                                                inst.active_migration_id
                                                    ? absl::StrCat(" (migration ",
                                                                   *inst.active_migration_id, ")")
                                                    : "")
                                 : "no migration holds the instance");
}

Refusal RefuseInstanceMigrating(const CheckContext& c, const v1::CheckResult&) {
  const db::InstanceRecord& inst = c.inst;
  return {
      absl::AbortedError(absl::StrCat(
          "instance ", inst.uuid, " is already migrating",
          inst.active_migration_id ? absl::StrCat(" (migration ", *inst.active_migration_id, ")")
                                   : "",
          ": wait for it to finish or abort it")),
      1, /*instance_busy=*/true};
}

// ---- The source ---------------------------------------------------------------------------------

v1::CheckResult SourceUp(const CheckContext& c) {
  const db::HostRecord& src = *c.src;
  return Verdict(src.up, src.up ? absl::StrCat("source ", src.report.hostname, " reports in time")
                                : HostDownReason("source", src));
}

v1::CheckResult SourceOptions(const CheckContext& c) {
  absl::Status s = HostSupportsOptions(*c.src, c.options);
  return Verdict(s.ok(),
                 s.ok() ? "the source supports every requested option" : std::string(s.message()));
}

Refusal RefuseSourceOptions(const CheckContext&, const v1::CheckResult& r) {
  return {absl::FailedPreconditionError(absl::StrCat(r.reason(), " (nothing was started)"))};
}

// ---- The destination ----------------------------------------------------------------------------

v1::CheckResult DestUp(const CheckContext& c) {
  const db::HostRecord& dst = *c.dst;
  return Verdict(dst.up, dst.up
                             ? absl::StrCat("destination ", dst.report.hostname, " reports in time")
                             : HostDownReason("destination", dst));
}

void NarrowDestUp(const CheckContext&, db::DestinationQuery* q) { q->only_up = true; }

Refusal RefuseDestUp(const CheckContext& c, const v1::CheckResult&) {
  // After a disabled destination's refusal (precedence 0).
  return {absl::FailedPreconditionError(
              absl::StrCat(HostDownReason("destination", *c.dst), " (nothing was started)")),
          1};
}

v1::CheckResult DestEnabled(const CheckContext& c) {
  const db::HostRecord& dst = *c.dst;
  const std::string& h = dst.report.hostname;
  return Verdict(dst.enabled, dst.enabled ? absl::StrCat("destination ", h, " is enabled")
                                          : absl::StrCat("destination ", h, " is disabled",
                                                         dst.disabled_reason.empty() ? "" : ": ",
                                                         dst.disabled_reason));
}

void NarrowDestEnabled(const CheckContext&, db::DestinationQuery* q) { q->only_enabled = true; }

Refusal RefuseDestEnabled(const CheckContext& c, const v1::CheckResult&) {
  const db::HostRecord& dst = *c.dst;
  return {absl::FailedPreconditionError(
              absl::StrCat("destination ", dst.report.hostname, " is disabled",
                           dst.disabled_reason.empty() ? "" : ": ", dst.disabled_reason,
                           " (enable it with host-enable, or choose another)")),
          0};
}

v1::CheckResult HypervisorType(const CheckContext& c) {
  const db::HostReport &s = c.src->report, &d = c.dst->report;
  const bool same = s.hypervisor_type == d.hypervisor_type;
  return Verdict(same, same ? absl::StrCat("both hosts run ", d.hypervisor_type)
                            : absl::StrCat("source runs ", s.hypervisor_type, ", destination ",
                                           d.hostname, " runs ", d.hypervisor_type));
}

void NarrowHypervisorType(const CheckContext& c, db::DestinationQuery* q) {
  q->hypervisor_type = c.src->report.hypervisor_type;
}

v1::CheckResult HypervisorVersion(const CheckContext& c) {
  const db::HostReport &s = c.src->report, &d = c.dst->report;
  const bool ok = d.hypervisor_version >= s.hypervisor_version;
  return Verdict(ok, absl::StrCat("destination ", d.hostname, " has ", d.hypervisor_type, " ",
                                  driver::FormatVersion(d.hypervisor_version), ok ? " >= " : " < ",
                                  "the source's ", driver::FormatVersion(s.hypervisor_version)));
}

void NarrowHypervisorVersion(const CheckContext& c, db::DestinationQuery* q) {
  q->min_hypervisor_version = c.src->report.hypervisor_version;
}

v1::CheckResult Memory(const CheckContext& c) {
  const db::HostRecord& dst = *c.dst;
  const int64_t avail =
      dst.report.memory_free_mib - dst.report.memory_reserved_mib - dst.memory_claimed_mib;
  return Verdict(
      avail >= c.inst.memory_mib,
      driver::MemoryReason(dst.report.hostname, dst.report.memory_free_mib,
                           dst.report.memory_reserved_mib, dst.memory_claimed_mib,
                           c.inst.name.empty() ? c.inst.uuid : c.inst.name, c.inst.memory_mib));
}

void NarrowMemory(const CheckContext& c, db::DestinationQuery* q) {
  q->memory_mib = c.inst.memory_mib;
}

v1::CheckResult Cpu(const CheckContext& c) {
  const db::HostReport &s = c.src->report, &d = c.dst->report;
  const std::string& h = d.hostname;
  if (s.cpu_arch != d.cpu_arch) {
    return Verdict(false, absl::StrCat("CPU architecture differs: source ", s.cpu_arch,
                                       ", destination ", h, " ", d.cpu_arch));
  }
  std::set<std::string> have(d.cpu_features.begin(), d.cpu_features.end());
  std::vector<std::string> lacking;
  for (const auto& f : s.cpu_features) {
    if (!have.count(f)) lacking.push_back(f);
  }
  return Verdict(
      lacking.empty(),
      lacking.empty()
          ? absl::StrCat("destination ", h, " has every source CPU feature (", d.cpu_arch, ")")
          : absl::StrCat("destination ", h,
                         " CPU lacks source features: ", absl::StrJoin(lacking, ", ")));
}

void NarrowCpu(const CheckContext& c, db::DestinationQuery* q) {
  q->cpu_arch = c.src->report.cpu_arch;
}

v1::CheckResult Network(const CheckContext& c) {
  const db::HostReport &s = c.src->report, &d = c.dst->report;
  std::set<std::string> segs(d.network_segments.begin(), d.network_segments.end());
  std::vector<std::string> missing;
  for (const auto& seg : s.network_segments) {
    if (!segs.count(seg)) missing.push_back(seg);
  }
  return Verdict(
      missing.empty(),
      missing.empty()
          ? absl::StrCat("destination ", d.hostname, " is on the source's network segments")
          : absl::StrCat("destination ", d.hostname, " lacks network segment(s) ",
                         absl::StrJoin(missing, ", "), " of the source"));
}

v1::CheckResult Storage(const CheckContext& c) {
  const db::HostReport &s = c.src->report, &d = c.dst->report;
  const bool same_path = s.instance_path == d.instance_path;
  const bool block_ok = c.options.block_migration() != v1::BLOCK_MIGRATION_NO &&
                        HostCapabilities(*c.dst).supports_block_migration();
  return Verdict(
      same_path || block_ok,
      same_path ? absl::StrCat("both hosts use the instance path ", d.instance_path,
                               " (shared storage is probed by the agents)")
                : absl::StrCat("destination ", d.hostname, " uses instance path ", d.instance_path,
                               ", the source ", s.instance_path, ", and block migration is ",
                               block_ok ? "possible" : "not possible"));
}

v1::CheckResult DestOptions(const CheckContext& c) {
  absl::Status s = HostSupportsOptions(*c.dst, c.options);
  return Verdict(s.ok(), s.ok() ? "the destination supports every requested option"
                                : std::string(s.message()));
}

using S = CheckSubject;
constexpr uint32_t kDest = kDestPrecheck, kBothAgents = kDestAgent | kSourceAgent;

// The table. Scheduler-side results come in this order (the dry run's instance checks, then
// CheckSource's, then CheckDestination's); agent checks are the agents' own (driver/checks.cc).
const Check kChecks[] = {
    {"instance_state", S::kInstance, kRequest | kDryRun, InstanceState, nullptr, true,
     RefuseInstanceState},
    {"instance_not_migrating", S::kInstance, kRequest | kDryRun, InstanceNotMigrating, nullptr,
     true, RefuseInstanceMigrating},
    {"source_up", S::kSource, kSourcePrecheck, SourceUp},
    {"source_options", S::kSource, kRequest | kSourcePrecheck, SourceOptions, nullptr, true,
     RefuseSourceOptions},
    {"dest_up", S::kDestination, kRequest | kDest | kDbNarrowing, DestUp, NarrowDestUp, true,
     RefuseDestUp},
    {"dest_enabled", S::kDestination, kRequest | kDest | kDbNarrowing, DestEnabled,
     NarrowDestEnabled, true, RefuseDestEnabled},
    {"hypervisor_type", S::kDestination, kDest | kDbNarrowing | kDestAgent, HypervisorType,
     NarrowHypervisorType},
    {"hypervisor_version", S::kDestination, kDest | kDbNarrowing | kDestAgent, HypervisorVersion,
     NarrowHypervisorVersion},
    {"memory", S::kDestination, kDest | kDbNarrowing | kDestAgent, Memory, NarrowMemory},
    {"cpu", S::kDestination, kDest | kDbNarrowing | kDestAgent, Cpu, NarrowCpu,
     /*narrows_exactly=*/false},
    {"network", S::kDestination, kDest | kDestAgent, Network},
    {"storage", S::kDestination, kDest, Storage},
    {"options", S::kDestination, kDest | kSourceAgent, DestOptions},
    // The agents' own checks.
    {"xen_pv_shadow_paging", S::kDestination, kBothAgents},
    {"storage_probe", S::kDestination, kDestAgent},
    {"shared_storage", S::kSource, kSourceAgent},
    {"pci_passthrough", S::kSource, kSourceAgent},
    {"shared_volumes", S::kDestination, kBothAgents, nullptr, nullptr, true, nullptr,
     "LibvirtDriver"},
    {"local_disks", S::kSource, kSourceAgent, nullptr, nullptr, true, nullptr, "LibvirtDriver"},
    // The dry run's account of agents that did not answer (Orchestrator::DryRun).
    {"agent_checks", S::kDestination, kDryRun},
    {"agent_source", S::kSource, kDryRun},
    {"agent_dest", S::kDestination, kDryRun},
    {"agent_src", S::kSource, kDryRun},
};

const std::string& HostOf(CheckSubject subject, const CheckContext& c) {
  static const std::string kNone;
  switch (subject) {
    case S::kInstance:
      return c.inst.host;
    case S::kSource:
      return c.src ? c.src->report.hostname : kNone;
    case S::kDestination:
      return c.dst ? c.dst->report.hostname : kNone;
  }
  return kNone;
}

}  // namespace

absl::Span<const Check> Checks() { return kChecks; }

const Check* FindCheck(std::string_view name) {
  for (const Check& c : kChecks) {
    if (name == c.name) return &c;
  }
  return nullptr;
}

v1::CheckResult RunCheck(const Check& check, const CheckContext& ctx) {
  v1::CheckResult r = check.predicate(ctx);
  r.set_host(HostOf(check.subject, ctx));
  r.set_name(check.name);
  return r;
}

std::vector<v1::CheckResult> RunChecks(uint32_t where, CheckSubject subject,
                                       const CheckContext& ctx) {
  std::vector<v1::CheckResult> out;
  for (const Check& c : kChecks) {
    if ((c.where & where) && c.subject == subject && c.predicate) out.push_back(RunCheck(c, ctx));
  }
  return out;
}

void NarrowQuery(const CheckContext& ctx, db::DestinationQuery* q) {
  for (const Check& c : kChecks) {
    if ((c.where & kDbNarrowing) && c.narrow) c.narrow(ctx, q);
  }
}

Refusal RefuseRequest(CheckSubject subject, const CheckContext& ctx) {
  if ((subject == S::kSource && !ctx.src) || (subject == S::kDestination && !ctx.dst)) return {};
  Refusal best;
  for (const Check& c : kChecks) {
    if (!(c.where & kRequest) || c.subject != subject || !c.predicate) continue;
    const v1::CheckResult r = RunCheck(c, ctx);
    if (r.passed()) continue;
    Refusal no = c.refuse(ctx, r);
    if (best.status.ok() || no.precedence < best.precedence) best = std::move(no);
  }
  return best;
}

}  // namespace livemig::sched
