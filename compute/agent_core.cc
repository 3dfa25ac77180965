#include "compute/agent_core.h"

#include <algorithm>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/test_hooks.h"
#include "driver/checks.h"

namespace livemig::agent {

namespace {

// The steps after which the migration has ended on the side that ran them (see agent_core.h).
bool EndsMigrationHere(v1::MigrationStep step) {
  return step == v1::MIGRATION_STEP_POST_LIVE_MIGRATION ||
         step == v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION ||
         step == v1::MIGRATION_STEP_POST_LIVE_MIGRATION_AT_DESTINATION ||
         step == v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION_AT_DESTINATION ||
         step == v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST_CLEANUP;
}

// Only checks ran (they change nothing on the host): the migration may go no further here (a
// refusal, another destination chosen, a scheduler that gave up), so it counts as ended until a
// step that does change something runs.
bool OnlyChecks(const std::map<int, std::string>& done) {
  for (const auto& [step, answer] : done) {
    if (step != v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST &&
        step != v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_SRC) {
      return false;
    }
  }
  return true;
}

// A dry run's check (the scheduler's CheckMigration sets dry_run, with a throwaway id): run as a
// step would be, but without a record, so that the agent keeps nothing of it (the scheduler's
// calls may be cut short by the dry run's deadline, and the source sees no cleanup call).
// `role` is CheckRoleHost's answer; `has_record`: the agent keeps a record of this id, which is
// then a migration's and refused.
template <typename Resp>
absl::StatusOr<Resp> RunDryRunStep(const std::string& id, const std::string& uuid,
                                   const absl::Status& role, bool has_record,
                                   v1::MigrationStep step,
                                   const std::function<absl::StatusOr<Resp>()>& fn) {
  RETURN_IF_ERROR(driver::ValidateMigrationId(id));
  RETURN_IF_ERROR(driver::ValidateUuid(uuid));
  RETURN_IF_ERROR(role);
  if (has_record) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dry run with migration id ", id, ", which is a migration's: a dry run needs its own id"));
  }
  const absl::Time start = absl::Now();
  absl::StatusOr<Resp> r = fn();
  LogInfo("dry run %s instance=%s step=%s %s in %d ms (no record kept)", id, uuid, StepName(step),
          r.ok() ? "ok" : absl::StrCat("failed: ", r.status().ToString()),
          absl::ToInt64Milliseconds(absl::Now() - start));
  return r;
}

}  // namespace

AgentCore::AgentCore(Options options, driver::ComputeDriver* driver)
    : options_(std::move(options)),
      driver_(driver),
      finished_({options_.finished_keep, options_.max_finished}) {}

AgentCore::~AgentCore() {
  std::vector<std::thread> workers;
  {
    absl::MutexLock l(&mu_);
    for (auto& [seq, t] : workers_) workers.push_back(std::move(t));
    workers_.clear();
    for (auto& t : exited_) workers.push_back(std::move(t));
    exited_.clear();
  }
  for (auto& t : workers) {
    if (t.joinable()) t.join();
  }
}

void AgentCore::Reap() {
  std::vector<std::thread> exited;
  {
    absl::MutexLock l(&mu_);
    exited.swap(exited_);
    for (const std::string& id : finished_.Expire(options_.clock->Now())) records_.erase(id);
  }
  for (auto& t : exited) t.join();  // each has left mu_ for good: this waits for its return
}

void AgentCore::UpdateRetentionLocked(const std::string& id, Record& rec) {
  auto it = records_.find(id);
  if (it == records_.end() || it->second.get() != &rec) return;  // dropped while a step ran
  const bool finished = rec.ended && !rec.transfer_running;
  if (finished && !rec.retained) {
    finished_.Finished(id, options_.clock->Now());
    rec.retained = true;
  } else if (!finished && rec.retained) {
    finished_.Forget(id);
    rec.retained = false;
  }
  for (const std::string& old : finished_.Expire(options_.clock->Now())) records_.erase(old);
}

void AgentCore::DropIfEmpty(const std::string& id, const std::shared_ptr<Record>& rec) {
  if (!rec->done.empty()) return;
  absl::MutexLock l(&mu_);
  auto it = records_.find(id);
  // use_count 2: the map and the caller; another call holding it may still record something.
  if (!rec->transfer_started && it != records_.end() && it->second == rec && rec.use_count() == 2) {
    records_.erase(it);
  }
}

std::shared_ptr<AgentCore::Record> AgentCore::Find(const std::string& id) {
  Reap();
  absl::MutexLock l(&mu_);
  auto it = records_.find(id);
  return it == records_.end() ? nullptr : it->second;
}

std::shared_ptr<AgentCore::Record> AgentCore::FindOrCreate(const std::string& id,
                                                           const std::string& uuid) {
  Reap();
  absl::MutexLock l(&mu_);
  auto& r = records_[id];
  if (!r) {
    r = std::make_shared<Record>();
    r->instance_uuid = uuid;
  }
  return r;
}

int AgentCore::RunningTransfers() {
  absl::MutexLock l(&mu_);
  return running_;
}

size_t AgentCore::RecordCount() {
  absl::MutexLock l(&mu_);
  return records_.size();
}

size_t AgentCore::WorkerThreadCount() {
  absl::MutexLock l(&mu_);
  return workers_.size() + exited_.size();
}

absl::Status AgentCore::CheckRoleHost(const std::string& role_host, const char* role) const {
  if (role_host.empty() || role_host == options_.hostname) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("this agent runs on ", options_.hostname,
                                                 ", but the request names ", role_host, " as the ",
                                                 role, ": send it to the agent of ", role_host));
}

template <typename Resp>
absl::StatusOr<Resp> AgentCore::RunStep(const std::string& id, const std::string& uuid,
                                        const std::string& role_host, v1::MigrationStep step,
                                        std::vector<v1::MigrationStep> conflicts,
                                        const std::function<absl::StatusOr<Resp>()>& fn) {
  RETURN_IF_ERROR(driver::ValidateMigrationId(id));
  RETURN_IF_ERROR(driver::ValidateUuid(uuid));
  const bool dest_step = step == v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST ||
                         step == v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST_CLEANUP ||
                         step == v1::MIGRATION_STEP_PRE_LIVE_MIGRATION ||
                         step == v1::MIGRATION_STEP_POST_LIVE_MIGRATION_AT_DESTINATION ||
                         step == v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION_AT_DESTINATION;
  RETURN_IF_ERROR(CheckRoleHost(role_host, dest_step ? "destination" : "source"));
  auto rec = FindOrCreate(id, uuid);
  absl::MutexLock step_lock(&rec->step_mu);
  absl::Cleanup drop_if_empty = [&] { DropIfEmpty(id, rec); };  // its first step failed
  if (rec->instance_uuid != uuid) {
    return absl::InvalidArgumentError(
        absl::StrCat("migration ", id, " is for instance ", rec->instance_uuid, ", not ", uuid));
  }
  for (v1::MigrationStep c : conflicts) {
    if (rec->done.count(c)) {
      return absl::FailedPreconditionError(
          absl::StrCat("migration ", id, ": ", StepName(step), " cannot run on ", options_.hostname,
                       " after ", StepName(c), " already ran here"));
    }
  }
  auto done = rec->done.find(step);
  if (done != rec->done.end()) {
    Resp again;
    again.ParseFromString(done->second);
    LogInfo("migration=%s instance=%s step=%s repeated: returning the recorded answer", id, uuid,
            StepName(step));
    return again;
  }
  TestPoint(absl::StrCat(StepName(step), ":before"));  // tests only: received, nothing done
  const absl::Time start = absl::Now();
  absl::StatusOr<Resp> r = fn();
  const int64_t ms = absl::ToInt64Milliseconds(absl::Now() - start);
  if (!r.ok()) {
    LogWarning("migration=%s instance=%s step=%s failed after %d ms: %s", id, uuid, StepName(step),
               ms, r.status().ToString());
    return r;
  }
  rec->done[step] = r->SerializeAsString();
  {
    absl::MutexLock l(&mu_);
    // Any other step done now: the migration goes on here.
    rec->ended = EndsMigrationHere(step) || (!rec->transfer_started && OnlyChecks(rec->done));
    UpdateRetentionLocked(id, *rec);
  }
  LogInfo("migration=%s instance=%s step=%s ok in %d ms", id, uuid, StepName(step), ms);
  TestPoint(absl::StrCat(StepName(step), ":after"));  // tests only: done, answer not sent
  return r;
}

absl::StatusOr<cv1::GetHostInfoResponse> AgentCore::GetHostInfo() {
  Reap();  // the host reporter calls this periodically: an idle agent reaps too
  cv1::GetHostInfoResponse resp;
  ASSIGN_OR_RETURN(*resp.mutable_inventory(), driver_->GetHostInfo());
  return resp;
}

absl::StatusOr<cv1::ListDomainsResponse> AgentCore::ListDomains() {
  Reap();
  cv1::ListDomainsResponse resp;
  ASSIGN_OR_RETURN(auto doms, driver_->ListDomains());
  for (auto& d : doms) *resp.add_domains() = std::move(d);
  return resp;
}

absl::StatusOr<cv1::PauseInstanceResponse> AgentCore::PauseInstance(
    const cv1::PauseInstanceRequest& req) {
  RETURN_IF_ERROR(driver::ValidateUuid(req.instance_uuid()));
  if (!req.migration_id().empty()) RETURN_IF_ERROR(driver::ValidateMigrationId(req.migration_id()));
  LogWarning("migration=%s instance=%s pausing the domain on %s at the scheduler's request: %s",
             req.migration_id(), req.instance_uuid(), options_.hostname, req.reason());
  cv1::PauseInstanceResponse resp;
  ASSIGN_OR_RETURN(*resp.mutable_domain(), driver_->PauseInstance(req.instance_uuid()));
  return resp;
}

absl::StatusOr<cv1::DescribeInstanceResponse> AgentCore::DescribeInstance(
    const cv1::DescribeInstanceRequest& req) {
  RETURN_IF_ERROR(driver::ValidateUuid(req.instance_uuid()));
  cv1::DescribeInstanceResponse resp;
  resp.set_instance_uuid(req.instance_uuid());
  ASSIGN_OR_RETURN(auto dom, driver_->DescribeDomain(req.instance_uuid()));
  resp.set_present(dom.has_value());
  if (dom) *resp.mutable_domain() = *dom;
  if (!req.migration_id().empty()) {
    RETURN_IF_ERROR(driver::ValidateMigrationId(req.migration_id()));
    if (auto rec = Find(req.migration_id())) {
      absl::MutexLock l(&rec->step_mu);
      for (const auto& [step, answer] : rec->done) {
        resp.add_steps_done(static_cast<v1::MigrationStep>(step));
      }
      resp.set_staged(rec->done.count(v1::MIGRATION_STEP_PRE_LIVE_MIGRATION) > 0);
      if (rec->transfer_started) *resp.mutable_transfer() = rec->latest;
    } else {
      auto p = driver_->GetMigrationProgress(req.migration_id(), req.instance_uuid());
      if (p.ok()) *resp.mutable_transfer() = *p;
    }
  }
  return resp;
}

absl::StatusOr<cv1::CheckCanLiveMigrateOnDestResponse> AgentCore::CheckCanLiveMigrateOnDest(
    const cv1::CheckCanLiveMigrateOnDestRequest& req) {
  if (req.dry_run()) {
    return RunDryRunStep<cv1::CheckCanLiveMigrateOnDestResponse>(
        req.migration_id(), req.instance_uuid(), CheckRoleHost(req.dest_host(), "destination"),
        Find(req.migration_id()) != nullptr, v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST,
        [&] { return driver_->CheckCanLiveMigrateOnDest(req); });
  }
  return RunStep<cv1::CheckCanLiveMigrateOnDestResponse>(
      req.migration_id(), req.instance_uuid(), req.dest_host(),
      v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST, {},
      [&] { return driver_->CheckCanLiveMigrateOnDest(req); });
}

absl::StatusOr<cv1::CheckCanLiveMigrateOnSrcResponse> AgentCore::CheckCanLiveMigrateOnSrc(
    const cv1::CheckCanLiveMigrateOnSrcRequest& req) {
  if (req.dry_run()) {
    return RunDryRunStep<cv1::CheckCanLiveMigrateOnSrcResponse>(
        req.migration_id(), req.instance_uuid(), CheckRoleHost(req.source_host(), "source"),
        Find(req.migration_id()) != nullptr, v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_SRC,
        [&] { return driver_->CheckCanLiveMigrateOnSrc(req); });
  }
  return RunStep<cv1::CheckCanLiveMigrateOnSrcResponse>(
      req.migration_id(), req.instance_uuid(), req.source_host(),
      v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_SRC, {},
      [&] { return driver_->CheckCanLiveMigrateOnSrc(req); });
}

absl::StatusOr<cv1::CheckCanLiveMigrateOnDestCleanupResponse>
AgentCore::CheckCanLiveMigrateOnDestCleanup(
    const cv1::CheckCanLiveMigrateOnDestCleanupRequest& req) {
  if (req.dry_run()) {
    return RunDryRunStep<cv1::CheckCanLiveMigrateOnDestCleanupResponse>(
        req.migration_id(), req.instance_uuid(), CheckRoleHost(req.dest_host(), "destination"),
        Find(req.migration_id()) != nullptr,
        v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST_CLEANUP,
        [&]() -> absl::StatusOr<cv1::CheckCanLiveMigrateOnDestCleanupResponse> {
          RETURN_IF_ERROR(driver_->CheckCanLiveMigrateOnDestCleanup(req));
          return cv1::CheckCanLiveMigrateOnDestCleanupResponse();
        });
  }
  return RunStep<cv1::CheckCanLiveMigrateOnDestCleanupResponse>(
      req.migration_id(), req.instance_uuid(), req.dest_host(),
      v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST_CLEANUP,
      {v1::MIGRATION_STEP_PRE_LIVE_MIGRATION},
      [&]() -> absl::StatusOr<cv1::CheckCanLiveMigrateOnDestCleanupResponse> {
        RETURN_IF_ERROR(driver_->CheckCanLiveMigrateOnDestCleanup(req));
        return cv1::CheckCanLiveMigrateOnDestCleanupResponse();
      });
}

absl::StatusOr<cv1::PreLiveMigrationResponse> AgentCore::PreLiveMigration(
    const cv1::PreLiveMigrationRequest& req) {
  if (!req.migrate_data().has_src_check()) {
    return absl::InvalidArgumentError(
        "PreLiveMigration needs the source check's data (migrate_data.src_check)");
  }
  // Out of order: no destination check ran here (this agent's record), and the request carries
  // none either (a restarted agent has no record but the scheduler passes the check's data).
  bool checked_here = false;
  if (auto rec = Find(req.migration_id())) {
    absl::MutexLock l(&rec->step_mu);
    checked_here = rec->done.count(v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST) > 0;
  }
  if (!checked_here && req.migrate_data().dest_check().probe_file_name().empty()) {
    return absl::FailedPreconditionError(absl::StrCat("migration ", req.migration_id(),
                                                      ": pre_live_migration before "
                                                      "check_can_live_migrate_on_dest on ",
                                                      options_.hostname,
                                                      ": run the destination check first"));
  }
  return RunStep<cv1::PreLiveMigrationResponse>(
      req.migration_id(), req.instance_uuid(), req.dest_host(),
      v1::MIGRATION_STEP_PRE_LIVE_MIGRATION,
      {v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION_AT_DESTINATION},
      [&]() -> absl::StatusOr<cv1::PreLiveMigrationResponse> {
        cv1::PreLiveMigrationResponse resp;
        ASSIGN_OR_RETURN(*resp.mutable_pre_live_migration_data(), driver_->PreLiveMigration(req));
        return resp;
      });
}

absl::StatusOr<cv1::LiveMigrationResponse> AgentCore::LiveMigration(
    const cv1::LiveMigrationRequest& req) {
  const std::string& id = req.migration_id();
  RETURN_IF_ERROR(driver::ValidateMigrationId(id));
  RETURN_IF_ERROR(driver::ValidateUuid(req.instance_uuid()));
  RETURN_IF_ERROR(CheckRoleHost(req.source_host(), "source"));
  auto rec = FindOrCreate(id, req.instance_uuid());
  absl::MutexLock step_lock(&rec->step_mu);
  absl::Cleanup drop_if_empty = [&] { DropIfEmpty(id, rec); };  // refused before it started
  if (rec->done.count(v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION) ||
      rec->done.count(v1::MIGRATION_STEP_POST_LIVE_MIGRATION)) {
    return absl::FailedPreconditionError(
        absl::StrCat("migration ", id, ": live_migration cannot start on ", options_.hostname,
                     " after its rollback or post step ran here"));
  }
  cv1::LiveMigrationResponse resp;
  if (rec->transfer_started) {
    resp.set_attached(true);
    absl::MutexLock l(&mu_);
    *resp.mutable_report() = rec->latest;
    return resp;
  }
  // Refuse what the backend lacks before anything starts.
  RETURN_IF_ERROR(driver::CheckOptionsSupported(
      req.options(), driver_->capabilities(),
      absl::StrCat(driver_->capabilities().profile(), " on ", options_.hostname)));
  // A transfer the hypervisor still runs (this agent restarted) is attached to, not restarted.
  // On Xen (libxl) every job is "unbounded" with operation "unknown", so the driver of a
  // restarted agent reports the running transfer as job_active only (never as
  // migration_job_active): the scheduler sends this step again, without the destination's data,
  // only when its record says the migration is transferring, so a job then is taken as the
  // transfer, and the driver attaches to it (if it was another job, the driver's monitor reports
  // the transfer FAILED when it ends without the domain leaving, and the migration rolls back).
  auto dom = driver_->DescribeDomain(req.instance_uuid());
  const bool job_running =
      dom.ok() && dom->has_value() && ((*dom)->migration_job_active() || (*dom)->job_active());
  if (!job_running && req.migrate_data().pre_live_migration().migration_uri().empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("migration ", id,
                     ": live_migration needs the destination's pre_live_migration data; "
                     "run PreLiveMigration on the destination first"));
  }
  TestPoint("live_migration:before");  // tests only: received, nothing started
  {
    absl::MutexLock l(&mu_);
    if (running_ >= options_.max_concurrent_migrations) {
      return absl::UnavailableError(absl::StrCat(
          options_.hostname, " already runs ", running_, " transfers (max_concurrent_migrations=",
          options_.max_concurrent_migrations, "): retry later"));
    }
    ++running_;
    rec->transfer_started = true;
    rec->transfer_running = true;
    rec->ended = false;  // until its post or rollback step
    UpdateRetentionLocked(id, *rec);
    rec->latest.set_migration_id(id);
    rec->latest.set_instance_uuid(req.instance_uuid());
    rec->latest.set_state(cv1::TRANSFER_STATE_RUNNING);
    rec->latest.set_monitor_attached(true);
    const uint64_t seq = next_worker_++;
    // Inserted under mu_, which the worker needs before it ends: its handle is in workers_ then.
    workers_.emplace(
        seq, std::thread([this, rec, req, seq] {
          auto sink = [this, rec](const cv1::MigrationProgressReport& r) {
            absl::MutexLock l(&mu_);
            rec->latest = r;
            rec->transfer_seen = true;
          };
          auto result = driver_->LiveMigration(req, sink);
          absl::MutexLock l(&mu_);
          if (result.ok()) {
            rec->latest = *result;
          } else {
            rec->latest.set_state(cv1::TRANSFER_STATE_FAILED);
            rec->latest.set_error(std::string(result.status().message()));
          }
          rec->transfer_running = false;
          rec->transfer_seen = true;
          --running_;
          UpdateRetentionLocked(req.migration_id(), *rec);  // its post step may have run already
          LogInfo("migration=%s instance=%s transfer ended: %s%s%s", req.migration_id(),
                  req.instance_uuid(), cv1::TransferState_Name(rec->latest.state()),
                  rec->latest.error().empty() ? "" : ": ", rec->latest.error());
          // The last thing under mu_: the next call joins this thread (Reap). Absent only when the
          // destructor took the handle to join it itself.
          auto self = workers_.extract(seq);
          if (!self.empty()) exited_.push_back(std::move(self.mapped()));
        }));
  }
  rec->done[v1::MIGRATION_STEP_LIVE_MIGRATION] = "";
  resp.set_attached(job_running);
  {
    absl::MutexLock l(&mu_);
    // Answer once the job is visible, so that progress, abort and force-complete find it.
    auto seen = [rec]() { return rec->transfer_seen; };
    mu_.AwaitWithTimeout(absl::Condition(&seen), options_.start_wait);
    *resp.mutable_report() = rec->latest;
  }
  LogInfo("migration=%s instance=%s step=live_migration %s to %s", id, req.instance_uuid(),
          job_running ? "attached to the running transfer" : "started", req.dest_host());
  TestPoint("live_migration:after");  // tests only: the transfer runs, answer not sent
  return resp;
}

absl::StatusOr<cv1::MigrationProgressReport> AgentCore::GetMigrationProgress(
    const cv1::GetMigrationProgressRequest& req) {
  RETURN_IF_ERROR(driver::ValidateMigrationId(req.migration_id()));
  if (auto rec = Find(req.migration_id())) {
    absl::MutexLock l(&mu_);
    if (rec->transfer_started) return rec->latest;
  }
  auto p = driver_->GetMigrationProgress(req.migration_id(), req.instance_uuid());
  if (p.status().code() == absl::StatusCode::kNotFound) {
    return absl::NotFoundError(absl::StrCat("no transfer of migration ", req.migration_id(), " on ",
                                            options_.hostname,
                                            " (neither in this agent nor on the hypervisor)"));
  }
  return p;
}

absl::StatusOr<cv1::AbortLiveMigrationResponse> AgentCore::AbortLiveMigration(
    const cv1::AbortLiveMigrationRequest& req) {
  cv1::GetMigrationProgressRequest p;
  p.set_migration_id(req.migration_id());
  p.set_instance_uuid(req.instance_uuid());
  ASSIGN_OR_RETURN(auto before, GetMigrationProgress(p));  // NotFound without a trace
  // Idempotent: a repeated abort answers as the first did (the transfer, aborted or aborting)
  // instead of "already ended".
  if (before.abort_requested() && (before.state() == cv1::TRANSFER_STATE_RUNNING ||
                                   before.state() == cv1::TRANSFER_STATE_CANCELLED)) {
    cv1::AbortLiveMigrationResponse again;
    *again.mutable_report() = before;
    return again;
  }
  if (before.state() != cv1::TRANSFER_STATE_RUNNING) {
    return absl::FailedPreconditionError(
        absl::StrCat("the transfer of migration ", req.migration_id(), " already ended (",
                     cv1::TransferState_Name(before.state()), ")"));
  }
  RETURN_IF_ERROR(driver_->AbortLiveMigration(req.migration_id(), req.instance_uuid()));
  if (auto rec = Find(req.migration_id())) {
    absl::MutexLock l(&mu_);
    rec->latest.set_abort_requested(true);  // until the monitor's next sample says so too
  }
  LogInfo("migration=%s instance=%s abort requested", req.migration_id(), req.instance_uuid());
  cv1::AbortLiveMigrationResponse resp;
  ASSIGN_OR_RETURN(*resp.mutable_report(), GetMigrationProgress(p));
  resp.mutable_report()->set_abort_requested(true);
  return resp;
}

absl::StatusOr<cv1::ForceCompleteLiveMigrationResponse> AgentCore::ForceCompleteLiveMigration(
    const cv1::ForceCompleteLiveMigrationRequest& req) {
  cv1::GetMigrationProgressRequest p;
  p.set_migration_id(req.migration_id());
  p.set_instance_uuid(req.instance_uuid());
  ASSIGN_OR_RETURN(auto before, GetMigrationProgress(p));
  // Idempotent: a repeated force-complete answers as the first did.
  if (before.force_complete_requested() && (before.state() == cv1::TRANSFER_STATE_RUNNING ||
                                            before.state() == cv1::TRANSFER_STATE_COMPLETED)) {
    cv1::ForceCompleteLiveMigrationResponse again;
    *again.mutable_report() = before;
    return again;
  }
  if (before.state() != cv1::TRANSFER_STATE_RUNNING) {
    return absl::FailedPreconditionError(
        absl::StrCat("the transfer of migration ", req.migration_id(), " already ended (",
                     cv1::TransferState_Name(before.state()), ")"));
  }
  RETURN_IF_ERROR(driver_->ForceCompleteLiveMigration(req.migration_id(), req.instance_uuid()));
  if (auto rec = Find(req.migration_id())) {
    absl::MutexLock l(&mu_);
    rec->latest.set_force_complete_requested(true);
  }
  LogInfo("migration=%s instance=%s force-complete requested", req.migration_id(),
          req.instance_uuid());
  cv1::ForceCompleteLiveMigrationResponse resp;
  ASSIGN_OR_RETURN(*resp.mutable_report(), GetMigrationProgress(p));
  resp.mutable_report()->set_force_complete_requested(true);
  return resp;
}

void AgentCore::ReportStarted() {
  absl::MutexLock l(&fence_mu_);
  ++reports_started_;
}

void AgentCore::ReportEnded() {
  absl::MutexLock l(&fence_mu_);
  ++reports_ended_;
}

void AgentCore::AwaitReportsInFlight(const char* step) {
  absl::MutexLock l(&fence_mu_);
  struct Wait {
    AgentCore* core;
    int64_t started;
  } wait{this, reports_started_};
  // On the injected clock (Options::clock; docs/DESIGN.md § Clocks).
  const bool ended =
      options_.clock->AwaitWithTimeout(&fence_mu_,
                                       absl::Condition(
                                           +[](Wait* w) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                                             return w->core->reports_ended_ >= w->started;
                                           },
                                           &wait),
                                       options_.report_fence_timeout);
  if (!ended) {
    LogWarning(
        "%s: a host report still in flight after %s; answering anyway (that report may "
        "show this host as it was before the step)",
        step, absl::FormatDuration(options_.report_fence_timeout));
  }
}

absl::StatusOr<cv1::PostLiveMigrationResponse> AgentCore::PostLiveMigration(
    const cv1::PostLiveMigrationRequest& req) {
  absl::Cleanup fence = [&] { AwaitReportsInFlight("post_live_migration"); };
  return RunStep<cv1::PostLiveMigrationResponse>(
      req.migration_id(), req.instance_uuid(), req.source_host(),
      v1::MIGRATION_STEP_POST_LIVE_MIGRATION, {v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION},
      [&]() -> absl::StatusOr<cv1::PostLiveMigrationResponse> {
        RETURN_IF_ERROR(driver_->PostLiveMigration(req));
        return cv1::PostLiveMigrationResponse();
      });
}

absl::StatusOr<cv1::PostLiveMigrationAtDestinationResponse>
AgentCore::PostLiveMigrationAtDestination(const cv1::PostLiveMigrationAtDestinationRequest& req) {
  absl::Cleanup fence = [&] { AwaitReportsInFlight("post_live_migration_at_destination"); };
  return RunStep<cv1::PostLiveMigrationAtDestinationResponse>(
      req.migration_id(), req.instance_uuid(), req.dest_host(),
      v1::MIGRATION_STEP_POST_LIVE_MIGRATION_AT_DESTINATION,
      {v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION_AT_DESTINATION},
      [&]() -> absl::StatusOr<cv1::PostLiveMigrationAtDestinationResponse> {
        cv1::PostLiveMigrationAtDestinationResponse resp;
        ASSIGN_OR_RETURN(*resp.mutable_domain(), driver_->PostLiveMigrationAtDestination(req));
        return resp;
      });
}

absl::StatusOr<cv1::RollbackLiveMigrationResponse> AgentCore::RollbackLiveMigration(
    const cv1::RollbackLiveMigrationRequest& req) {
  if (auto rec = Find(req.migration_id())) {
    absl::MutexLock l(&mu_);
    if (rec->transfer_running) {
      return absl::FailedPreconditionError(absl::StrCat(
          "migration ", req.migration_id(), ": the transfer still runs on ", options_.hostname,
          "; abort it (or wait for it to end) before rolling back"));
    }
    if (rec->latest.post_copy_started()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "migration ", req.migration_id(),
          ": post-copy started, the destination holds the only complete copy; no rollback"));
    }
  }
  absl::Cleanup fence = [&] { AwaitReportsInFlight("rollback_live_migration"); };
  return RunStep<cv1::RollbackLiveMigrationResponse>(
      req.migration_id(), req.instance_uuid(), req.source_host(),
      v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION, {v1::MIGRATION_STEP_POST_LIVE_MIGRATION},
      [&]() -> absl::StatusOr<cv1::RollbackLiveMigrationResponse> {
        cv1::RollbackLiveMigrationResponse resp;
        ASSIGN_OR_RETURN(*resp.mutable_domain(), driver_->RollbackLiveMigration(req));
        return resp;
      });
}

absl::StatusOr<cv1::RollbackLiveMigrationAtDestinationResponse>
AgentCore::RollbackLiveMigrationAtDestination(
    const cv1::RollbackLiveMigrationAtDestinationRequest& req) {
  absl::Cleanup fence = [&] { AwaitReportsInFlight("rollback_live_migration_at_destination"); };
  return RunStep<cv1::RollbackLiveMigrationAtDestinationResponse>(
      req.migration_id(), req.instance_uuid(), req.dest_host(),
      v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION_AT_DESTINATION,
      {v1::MIGRATION_STEP_POST_LIVE_MIGRATION_AT_DESTINATION},
      [&]() -> absl::StatusOr<cv1::RollbackLiveMigrationAtDestinationResponse> {
        RETURN_IF_ERROR(driver_->RollbackLiveMigrationAtDestination(req));
        return cv1::RollbackLiveMigrationAtDestinationResponse();
      });
}

}  // namespace livemig::agent
