// How the scheduler reaches compute agents: one AgentClient per host, from an AgentClientFactory.
//
// GrpcAgentClients talk mutual TLS to the agent's address with a deadline on every call, one
// attempt per call: the retries are the orchestrator's (common/retry.h), in one layer.
// LocalAgentClient calls an in-process AgentCore (unit tests and benchmarks).
#ifndef LIVEMIG_SCHEDULER_AGENT_CLIENT_H_
#define LIVEMIG_SCHEDULER_AGENT_CLIENT_H_

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/tls.h"
#include "proto/compute_agent.grpc.pb.h"

namespace livemig::agent {
class AgentCore;
}

namespace livemig::sched {

namespace v1 = ::livemig::v1;
namespace cv1 = ::livemig::compute::v1;

// The agent RPCs that take a request, listed once: X(Name, Request, Response, step). AgentClient's
// methods and every client and decorator of it (gRPC, local, unreachable and replay in
// agent_client.cc; counting in bench/cloud.cc) are generated from this list, so an RPC added here
// reaches all of them.
// `step`: a step of the flow, keyed by the migration id (the checks, pre_live_migration,
// live_migration, abort, force-complete, the post and rollback steps); the replay decorator
// delivers exactly these more than once. false: a read (DescribeInstance, GetMigrationProgress).
// Not "changes state": CheckCanLiveMigrateOnSrc is read-only on the host yet a replayed step.
// GetHostInfo, a read without a request, is declared on its own. The types use the cv1 alias
// above: expand the list where `cv1` names ::livemig::compute::v1.
#define LIVEMIG_AGENT_RPCS(X)                                                                      \
  X(DescribeInstance, cv1::DescribeInstanceRequest, cv1::DescribeInstanceResponse, /*step=*/false) \
  X(PauseInstance, cv1::PauseInstanceRequest, cv1::PauseInstanceResponse, /*step=*/false)          \
  X(CheckCanLiveMigrateOnDest, cv1::CheckCanLiveMigrateOnDestRequest,                              \
    cv1::CheckCanLiveMigrateOnDestResponse, /*step=*/true)                                         \
  X(CheckCanLiveMigrateOnSrc, cv1::CheckCanLiveMigrateOnSrcRequest,                                \
    cv1::CheckCanLiveMigrateOnSrcResponse, /*step=*/true)                                          \
  X(CheckCanLiveMigrateOnDestCleanup, cv1::CheckCanLiveMigrateOnDestCleanupRequest,                \
    cv1::CheckCanLiveMigrateOnDestCleanupResponse, /*step=*/true)                                  \
  X(PreLiveMigration, cv1::PreLiveMigrationRequest, cv1::PreLiveMigrationResponse, /*step=*/true)  \
  X(LiveMigration, cv1::LiveMigrationRequest, cv1::LiveMigrationResponse, /*step=*/true)           \
  X(GetMigrationProgress, cv1::GetMigrationProgressRequest, cv1::MigrationProgressReport,          \
    /*step=*/false)                                                                                \
  X(AbortLiveMigration, cv1::AbortLiveMigrationRequest, cv1::AbortLiveMigrationResponse,           \
    /*step=*/true)                                                                                 \
  X(ForceCompleteLiveMigration, cv1::ForceCompleteLiveMigrationRequest,                            \
    cv1::ForceCompleteLiveMigrationResponse, /*step=*/true)                                        \
  X(PostLiveMigration, cv1::PostLiveMigrationRequest, cv1::PostLiveMigrationResponse,              \
    /*step=*/true)                                                                                 \
  X(PostLiveMigrationAtDestination, cv1::PostLiveMigrationAtDestinationRequest,                    \
    cv1::PostLiveMigrationAtDestinationResponse, /*step=*/true)                                    \
  X(RollbackLiveMigration, cv1::RollbackLiveMigrationRequest, cv1::RollbackLiveMigrationResponse,  \
    /*step=*/true)                                                                                 \
  X(RollbackLiveMigrationAtDestination, cv1::RollbackLiveMigrationAtDestinationRequest,            \
    cv1::RollbackLiveMigrationAtDestinationResponse, /*step=*/true)

class AgentClient {
 public:
  virtual ~AgentClient() = default;
  virtual absl::StatusOr<cv1::GetHostInfoResponse> GetHostInfo() = 0;
  // absl::StatusOr<Response> Name(const Request& r), for every RPC of LIVEMIG_AGENT_RPCS.
#define LIVEMIG_AGENT_RPC_DECLARE(Name, Req, Resp, step) \
  virtual absl::StatusOr<Resp> Name(const Req& r) = 0;
  LIVEMIG_AGENT_RPCS(LIVEMIG_AGENT_RPC_DECLARE)
#undef LIVEMIG_AGENT_RPC_DECLARE
};

// A deadline for the agent calls the current thread makes while this object lives (nested: the
// earliest wins). A gRPC agent call then ends by it (DEADLINE_EXCEEDED) when it comes before the
// call's own deadline (GrpcAgentClientFactory::Options::deadline), and is not retried past it.
// The dry run (Orchestrator::CheckMigration) shares its overall deadline among its calls so.
class ScopedAgentDeadline {
 public:
  explicit ScopedAgentDeadline(absl::Time deadline);
  ~ScopedAgentDeadline();
  ScopedAgentDeadline(const ScopedAgentDeadline&) = delete;
  ScopedAgentDeadline& operator=(const ScopedAgentDeadline&) = delete;
  // The current thread's earliest deadline; absl::InfiniteFuture() outside every scope.
  static absl::Time Current();

 private:
  const absl::Time previous_;
};

class AgentClientFactory {
 public:
  virtual ~AgentClientFactory() = default;
  // The client for the agent of `hostname`, reachable at `address` (from its host report).
  virtual std::shared_ptr<AgentClient> ForHost(const std::string& hostname,
                                               const std::string& address) = 0;
};

class GrpcAgentClient;  // agent_client.cc

// One cached client (a gRPC channel) per (host, address), all over one credentials object: one
// certificate watcher (and its thread) for the scheduler, however many agents it talks to, still
// picking up certificates replaced on disk. A channel unused (no ForHost, no call) for
// Options::channel_idle (10 min) is dropped from the cache, and beyond Options::max_channels
// (1000) the least recently used is: so hosts that left, and agents that moved to another
// address, do not hold a channel for ever. A caller that still holds a dropped client keeps using
// it (its channel closes when the last holder lets go); the next ForHost makes a new one.
class GrpcAgentClientFactory : public AgentClientFactory {
 public:
  struct Options {
    TlsFiles tls;
    absl::Duration deadline = absl::Seconds(30);  // per call
    absl::Duration channel_idle = absl::Minutes(10);
    size_t max_channels = 1000;
    Clock* clock = Clock::Real();  // for channel_idle
  };
  explicit GrpcAgentClientFactory(Options options);
  ~GrpcAgentClientFactory() override;
  std::shared_ptr<AgentClient> ForHost(const std::string& hostname,
                                       const std::string& address) override;

  // Tests and monitoring: the channels cached now, and whether one for (hostname, address) is.
  size_t CachedChannels();
  bool IsCached(const std::string& hostname, const std::string& address);

 private:
  // Drops the clients unused for channel_idle, then the least recently used beyond
  // max_channels.
  void EvictLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Options options_;
  absl::Mutex mu_;
  // Made once (on first use; again only if that failed), shared by every channel.
  std::shared_ptr<grpc::ChannelCredentials> creds_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::shared_ptr<GrpcAgentClient>> clients_ ABSL_GUARDED_BY(mu_);
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
