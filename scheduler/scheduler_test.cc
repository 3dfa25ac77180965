// The scheduler's state machine, API validation and recovery, against the real PostgreSQL and
// two in-process agents over the FakeDriver (LocalAgentClientFactory).
#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cstdio>
#include <set>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/migration_status.h"
#include "compute/agent_core.h"
#include "db/pg_stores.h"
#include "db/schema.h"
#include "driver/fake_driver.h"
#include "scheduler/api_core.h"
#include "scheduler/convert.h"
#include "scheduler/orchestrator.h"
#include "testing/pg_server.h"
#include "testing/process.h"
#include "testing/run_command.h"
#include "testing/sample_disks.h"
#include "testing/schema_db.h"

namespace livemig::sched {
namespace {

constexpr char kUuid[] = "11111111-2222-4333-8444-555555555555";
constexpr char kUuid2[] = "22222222-2222-4333-8444-555555555555";
constexpr char kUuid3[] = "33333333-2222-4333-8444-555555555555";

struct Cloud : livemig::testing::SchemaDb {
  // StartSplit's pools, as the scheduler runs them: the API's and the control loop's.
  std::unique_ptr<db::PgPool> api_pool, control_pool;
  std::unique_ptr<db::PgStores> api_stores, control_stores;
  std::string state = livemig::testing::MakeTempDir("sched");
  std::map<std::string, std::unique_ptr<driver::FakeDriver>> drivers;
  std::map<std::string, std::unique_ptr<agent::AgentCore>> cores;
  LocalAgentClientFactory agents;
  AgentClientFactory* agent_factory = &agents;  // what Start() hands the orchestrator
  std::unique_ptr<Orchestrator> orch;
  std::unique_ptr<ApiCore> api;
  int64_t seq = 1;

  explicit Cloud(OrchestratorOptions o = {}, std::vector<std::string> hosts = {"fake-a", "fake-b"},
                 std::function<void(driver::FakeDriver::Options&)> tweak_b = nullptr,
                 std::function<void(driver::FakeDriver::Options&)> tweak_all = nullptr)
      : SchemaDb(livemig::testing::SharedPgServer(), 8) {
    for (const auto& h : hosts) {
      driver::FakeDriver::Options fo;
      fo.state_dir = state;
      fo.hostname = h;
      fo.poll_interval = absl::Milliseconds(5);
      if (tweak_all) tweak_all(fo);
      if (h == "fake-b" && tweak_b) tweak_b(fo);
      auto d = driver::FakeDriver::Create(fo);
      REQUIRE(d.ok());
      drivers[h] = std::move(d).value();
      cores[h] =
          std::make_unique<agent::AgentCore>(agent::AgentCore::Options{h, 4}, drivers[h].get());
      agents.Add(h, cores[h].get());
    }
    REQUIRE(drivers["fake-a"]->hypervisor().CreateDomain("fake-a", kUuid, "web-1", 1024).ok());
    ReportAll();
    if (o.scheduler_id.empty()) o.scheduler_id = "sched-test";
    o.dispatch_interval = absl::Milliseconds(20);
    o.progress_poll = absl::Milliseconds(20);
    o.progress_write = absl::Milliseconds(100);
    Start(o);
  }
  void Start(OrchestratorOptions o) {
    orch = std::make_unique<Orchestrator>(o, &stores->migrations(), &stores->hosts(),
                                          &stores->instances(), agent_factory);
    api = std::make_unique<ApiCore>(&stores->migrations(), &stores->hosts(), &stores->instances(),
                                    &stores->evacuations(), orch.get());
    orch->Start();
  }
  // Restarts the orchestrator and the API as scheduler_main wires them: the orchestrator (and
  // the evacuations' leases) on a control pool of `control_size` connections, the API on a pool
  // of `api_size`; each waits at most `acquire_timeout` for a connection.
  void StartSplit(OrchestratorOptions o, int api_size, int control_size,
                  absl::Duration acquire_timeout) {
    api.reset();
    orch.reset();
    db::PgPool::Options po;
    po.conninfo = conninfo;
    po.acquire_timeout = acquire_timeout;
    po.size = api_size;
    po.name = "API";
    auto a = db::PgPool::Create(po);
    REQUIRE(a.ok());
    api_pool = std::move(a).value();
    po.size = control_size;
    po.name = "control";
    po.size_flag = "--db-pool-control";
    auto k = db::PgPool::Create(po);
    REQUIRE(k.ok());
    control_pool = std::move(k).value();
    api_stores = std::make_unique<db::PgStores>(api_pool.get());
    control_stores = std::make_unique<db::PgStores>(control_pool.get());
    orch =
        std::make_unique<Orchestrator>(o, &control_stores->migrations(), &control_stores->hosts(),
                                       &control_stores->instances(), agent_factory);
    api = std::make_unique<ApiCore>(&api_stores->migrations(), &api_stores->hosts(),
                                    &api_stores->instances(), &api_stores->evacuations(),
                                    orch.get(), &control_stores->evacuations());
    orch->Start();
  }
  void ReportAll() {
    for (auto& [h, core] : cores) {
      auto info = core->GetHostInfo();
      REQUIRE(info.ok());
      v1::HostInventory inv = info->inventory();
      inv.set_agent_address("local:" + h);
      inv.set_report_seq(++seq);
      inv.mutable_agent_started_at()->set_seconds(1);
      REQUIRE(stores->hosts().ApplyReport(ReportFromInventory(inv)).ok());
    }
  }
  absl::StatusOr<sv1::LiveMigrateResponse> Migrate(const std::string& uuid,
                                                   const std::string& dest = "fake-b",
                                                   v1::MigrationOptions options = {}) {
    sv1::LiveMigrateRequest r;
    r.set_instance_uuid(uuid);
    r.set_destination(dest);
    *r.mutable_options() = options;
    r.set_requester("alice");
    return api->LiveMigrate(r, "");
  }
  sv1::Migration WaitTerminal(const std::string& id, absl::Duration t = absl::Seconds(30)) {
    sv1::Migration last;
    bool done = livemig::testing::WaitFor(
        [&] {
          auto m = api->GetMigration(id);
          if (!m.ok()) return false;
          last = *m;
          const auto status = FromProtoStatus(last.status());
          return status.ok() && IsTerminal(*status);
        },
        t);
    INFO(last.DebugString());
    REQUIRE(done);
    return last;
  }
  std::vector<std::pair<std::string, std::string>> Where(const std::string& uuid = kUuid) {
    auto w = drivers.begin()->second->hypervisor().Locate(uuid);
    REQUIRE(w.ok());
    return *w;
  }
  std::string DbHost(const std::string& uuid = kUuid) {
    auto i = stores->instances().GetInstance(uuid);
    REQUIRE(i.ok());
    return i->host;
  }
};

using Loc = std::vector<std::pair<std::string, std::string>>;

TEST_CASE("scheduler: a migration completes and the database tells its whole story") {
  Cloud c;
  auto r = c.Migrate(kUuid);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CHECK(r->migration().status() == v1::MIGRATION_STATUS_ACCEPTED);
  auto m = c.WaitTerminal(r->migration().id());
  CHECK(m.status() == v1::MIGRATION_STATUS_COMPLETED);
  CHECK(c.Where() == Loc{{"fake-b", "running"}});
  CHECK(c.DbHost() == "fake-b");
  auto inst = c.stores->instances().GetInstance(kUuid);
  CHECK_FALSE(inst->task_state.has_value());
  // Every step with timings, intents before results.
  std::vector<std::string> steps;
  for (const auto& e : m.events())
    steps.push_back(StepName(e.step()) + ":" + sv1::StepOutcome_Name(e.outcome()));
  INFO(absl::StrJoin(steps, ", "));
  for (const char* step :
       {"check_can_live_migrate_on_dest", "check_can_live_migrate_on_src", "pre_live_migration",
        "live_migration", "post_live_migration", "post_live_migration_at_destination"}) {
    bool intent = false, result = false;
    for (const auto& e : m.events()) {
      if (StepName(e.step()) != step) continue;
      if (e.outcome() == sv1::STEP_OUTCOME_STARTED) intent = true;
      if (e.outcome() == sv1::STEP_OUTCOME_SUCCEEDED) {
        CHECK(intent);  // the intent was recorded first
        result = true;
      }
    }
    INFO(step);
    CHECK(result);
  }
  // Each event names the host its step ran on, the real source or destination, as recorded (not
  // read from the detail); the scheduler's own steps name none.
  const std::map<std::string, std::string> on = {{"check_can_live_migrate_on_dest", "fake-b"},
                                                 {"check_can_live_migrate_on_src", "fake-a"},
                                                 {"pre_live_migration", "fake-b"},
                                                 {"live_migration", "fake-a"},
                                                 {"post_live_migration", "fake-a"},
                                                 {"post_live_migration_at_destination", "fake-b"}};
  CHECK(m.source_host() == "fake-a");
  CHECK(m.dest_host() == "fake-b");
  for (const auto& e : m.events()) {
    INFO(e.DebugString());
    auto it = on.find(StepName(e.step()));
    CHECK(e.host() == (it == on.end() ? "" : it->second));
  }
  CHECK(m.requester() == "anonymous [alice]");
  CHECK(*c.stores->migrations().MemoryClaimedOn("fake-b") == 0);
}

TEST_CASE("scheduler: step 1 errors are immediate and create no migration") {
  Cloud c;
  CHECK(c.Migrate("not-a-uuid").status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(c.Migrate("99999999-2222-4333-8444-555555555555").status().code() ==
        absl::StatusCode::kNotFound);
  CHECK(c.Migrate(kUuid, "fake-a").status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(c.Migrate(kUuid, "fake-zz").status().code() == absl::StatusCode::kNotFound);
  CHECK(c.Migrate(kUuid, "bad host!").status().code() == absl::StatusCode::kInvalidArgument);
  sv1::SetHostEnabledRequest dis;
  dis.set_hostname("fake-b");
  dis.set_enabled(false);
  dis.set_reason("maintenance");
  REQUIRE(c.api->SetHostEnabled(dis, "bob").ok());
  auto disabled = c.Migrate(kUuid);
  CHECK(disabled.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(disabled.status().message(), "maintenance"));
  dis.set_enabled(true);
  REQUIRE(c.api->SetHostEnabled(dis, "bob").ok());
  v1::MigrationOptions bad;
  bad.set_max_downtime_ms(0);
  CHECK(c.Migrate(kUuid, "fake-b", bad).status().code() == absl::StatusCode::kInvalidArgument);
  auto list = c.api->ListMigrations({});
  REQUIRE(list.ok());
  CHECK(list->migrations().empty());
  // Already migrating → Aborted (409); a repeated request id → the same migration.
  REQUIRE(c.drivers["fake-a"]->hypervisor().SetTransferDuration("fake-a", absl::Seconds(2)).ok());
  sv1::LiveMigrateRequest req;
  req.set_instance_uuid(kUuid);
  req.set_destination("fake-b");
  req.set_request_id("req-7");
  auto first = c.api->LiveMigrate(req, "carol");
  REQUIRE(first.ok());
  auto again = c.api->LiveMigrate(req, "carol");
  REQUIRE(again.ok());
  CHECK(again->existing());
  CHECK(again->migration().id() == first->migration().id());
  auto busy = c.Migrate(kUuid);
  CHECK(busy.status().code() == absl::StatusCode::kAborted);
  CHECK(c.WaitTerminal(first->migration().id()).status() == v1::MIGRATION_STATUS_COMPLETED);
}

TEST_CASE("scheduler: pre-check failures are recorded with their numbers") {
  Cloud c;
  REQUIRE(c.drivers["fake-a"]->hypervisor().CreateDomain("fake-a", kUuid2, "big-1", 20000).ok());
  c.ReportAll();
  auto r = c.Migrate(kUuid2);
  REQUIRE(r.ok());
  auto m = c.WaitTerminal(r->migration().id());
  CHECK(m.status() == v1::MIGRATION_STATUS_FAILED);
  CHECK(absl::StrContains(m.failure_reason(), "dom0 reserve"));
  CHECK(absl::StrContains(m.failure_reason(), "needs 20000 MiB"));
  CHECK(c.Where(kUuid2) == Loc{{"fake-a", "running"}});
}

TEST_CASE("scheduler: each pre-check failure names its cause") {
  struct Case {
    const char* name;
    std::function<void(driver::FakeDriver::Options&)> tweak;
    v1::MigrationOptions options;
    const char* expect;
  };
  v1::MigrationOptions bw;
  bw.set_bandwidth_mib_s(8);
  v1::MigrationOptions no_block;
  no_block.set_block_migration(v1::BLOCK_MIGRATION_NO);
  const std::vector<Case> cases = {
      {"version",
       [](auto& o) { o.hypervisor_version = 4016000; },
       {},
       "4.16.0 < the source's 4.17.0"},
      {"type", [](auto& o) { o.hypervisor_type = "QEMU"; }, {}, "runs QEMU"},
      {"cpu", [](auto& o) { o.cpu_features = {"sse4.2"}; }, {}, "lacks source features: avx"},
      {"network",
       [](auto& o) { o.bridges = {"br-other"}; },
       {},
       "lacks network segment(s) br-guest"},
      {"storage", [](auto& o) { o.instance_path = "/tmp/livemig-private-instances"; }, no_block,
       "uses instance path"},
      {"option", [](auto& o) { o.profile = "fake-libxl"; }, bw,
       "does not support a bandwidth limit"},
  };
  for (const auto& k : cases) {
    INFO(k.name);
    Cloud c({}, {"fake-a", "fake-b"}, k.tweak);
    auto r = c.Migrate(kUuid, "fake-b", k.options);
    REQUIRE(r.ok());
    auto m = c.WaitTerminal(r->migration().id());
    CHECK(m.status() == v1::MIGRATION_STATUS_FAILED);
    CHECK(absl::StrContains(m.failure_reason(), k.expect));
    CHECK(c.Where() == Loc{{"fake-a", "running"}});
  }
}

TEST_CASE("scheduler: a host evacuation live-migrates everything off the host") {
  Cloud c({}, {"fake-a", "fake-b", "fake-c"});
  REQUIRE(c.drivers["fake-a"]->hypervisor().CreateDomain("fake-a", kUuid2, "web-2", 512).ok());
  c.ReportAll();
  sv1::EvacuateHostRequest e;
  e.set_hostname("fake-a");
  e.set_max_parallel(1);
  e.set_requester("erin");
  auto ev = c.api->EvacuateHost(e, "");
  REQUIRE(ev.ok());
  CHECK(ev->total() == 2);
  sv1::Evacuation last;
  REQUIRE(livemig::testing::WaitFor(
      [&] {
        auto g = c.api->GetEvacuation(ev->id());
        if (!g.ok()) return false;
        last = *g;
        return last.status() != sv1::EVACUATION_STATUS_RUNNING;
      },
      absl::Seconds(60)));
  INFO(last.DebugString());
  CHECK(last.status() == sv1::EVACUATION_STATUS_COMPLETED);
  CHECK(last.succeeded() == 2);
  // The id is the evacuation's UUID; each of its migrations names it.
  CHECK(last.id() == ev->id());
  CHECK(db::IsValidUuid(last.id()));
  REQUIRE(last.items_size() == 2);
  for (const auto& it : last.items()) {
    auto m = c.api->GetMigration(it.migration_id(), false);
    REQUIRE(m.ok());
    CHECK(m->id() == it.migration_id());
    CHECK(m->evacuation_id() == last.id());
  }
  CHECK(c.api->GetEvacuation("1").status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(c.api->GetEvacuation("00000000-0000-4000-8000-000000000000").status().code() ==
        absl::StatusCode::kNotFound);
  for (const char* u : {kUuid, kUuid2}) {
    auto w = c.Where(u);
    REQUIRE(w.size() == 1);
    CHECK(w[0].first != "fake-a");
    CHECK(c.DbHost(u) == w[0].first);
  }
}

// A scheduler replica's options as Cloud gives them (short intervals), with a short lease.
OrchestratorOptions Replica(const std::string& id, absl::Duration lease = absl::Seconds(1)) {
  OrchestratorOptions o;
  o.scheduler_id = id;
  o.lease = lease;
  o.dispatch_interval = absl::Milliseconds(20);
  o.progress_poll = absl::Milliseconds(20);
  o.progress_write = absl::Milliseconds(100);
  return o;
}

// Waits until the evacuation ended (neither running nor cancelling); returns it as `api` last
// read it.
sv1::Evacuation WaitEvacuationDone(ApiCore& api, const std::string& id,
                                   absl::Duration t = absl::Seconds(90)) {
  sv1::Evacuation last;
  bool done = livemig::testing::WaitFor(
      [&] {
        auto g = api.GetEvacuation(id);
        if (!g.ok()) return false;
        last = *g;
        return last.status() != sv1::EVACUATION_STATUS_RUNNING &&
               last.status() != sv1::EVACUATION_STATUS_CANCELLING;
      },
      t);
  INFO(last.DebugString());
  REQUIRE(done);
  return last;
}

// Options an evacuation asks for, each distinct from the default.
v1::MigrationOptions EvacuationOptions() {
  v1::MigrationOptions o;
  o.set_max_downtime_ms(750);
  o.set_completion_timeout_s(3600);
  o.set_bandwidth_mib_s(4096);
  return o;
}

// Evacuates fake-a to fake-c, one instance at a time, with EvacuationOptions(); returns once the
// transfer of its first migration (web-1's: the items go in UUID order) runs (fake-a's
// transfers take `transfer` each).
sv1::Evacuation StartEvacuationToC(Cloud& c, absl::Duration transfer) {
  REQUIRE(c.drivers["fake-a"]->hypervisor().SetTransferDuration("fake-a", transfer).ok());
  sv1::EvacuateHostRequest e;
  e.set_hostname("fake-a");
  e.set_max_parallel(1);
  e.set_destination("fake-c");
  *e.mutable_options() = EvacuationOptions();
  e.set_requester("erin");
  auto ev = c.api->EvacuateHost(e, "");
  INFO(ev.status().ToString());
  REQUIRE(ev.ok());
  REQUIRE(livemig::testing::WaitFor(
      [&] {
        auto g = c.api->GetEvacuation(ev->id());
        if (!g.ok()) return false;
        for (const auto& it : g->items()) {
          if (it.migration_id().empty()) continue;
          auto m = c.api->GetMigration(it.migration_id(), false);
          return m.ok() && m->status() == v1::MIGRATION_STATUS_RUNNING &&
                 c.Where(kUuid).size() == 2;
        }
        return false;
      },
      absl::Seconds(30)));
  return *ev;
}

// Every migration of a finished evacuation went to fake-c with EvacuationOptions(), and the
// evacuation shows its destination and options.
void CheckEvacuatedToC(Cloud& c, ApiCore& api, const sv1::Evacuation& done, int instances) {
  INFO(done.DebugString());
  CHECK(done.status() == sv1::EVACUATION_STATUS_COMPLETED);
  CHECK(done.succeeded() == static_cast<uint32_t>(instances));
  CHECK(done.destination() == "fake-c");
  CHECK(done.options().DebugString() == EvacuationOptions().DebugString());
  REQUIRE(done.items_size() == instances);
  for (const auto& it : done.items()) {
    INFO(it.instance_uuid());
    CHECK(it.dest_host() == "fake-c");
    auto m = api.GetMigration(it.migration_id(), false);
    REQUIRE(m.ok());
    CHECK(m->evacuation_id() == done.id());
    CHECK(m->dest_host() == "fake-c");
    CHECK(m->options().DebugString() == EvacuationOptions().DebugString());
    CHECK(c.Where(it.instance_uuid()) == Loc{{"fake-c", "running"}});
  }
}

TEST_CASE(
    "scheduler: an evacuation resumed by a restarted scheduler keeps its destination and "
    "options") {
  Cloud c(Replica("sched-1"), {"fake-a", "fake-b", "fake-c"});
  REQUIRE(c.drivers["fake-a"]->hypervisor().CreateDomain("fake-a", kUuid2, "web-2", 512).ok());
  c.ReportAll();
  const sv1::Evacuation ev = StartEvacuationToC(c, absl::Seconds(2));
  // The scheduler stops mid-evacuation (its leases expire); another one starts and resumes it.
  // Left to choose, it would pick fake-b (same memory as fake-c, fewer migrations, first name).
  c.orch->Stop();
  c.api.reset();
  c.Start(Replica("sched-2"));
  c.api->ResumeEvacuations();
  CheckEvacuatedToC(c, *c.api, WaitEvacuationDone(*c.api, ev.id()), 2);
}

// The migrations of a finished evacuation, from its items.
std::vector<sv1::Migration> EvacuationMigrations(ApiCore& api, const sv1::Evacuation& e) {
  std::vector<sv1::Migration> out;
  for (const auto& it : e.items()) {
    if (it.migration_id().empty()) continue;
    auto m = api.GetMigration(it.migration_id(), false);
    REQUIRE(m.ok());
    out.push_back(*m);
  }
  return out;
}

// Whether two of `ms` were in flight at once, by their recorded times ([created, finished)).
bool AnyOverlap(const std::vector<sv1::Migration>& ms) {
  auto us = [](const google::protobuf::Timestamp& t) {
    return t.seconds() * 1000000 + t.nanos() / 1000;
  };
  for (size_t i = 0; i < ms.size(); ++i) {
    for (size_t j = i + 1; j < ms.size(); ++j) {
      if (us(ms[i].created_at()) < us(ms[j].finished_at()) &&
          us(ms[j].created_at()) < us(ms[i].finished_at())) {
        return true;
      }
    }
  }
  return false;
}

// A scheduler that died between creating an evacuation's migration and recording it on the item
// left the item pending while its migration runs: the scheduler resuming the evacuation counts
// that migration (with max_parallel 1, nothing else starts until it ended) and then records it
// on its item. (Before, the count came from the items alone: a second migration started beside
// it.)
TEST_CASE("scheduler: a resumed evacuation counts the migration its dead driver had not recorded") {
  Cloud c({}, {"fake-a", "fake-b", "fake-c"});
  auto& hv = c.drivers["fake-a"]->hypervisor();
  REQUIRE(hv.CreateDomain("fake-a", kUuid2, "web-2", 512).ok());
  REQUIRE(hv.CreateDomain("fake-a", kUuid3, "web-3", 512).ok());
  c.ReportAll();
  REQUIRE(hv.SetTransferDuration("fake-a", absl::Seconds(2)).ok());
  db::NewEvacuation ne;
  ne.host = "fake-a";
  ne.max_parallel = 1;
  ne.requested_by = "erin";
  ne.instance_uuids = {kUuid, kUuid2, kUuid3};
  ne.destination = "fake-c";  // no owner: as its dead driver's expired lease leaves it
  auto ev = c.stores->evacuations().CreateEvacuation(ne);
  REQUIRE(ev.ok());
  // The migration of its last item (items go in UUID order), created as its driver does.
  db::NewMigration nm;
  nm.request_id = absl::StrCat("evacuation-", ev->id, "-", kUuid3);
  nm.evacuation_uuid = ev->uuid;
  nm.instance_uuid = kUuid3;
  nm.dest_host = "fake-c";
  nm.memory_claim_mib = 512;
  nm.requested_by = "erin";
  nm.owner = c.orch->options().scheduler_id;
  nm.lease = c.orch->options().lease;
  auto orphan = c.stores->migrations().CreateMigration(nm);
  REQUIRE(orphan.ok());
  c.orch->Kick();
  c.api->ResumeEvacuations();
  const sv1::Evacuation done = WaitEvacuationDone(*c.api, ev->uuid);
  INFO(done.DebugString());
  CHECK(done.status() == sv1::EVACUATION_STATUS_COMPLETED);
  CHECK(done.succeeded() == 3);
  const auto ms = EvacuationMigrations(*c.api, done);
  REQUIRE(ms.size() == 3);
  bool adopted = false;
  for (const auto& m : ms) adopted = adopted || m.id() == orphan->migration.uuid;
  CHECK(adopted);  // its item names it: no second migration of that instance
  CHECK_FALSE(AnyOverlap(ms));
}

// Cancel: the migration in flight finishes, the pending instances stay, no new migration of the
// evacuation can be created (the store refuses it), a second cancel answers the same, and a
// finished evacuation cannot be cancelled.
TEST_CASE("scheduler: a cancelled evacuation starts nothing more; the one in flight finishes") {
  Cloud c({}, {"fake-a", "fake-b", "fake-c"});
  REQUIRE(c.drivers["fake-a"]->hypervisor().CreateDomain("fake-a", kUuid2, "web-2", 512).ok());
  REQUIRE(c.drivers["fake-a"]->hypervisor().CreateDomain("fake-a", kUuid3, "web-3", 512).ok());
  c.ReportAll();
  const sv1::Evacuation ev = StartEvacuationToC(c, absl::Seconds(2));
  sv1::CancelEvacuationRequest cr;
  cr.set_evacuation_id(ev.id());
  cr.set_reason("freeze");
  cr.set_requester("frank");
  auto cancelled = c.api->CancelEvacuation(cr, "ops");
  REQUIRE(cancelled.ok());
  CHECK(cancelled->status() == sv1::EVACUATION_STATUS_CANCELLING);
  CHECK(cancelled->cancelled() == 2);
  CHECK(cancelled->cancel_reason() == "freeze");
  CHECK(cancelled->cancelled_by() == "ops [frank]");
  // Its driver's next start is refused by the store, whatever it read before.
  db::NewMigration nm;
  nm.request_id = "late-start";
  nm.evacuation_uuid = ev.id();
  nm.instance_uuid = kUuid3;
  nm.requested_by = "erin";
  auto late = c.stores->migrations().CreateMigration(nm);
  CHECK(late.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(late.status().message(), "was cancelled"));
  cr.set_reason("another");
  auto again = c.api->CancelEvacuation(cr, "ops");
  REQUIRE(again.ok());
  CHECK(again->cancel_reason() == "freeze");
  const sv1::Evacuation done = WaitEvacuationDone(*c.api, ev.id());
  INFO(done.DebugString());
  CHECK(done.status() == sv1::EVACUATION_STATUS_CANCELLED);
  CHECK(done.succeeded() == 1);
  CHECK(done.cancelled() == 2);
  CHECK(c.Where(kUuid) == Loc{{"fake-c", "running"}});
  CHECK(c.Where(kUuid2) == Loc{{"fake-a", "running"}});
  CHECK(c.Where(kUuid3) == Loc{{"fake-a", "running"}});
  CHECK(EvacuationMigrations(*c.api, done).size() == 1);
  auto finished = c.api->CancelEvacuation(cr, "ops");
  REQUIRE(finished.ok());  // cancelled: the same answer
  CHECK(finished->status() == sv1::EVACUATION_STATUS_CANCELLED);
  // An evacuation that completed: refused, naming its status.
  sv1::EvacuateHostRequest back;
  back.set_hostname("fake-c");
  back.set_destination("fake-a");
  back.set_requester("erin");
  auto b = c.api->EvacuateHost(back, "");
  REQUIRE(b.ok());
  const sv1::Evacuation b_done = WaitEvacuationDone(*c.api, b->id());
  CHECK(b_done.status() == sv1::EVACUATION_STATUS_COMPLETED);
  cr.set_evacuation_id(b->id());
  auto refused = c.api->CancelEvacuation(cr, "ops");
  CHECK(refused.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(refused.status().message(), "already finished (completed)"));
  cr.set_evacuation_id("not-a-uuid");
  CHECK(c.api->CancelEvacuation(cr, "ops").status().code() == absl::StatusCode::kInvalidArgument);
  cr.set_evacuation_id("00000000-0000-4000-8000-000000000000");
  CHECK(c.api->CancelEvacuation(cr, "ops").status().code() == absl::StatusCode::kNotFound);
}

TEST_CASE(
    "scheduler: replicas starting at once drive an evacuation one at a time; when its driver "
    "stops, the other takes it over after the lease, with its destination and options") {
  Cloud c(Replica("sched-1"), {"fake-a", "fake-b", "fake-c"});
  REQUIRE(c.drivers["fake-a"]->hypervisor().CreateDomain("fake-a", kUuid2, "web-2", 512).ok());
  REQUIRE(c.drivers["fake-a"]->hypervisor().CreateDomain("fake-a", kUuid3, "web-3", 512).ok());
  c.ReportAll();
  const sv1::Evacuation ev = StartEvacuationToC(c, absl::Seconds(2));
  // sched-1 stops mid-evacuation; two replicas start against the same database, each resuming
  // evacuations as a starting scheduler does.
  c.orch->Stop();
  c.api.reset();
  c.orch.reset();
  struct Scheduler {
    std::unique_ptr<Orchestrator> orch;
    std::unique_ptr<ApiCore> api;  // destroyed first
  };
  std::map<std::string, Scheduler> replicas;
  for (const std::string id : {"sched-2", "sched-3"}) {
    Scheduler& r = replicas[id];
    r.orch = std::make_unique<Orchestrator>(Replica(id), &c.stores->migrations(),
                                            &c.stores->hosts(), &c.stores->instances(), &c.agents);
    r.api =
        std::make_unique<ApiCore>(&c.stores->migrations(), &c.stores->hosts(),
                                  &c.stores->instances(), &c.stores->evacuations(), r.orch.get());
    r.orch->Start();
  }
  for (auto& [id, r] : replicas) r.api->ResumeEvacuations();
  auto evacuation = [&] {
    auto e = c.stores->evacuations().GetEvacuationByUuid(ev.id());
    REQUIRE(e.ok());
    return *e;
  };
  // Sampled at every look: the replicas driving it (at most one at any time).
  int most_drivers = 0;
  auto drivers = [&] {
    int n = 0;
    for (auto& [id, r] : replicas) n += r.api->RunningEvacuations();
    most_drivers = std::max(most_drivers, n);
    return n;
  };
  // One of them takes it over once sched-1's lease expired, and starts its second instance
  // (web-2: the items go in UUID order): until its transfer runs (on both hosts).
  std::string owner;
  REQUIRE(livemig::testing::WaitFor(
      [&] {
        drivers();
        owner = evacuation().owner;
        return replicas.count(owner) > 0 && c.Where(kUuid2).size() == 2;
      },
      absl::Seconds(60)));
  const std::string other = owner == "sched-2" ? "sched-3" : "sched-2";
  INFO("owner " << owner);
  CHECK(replicas[owner].api->RunningEvacuations() == 1);
  CHECK(replicas[other].api->RunningEvacuations() == 0);
  CHECK(drivers() == 1);
  CHECK(most_drivers == 1);
  // Its driver stops (its leases expire): the other replica takes the evacuation over (and the
  // migration in flight) and finishes it as asked.
  replicas[owner].orch->Stop();
  replicas.erase(owner);
  REQUIRE(livemig::testing::WaitFor(
      [&] {
        drivers();
        return evacuation().owner == other || evacuation().status != "running";
      },
      absl::Seconds(60)));
  const sv1::Evacuation done = WaitEvacuationDone(*replicas[other].api, ev.id());
  CHECK(most_drivers == 1);
  CheckEvacuatedToC(c, *replicas[other].api, done, 3);
}

TEST_CASE("scheduler: a failure at each step up to the transfer rolls back to the source") {
  for (const char* step : {"check_can_live_migrate_on_dest", "check_can_live_migrate_on_src",
                           "pre_live_migration", "live_migration", "transfer"}) {
    INFO(step);
    Cloud c;
    const std::string host = std::string(step) == "check_can_live_migrate_on_dest" ||
                                     std::string(step) == "pre_live_migration"
                                 ? "fake-b"
                                 : "fake-a";
    REQUIRE(c.drivers[host]->hypervisor().SetFailure(host, step, "injected", 10).ok());
    auto r = c.Migrate(kUuid);
    REQUIRE(r.ok());
    auto m = c.WaitTerminal(r->migration().id());
    CHECK(m.status() == v1::MIGRATION_STATUS_FAILED);
    CHECK(absl::StrContains(m.failure_reason(), "injected"));
    CHECK(c.Where() == Loc{{"fake-a", "running"}});
    CHECK(c.DbHost() == "fake-a");
    CHECK_FALSE(c.stores->instances().GetInstance(kUuid)->task_state.has_value());
  }
}

TEST_CASE("scheduler: a failure at each post step rolls forward to the destination") {
  for (const char* step : {"post_live_migration", "post_live_migration_at_destination"}) {
    INFO(step);
    Cloud c;
    const std::string host = std::string(step) == "post_live_migration" ? "fake-a" : "fake-b";
    REQUIRE(c.drivers[host]->hypervisor().SetFailure(host, step, "flaky", 2).ok());
    auto r = c.Migrate(kUuid);
    REQUIRE(r.ok());
    auto m = c.WaitTerminal(r->migration().id());
    CHECK(m.status() == v1::MIGRATION_STATUS_COMPLETED);
    CHECK(c.Where() == Loc{{"fake-b", "running"}});
    CHECK(c.DbHost() == "fake-b");
  }
}

// The orchestrator's timers run on its injected clock (OrchestratorOptions::clock): the
// roll-forward window (10 minutes) is tested here in a few seconds, on the minute.
TEST_CASE("scheduler: the roll-forward window ends on the injected clock, not a minute before") {
  FakeClock clock;
  OrchestratorOptions o;
  o.clock = &clock;
  REQUIRE(o.roll_forward_for == absl::Minutes(10));
  Cloud c(o);
  REQUIRE(c.drivers["fake-a"]
              ->hypervisor()
              .SetFailure("fake-a", "post_live_migration", "stuck", 1000000)
              .ok());
  const absl::Time real_start = absl::Now();
  auto r = c.Migrate(kUuid);
  REQUIRE(r.ok());
  const std::string id = r->migration().id();
  sv1::Migration last;
  // The post step's failed attempts ("rolling forward (retrying)") and the window's end.
  auto count = [&](const char* what) {
    auto m = c.api->GetMigration(id);
    if (!m.ok()) return -1;
    last = *m;
    int n = 0;
    for (const auto& e : m->events()) n += absl::StrContains(e.detail(), what);
    return n;
  };
  constexpr char kRetrying[] = "post step failed, rolling forward (retrying)";
  constexpr char kGaveUp[] = "roll-forward could not finish";
  // Up to the first failed post attempt, the clock moves on by each wait the state machine
  // makes (its progress polls), as time would.
  REQUIRE(livemig::testing::WaitFor(
      [&] {
        if (clock.Waiters() > 0) clock.Advance(absl::Milliseconds(20));
        return count(kRetrying) >= 1;
      },
      absl::Seconds(30)));
  INFO(last.DebugString());
  // It now waits out its backoff on the clock. 9 minutes on: retried, still rolling forward.
  REQUIRE(clock.AwaitWaiters(1, absl::Seconds(10)));
  const int before = count(kRetrying);
  clock.Advance(absl::Minutes(9));
  REQUIRE(livemig::testing::WaitFor([&] { return count(kRetrying) > before; }, absl::Seconds(10)));
  REQUIRE(clock.AwaitWaiters(1, absl::Seconds(10)));
  CHECK(count(kGaveUp) == 0);
  CHECK(last.status() == v1::MIGRATION_STATUS_POST_MIGRATING);
  // One minute and a second more: the window has passed; the next attempt gives up (error).
  clock.Advance(absl::Minutes(1) + absl::Seconds(1));
  CHECK(livemig::testing::WaitFor([&] { return count(kGaveUp) == 1; }, absl::Seconds(10)));
  for (const auto& e : last.events()) {
    if (absl::StrContains(e.detail(), kGaveUp)) CHECK(absl::StrContains(e.detail(), "stuck"));
  }
  // Ten minutes of the window took seconds of real time.
  CHECK(absl::Now() - real_start < absl::Seconds(60));
}

TEST_CASE("scheduler: abort while running cancels and leaves the VM on the source") {
  Cloud c;
  REQUIRE(c.drivers["fake-a"]->hypervisor().SetTransferDuration("fake-a", absl::Seconds(30)).ok());
  auto r = c.Migrate(kUuid);
  REQUIRE(r.ok());
  REQUIRE(livemig::testing::WaitFor(
      [&] {
        auto m = c.api->GetMigration(r->migration().id());
        return m.ok() && m->status() == v1::MIGRATION_STATUS_RUNNING;
      },
      absl::Seconds(10)));
  sv1::AbortMigrationRequest a;
  a.set_migration_id(r->migration().id());
  a.set_requester("dave");
  a.set_reason("maintenance window closed");
  REQUIRE(c.api->AbortMigration(a, "").ok());
  auto m = c.WaitTerminal(r->migration().id());
  CHECK(m.status() == v1::MIGRATION_STATUS_CANCELLED);
  CHECK(m.aborted_by() == "anonymous [dave]");
  // Said once, with the reason (it read "aborted by X — aborted by X").
  CHECK(m.failure_reason() == "aborted by anonymous [dave]: maintenance window closed");
  // The request is a note on the abort step, not a live_migration step that succeeded.
  bool request_noted = false;
  for (const auto& e : m.events()) {
    INFO(StepName(e.step()) << ": " << sv1::StepOutcome_Name(e.outcome()) << ": " << e.detail());
    if (e.step() == v1::MIGRATION_STEP_LIVE_MIGRATION) {
      CHECK(e.outcome() != sv1::STEP_OUTCOME_SUCCEEDED);
    }
    if (e.step() == v1::MIGRATION_STEP_ABORT &&
        absl::StrContains(e.detail(), "abort requested by anonymous [dave]")) {
      CHECK(e.outcome() == sv1::STEP_OUTCOME_NOTE);
      request_noted = true;
    }
  }
  CHECK(request_noted);
  CHECK(c.Where() == Loc{{"fake-a", "running"}});
  CHECK(c.api->AbortMigration(a, "").status().code() == absl::StatusCode::kFailedPrecondition);
}

// The destination refuses its rollback because its copy may be the only running one, while the
// source runs the domain too: two running copies. Before, the scheduler decided from the refusal's
// text ("only running copy") and rolled forward, whose post step tears down the source's copy
// without asking whether it runs. Now the reason is structured (ERROR_REASON_ONLY_RUNNING_COPY,
// across gRPC in the status details), the source is asked, its copy paused at once, the
// migration set to error with an alert, and /metrics counts it.
TEST_CASE("scheduler: a rollback that finds the domain running on both hosts pauses the source") {
  Cloud c;
  auto& hv = c.drivers["fake-a"]->hypervisor();
  REQUIRE(hv.SetTransferDuration("fake-a", absl::Milliseconds(300)).ok());
  REQUIRE(hv.SetFailure("fake-a", "transfer", "the link went down").ok());
  REQUIRE(hv.SetFailure("fake-b", "rollback_live_migration_at_destination",
                        "domain runs on the destination fake-b: it may be the only running copy", 1,
                        absl::StatusCode::kFailedPrecondition, v1::ERROR_REASON_ONLY_RUNNING_COPY)
              .ok());
  auto r = c.Migrate(kUuid);
  REQUIRE(r.ok());
  sv1::Migration m;
  REQUIRE(livemig::testing::WaitFor(
      [&] {
        auto g = c.api->GetMigration(r->migration().id());
        if (g.ok()) m = *g;
        return g.ok() && m.status() == v1::MIGRATION_STATUS_ERROR;
      },
      absl::Seconds(30)));
  INFO(m.DebugString());
  CHECK(absl::StrContains(m.failure_reason(), "ALERT"));
  CHECK(absl::StrContains(m.failure_reason(), "runs on both fake-a and fake-b"));
  CHECK(absl::StrContains(m.failure_reason(), "paused on the source"));
  bool alert_event = false;
  for (const auto& e : m.events()) {
    alert_event = alert_event || e.step() == v1::MIGRATION_STEP_TWO_RUNNING_COPIES;
  }
  CHECK(alert_event);
  // The source's copy is paused, nothing was torn down.
  CHECK(c.Where() == Loc{{"fake-a", "paused"}});
  auto metrics = c.api->MetricsText();
  REQUIRE(metrics.ok());
  CHECK(absl::StrContains(*metrics, "livemig_two_running_copies_detected_total 1\n"));
}

// A migration in error whose source holds the domain paused (as force-complete's pause leaves
// it) with no job, and nothing on the destination. Before, the reconciler marked it failed "(the
// VM runs on the source)" and left the guest paused; now it rolls back again, which resumes it.
TEST_CASE("scheduler: the reconciler resumes a paused source before it calls a migration failed") {
  Cloud c;
  auto& hv = c.drivers["fake-a"]->hypervisor();
  REQUIRE(hv.SetTransferDuration("fake-a", absl::Seconds(3)).ok());
  REQUIRE(hv.SetFailure("fake-a", "transfer", "the link went down").ok());
  REQUIRE(hv.SetFailure("fake-a", "rollback_live_migration", "the agent lost libvirt", 1,
                        absl::StatusCode::kInternal)
              .ok());
  auto r = c.Migrate(kUuid);
  REQUIRE(r.ok());
  REQUIRE(livemig::testing::WaitFor(
      [&] {
        auto g = c.api->GetMigration(r->migration().id());
        return g.ok() && g->status() == v1::MIGRATION_STATUS_RUNNING;
      },
      absl::Seconds(10)));
  // Paused during the transfer, by something the failed transfer does not undo (as the final
  // phase of a transfer or force-complete's pause on a hypervisor that leaves it so).
  REQUIRE(hv.Mutate([](nlohmann::json& st, bool* changed) {
              st["hosts"]["fake-a"]["domains"][kUuid]["state"] = "paused";
              *changed = true;
              return absl::OkStatus();
            }).ok());
  auto m = c.WaitTerminal(r->migration().id());
  INFO(m.DebugString());
  CHECK(m.status() == v1::MIGRATION_STATUS_FAILED);
  CHECK(absl::StrContains(m.failure_reason(), "rolled back again"));
  CHECK(c.Where() == Loc{{"fake-a", "running"}});
}

TEST_CASE("scheduler: beyond the limits a migration waits as queued, then runs") {
  OrchestratorOptions o;
  o.max_outbound_per_host = 1;
  Cloud c(o);
  REQUIRE(c.drivers["fake-a"]->hypervisor().CreateDomain("fake-a", kUuid2, "web-2", 512).ok());
  c.ReportAll();
  REQUIRE(c.drivers["fake-a"]->hypervisor().SetTransferDuration("fake-a", absl::Seconds(1)).ok());
  auto r1 = c.Migrate(kUuid);
  REQUIRE(r1.ok());
  REQUIRE(livemig::testing::WaitFor(
      [&] {
        auto m = c.api->GetMigration(r1->migration().id());
        return m.ok() && m->status() == v1::MIGRATION_STATUS_RUNNING;
      },
      absl::Seconds(10)));
  auto r2 = c.Migrate(kUuid2);
  REQUIRE(r2.ok());
  REQUIRE(livemig::testing::WaitFor(
      [&] {
        auto m = c.api->GetMigration(r2->migration().id());
        return m.ok() && m->status() == v1::MIGRATION_STATUS_QUEUED;
      },
      absl::Seconds(10)));
  CHECK(c.WaitTerminal(r1->migration().id()).status() == v1::MIGRATION_STATUS_COMPLETED);
  CHECK(c.WaitTerminal(r2->migration().id()).status() == v1::MIGRATION_STATUS_COMPLETED);
  CHECK(c.Where(kUuid2) == Loc{{"fake-b", "running"}});
}

TEST_CASE("scheduler: no destination given: the best host is chosen; dry run changes nothing") {
  Cloud c({}, {"fake-a", "fake-b", "fake-c"});
  sv1::CheckMigrationRequest check;
  check.set_instance_uuid(kUuid);
  auto dry = c.api->CheckMigration(check);
  REQUIRE(dry.ok());
  CHECK(dry->passed());
  CHECK(dry->hosts_size() == 2);
  CHECK_FALSE(dry->chosen_host().empty());
  CHECK(c.api->ListMigrations({})->migrations().empty());
  auto r = c.Migrate(kUuid, "");
  REQUIRE(r.ok());
  auto m = c.WaitTerminal(r->migration().id());
  CHECK(m.status() == v1::MIGRATION_STATUS_COMPLETED);
  CHECK((m.dest_host() == "fake-b" || m.dest_host() == "fake-c"));
  CHECK(c.DbHost() == m.dest_host());
}

// An agent client factory over another that counts the calls per host and RPC, and makes the
// agents of "hung" hosts hang: their calls answer nothing until the caller's deadline (the
// thread's ScopedAgentDeadline, as a gRPC call would end by it), at most `hang_cap`.
class ProbeAgents : public AgentClientFactory {
 public:
  explicit ProbeAgents(AgentClientFactory* inner) : inner_(inner) {}
  ~ProbeAgents() override { ReleaseAll(); }
  std::shared_ptr<AgentClient> ForHost(const std::string& host,
                                       const std::string& address) override {
    return std::make_shared<Client>(this, host, inner_->ForHost(host, address));
  }
  void Hang(const std::string& host) {
    absl::MutexLock l(&mu_);
    hung_.insert(host);
  }
  // The next `n` calls of `rpc` to `host` fail at once with Unavailable (an agent restarting).
  void FailNext(const std::string& host, const std::string& rpc, int n) {
    absl::MutexLock l(&mu_);
    failing_[{host, rpc}] = n;
  }
  // Ends every hang at once (the test's teardown).
  void ReleaseAll() {
    absl::MutexLock l(&mu_);
    released_ = true;
  }
  // The hosts that got `rpc`, in the order of their first call.
  std::vector<std::string> Asked(const std::string& rpc) {
    absl::MutexLock l(&mu_);
    std::vector<std::string> out;
    for (const auto& [host, name] : calls_) {
      if (name == rpc && std::find(out.begin(), out.end(), host) == out.end()) out.push_back(host);
    }
    return out;
  }
  int Calls(const std::string& rpc) {
    absl::MutexLock l(&mu_);
    return static_cast<int>(std::count_if(calls_.begin(), calls_.end(),
                                          [&](const auto& c) { return c.second == rpc; }));
  }
  // The migration ids the calls carried.
  std::set<std::string> Ids() {
    absl::MutexLock l(&mu_);
    return ids_;
  }
  // The longest deadline a call was given, from its start (InfiniteDuration without one).
  absl::Duration LongestBudget() {
    absl::MutexLock l(&mu_);
    return longest_budget_;
  }
  // The most calls hanging at once, as the hung agents saw them.
  int MostHanging() {
    absl::MutexLock l(&mu_);
    return most_hanging_;
  }
  absl::Duration hang_cap = absl::Seconds(120);

 private:
  absl::Status Enter(const std::string& host, const std::string& rpc,
                     const std::string& migration_id) {
    const absl::Time now = absl::Now();
    const absl::Time deadline = ScopedAgentDeadline::Current();
    absl::MutexLock l(&mu_);
    calls_.emplace_back(host, rpc);
    if (!migration_id.empty()) ids_.insert(migration_id);
    longest_budget_ = std::max(longest_budget_, deadline - now);
    if (int& left = failing_[{host, rpc}]; left > 0) {
      --left;
      return absl::UnavailableError(absl::StrCat(rpc, " on ", host, ": connection refused"));
    }
    if (!hung_.count(host)) return absl::OkStatus();
    ++hanging_;
    most_hanging_ = std::max(most_hanging_, hanging_);
    mu_.AwaitWithDeadline(absl::Condition(&released_), std::min(deadline, now + hang_cap));
    --hanging_;
    return absl::DeadlineExceededError(absl::StrCat(rpc, " on ", host, ": Deadline Exceeded"));
  }
  class Client : public AgentClient {
   public:
    Client(ProbeAgents* probe, std::string host, std::shared_ptr<AgentClient> inner)
        : probe_(probe), host_(std::move(host)), inner_(std::move(inner)) {}
    absl::StatusOr<cv1::GetHostInfoResponse> GetHostInfo() override {
      if (absl::Status s = probe_->Enter(host_, "GetHostInfo", ""); !s.ok()) return s;
      return inner_->GetHostInfo();
    }
#define LIVEMIG_PROBE_RPC(Name, Req, Resp, step)                                           \
  absl::StatusOr<Resp> Name(const Req& r) override {                                       \
    if (absl::Status s = probe_->Enter(host_, #Name, r.migration_id()); !s.ok()) return s; \
    return inner_->Name(r);                                                                \
  }
    LIVEMIG_AGENT_RPCS(LIVEMIG_PROBE_RPC)
#undef LIVEMIG_PROBE_RPC

   private:
    ProbeAgents* probe_;
    const std::string host_;
    std::shared_ptr<AgentClient> inner_;
  };

  AgentClientFactory* inner_;
  absl::Mutex mu_;
  std::set<std::string> hung_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<std::string, std::string>, int> failing_ ABSL_GUARDED_BY(mu_);
  bool released_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::pair<std::string, std::string>> calls_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> ids_ ABSL_GUARDED_BY(mu_);
  absl::Duration longest_budget_ ABSL_GUARDED_BY(mu_) = -absl::InfiniteDuration();
  int hanging_ ABSL_GUARDED_BY(mu_) = 0;
  int most_hanging_ ABSL_GUARDED_BY(mu_) = 0;
};

// The check named `name` of `hc` ("" when absent).
std::string CheckReason(const sv1::HostCheck& hc, const std::string& name) {
  for (const auto& c : hc.checks()) {
    if (c.name() == name && !c.passed()) return c.reason().empty() ? "(no reason)" : c.reason();
  }
  return "";
}

// One retry policy in one layer (OrchestratorOptions::retry, common/retry.h): a step whose
// agent is unreachable is tried max_attempts times in all (the agent client does not retry
// underneath, which made 12), and one that comes back within them goes on.
TEST_CASE("scheduler: a step whose agent is unreachable is tried max_attempts times in all") {
  Cloud c;
  ProbeAgents probe(&c.agents);
  c.api.reset();
  c.orch.reset();
  c.agent_factory = &probe;
  OrchestratorOptions o;
  o.scheduler_id = "sched-retry";
  o.dispatch_interval = absl::Milliseconds(20);
  o.progress_poll = absl::Milliseconds(20);
  o.retry.initial_backoff = absl::Milliseconds(10);
  REQUIRE(o.retry.max_attempts == 4);
  c.Start(o);

  probe.FailNext("fake-b", "CheckCanLiveMigrateOnDest", 100);
  auto r = c.Migrate(kUuid);
  REQUIRE(r.ok());
  auto m = c.WaitTerminal(r->migration().id());
  CHECK(m.status() == v1::MIGRATION_STATUS_FAILED);
  CHECK(absl::StrContains(m.failure_reason(), "connection refused"));
  CHECK(probe.Calls("CheckCanLiveMigrateOnDest") == 4);
  CHECK(c.Where() == Loc{{"fake-a", "running"}});

  // Back after two refusals: the third attempt passes and the migration completes.
  probe.FailNext("fake-b", "CheckCanLiveMigrateOnDest", 2);
  auto again = c.Migrate(kUuid);
  REQUIRE(again.ok());
  CHECK(c.WaitTerminal(again->migration().id()).status() == v1::MIGRATION_STATUS_COMPLETED);
  CHECK(probe.Calls("CheckCanLiveMigrateOnDest") == 4 + 3);
  CHECK(c.Where() == Loc{{"fake-b", "running"}});
}

TEST_CASE("scheduler: a dry run asks the agents of as many candidates as a migration would") {
  Cloud c({}, {"fake-a", "fake-b", "fake-c", "fake-d", "fake-e"});
  ProbeAgents probe(&c.agents);
  OrchestratorOptions o;
  o.scheduler_id = "sched-dry";
  REQUIRE(o.destination_attempts == 3);  // the migration's own count (Preparing)
  Orchestrator orch(o, &c.stores->migrations(), &c.stores->hosts(), &c.stores->instances(), &probe);
  sv1::CheckMigrationRequest check;
  check.set_instance_uuid(kUuid);
  auto dry = orch.CheckMigration(check);
  REQUIRE(dry.ok());
  INFO(dry->DebugString());
  // Four hosts pass the scheduler's checks; the agents of the best three only were asked.
  REQUIRE(dry->hosts_size() == 4);
  const std::vector<std::string> asked = probe.Asked("CheckCanLiveMigrateOnDest");
  printf("dry run over 4 candidates: destination checks on %s; source checks %d; describes %d\n",
         absl::StrJoin(asked, ",").c_str(), probe.Calls("CheckCanLiveMigrateOnSrc"),
         probe.Calls("DescribeInstance"));
  CHECK(asked ==
        std::vector<std::string>{dry->hosts(0).host(), dry->hosts(1).host(), dry->hosts(2).host()});
  CHECK(probe.Calls("CheckCanLiveMigrateOnDest") == 3);
  CHECK(probe.Calls("CheckCanLiveMigrateOnSrc") == 3);
  CHECK(probe.Calls("DescribeInstance") == 1);
  for (int i = 0; i < 3; ++i) CHECK(dry->hosts(i).passed());
  CHECK_FALSE(dry->hosts(3).passed());
  CHECK(absl::StrContains(CheckReason(dry->hosts(3), "agent_checks"),
                          "asks the agents of its best 3 candidates only"));
  CHECK(dry->passed());
  CHECK(dry->chosen_host() == dry->hosts(0).host());
  // Every call's deadline is within the dry run's.
  CHECK(probe.LongestBudget() <= o.dry_run_deadline);
  CHECK(probe.LongestBudget() > absl::ZeroDuration());
}

using livemig::testing::SharedVolumeDisks;

// Agents whose DescribeInstance answers carry SharedVolumeDisks(), as a libvirt source's would.
class DiskAgents : public AgentClientFactory {
 public:
  explicit DiskAgents(AgentClientFactory* inner) : inner_(inner) {}
  std::shared_ptr<AgentClient> ForHost(const std::string& host,
                                       const std::string& address) override {
    return std::make_shared<Client>(inner_->ForHost(host, address));
  }

 private:
  class Client : public AgentClient {
   public:
    explicit Client(std::shared_ptr<AgentClient> inner) : inner_(std::move(inner)) {}
    absl::StatusOr<cv1::GetHostInfoResponse> GetHostInfo() override {
      return inner_->GetHostInfo();
    }
    // Every RPC passes through; DescribeInstance's answer gains the disks.
#define LIVEMIG_DISK_RPC(Name, Req, Resp, step) \
  absl::StatusOr<Resp> Name(const Req& r) override { return WithDisks(inner_->Name(r)); }
    LIVEMIG_AGENT_RPCS(LIVEMIG_DISK_RPC)
#undef LIVEMIG_DISK_RPC

   private:
    template <typename T>
    static T WithDisks(T answer) {
      return answer;
    }
    static absl::StatusOr<cv1::DescribeInstanceResponse> WithDisks(
        absl::StatusOr<cv1::DescribeInstanceResponse> d) {
      if (d.ok() && d->present()) *d->mutable_domain()->mutable_disks() = SharedVolumeDisks();
      return d;
    }
    std::shared_ptr<AgentClient> inner_;
  };
  AgentClientFactory* inner_;
};

// Issue 21: operators see each instance's disks (kind and identity) in GetInstance, the list
// and the dry run.
TEST_CASE("scheduler: reported disks reach GetInstance and the list; the dry run describes them") {
  Cloud c;
  const auto want = SharedVolumeDisks();
  auto same = [&](const google::protobuf::RepeatedPtrField<v1::DomainDisk>& got) {
    if (got.size() != want.size()) return false;
    for (int i = 0; i < got.size(); ++i) {
      if (got[i].SerializeAsString() != want[i].SerializeAsString()) return false;
    }
    return true;
  };
  // Before a report with disks: none.
  auto before = c.api->GetInstance(kUuid);
  REQUIRE(before.ok());
  CHECK(before->disks().empty());

  // fake-a's report, its domain's disks as a libvirt host reports them, through the convert code.
  auto info = c.cores["fake-a"]->GetHostInfo();
  REQUIRE(info.ok());
  v1::HostInventory inv = info->inventory();
  inv.set_agent_address("local:fake-a");
  inv.set_report_seq(++c.seq);
  inv.mutable_agent_started_at()->set_seconds(1);
  bool found = false;
  for (auto& d : *inv.mutable_domains()) {
    if (d.uuid() != kUuid) continue;
    *d.mutable_disks() = want;
    found = true;
  }
  REQUIRE(found);
  REQUIRE(c.stores->hosts().ApplyReport(ReportFromInventory(inv)).ok());
  auto got = c.api->GetInstance(kUuid);
  REQUIRE(got.ok());
  INFO(got->DebugString());
  CHECK(same(got->disks()));
  CHECK(got->disks(0).kind() == v1::DISK_KIND_ISCSI);
  CHECK(got->disks(0).iscsi_lun() == 1);
  CHECK(got->disks(1).drbd_resource() == "r0");
  sv1::ListInstancesRequest lr;
  lr.set_host("fake-a");
  auto list = c.api->ListInstances(lr);
  REQUIRE(list.ok());
  REQUIRE(list->instances_size() == 1);
  CHECK(same(list->instances(0).disks()));
  // The next report without them (the FakeDriver's own) replaces them.
  c.ReportAll();
  CHECK(c.api->GetInstance(kUuid)->disks().empty());

  // The dry run returns what the source describes now.
  DiskAgents agents(&c.agents);
  OrchestratorOptions o;
  o.scheduler_id = "sched-dry";
  Orchestrator orch(o, &c.stores->migrations(), &c.stores->hosts(), &c.stores->instances(),
                    &agents);
  sv1::CheckMigrationRequest check;
  check.set_instance_uuid(kUuid);
  auto dry = orch.CheckMigration(check);
  REQUIRE(dry.ok());
  INFO(dry->DebugString());
  CHECK(dry->passed());
  CHECK(same(dry->instance_disks()));
  // No candidate passes the scheduler's checks: the source is not asked, so no disks.
  sv1::SetHostEnabledRequest dis;
  dis.set_hostname("fake-b");
  dis.set_enabled(false);
  dis.set_reason("maintenance");
  REQUIRE(c.api->SetHostEnabled(dis, "bob").ok());
  dry = orch.CheckMigration(check);
  REQUIRE(dry.ok());
  CHECK_FALSE(dry->passed());
  CHECK(dry->instance_disks().empty());
}

TEST_CASE("scheduler: a dry run with agents that hang answers within its deadline, with reasons") {
  Cloud c({}, {"fake-a", "fake-b", "fake-c", "fake-d", "fake-e"});
  OrchestratorOptions o;
  o.scheduler_id = "sched-dry";
  o.dry_run_deadline = absl::Seconds(4);
  sv1::CheckMigrationRequest check;
  check.set_instance_uuid(kUuid);
  // The dry run through `orch`, timed (`took`), printed as "dry run, <what>: answered in ...",
  // and answered within its deadline.
  absl::Duration took;
  auto timed_dry_run = [&](Orchestrator& orch, const char* what) {
    const absl::Time t0 = absl::Now();
    auto dry = orch.CheckMigration(check);
    took = absl::Now() - t0;
    REQUIRE(dry.ok());
    INFO(dry->DebugString());
    printf("dry run, %s: answered in %.2f s (deadline %.0f s)\n", what, absl::ToDoubleSeconds(took),
           absl::ToDoubleSeconds(o.dry_run_deadline));
    CHECK(took <= o.dry_run_deadline + absl::Milliseconds(500));
    return dry;
  };

  SECTION("every destination agent hangs") {
    ProbeAgents probe(&c.agents);
    for (const char* h : {"fake-b", "fake-c", "fake-d", "fake-e"}) probe.Hang(h);
    Orchestrator orch(o, &c.stores->migrations(), &c.stores->hosts(), &c.stores->instances(),
                      &probe);
    auto dry = timed_dry_run(orch, "3 destination agents hanging");
    INFO(dry->DebugString());
    // The hung calls did wait their shares (not failed at once).
    CHECK(took >= absl::Seconds(1));
    CHECK_FALSE(dry->passed());
    CHECK(dry->chosen_host().empty());
    REQUIRE(dry->hosts_size() == 4);
    CHECK(probe.Asked("CheckCanLiveMigrateOnDest").size() == 3);
    for (int i = 0; i < 3; ++i) {
      INFO(dry->hosts(i).host());
      const std::string reason = CheckReason(dry->hosts(i), "agent_dest");
      CHECK(absl::StrContains(reason, "Deadline Exceeded"));
      CHECK(absl::StrContains(reason, "share of the dry run's 4s deadline"));
    }
    CHECK(absl::StrContains(CheckReason(dry->hosts(3), "agent_checks"), "not checked"));
  }
  SECTION("the source agent hangs") {
    ProbeAgents probe(&c.agents);
    probe.Hang("fake-a");
    Orchestrator orch(o, &c.stores->migrations(), &c.stores->hosts(), &c.stores->instances(),
                      &probe);
    auto dry = timed_dry_run(orch, "the source agent hanging");
    INFO(dry->DebugString());
    CHECK_FALSE(dry->passed());
    CHECK(probe.Calls("CheckCanLiveMigrateOnDest") == 0);
    for (int i = 0; i < 3; ++i) {
      INFO(dry->hosts(i).host());
      const std::string reason = CheckReason(dry->hosts(i), "agent_source");
      CHECK(absl::StrContains(reason, "cannot describe the instance"));
      CHECK(absl::StrContains(reason, "Deadline Exceeded"));
    }
  }
}

TEST_CASE("scheduler: at most max_concurrent_dry_runs dry runs run at once, the rest refused") {
  Cloud c({}, {"fake-a", "fake-b"});
  ProbeAgents probe(&c.agents);
  probe.Hang("fake-b");  // each dry run waits there for its share of the deadline
  OrchestratorOptions o;
  o.scheduler_id = "sched-dry";
  o.dry_run_deadline = absl::Seconds(6);    // the hung destination holds each for ~2 s
  REQUIRE(o.max_concurrent_dry_runs == 4);  // the default
  Orchestrator orch(o, &c.stores->migrations(), &c.stores->hosts(), &c.stores->instances(), &probe);
  sv1::CheckMigrationRequest check;
  check.set_instance_uuid(kUuid);
  constexpr int kAtOnce = 20;
  std::vector<absl::StatusOr<sv1::CheckMigrationResponse>> out(kAtOnce,
                                                               absl::UnknownError("not run"));
  std::vector<absl::Duration> took(kAtOnce);
  absl::Mutex go_mu;
  bool go = false;
  std::vector<std::thread> threads;
  for (int i = 0; i < kAtOnce; ++i) {
    threads.emplace_back([&, i] {
      {
        absl::MutexLock l(&go_mu);
        go_mu.Await(absl::Condition(&go));
      }
      const absl::Time t0 = absl::Now();
      out[i] = orch.CheckMigration(check);
      took[i] = absl::Now() - t0;
    });
  }
  {
    absl::MutexLock l(&go_mu);
    go = true;
  }
  for (auto& t : threads) t.join();
  int ran = 0, refused = 0;
  absl::Duration slowest_refusal = absl::ZeroDuration();
  for (int i = 0; i < kAtOnce; ++i) {
    if (out[i].ok()) {
      ++ran;
      CHECK_FALSE(out[i]->passed());  // fake-b's agent hung
      continue;
    }
    INFO(out[i].status().ToString());
    CHECK(out[i].status().code() == absl::StatusCode::kResourceExhausted);
    CHECK(absl::StrContains(out[i].status().message(), "--dry-run-max-concurrent 4"));
    ++refused;
    slowest_refusal = std::max(slowest_refusal, took[i]);
  }
  const Orchestrator::DryRunCounts counts = orch.DryRuns();
  printf(
      "%d dry runs at once, the destination's agent hanging: %d ran, %d refused (the slowest "
      "refusal in %.1f ms); the agent saw at most %d calls at once; counts: most running %d, "
      "admitted %lld, refused %lld\n",
      kAtOnce, ran, refused, absl::ToDoubleMilliseconds(slowest_refusal), probe.MostHanging(),
      counts.most_running, static_cast<long long>(counts.admitted),
      static_cast<long long>(counts.refused));
  // All arrived while the first 4 waited for the hung agent: exactly 4 ran.
  CHECK(ran == 4);
  CHECK(refused == kAtOnce - 4);
  CHECK(probe.MostHanging() == 4);
  CHECK(slowest_refusal < absl::Seconds(1));
  CHECK(counts.running == 0);
  CHECK(counts.most_running == 4);
  CHECK(counts.admitted == 4);
  CHECK(counts.refused == kAtOnce - 4);
  // The slots are free again.
  probe.ReleaseAll();
  auto again = orch.CheckMigration(check);
  INFO(again.status().ToString());
  CHECK(again.ok());
}

// The steps agent `core` has recorded for migration `id` (none: it keeps no record of it).
std::vector<int> StepsRecorded(agent::AgentCore& core, const std::string& id) {
  cv1::DescribeInstanceRequest di;
  di.set_instance_uuid(kUuid);
  di.set_migration_id(id);
  auto d = core.DescribeInstance(di);
  REQUIRE(d.ok());
  return {d->steps_done().begin(), d->steps_done().end()};
}

TEST_CASE("scheduler: the agents hold no record of a dry run") {
  Cloud c;
  ProbeAgents probe(&c.agents);
  OrchestratorOptions o;
  o.scheduler_id = "sched-dry";
  Orchestrator orch(o, &c.stores->migrations(), &c.stores->hosts(), &c.stores->instances(), &probe);
  sv1::CheckMigrationRequest check;
  check.set_instance_uuid(kUuid);
  for (int i = 0; i < 3; ++i) {
    auto dry = orch.CheckMigration(check);
    REQUIRE(dry.ok());
    INFO(dry->DebugString());
    REQUIRE(dry->passed());  // the destination's and the source's checks both ran
  }
  REQUIRE(probe.Calls("CheckCanLiveMigrateOnDest") == 3);
  REQUIRE(probe.Calls("CheckCanLiveMigrateOnSrc") == 3);
  REQUIRE(probe.Calls("CheckCanLiveMigrateOnDestCleanup") == 3);
  const std::set<std::string> ids = probe.Ids();
  REQUIRE(ids.size() == 3);  // a throwaway id per dry run
  for (const std::string& id : ids) {
    for (const auto& [h, core] : c.cores) {
      INFO(h << " " << id);
      CHECK(StepsRecorded(*core, id).empty());
    }
  }
  // No probe file is left on the shared instance path either.
  auto left = livemig::testing::RunCommand(
      absl::StrCat("find ", c.state, " -name '.livemig-probe-*' | wc -l"));
  REQUIRE(left.ok());
  CHECK(absl::StripAsciiWhitespace(*left) == "0");
  // A dry run may not borrow a migration's id: the agent keeps that record as it is.
  cv1::CheckCanLiveMigrateOnDestRequest d;
  d.set_migration_id("real-migration-1");
  d.set_instance_uuid(kUuid);
  d.set_source_host("fake-a");
  d.set_dest_host("fake-b");
  cv1::DescribeInstanceRequest di;
  di.set_instance_uuid(kUuid);
  auto desc = c.cores["fake-a"]->DescribeInstance(di);
  REQUIRE(desc.ok());
  *d.mutable_instance() = desc->domain();
  REQUIRE(c.cores["fake-b"]->CheckCanLiveMigrateOnDest(d).ok());
  const std::vector<int> recorded = {v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_DEST};
  REQUIRE(StepsRecorded(*c.cores["fake-b"], "real-migration-1") == recorded);
  d.set_dry_run(true);
  auto again = c.cores["fake-b"]->CheckCanLiveMigrateOnDest(d);
  CHECK(again.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(StepsRecorded(*c.cores["fake-b"], "real-migration-1") == recorded);
}

TEST_CASE("scheduler: killed mid-transfer, another scheduler takes over and finishes") {
  OrchestratorOptions o;
  o.lease = absl::Seconds(1);
  o.scheduler_id = "sched-1";
  Cloud c(o);
  REQUIRE(c.drivers["fake-a"]->hypervisor().SetTransferDuration("fake-a", absl::Seconds(3)).ok());
  auto r = c.Migrate(kUuid);
  REQUIRE(r.ok());
  // Running, and the transfer started on the hypervisor (the destination holds the incoming
  // domain): status running alone is written just before the transfer is started, and a
  // scheduler stopped in between never starts it (the takeover then rightly rolls back).
  REQUIRE(livemig::testing::WaitFor(
      [&] {
        auto m = c.api->GetMigration(r->migration().id());
        return m.ok() && m->status() == v1::MIGRATION_STATUS_RUNNING && c.Where().size() == 2;
      },
      absl::Seconds(10)));
  c.orch->Stop();  // the first scheduler is gone; its lease expires
  c.api.reset();
  o.scheduler_id = "sched-2";
  o.dispatch_interval = absl::Milliseconds(20);
  o.progress_poll = absl::Milliseconds(20);
  c.Start(o);
  auto m = c.WaitTerminal(r->migration().id());
  CHECK(m.status() == v1::MIGRATION_STATUS_COMPLETED);
  CHECK(c.Where() == Loc{{"fake-b", "running"}});
  CHECK(c.DbHost() == "fake-b");
}

TEST_CASE(
    "scheduler (Xen): after a takeover, a half-received destination domain paused with reason "
    "user is rolled back, and the VM stays on the source") {
  OrchestratorOptions o;
  o.lease = absl::Seconds(1);
  o.scheduler_id = "sched-1";
  Cloud c(o, {"fake-a", "fake-b"}, nullptr,
          [](driver::FakeDriver::Options& fo) { fo.profile = "fake-libxl"; });
  REQUIRE(c.drivers["fake-a"]->hypervisor().SetTransferDuration("fake-a", absl::Seconds(30)).ok());
  auto r = c.Migrate(kUuid);
  REQUIRE(r.ok());
  REQUIRE(livemig::testing::WaitFor([&] { return c.Where().size() == 2; }, absl::Seconds(10)));
  c.orch->Stop();  // the first scheduler is gone; its lease expires
  c.api.reset();
  // Meanwhile the transfer fails and libxl leaves the incoming domain behind on the destination
  // (paused, reason "user"): the source runs the VM with no job.
  REQUIRE(c.drivers["fake-a"]
              ->hypervisor()
              .Mutate([](nlohmann::json& st, bool* changed) {
                for (auto& [id, t] : st["transfers"].items()) {
                  if (t["state"] != "running") continue;
                  t["state"] = "failed";
                  t["error"] = "libxenlight failed to restore domain";
                  t["finished_ms"] = absl::ToUnixMillis(absl::Now());
                  *changed = true;
                }
                return absl::OkStatus();
              })
              .ok());
  REQUIRE(c.Where() == Loc{{"fake-a", "running"}, {"fake-b", "incoming"}});
  auto half = c.drivers["fake-b"]->DescribeDomain(kUuid);
  REQUIRE(half.ok());
  REQUIRE(half->has_value());
  CHECK((*half)->state() == v1::DOMAIN_STATE_PAUSED);
  CHECK((*half)->state_reason() == "user");
  o.scheduler_id = "sched-2";
  o.dispatch_interval = absl::Milliseconds(20);
  o.progress_poll = absl::Milliseconds(20);
  c.Start(o);
  auto m = c.WaitTerminal(r->migration().id());
  INFO(m.failure_reason());
  CHECK(m.status() == v1::MIGRATION_STATUS_FAILED);
  CHECK(c.Where() == Loc{{"fake-a", "running"}});
  CHECK(c.DbHost() == "fake-a");
}

TEST_CASE(
    "scheduler (Xen): a PV guest's migration to a host without shadow paging fails in the "
    "checks, with the reason and the ways out; a PVH guest's completes") {
  // fake-b runs Xen without shadow paging (Debian 12's 4.17.7 security build, XSA-495).
  Cloud c(
      {}, {"fake-a", "fake-b"},
      [](driver::FakeDriver::Options& fo) { fo.xen_virt_caps = "pv hvm hap gnttab-v1 gnttab-v2"; },
      [](driver::FakeDriver::Options& fo) { fo.profile = "fake-libxl"; });
  const std::string want =
      "instance web-1 is a PV guest and host fake-b runs Xen without shadow paging (xl info "
      "virt_caps: pv hvm hap gnttab-v1 gnttab-v2): PV live migration needs log-dirty on shadow "
      "paging. Ways out: boot fake-b with a Xen built with shadow paging (CONFIG_SHADOW_PAGING=y, "
      "e.g. Debian's 4.17.5 from bookworm), or run the guest as PVH or HVM, which migrate on HAP.";
  // The hosts' paging modes as the scheduler stored them from the reports (no schema change: the
  // capabilities are stored whole).
  auto host_b = c.api->GetHost("fake-b");
  REQUIRE(host_b.ok());
  const v1::BackendCapabilities& caps_b = host_b->inventory().capabilities();
  CHECK(absl::StrJoin(caps_b.xen_virt_caps(), " ") == "pv hvm hap gnttab-v1 gnttab-v2");
  CHECK(caps_b.has_pv_live_migration());
  CHECK_FALSE(caps_b.pv_live_migration());
  auto host_a = c.api->GetHost("fake-a");
  REQUIRE(host_a.ok());
  CHECK(host_a->inventory().capabilities().pv_live_migration());
  // The dry run lists the check, failed, on fake-b.
  sv1::CheckMigrationRequest check;
  check.set_instance_uuid(kUuid);
  check.set_destination("fake-b");
  auto dry = c.api->CheckMigration(check);
  REQUIRE(dry.ok());
  CHECK_FALSE(dry->passed());
  bool listed = false;
  for (const auto& h : dry->hosts()) {
    for (const auto& chk : h.checks()) {
      if (chk.name() != "xen_pv_shadow_paging") continue;
      listed = true;
      CHECK(chk.host() == "fake-b");
      CHECK_FALSE(chk.passed());
      CHECK(chk.reason() == want);
    }
  }
  CHECK(listed);
  // The migration: failed before any transfer, the VM still on fake-a.
  auto r = c.Migrate(kUuid);
  REQUIRE(r.ok());
  auto m = c.WaitTerminal(r->migration().id());
  CHECK(m.status() == v1::MIGRATION_STATUS_FAILED);
  CHECK(m.failure_reason() == want);
  CHECK(c.Where() == Loc{{"fake-a", "running"}});
  CHECK(c.DbHost() == "fake-a");
  for (const auto& e : m.events()) {
    CHECK(StepName(e.step()) != "live_migration");  // no transfer started
  }
  auto journal = c.drivers["fake-a"]->hypervisor().Journal();
  REQUIRE(journal.ok());
  for (const auto& e : *journal) CHECK(e.step != "live_migration");

  // A PVH guest on the same hosts migrates.
  REQUIRE(c.drivers["fake-a"]
              ->hypervisor()
              .CreateDomain("fake-a", kUuid2, "web-pvh", 512, "running", {"br-guest"}, "pvh")
              .ok());
  c.ReportAll();
  check.set_instance_uuid(kUuid2);
  dry = c.api->CheckMigration(check);
  REQUIRE(dry.ok());
  CHECK(dry->passed());
  auto r2 = c.Migrate(kUuid2);
  REQUIRE(r2.ok());
  auto m2 = c.WaitTerminal(r2->migration().id());
  INFO(m2.failure_reason());
  CHECK(m2.status() == v1::MIGRATION_STATUS_COMPLETED);
  CHECK(c.Where(kUuid2) == Loc{{"fake-b", "running"}});
}

// `n` calls that each hold a connection of `pool` until released, as slow API readers would.
struct HeldConnections {
  std::vector<std::thread> threads;
  absl::Notification release;
  std::atomic<int> holding{0};
  HeldConnections(db::PgPool* pool, int n) {
    for (int i = 0; i < n; ++i) {
      threads.emplace_back([this, pool] {
        pool->Read("slow reader",
                   [&](pqxx::transaction_base& t) {
                     t.exec("SELECT 1");
                     ++holding;
                     release.WaitForNotification();
                     return absl::OkStatus();
                   })
            .IgnoreError();
      });
    }
  }
  void Release() {
    if (!release.HasBeenNotified()) release.Notify();
    for (auto& t : threads) t.join();
    threads.clear();
  }
  ~HeldConnections() { Release(); }
};

TEST_CASE(
    "scheduler: a pool drained by readers while a migration runs — its lease is renewed and it "
    "is not taken over") {
  const absl::Duration lease = absl::Seconds(3);
  Cloud c;
  // As the scheduler runs: the API on its pool (2 connections, 1 s wait), the orchestrator on
  // the control pool (2).
  c.StartSplit(Replica("sched-1", lease), 2, 2, absl::Seconds(1));
  REQUIRE(c.drivers["fake-a"]->hypervisor().SetTransferDuration("fake-a", absl::Seconds(18)).ok());
  auto r = c.Migrate(kUuid);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  const std::string uuid = r->migration().id();
  // What the migrations table says, read on a connection of neither pool.
  struct Row {
    std::string owner;
    double lease_expires = 0;
    bool lease_live = false;
    std::string status;
  };
  auto row = [&]() -> absl::StatusOr<Row> {
    return c.pool->ReadQuery<Row>("observe", [&](pqxx::transaction_base& t) -> absl::StatusOr<Row> {
      pqxx::result res = t.exec_params(
          "SELECT coalesce(owner, ''), coalesce(extract(epoch FROM lease_expires_at), 0)::float8, "
          "coalesce(lease_expires_at > now(), false), status FROM migrations WHERE uuid = $1",
          uuid);
      if (res.empty()) return absl::NotFoundError(uuid);
      return Row{res[0][0].as<std::string>(), res[0][1].as<double>(), res[0][2].as<bool>(),
                 res[0][3].as<std::string>()};
    });
  };
  REQUIRE(livemig::testing::WaitFor(
      [&] {
        auto got = row();
        return got.ok() && got->status == "running";
      },
      absl::Seconds(20)));
  // Another scheduler shares the database: it takes over any migration whose lease expires.
  Orchestrator rival(Replica("sched-2", lease), &c.stores->migrations(), &c.stores->hosts(),
                     &c.stores->instances(), &c.agents);
  rival.Start();

  // Readers take every connection of the API's pool for more than three leases.
  HeldConnections readers(c.api_pool.get(), 2);
  REQUIRE(livemig::testing::WaitFor([&] { return readers.holding == 2; }, absl::Seconds(10)));
  const absl::Time held_since = absl::Now();
  std::set<std::string> owners;
  std::vector<double> expiries;
  int samples = 0, dead_lease_samples = 0, renewals = 0;
  absl::Status api_during;
  while (absl::Now() - held_since < 3 * lease + absl::Seconds(1)) {
    auto got = row();
    if (got.ok()) {
      ++samples;
      owners.insert(got->owner);
      if (!got->lease_live) ++dead_lease_samples;
      if (expiries.empty() || got->lease_expires > expiries.back()) {
        if (!expiries.empty()) ++renewals;
        expiries.push_back(got->lease_expires);
      }
      INFO(got->status);
      REQUIRE(got->status == "running");  // the transfer outlasts the readers
    }
    if (api_during.ok()) api_during = c.api->ListHosts({}).status();  // the API waits, then fails
    absl::SleepFor(absl::Milliseconds(100));  // sampling period, not a wait for a condition
  }
  const absl::Duration held = absl::Now() - held_since;
  printf(
      "API pool drained for %.1f s (lease %.0f s): the lease expiry moved forward %d times in %d "
      "samples, owners seen: %s, samples with an expired lease: %d\n",
      absl::ToDoubleSeconds(held), absl::ToDoubleSeconds(lease), renewals, samples,
      absl::StrJoin(owners, ",").c_str(), dead_lease_samples);
  INFO(api_during.ToString());
  CHECK(api_during.code() == absl::StatusCode::kUnavailable);
  CHECK(absl::StrContains(api_during.message(), "all 2 connections of the API pool"));
  CHECK(owners == std::set<std::string>{"sched-1"});
  CHECK(dead_lease_samples == 0);
  // Renewed every lease/3: at least once per lease while the readers held the pool.
  CHECK(renewals >= 3);
  readers.Release();
  auto m = c.WaitTerminal(uuid, absl::Seconds(60));
  CHECK(m.status() == v1::MIGRATION_STATUS_COMPLETED);
  CHECK(c.Where() == Loc{{"fake-b", "running"}});
  CHECK(c.DbHost() == "fake-b");
  // Its owner never changed: every step, to the end, ran under sched-1.
  std::set<std::string> step_owners;
  for (const auto& e : m.events()) {
    if (!e.scheduler_id().empty()) step_owners.insert(e.scheduler_id());
  }
  CHECK(step_owners.count("sched-1") == 1);
  CHECK(step_owners.count("sched-2") == 0);
  rival.Stop();
}

}  // namespace
}  // namespace livemig::sched
