// How the scheduler reaches compute agents: one AgentClient per host, from an AgentClientFactory.
//
// GrpcAgentClients talk mutual TLS to the agent's address with a deadline on every call and a
// bounded number of retries for the calls that are idempotent (all step RPCs are, keyed by the
// migration id). LocalAgentClient calls an in-process AgentCore (unit tests and benchmarks).
#ifndef LIVEMIG_SCHEDULER_AGENT_CLIENT_H_
#define LIVEMIG_SCHEDULER_AGENT_CLIENT_H_

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/tls.h"
#include "proto/compute_agent.grpc.pb.h"

namespace livemig::agent {
class AgentCore;
}

namespace livemig::sched {

namespace v1 = ::livemig::v1;
namespace cv1 = ::livemig::compute::v1;

class AgentClient {
 public:
  virtual ~AgentClient() = default;
  virtual absl::StatusOr<cv1::GetHostInfoResponse> GetHostInfo() = 0;
  virtual absl::StatusOr<cv1::DescribeInstanceResponse> DescribeInstance(
      const cv1::DescribeInstanceRequest& r) = 0;
  virtual absl::StatusOr<cv1::CheckCanLiveMigrateOnDestResponse> CheckCanLiveMigrateOnDest(
      const cv1::CheckCanLiveMigrateOnDestRequest& r) = 0;
  virtual absl::StatusOr<cv1::CheckCanLiveMigrateOnSrcResponse> CheckCanLiveMigrateOnSrc(
      const cv1::CheckCanLiveMigrateOnSrcRequest& r) = 0;
  virtual absl::StatusOr<cv1::CheckCanLiveMigrateOnDestCleanupResponse>
  CheckCanLiveMigrateOnDestCleanup(const cv1::CheckCanLiveMigrateOnDestCleanupRequest& r) = 0;
  virtual absl::StatusOr<cv1::PreLiveMigrationResponse> PreLiveMigration(
      const cv1::PreLiveMigrationRequest& r) = 0;
  virtual absl::StatusOr<cv1::LiveMigrationResponse> LiveMigration(
      const cv1::LiveMigrationRequest& r) = 0;
  virtual absl::StatusOr<cv1::MigrationProgressReport> GetMigrationProgress(
      const cv1::GetMigrationProgressRequest& r) = 0;
  virtual absl::StatusOr<cv1::AbortLiveMigrationResponse> AbortLiveMigration(
      const cv1::AbortLiveMigrationRequest& r) = 0;
  virtual absl::StatusOr<cv1::ForceCompleteLiveMigrationResponse> ForceCompleteLiveMigration(
      const cv1::ForceCompleteLiveMigrationRequest& r) = 0;
  virtual absl::StatusOr<cv1::PostLiveMigrationResponse> PostLiveMigration(
      const cv1::PostLiveMigrationRequest& r) = 0;
  virtual absl::StatusOr<cv1::PostLiveMigrationAtDestinationResponse>
  PostLiveMigrationAtDestination(const cv1::PostLiveMigrationAtDestinationRequest& r) = 0;
  virtual absl::StatusOr<cv1::RollbackLiveMigrationResponse> RollbackLiveMigration(
      const cv1::RollbackLiveMigrationRequest& r) = 0;
  virtual absl::StatusOr<cv1::RollbackLiveMigrationAtDestinationResponse>
  RollbackLiveMigrationAtDestination(const cv1::RollbackLiveMigrationAtDestinationRequest& r) = 0;
};

class AgentClientFactory {
 public:
  virtual ~AgentClientFactory() = default;
  // The client for the agent of `hostname`, reachable at `address` (from its host report).
  virtual std::shared_ptr<AgentClient> ForHost(const std::string& hostname,
                                               const std::string& address) = 0;
};

class GrpcAgentClientFactory : public AgentClientFactory {
 public:
  struct Options {
    TlsFiles tls;
    absl::Duration deadline = absl::Seconds(30);  // per call
    int retries = 2;                              // extra attempts on Unavailable
  };
  explicit GrpcAgentClientFactory(Options options) : options_(std::move(options)) {}
  std::shared_ptr<AgentClient> ForHost(const std::string& hostname,
                                       const std::string& address) override;

 private:
  Options options_;
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<AgentClient>> clients_ ABSL_GUARDED_BY(mu_);
};

// TESTS ONLY (scheduler --test-replay-agent-steps=N): wraps another factory's clients so that
// every step RPC (the checks, pre_live_migration, live_migration, abort, force-complete, the post
// and rollback steps; not the reads DescribeInstance, GetMigrationProgress, GetHostInfo) is
// delivered `times` times in a row, as a network that duplicates requests would. The answers are
// compared with the first one: OK answers by their serialized protos, errors by status code and
// message; a transfer report's time-varying fields are ignored (progress, current downtime,
// monitor_attached, finished_at; its state may move on from RUNNING, and `attached` of a repeated
// LiveMigration may turn true, as the proto documents). The last answer is returned (the earlier
// ones were "lost"). Logs a warning per different answer and, after each step, the running
// summary "replay: <steps> steps delivered <times> times, <different> different answers".
class ReplayingAgentClientFactory : public AgentClientFactory {
 public:
  struct Stats {
    int64_t steps = 0;      // step RPCs replayed
    int64_t different = 0;  // deliveries whose answer differed from the first
  };
  ReplayingAgentClientFactory(AgentClientFactory* inner, int times);
  std::shared_ptr<AgentClient> ForHost(const std::string& hostname,
                                       const std::string& address) override;
  Stats stats();
  int times() const { return times_; }

  // Shared with the clients.
  struct Counters {
    absl::Mutex mu;
    Stats stats ABSL_GUARDED_BY(mu);
  };

 private:
  AgentClientFactory* inner_;
  const int times_;
  std::shared_ptr<Counters> counters_ = std::make_shared<Counters>();
};

// Calls AgentCores in this process, by hostname (tests, benchmarks).
class LocalAgentClientFactory : public AgentClientFactory {
 public:
  void Add(const std::string& hostname, agent::AgentCore* core);
  std::shared_ptr<AgentClient> ForHost(const std::string& hostname,
                                       const std::string& address) override;

 private:
  absl::Mutex mu_;
  std::map<std::string, agent::AgentCore*> cores_ ABSL_GUARDED_BY(mu_);
};

}  // namespace livemig::sched

#endif  // LIVEMIG_SCHEDULER_AGENT_CLIENT_H_
