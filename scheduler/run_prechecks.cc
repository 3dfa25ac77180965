// The pre-checks phase of a migration (migration_run.h): the database checks and the
// destination choice (accepted), then the wait for a concurrency slot (queued). No undo: a
// refusal ends the migration `failed`, and the store releases its claims.
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/test_hooks.h"
#include "scheduler/checks_registry.h"
#include "scheduler/convert.h"
#include "scheduler/migration_run.h"
#include "scheduler/prechecks.h"

namespace livemig::sched {

absl::Status MigrationRun::Accepted() {
  TestPoint("pre_checks:before");  // tests only (common/test_hooks.h)
  const absl::Time start = Now();
  if (AbortRequested())
    return Move(S::kCancelled, v1::MIGRATION_STEP_PRE_CHECKS, false, AbortReason(), start);
  db::InstanceRecord inst;
  if (instance_ && instance_->uuid == m_.instance_uuid) {
    inst = *std::move(instance_);  // read by the request just before it claimed the instance
  } else {
    ASSIGN_OR_RETURN(inst, o_->instances_->GetInstance(m_.instance_uuid));
  }
  instance_.reset();
  ASSIGN_OR_RETURN(db::HostRecord src, Host(m_.source_host));
  const v1::MigrationOptions options = OptionsFromJson(m_.options_json);
  for (const auto& c : CheckSource(inst, src, options)) {
    if (!c.passed()) {
      return Move(S::kFailed, v1::MIGRATION_STEP_PRE_CHECKS, false, c.reason(), start, std::nullopt,
                  Refused(c.name()));
    }
  }
  candidates_.clear();
  // The ranked candidates (with every check and the rejected ones' reasons), persisted with the
  // destination in the same transition (Migration.candidates); bounded.
  std::optional<std::string> ranked_json;
  if (!m_.requested_dest.empty()) {
    ASSIGN_OR_RETURN(db::HostRecord dst, Host(m_.requested_dest));
    // The request already claimed the instance's memory on its destination: that claim is
    // this migration's own and must not count against it.
    if (m_.dest_host == m_.requested_dest) {
      dst.memory_claimed_mib = std::max<int64_t>(0, dst.memory_claimed_mib - m_.memory_claim_mib);
    }
    sv1::HostCheck hc = CheckDestination(inst, src, dst, options);
    if (!hc.passed()) {
      return Move(S::kFailed, v1::MIGRATION_STEP_PRE_CHECKS, false, FirstFailure(hc.checks()),
                  start, std::nullopt, Refused(FirstFailedCheck(hc.checks())));
    }
    candidates_.push_back(m_.requested_dest);
  } else {
    ASSIGN_OR_RETURN(std::vector<sv1::HostCheck> ranked,
                     ChooseDestinations(*o_->hosts_, inst, src, options, opt().service_down_time));
    ranked_json = CandidatesToJson(ranked, kDestinationCandidates);
    std::string rejected;
    for (const auto& hc : ranked) {
      if (hc.passed()) {
        candidates_.push_back(hc.host());
      } else {
        absl::StrAppend(&rejected, rejected.empty() ? "" : "; ", FirstFailure(hc.checks()));
      }
    }
    if (!rejected.empty() && !candidates_.empty()) {
      Note(v1::MIGRATION_STEP_SELECT_DESTINATION,
           absl::StrCat("candidates in order: ", absl::StrJoin(candidates_, ", "),
                        "; rejected: ", rejected));
    }
    if (candidates_.empty()) {
      return Move(
          S::kFailed, v1::MIGRATION_STEP_SELECT_DESTINATION, false,
          absl::StrCat("no host can take instance ", inst.name.empty() ? inst.uuid : inst.name,
                       rejected.empty() ? ": no other host is known" : ": ", rejected),
          start, std::nullopt, [&](db::Transition& t) {
            t.candidates_json = ranked_json;
            // The best-ranked host's refusal (or none: no other host is known).
            t.refused_check =
                ranked.empty() ? "no_other_host" : FirstFailedCheck(ranked.front().checks());
          });
    }
  }
  const std::string dest = candidates_.front();
  const bool slot = SlotFree(Limits(m_.source_host, dest));
  auto set_dest = [&](db::Transition& t) {
    t.dest_host = dest;
    t.memory_claim_mib = inst.memory_mib;
    t.candidates_json = ranked_json;
  };
  const std::string detail = absl::StrCat("pre-checks passed; destination ", dest,
                                          m_.requested_dest.empty() ? " (chosen)" : " (requested)");
  TestPoint("pre_checks:after");
  if (slot) {
    // Taken under the database's slot lock: another migration may have taken it meanwhile.
    absl::Status took = Move(S::kPreparing, v1::MIGRATION_STEP_PRE_CHECKS, true, detail, start,
                             Intent(v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST, dest),
                             [&](db::Transition& t) {
                               set_dest(t);
                               t.slot = Limits(m_.source_host, dest);
                             });
    if (!absl::IsResourceExhausted(took)) return took;
    LogInfo("%s %s", Tag(), took.message());
  }
  return Move(S::kQueued, v1::MIGRATION_STEP_PRE_CHECKS, true, detail + "; waiting for a slot",
              start, std::nullopt, set_dest);
}

std::function<void(db::Transition&)> MigrationRun::Refused(std::string check) {
  return [check = std::move(check)](db::Transition& t) { t.refused_check = check; };
}

db::SlotLimits MigrationRun::Limits(const std::string& src, const std::string& dst) const {
  db::SlotLimits l;
  l.source = src;
  l.dest = dst;
  l.max_total = opt().max_total;
  l.max_out_of_source = opt().max_outbound_per_host;
  l.max_into_dest = opt().max_inbound_per_host;
  return l;
}

// FIFO within the per-host and total limits, as read now (one cheap read): whether taking a
// slot is worth trying. The slot is taken by the transition into `preparing` (Transition::slot),
// which checks again under the database's lock.
bool MigrationRun::SlotFree(const db::SlotLimits& limits) {
  auto use = o_->migrations_->GetSlotUse(m_.id, limits.source, limits.dest);
  if (!use.ok()) {
    LogWarning("migration=%d: slot use unknown, waiting: %s", m_.id, use.status().message());
    return false;
  }
  return db::WhyNoSlot(*use, limits).empty();
}

absl::Status MigrationRun::Queued() {
  const absl::Time start = Now();
  while (!o_->Stopping()) {
    ASSIGN_OR_RETURN(m_, o_->migrations_->GetMigration(id_));
    if (m_.status != S::kQueued || m_.owner != opt().scheduler_id) return absl::OkStatus();
    if (AbortRequested())
      return Move(S::kCancelled, v1::MIGRATION_STEP_WAIT_FOR_SLOT, false, AbortReason(), start);
    const db::SlotLimits limits = Limits(m_.source_host, m_.dest_host);
    if (SlotFree(limits)) {
      absl::Status took =
          Move(S::kPreparing, v1::MIGRATION_STEP_WAIT_FOR_SLOT, true, "a slot is free", start,
               Intent(v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST),
               [&](db::Transition& t) { t.slot = limits; });
      if (!absl::IsResourceExhausted(took)) {
        // Left `queued`: the wait may have been long, so the host records cached since the
        // pre-checks (and the agents resolved from their addresses) are dropped, and
        // Preparing reads the source's and the destination's current reports. Without a
        // wait (accepted -> preparing) the cache is kept.
        host_records_.clear();
        agents_.clear();
        return took;
      }
    }
    Sleep(opt().dispatch_interval * 2);
  }
  return absl::OkStatus();
}

}  // namespace livemig::sched
