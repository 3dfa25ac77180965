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
#ifndef LIVEMIG_COMPUTE_AGENT_CORE_H_
#define LIVEMIG_COMPUTE_AGENT_CORE_H_

#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
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
  };

  std::shared_ptr<Record> Find(const std::string& migration_id);
  std::shared_ptr<Record> FindOrCreate(const std::string& migration_id, const std::string& uuid);

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
  std::vector<std::thread> workers_ ABSL_GUARDED_BY(mu_);
  int running_ ABSL_GUARDED_BY(mu_) = 0;

  absl::Mutex fence_mu_;
  int64_t reports_started_ ABSL_GUARDED_BY(fence_mu_) = 0;
  int64_t reports_ended_ ABSL_GUARDED_BY(fence_mu_) = 0;
};

// "check_can_live_migrate_on_dest" for MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST, etc.
std::string StepName(v1::MigrationStep step);

}  // namespace livemig::agent

#endif  // LIVEMIG_COMPUTE_AGENT_CORE_H_
