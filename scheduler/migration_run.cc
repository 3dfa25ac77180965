// MigrationRun: Drive() and what every phase shares (events, transitions, host records,
// agents, what both hypervisors show). The phases: migration_run.h.
#include "scheduler/migration_run.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "scheduler/convert.h"

namespace livemig::sched {

bool DomainRuns(const cv1::DescribeInstanceResponse& r) {
  return r.present() && (r.domain().state() == v1::DOMAIN_STATE_RUNNING ||
                         r.domain().state() == v1::DOMAIN_STATE_BLOCKED);
}

// True when the source's answer shows the domain there as a complete copy that runs or can run
// again: running, blocked, paused (PAUSED: by an operator, an offline or paused-to-complete
// transfer), migrating out, or the source of an active job -- never in post-copy (the destination
// then holds the only complete copy). While the source holds the domain, a paused domain on the
// destination is a half-received copy, whatever its pause reason: on Xen, libxl pauses the incoming
// domain with reason "user" (QEMU says "migration"), and libxl resumes it on the destination before
// the source's domain is destroyed, so the destination's copy is never the only one while it is
// paused and the source still holds the domain.
bool SourceHoldsDomain(const cv1::DescribeInstanceResponse& s) {
  if (!s.present()) return false;
  const v1::DomainState st = s.domain().state();
  if (st == v1::DOMAIN_STATE_INCOMING_POST_COPY) return false;
  return s.domain().migration_job_active() || s.domain().job_active() ||
         st == v1::DOMAIN_STATE_RUNNING || st == v1::DOMAIN_STATE_BLOCKED ||
         st == v1::DOMAIN_STATE_PAUSED || st == v1::DOMAIN_STATE_MIGRATING_OUT;
}

std::string StepHost(v1::MigrationStep step, const std::string& source, const std::string& dest) {
  switch (step) {
    case v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST:
    case v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST_CLEANUP:
    case v1::MIGRATION_STEP_PRE_LIVE_MIGRATION:
    case v1::MIGRATION_STEP_POST_LIVE_MIGRATION_AT_DESTINATION:
    case v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION_AT_DESTINATION:
      return dest;
    case v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_SRC:
    case v1::MIGRATION_STEP_LIVE_MIGRATION:
    case v1::MIGRATION_STEP_POST_LIVE_MIGRATION:
    case v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION:
    case v1::MIGRATION_STEP_ABORT:
    case v1::MIGRATION_STEP_FORCE_COMPLETE:
      return source;
    default:
      return "";
  }
}

void MigrationRun::Drive() {
  while (!o_->Stopping()) {
    // After a transition, m_ is the row as that transaction committed it (abort requests
    // included): no need to read it again.
    if (!fresh_) {
      auto m = o_->migrations_->GetMigration(id_);
      if (!m.ok()) {
        LogWarning("migration=%d cannot be read: %s", id_, m.status().message());
        Sleep(absl::Seconds(1));
        continue;
      }
      m_ = *m;
    }
    fresh_ = false;
    if (IsTerminal(m_.status) || m_.owner != o_->options_.scheduler_id) return;
    absl::Status s;
    switch (m_.status) {
      case S::kAccepted:
        s = Accepted();
        break;
      case S::kQueued:
        s = Queued();
        break;
      case S::kPreparing:
        s = Preparing();
        break;
      case S::kRunning:
      case S::kRunningPostCopy:
        s = Running();
        break;
      case S::kPostMigrating:
        s = PostMigrating();
        break;
      case S::kError:
        Reconcile();
        return;  // retried later by the dispatcher
      default:
        return;
    }
    if (!s.ok()) {
      if (s.code() == absl::StatusCode::kAborted) return;  // lease lost or row moved on
      LogWarning("%s: %s (retrying)", Tag(), s.message());
      Sleep(absl::Seconds(1));
    }
  }
}

db::MigrationEvent MigrationRun::Intent(v1::MigrationStep step, const std::string& dest) {
  db::MigrationEvent e;
  e.step = step;
  e.kind = "intent";
  e.host = HostOf(step, dest);
  e.detail = absl::StrCat(StepName(step), " on ", e.host);
  e.started_at = Now();
  return e;
}

db::MigrationEvent MigrationRun::Result(v1::MigrationStep step, bool ok, const std::string& detail,
                                        absl::Time started) {
  db::MigrationEvent e;
  e.step = step;
  e.kind = "result";
  e.host = HostOf(step);
  e.outcome = ok ? "ok" : "failed";
  e.detail = detail;
  e.started_at = started;
  e.finished_at = Now();
  e.duration_ms = absl::ToInt64Milliseconds(*e.finished_at - started);
  return e;
}

absl::Status MigrationRun::Move(S to, v1::MigrationStep step, bool ok, const std::string& detail,
                                absl::Time started, std::optional<db::MigrationEvent> next,
                                std::function<void(db::Transition&)> more) {
  db::Transition t;
  t.migration_id = m_.id;
  if (to == S::kCompleted) next.reset();
  t.owner = opt().scheduler_id;
  t.from = m_.status;
  t.to = to;
  t.step = next ? next->step : step;
  t.event_kind = "result";
  t.event_outcome = ok ? "ok" : "failed";
  t.event_detail = detail;
  t.event_host = HostOf(step);
  t.event_started_at = started;
  if (next) t.extra_events.push_back(*next);
  if (to == S::kFailed || to == S::kCancelled || to == S::kError) t.failure_reason = detail;
  if (more) more(t);
  t.event_step = step;  // the event reports `step`; the row moves on to the next intent
  auto r = o_->migrations_->ApplyTransition(t);
  if (!r.ok()) return r.status();
  LogInfo("%s status %s -> %s (%s)%s%s", Tag(), ToString(m_.status), ToString(to), StepName(step),
          detail.empty() ? "" : ": ", detail);
  m_ = *r;
  fresh_ = true;
  if (IsTerminal(to)) o_->MigrationEnded();
  return absl::OkStatus();
}

absl::Status MigrationRun::Record(v1::MigrationStep step, bool ok, const std::string& detail,
                                  absl::Time started, const std::optional<db::MigrationEvent>& next,
                                  std::optional<std::string> dest) {
  std::vector<db::MigrationEvent> events = {Result(step, ok, detail, started)};
  if (next) events.push_back(*next);
  fresh_ = false;
  RETURN_IF_ERROR(o_->migrations_->RecordStep(m_.id, opt().scheduler_id, m_.status,
                                              next ? next->step : step, events, dest));
  if (dest) m_.dest_host = *dest;
  return absl::OkStatus();
}

// A host's record, read once per run of this state machine: the pre-checks, the agent checks
// and the agent's address use the same report (7 reads per migration before, 2 now).
absl::StatusOr<db::HostRecord> MigrationRun::Host(const std::string& name) {
  auto it = host_records_.find(name);
  if (it != host_records_.end()) return it->second;
  ASSIGN_OR_RETURN(db::HostRecord h, o_->hosts_->GetHost(name, opt().service_down_time));
  host_records_[name] = h;
  return h;
}

// The agent of `name`, resolved from its host report once per run of this state machine.
absl::StatusOr<std::shared_ptr<AgentClient>> MigrationRun::Agent(const std::string& name) {
  auto it = agents_.find(name);
  if (it != agents_.end()) return it->second;
  ASSIGN_OR_RETURN(db::HostRecord h, Host(name));
  auto client = o_->agents_->ForHost(name, h.report.agent_address);
  agents_[name] = client;
  return client;
}

std::string MigrationRun::AbortReason() const {
  return absl::StrCat("aborted by ", m_.aborted_by.empty() ? "an operator" : m_.aborted_by,
                      m_.abort_reason.empty() ? "" : ": ", m_.abort_reason);
}

absl::StatusOr<MigrationRun::Truth> MigrationRun::Ask(AgentClient* src, AgentClient* dst) {
  const cv1::DescribeInstanceRequest di = DescribeRequest(m_.instance_uuid, m_.uuid);
  auto s = Retry<cv1::DescribeInstanceResponse>([&] { return src->DescribeInstance(di); });
  auto d = Retry<cv1::DescribeInstanceResponse>([&] { return dst->DescribeInstance(di); });
  if (!s.ok()) return s.status();
  if (!d.ok()) return d.status();
  Truth t;
  t.src_present = s->present();
  t.src_job = s->present() && (s->domain().migration_job_active() || s->domain().job_active());
  t.src_holds = SourceHoldsDomain(*s);
  t.src_running = DomainRuns(*s);
  t.transfer_running = s->transfer().state() == cv1::TRANSFER_STATE_RUNNING;
  t.transfer_error = s->transfer().error();
  t.dst_present = d->present();
  const auto st = d->domain().state();
  t.dst_running =
      d->present() && (st == v1::DOMAIN_STATE_RUNNING || st == v1::DOMAIN_STATE_BLOCKED ||
                       (st == v1::DOMAIN_STATE_PAUSED && !t.src_holds));
  return t;
}

void MigrationRun::Note(v1::MigrationStep step, const std::string& detail) {
  db::MigrationEvent e;
  e.migration_id = m_.id;
  e.step = step;
  e.kind = "info";
  e.status = ToString(m_.status);
  e.actor = opt().scheduler_id;
  e.detail = detail;
  e.host = HostOf(step);
  e.started_at = Now();
  o_->migrations_->AppendEvent(e).IgnoreError();
}

void MigrationRun::WriteProgress(const cv1::MigrationProgressReport& r) {
  db::MigrationProgress p;
  const auto& pr = r.progress();
  p.phase = pr.phase() == v1::MIGRATION_PHASE_POST_COPY            ? "post-copy"
            : pr.phase() == v1::MIGRATION_PHASE_PAUSED_TO_COMPLETE ? "paused-to-complete"
            : pr.phase() == v1::MIGRATION_PHASE_OFFLINE_COPY       ? "offline-copy"
                                                                   : "pre-copy";
  if (pr.has_bytes()) {
    p.bytes_total = static_cast<int64_t>(pr.bytes_total());
    p.bytes_processed = static_cast<int64_t>(pr.bytes_processed());
    p.bytes_remaining = static_cast<int64_t>(pr.bytes_remaining());
    p.percent = pr.percent();
  }
  p.elapsed_ms = static_cast<int64_t>(pr.elapsed_ms());
  if (pr.downtime_ms() > 0) p.downtime_ms = static_cast<int64_t>(pr.downtime_ms());
  fresh_ = false;
  o_->migrations_->UpdateProgress(m_.id, opt().scheduler_id, p).IgnoreError();
}

}  // namespace livemig::sched
