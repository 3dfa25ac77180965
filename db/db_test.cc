// Every repository operation against a real PostgreSQL 15 (started by testing/pg_server).
#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cstdio>
#include <functional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "db/pg_stores.h"
#include "db/schema.h"
#include "nlohmann/json.hpp"
#include "testing/pg_server.h"
#include "testing/process.h"
#include "testing/schema_db.h"

namespace livemig::db {
namespace {

using livemig::testing::PgServer;

PgServer& Server() {
  static std::unique_ptr<PgServer> server = [] {
    auto s = PgServer::Start();
    if (!s.ok()) FAIL("cannot start PostgreSQL: " << s.status().ToString());
    return std::move(s).value();
  }();
  return *server;
}

std::unique_ptr<PgPool> MakePool(const PgPool::Options& o) {
  auto p = PgPool::Create(o);
  REQUIRE(p.ok());
  return std::move(p).value();
}

std::unique_ptr<PgPool> MakePool(const std::string& conninfo, int size = 4) {
  PgPool::Options o;
  o.conninfo = conninfo;
  o.size = size;
  return MakePool(o);
}

// The options of a pool of `size` connections to a fresh, empty database.
PgPool::Options FreshDatabase(int size) {
  auto c = Server().CreateDatabase();
  REQUIRE(c.ok());
  PgPool::Options o;
  o.conninfo = *c;
  o.size = size;
  return o;
}

// `n` pools of one connection each and their stores: callers racing on separate connections.
struct SeparateConnections {
  SeparateConnections(const std::string& conninfo, int n) {
    for (int i = 0; i < n; ++i) {
      pools.push_back(MakePool(conninfo, 1));
      stores.push_back(std::make_unique<PgStores>(pools.back().get()));
    }
  }
  std::vector<std::unique_ptr<PgPool>> pools;
  std::vector<std::unique_ptr<PgStores>> stores;
};

// Runs body(i) for i in 0..n-1 on n threads released at once (a race), and waits for them all.
// `body` runs on worker threads: Catch2's macros (INFO, CHECK, REQUIRE...) are not thread-safe,
// and two threads pushing INFO messages at once corrupted the heap (seen once in CI as
// "free(): invalid next size" at exit). Record what happened (atomics, ThreadErrors) and assert
// on the main thread; build what needs a check (e.g. Step()) before the race.
void AtOnce(int n, const std::function<void(int)>& body) {
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      while (!go.load()) std::this_thread::yield();
      body(i);
    });
  }
  go = true;
  for (auto& t : threads) t.join();
}

// Errors seen on worker threads, reported on the main thread.
class ThreadErrors {
 public:
  void Add(const std::string& e) {
    absl::MutexLock l(&mu_);
    errors_.push_back(e);
  }
  std::string Joined() {
    absl::MutexLock l(&mu_);
    return absl::StrJoin(errors_, "\n");
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> errors_ ABSL_GUARDED_BY(mu_);
};

// A fresh database with the schema applied, and its stores.
struct Db : livemig::testing::SchemaDb {
  Db() : SchemaDb(Server()) {}
  // Creates migration `m` (which must succeed) and returns its id.
  int64_t Create(const NewMigration& m) {
    auto c = stores->migrations().CreateMigration(m);
    REQUIRE(c.ok());
    return c->migration.id;
  }
  int64_t Count(const std::string& sql) {
    auto n = pool->Query<int64_t>("test count", [&](pqxx::work& w) -> absl::StatusOr<int64_t> {
      return w.exec(sql)[0][0].as<int64_t>();
    });
    REQUIRE(n.ok());
    return *n;
  }
};

std::string Uuid(int n) { return absl::StrFormat("00000000-0000-4000-8000-%012d", n); }

using livemig::testing::SampleReport;

DomainReport Dom(int n, const std::string& state = "running", int64_t mib = 1024) {
  return DomainReport{Uuid(n), absl::StrCat("vm-", n), state, mib, 2};
}

// Two hosts, instances 1..n on host-a.
void Seed(Db& db, int n = 3) {
  std::vector<DomainReport> doms;
  for (int i = 1; i <= n; ++i) doms.push_back(Dom(i));
  REQUIRE(db.stores->hosts().ApplyReport(SampleReport("host-a", 1, doms)).ok());
  REQUIRE(db.stores->hosts().ApplyReport(SampleReport("host-b", 1)).ok());
}

NewMigration NewMig(int n, const std::string& dest = "host-b") {
  NewMigration m;
  m.instance_uuid = Uuid(n);
  m.dest_host = dest;
  m.requested_by = "alice";
  m.owner = "sched-1";
  m.memory_claim_mib = 1024;
  m.options_json = R"({"max_downtime_ms": 500})";
  return m;
}

// The step a name spells (StepName); the name must be a step's (else it throws, which Catch reports
// as the case's failure). Main thread only, as every Catch-facing helper: build steps before a
// race (AtOnce).
v1::MigrationStep KnownStep(const std::string& name) {
  const v1::MigrationStep step = StepFromName(name);
  if (step == v1::MIGRATION_STEP_UNSPECIFIED) {
    throw std::invalid_argument("not a migration step's name: '" + name + "'");
  }
  return step;
}

Transition Step(int64_t id, MigrationStatus from, MigrationStatus to, const std::string& step) {
  Transition t;
  t.migration_id = id;
  t.owner = "sched-1";
  t.from = from;
  t.to = to;
  t.step = KnownStep(step);
  return t;
}

TEST_CASE("a connection string with the examples' placeholder password is refused unconnected") {
  // The k8s example Secret's string as it is: refused before any connection is tried (the host
  // does not exist), naming the placeholder; case-insensitive; a real password is not refused.
  for (const std::string conninfo :
       {"host=db.example.net port=5432 dbname=livemig user=livemig password=REPLACE "
        "sslmode=verify-full sslrootcert=/etc/livemig/pki/postgres-ca.pem",
        "host=db.example.net dbname=livemig user=livemig password=... sslmode=verify-full",
        "host=db.example.net dbname=livemig user=livemig password='replace'"}) {
    PgPool::Options o;
    o.conninfo = conninfo;
    auto p = PgPool::Create(o);
    INFO(conninfo);
    REQUIRE_FALSE(p.ok());
    INFO(p.status().ToString());
    CHECK(p.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(absl::StrContains(p.status().message(), "password is the placeholder"));
  }
  auto c = Server().CreateDatabase();
  REQUIRE(c.ok());
  PgPool::Options o;
  o.conninfo = *c + " password=REPLACE-me-with-nothing";  // not a placeholder: connects
  auto p = PgPool::Create(o);
  INFO(p.status().ToString());
  CHECK(p.ok());
}

TEST_CASE("schema applies to an empty database and re-applies as a no-op") {
  auto c = Server().CreateDatabase();
  REQUIRE(c.ok());
  auto pool = MakePool(*c);
  auto v0 = CurrentSchemaVersion(*pool);
  REQUIRE(v0.ok());
  CHECK(*v0 == 0);
  auto first = ApplySchema(*pool);
  REQUIRE(first.ok());
  CHECK(first->version_before == 0);
  CHECK(first->version_after == LatestSchemaVersion());
  CHECK(first->applied.size() == SchemaMigrations().size());
  auto again = ApplySchema(*pool);
  REQUIRE(again.ok());
  CHECK(again->applied.empty());
  CHECK(again->version_before == again->version_after);
  auto n = pool->Query<int64_t>("count", [](pqxx::work& w) -> absl::StatusOr<int64_t> {
    return w.exec("SELECT count(*) FROM schema_version")[0][0].as<int64_t>();
  });
  REQUIRE(n.ok());
  CHECK(*n == static_cast<int64_t>(SchemaMigrations().size()));
}

TEST_CASE("two schedulers applying the schema at once apply it exactly once") {
  auto c = Server().CreateDatabase();
  REQUIRE(c.ok());
  auto p1 = MakePool(*c), p2 = MakePool(*c);
  absl::StatusOr<SchemaResult> r1, r2;
  std::thread t1([&] { r1 = ApplySchema(*p1); });
  std::thread t2([&] { r2 = ApplySchema(*p2); });
  t1.join();
  t2.join();
  REQUIRE(r1.ok());
  REQUIRE(r2.ok());
  CHECK(r1->applied.size() + r2->applied.size() == SchemaMigrations().size());
}

TEST_CASE("a schema newer than the binary is refused with a clear message") {
  Db db;
  db.Exec("INSERT INTO schema_version (version, name) VALUES (999, '0999_future')");
  auto r = ApplySchema(*db.pool);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(r.status().message().find("version 999") != std::string::npos);
  CHECK(r.status().message().find("newer scheduler") != std::string::npos);
}

// The report fence: an agent that got no answer before its deadline counts the report as failed
// and relies on it not having moved anything. Before, a report applied after that deadline could
// still move a just-migrated instance back to the source.
TEST_CASE("host reports: a report past its sender's deadline is not applied") {
  Db db;
  auto& hosts = db.stores->hosts();
  REQUIRE(hosts.ApplyReport(SampleReport("host-a", 1, {Dom(1)})).ok());
  HostReport moved = SampleReport("host-b", 1, {Dom(1)});
  moved.apply_before = absl::Now() - absl::Milliseconds(1);
  auto r = hosts.ApplyReport(moved);
  CHECK(r.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(absl::StrContains(r.status().message(), "deadline passed"));
  auto i = db.stores->instances().GetInstance(Uuid(1));
  REQUIRE(i.ok());
  CHECK(i->host == "host-a");
  CHECK(hosts.GetHost("host-b", absl::Seconds(60)).status().code() == absl::StatusCode::kNotFound);
  moved.apply_before = absl::Now() + absl::Seconds(30);
  auto ok = hosts.ApplyReport(moved);
  REQUIRE(ok.ok());
  CHECK(ok->accepted);
  CHECK(db.stores->instances().GetInstance(Uuid(1))->host == "host-b");
}

TEST_CASE("host reports: inventory, stale sequence numbers, restarts, missing domains") {
  Db db;
  auto& hosts = db.stores->hosts();
  auto r1 = hosts.ApplyReport(SampleReport("host-a", 5, {Dom(1), Dom(2)}));
  REQUIRE(r1.ok());
  CHECK(r1->accepted);
  CHECK(r1->instances_upserted == 2);

  auto h = hosts.GetHost("host-a", absl::Seconds(60));
  REQUIRE(h.ok());
  CHECK(h->up);
  CHECK(h->enabled);
  CHECK(h->report.hypervisor_version == 4017000);
  CHECK(h->report.cpu_features == std::vector<std::string>{"sse4.2", "avx2"});
  CHECK(h->report.network_segments == std::vector<std::string>{"br-guest"});
  CHECK(h->report.memory_reserved_mib == 512);
  CHECK(h->instances == 2);
  // A zero service_down_time makes every host down.
  CHECK_FALSE(hosts.GetHost("host-a", absl::ZeroDuration())->up);

  // A late (older) report is ignored.
  auto late = hosts.ApplyReport(SampleReport("host-a", 4, {Dom(1)}));
  REQUIRE(late.ok());
  CHECK_FALSE(late->accepted);
  CHECK(late->seq == 5);
  CHECK_FALSE(db.stores->instances().GetInstance(Uuid(2))->missing);

  // A newer report without domain 2 marks it missing (never deletes it).
  auto r2 = hosts.ApplyReport(SampleReport("host-a", 6, {Dom(1)}));
  REQUIRE(r2.ok());
  CHECK(r2->instances_marked_missing == 1);
  auto i2 = db.stores->instances().GetInstance(Uuid(2));
  REQUIRE(i2.ok());
  CHECK(i2->missing);
  CHECK(i2->missing_since.has_value());

  // A restarted agent (new boot id) starts its sequence again and is accepted.
  HostReport restarted = SampleReport("host-a", 1, {Dom(1), Dom(2)});
  restarted.agent_boot_id = "boot-2";
  auto r3 = hosts.ApplyReport(restarted);
  REQUIRE(r3.ok());
  CHECK(r3->accepted);
  CHECK_FALSE(db.stores->instances().GetInstance(Uuid(2))->missing);

  auto unknown = hosts.GetHost("host-zz", absl::Seconds(60));
  CHECK(unknown.status().code() == absl::StatusCode::kNotFound);

  HostReport bad = SampleReport("bad host!", 1);
  CHECK(hosts.ApplyReport(bad).status().code() == absl::StatusCode::kInvalidArgument);
  HostReport bad_uuid =
      SampleReport("host-a", 10, {DomainReport{"not-a-uuid", "x", "running", 1, 1}});
  CHECK(hosts.ApplyReport(bad_uuid).status().code() == absl::StatusCode::kInvalidArgument);

  auto list = hosts.ListHosts(absl::Seconds(60));
  REQUIRE(list.ok());
  REQUIRE(list->size() == 1);
  CHECK(list->at(0).report.hostname == "host-a");
}

TEST_CASE("a report never moves an instance that a migration holds") {
  Db db;
  Seed(db);
  auto m = db.stores->migrations().CreateMigration(NewMig(1));
  REQUIRE(m.ok());
  // The destination reports the incoming (paused) domain; the source stops reporting it.
  REQUIRE(db.stores->hosts().ApplyReport(SampleReport("host-b", 2, {Dom(1, "paused")})).ok());
  REQUIRE(db.stores->hosts().ApplyReport(SampleReport("host-a", 2, {Dom(2), Dom(3)})).ok());
  auto inst = db.stores->instances().GetInstance(Uuid(1));
  REQUIRE(inst.ok());
  CHECK(inst->host == "host-a");
  CHECK_FALSE(inst->missing);
  CHECK(inst->task_state == std::optional<std::string>("migrating"));
  CHECK(inst->active_migration_id == m->migration.id);
  // A leftover shut-off definition elsewhere does not steal an idle instance.
  REQUIRE(db.stores->hosts().ApplyReport(SampleReport("host-b", 3, {Dom(2, "shutoff")})).ok());
  CHECK(db.stores->instances().GetInstance(Uuid(2))->host == "host-a");
}

// Issue 21: the kind and identity of each disk, as the host reports them, for operators.
TEST_CASE("an instance keeps the disks its host last reported, replaced by each report") {
  Db db;
  auto& hosts = db.stores->hosts();
  auto& instances = db.stores->instances();
  const std::string iscsi =
      R"([{"target_dev":"xvda","source":"/dev/disk/by-path/ip-10.0.2.101:3260-iscsi-iqn.2026-12.net.example:db1-lun-1",)"
      R"("type":"block","shared":true,"kind":"DISK_KIND_ISCSI","iscsi_target":"iqn.2026-12.net.example:db1",)"
      R"("iscsi_lun":1,"iscsi_portal":"10.0.2.101:3260","device_id":"naa.60000000000000000e00000000010001",)"
      R"("volume":"data1"}])";
  const std::string drbd =
      R"([{"target_dev":"xvdb","source":"/dev/drbd0","type":"block","shared":true,)"
      R"("kind":"DISK_KIND_DRBD","drbd_resource":"r0","device_id":"drbd:r0/0","volume":"r0"}])";
  auto with_disks = [](int n, const std::string& json) {
    DomainReport d = Dom(n);
    d.disks_json = json;
    return d;
  };
  auto disks_of = [&](int n) {
    auto i = instances.GetInstance(Uuid(n));
    REQUIRE(i.ok());
    return nlohmann::json::parse(i->disks_json);
  };

  // Without disks in the report (an agent that reports none): an empty array, never NULL.
  REQUIRE(hosts.ApplyReport(SampleReport("host-a", 1, {Dom(1), Dom(2)})).ok());
  CHECK(disks_of(1) == nlohmann::json::array());

  REQUIRE(hosts.ApplyReport(SampleReport("host-a", 2, {with_disks(1, iscsi), Dom(2)})).ok());
  CHECK(disks_of(1) == nlohmann::json::parse(iscsi));
  CHECK(disks_of(2) == nlohmann::json::array());
  // Every way the instances are read carries them.
  auto list = instances.ListInstances("host-a", 10);
  REQUIRE(list.ok());
  REQUIRE(list->size() == 2);
  CHECK(nlohmann::json::parse(list->at(0).disks_json) == nlohmann::json::parse(iscsi));
  InstanceFilter f;
  f.host = "host-a";
  auto page = instances.ListInstancesPage(f);
  REQUIRE(page.ok());
  REQUIRE(page->instances.size() == 2);
  CHECK(nlohmann::json::parse(page->instances.at(0).disks_json) == nlohmann::json::parse(iscsi));

  // A later report replaces them (not merged).
  REQUIRE(hosts.ApplyReport(SampleReport("host-a", 3, {with_disks(1, drbd), Dom(2)})).ok());
  CHECK(disks_of(1) == nlohmann::json::parse(drbd));

  // A report without the domain leaves them (the instance is missing, its disks as last seen).
  REQUIRE(hosts.ApplyReport(SampleReport("host-a", 4, {Dom(2)})).ok());
  auto gone = instances.GetInstance(Uuid(1));
  REQUIRE(gone.ok());
  CHECK(gone->missing);
  CHECK(nlohmann::json::parse(gone->disks_json) == nlohmann::json::parse(drbd));

  // A stale report does not write them.
  REQUIRE(hosts.ApplyReport(SampleReport("host-a", 5, {with_disks(1, iscsi), Dom(2)})).ok());
  CHECK(disks_of(1) == nlohmann::json::parse(iscsi));
  auto stale = hosts.ApplyReport(SampleReport("host-a", 4, {with_disks(1, drbd), Dom(2)}));
  REQUIRE(stale.ok());
  CHECK_FALSE(stale->accepted);
  CHECK(disks_of(1) == nlohmann::json::parse(iscsi));

  // Nor does a report while a migration holds the instance (as for its other fields).
  REQUIRE(hosts.ApplyReport(SampleReport("host-b", 1)).ok());
  REQUIRE(db.stores->migrations().CreateMigration(NewMig(1)).ok());
  REQUIRE(hosts.ApplyReport(SampleReport("host-a", 6, {with_disks(1, drbd), Dom(2)})).ok());
  CHECK(disks_of(1) == nlohmann::json::parse(iscsi));

  // Anything but a JSON array is refused, naming the domain; nothing of the report is applied.
  for (const std::string& bad : {std::string("{}"), std::string("[1,"), std::string("")}) {
    auto r = hosts.ApplyReport(SampleReport("host-a", 7, {with_disks(2, bad)}));
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(absl::StrContains(r.status().message(), Uuid(2)));
  }
  CHECK(hosts.GetHost("host-a", absl::Seconds(60))->report.seq == 6);
}

TEST_CASE("host enable and disable record who and why") {
  Db db;
  Seed(db);
  auto h = db.stores->hosts().SetHostEnabled("host-b", false, "firmware update", "bob");
  REQUIRE(h.ok());
  CHECK_FALSE(h->enabled);
  CHECK(h->disabled_reason == "firmware update");
  CHECK(h->disabled_by == "bob");
  CHECK(h->disabled_at.has_value());
  auto e = db.stores->hosts().SetHostEnabled("host-b", true, "", "carol");
  REQUIRE(e.ok());
  CHECK(e->enabled);
  CHECK(e->disabled_reason.empty());
  CHECK(e->disabled_by == "carol");
  CHECK(db.stores->hosts().SetHostEnabled("nope", false, "x", "bob").status().code() ==
        absl::StatusCode::kNotFound);
}

TEST_CASE("creating a migration claims the instance in one transaction") {
  Db db;
  Seed(db);
  auto& migs = db.stores->migrations();
  auto r = migs.CreateMigration(NewMig(1));
  REQUIRE(r.ok());
  CHECK(r->created);
  CHECK(r->migration.status == MigrationStatus::kAccepted);
  CHECK(r->migration.source_host == "host-a");
  CHECK(r->migration.dest_host == "host-b");
  CHECK(r->migration.requested_by == "alice");
  CHECK(r->migration.owner == "sched-1");
  CHECK(r->migration.uuid.size() == 36);
  CHECK(r->migration.lease_expires_at.has_value());
  CHECK(db.stores->instances().GetInstance(Uuid(1))->task_state ==
        std::optional<std::string>("migrating"));
  auto events = migs.ListEvents(r->migration.id);
  REQUIRE(events.ok());
  REQUIRE(events->size() == 1);
  CHECK(events->at(0).step == v1::MIGRATION_STEP_ACCEPT);

  SECTION("already migrating is a conflict and creates no row") {
    auto again = migs.CreateMigration(NewMig(1));
    CHECK(again.status().code() == absl::StatusCode::kAborted);
    CHECK(again.status().message().find("already migrating") != std::string::npos);
    CHECK(db.Count("SELECT count(*) FROM migrations") == 1);
  }
  SECTION("unknown, malformed, missing, and same-host requests") {
    CHECK(migs.CreateMigration(NewMig(99)).status().code() == absl::StatusCode::kNotFound);
    NewMigration bad = NewMig(2);
    bad.instance_uuid = "web-1";
    CHECK(migs.CreateMigration(bad).status().code() == absl::StatusCode::kInvalidArgument);
    auto same = migs.CreateMigration(NewMig(2, "host-a"));
    CHECK(same.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(db.stores->instances().GetInstance(Uuid(2))->task_state == std::nullopt);
    REQUIRE(db.stores->hosts().ApplyReport(SampleReport("host-a", 2, {Dom(1), Dom(2)})).ok());
    auto missing = migs.CreateMigration(NewMig(3));
    CHECK(missing.status().code() == absl::StatusCode::kFailedPrecondition);
    CHECK(db.Count("SELECT count(*) FROM migrations") == 1);
  }
  SECTION("a repeated request id returns the same migration") {
    NewMigration m = NewMig(2);
    m.request_id = "req-42";
    auto a = migs.CreateMigration(m);
    auto b = migs.CreateMigration(m);
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    CHECK(a->created);
    CHECK_FALSE(b->created);
    CHECK(a->migration.id == b->migration.id);
    auto found = migs.FindByRequestId("req-42");
    REQUIRE(found.ok());
    CHECK(found->id == a->migration.id);
    NewMigration other = NewMig(3);
    other.request_id = "req-42";
    CHECK(migs.CreateMigration(other).status().code() == absl::StatusCode::kInvalidArgument);
  }
  SECTION("request ids are 1 to 128 printable ASCII characters") {
    CHECK(IsValidRequestId(std::string(128, '~')));
    CHECK(IsValidRequestId(" '; DROP TABLE x; --"));
    CHECK_FALSE(IsValidRequestId(""));
    CHECK_FALSE(IsValidRequestId(std::string(129, 'r')));
    CHECK_FALSE(IsValidRequestId("tab\there"));
    CHECK_FALSE(IsValidRequestId("caf\xc3\xa9"));
    CHECK_FALSE(IsValidRequestId(std::string("nul\0", 4)));
    CHECK(CheckRequestId("request_id", "").ok());
    for (const std::string& bad :
         {std::string(129, 'r'), std::string("new\nline"), std::string("\x7f")}) {
      NewMigration m = NewMig(2);
      m.request_id = bad;
      auto r = migs.CreateMigration(m);
      CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
      CHECK(r.status().message().find("request_id") != std::string::npos);
      CHECK(r.status().message().find("128 printable ASCII") != std::string::npos);
    }
    CHECK(db.Count("SELECT count(*) FROM migrations") == 1);
  }
}

TEST_CASE("50 concurrent claims of one instance: exactly one wins") {
  Db db;
  Seed(db);
  constexpr int kClaims = 50;
  SeparateConnections separate(db.conninfo, kClaims);
  auto& pools = separate.pools;
  auto& stores = separate.stores;
  std::atomic<int> won{0}, conflicts{0}, other{0};
  ThreadErrors errors;
  AtOnce(kClaims, [&](int i) {
    NewMigration m = NewMig(1);
    m.requested_by = absl::StrCat("caller-", i);
    auto r = stores[i]->migrations().CreateMigration(m);
    if (r.ok()) {
      ++won;
    } else if (r.status().code() == absl::StatusCode::kAborted) {
      ++conflicts;
    } else {
      ++other;
      errors.Add(r.status().ToString());
    }
  });
  INFO(errors.Joined());
  CHECK(won == 1);
  CHECK(conflicts == kClaims - 1);
  CHECK(other == 0);
  CHECK(db.Count("SELECT count(*) FROM migrations WHERE instance_uuid = '" + Uuid(1) + "'") == 1);

  SECTION("the database guard alone: 50 concurrent raw inserts for one instance") {
    // Bypasses the store's compare-and-swap: only the partial unique index stands between
    // these inserts and two active migrations of instance 2.
    std::atomic<int> inserted{0}, refused{0};
    AtOnce(kClaims, [&](int i) {
      auto r = pools[i]->Run("raw insert", [&](pqxx::work& w) {
        w.exec(
            "INSERT INTO migrations (instance_uuid, source_host, dest_host, status, "
            "requested_by) VALUES ('" +
            Uuid(2) + "', 'host-a', 'host-b', 'accepted', 'r')");
        return absl::OkStatus();
      });
      (r.ok() ? inserted : refused)++;
    });
    CHECK(inserted == 1);
    CHECK(refused == kClaims - 1);
  }
}

TEST_CASE("the database itself refuses a second active migration of one instance") {
  Db db;
  Seed(db);
  REQUIRE(db.stores->migrations().CreateMigration(NewMig(1)).ok());
  // Bypass the store's claim: the partial unique index must still refuse it.
  auto r = db.pool->Run("raw insert", [&](pqxx::work& w) {
    w.exec(
        "INSERT INTO migrations (instance_uuid, source_host, dest_host, status, "
        "requested_by) VALUES ('" +
        Uuid(1) + "', 'host-a', 'host-b', 'queued', 'mallory')");
    return absl::OkStatus();
  });
  REQUIRE_FALSE(r.ok());
  CHECK(std::string(r.message()).find("migrations_one_active_per_instance") != std::string::npos);
  // A terminal one is allowed beside it (history).
  db.Exec(
      "INSERT INTO migrations (instance_uuid, source_host, dest_host, status, requested_by, "
      "finished_at) VALUES ('" +
      Uuid(1) + "', 'host-a', 'host-b', 'failed', 'x', now())");
}

TEST_CASE("compare-and-swap on the instance's task state") {
  Db db;
  Seed(db);
  auto& inst = db.stores->instances();
  CHECK(inst.CompareAndSetTaskState(Uuid(1), std::nullopt, "migrating").ok());
  CHECK(inst.CompareAndSetTaskState(Uuid(1), std::nullopt, "migrating").code() ==
        absl::StatusCode::kAborted);
  CHECK(inst.CompareAndSetTaskState(Uuid(1), "migrating", std::nullopt).ok());
  CHECK(inst.CompareAndSetTaskState(Uuid(77), std::nullopt, "migrating").code() ==
        absl::StatusCode::kNotFound);
  auto list = inst.ListInstances("host-a", 10);
  REQUIRE(list.ok());
  CHECK(list->size() == 3);
  CHECK(inst.ListInstances("host-b", 10)->empty());
}

TEST_CASE("a migration walks the state machine to completed and moves the instance") {
  Db db;
  Seed(db);
  auto& migs = db.stores->migrations();
  const int64_t id = db.Create(NewMig(1));
  CHECK(*migs.MemoryClaimedOn("host-b") == 1024);
  using S = MigrationStatus;
  REQUIRE(
      migs.ApplyTransition(Step(id, S::kAccepted, S::kPreparing, "check_can_live_migrate_on_dest"))
          .ok());
  Transition run = Step(id, S::kPreparing, S::kRunning, "live_migration");
  run.mark_started = true;
  run.event_kind = "intent";
  run.event_outcome = "";
  REQUIRE(migs.ApplyTransition(run).ok());

  MigrationProgress p;
  p.phase = "pre-copy";
  p.bytes_total = 64 << 20;
  p.bytes_processed = 16 << 20;
  p.bytes_remaining = 48 << 20;
  p.percent = 25.0;
  p.elapsed_ms = 800;
  REQUIRE(migs.UpdateProgress(id, "sched-1", p).ok());
  CHECK(migs.UpdateProgress(id, "sched-2", p).code() == absl::StatusCode::kAborted);
  auto mid = migs.GetMigration(id);
  REQUIRE(mid.ok());
  CHECK(mid->progress.phase == "pre-copy");
  CHECK(mid->progress.bytes_processed == (16 << 20));
  CHECK(mid->progress.percent == Approx(25.0));
  CHECK(mid->started_at.has_value());

  // Compare-and-swap: a stale `from` or a foreign owner loses.
  CHECK(migs.ApplyTransition(Step(id, S::kPreparing, S::kRunning, "pre_checks")).status().code() ==
        absl::StatusCode::kAborted);
  Transition foreign = Step(id, S::kRunning, S::kPostMigrating, "post_live_migration");
  foreign.owner = "sched-2";
  CHECK(migs.ApplyTransition(foreign).status().code() == absl::StatusCode::kAborted);
  CHECK(migs.ApplyTransition(Step(id, S::kRunning, S::kAccepted, "pre_checks")).status().code() ==
        absl::StatusCode::kFailedPrecondition);

  REQUIRE(
      migs.ApplyTransition(Step(id, S::kRunning, S::kPostMigrating, "post_live_migration")).ok());
  auto done = migs.ApplyTransition(Step(id, S::kPostMigrating, S::kCompleted, "complete"));
  REQUIRE(done.ok());
  CHECK(done->status == S::kCompleted);
  CHECK(done->finished_at.has_value());
  CHECK(done->owner.empty());
  auto inst = db.stores->instances().GetInstance(Uuid(1));
  CHECK(inst->host == "host-b");
  CHECK(inst->task_state == std::nullopt);
  CHECK_FALSE(inst->active_migration_id.has_value());
  CHECK(*migs.MemoryClaimedOn("host-b") == 0);
  auto events = migs.ListEvents(id);
  REQUIRE(events.ok());
  REQUIRE(events->size() == 5);
  CHECK(events->at(1).status == "preparing");
  CHECK(events->at(2).kind == "intent");
  CHECK(events->back().status == "completed");
  for (const auto& e : *events) CHECK(e.duration_ms.has_value());
  // Terminal is final.
  CHECK(migs.ApplyTransition(Step(id, S::kCompleted, S::kFailed, "pre_checks")).status().code() ==
        absl::StatusCode::kFailedPrecondition);
  // The event log is append-only.
  auto upd = db.pool->Run("tamper", [](pqxx::work& w) {
    w.exec("UPDATE migration_events SET detail = 'x'");
    return absl::OkStatus();
  });
  CHECK_FALSE(upd.ok());
  CHECK(std::string(upd.message()).find("append-only") != std::string::npos);
}

TEST_CASE("a failed migration releases the instance and the claim, on the source") {
  Db db;
  Seed(db);
  auto& migs = db.stores->migrations();
  auto c = migs.CreateMigration(NewMig(2));
  REQUIRE(c.ok());
  Transition fail =
      Step(c->migration.id, MigrationStatus::kAccepted, MigrationStatus::kFailed, "pre_checks");
  fail.event_outcome = "failed";
  fail.failure_reason = "destination host-b has 412 MiB free; instance vm-2 needs 1024 MiB";
  auto f = migs.ApplyTransition(fail);
  REQUIRE(f.ok());
  CHECK(f->failure_reason.find("412 MiB") != std::string::npos);
  auto inst = db.stores->instances().GetInstance(Uuid(2));
  CHECK(inst->host == "host-a");
  CHECK(inst->task_state == std::nullopt);
  CHECK(*migs.MemoryClaimedOn("host-b") == 0);
  // The instance can migrate again.
  CHECK(migs.CreateMigration(NewMig(2)).ok());
}

TEST_CASE("leases: one owner at a time, takeover after expiry") {
  Db db;
  Seed(db);
  auto& migs = db.stores->migrations();
  const int64_t id = db.Create(NewMig(1));
  CHECK(*migs.AcquireLease(id, "sched-1", absl::Seconds(15)) == true);   // renew own
  CHECK(*migs.AcquireLease(id, "sched-2", absl::Seconds(15)) == false);  // live lease
  CHECK(migs.ListOrphaned()->empty());
  CHECK(*migs.RenewLeases("sched-1", absl::ZeroDuration()) == 1);  // expire it now
  auto orphans = migs.ListOrphaned();
  REQUIRE(orphans.ok());
  REQUIRE(orphans->size() == 1);
  CHECK(orphans->at(0).id == id);
  CHECK(*migs.AcquireLease(id, "sched-2", absl::Seconds(15)) == true);
  CHECK(migs.GetMigration(id)->owner == "sched-2");
  // The old owner can no longer move it.
  CHECK(migs.ApplyTransition(Step(id, MigrationStatus::kAccepted, MigrationStatus::kPreparing,
                                  "check_can_live_migrate_on_dest"))
            .status()
            .code() == absl::StatusCode::kAborted);
  CHECK(*migs.RenewLeases("sched-1", absl::Seconds(15)) == 0);
  CHECK(migs.AcquireLease(424242, "sched-2", absl::Seconds(1)).status().code() ==
        absl::StatusCode::kNotFound);
  auto active = migs.ListActiveMigrations();
  REQUIRE(active.ok());
  CHECK(active->size() == 1);
}

TEST_CASE("slot use: busy migrations by host, and an older queued one goes first") {
  Db db;
  Seed(db, 4);
  REQUIRE(db.stores->hosts().ApplyReport(SampleReport("host-c", 1)).ok());
  auto& migs = db.stores->migrations();
  using S = MigrationStatus;
  auto make = [&](int n, const std::string& dest) { return db.Create(NewMig(n, dest)); };
  const int64_t m1 = make(1, "host-b"), m2 = make(2, "host-c"), m3 = make(3, "host-b");
  REQUIRE(migs.ApplyTransition(Step(m1, S::kAccepted, S::kPreparing, "pre_live_migration")).ok());
  REQUIRE(migs.ApplyTransition(Step(m2, S::kAccepted, S::kQueued, "wait_for_slot")).ok());
  auto use = [&](int64_t id, const std::string& src, const std::string& dst) {
    auto u = migs.GetSlotUse(id, src, dst);
    INFO(u.status().ToString());
    REQUIRE(u.ok());
    return *u;
  };
  SlotUse u3 = use(m3, "host-a", "host-b");
  CHECK(u3.total == 1);  // m1 preparing; m2 queued holds no slot; m3 itself not counted
  CHECK(u3.out_of_source == 1);
  CHECK(u3.into_dest == 1);
  CHECK(u3.older_queued);  // m2 waits on host-a and is older
  SlotUse u1 = use(m1, "host-a", "host-b");
  CHECK(u1.total == 0);
  CHECK(!u1.older_queued);  // m2 is newer than m1
  SlotUse u2 = use(m2, "host-a", "host-c");
  CHECK(u2.total == 1);
  CHECK(u2.out_of_source == 1);
  CHECK(u2.into_dest == 0);
  CHECK(!u2.older_queued);
  CHECK(use(m3, "host-b", "host-c").older_queued);   // into host-c, as m2
  CHECK(!use(m3, "host-c", "host-b").older_queued);  // out of host-c: m2 only goes into it
  CHECK(!use(m3, "host-b", "host-a").older_queued);  // m2 touches neither host

  // A finished migration frees its slot; a cancelled queued one no longer goes first.
  Transition done = Step(m1, S::kPreparing, S::kFailed, "pre_live_migration");
  done.event_outcome = "failed";
  done.failure_reason = "test";
  REQUIRE(migs.ApplyTransition(done).ok());
  Transition cancel = Step(m2, S::kQueued, S::kCancelled, "wait_for_slot");
  cancel.event_outcome = "cancelled";
  REQUIRE(migs.ApplyTransition(cancel).ok());
  u3 = use(m3, "host-a", "host-b");
  CHECK(u3.total == 0);
  CHECK(u3.out_of_source == 0);
  CHECK(u3.into_dest == 0);
  CHECK(!u3.older_queued);
}

TEST_CASE("taking a slot: 12 migrations out of one host at once, 2 allowed, exactly 2 take one") {
  Db db;
  constexpr int kMigrations = 12;
  Seed(db, kMigrations);
  std::vector<int64_t> ids;
  for (int i = 1; i <= kMigrations; ++i) {
    auto c = db.stores->migrations().CreateMigration(NewMig(i));
    REQUIRE(c.ok());
    ids.push_back(c->migration.id);
  }
  // Each on its own connection, all at once: counting and moving are one step under the slot
  // lock, so no two can both see the last slot free.
  SeparateConnections separate(db.conninfo, kMigrations);
  auto& stores = separate.stores;
  SlotLimits limits;
  limits.source = "host-a";
  limits.dest = "host-b";
  limits.max_total = 10;
  limits.max_out_of_source = 2;
  limits.max_into_dest = 10;
  std::atomic<int> took{0}, no_slot{0}, other{0};
  std::string example;
  absl::Mutex mu;
  ThreadErrors errors;
  std::vector<Transition> moves;
  for (int i = 0; i < kMigrations; ++i) {
    moves.push_back(Step(ids[i], MigrationStatus::kAccepted, MigrationStatus::kPreparing,
                         "check_can_live_migrate_on_dest"));
    moves.back().slot = limits;
  }
  AtOnce(kMigrations, [&](int i) {
    auto r = stores[i]->migrations().ApplyTransition(moves[i]);
    if (r.ok()) {
      ++took;
    } else if (r.status().code() == absl::StatusCode::kResourceExhausted) {
      ++no_slot;
      absl::MutexLock l(&mu);
      example = std::string(r.status().message());
    } else {
      ++other;
      errors.Add(r.status().ToString());
    }
  });
  INFO(errors.Joined());
  INFO(example);
  CHECK(took == 2);
  CHECK(no_slot == kMigrations - 2);
  CHECK(other == 0);
  CHECK(db.Count("SELECT count(*) FROM migrations WHERE status = 'preparing'") == 2);
  CHECK(db.Count("SELECT count(*) FROM migrations WHERE status = 'accepted'") == kMigrations - 2);
  CHECK(absl::StrContains(example, "2 migration(s) out of host-a hold its slots (at most 2)"));

  // The refusals changed nothing: with a slot freed, the next one takes it.
  auto preparing = db.stores->migrations().ListActiveMigrations();
  REQUIRE(preparing.ok());
  int64_t freed = 0, next = 0;
  for (const auto& m : *preparing) {
    if (m.status == MigrationStatus::kPreparing && freed == 0) freed = m.id;
    if (m.status == MigrationStatus::kAccepted && next == 0) next = m.id;
  }
  Transition fail = Step(freed, MigrationStatus::kPreparing, MigrationStatus::kFailed,
                         "check_can_live_migrate_on_dest");
  fail.event_outcome = "failed";
  fail.failure_reason = "test";
  REQUIRE(db.stores->migrations().ApplyTransition(fail).ok());
  Transition take = Step(next, MigrationStatus::kAccepted, MigrationStatus::kPreparing,
                         "check_can_live_migrate_on_dest");
  take.slot = limits;
  auto r = db.stores->migrations().ApplyTransition(take);
  INFO(r.status().ToString());
  CHECK(r.ok());
  // An older migration touching the host waiting in `queued` goes first: a newer one gets no
  // slot although the limits leave room, the queued one does.
  limits.max_out_of_source = 10;
  std::vector<int64_t> accepted;
  for (int64_t id : ids) {
    auto m = db.stores->migrations().GetMigration(id);
    REQUIRE(m.ok());
    if (m->status == MigrationStatus::kAccepted) accepted.push_back(id);
  }
  REQUIRE(accepted.size() >= 2);
  REQUIRE(db.stores->migrations()
              .ApplyTransition(Step(accepted.front(), MigrationStatus::kAccepted,
                                    MigrationStatus::kQueued, "wait_for_slot"))
              .ok());
  Transition newer = Step(accepted.back(), MigrationStatus::kAccepted, MigrationStatus::kPreparing,
                          "check_can_live_migrate_on_dest");
  newer.slot = limits;
  auto held = db.stores->migrations().ApplyTransition(newer);
  CHECK(held.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(absl::StrContains(held.status().message(), "waits in queued"));
  Transition first = Step(accepted.front(), MigrationStatus::kQueued, MigrationStatus::kPreparing,
                          "wait_for_slot");
  first.slot = limits;
  CHECK(db.stores->migrations().ApplyTransition(first).ok());
  CHECK(db.stores->migrations().ApplyTransition(newer).ok());
}

TEST_CASE("operator requests record who asked") {
  Db db;
  Seed(db);
  auto& migs = db.stores->migrations();
  auto c = migs.CreateMigration(NewMig(1));
  REQUIRE(c.ok());
  auto a = migs.RequestAbort(c->migration.id, "dave", "maintenance of rack 4; it's 'late'");
  INFO(a.status().ToString());
  REQUIRE(a.ok());
  CHECK(a->aborted_by == "dave");
  CHECK(a->abort_reason == "maintenance of rack 4; it's 'late'");
  CHECK(a->abort_requested_at.has_value());
  // A repeated abort without a reason keeps the recorded one; the read path returns it too.
  REQUIRE(migs.RequestAbort(c->migration.id, "dave", "").ok());
  CHECK(migs.GetMigration(c->migration.id)->abort_reason == "maintenance of rack 4; it's 'late'");
  auto fc = migs.RequestForceComplete(c->migration.id, "erin");
  REQUIRE(fc.ok());
  CHECK(fc->force_complete_requested_by == "erin");
  CHECK(migs.RequestAbort(999999, "dave", "").status().code() == absl::StatusCode::kNotFound);
  Transition cancel = Step(c->migration.id, MigrationStatus::kAccepted, MigrationStatus::kCancelled,
                           "rollback_live_migration");
  REQUIRE(migs.ApplyTransition(cancel).ok());
  CHECK(migs.RequestAbort(c->migration.id, "dave", "").status().code() ==
        absl::StatusCode::kFailedPrecondition);
  auto events = migs.ListEvents(c->migration.id);
  REQUIRE(events.ok());
  CHECK(events->size() == 5);
  CHECK(events->at(1).actor == "dave");
  CHECK(events->at(1).detail == "abort requested by dave: maintenance of rack 4; it's 'late'");
}

// Creates and finishes a migration of instance n (so the instance can migrate again).
int64_t FinishedMigration(Db& db, int n, MigrationStatus end = MigrationStatus::kFailed) {
  const int64_t id = db.Create(NewMig(n));
  REQUIRE(db.stores->migrations()
              .ApplyTransition(Step(id, MigrationStatus::kAccepted, end, "pre_checks"))
              .ok());
  return id;
}

TEST_CASE("keyset pagination stays stable while rows are inserted") {
  Db db;
  Seed(db, 3);
  std::vector<int64_t> original;
  for (int i = 0; i < 25; ++i) original.push_back(FinishedMigration(db, 1 + i % 3));
  std::vector<int64_t> seen;
  MigrationFilter f;
  f.page_size = 10;
  int pages = 0;
  while (true) {
    auto page = db.stores->migrations().ListMigrations(f);
    REQUIRE(page.ok());
    for (const auto& m : page->migrations) seen.push_back(m.id);
    ++pages;
    // Newer rows arrive between pages; they must not shift what the next page shows.
    FinishedMigration(db, 1 + pages % 3);
    if (page->next_page_token.empty()) break;
    f.page_token = page->next_page_token;
  }
  CHECK(pages == 3);
  std::vector<int64_t> expected(original.rbegin(), original.rend());
  CHECK(seen == expected);

  SECTION("filters") {
    MigrationFilter byInstance;
    byInstance.instance_uuid = Uuid(2);
    byInstance.page_size = 1000;
    auto r = db.stores->migrations().ListMigrations(byInstance);
    REQUIRE(r.ok());
    CHECK(!r->migrations.empty());
    for (const auto& m : r->migrations) CHECK(m.instance_uuid == Uuid(2));

    REQUIRE(db.stores->migrations().CreateMigration(NewMig(3)).ok());
    MigrationFilter active;
    active.statuses = {MigrationStatus::kAccepted, MigrationStatus::kRunning};
    auto a = db.stores->migrations().ListMigrations(active);
    REQUIRE(a.ok());
    REQUIRE(a->migrations.size() == 1);
    CHECK(a->migrations[0].instance_uuid == Uuid(3));

    MigrationFilter byHost;
    byHost.host = "host-c";
    CHECK(db.stores->migrations().ListMigrations(byHost)->migrations.empty());
    byHost.host = "host-b";
    CHECK(db.stores->migrations().ListMigrations(byHost)->migrations.size() == 29);

    MigrationFilter future;
    future.created_after = absl::Now() + absl::Hours(1);
    CHECK(db.stores->migrations().ListMigrations(future)->migrations.empty());
    MigrationFilter past;
    past.created_before = absl::Now() - absl::Hours(1);
    CHECK(db.stores->migrations().ListMigrations(past)->migrations.empty());
  }
  SECTION("bad tokens and sizes are clear errors") {
    MigrationFilter bad;
    bad.page_token = "garbage";
    auto r = db.stores->migrations().ListMigrations(bad);
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(r.status().message().find("next_page_token") != std::string::npos);
    bad.page_token = "";
    bad.page_size = 0;
    CHECK(db.stores->migrations().ListMigrations(bad).status().code() ==
          absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("finished migrations are purged after the retention") {
  Db db;
  Seed(db);
  int64_t old_id = FinishedMigration(db, 1, MigrationStatus::kCancelled);
  db.Exec("UPDATE migrations SET finished_at = now() - interval '40 days' WHERE id = " +
          std::to_string(old_id));
  FinishedMigration(db, 2);
  REQUIRE(db.stores->migrations().CreateMigration(NewMig(3)).ok());  // active: never purged
  auto n = db.stores->migrations().PurgeFinished(absl::Now() - absl::Hours(24 * 30));
  REQUIRE(n.ok());
  CHECK(*n == 1);
  CHECK(db.stores->migrations().GetMigration(old_id).status().code() ==
        absl::StatusCode::kNotFound);
  CHECK(db.Count("SELECT count(*) FROM migration_events WHERE migration_id = " +
                 std::to_string(old_id)) == 0);
  CHECK(db.Count("SELECT count(*) FROM migrations") == 2);
}

// A completed migration of instance n with the hypervisor's final figures (no downtime: Xen).
int64_t CompletedMigration(Db& db, int n, int64_t bytes, int64_t elapsed_ms,
                           std::optional<int64_t> downtime_ms) {
  auto& migs = db.stores->migrations();
  auto c = migs.CreateMigration(NewMig(n));
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  const int64_t id = c->migration.id;
  using S = MigrationStatus;
  REQUIRE(migs.ApplyTransition(Step(id, S::kAccepted, S::kPreparing, "pre_checks")).ok());
  REQUIRE(migs.ApplyTransition(Step(id, S::kPreparing, S::kRunning, "live_migration")).ok());
  MigrationProgress p;
  p.phase = "pre-copy";
  p.bytes_total = p.bytes_processed = bytes;
  p.bytes_remaining = 0;
  p.elapsed_ms = elapsed_ms;
  p.downtime_ms = downtime_ms;
  REQUIRE(migs.UpdateProgress(id, "sched-1", p).ok());
  REQUIRE(
      migs.ApplyTransition(Step(id, S::kRunning, S::kPostMigrating, "post_live_migration")).ok());
  REQUIRE(migs.ApplyTransition(Step(id, S::kPostMigrating, S::kCompleted, "complete")).ok());
  return id;
}

void CheckSameCounters(const MigrationMetrics& a, const MigrationMetrics& b) {
  CHECK(a.ended == b.ended);
  CHECK(a.entered_error == b.entered_error);
  CHECK(a.bytes_transferred == b.bytes_transferred);
  CHECK(a.refusals == b.refusals);
  auto same = [](const MetricHistogram& x, const MetricHistogram& y) {
    return x.cumulative == y.cumulative && x.count == y.count && x.sum_ms == y.sum_ms;
  };
  CHECK(same(a.transfer, b.transfer));
  CHECK(same(a.downtime, b.downtime));
  REQUIRE(a.step_durations.size() == b.step_durations.size());
  for (const auto& [step, h] : a.step_durations) {
    INFO(step);
    REQUIRE(b.step_durations.count(step) == 1);
    CHECK(same(h, b.step_durations.at(step)));
  }
}

// Moves every event `by` (an interval) into the past, as if it had been written that long ago.
void AgeEvents(Db& db, const std::string& by) {
  db.Exec("ALTER TABLE migration_events DISABLE TRIGGER migration_events_no_update");
  db.Exec("UPDATE migration_events SET created_at = created_at - interval '" + by + "'");
  db.Exec("ALTER TABLE migration_events ENABLE TRIGGER migration_events_no_update");
}

TEST_CASE("metrics: counters and histograms never decrease across a purge") {
  Db db;
  Seed(db, 4);
  auto& migs = db.stores->migrations();
  using S = MigrationStatus;
  // A pre-check refusal, a completed migration with downtime (QEMU), one without (Xen), and one
  // that went through error and then failed.
  auto r = migs.CreateMigration(NewMig(1));
  REQUIRE(r.ok());
  Transition refuse = Step(r->migration.id, S::kAccepted, S::kFailed, "pre_checks");
  refuse.refused_check = "memory";
  REQUIRE(migs.ApplyTransition(refuse).ok());
  CompletedMigration(db, 2, 256 << 20, 2500, 40);
  CompletedMigration(db, 3, 128 << 20, 800, std::nullopt);
  auto e = migs.CreateMigration(NewMig(4));
  REQUIRE(e.ok());
  REQUIRE(migs.ApplyTransition(Step(e->migration.id, S::kAccepted, S::kError, "select_destination"))
              .ok());
  REQUIRE(migs.ApplyTransition(Step(e->migration.id, S::kError, S::kFailed, "reconcile")).ok());
  REQUIRE(migs.CreateMigration(NewMig(1)).ok());  // in flight

  auto before = migs.ReadMetrics(absl::Seconds(60));
  REQUIRE(before.ok());
  CHECK(before->ended == std::map<std::string, int64_t>{{"completed", 2}, {"failed", 2}});
  CHECK(before->entered_error == 1);
  CHECK(before->bytes_transferred == (256 << 20) + (128 << 20));
  CHECK(before->refusals == std::map<std::string, int64_t>{{"memory", 1}});
  CHECK(before->in_flight == std::map<std::string, int64_t>{{"accepted", 1}});
  CHECK(before->hosts == std::map<std::string, int64_t>{{"up", 2}});
  // Downtime: the Xen migration recorded none (not a zero): one sample of 40 ms.
  CHECK(before->downtime.count == 1);
  CHECK(before->downtime.sum_ms == 40);
  CHECK(before->downtime.cumulative == std::vector<int64_t>{0, 0, 1, 1, 1, 1, 1, 1, 1, 1});
  CHECK(before->transfer.count == 2);
  CHECK(before->transfer.cumulative.front() == 1);  // 800 ms <= 1 s; 2.5 s in the next bucket
  CHECK(before->transfer.cumulative[1] == 2);
  REQUIRE(before->step_durations.count("pre_checks") == 1);
  CHECK(before->step_durations.at("pre_checks").count == 3);

  db.Exec(
      "UPDATE migrations SET finished_at = now() - interval '40 days' "
      "WHERE finished_at IS NOT NULL");
  auto n = migs.PurgeFinished(absl::Now() - absl::Hours(24 * 30));
  REQUIRE(n.ok());
  CHECK(*n == 4);
  CHECK(db.Count("SELECT count(*) FROM migrations") == 1);
  auto after = migs.ReadMetrics(absl::Seconds(60));
  REQUIRE(after.ok());
  CheckSameCounters(*before, *after);
  CHECK(after->in_flight == before->in_flight);
  // A second purge with nothing to purge folds nothing; later migrations add to the totals.
  REQUIRE(migs.PurgeFinished(absl::Now() - absl::Hours(24 * 30)).ok());
  CheckSameCounters(*before, *migs.ReadMetrics(absl::Seconds(60)));
  CompletedMigration(db, 4, 64 << 20, 1500, 20);  // instance 4 is still on host-a
  auto later = migs.ReadMetrics(absl::Seconds(60));
  REQUIRE(later.ok());
  CHECK(later->ended.at("completed") == 3);
  CHECK(later->downtime.count == 2);
  CHECK(later->bytes_transferred == (256 << 20) + (128 << 20) + (64 << 20));

  // The periodic fold (FoldMetrics) folds the events older than 5 minutes (the scrape then reads
  // only newer ones) and the finished migrations; the figures stay exactly the same, and so after
  // a purge.
  AgeEvents(db, "10 minutes");
  auto n_folded = migs.FoldMetrics();
  REQUIRE(n_folded.ok());
  CHECK(*n_folded == 1);  // the migration completed since the purge
  auto folded = migs.ReadMetrics(absl::Seconds(60));
  REQUIRE(folded.ok());
  CheckSameCounters(*later, *folded);
  CHECK(folded->in_flight == later->in_flight);
  CHECK(db.Count("SELECT events_through FROM metric_fold") ==
        db.Count("SELECT max(id) FROM migration_events"));
  CHECK(db.Count("SELECT count(*) FROM migrations WHERE NOT metrics_folded") == 1);  // active
  CHECK(*migs.FoldMetrics() == 0);  // nothing new to fold
  CheckSameCounters(*later, *migs.ReadMetrics(absl::Seconds(60)));
  db.Exec(
      "UPDATE migrations SET finished_at = now() - interval '40 days' "
      "WHERE finished_at IS NOT NULL");
  REQUIRE(migs.PurgeFinished(absl::Now() - absl::Hours(24 * 30)).ok());
  CHECK(db.Count("SELECT count(*) FROM migrations") == 1);
  CheckSameCounters(*later, *migs.ReadMetrics(absl::Seconds(60)));
}

// A scrape is a reader's GET: ReadMetrics must not write (before, every read folded, taking the
// fold's row lock and writing metric_totals). It runs as a role like deploy's read-only
// livemig_dashboard (SELECT only, read-only sessions), and the fold's tables are unchanged after
// it; the periodic fold then changes them and not the figures.
TEST_CASE("metrics: a scrape only reads, and the periodic fold keeps every figure") {
  Db db;
  Seed(db, 4);
  auto& migs = db.stores->migrations();
  CompletedMigration(db, 2, 256 << 20, 2500, 40);
  CompletedMigration(db, 3, 128 << 20, 800, std::nullopt);
  REQUIRE(migs.CreateMigration(NewMig(1)).ok());  // in flight
  AgeEvents(db, "10 minutes");                    // so that a fold has events to fold too

  const std::string database = [&] {
    auto r = db.pool->Query<std::string>("database", [](pqxx::work& w) {
      return absl::StatusOr<std::string>(w.exec("SELECT current_database()")[0][0].c_str());
    });
    REQUIRE(r.ok());
    return *r;
  }();
  const std::string role = database + "_dashboard";
  db.Exec("CREATE ROLE " + role + " LOGIN");
  db.Exec("ALTER ROLE " + role + " SET default_transaction_read_only = on");
  db.Exec("GRANT USAGE ON SCHEMA public TO " + role);
  db.Exec("GRANT SELECT ON ALL TABLES IN SCHEMA public TO " + role);
  std::string reader_conninfo = db.conninfo;
  const size_t user = reader_conninfo.find("user=postgres");
  REQUIRE(user != std::string::npos);
  reader_conninfo.replace(user, std::string("user=postgres").size(), "user=" + role);
  auto reader_pool = MakePool(reader_conninfo, 1);
  PgStores reader(reader_pool.get());

  // What the fold writes, as text: metric_totals, the events' mark and the folded migrations.
  auto fold_state = [&] {
    auto r = db.pool->Query<std::string>("fold state", [](pqxx::work& w) {
      return absl::StatusOr<std::string>(
          w.exec("SELECT COALESCE((SELECT string_agg(concat_ws(',', family, label, le_ms, count, "
                 "sum), ';' ORDER BY family, label, le_ms) FROM metric_totals), '') || '|' || "
                 "(SELECT events_through FROM metric_fold) || '|' || (SELECT count(*) FROM "
                 "migrations WHERE metrics_folded)")[0][0]
              .c_str());
    });
    REQUIRE(r.ok());
    return *r;
  };
  const std::string unfolded = fold_state();
  CHECK(unfolded == "|0|0");
  auto scraped = reader.migrations().ReadMetrics(absl::Seconds(60));
  INFO(scraped.status().ToString());
  REQUIRE(scraped.ok());
  CHECK(scraped->ended == std::map<std::string, int64_t>{{"completed", 2}});
  CHECK(scraped->in_flight == std::map<std::string, int64_t>{{"accepted", 1}});
  CHECK(scraped->transfer.count == 2);
  // The scheduler's own connection writes nothing either.
  auto own = migs.ReadMetrics(absl::Seconds(60));
  REQUIRE(own.ok());
  CHECK(fold_state() == unfolded);
  CheckSameCounters(*scraped, *own);

  // The fold folds both migrations and every event; the figures are the same, to the byte.
  auto n = migs.FoldMetrics();
  REQUIRE(n.ok());
  CHECK(*n == 2);
  CHECK(fold_state() != unfolded);
  CHECK(db.Count("SELECT events_through FROM metric_fold") ==
        db.Count("SELECT max(id) FROM migration_events"));
  auto after = reader.migrations().ReadMetrics(absl::Seconds(60));
  REQUIRE(after.ok());
  CheckSameCounters(*scraped, *after);
  CHECK(after->in_flight == scraped->in_flight);
  // The reader cannot fold: a fold is the scheduler's, not a scrape's.
  CHECK_FALSE(reader.migrations().FoldMetrics().ok());
}

// An evacuation of host-a by frank, owned by sched-1.
NewEvacuation NewEvac(std::vector<std::string> instance_uuids, int32_t max_parallel = 2,
                      std::optional<std::string> request_id = std::nullopt) {
  NewEvacuation e;
  e.host = "host-a";
  e.max_parallel = max_parallel;
  e.requested_by = "frank";
  e.instance_uuids = std::move(instance_uuids);
  e.request_id = std::move(request_id);
  e.owner = "sched-1";
  return e;
}

TEST_CASE("evacuations keep each instance's outcome") {
  Db db;
  Seed(db);
  auto& ev = db.stores->evacuations();
  NewEvacuation ne = NewEvac({Uuid(1), Uuid(2)});
  ne.reason = "power work";
  auto e = ev.CreateEvacuation(ne);
  REQUIRE(e.ok());
  CHECK(e->status == "running");
  CHECK(e->items.size() == 2);
  CHECK(e->items[0].outcome == "pending");
  auto m = db.stores->migrations().CreateMigration(NewMig(1));
  REQUIRE(m.ok());
  REQUIRE(
      ev.UpdateEvacuationItem(e->id, "sched-1", {Uuid(1), m->migration.id, "migrating", ""}).ok());
  REQUIRE(ev.UpdateEvacuationItem(e->id, "sched-1", {Uuid(2), std::nullopt, "skipped", "shut off"})
              .ok());
  CHECK(ev.UpdateEvacuationItem(e->id, "sched-1", {Uuid(3), std::nullopt, "failed", ""}).code() ==
        absl::StatusCode::kNotFound);
  REQUIRE(ev.FinishEvacuation(e->id, "sched-1", "completed").ok());
  CHECK(ev.FinishEvacuation(e->id, "sched-1", "failed").code() ==
        absl::StatusCode::kFailedPrecondition);
  CHECK(ev.FinishEvacuation(e->id, "sched-1", "bogus").code() ==
        absl::StatusCode::kInvalidArgument);
  auto got = ev.GetEvacuation(e->id);
  REQUIRE(got.ok());
  CHECK(got->status == "completed");
  CHECK(got->finished_at.has_value());
  CHECK(got->items[0].migration_id == m->migration.id);
  CHECK(got->items[1].reason == "shut off");
  // A page carries each evacuation's items and migrations in flight, as GetEvacuation does.
  auto listed = ev.ListEvacuations({"host-a", {}, 10});
  REQUIRE(listed.ok());
  REQUIRE(listed->evacuations.size() == 1);
  const EvacuationRecord& l = listed->evacuations[0];
  REQUIRE(l.items.size() == got->items.size());
  CHECK(l.items[0].migration_id == m->migration.id);
  CHECK(l.items[0].migration_status == got->items[0].migration_status);
  CHECK(l.items[1].reason == "shut off");
  CHECK(l.active_migrations == got->active_migrations);
  CHECK(ev.ListEvacuations({"host-b", {}, 10})->evacuations.empty());
  NewEvacuation unknown_host = NewEvac({}, 1);
  unknown_host.host = "host-q";
  CHECK(ev.CreateEvacuation(unknown_host).status().code() == absl::StatusCode::kNotFound);
  CHECK(ev.CreateEvacuation(NewEvac({}, 0)).status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("evacuations are listed by the status the API shows, in pages") {
  Db db;
  Seed(db);
  auto& ev = db.stores->evacuations();
  auto done = ev.CreateEvacuation(NewEvac({}, 1));
  REQUIRE(done.ok());
  REQUIRE(ev.FinishEvacuation(done->id, "sched-1", "completed").ok());
  auto bad = ev.CreateEvacuation(NewEvac({}, 1));
  REQUIRE(bad.ok());
  REQUIRE(ev.FinishEvacuation(bad->id, "sched-1", "failed").ok());
  auto cancelling = ev.CreateEvacuation(NewEvac({}, 1));
  REQUIRE(cancelling.ok());
  NewMigration in_flight = NewMig(1);
  in_flight.evacuation_uuid = cancelling->uuid;
  REQUIRE(db.stores->migrations().CreateMigration(in_flight).ok());
  db.Exec(absl::StrCat("UPDATE evacuations SET cancel_requested_at = now() WHERE id = ",
                       cancelling->id));
  auto ids = [&](const EvacuationFilter& f) {
    auto page = ev.ListEvacuations(f);
    REQUIRE(page.ok());
    std::vector<int64_t> out;
    for (const auto& e : page->evacuations) out.push_back(e.id);
    return out;
  };
  using V = std::vector<int64_t>;
  CHECK(ids({"host-a", {}, 10}) == V{cancelling->id, bad->id, done->id});
  CHECK(ids({"host-a", {"completed"}, 10}) == V{done->id});
  CHECK(ids({"host-a", {"completed_with_errors"}, 10}) == V{bad->id});
  CHECK(ids({"host-a", {"cancelling"}, 10}) == V{cancelling->id});
  CHECK(ids({"host-a", {"running"}, 10}).empty());
  CHECK(ids({"host-a", {"completed", "cancelling"}, 10}) == V{cancelling->id, done->id});
  CHECK(ids({"host-b", {}, 10}).empty());
  // Each listed with its migrations in flight (one query for the page, not one per row).
  auto all = ev.ListEvacuations({"host-a", {}, 10});
  REQUIRE(all.ok());
  REQUIRE(all->evacuations.size() == 3);
  CHECK(all->evacuations[0].active_migrations == 1);
  CHECK(all->evacuations[1].active_migrations == 0);
  CHECK(all->evacuations[2].active_migrations == 0);
  // Pages of 2: the next page starts after the last row shown; the last page has no token.
  auto first = ev.ListEvacuations({"", {}, 2});
  REQUIRE(first.ok());
  CHECK(first->evacuations.size() == 2);
  REQUIRE_FALSE(first->next_page_token.empty());
  auto second = ev.ListEvacuations({"", {}, 2, first->next_page_token});
  REQUIRE(second.ok());
  REQUIRE(second->evacuations.size() == 1);
  CHECK(second->evacuations[0].id == done->id);
  CHECK(second->next_page_token.empty());
  CHECK(ev.ListEvacuations({"", {}, 3})->next_page_token.empty());  // exactly full: no more
  auto forged = ev.ListEvacuations({"", {}, 2, "h1.host-a"});
  CHECK(forged.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(absl::StrContains(forged.status().message(), "is not one this server issued"));
  CHECK(ev.ListEvacuations({"", {}, 0}).status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("evacuations keep their request id and each instance's name at planning time") {
  Db db;
  Seed(db);
  auto& ev = db.stores->evacuations();
  const std::string rid = "evac-'; DROP TABLE evacuations; --";
  auto e = ev.CreateEvacuation(NewEvac({Uuid(1), Uuid(3)}, 2, rid));
  REQUIRE(e.ok());
  CHECK(e->request_id == std::optional<std::string>(rid));
  REQUIRE(e->items.size() == 2);
  CHECK(e->items[0].instance_name == "vm-1");
  CHECK(e->items[1].instance_name == "vm-3");
  // The name is the plan's: a later rename does not change it.
  db.Exec("UPDATE instances SET name = 'renamed' WHERE uuid = '" + Uuid(1) + "'");
  CHECK(ev.GetEvacuation(e->id)->items[0].instance_name == "vm-1");
  // The request id is unique: a second one is AlreadyExists, and finds the first.
  auto again = ev.CreateEvacuation(NewEvac({Uuid(1)}, 2, rid));
  CHECK(again.status().code() == absl::StatusCode::kAlreadyExists);
  CHECK(db.Count("SELECT count(*) FROM evacuations") == 1);
  auto found = ev.FindEvacuationByRequestId(rid);
  REQUIRE(found.ok());
  CHECK(found->id == e->id);
  CHECK(found->items.size() == 2);
  CHECK(ev.FindEvacuationByRequestId("evac-other").status().code() == absl::StatusCode::kNotFound);
  // Without a request id, any number of evacuations; a bad one is refused.
  auto plain = ev.CreateEvacuation(NewEvac({}, 1));
  REQUIRE(plain.ok());
  CHECK_FALSE(plain->request_id.has_value());
  CHECK(ev.CreateEvacuation(NewEvac({}, 1)).ok());
  CHECK(ev.CreateEvacuation(NewEvac({}, 1, std::string(129, 'x'))).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("an evacuation has a UUID, is found by it, and its migrations carry it") {
  Db db;
  Seed(db);
  auto& ev = db.stores->evacuations();
  auto& migs = db.stores->migrations();
  auto e = ev.CreateEvacuation(NewEvac({Uuid(1), Uuid(2)}));
  REQUIRE(e.ok());
  CHECK(IsValidUuid(e->uuid));
  auto other = ev.CreateEvacuation(NewEvac({}, 1));
  REQUIRE(other.ok());
  CHECK(IsValidUuid(other->uuid));
  CHECK(other->uuid != e->uuid);
  CHECK(db.Count("SELECT count(DISTINCT uuid) FROM evacuations") == 2);
  // Every read returns it.
  CHECK(ev.GetEvacuation(e->id)->uuid == e->uuid);
  CHECK(ev.ListEvacuations({"host-a", {}, 10})->evacuations.at(1).uuid == e->uuid);
  // Found by it, with its items; unknown and malformed UUIDs are told apart.
  auto by = ev.GetEvacuationByUuid(e->uuid);
  REQUIRE(by.ok());
  CHECK(by->id == e->id);
  CHECK(by->items.size() == 2);
  CHECK(ev.GetEvacuationByUuid(Uuid(99)).status().code() == absl::StatusCode::kNotFound);
  for (const std::string bad : {"1", "", "not-a-uuid", "00000000-0000-4000-8000-00000000000'"}) {
    CHECK(ev.GetEvacuationByUuid(bad).status().code() == absl::StatusCode::kInvalidArgument);
  }
  // A migration started by the evacuation carries its UUID on every read; one on its own none.
  NewMigration nm = NewMig(1);
  nm.evacuation_uuid = e->uuid;
  auto m = migs.CreateMigration(nm);
  REQUIRE(m.ok());
  CHECK(m->migration.evacuation_uuid == e->uuid);
  CHECK(migs.GetMigration(m->migration.id)->evacuation_uuid == e->uuid);
  CHECK(migs.GetMigrationByUuid(m->migration.uuid)->evacuation_uuid == e->uuid);
  CHECK(migs.ListActiveMigrations()->at(0).evacuation_uuid == e->uuid);
  auto alone = migs.CreateMigration(NewMig(3));
  REQUIRE(alone.ok());
  CHECK(alone->migration.evacuation_uuid.empty());
  CHECK(db.Count("SELECT count(*) FROM migrations WHERE evacuation_uuid IS NULL") == 1);
  // The item's migration is read back with its UUID.
  REQUIRE(
      ev.UpdateEvacuationItem(e->id, "sched-1", {Uuid(1), m->migration.id, "migrating", ""}).ok());
  auto items = ev.GetEvacuationByUuid(e->uuid);
  REQUIRE(items.ok());
  CHECK(items->items[0].migration_uuid == m->migration.uuid);
  CHECK(items->items[1].migration_uuid.empty());
  // An unknown evacuation is NotFound and a malformed one InvalidArgument: nothing is claimed.
  NewMigration unknown = NewMig(2);
  unknown.evacuation_uuid = Uuid(99);
  CHECK(migs.CreateMigration(unknown).status().code() == absl::StatusCode::kNotFound);
  unknown.evacuation_uuid = "x";
  CHECK(migs.CreateMigration(unknown).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_FALSE(db.stores->instances().GetInstance(Uuid(2))->task_state.has_value());
  CHECK(db.Count("SELECT count(*) FROM migrations") == 2);
}

// Brings an empty database to the newest schema version below `version`, as a scheduler of
// that time would have left it; returns that version.
int ApplySchemaBefore(PgPool& pool, int version) {
  int applied = 0;
  REQUIRE(pool.Run("schema before " + std::to_string(version),
                   [&](pqxx::work& w) {
                     w.exec(
                         "CREATE TABLE schema_version (version integer PRIMARY KEY, name text "
                         "NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())");
                     for (const SchemaMigration& m : SchemaMigrations()) {
                       if (m.version >= version) break;
                       w.exec(m.sql);
                       w.exec_params("INSERT INTO schema_version (version, name) VALUES ($1, $2)",
                                     m.version, std::string(m.name));
                       applied = m.version;
                     }
                     return absl::OkStatus();
                   })
              .ok());
  return applied;
}

TEST_CASE("schema 5 gives existing evacuations a UUID and their migrations a link") {
  auto c = Server().CreateDatabase();
  REQUIRE(c.ok());
  auto pool = MakePool(*c);
  // A database at schema version 4 with an evacuation's migration and one on its own.
  REQUIRE(ApplySchemaBefore(*pool, 5) == 4);
  const std::string u1 = Uuid(1), u2 = Uuid(2);
  REQUIRE(pool->Run("rows at version 4",
                    [&](pqxx::work& w) {
                      w.exec("INSERT INTO hosts (hostname) VALUES ('host-a'), ('host-b')");
                      w.exec("INSERT INTO instances (uuid, name, host) VALUES ('" + u1 +
                             "', 'vm-1', 'host-b'), ('" + u2 + "', 'vm-2', 'host-b')");
                      w.exec(
                          "INSERT INTO evacuations (host, status, max_parallel, requested_by) "
                          "VALUES ('host-a', 'completed', 1, 'frank'), ('host-a', 'running', 1, "
                          "'frank')");
                      w.exec(
                          "INSERT INTO migrations (instance_uuid, source_host, dest_host, status, "
                          "requested_by, finished_at) VALUES ('" +
                          u1 + "', 'host-a', 'host-b', 'completed', 'frank', now()), ('" + u2 +
                          "', 'host-a', 'host-b', 'completed', 'alice', now())");
                      w.exec(
                          "INSERT INTO evacuation_items (evacuation_id, instance_uuid, "
                          "migration_id, outcome) VALUES (1, '" +
                          u1 + "', 1, 'completed')");
                      return absl::OkStatus();
                    })
              .ok());
  auto r = ApplySchema(*pool);
  REQUIRE(r.ok());
  CHECK(r->version_before == 4);
  CHECK(std::find(r->applied.begin(), r->applied.end(), "0005_evacuation_uuid") !=
        r->applied.end());
  PgStores stores(pool.get());
  auto e1 = stores.evacuations().GetEvacuation(1);
  auto e2 = stores.evacuations().GetEvacuation(2);
  REQUIRE(e1.ok());
  REQUIRE(e2.ok());
  CHECK(IsValidUuid(e1->uuid));
  CHECK(IsValidUuid(e2->uuid));
  CHECK(e1->uuid != e2->uuid);
  CHECK(stores.migrations().GetMigration(1)->evacuation_uuid == e1->uuid);
  CHECK(stores.migrations().GetMigration(2)->evacuation_uuid.empty());
}

// Each way an event is written keeps the host its step ran on (MigrationEvent::host, schema 10):
// a transition's own event and its extra ones, a recorded step's events and an appended one; no
// host is NULL in the table and "" when read.
TEST_CASE("an event keeps the host its step ran on, through every way it is written") {
  Db db;
  Seed(db);
  auto& migs = db.stores->migrations();
  using S = MigrationStatus;
  const int64_t id = db.Create(NewMig(1));
  auto event = [&](const std::string& step, const std::string& kind, const std::string& host) {
    MigrationEvent e;
    e.migration_id = id;
    e.step = KnownStep(step);
    e.kind = kind;
    e.host = host;
    e.detail = step + " on " + host;
    e.started_at = absl::Now();
    return e;
  };
  Transition t = Step(id, S::kAccepted, S::kPreparing, "pre_checks");
  t.extra_events = {event("check_can_live_migrate_on_dest", "intent", "host-b")};
  REQUIRE(migs.ApplyTransition(t).ok());
  REQUIRE(migs.RecordStep(id, "sched-1", S::kPreparing,
                          v1::MIGRATION_STEP_CHECK_CAN_LIVE_MIGRATE_ON_SRC,
                          {event("check_can_live_migrate_on_dest", "result", "host-b"),
                           event("check_can_live_migrate_on_src", "intent", "host-a")})
              .ok());
  Transition run = Step(id, S::kPreparing, S::kRunning, "check_can_live_migrate_on_src");
  run.event_host = "host-a";
  REQUIRE(migs.ApplyTransition(run).ok());
  REQUIRE(migs.AppendEvent(event("abort", "info", "host-a")).ok());
  auto ev = migs.ListEvents(id);
  REQUIRE(ev.ok());
  std::vector<std::string> hosts;
  for (const auto& e : *ev) hosts.push_back(db::StepText(e.step) + "@" + e.host);
  CHECK(hosts == std::vector<std::string>{"accepted@", "pre_checks@",
                                          "check_can_live_migrate_on_dest@host-b",
                                          "check_can_live_migrate_on_dest@host-b",
                                          "check_can_live_migrate_on_src@host-a",
                                          "check_can_live_migrate_on_src@host-a", "abort@host-a"});
  CHECK(db.Count("SELECT count(*) FROM migration_events WHERE host IS NULL") == 2);
  CHECK(db.Count("SELECT count(*) FROM migration_events WHERE host = ''") == 0);
}

TEST_CASE("schema 10 adds the event's host: older events have none, and keep the rest") {
  auto c = Server().CreateDatabase();
  REQUIRE(c.ok());
  auto pool = MakePool(*c);
  // A database at the version before 10 with a migration and its events, written as the
  // scheduler wrote them then (the host only in the intent's free text).
  const int before = ApplySchemaBefore(*pool, 10);
  REQUIRE(before >= 8);
  const std::string u1 = Uuid(1);
  REQUIRE(pool->Run("rows before 10",
                    [&](pqxx::work& w) {
                      w.exec("INSERT INTO hosts (hostname) VALUES ('host-a'), ('host-b')");
                      w.exec("INSERT INTO instances (uuid, name, host) VALUES ('" + u1 +
                             "', 'vm-1', 'host-b')");
                      w.exec(
                          "INSERT INTO migrations (instance_uuid, source_host, dest_host, status, "
                          "requested_by, finished_at) VALUES ('" +
                          u1 + "', 'host-a', 'host-b', 'completed', 'alice', now())");
                      w.exec(
                          "INSERT INTO migration_events (migration_id, step, kind, outcome, "
                          "status, actor, detail, started_at) VALUES (1, 'pre_live_migration', "
                          "'intent', '', 'preparing', 'sched-1', 'pre_live_migration on host-b', "
                          "now()), (1, 'pre_live_migration', 'result', 'ok', 'running', "
                          "'sched-1', 'destination prepared', now())");
                      return absl::OkStatus();
                    })
              .ok());
  auto r = ApplySchema(*pool);
  REQUIRE(r.ok());
  CHECK(r->version_before == before);
  CHECK(std::find(r->applied.begin(), r->applied.end(), "0010_event_host") != r->applied.end());
  PgStores stores(pool.get());
  auto ev = stores.migrations().ListEvents(1);
  REQUIRE(ev.ok());
  REQUIRE(ev->size() == 2);
  // Not parsed out of the detail: an old event has no host.
  CHECK(ev->at(0).host.empty());
  CHECK(ev->at(0).detail == "pre_live_migration on host-b");
  CHECK(ev->at(1).host.empty());
  CHECK(ev->at(1).outcome == "ok");
  // New events of the same migration carry theirs.
  MigrationEvent e;
  e.migration_id = 1;
  e.step = v1::MIGRATION_STEP_POST_LIVE_MIGRATION_AT_DESTINATION;
  e.kind = "info";
  e.host = "host-b";
  e.started_at = absl::Now();
  REQUIRE(stores.migrations().AppendEvent(e).ok());
  ev = stores.migrations().ListEvents(1);
  REQUIRE(ev.ok());
  REQUIRE(ev->size() == 3);
  CHECK(ev->at(2).host == "host-b");
}

TEST_CASE("schema 11 gives existing instances an empty disk list") {
  auto c = Server().CreateDatabase();
  REQUIRE(c.ok());
  auto pool = MakePool(*c);
  REQUIRE(ApplySchemaBefore(*pool, 11) == 10);
  const std::string u1 = Uuid(1);
  REQUIRE(pool->Run("rows at version 10",
                    [&](pqxx::work& w) {
                      w.exec("INSERT INTO hosts (hostname) VALUES ('host-a')");
                      w.exec("INSERT INTO instances (uuid, name, host) VALUES ('" + u1 +
                             "', 'vm-1', 'host-a')");
                      return absl::OkStatus();
                    })
              .ok());
  auto r = ApplySchema(*pool);
  REQUIRE(r.ok());
  CHECK(r->version_before == 10);
  CHECK(std::find(r->applied.begin(), r->applied.end(), "0011_instance_disks") != r->applied.end());
  PgStores stores(pool.get());
  auto i = stores.instances().GetInstance(u1);
  REQUIRE(i.ok());
  CHECK(i->name == "vm-1");
  CHECK(i->disks_json == "[]");
  // The database itself refuses anything but an array.
  auto bad = pool->Run("disks object", [&](pqxx::work& w) {
    w.exec("UPDATE instances SET disks = '{}' WHERE uuid = '" + u1 + "'");
    return absl::OkStatus();
  });
  CHECK_FALSE(bad.ok());
}

// Issue 18: the destination and options were not stored, so a scheduler resuming the evacuation
// migrated the rest anywhere with default options.
TEST_CASE("an evacuation keeps its destination and options for whoever drives it") {
  Db db;
  Seed(db);
  auto& ev = db.stores->evacuations();
  const std::string options = R"({"maxDowntimeMs": 750, "completionTimeoutS": "3600"})";
  NewEvacuation ne = NewEvac({Uuid(1), Uuid(2)}, 1, "evac-to-b");
  ne.destination = "host-b";
  ne.options_json = options;
  auto e = ev.CreateEvacuation(ne);
  REQUIRE(e.ok());
  auto stored_as_asked = [&](const EvacuationRecord& r) {
    CHECK(r.destination == "host-b");
    CHECK(nlohmann::json::parse(r.options_json) == nlohmann::json::parse(options));
  };
  stored_as_asked(*e);
  stored_as_asked(*ev.GetEvacuation(e->id));
  stored_as_asked(*ev.GetEvacuationByUuid(e->uuid));
  stored_as_asked(*ev.FindEvacuationByRequestId("evac-to-b"));
  stored_as_asked(ev.ListEvacuations({"host-a", {}, 10})->evacuations.at(0));
  // Each item reads its migration's destination with it.
  auto m = db.stores->migrations().CreateMigration(NewMig(1, "host-b"));
  REQUIRE(m.ok());
  REQUIRE(
      ev.UpdateEvacuationItem(e->id, "sched-1", {Uuid(1), m->migration.id, "migrating", ""}).ok());
  auto items = ev.GetEvacuation(e->id);
  REQUIRE(items.ok());
  CHECK(items->items[0].migration_dest_host == "host-b");
  CHECK(items->items[1].migration_dest_host.empty());
  // Its owner stops: a takeover reads them too.
  REQUIRE(*ev.RenewEvacuationLeases("sched-1", absl::ZeroDuration()) == 1);
  auto orphans = ev.ListOrphanedEvacuations();
  REQUIRE(orphans.ok());
  REQUIRE(orphans->size() == 1);
  stored_as_asked(orphans->at(0));
  // None given: the scheduler's choice and no options.
  auto plain = ev.CreateEvacuation(NewEvac({Uuid(3)}, 1));
  REQUIRE(plain.ok());
  CHECK(plain->destination.empty());
  CHECK(nlohmann::json::parse(plain->options_json) == nlohmann::json::object());
  // Refused before anything is written.
  NewEvacuation bad = NewEvac({Uuid(3)}, 1);
  bad.destination = "no such host!";
  CHECK(ev.CreateEvacuation(bad).status().code() == absl::StatusCode::kInvalidArgument);
  bad = NewEvac({Uuid(3)}, 1);
  bad.options_json = "[750]";
  CHECK(ev.CreateEvacuation(bad).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(db.Count("SELECT count(*) FROM evacuations") == 2);
}

TEST_CASE("evacuation leases: one owner at a time, takeover after expiry, as migrations") {
  Db db;
  Seed(db);
  auto& ev = db.stores->evacuations();
  NewEvacuation ne = NewEvac({Uuid(1), Uuid(2)}, 1);
  ne.lease = absl::Seconds(30);
  auto e = ev.CreateEvacuation(ne);
  REQUIRE(e.ok());
  const int64_t id = e->id;
  // Created owned: no other scheduler takes it before its owner drives it.
  CHECK(e->owner == "sched-1");
  REQUIRE(e->lease_expires_at.has_value());
  CHECK(*e->lease_expires_at > absl::Now() + absl::Seconds(20));
  CHECK(ev.ListOrphanedEvacuations()->empty());
  CHECK(*ev.AcquireEvacuationLease(id, "sched-2", absl::Seconds(15)) == false);  // live lease
  CHECK(*ev.AcquireEvacuationLease(id, "sched-1", absl::Seconds(15)) == true);   // renew own
  // Another scheduler's writes are refused, and it renews nothing.
  const EvacuationItem skipped{Uuid(2), std::nullopt, "skipped", "shut off"};
  CHECK(ev.UpdateEvacuationItem(id, "sched-2", skipped).code() == absl::StatusCode::kAborted);
  CHECK(ev.FinishEvacuation(id, "sched-2", "completed").code() == absl::StatusCode::kAborted);
  CHECK(ev.GetEvacuation(id)->items[1].outcome == "pending");
  CHECK(ev.GetEvacuation(id)->status == "running");
  CHECK(*ev.RenewEvacuationLeases("sched-2", absl::Seconds(15)) == 0);
  CHECK(*ev.RenewEvacuationLeases("sched-1", absl::Seconds(15)) == 1);
  // Its owner stops renewing (stopped or died): the lease expires and it is an orphan.
  CHECK(*ev.RenewEvacuationLeases("sched-1", absl::ZeroDuration()) == 1);  // expire it now
  auto orphans = ev.ListOrphanedEvacuations();
  REQUIRE(orphans.ok());
  REQUIRE(orphans->size() == 1);
  CHECK(orphans->at(0).id == id);
  CHECK(orphans->at(0).owner == "sched-1");
  // The old owner can no longer write, nor renew its expired lease.
  CHECK(ev.UpdateEvacuationItem(id, "sched-1", skipped).code() == absl::StatusCode::kAborted);
  CHECK(*ev.RenewEvacuationLeases("sched-1", absl::Seconds(15)) == 0);
  // Taken over: the new owner's from now on.
  CHECK(*ev.AcquireEvacuationLease(id, "sched-2", absl::Seconds(15)) == true);
  CHECK(*ev.AcquireEvacuationLease(id, "sched-1", absl::Seconds(15)) == false);
  CHECK(ev.ListOrphanedEvacuations()->empty());
  CHECK(ev.GetEvacuation(id)->owner == "sched-2");
  REQUIRE(ev.UpdateEvacuationItem(id, "sched-2", skipped).ok());
  CHECK(ev.FinishEvacuation(id, "sched-1", "completed").code() == absl::StatusCode::kAborted);
  REQUIRE(ev.FinishEvacuation(id, "sched-2", "completed").ok());
  // Finishing releases the lease; a finished evacuation is nobody's to take.
  auto done = ev.GetEvacuation(id);
  REQUIRE(done.ok());
  CHECK(done->status == "completed");
  CHECK(done->owner.empty());
  CHECK_FALSE(done->lease_expires_at.has_value());
  CHECK(ev.AcquireEvacuationLease(id, "sched-3", absl::Seconds(15)).status().code() ==
        absl::StatusCode::kFailedPrecondition);
  CHECK(*ev.RenewEvacuationLeases("sched-2", absl::Seconds(15)) == 0);
  CHECK(ev.ListOrphanedEvacuations()->empty());
  CHECK(ev.AcquireEvacuationLease(424242, "sched-3", absl::Seconds(1)).status().code() ==
        absl::StatusCode::kNotFound);
  CHECK(ev.UpdateEvacuationItem(id, "", skipped).code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("evacuation leases: schedulers claiming one orphan at once, exactly one gets it") {
  Db db;
  Seed(db);
  constexpr int kClaimers = 12;
  SeparateConnections separate(db.conninfo, kClaimers);
  auto& stores = separate.stores;
  auto& ev = db.stores->evacuations();
  // An evacuation whose owner's lease expired, and one with no owner (running from before
  // schema version 6).
  auto expired = ev.CreateEvacuation(NewEvac({Uuid(1)}, 1));
  REQUIRE(expired.ok());
  REQUIRE(*ev.RenewEvacuationLeases("sched-1", absl::ZeroDuration()) == 1);
  NewEvacuation no_owner = NewEvac({Uuid(2)}, 1);
  no_owner.owner.clear();
  auto unowned = ev.CreateEvacuation(no_owner);
  REQUIRE(unowned.ok());
  CHECK(unowned->owner.empty());
  CHECK_FALSE(unowned->lease_expires_at.has_value());
  REQUIRE(ev.ListOrphanedEvacuations()->size() == 2);
  for (const int64_t id : {expired->id, unowned->id}) {
    INFO("evacuation " << id);
    std::atomic<int> won{0}, lost{0}, other{0};
    ThreadErrors errors;
    AtOnce(kClaimers, [&](int i) {
      auto r = stores[i]->evacuations().AcquireEvacuationLease(id, absl::StrCat("replica-", i),
                                                               absl::Seconds(30));
      if (!r.ok()) {
        ++other;
        errors.Add(r.status().ToString());
      } else {
        ++(*r ? won : lost);
      }
    });
    INFO(errors.Joined());
    CHECK(won == 1);
    CHECK(lost == kClaimers - 1);
    CHECK(other == 0);
    auto e = ev.GetEvacuation(id);
    REQUIRE(e.ok());
    CHECK(absl::StartsWith(e->owner, "replica-"));
  }
  CHECK(ev.ListOrphanedEvacuations()->empty());
}

TEST_CASE("instances page by name, then UUID, filtered in the database") {
  Db db;
  // 7 instances on host-a: two share a name (ordered by UUID), names with metacharacters.
  std::vector<DomainReport> doms;
  const std::vector<std::string> names = {"web", "web", "db '1'", "", "z\\%_", "b", "app"};
  for (int i = 0; i < static_cast<int>(names.size()); ++i) {
    DomainReport d = Dom(i + 1, i == 5 ? "paused" : "running");
    d.name = names[i];
    doms.push_back(d);
  }
  REQUIRE(db.stores->hosts().ApplyReport(SampleReport("host-a", 1, doms)).ok());
  REQUIRE(db.stores->hosts().ApplyReport(SampleReport("host-b", 1, {Dom(20)})).ok());
  auto& inst = db.stores->instances();
  InstanceFilter f;
  f.host = "host-a";
  f.page_size = 3;
  std::vector<std::string> seen;
  int pages = 0;
  while (true) {
    auto page = inst.ListInstancesPage(f);
    INFO(page.status().ToString());
    REQUIRE(page.ok());
    CHECK(page->instances.size() <= 3);
    for (const auto& i : page->instances) seen.push_back(i.uuid);
    ++pages;
    REQUIRE(pages <= 3);
    if (page->next_page_token.empty()) break;
    f.page_token = page->next_page_token;
  }
  CHECK(pages == 3);
  // The same order as the unpaged list (by name, then UUID), each instance once.
  std::vector<std::string> all;
  auto unpaged = inst.ListInstances("host-a", 100);
  REQUIRE(unpaged.ok());
  for (const auto& i : *unpaged) all.push_back(i.uuid);
  CHECK(seen == all);
  CHECK(seen.size() == names.size());

  SECTION("filters") {
    InstanceFilter paused;
    paused.power_states = {"paused"};
    auto p = inst.ListInstancesPage(paused);
    REQUIRE(p.ok());
    REQUIRE(p->instances.size() == 1);
    CHECK(p->instances[0].uuid == Uuid(6));
    CHECK(p->next_page_token.empty());
    REQUIRE(inst.CompareAndSetTaskState(Uuid(2), std::nullopt, "migrating").ok());
    InstanceFilter migrating;
    migrating.migrating = true;
    auto m = inst.ListInstancesPage(migrating);
    REQUIRE(m.ok());
    REQUIRE(m->instances.size() == 1);
    CHECK(m->instances[0].uuid == Uuid(2));
    InstanceFilter present;
    present.missing = false;
    present.page_size = 1000;
    CHECK(inst.ListInstancesPage(present)->instances.size() == names.size() + 1);
    InstanceFilter other;
    other.host = "host-b";
    CHECK(inst.ListInstancesPage(other)->instances.size() == 1);
  }
  SECTION("bad tokens, sizes and hosts are clear errors") {
    InstanceFilter bad;
    for (const std::string& token : {std::string("garbage"), std::string("i1.!!!." + Uuid(1)),
                                     std::string("i1.d2Vi.not-a-uuid"), std::string("m1.5")}) {
      INFO(token);
      bad.page_token = token;
      auto r = inst.ListInstancesPage(bad);
      CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
      CHECK(r.status().message().find("next_page_token") != std::string::npos);
    }
    bad.page_token = "";
    bad.page_size = 1001;
    CHECK(inst.ListInstancesPage(bad).status().code() == absl::StatusCode::kInvalidArgument);
    bad.page_size = 10;
    bad.host = "x' OR 1=1 --";
    CHECK(inst.ListInstancesPage(bad).status().code() == absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("a transition stores the ranked destination candidates with the destination") {
  Db db;
  Seed(db);
  auto& migs = db.stores->migrations();
  auto c = migs.CreateMigration(NewMig(1, ""));
  REQUIRE(c.ok());
  CHECK(c->migration.candidates_json.empty());
  const std::string ranked =
      R"([{"host":"host-b","passed":true,"rank":1},{"host":"host-c","passed":false,)"
      R"("checks":[{"reason":"host-c is down"}]}])";
  Transition t = Step(c->migration.id, MigrationStatus::kAccepted, MigrationStatus::kPreparing,
                      "check_can_live_migrate_on_dest");
  t.dest_host = "host-b";
  t.candidates_json = ranked;
  auto after = migs.ApplyTransition(t);
  INFO(after.status().ToString());
  REQUIRE(after.ok());
  CHECK(after->dest_host == "host-b");
  auto stored = nlohmann::json::parse(after->candidates_json);
  CHECK(stored == nlohmann::json::parse(ranked));
  // A later transition without candidates keeps them.
  auto run = migs.ApplyTransition(Step(c->migration.id, MigrationStatus::kPreparing,
                                       MigrationStatus::kRunning, "live_migration"));
  REQUIRE(run.ok());
  CHECK(nlohmann::json::parse(run->candidates_json) == nlohmann::json::parse(ranked));
  // Only a JSON array is a candidate list.
  Transition bad = Step(c->migration.id, MigrationStatus::kRunning, MigrationStatus::kPostMigrating,
                        "post_live_migration");
  bad.candidates_json = R"({"host":"x"})";
  CHECK_FALSE(migs.ApplyTransition(bad).ok());
}

TEST_CASE("dashboard views answer") {
  Db db;
  Seed(db);
  REQUIRE(db.stores->migrations().CreateMigration(NewMig(1)).ok());
  CHECK(db.Count("SELECT count(*) FROM v_migrations_in_flight") == 1);
  CHECK(db.Count("SELECT memory_claimed_mib FROM v_host_summary WHERE hostname = 'host-b'") ==
        1024);
  CHECK(db.Count("SELECT instances FROM v_host_summary WHERE hostname = 'host-a'") == 3);
  CHECK(db.Count("SELECT count(*) FROM v_migration_history") == 0);
  auto h = db.stores->hosts().GetHost("host-b", absl::Seconds(60));
  REQUIRE(h.ok());
  CHECK(h->memory_claimed_mib == 1024);
  CHECK(h->migrations_in == 1);
  CHECK(db.stores->hosts().GetHost("host-a", absl::Seconds(60))->migrations_out == 1);
}

// v_host_summary's instance counts come from counters kept by a trigger (schema version 4):
// after every kind of change they must equal a direct count, folded or not.
TEST_CASE("per-host instance counters follow every change, folded or not") {
  Db db;
  Seed(db, 4);  // host-a: 1..4
  const std::string direct =
      "SELECT count(*) FROM hosts h FULL JOIN (SELECT host, count(*) AS n FROM instances WHERE "
      "NOT missing AND host IS NOT NULL GROUP BY host) d ON d.host = h.hostname JOIN "
      "v_host_summary v ON v.hostname = h.hostname WHERE v.instances <> COALESCE(d.n, 0)";
  auto instances = [&](const std::string& host) {
    return db.Count("SELECT instances FROM v_host_summary WHERE hostname = '" + host + "'");
  };
  auto fold = [&] { return db.Count("SELECT fold_host_instance_counts()"); };
  CHECK(instances("host-a") == 4);
  CHECK(instances("host-b") == 0);
  CHECK(db.Count(direct) == 0);
  // host-b reports two new ones; host-a stops reporting 4 (missing); 3 moves by a migration.
  REQUIRE(db.stores->hosts().ApplyReport(SampleReport("host-b", 2, {Dom(5), Dom(6)})).ok());
  REQUIRE(db.stores->hosts().ApplyReport(SampleReport("host-a", 2, {Dom(1), Dom(2), Dom(3)})).ok());
  auto& migs = db.stores->migrations();
  using S = MigrationStatus;
  const int64_t id = db.Create(NewMig(3));
  REQUIRE(migs.ApplyTransition(Step(id, S::kAccepted, S::kPreparing, "pre_checks")).ok());
  REQUIRE(migs.ApplyTransition(Step(id, S::kPreparing, S::kRunning, "live_migration")).ok());
  REQUIRE(
      migs.ApplyTransition(Step(id, S::kRunning, S::kPostMigrating, "post_live_migration")).ok());
  CHECK(instances("host-a") == 3);  // moving is not moved yet
  REQUIRE(migs.ApplyTransition(Step(id, S::kPostMigrating, S::kCompleted, "complete")).ok());
  CHECK(instances("host-a") == 2);
  CHECK(instances("host-b") == 3);
  CHECK(db.Count(direct) == 0);
  // A claim (task state) and a power-state change add no delta.
  const int64_t deltas = db.Count("SELECT count(*) FROM host_instance_count_deltas");
  REQUIRE(db.stores->hosts()
              .ApplyReport(SampleReport("host-b", 3, {Dom(3), Dom(5, "paused"), Dom(6)}))
              .ok());
  REQUIRE(migs.CreateMigration(NewMig(5, "host-a")).ok());
  CHECK(db.Count("SELECT count(*) FROM host_instance_count_deltas") == deltas);
  // The missing instance comes back; one is deleted by hand.
  REQUIRE(db.stores->hosts().ApplyReport(SampleReport("host-a", 3, {Dom(1), Dom(2), Dom(4)})).ok());
  db.Exec("DELETE FROM instances WHERE uuid = '" + Uuid(2) + "'");
  CHECK(instances("host-a") == 2);
  CHECK(db.Count(direct) == 0);
  // Folding keeps every count and leaves no delta; a second fold has nothing to do.
  CHECK(fold() > 0);
  CHECK(db.Count("SELECT count(*) FROM host_instance_count_deltas") == 0);
  CHECK(fold() == 0);
  CHECK(db.Count(direct) == 0);
  CHECK(db.Count("SELECT sum(n) FROM v_host_instance_counts") ==
        db.Count("SELECT count(*) FROM instances WHERE NOT missing AND host IS NOT NULL"));
  CHECK(instances("host-a") == 2);
  CHECK(instances("host-b") == 3);
  // Changes after a fold add to the folded counts.
  REQUIRE(db.stores->hosts()
              .ApplyReport(SampleReport("host-b", 4, {Dom(3), Dom(5), Dom(6), Dom(7)}))
              .ok());
  CHECK(instances("host-b") == 4);
  CHECK(db.Count(direct) == 0);
}

// Connections held by `n` calls until released (each call blocks inside the pool with its
// connection, as a slow reader would).
struct Holders {
  PgPool* pool;
  std::vector<std::unique_ptr<absl::Notification>> release;
  std::vector<std::thread> threads;
  std::atomic<int> holding{0};
  ThreadErrors errors;  // a holder's call that failed (checked by the test)
  Holders(PgPool* p, int n) : pool(p) {
    for (int i = 0; i < n; ++i) release.push_back(std::make_unique<absl::Notification>());
    for (int i = 0; i < n; ++i) {
      threads.emplace_back([this, i] {
        auto s = pool->Read("hold", [&](pqxx::transaction_base& t) {
          t.exec("SELECT 1");
          ++holding;
          release[i]->WaitForNotification();
          return absl::OkStatus();
        });
        if (!s.ok()) errors.Add(absl::StrCat("holder ", i, ": ", s.ToString()));
      });
    }
  }
  void Release(int i) {
    if (!release[i]->HasBeenNotified()) release[i]->Notify();
  }
  // Releases every connection and waits until each holder's call has returned.
  void Join() {
    for (size_t i = 0; i < release.size(); ++i) Release(static_cast<int>(i));
    for (auto& t : threads) {
      if (t.joinable()) t.join();
    }
  }
  ~Holders() { Join(); }
};

absl::StatusOr<int> SelectOne(PgPool& pool, const std::string& what) {
  return pool.ReadQuery<int>(what, [](pqxx::transaction_base& t) -> absl::StatusOr<int> {
    return t.exec("SELECT 1")[0][0].as<int>();
  });
}

TEST_CASE(
    "pool: with every connection held, a call fails Unavailable after the acquire timeout, "
    "naming the pool and its size; a released connection serves a waiting call") {
  PgPool::Options o = FreshDatabase(2);
  o.acquire_timeout = absl::Seconds(2);
  o.name = "API";
  o.size_flag = "--db-pool";
  auto created = MakePool(o);
  PgPool& pool = *created;
  Holders held(&pool, 2);
  REQUIRE(livemig::testing::WaitFor([&] { return held.holding == 2; }, absl::Seconds(20)));
  CHECK(pool.InUse() == 2);

  absl::Time t0 = absl::Now();
  auto r = SelectOne(pool, "list hosts");
  const absl::Duration waited = absl::Now() - t0;
  printf("pool of 2, both held: the call failed after %.2f s (acquire timeout 2 s)\n",
         absl::ToDoubleSeconds(waited));
  REQUIRE_FALSE(r.ok());
  INFO(r.status().ToString());
  CHECK(r.status().code() == absl::StatusCode::kUnavailable);
  const std::string msg(r.status().message());
  CHECK(absl::StrContains(msg, "pool exhausted during list hosts"));
  CHECK(absl::StrContains(msg, "all 2 connections of the API pool"));
  CHECK(absl::StrContains(msg, "for 2s"));
  CHECK(absl::StrContains(msg, "raise --db-pool"));
  CHECK(waited >= absl::Milliseconds(1900));
  CHECK(waited < absl::Seconds(2) + absl::Seconds(8));  // a loaded machine's margin

  // A call waiting for a connection gets the first one released, before its deadline.
  absl::StatusOr<int> served = absl::UnknownError("not run");
  absl::Duration served_after;
  std::thread waiter([&] {
    const absl::Time start = absl::Now();
    served = SelectOne(pool, "get host");
    served_after = absl::Now() - start;
  });
  REQUIRE(livemig::testing::WaitFor([&] { return pool.Waiting() == 1; }, absl::Seconds(10)));
  held.Release(0);
  waiter.join();
  INFO(served.status().ToString());
  REQUIRE(served.ok());
  CHECK(*served == 1);
  CHECK(served_after < absl::Seconds(2));
  // And with the second still held, calls keep succeeding on the released one.
  CHECK(SelectOne(pool, "again").ok());
  CHECK(pool.InUse() == 1);
  held.Join();
  CHECK(held.errors.Joined().empty());  // both holders' own calls ended well
}

TEST_CASE(
    "pool: a call with no answer is abandoned at the call timeout (Unavailable) and the next "
    "call reconnects; a reachable server's statement timeout answers first") {
  PgPool::Options o = FreshDatabase(1);
  o.statement_timeout = absl::Seconds(60);
  o.call_timeout = absl::Seconds(2);
  auto created = MakePool(o);
  PgPool& pool = *created;
  auto sleep_for = [&](PgPool& p, int seconds) {
    return p.ReadQuery<int>("slow read", [&](pqxx::transaction_base& t) -> absl::StatusOr<int> {
      t.exec(absl::StrCat("SELECT pg_sleep(", seconds, ")"));
      return 1;
    });
  };
  absl::Time t0 = absl::Now();
  auto r = sleep_for(pool, 20);
  const absl::Duration took = absl::Now() - t0;
  printf("a statement with no answer: abandoned after %.2f s (call timeout 2 s)\n",
         absl::ToDoubleSeconds(took));
  INFO(r.status().ToString());
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kUnavailable);
  CHECK(absl::StrContains(r.status().message(), "did not answer within 2s during slow read"));
  CHECK(took >= absl::Milliseconds(1900));
  CHECK(took < absl::Seconds(10));
  // The connection was dropped: the next call opens a new one and works.
  auto next = SelectOne(pool, "after");
  INFO(next.status().ToString());
  CHECK(next.ok());
  CHECK(pool.InUse() == 0);

  // The server's statement timeout (1 s) ends the statement before the call timeout (6 s).
  o.statement_timeout = absl::Seconds(1);
  o.call_timeout = absl::ZeroDuration();  // statement timeout + 5 s
  auto short_pool = PgPool::Create(o);
  REQUIRE(short_pool.ok());
  t0 = absl::Now();
  auto st = sleep_for(**short_pool, 10);
  INFO(st.status().ToString());
  CHECK(st.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(absl::Now() - t0 < absl::Seconds(6));
  CHECK(SelectOne(**short_pool, "after the timeout").ok());  // the same connection goes on
}

TEST_CASE(
    "pool: TCP keepalives and tcp_user_timeout are added unless given, and libpq accepts them "
    "on a Unix socket") {
  PgPool::Options o;
  o.conninfo = "host=/run/x port=5432 dbname=d keepalives_idle=30";
  const std::string s = PgPool::ConnectionString(o);
  INFO(s);
  CHECK(absl::StrContains(s, " keepalives=1"));
  CHECK(absl::StrContains(s, " keepalives_interval=2"));
  CHECK(absl::StrContains(s, " keepalives_count=3"));
  CHECK(absl::StrContains(s, " tcp_user_timeout=10000"));
  CHECK(absl::StrContains(s, "keepalives_idle=30"));  // the caller's value stays, alone
  CHECK_FALSE(absl::StrContains(s, "keepalives_idle=5"));
  o.tcp_keepalives = false;
  CHECK_FALSE(absl::StrContains(PgPool::ConnectionString(o), "tcp_user_timeout"));
  // The test server is on a Unix socket: every pool here connects with the settings; one
  // explicit check that such a connection works.
  auto c = Server().CreateDatabase();
  REQUIRE(c.ok());
  PgPool::Options u;
  u.conninfo = *c;
  REQUIRE(absl::StrContains(PgPool::ConnectionString(u), "host=/"));
  REQUIRE(absl::StrContains(PgPool::ConnectionString(u), "tcp_user_timeout=10000"));
  auto pool = PgPool::Create(u);
  INFO(pool.status().ToString());
  REQUIRE(pool.ok());
  CHECK(SelectOne(**pool, "unix socket").ok());
}

// Keep this last: it stops and restarts the shared server.
TEST_CASE("a lost database connection is Unavailable and the next call reconnects") {
  Db db;
  Seed(db);
  REQUIRE(Server().Stop().ok());
  auto down = db.stores->instances().GetInstance(Uuid(1));
  REQUIRE_FALSE(down.ok());
  CHECK(down.status().code() == absl::StatusCode::kUnavailable);
  CHECK(down.status().message().find("database") != std::string::npos);
  REQUIRE(Server().Restart().ok());
  auto up = db.stores->instances().GetInstance(Uuid(1));
  REQUIRE(up.ok());
  CHECK(up->host == "host-a");
  // A wrong connection string fails at creation, clearly.
  PgPool::Options o;
  o.conninfo = "host=/nonexistent port=1 dbname=x";
  auto bad = PgPool::Create(o);
  CHECK(bad.status().code() == absl::StatusCode::kUnavailable);
}

// Guards that the guard-removal script (integration_tests/guards/remove_guards.sh) takes out one
// at a time; each of these must fail when its guard is gone.
TEST_CASE("the instance's task state is a compare-and-swap claim, whoever set it") {
  Db db;
  Seed(db);
  auto& migs = db.stores->migrations();
  // Claimed by something other than a migration row (e.g. an operator's lock): no row is active,
  // so only the compare-and-swap on task_state can refuse the request.
  db.Exec("UPDATE instances SET task_state = 'migrating' WHERE uuid = '" + Uuid(1) + "'");
  auto r = migs.CreateMigration(NewMig(1));
  CHECK(r.status().code() == absl::StatusCode::kAborted);
  CHECK(r.status().message().find("already migrating") != std::string::npos);
  CHECK(db.Count("SELECT count(*) FROM migrations") == 0);
}

TEST_CASE("leases: an owner whose lease expired can no longer move its migration") {
  Db db;
  Seed(db);
  auto& migs = db.stores->migrations();
  const int64_t id = db.Create(NewMig(1));
  REQUIRE(*migs.AcquireLease(id, "sched-1", absl::Seconds(15)) == true);
  CHECK(*migs.RenewLeases("sched-1", absl::ZeroDuration()) == 1);  // expired, nobody took it yet
  // Another scheduler may take it over at any moment: the stale owner must not act.
  auto t = migs.ApplyTransition(Step(id, MigrationStatus::kAccepted, MigrationStatus::kPreparing,
                                     "check_can_live_migrate_on_dest"));
  CHECK(t.status().code() == absl::StatusCode::kAborted);
  CHECK(migs.GetMigration(id)->status == MigrationStatus::kAccepted);
}

TEST_CASE("host pages and destination candidates are chosen in the database") {
  Db db;
  HostStore& hosts = db.stores->hosts();
  // host-00 .. host-06; free memory grows with the number; host-03 is disabled, host-05 runs
  // another hypervisor, host-06 is too small.
  for (int i = 0; i < 7; ++i) {
    HostReport r =
        SampleReport(absl::StrFormat("host-%02d", i), 1,
                     i == 0 ? std::vector<DomainReport>{Dom(1)} : std::vector<DomainReport>{});
    r.memory_free_mib = 4000 + 1000 * i;
    if (i == 5) r.hypervisor_type = "QEMU";
    if (i == 6) r.memory_free_mib = 1000;
    REQUIRE(hosts.ApplyReport(r).ok());
  }
  REQUIRE(hosts.SetHostEnabled("host-03", false, "maintenance", "ops").ok());

  // Pages of 3 by name, then the filter in SQL.
  HostFilter f;
  f.page_size = 3;
  std::vector<std::string> names;
  for (int pages = 0; pages < 10; ++pages) {
    auto page = hosts.ListHostsPage(f, absl::Seconds(60));
    REQUIRE(page.ok());
    for (const auto& h : page->hosts) names.push_back(h.report.hostname);
    if (page->next_page_token.empty()) break;
    f.page_token = page->next_page_token;
  }
  CHECK(names == std::vector<std::string>{"host-00", "host-01", "host-02", "host-03", "host-04",
                                          "host-05", "host-06"});
  HostFilter disabled;
  disabled.enabled = false;
  auto d = hosts.ListHostsPage(disabled, absl::Seconds(60));
  REQUIRE(d.ok());
  REQUIRE(d->hosts.size() == 1);
  CHECK(d->hosts[0].report.hostname == "host-03");
  HostFilter bad;
  bad.page_token = "nonsense";
  CHECK(hosts.ListHostsPage(bad, absl::Seconds(60)).status().code() ==
        absl::StatusCode::kInvalidArgument);
  auto first = hosts.ListHostsPage(HostFilter{}, absl::Seconds(60));
  REQUIRE(first.ok());
  CHECK(first->hosts[0].instances == 1);

  // An inbound claim of 4000 MiB on host-04 moves it below host-02 (5000 - 512 - 4000).
  NewMigration m = NewMig(1, "host-04");
  m.memory_claim_mib = 4000;
  REQUIRE(db.stores->migrations().CreateMigration(m).ok());
  DestinationQuery q;
  q.source = "host-00";
  q.only_enabled = true;
  q.only_up = true;
  q.hypervisor_type = "Xen";
  q.min_hypervisor_version = 4017000;
  q.cpu_arch = "x86_64";
  q.memory_mib = 1024;
  q.limit = 3;
  auto c = hosts.ListDestinationCandidates(q, absl::Seconds(60));
  REQUIRE(c.ok());
  std::vector<std::string> chosen;
  for (const auto& h : *c) chosen.push_back(h.report.hostname);
  CHECK(chosen == std::vector<std::string>{"host-02", "host-01", "host-04"});
  CHECK(c->at(2).memory_claimed_mib == 4000);
  CHECK(c->at(2).migrations_in == 1);
}

TEST_CASE("a transition is one statement: all of it or nothing, events in order, any text") {
  Db db;
  Seed(db);
  auto& migs = db.stores->migrations();
  using S = MigrationStatus;
  const int64_t id = db.Create(NewMig(1, ""));  // the scheduler chooses the destination
  auto first = migs.ListEvents(id);
  REQUIRE(first.ok());
  REQUIRE(first->size() == 1);
  CHECK(first->at(0).detail ==
        "live migration of " + Uuid(1) +
            " from host-a to a host the scheduler chooses requested by alice");

  // A failing part (an event the schema refuses) leaves the row, the instance and the events
  // as they were.
  Transition bad = Step(id, S::kAccepted, S::kFailed, "pre_checks");
  bad.event_kind = "not-a-kind";
  CHECK_FALSE(migs.ApplyTransition(bad).ok());
  CHECK(migs.GetMigration(id)->status == S::kAccepted);
  CHECK(db.stores->instances().GetInstance(Uuid(1))->task_state ==
        std::optional<std::string>("migrating"));
  CHECK(migs.ListEvents(id)->size() == 1);
  MigrationEvent bad_step;
  bad_step.kind = "nope";
  bad_step.step = v1::MIGRATION_STEP_PRE_CHECKS;
  CHECK_FALSE(migs.RecordStep(id, "sched-1", S::kAccepted, v1::MIGRATION_STEP_PRE_CHECKS,
                              {bad_step}, "host-b", 2048)
                  .ok());
  CHECK(migs.GetMigration(id)->step == v1::MIGRATION_STEP_ACCEPT);
  CHECK(migs.GetMigration(id)->dest_host.empty());

  // Completing needs a destination: refused, nothing changed.
  REQUIRE(migs.ApplyTransition(Step(id, S::kAccepted, S::kPreparing, "pre_checks")).ok());
  REQUIRE(migs.ApplyTransition(Step(id, S::kPreparing, S::kRunning, "live_migration")).ok());
  REQUIRE(
      migs.ApplyTransition(Step(id, S::kRunning, S::kPostMigrating, "post_live_migration")).ok());
  auto no_dest = migs.ApplyTransition(Step(id, S::kPostMigrating, S::kCompleted, "complete"));
  CHECK(no_dest.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(no_dest.status().message().find("without a destination") != std::string::npos);
  CHECK(migs.GetMigration(id)->status == S::kPostMigrating);
  CHECK(db.stores->instances().GetInstance(Uuid(1))->host == "host-a");

  // The main event and the extra ones, in order; text that PostgreSQL cannot hold verbatim
  // (NUL, invalid UTF-8) is stored with U+FFFD, quotes and SQL as they are.
  Transition done = Step(id, S::kPostMigrating, S::kCompleted, "complete");
  done.dest_host = "host-b";
  done.event_detail = std::string("a\0b", 3) + " '; DROP TABLE migrations; -- \"q\" \xff";
  for (int i = 0; i < 3; ++i) {
    MigrationEvent e;
    e.step = v1::MIGRATION_STEP_COMPLETE;
    e.detail = "extra-" + std::to_string(i);
    e.kind = "info";
    e.started_at = absl::Now();
    done.extra_events.push_back(e);
  }
  auto d = migs.ApplyTransition(done);
  REQUIRE(d.ok());
  CHECK(d->status == S::kCompleted);
  CHECK(d->dest_host == "host-b");
  CHECK(d->instance_name == "vm-1");
  CHECK(db.stores->instances().GetInstance(Uuid(1))->host == "host-b");
  auto ev = migs.ListEvents(id);
  REQUIRE(ev.ok());
  REQUIRE(ev->size() == 8);
  CHECK(ev->at(4).step == v1::MIGRATION_STEP_COMPLETE);
  CHECK(ev->at(4).detail ==
        "a\xEF\xBF\xBD"
        "b '; DROP TABLE migrations; -- \"q\" \xEF\xBF\xBD");
  for (int i = 0; i < 3; ++i) {
    CHECK(ev->at(5 + i).detail == "extra-" + std::to_string(i));
    CHECK(ev->at(5 + i).status == "completed");
    CHECK(ev->at(5 + i).actor == "sched-1");
  }
  CHECK(db.Count("SELECT count(*) FROM migrations") == 1);
}

}  // namespace
}  // namespace livemig::db
