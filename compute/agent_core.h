// AgentCore: the compute agent's logic, under its thin gRPC handlers (agent_service.h).
//
// Every step is keyed by its migration id: a step that succeeded is recorded with its answer,
// and repeating it returns that answer without doing anything again; a step that conflicts with
// what this agent already did for the migration (e.g. a rollback after the post step) is
// FailedPrecondition; a migration the agent has no trace of (neither in memory nor on the
// hypervisor) is NotFound for the calls that need one. Steps of one migration run one at a time;
// different migrations run in parallel. The transfer runs in a worker thread (at most
// `max_concurrent_migrations` at once) and its progress is readable while it runs.
//
// A caller that cancels its RPC does not cancel the step: the step finishes and is recorded, so
// the caller's retry gets its answer. The agent keeps no state on disk: after a restart it
// learns in-flight transfers from the hypervisor (a repeated LiveMigration attaches to them).
//
// Memory: a long-running agent does not grow with the migrations it served. A migration's record
// (its recorded answers and its transfer's last report) is kept while the migration goes on here,
// and once it ended here — its post or rollback step on this side succeeded (on the source:
// post_live_migration or rollback_live_migration, and its transfer no longer runs; on the
// destination: post_live_migration_at_destination, rollback_live_migration_at_destination or
// check_can_live_migrate_on_dest_cleanup), or only checks ran here (they change nothing on the
// host, and a refused check or another destination chosen is followed by no end step) — for
// Options::finished_keep (1 h) and only for the Options::max_finished (1000) most recently
// ended, whichever is smaller (common/retention.h, the same rule as the drivers' finished
// transfers). A step that changes something after checks (pre_live_migration, live_migration)
// takes the record back until its end. Within that bound a replayed step gets the answer it got
// the first time (or its conflict); after it, the agent knows the migration only as a restarted
// agent does, from the hypervisor (a check asked again runs again). A record left with no
// recorded step (its first step failed) is dropped at once. Each transfer's worker thread is
// joined once the transfer ended: by the next call into the agent (any RPC, including the host
// reporter's), so no more threads exist than transfers running plus those that ended since the
// last call, and none outlives this object (the destructor joins them all).
#ifndef LIVEMIG_COMPUTE_AGENT_CORE_H_
#define LIVEMIG_COMPUTE_AGENT_CORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "common/retention.h"
#include "common/step_name.h"
#include "driver/compute_driver.h"
#include "proto/compute_agent.pb.h"

namespace livemig::agent {

namespace v1 = ::livemig::v1;
namespace cv1 = ::livemig::compute::v1;

class AgentCore {
 public:
  struct Options {
    std::string hostname;
    int max_concurrent_migrations = 4;  // transfers running at once from this host
    // LiveMigration returns once the hypervisor shows the job, or after this long.
    absl::Duration start_wait = absl::Seconds(15);
    // How long a post or rollback step waits for a host report in flight (see ReportStarted);
    // above the reporter's RPC deadline (5 s).
    absl::Duration report_fence_timeout = absl::Seconds(6);
    // Records of migrations that ended here are kept this long, and at most this many (see the
    // file comment).
    absl::Duration finished_keep = absl::Hours(1);
    size_t max_finished = 1000;
    // When a migration ended (for that window), and the report fence's timer.
    Clock* clock = Clock::Real();
  };

  AgentCore(Options options, driver::ComputeDriver* driver);
  // Waits for the transfer workers to end.
  ~AgentCore();

  absl::StatusOr<cv1::GetHostInfoResponse> GetHostInfo();
  absl::StatusOr<cv1::ListDomainsResponse> ListDomains();
  absl::StatusOr<cv1::DescribeInstanceResponse> DescribeInstance(
      const cv1::DescribeInstanceRequest& req);
  absl::StatusOr<cv1::PauseInstanceResponse> PauseInstance(const cv1::PauseInstanceRequest& req);
  absl::StatusOr<cv1::CheckCanLiveMigrateOnDestResponse> CheckCanLiveMigrateOnDest(
      const cv1::CheckCanLiveMigrateOnDestRequest& req);
  absl::StatusOr<cv1::CheckCanLiveMigrateOnSrcResponse> CheckCanLiveMigrateOnSrc(
      const cv1::CheckCanLiveMigrateOnSrcRequest& req);
  absl::StatusOr<cv1::CheckCanLiveMigrateOnDestCleanupResponse> CheckCanLiveMigrateOnDestCleanup(
      const cv1::CheckCanLiveMigrateOnDestCleanupRequest& req);
  absl::StatusOr<cv1::PreLiveMigrationResponse> PreLiveMigration(
      const cv1::PreLiveMigrationRequest& req);
  // Starts the transfer in a worker (or attaches to it) and returns at once.
  absl::StatusOr<cv1::LiveMigrationResponse> LiveMigration(const cv1::LiveMigrationRequest& req);
  absl::StatusOr<cv1::MigrationProgressReport> GetMigrationProgress(
      const cv1::GetMigrationProgressRequest& req);
  absl::StatusOr<cv1::AbortLiveMigrationResponse> AbortLiveMigration(
      const cv1::AbortLiveMigrationRequest& req);
  absl::StatusOr<cv1::ForceCompleteLiveMigrationResponse> ForceCompleteLiveMigration(
      const cv1::ForceCompleteLiveMigrationRequest& req);
  absl::StatusOr<cv1::PostLiveMigrationResponse> PostLiveMigration(
      const cv1::PostLiveMigrationRequest& req);
  absl::StatusOr<cv1::PostLiveMigrationAtDestinationResponse> PostLiveMigrationAtDestination(
      const cv1::PostLiveMigrationAtDestinationRequest& req);
  absl::StatusOr<cv1::RollbackLiveMigrationResponse> RollbackLiveMigration(
      const cv1::RollbackLiveMigrationRequest& req);
  absl::StatusOr<cv1::RollbackLiveMigrationAtDestinationResponse>
  RollbackLiveMigrationAtDestination(const cv1::RollbackLiveMigrationAtDestinationRequest& req);

  // Host reports and the steps that end a migration are ordered. The reporter brackets each
  // report, from reading the inventory until the registry answered (or failed), with
  // ReportStarted and ReportEnded; the post and rollback steps, once done, wait (at most
  // options.report_fence_timeout) until the reports that started before them have ended. So a
  // report read before a migration ended is applied before the scheduler commits that end
  // (which follows these steps) and cannot overwrite it afterwards: it would mark the instance
  // missing on its new host, or move it back to the host it left.
  void ReportStarted();
  void ReportEnded();

  // Transfers running now.
  int RunningTransfers();
  // What this agent holds now (tests, monitoring): the migrations it has a record of, and the
  // transfer worker threads not yet joined (running, or ended since the last call).
  size_t RecordCount();
  size_t WorkerThreadCount();
  driver::ComputeDriver* driver() { return driver_; }
  const Options& options() const { return options_; }

 private:
  struct Record {
    absl::Mutex step_mu;  // one step of this migration at a time
    std::string instance_uuid;
    std::map<int, std::string> done;  // MigrationStep → serialized answer
    // The transfer (source side).
    bool transfer_started = false;
    bool transfer_running = false;
    bool transfer_seen = false;  // the hypervisor reported the job (or it already ended)
    cv1::MigrationProgressReport latest;
    // Guarded by AgentCore::mu_: the migration ended here (see the file comment), and the record
    // was handed to finished_ (ended and no transfer running).
    bool ended = false;
    bool retained = false;
  };

  std::shared_ptr<Record> Find(const std::string& migration_id);
  std::shared_ptr<Record> FindOrCreate(const std::string& migration_id, const std::string& uuid);
  // Joins the workers whose transfer ended and forgets the records past their retention. Called
  // by every call into the agent, never with mu_ held.
  void Reap() ABSL_LOCKS_EXCLUDED(mu_);
  // Hands `rec` to finished_ once it ended and its transfer no longer runs (see the file
  // comment); a record noted before whose migration went on is taken back (`ended` false).
  void UpdateRetentionLocked(const std::string& migration_id, Record& rec)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Drops `rec` if it holds nothing (no recorded step, no transfer) and no other call holds it.
  // The caller holds rec->step_mu.
  void DropIfEmpty(const std::string& migration_id, const std::shared_ptr<Record>& rec)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Runs `fn` once per migration and step: a recorded answer is returned again; `conflicts`
  // lists steps after which this one may no longer run.
  // `role_host` is the request's host for this agent's role (dest_host on the destination,
  // source_host on the source): when given it must be this agent's hostname.
  template <typename Resp>
  absl::StatusOr<Resp> RunStep(const std::string& migration_id, const std::string& uuid,
                               const std::string& role_host, v1::MigrationStep step,
                               std::vector<v1::MigrationStep> conflicts,
                               const std::function<absl::StatusOr<Resp>()>& fn);
  absl::Status CheckRoleHost(const std::string& role_host, const char* role) const;
  // Waits until every report started before this call has ended (see ReportStarted).
  void AwaitReportsInFlight(const char* step);

  const Options options_;
  driver::ComputeDriver* const driver_;

  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Record>> records_ ABSL_GUARDED_BY(mu_);
  FinishedRetention<std::string> finished_ ABSL_GUARDED_BY(mu_);  // the ended ones of records_
  // Transfer workers by a sequence number; a worker moves its own handle to exited_ as the last
  // thing it does under mu_, and Reap joins it.
  std::map<uint64_t, std::thread> workers_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> exited_ ABSL_GUARDED_BY(mu_);
  uint64_t next_worker_ ABSL_GUARDED_BY(mu_) = 0;
  int running_ ABSL_GUARDED_BY(mu_) = 0;

  absl::Mutex fence_mu_;
  int64_t reports_started_ ABSL_GUARDED_BY(fence_mu_) = 0;
  int64_t reports_ended_ ABSL_GUARDED_BY(fence_mu_) = 0;
};

// "check_can_live_migrate_on_dest" for MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST, etc.
using ::livemig::StepName;

}  // namespace livemig::agent

#endif  // LIVEMIG_COMPUTE_AGENT_CORE_H_
