// The undo of a migration (migration_run.h): RollBack (row R: at the destination, then at the
// source), the alert when the domain runs on both hosts, and the reconcile of a migration in
// `error` from what both hypervisors show.
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/status_map.h"
#include "common/test_hooks.h"
#include "scheduler/convert.h"
#include "scheduler/migration_run.h"

namespace livemig::sched {

absl::Status MigrationRun::RollBack(S final_status, const std::string& reason) {
  // The step in progress failed (or was aborted): its result, then the rollback's intents.
  const v1::MigrationStep failed =
      m_.step == v1::MIGRATION_STEP_UNSPECIFIED ? v1::MIGRATION_STEP_PRE_CHECKS : m_.step;
  RETURN_IF_ERROR(Record(failed, false, reason, Now(),
                         m_.dest_host.empty()
                             ? Intent(v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION)
                             : Intent(v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION_AT_DESTINATION)));
  absl::Time t = Now();
  if (!m_.dest_host.empty()) {
    ASSIGN_OR_RETURN(auto dst, Agent(m_.dest_host));
    // Once a transfer may have started, the destination may hold a half-received domain. On
    // Xen it is paused with reason "user", like a paused guest: only the source's state tells
    // them apart, so ask the source first (SourceHoldsDomain) and say so in the request. When
    // the source cannot answer, the request says nothing and the destination destroys only
    // what its hypervisor shows as an incoming migration's domain (QEMU).
    bool source_runs = false;
    if (m_.status == S::kRunning) {
      auto src = Agent(m_.source_host);
      if (src.ok()) {
        const cv1::DescribeInstanceRequest di = DescribeRequest(m_.instance_uuid, m_.uuid);
        auto s = Retry<cv1::DescribeInstanceResponse>([&] { return (*src)->DescribeInstance(di); });
        source_runs = s.ok() && SourceHoldsDomain(*s);
      }
    }
    TestPoint("rollback_live_migration_at_destination:before");
    auto rollback_at_dest = [&] {
      return Retry<cv1::RollbackLiveMigrationAtDestinationResponse>([&] {
        auto req = StepReq<cv1::RollbackLiveMigrationAtDestinationRequest>();
        *req.mutable_migrate_data() = data_;
        req.set_source_runs_domain(source_runs);
        return dst->RollbackLiveMigrationAtDestination(req);
      });
    };
    auto r = rollback_at_dest();
    if (!r.ok() && ReasonOf(r.status()) == v1::ERROR_REASON_ONLY_RUNNING_COPY &&
        m_.status == S::kRunning && !source_runs && SourceRunsToo() &&
        !DestinationRuns(dst.get())) {
      // The source could not say before that it runs the domain; it does now, and the
      // destination's copy is paused, not running: the half-received one. Again, saying so.
      source_runs = true;
      r = rollback_at_dest();
    }
    TestPoint("rollback_live_migration_at_destination:after");
    if (!r.ok()) {
      if (ReasonOf(r.status()) == v1::ERROR_REASON_ONLY_RUNNING_COPY && m_.status == S::kRunning) {
        // The destination keeps its copy: it may be the only running one. Unless the source
        // runs the domain too: then two copies run (two guests writing one disk), and the
        // source's is paused at once and an operator decides (status error).
        if (SourceRunsToo()) return TwoRunningCopies(r.status(), t);
        // The domain already runs on the destination: never tear it down; roll forward.
        return Move(S::kPostMigrating, v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION_AT_DESTINATION,
                    false, "the domain runs on the destination: rolling forward instead", t,
                    Intent(v1::MIGRATION_STEP_POST_LIVE_MIGRATION));
      }
      return Move(S::kError, v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION_AT_DESTINATION, false,
                  absl::StrCat(reason, "; rollback at destination failed: ", r.status().message()),
                  t);
    }
    RETURN_IF_ERROR(Record(v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION_AT_DESTINATION, true,
                           "destination cleaned up", t,
                           Intent(v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION)));
    t = Now();
  }
  ASSIGN_OR_RETURN(auto src, Agent(m_.source_host));
  auto req = StepReq<cv1::RollbackLiveMigrationRequest>();
  ASSIGN_OR_RETURN(db::InstanceRecord inst, o_->instances_->GetInstance(m_.instance_uuid));
  req.set_state_before_migration(state_before_ != v1::DOMAIN_STATE_UNSPECIFIED
                                     ? state_before_
                                     : DomainStateFromName(inst.power_state));
  TestPoint("rollback_live_migration:before");
  auto r =
      Retry<cv1::RollbackLiveMigrationResponse>([&] { return src->RollbackLiveMigration(req); });
  TestPoint("rollback_live_migration:after");
  if (!r.ok()) {
    return Move(S::kError, v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION, false,
                absl::StrCat(reason, "; rollback at source failed: ", r.status().message()), t);
  }
  return Move(final_status, v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION, true, reason, t);
}

std::optional<bool> MigrationRun::RunsOn(AgentClient* agent) {
  const cv1::DescribeInstanceRequest di = DescribeRequest(m_.instance_uuid, m_.uuid);
  auto r = Retry<cv1::DescribeInstanceResponse>([&] { return agent->DescribeInstance(di); });
  if (!r.ok()) return std::nullopt;
  return DomainRuns(*r);
}

bool MigrationRun::SourceRunsToo() {
  auto src = Agent(m_.source_host);
  return src.ok() && RunsOn(src->get()).value_or(false);
}

// The domain runs on both hosts: pause the source's copy at once (the destination's is kept:
// it may have run on its own since), set error, and raise the alert: an error in the log, the
// migration's event v1::MIGRATION_STEP_TWO_RUNNING_COPIES (counted by /metrics), the reason for the
// operators.
absl::Status MigrationRun::TwoRunningCopies(const absl::Status& refusal, absl::Time t) {
  std::string paused = "paused on the source";
  auto src = Agent(m_.source_host);
  absl::Status p = src.status();
  if (src.ok()) {
    cv1::PauseInstanceRequest req;
    req.set_instance_uuid(m_.instance_uuid);
    req.set_migration_id(m_.uuid);
    req.set_reason(absl::StrCat("it also runs on ", m_.dest_host));
    p = Retry<cv1::PauseInstanceResponse>([&] { return (*src)->PauseInstance(req); }).status();
  }
  if (!p.ok()) paused = absl::StrCat("NOT paused on the source (", p.message(), ")");
  const std::string detail = absl::StrCat(
      "ALERT: instance ", m_.instance_uuid, " runs on both ", m_.source_host, " and ", m_.dest_host,
      " (", refusal.message(), "); its copy on ", m_.source_host, " was ", paused,
      ". An operator must keep one copy: check the guest on each host, then destroy the other "
      "copy by hand");
  LogError("%s %s", Tag(), detail);
  return Move(S::kError, v1::MIGRATION_STEP_TWO_RUNNING_COPIES, false, detail, t);
}

void MigrationRun::Reconcile() {
  // Two running copies were found: only an operator can tell which copy to keep.
  if (m_.step == v1::MIGRATION_STEP_TWO_RUNNING_COPIES) return;
  auto src = Agent(m_.source_host);
  auto dst =
      m_.dest_host.empty()
          ? absl::StatusOr<std::shared_ptr<AgentClient>>(absl::NotFoundError("no destination"))
          : Agent(m_.dest_host);
  if (!src.ok() || !dst.ok()) return;
  auto truth = Ask(src->get(), dst->get());
  if (!truth.ok()) return;
  const absl::Time t = Now();
  if (truth->dst_running && !truth->src_present) {
    Move(S::kPostMigrating, v1::MIGRATION_STEP_RECONCILE, true,
         "the domain runs on the destination only", t,
         Intent(v1::MIGRATION_STEP_POST_LIVE_MIGRATION))
        .IgnoreError();
  } else if (truth->src_present && !truth->dst_present && !truth->src_job) {
    if (truth->src_running) {
      Move(S::kFailed, v1::MIGRATION_STEP_RECONCILE, true,
           absl::StrCat(m_.failure_reason, " (resolved: the VM runs on the source)"), t)
          .IgnoreError();
    } else {
      // The source holds the domain but it does not run (paused by the migration, e.g. by
      // force-complete's pause): roll back again, which resumes it if it ran before.
      RollBack(S::kFailed,
               absl::StrCat(m_.failure_reason, " (reconciled: rolled back again on the source)"))
          .IgnoreError();
    }
  }
}

}  // namespace livemig::sched
