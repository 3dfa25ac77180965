// Size: the benchmark's whole cloud: call counters, store and agent-client decorators (~230
// lines), PKI, database and CPU probes, and BenchCloud; the decorators could be a file of their
// own.
#include "bench/cloud.h"

#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/tls.h"
#include "db/schema.h"
#include "scheduler/convert.h"
#include "testing/pg_server.h"
#include "testing/run_command.h"

namespace livemig::bench {

// ---- counters -----------------------------------------------------------------------------

void Counters::Add(const std::string& name, absl::Duration time, int64_t calls) {
  absl::MutexLock l(&mu_);
  Tally& t = m_[name];
  t.calls += calls;
  t.time += time;
}

Tallies Counters::Snapshot() const {
  absl::MutexLock l(&mu_);
  return m_;
}

Tallies Counters::Diff(const Tallies& after, const Tallies& before) {
  Tallies out;
  for (const auto& [k, v] : after) {
    auto it = before.find(k);
    Tally d = v;
    if (it != before.end()) {
      d.calls -= it->second.calls;
      d.time -= it->second.time;
    }
    if (d.calls != 0) out[k] = d;
  }
  return out;
}

Tally Counters::Sum(const Tallies& m, const std::function<bool(const std::string&)>& pred) {
  Tally s;
  for (const auto& [k, v] : m) {
    if (pred && !pred(k)) continue;
    s.calls += v.calls;
    s.time += v.time;
  }
  return s;
}

Timed::Timed(Counters* c, const char* name, int64_t calls)
    : c_(c), name_(name), calls_(calls), start_(absl::Now()) {}
Timed::~Timed() { c_->Add(name_, absl::Now() - start_, calls_); }

bool IsWriteCall(const std::string& name) {
  static const char* kWrites[] = {"migrations.CreateMigration",
                                  "migrations.ApplyTransition",
                                  "migrations.RecordStep",
                                  "migrations.AppendEvent",
                                  "migrations.UpdateProgress",
                                  "migrations.AcquireLease",
                                  "migrations.RenewLeases",
                                  "migrations.RequestAbort",
                                  "migrations.RequestForceComplete",
                                  "migrations.PurgeFinished",
                                  "migrations.FoldMetrics",
                                  "hosts.ApplyReport",
                                  "hosts.SetHostEnabled",
                                  "instances.CompareAndSetTaskState"};
  for (const char* w : kWrites) {
    if (name == w) return true;
  }
  return false;
}

// ---- store decorators ---------------------------------------------------------------------

class CountingMigrationStore : public db::MigrationStore {
 public:
  CountingMigrationStore(db::MigrationStore* inner, Counters* c) : in_(inner), c_(c) {}

  absl::StatusOr<db::CreateMigrationResult> CreateMigration(const db::NewMigration& m) override {
    Timed timed(c_, "migrations.CreateMigration");
    return in_->CreateMigration(m);
  }
  absl::StatusOr<db::MigrationRecord> GetMigration(int64_t id) override {
    Timed timed(c_, "migrations.GetMigration");
    return in_->GetMigration(id);
  }
  absl::StatusOr<db::MigrationRecord> GetMigrationByUuid(const std::string& uuid) override {
    Timed timed(c_, "migrations.GetMigrationByUuid");
    return in_->GetMigrationByUuid(uuid);
  }
  absl::StatusOr<db::MigrationRecord> FindByRequestId(const std::string& request_id) override {
    Timed timed(c_, "migrations.FindByRequestId");
    return in_->FindByRequestId(request_id);
  }
  absl::StatusOr<db::MigrationPage> ListMigrations(const db::MigrationFilter& f) override {
    Timed timed(c_, "migrations.ListMigrations");
    return in_->ListMigrations(f);
  }
  absl::StatusOr<std::vector<db::MigrationRecord>> ListActiveMigrations() override {
    Timed timed(c_, "migrations.ListActiveMigrations");
    return in_->ListActiveMigrations();
  }
  absl::StatusOr<db::MigrationRecord> ApplyTransition(const db::Transition& t) override {
    Timed timed(c_, "migrations.ApplyTransition");
    auto r = in_->ApplyTransition(t);
    if (r.ok() && IsTerminal(t.to)) {
      absl::MutexLock l(&mu_);
      terminal_[t.migration_id] = t.to;
    }
    return r;
  }
  absl::Status RecordStep(int64_t id, const std::string& owner, MigrationStatus status,
                          v1::MigrationStep step, const std::vector<db::MigrationEvent>& events,
                          const std::optional<std::string>& dest_host,
                          const std::optional<int64_t>& memory_claim_mib) override {
    Timed timed(c_, "migrations.RecordStep");
    return in_->RecordStep(id, owner, status, step, events, dest_host, memory_claim_mib);
  }
  absl::Status AppendEvent(const db::MigrationEvent& event) override {
    Timed timed(c_, "migrations.AppendEvent");
    return in_->AppendEvent(event);
  }
  absl::StatusOr<std::vector<db::MigrationEvent>> ListEvents(int64_t migration_id) override {
    Timed timed(c_, "migrations.ListEvents");
    return in_->ListEvents(migration_id);
  }
  absl::Status UpdateProgress(int64_t id, const std::string& owner,
                              const db::MigrationProgress& progress) override {
    Timed timed(c_, "migrations.UpdateProgress");
    return in_->UpdateProgress(id, owner, progress);
  }
  absl::StatusOr<bool> AcquireLease(int64_t id, const std::string& owner,
                                    absl::Duration ttl) override {
    Timed timed(c_, "migrations.AcquireLease");
    return in_->AcquireLease(id, owner, ttl);
  }
  absl::StatusOr<int> RenewLeases(const std::string& owner, absl::Duration ttl) override {
    Timed timed(c_, "migrations.RenewLeases");
    return in_->RenewLeases(owner, ttl);
  }
  absl::StatusOr<db::SlotUse> GetSlotUse(int64_t id, const std::string& source,
                                         const std::string& dest) override {
    Timed timed(c_, "migrations.GetSlotUse");
    return in_->GetSlotUse(id, source, dest);
  }
  absl::StatusOr<std::vector<db::MigrationRecord>> ListOrphaned() override {
    Timed timed(c_, "migrations.ListOrphaned");
    return in_->ListOrphaned();
  }
  absl::StatusOr<db::MigrationRecord> RequestAbort(int64_t id, const std::string& by,
                                                   const std::string& reason) override {
    Timed timed(c_, "migrations.RequestAbort");
    return in_->RequestAbort(id, by, reason);
  }
  absl::StatusOr<db::MigrationRecord> RequestForceComplete(int64_t id,
                                                           const std::string& by) override {
    Timed timed(c_, "migrations.RequestForceComplete");
    return in_->RequestForceComplete(id, by);
  }
  absl::StatusOr<db::MigrationRecord> ResolveError(int64_t id, MigrationStatus to,
                                                   const std::string& host,
                                                   const std::string& failure_reason,
                                                   const db::MigrationEvent& event) override {
    Timed timed(c_, "migrations.ResolveError");
    return in_->ResolveError(id, to, host, failure_reason, event);
  }
  absl::StatusOr<db::MigrationMetrics> ReadMetrics(absl::Duration service_down_time) override {
    Timed timed(c_, "migrations.ReadMetrics");
    return in_->ReadMetrics(service_down_time);
  }
  absl::StatusOr<int64_t> MemoryClaimedOn(const std::string& host) override {
    Timed timed(c_, "migrations.MemoryClaimedOn");
    return in_->MemoryClaimedOn(host);
  }
  absl::StatusOr<int64_t> PurgeFinished(absl::Time before) override {
    Timed timed(c_, "migrations.PurgeFinished");
    return in_->PurgeFinished(before);
  }
  absl::StatusOr<int64_t> FoldMetrics() override {
    Timed timed(c_, "migrations.FoldMetrics");
    return in_->FoldMetrics();
  }

  std::optional<MigrationStatus> WaitTerminal(int64_t id, absl::Duration timeout) {
    absl::MutexLock l(&mu_);
    auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return terminal_.count(id) > 0; };
    mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
    auto it = terminal_.find(id);
    if (it == terminal_.end()) return std::nullopt;
    return it->second;
  }

 private:
  db::MigrationStore* in_;
  Counters* c_;
  absl::Mutex mu_;
  std::map<int64_t, MigrationStatus> terminal_ ABSL_GUARDED_BY(mu_);
};

class CountingHostStore : public db::HostStore {
 public:
  CountingHostStore(db::HostStore* inner, Counters* c) : in_(inner), c_(c) {}
  absl::StatusOr<db::ReportResult> ApplyReport(const db::HostReport& report) override {
    Timed timed(c_, "hosts.ApplyReport");
    return in_->ApplyReport(report);
  }
  absl::StatusOr<db::HostRecord> GetHost(const std::string& hostname,
                                         absl::Duration service_down_time) override {
    Timed timed(c_, "hosts.GetHost");
    return in_->GetHost(hostname, service_down_time);
  }
  absl::StatusOr<std::vector<db::HostRecord>> ListHosts(absl::Duration service_down_time) override {
    Timed timed(c_, "hosts.ListHosts");
    return in_->ListHosts(service_down_time);
  }
  absl::StatusOr<db::HostPage> ListHostsPage(const db::HostFilter& filter,
                                             absl::Duration service_down_time) override {
    Timed timed(c_, "hosts.ListHostsPage");
    return in_->ListHostsPage(filter, service_down_time);
  }
  absl::StatusOr<std::vector<db::HostRecord>> ListDestinationCandidates(
      const db::DestinationQuery& q, absl::Duration service_down_time) override {
    Timed timed(c_, "hosts.ListDestinationCandidates");
    return in_->ListDestinationCandidates(q, service_down_time);
  }
  absl::StatusOr<db::HostRecord> SetHostEnabled(const std::string& hostname, bool enabled,
                                                const std::string& reason,
                                                const std::string& by) override {
    Timed timed(c_, "hosts.SetHostEnabled", 2);  // the update, then a read
    return in_->SetHostEnabled(hostname, enabled, reason, by);
  }

 private:
  db::HostStore* in_;
  Counters* c_;
};

class CountingInstanceStore : public db::InstanceStore {
 public:
  CountingInstanceStore(db::InstanceStore* inner, Counters* c) : in_(inner), c_(c) {}
  absl::StatusOr<db::InstanceRecord> GetInstance(const std::string& uuid) override {
    Timed timed(c_, "instances.GetInstance");
    return in_->GetInstance(uuid);
  }
  absl::StatusOr<std::vector<db::InstanceRecord>> ListInstances(const std::string& host,
                                                                int limit) override {
    Timed timed(c_, "instances.ListInstances");
    return in_->ListInstances(host, limit);
  }
  absl::StatusOr<db::InstancePage> ListInstancesPage(const db::InstanceFilter& filter) override {
    Timed timed(c_, "instances.ListInstancesPage");
    return in_->ListInstancesPage(filter);
  }
  absl::Status CompareAndSetTaskState(const std::string& uuid,
                                      const std::optional<std::string>& expected,
                                      const std::optional<std::string>& desired) override {
    Timed timed(c_, "instances.CompareAndSetTaskState");
    return in_->CompareAndSetTaskState(uuid, expected, desired);
  }

 private:
  db::InstanceStore* in_;
  Counters* c_;
};

// ---- agent client decorator ---------------------------------------------------------------

namespace {

using sched::AgentClient;
namespace cv1 = ::livemig::compute::v1;

class CountingAgentClient : public AgentClient {
 public:
  CountingAgentClient(std::shared_ptr<AgentClient> inner, Counters* c)
      : in_(std::move(inner)), c_(c) {}
  absl::StatusOr<cv1::GetHostInfoResponse> GetHostInfo() override {
    Timed timed(c_, "agent.GetHostInfo");
    return in_->GetHostInfo();
  }
#define LIVEMIG_COUNTED_RPC(Name, Req, Resp, step)   \
  absl::StatusOr<Resp> Name(const Req& r) override { \
    Timed timed(c_, "agent." #Name);                 \
    return in_->Name(r);                             \
  }
  LIVEMIG_AGENT_RPCS(LIVEMIG_COUNTED_RPC)
#undef LIVEMIG_COUNTED_RPC

 private:
  std::shared_ptr<AgentClient> in_;
  Counters* c_;
};

class CountingAgentClientFactory : public sched::AgentClientFactory {
 public:
  CountingAgentClientFactory(sched::AgentClientFactory* inner, Counters* c) : in_(inner), c_(c) {}
  std::shared_ptr<AgentClient> ForHost(const std::string& hostname,
                                       const std::string& address) override {
    return std::make_shared<CountingAgentClient>(in_->ForHost(hostname, address), c_);
  }

 private:
  sched::AgentClientFactory* in_;
  Counters* c_;
};

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

testing::PgServer* Server() {
  static testing::PgServer* server = [] {
    auto s = testing::PgServer::Start();
    if (!s.ok()) {
      fprintf(stderr, "bench: cannot start PostgreSQL: %s\n", s.status().ToString().c_str());
      std::exit(1);
    }
    return s->release();
  }();
  return server;
}

}  // namespace

// ---- PKI, databases -----------------------------------------------------------------------

absl::Status MakePki(const std::string& dir, const std::vector<std::string>& names) {
  const std::string pki = testing::RunfilePath("deploy/pki.sh");
  auto r = testing::RunCommand(absl::StrCat(pki, " init ", dir, " >/dev/null"));
  if (!r.ok()) return r.status();
  for (const auto& n : names) {
    r = testing::RunCommand(absl::StrCat(pki, " issue ", dir, " ", n, " >/dev/null"));
    if (!r.ok()) return r.status();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> NewDatabase() { return Server()->CreateDatabase(); }

void StopDatabaseServer() { delete Server(); }

std::string DatabaseServerDir() { return Server()->dir(); }

std::string PgSettingsLine(const std::string& conninfo) {
  try {
    pqxx::connection c(conninfo);
    pqxx::nontransaction w(c);
    std::vector<std::string> parts;
    parts.push_back(w.exec1("SHOW server_version")[0].as<std::string>());
    for (const char* s :
         {"fsync", "synchronous_commit", "full_page_writes", "shared_buffers", "max_connections"}) {
      parts.push_back(absl::StrCat(s, "=", w.exec1(absl::StrCat("SHOW ", s))[0].as<std::string>()));
    }
    return absl::StrCat("PostgreSQL ", absl::StrJoin(parts, " "),
                        " (testing::PgServer via deploy/pgctl.sh, Unix socket)");
  } catch (const std::exception& e) {
    return absl::StrCat("PostgreSQL settings unreadable: ", e.what());
  }
}

CpuTimes ReadCpu() {
  CpuTimes t;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  t.self = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  auto read = [](const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  long postmaster = 0;
  {
    std::istringstream in(read(Server()->dir() + "/data/postmaster.pid"));
    in >> postmaster;
  }
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || !std::isdigit(static_cast<unsigned char>(name[0]))) continue;
    const std::string stat = read(e.path().string() + "/stat");
    const auto close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream in(stat.substr(close + 2));
    std::string state;
    long ppid = 0;
    in >> state >> ppid;
    const long pid = std::atol(name.c_str());
    if (pid != postmaster && ppid != postmaster) continue;
    std::string skip;
    for (int i = 0; i < 9; ++i) in >> skip;  // pgrp .. cmajflt
    double utime = 0, stime = 0;
    in >> utime >> stime;
    t.pg += (utime + stime) / tick;
  }
  std::istringstream in(read("/proc/stat"));
  std::string cpu;
  in >> cpu;
  double v[8] = {0};
  for (double& x : v) in >> x;
  double total = 0;
  for (double x : v) total += x;
  t.machine_total = total / tick;
  t.machine_busy = (total - v[3] - v[4]) / tick;  // minus idle and iowait
  return t;
}

std::string CpuLine(const CpuTimes& a, const CpuTimes& b, double per, const char* unit) {
  const double self = (b.self - a.self) * 1000 / per;
  const double pg = (b.pg - a.pg) * 1000 / per;
  const double busy = (b.machine_busy - a.machine_busy) * 1000 / per;
  const double total = b.machine_total - a.machine_total;
  return absl::StrFormat(
      "CPU per %s: %.2f ms in the benchmark process (scheduler, agents, fake hypervisors), %.2f ms "
      "in PostgreSQL, %.2f ms elsewhere on the machine; the machine's %d cores were %.0f%% busy",
      unit, self, pg, std::max(0.0, busy - self - pg),
      static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)),
      total > 0 ? 100.0 * (b.machine_busy - a.machine_busy) / total : 0.0);
}

absl::StatusOr<DbCounters> ReadDbCounters(const std::string& conninfo) {
  try {
    pqxx::connection c(conninfo);
    pqxx::nontransaction w(c);  // autocommit: each statement is its own transaction
    DbCounters d;
    d.xact_commit = w.exec1(
                         "SELECT xact_commit FROM pg_stat_database WHERE datname = "
                         "current_database()")[0]
                        .as<int64_t>();
    d.next_xid =
        w.exec1("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")[0].as<int64_t>();
    d.events = w.exec1("SELECT count(*) FROM migration_events")[0].as<int64_t>();
    return d;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("reading database counters: ", e.what()));
  }
}

// ---- the cloud ----------------------------------------------------------------------------

BenchCloud::BenchCloud(CloudOptions o) : options_(std::move(o)) {}

absl::StatusOr<std::unique_ptr<BenchCloud>> BenchCloud::Create(CloudOptions options) {
  std::unique_ptr<BenchCloud> c(new BenchCloud(std::move(options)));
  absl::Status s = c->Start();
  if (!s.ok()) return s;
  return c;
}

void LiftLimits(CloudOptions& o) {
  o.orch.max_outbound_per_host = 1 << 20;
  o.orch.max_inbound_per_host = 1 << 20;
  o.orch.max_total = 1 << 20;
  o.agent_max_concurrent = 1 << 20;
}

absl::StatusOr<std::unique_ptr<BenchCloud>> BenchCloud::CreateWithNewPkiAndDatabase(
    CloudOptions options) {
  auto stage = [](const char* what, const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
  };
  const std::string pki = testing::MakeShortTempDir("bench-pki");
  std::unique_ptr<BenchCloud> c(new BenchCloud(std::move(options)));
  c->owned_pki_ = pki;  // removed with `c`, also on failure
  std::vector<std::string> names = {"scheduler"};
  names.insert(names.end(), c->options_.hosts.begin(), c->options_.hosts.end());
  if (auto s = MakePki(pki, names); !s.ok()) return stage("PKI", s);
  auto db = NewDatabase();
  if (!db.ok()) return stage("database", db.status());
  c->options_.pki = pki;
  c->options_.conninfo = *db;
  if (auto s = c->Start(); !s.ok()) return stage("cloud", s);
  return c;
}

db::HostStore& BenchCloud::hosts() { return *hosts_; }
db::MigrationStore& BenchCloud::migrations() { return *migrations_; }
db::InstanceStore& BenchCloud::instances() { return *instances_; }

driver::FakeHypervisor& BenchCloud::hypervisor(const std::string& host) {
  return agents_.at(host).driver->hypervisor();
}

absl::Status BenchCloud::Start() {
  db::PgPool::Options po;
  po.conninfo = options_.conninfo;
  po.size = options_.db_pool;
  auto pool = db::PgPool::Create(po);
  if (!pool.ok()) return pool.status();
  pool_ = std::move(pool).value();
  if (auto s = db::ApplySchema(*pool_); !s.ok()) return s.status();
  if (auto s = pool_->Run("bench probe table",
                          [](pqxx::work& w) {
                            w.exec(
                                "CREATE TABLE IF NOT EXISTS bench_probe (id bigserial PRIMARY KEY, "
                                "at timestamptz NOT NULL DEFAULT now(), payload text NOT NULL)");
                            return absl::OkStatus();
                          });
      !s.ok()) {
    return s;
  }
  stores_ = std::make_unique<db::PgStores>(pool_.get());
  migrations_ = std::make_unique<CountingMigrationStore>(&stores_->migrations(), &db_calls_);
  hosts_ = std::make_unique<CountingHostStore>(&stores_->hosts(), &db_calls_);
  instances_ = std::make_unique<CountingInstanceStore>(&stores_->instances(), &db_calls_);

  // Fake hypervisors on tmpfs.
  std::string root = absl::StrCat(options_.state_root, "/lm-bench-XXXXXX");
  if (mkdtemp(root.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", root, " failed"));
  }
  for (int i = 0; i < std::max(1, options_.partitions); ++i) {
    state_dirs_.push_back(absl::StrCat(root, "/p", i));
    std::filesystem::create_directories(state_dirs_.back());
  }

  // Agents: AgentCore over a FakeDriver, each behind its own gRPC server with mutual TLS.
  for (size_t i = 0; i < options_.hosts.size(); ++i) {
    const std::string& h = options_.hosts[i];
    Agent& a = agents_[h];
    driver::FakeDriver::Options fo;
    fo.state_dir = state_dirs_[i % state_dirs_.size()];
    fo.hostname = h;
    fo.poll_interval = options_.fake_poll;
    auto d = driver::FakeDriver::Create(fo);
    if (!d.ok()) return d.status();
    a.driver = std::move(d).value();
    agent::AgentCore::Options co;
    co.hostname = h;
    co.max_concurrent_migrations = options_.agent_max_concurrent;
    a.core = std::make_unique<agent::AgentCore>(co, a.driver.get());
    a.allow = std::make_unique<agent::AllowList>(std::vector<std::string>{"scheduler"}, false);
    a.service = std::make_unique<agent::AgentService>(a.core.get(), a.allow.get());
    TlsFiles tls{options_.pki + "/ca.pem", options_.pki + "/" + h + ".pem",
                 options_.pki + "/" + h + ".key"};
    auto creds = MakeServerCredentials(tls);
    if (!creds.ok()) return creds.status();
    grpc::ServerBuilder b;
    int port = 0;
    b.AddListeningPort("127.0.0.1:0", *creds, &port);
    b.RegisterService(a.service.get());
    a.server = b.BuildAndStart();
    if (!a.server || port == 0) {
      return absl::UnavailableError(absl::StrCat("agent ", h, ": cannot listen on 127.0.0.1"));
    }
    a.address = absl::StrCat("127.0.0.1:", port);
  }

  // The scheduler: mutual TLS to the agents, as the binary does.
  sched::GrpcAgentClientFactory::Options ao;
  ao.tls = TlsFiles{options_.pki + "/ca.pem", options_.pki + "/scheduler.pem",
                    options_.pki + "/scheduler.key"};
  grpc_agents_ = std::make_unique<sched::GrpcAgentClientFactory>(ao);
  counting_agents_ = std::make_unique<CountingAgentClientFactory>(grpc_agents_.get(), &rpcs_);
  if (auto s = ReportAll(); !s.ok()) return s;
  if (options_.orch.scheduler_id.empty()) options_.orch.scheduler_id = "bench-scheduler";
  orch_ = std::make_unique<sched::Orchestrator>(options_.orch, migrations_.get(), hosts_.get(),
                                                instances_.get(), counting_agents_.get());
  api_ = std::make_unique<sched::ApiCore>(migrations_.get(), hosts_.get(), instances_.get(),
                                          &stores_->evacuations(), orch_.get());
  auto tokens = sched::TokenStore::Load("");  // --no-auth, as the e2e tests run it
  if (!tokens.ok()) return tokens.status();
  tokens_ = std::move(tokens).value();
  api_service_ = std::make_unique<sched::SchedulerApiService>(api_.get(), tokens_.get());
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  b.RegisterService(api_service_.get());
  api_server_ = b.BuildAndStart();
  if (!api_server_ || port == 0) return absl::UnavailableError("scheduler API: cannot listen");
  api_stub_ = sv1::SchedulerApi::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  orch_->Start();
  reporter_ = std::thread([this] {
    while (!stop_reports_.WaitForNotificationWithTimeout(options_.report_interval)) {
      if (auto s = ReportAll(); !s.ok()) {
        fprintf(stderr, "bench: host report failed: %s\n", s.ToString().c_str());
      }
    }
  });
  return absl::OkStatus();
}

BenchCloud::~BenchCloud() {
  stop_reports_.Notify();
  if (reporter_.joinable()) reporter_.join();
  if (api_server_) api_server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  if (orch_) orch_->Stop();
  api_.reset();
  orch_.reset();
  for (auto& [h, a] : agents_) {
    if (a.server) a.server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
  }
  agents_.clear();
  if (!state_dirs_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(std::filesystem::path(state_dirs_[0]).parent_path(), ec);
  }
  if (!owned_pki_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(owned_pki_, ec);
  }
}

absl::Status BenchCloud::CreateDomain(const std::string& host, const std::string& uuid,
                                      const std::string& name, uint64_t memory_mib) {
  return hypervisor(host).CreateDomain(host, uuid, name, memory_mib);
}

absl::Status BenchCloud::ReportAll() {
  absl::MutexLock l(&report_mu_);
  return ReportAllLocked();
}

absl::StatusOr<int> BenchCloud::PruneFakeTransfers() {
  int removed = 0;
  for (const std::string& dir : state_dirs_) {
    driver::FakeHypervisor hv(dir);
    auto s = hv.Mutate([&](nlohmann::json& st, bool* changed) {
      auto& transfers = st["transfers"];
      for (auto it = transfers.begin(); it != transfers.end();) {
        if ((*it)["state"] != "running") {
          it = transfers.erase(it);
          ++removed;
          *changed = true;
        } else {
          ++it;
        }
      }
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
  }
  return removed;
}

absl::StatusOr<std::map<std::string, std::string>> BenchCloud::DbHosts() {
  return pool_->Query<std::map<std::string, std::string>>(
      "bench instance hosts",
      [](pqxx::work& w) -> absl::StatusOr<std::map<std::string, std::string>> {
        std::map<std::string, std::string> out;
        for (const auto& row : w.exec("SELECT uuid::text, COALESCE(host, '') FROM instances")) {
          out[row[0].as<std::string>()] = row[1].as<std::string>();
        }
        return out;
      });
}

absl::Status BenchCloud::ReportAllLocked() {
  for (auto& [h, a] : agents_) {
    auto info = a.core->GetHostInfo();
    if (!info.ok()) return info.status();
    v1::HostInventory inv = info->inventory();
    inv.set_agent_address(a.address);
    inv.set_report_seq(++seq_);
    inv.mutable_agent_started_at()->set_seconds(1);
    auto r = hosts_->ApplyReport(sched::ReportFromInventory(inv));
    if (!r.ok()) return r.status();
  }
  return absl::OkStatus();
}

absl::StatusOr<sv1::LiveMigrateResponse> BenchCloud::Migrate(const std::string& uuid,
                                                             const std::string& dest) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  sv1::LiveMigrateRequest r;
  r.set_instance_uuid(uuid);
  r.set_destination(dest);
  r.set_requester("bench");
  sv1::LiveMigrateResponse resp;
  auto s = FromGrpc(api_stub_->LiveMigrate(&ctx, r, &resp));
  if (!s.ok()) return s;
  return resp;
}

absl::StatusOr<sv1::Migration> BenchCloud::Get(const std::string& id, bool include_events) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  sv1::GetMigrationRequest r;
  r.set_migration_id(id);
  sv1::Migration m;
  auto s = FromGrpc(api_stub_->GetMigration(&ctx, r, &m));
  if (!s.ok()) return s;
  (void)include_events;
  return m;
}

std::optional<MigrationStatus> BenchCloud::WaitTerminal(int64_t number, absl::Duration timeout) {
  return migrations_->WaitTerminal(number, timeout);
}

absl::Duration BenchCloud::ProbeCommit() { return ProbeCommit(pool_.get()); }

absl::Duration BenchCloud::ProbeCommit(db::PgPool* pool) {
  const absl::Time t0 = absl::Now();
  auto s = pool->Run("bench probe", [](pqxx::work& w) {
    w.exec("INSERT INTO bench_probe (payload) VALUES ('probe')");
    return absl::OkStatus();
  });
  const absl::Duration d = absl::Now() - t0;
  if (!s.ok()) fprintf(stderr, "bench: commit probe failed: %s\n", s.ToString().c_str());
  return d;
}

absl::Duration BenchCloud::ProbeRpc(const std::string& host) {
  auto client = grpc_agents_->ForHost(host, agents_.at(host).address);
  compute::v1::GetMigrationProgressRequest r;
  r.set_migration_id("!");  // malformed: InvalidArgument from the agent, no hypervisor call
  const absl::Time t0 = absl::Now();
  auto p = client->GetMigrationProgress(r);
  const absl::Duration d = absl::Now() - t0;
  if (p.status().code() != absl::StatusCode::kInvalidArgument) {
    fprintf(stderr, "bench: RPC probe got %s\n", p.status().ToString().c_str());
  }
  return d;
}

}  // namespace livemig::bench
