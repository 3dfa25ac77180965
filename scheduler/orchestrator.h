// The orchestrator: one durable state machine per migration (docs/DESIGN.md § The migration
// flow), driven by the scheduler that holds the migration's lease.
//
//   accepted → (pre-checks, destination choice) → queued → preparing (check on dest, check on
//   src, pre_live_migration) → running → post-migrating (post at source, at destination) →
//   completed; a failure before the domain runs on the destination rolls back (rollback at
//   destination, then at source) to failed, or cancelled after an abort; a failure after it
//   rolls forward (the post steps are retried); `error` only when the VM's location cannot be
//   proven, retried by the reconciler.
//
// Every step's intent is committed before its RPC and its result after (a result and the next
// intent share one transaction). Leases: the dispatcher renews this scheduler's leases and takes
// over migrations whose lease expired (another scheduler died), resuming them from what both
// agents report (Recovery). Thread-safe.
#ifndef LIVEMIG_SCHEDULER_ORCHESTRATOR_H_
#define LIVEMIG_SCHEDULER_ORCHESTRATOR_H_

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/retry.h"
#include "db/stores.h"
#include "proto/scheduler.pb.h"
#include "scheduler/agent_client.h"

namespace livemig::sched {

namespace sv1 = ::livemig::scheduler::v1;

struct OrchestratorOptions {
  std::string scheduler_id;                  // lease owner name
  absl::Duration lease = absl::Seconds(15);  // renewed every lease/3
  absl::Duration service_down_time = absl::Seconds(60);
  absl::Duration dispatch_interval = absl::Milliseconds(250);
  // Agent progress polling: one agent RPC, no database write (the end of a transfer is seen at
  // most this late).
  absl::Duration progress_poll = absl::Milliseconds(100);
  absl::Duration progress_write = absl::Seconds(1);  // at most one progress commit per
  int max_outbound_per_host = 2;
  int max_inbound_per_host = 2;
  int max_total = 20;
  int destination_attempts = 3;  // agent checks on the best candidates, then give up
  // A dry run (CheckMigration) answers within this, its agent calls sharing it; it asks the
  // agents of at most `destination_attempts` candidates, as a migration would.
  absl::Duration dry_run_deadline = absl::Seconds(30);
  // Dry runs running at once, whoever asks (readers may): each asks up to 1 + 3 ×
  // destination_attempts agent calls and may last dry_run_deadline, so without a cap a flood of
  // dry runs fans out to the agents without bound. One more is refused at once with
  // ResourceExhausted naming the cap and its flag (--dry-run-max-concurrent).
  int max_concurrent_dry_runs = 4;
  // The one retry policy of the agent calls (common/retry.h): the steps, the post steps' waits
  // (those repeat until roll_forward_for), the recovery's describes and the dry run's calls
  // (within its share of dry_run_deadline). The agent client itself makes one attempt.
  RetryPolicy retry;
  absl::Duration roll_forward_for = absl::Minutes(10);  // then `error`
  absl::Duration transfer_deadline = absl::Hours(6);    // the scheduler's own hard deadline
  absl::Duration agent_silence = absl::Seconds(90);     // source agent unreachable while running
  // The periodic fold of the metrics (MigrationStore::FoldMetrics): at Start() and then every
  // this long, so that a scrape of /metrics, a pure read, reads only the recent rows. Zero: no
  // fold (a scrape still counts right, reading more rows).
  absl::Duration metrics_fold_interval = absl::Minutes(1);
  // The clock of the local timers: the state machines' retry waits and polls, roll_forward_for,
  // agent_silence, transfer_deadline, the retry of migrations in error, and their events' times.
  // Not the lease renewal and the dispatcher's poll (the lease expires on the database's clock,
  // shared by the replicas), nor the dry run's deadline (handed to gRPC): real time.
  // docs/DESIGN.md § Clocks.
  Clock* clock = Clock::Real();
};

class Orchestrator {
 public:
  Orchestrator(OrchestratorOptions options, db::MigrationStore* migrations, db::HostStore* hosts,
               db::InstanceStore* instances, AgentClientFactory* agents);
  ~Orchestrator();

  // Starts the dispatcher (picks up this scheduler's migrations and expired leases), the lease
  // renewer and the periodic fold of the metrics. Stop() waits for them and for the running
  // state machines to reach a step boundary; migrations left unfinished are resumed by the next
  // owner.
  void Start();
  void Stop();
  // Wakes the dispatcher (a migration was created).
  void Kick();
  // Starts driving a migration just created with this scheduler as its owner at once, without
  // waiting for a dispatcher pass; before Start() or while stopping, only Kick()s. `created` is
  // the row as CreateMigration committed it and `instance` the instance the request validated
  // just before claiming it: the state machine starts from them instead of reading both again.
  void Launch(const db::MigrationRecord& created,
              std::optional<db::InstanceRecord> instance = std::nullopt);

  // Dry run: every check for the given destination (or every candidate), including the agent
  // checks (steps 4-5) on the hosts that pass the database checks, at most
  // options.destination_attempts of them (as a migration), all within options.dry_run_deadline;
  // changes nothing (the probe file is removed again; the agents keep no record). It reads through
  // `hosts` and `instances` when given (the API passes its own stores, so that dry runs use the
  // API's connections, not the control loop's), else through the orchestrator's.
  // At most options.max_concurrent_dry_runs run at once; beyond, ResourceExhausted at once.
  absl::StatusOr<sv1::CheckMigrationResponse> CheckMigration(
      const sv1::CheckMigrationRequest& r, db::HostStore* hosts = nullptr,
      db::InstanceStore* instances = nullptr);

  // The dry runs of this process (for /metrics and tests): running now, the most that ever ran
  // at once, how many were admitted and how many refused by the cap.
  struct DryRunCounts {
    int running = 0;
    int most_running = 0;
    int64_t admitted = 0;
    int64_t refused = 0;
  };
  DryRunCounts DryRuns();

  int RunningStateMachines();

  // Where the domain of migration `m` is now, as the agents of its source and (when it has one)
  // its destination describe it (DescribeInstance, the path the state machine asks by): one
  // entry per host, the source first. Never guessed: Unavailable naming the host whose agent
  // cannot answer (NotFound when the host is unknown).
  struct DomainWhere {
    std::string host;
    bool present = false;  // the hypervisor has the domain (any state)
    bool runs = false;     // running or blocked
    std::string state;     // DomainStateName, or "no domain"
  };
  absl::StatusOr<std::vector<DomainWhere>> DescribeDomainOnHosts(const db::MigrationRecord& m);

  // How many migrations this process has driven to a terminal status, and a wait until that
  // number exceeds `seen` (or `timeout` passes): an evacuation reuses a slot at once.
  int64_t MigrationsEnded();
  void AwaitMigrationsEnded(int64_t seen, absl::Duration timeout);
  const OrchestratorOptions& options() const { return options_; }

 private:
  void DispatchLoop();
  void RenewLoop();
  void FoldLoop();
  void RunMigration(int64_t id, std::optional<db::MigrationRecord> created = std::nullopt,
                    std::optional<db::InstanceRecord> instance = std::nullopt);
  // The state machine; returns when the migration is terminal or no longer ours.
  void Drive(int64_t id);
  bool Stopping() const { return stop_.HasBeenNotified(); }
  // A state machine's wait: `d` on the injected clock, cut short by Stop().
  void SleepUnlessStopping(absl::Duration d);
  // An agent call under options_.retry (RetryCall): the waits on the injected clock, given up
  // when stopping or when one would pass the thread's ScopedAgentDeadline (real time). A dry
  // run's call (`dry_run`) does not retry DeadlineExceeded (RetryPolicy::retry_deadline_exceeded).
  template <typename T>
  absl::StatusOr<T> RetryAgentCall(const std::string& what,
                                   const std::function<absl::StatusOr<T>()>& call,
                                   bool dry_run = false) {
    RetryPolicy policy = options_.retry;
    if (dry_run) policy.retry_deadline_exceeded = false;
    return RetryCall<T>(policy, what, call, [this](absl::Duration d) {
      if (absl::Now() + d >= ScopedAgentDeadline::Current()) return false;
      SleepUnlessStopping(d);
      return !Stopping();
    });
  }
  // CheckMigration once admitted by the cap.
  absl::StatusOr<sv1::CheckMigrationResponse> DryRun(const sv1::CheckMigrationRequest& r,
                                                     db::HostStore* hosts,
                                                     db::InstanceStore* instances);
  void MigrationEnded();

  OrchestratorOptions options_;
  db::MigrationStore* migrations_;
  db::HostStore* hosts_;
  db::InstanceStore* instances_;
  AgentClientFactory* agents_;

  absl::Notification stop_;
  absl::Mutex sleep_mu_;
  bool stopping_ ABSL_GUARDED_BY(sleep_mu_) = false;
  absl::Mutex mu_;
  absl::CondVar kick_;
  bool kicked_ ABSL_GUARDED_BY(mu_) = false;
  std::set<int64_t> running_ ABSL_GUARDED_BY(mu_);
  std::map<int64_t, std::thread> threads_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> finished_ ABSL_GUARDED_BY(mu_);
  std::thread dispatcher_, renewer_, folder_;
  std::atomic<bool> started_{false};
  absl::Mutex dry_mu_;
  DryRunCounts dry_ ABSL_GUARDED_BY(dry_mu_);
  absl::Mutex ended_mu_;
  int64_t ended_ ABSL_GUARDED_BY(ended_mu_) = 0;

  friend class MigrationRun;
};

}  // namespace livemig::sched

#endif  // LIVEMIG_SCHEDULER_ORCHESTRATOR_H_
