// The running phase of a migration (migration_run.h): the transfer, started by the source's
// LiveMigration or re-attached after a takeover, then monitored until it ends. Undo: RollBack
// while the domain does not run on the destination; after that only roll forward.
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/test_hooks.h"
#include "scheduler/convert.h"
#include "scheduler/migration_run.h"

namespace livemig::sched {

absl::Status MigrationRun::Running() {
  ASSIGN_OR_RETURN(auto src, Agent(m_.source_host));
  ASSIGN_OR_RETURN(auto dst, Agent(m_.dest_host));
  // When the transfer started, on the injected clock: the row's start (the database's time)
  // as long ago as it is in real time. (With the real clock: the row's start.)
  const absl::Time started =
      m_.started_at ? Now() - std::max(absl::ZeroDuration(), absl::Now() - *m_.started_at) : Now();
  auto lm = StepReq<cv1::LiveMigrationRequest>();
  *lm.mutable_options() = OptionsFromJson(m_.options_json);
  if (prepared_) {
    *lm.mutable_migrate_data() = data_;
    TestPoint("live_migration:before");
    auto r = Retry<cv1::LiveMigrationResponse>([&] { return src->LiveMigration(lm); });
    TestPoint("live_migration:started");
    if (!r.ok() && r.status().code() != absl::StatusCode::kUnavailable &&
        r.status().code() != absl::StatusCode::kDeadlineExceeded) {
      return RollBack(S::kFailed, std::string(r.status().message()));
    }
    prepared_ = false;
  } else {
    // Taken over (or restarted): the truth is on the hypervisors.
    ASSIGN_OR_RETURN(Truth truth, Ask(src.get(), dst.get()));
    if (truth.src_job || truth.transfer_running) {
      auto r = Retry<cv1::LiveMigrationResponse>(
          [&] { return src->LiveMigration(lm); });  // attaches to the running job
      if (!r.ok()) LogWarning("%s re-attach: %s", Tag(), r.status().message());
    } else if (truth.dst_running && !truth.src_present) {
      return Move(S::kPostMigrating, v1::MIGRATION_STEP_LIVE_MIGRATION, true,
                  "the domain runs on the destination only (found after takeover)", started,
                  Intent(v1::MIGRATION_STEP_POST_LIVE_MIGRATION));
    } else if (truth.src_present && !truth.dst_running) {
      if (m_.status == S::kRunningPostCopy) {
        return Move(S::kError, v1::MIGRATION_STEP_LIVE_MIGRATION, false,
                    "post-copy had started but the transfer is gone; check the destination",
                    started);
      }
      return RollBack(AbortRequested() ? S::kCancelled : S::kFailed,
                      truth.transfer_error.empty()
                          ? "the transfer was not running after a scheduler takeover"
                          : truth.transfer_error);
    } else {
      return Move(S::kError, v1::MIGRATION_STEP_LIVE_MIGRATION, false,
                  absl::StrCat("cannot prove where the VM runs: source ",
                               truth.src_present ? "has" : "lacks", " it, destination ",
                               truth.dst_running ? "runs" : "does not run", " it"),
                  started);
    }
  }
  return Monitor(src.get(), dst.get(), started);
}

absl::Status MigrationRun::Monitor(AgentClient* src, AgentClient* dst, absl::Time started) {
  cv1::GetMigrationProgressRequest g;
  g.set_migration_id(m_.uuid);
  g.set_instance_uuid(m_.instance_uuid);
  absl::Time last_write = absl::InfinitePast(), last_ok = Now(), last_read = Now();
  bool abort_sent = false, force_sent = false;
  while (!o_->Stopping()) {
    auto r = src->GetMigrationProgress(g);
    const absl::Time now = Now();
    if (!r.ok()) {
      if (r.status().code() == absl::StatusCode::kNotFound || now - last_ok > opt().agent_silence) {
        // The source agent lost the transfer (restart) or stopped answering: ask both.
        auto truth = Ask(src, dst);
        if (truth.ok() && truth->dst_running && !truth->src_present) {
          return Move(S::kPostMigrating, v1::MIGRATION_STEP_LIVE_MIGRATION, true,
                      "the domain runs on the destination only", started,
                      Intent(v1::MIGRATION_STEP_POST_LIVE_MIGRATION));
        }
        if (truth.ok() && truth->src_job) {
          auto lm = StepReq<cv1::LiveMigrationRequest>();
          *lm.mutable_options() = OptionsFromJson(m_.options_json);
          src->LiveMigration(lm).IgnoreError();  // attach a new monitor
          last_ok = now;
        } else if (truth.ok() && truth->src_present && !truth->dst_running) {
          return RollBack(AbortRequested() ? S::kCancelled : S::kFailed,
                          "the transfer ended without completing");
        } else if (now - last_ok > opt().agent_silence * 2) {
          return Move(S::kError, v1::MIGRATION_STEP_LIVE_MIGRATION, false,
                      absl::StrCat("source agent on ", m_.source_host,
                                   " unreachable: ", r.status().message()),
                      started);
        }
      }
      Sleep(opt().progress_poll);
      continue;
    }
    last_ok = now;
    if (r->state() == cv1::TRANSFER_STATE_COMPLETED) {
      TestPoint("live_migration:after");
      WriteProgress(*r);
      return Move(S::kPostMigrating, v1::MIGRATION_STEP_LIVE_MIGRATION, true,
                  absl::StrCat("transfer completed in ", r->progress().elapsed_ms(), " ms",
                               r->progress().downtime_ms() > 0
                                   ? absl::StrCat(", downtime ", r->progress().downtime_ms(), " ms")
                                   : ""),
                  started, Intent(v1::MIGRATION_STEP_POST_LIVE_MIGRATION));
    }
    if (r->state() == cv1::TRANSFER_STATE_FAILED || r->state() == cv1::TRANSFER_STATE_CANCELLED) {
      if (r->post_copy_started()) {
        return Move(S::kError, v1::MIGRATION_STEP_LIVE_MIGRATION, false,
                    "post-copy failed: " + r->error() + " (no rollback to the source)", started);
      }
      const bool cancelled = AbortRequested() || r->state() == cv1::TRANSFER_STATE_CANCELLED;
      return RollBack(cancelled && !r->completion_timeout_expired() ? S::kCancelled : S::kFailed,
                      cancelled && !r->completion_timeout_expired()
                          ? AbortReason()
                          : absl::StrCat("transfer failed: ", r->error()));
    }
    if (r->post_copy_started() && m_.status == S::kRunning) {
      RETURN_IF_ERROR(Move(S::kRunningPostCopy, v1::MIGRATION_STEP_LIVE_MIGRATION, true,
                           "post-copy started", started,
                           Intent(v1::MIGRATION_STEP_LIVE_MIGRATION)));
    }
    if (now - last_write >= opt().progress_write) {
      WriteProgress(*r);
      last_write = now;
    }
    if (now - last_read >= opt().progress_write) {
      last_read = now;
      ASSIGN_OR_RETURN(m_, o_->migrations_->GetMigration(id_));
      if (m_.owner != opt().scheduler_id) return absl::AbortedError("lease lost");
      if (AbortRequested() && !abort_sent) {
        abort_sent = true;
        auto a = Retry<cv1::AbortLiveMigrationResponse>(
            [&] { return src->AbortLiveMigration(StepReq<cv1::AbortLiveMigrationRequest>()); });
        Note(v1::MIGRATION_STEP_ABORT,
             a.ok() ? "abort sent to the source" : std::string(a.status().message()));
      }
      if (m_.force_complete_requested_at && !force_sent) {
        force_sent = true;
        auto f = Retry<cv1::ForceCompleteLiveMigrationResponse>([&] {
          return src->ForceCompleteLiveMigration(StepReq<cv1::ForceCompleteLiveMigrationRequest>());
        });
        Note(v1::MIGRATION_STEP_FORCE_COMPLETE,
             f.ok() ? "force-complete sent to the source" : std::string(f.status().message()));
      }
    }
    if (now - started > opt().transfer_deadline && !abort_sent) {
      abort_sent = true;
      Note(v1::MIGRATION_STEP_LIVE_MIGRATION, "the scheduler's transfer deadline passed: aborting");
      Retry<cv1::AbortLiveMigrationResponse>([&] {
        return src->AbortLiveMigration(StepReq<cv1::AbortLiveMigrationRequest>());
      }).IgnoreError();
    }
    Sleep(NextPoll(*r));
  }
  return absl::OkStatus();
}

// The wait before the next progress poll: progress_poll, or less when the transfer's own
// progress (percent done in the time elapsed) says that it ends sooner, so that its end is seen
// within progress_poll / 5 instead of up to progress_poll later. Never below progress_poll / 5.
absl::Duration MigrationRun::NextPoll(const cv1::MigrationProgressReport& r) const {
  const auto& p = r.progress();
  absl::Duration wait = opt().progress_poll;
  if (p.has_bytes() && p.percent() > 0 && p.percent() < 100 && p.elapsed_ms() > 0) {
    const double left_ms = static_cast<double>(p.elapsed_ms()) * (100 - p.percent()) / p.percent();
    wait = std::min(wait, absl::Milliseconds(left_ms));
  }
  return std::max(wait, opt().progress_poll / 5);
}

}  // namespace livemig::sched
