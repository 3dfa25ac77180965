// A whole cloud in one process for the benchmarks, with every seam real except the hypervisor:
//
//   - PostgreSQL 15 (testing::PgServer: deploy/pgctl.sh, fsync=off, synchronous_commit=off,
//     full_page_writes=off, Unix socket), the PgStores over a PgPool;
//   - one compute agent per fake host: AgentCore over a FakeDriver (state directory on tmpfs),
//     served by its own gRPC server on 127.0.0.1 with mutual TLS (certificates from
//     deploy/pki.sh) and the agent's allow-list;
//   - the scheduler: Orchestrator and ApiCore with GrpcAgentClientFactory (mutual TLS to the
//     agents), and the SchedulerApi gRPC service on 127.0.0.1 that the benchmark calls.
//
// Between the scheduler and its seams sit counting decorators: every store call (= one database
// transaction) and every agent RPC is counted by name, and the migration store announces each
// terminal transition as soon as it is committed (so that the benchmark can observe completion
// without polling the database, which would add transactions to the count).
#ifndef LIVEMIG_BENCH_CLOUD_H_
#define LIVEMIG_BENCH_CLOUD_H_

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "compute/agent_core.h"
#include "compute/agent_service.h"
#include "db/pg_pool.h"
#include "db/pg_stores.h"
#include "driver/fake_driver.h"
#include "grpcpp/grpcpp.h"
#include "proto/scheduler.grpc.pb.h"
#include "scheduler/agent_client.h"
#include "scheduler/api_core.h"
#include "scheduler/auth.h"
#include "scheduler/orchestrator.h"
#include "scheduler/services.h"

namespace livemig::bench {

namespace sv1 = ::livemig::scheduler::v1;

// Calls counted by name, with the time spent in them; thread-safe.
struct Tally {
  int64_t calls = 0;
  absl::Duration time;
};
using Tallies = std::map<std::string, Tally>;
class Counters {
 public:
  void Add(const std::string& name, absl::Duration time, int64_t calls = 1);
  Tallies Snapshot() const;
  // after - before, by name (names without calls left out).
  static Tallies Diff(const Tallies& after, const Tallies& before);
  static Tally Sum(const Tallies& m, const std::function<bool(const std::string&)>& pred = {});

 private:
  mutable absl::Mutex mu_;
  Tallies m_ ABSL_GUARDED_BY(mu_);
};

// Times one call into a Counters on destruction.
class Timed {
 public:
  Timed(Counters* c, const char* name, int64_t calls = 1);
  ~Timed();

 private:
  Counters* c_;
  const char* name_;
  int64_t calls_;
  absl::Time start_;
};

// Whether a store method writes (its transaction changes rows) or only reads.
bool IsWriteCall(const std::string& name);

// The store decorators. Names: "migrations.ApplyTransition", "hosts.GetHost", ...
class CountingMigrationStore;
class CountingHostStore;
class CountingInstanceStore;

// Creates the PKI once per benchmark run (deploy/pki.sh): CA, "scheduler", and each host.
absl::Status MakePki(const std::string& dir, const std::vector<std::string>& names);

struct CloudOptions {
  std::string conninfo;  // an empty database (the schema is applied)
  std::string pki;       // from MakePki, with a certificate for each host
  std::vector<std::string> hosts;
  // Fake hypervisor state directories under `state_root` (tmpfs): host i uses directory
  // i % partitions. Migrations only work between hosts of one directory.
  std::string state_root = "/dev/shm";
  int partitions = 1;
  sched::OrchestratorOptions orch;
  int db_pool = 16;              // the scheduler's --db-pool default
  int agent_max_concurrent = 4;  // AgentCore::Options::max_concurrent_migrations
  absl::Duration fake_poll = absl::Milliseconds(20);  // FakeDriver::Options::poll_interval
  // Every agent reports its host this often, as the agents' host reporter does (the scheduler's
  // --report-interval default); hosts are `down` after orch.service_down_time without one.
  absl::Duration report_interval = absl::Seconds(10);
};

// Turns the orchestrator's and the agents' concurrency limits off (1 << 20 each), so that only
// the benchmark's own load (or an evacuation's max_parallel) bounds the migrations in flight.
void LiftLimits(CloudOptions& options);

class BenchCloud {
 public:
  static absl::StatusOr<std::unique_ptr<BenchCloud>> Create(CloudOptions options);
  // Create, after the set-up the benchmarks share: a PKI (MakePki) for "scheduler" and every host
  // of options.hosts in a new temporary directory, removed with the cloud, and a fresh database
  // (NewDatabase); they replace options.pki and options.conninfo. Errors name the stage ("PKI: ",
  // "database: ", "cloud: ").
  static absl::StatusOr<std::unique_ptr<BenchCloud>> CreateWithNewPkiAndDatabase(
      CloudOptions options);
  ~BenchCloud();

  // A running fake guest on `host`.
  absl::Status CreateDomain(const std::string& host, const std::string& uuid,
                            const std::string& name, uint64_t memory_mib = 512);
  // Every agent's inventory applied to the database, as the host reporter would (a background
  // thread also does it every report_interval).
  absl::Status ReportAll();
  // Holds the background reports back (a report read before a migration completes and applied
  // after it can move the instance back to its source: see README.md).
  void PauseReports() ABSL_EXCLUSIVE_LOCK_FUNCTION(report_mu_) { report_mu_.Lock(); }
  void ResumeReports() ABSL_UNLOCK_FUNCTION(report_mu_) { report_mu_.Unlock(); }
  // Removes the fake hypervisors' records of finished transfers. FakeDriver keeps every transfer
  // in its state file forever and reads and rewrites the whole file on every call, so without
  // this its cost per call grows with the number of migrations done. Call with no migration in
  // flight; returns how many records it removed.
  absl::StatusOr<int> PruneFakeTransfers();
  // Where the database says each instance is (uuid -> host), read without the counters.
  absl::StatusOr<std::map<std::string, std::string>> DbHosts();

  // The scheduler API, over gRPC.
  absl::StatusOr<sv1::LiveMigrateResponse> Migrate(const std::string& uuid,
                                                   const std::string& dest);
  absl::StatusOr<sv1::Migration> Get(const std::string& id, bool include_events = false);
  // Waits until the migration (by number) has reached a terminal status in a committed
  // transaction; returns it, or nullopt after `timeout`.
  std::optional<MigrationStatus> WaitTerminal(int64_t number, absl::Duration timeout);

  // One write transaction through a pool like the stores' (BEGIN; INSERT one row; COMMIT).
  absl::Duration ProbeCommit();
  absl::Duration ProbeCommit(db::PgPool* pool);
  // One agent RPC round trip over the scheduler's own channel to `host` (mutual TLS, the
  // allow-list and the handler run; the request is refused before the hypervisor is touched).
  absl::Duration ProbeRpc(const std::string& host);

  db::PgPool& pool() { return *pool_; }
  const std::string& conninfo() const { return options_.conninfo; }
  Counters& db_calls() { return db_calls_; }
  Counters& rpcs() { return rpcs_; }
  sched::Orchestrator& orchestrator() { return *orch_; }
  sched::ApiCore& api_core() { return *api_; }
  db::HostStore& hosts();
  db::MigrationStore& migrations();
  db::InstanceStore& instances();
  driver::FakeHypervisor& hypervisor(const std::string& host);
  const CloudOptions& options() const { return options_; }

 private:
  explicit BenchCloud(CloudOptions o);
  absl::Status Start();
  absl::Status ReportAllLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(report_mu_);

  CloudOptions options_;
  std::string owned_pki_;  // removed by the destructor (CreateWithNewPkiAndDatabase)
  std::vector<std::string> state_dirs_;
  Counters db_calls_, rpcs_;
  std::unique_ptr<db::PgPool> pool_;
  std::unique_ptr<db::PgStores> stores_;
  std::unique_ptr<CountingMigrationStore> migrations_;
  std::unique_ptr<CountingHostStore> hosts_;
  std::unique_ptr<CountingInstanceStore> instances_;
  struct Agent {
    std::unique_ptr<driver::FakeDriver> driver;
    std::unique_ptr<agent::AgentCore> core;
    std::unique_ptr<agent::AllowList> allow;
    std::unique_ptr<agent::AgentService> service;
    std::unique_ptr<grpc::Server> server;
    std::string address;
  };
  std::map<std::string, Agent> agents_;
  std::unique_ptr<sched::GrpcAgentClientFactory> grpc_agents_;
  std::unique_ptr<sched::AgentClientFactory> counting_agents_;
  std::unique_ptr<sched::Orchestrator> orch_;
  std::unique_ptr<sched::ApiCore> api_;
  std::unique_ptr<sched::TokenStore> tokens_;
  std::unique_ptr<sched::SchedulerApiService> api_service_;
  std::unique_ptr<grpc::Server> api_server_;
  std::unique_ptr<sv1::SchedulerApi::Stub> api_stub_;
  absl::Mutex report_mu_;
  int64_t seq_ ABSL_GUARDED_BY(report_mu_) = 1;
  absl::Notification stop_reports_;
  std::thread reporter_;
};

// Database-side counters of the cloud's database, read over a connection of their own.
struct DbCounters {
  int64_t xact_commit = 0;  // pg_stat_database (flushed by each backend at most every ~1-10 s)
  int64_t next_xid = 0;     // pg_snapshot_xmax(pg_current_snapshot()): write transactions
  int64_t events = 0;       // rows in migration_events
};
absl::StatusOr<DbCounters> ReadDbCounters(const std::string& conninfo);
// How many transactions ReadDbCounters itself commits (to subtract from xact_commit deltas).
constexpr int kDbCounterReadTransactions = 3;

// A fresh database on the benchmark's PostgreSQL server.
absl::StatusOr<std::string> NewDatabase();
// The server's directory (data/, server.log).
std::string DatabaseServerDir();
// Stops and removes the benchmark's PostgreSQL server (call once at the end).
void StopDatabaseServer();
// CPU time used so far, in seconds: by this process (scheduler, agents, fake hypervisors and the
// benchmark itself), by the benchmark's PostgreSQL server (postmaster and its live children),
// and by the whole machine (busy and total, from /proc/stat: everyone's, all cores).
struct CpuTimes {
  double self = 0, pg = 0, machine_busy = 0, machine_total = 0;
};
CpuTimes ReadCpu();
// "CPU per migration: 12.3 ms in this process, 4.5 ms in PostgreSQL, 1.0 ms elsewhere".
std::string CpuLine(const CpuTimes& before, const CpuTimes& after, double per, const char* unit);

// The server's settings that matter for commit latency ("fsync=off synchronous_commit=off ...").
std::string PgSettingsLine(const std::string& conninfo);

}  // namespace livemig::bench

#endif  // LIVEMIG_BENCH_CLOUD_H_
