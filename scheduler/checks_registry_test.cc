// The registry of checks (checks_registry.h) against its users, on a real PostgreSQL: the
// candidate query's SQL against the C++ predicates on the same hosts; each check failing alone
// through every path it claims (pre-checks, candidate query, dry run, API); and the agents'
// check names through the FakeDriver.
#include "scheduler/checks_registry.h"

#include <catch2/catch.hpp>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "compute/agent_core.h"
#include "db/pg_stores.h"
#include "db/schema.h"
#include "driver/fake_driver.h"
#include "scheduler/api_core.h"
#include "scheduler/orchestrator.h"
#include "scheduler/prechecks.h"
#include "testing/pg_server.h"
#include "testing/run_command.h"
#include "testing/schema_db.h"

namespace livemig::sched {
namespace {

constexpr char kFullCaps[] =
    R"({"profile": "fake-qemu", "supportsLive": true, "supportsBandwidth": true,
        "supportsMaxDowntime": true, "supportsBlockMigration": true})";
// No bandwidth limit, no block migration (as libxl).
constexpr char kNarrowCaps[] = R"({"profile": "libxl", "supportsLive": true})";

std::string Uuid(int n) { return absl::StrCat("00000000-0000-4000-8000-", 100000000000 + n); }

// A host with every capability and no shared storage, reached in process (LocalAgentClientFactory).
db::HostReport Report(const std::string& host, std::vector<db::DomainReport> domains = {}) {
  db::HostReport r = livemig::testing::SampleReport(host, 1, std::move(domains));
  r.agent_address = "local:" + host;
  r.shared_storage.clear();
  r.capabilities_json = kFullCaps;
  return r;
}

db::DomainReport Dom(int n, const std::string& state = "running", int64_t mib = 1024) {
  return db::DomainReport{Uuid(n), absl::StrCat("vm-", n), state, mib, 2};
}

// A fresh database with the schema, its stores, and an orchestrator and API over them (not
// started: the dry run and the API's refusals need no state machine). No agent answers.
struct Cloud : livemig::testing::SchemaDb {
  LocalAgentClientFactory agents;
  std::unique_ptr<Orchestrator> orch;
  std::unique_ptr<ApiCore> api;
  const absl::Duration down = absl::Seconds(60);

  Cloud() : SchemaDb(livemig::testing::SharedPgServer()) {
    OrchestratorOptions o;
    o.scheduler_id = "checks-test";
    o.destination_attempts = 1;
    o.dry_run_deadline = absl::Seconds(5);
    orch = std::make_unique<Orchestrator>(o, &stores->migrations(), &stores->hosts(),
                                          &stores->instances(), &agents);
    api = std::make_unique<ApiCore>(&stores->migrations(), &stores->hosts(), &stores->instances(),
                                    &stores->evacuations(), orch.get());
  }
  void Add(const db::HostReport& r) { REQUIRE(stores->hosts().ApplyReport(r).ok()); }
  // Host `h` has not reported for 10 minutes (down).
  void Down(const std::string& h) {
    Exec("UPDATE hosts SET last_report_at = now() - interval '10 minutes' WHERE hostname = '" + h +
         "'");
  }
  // An active migration of instance `n` towards `dest` claiming `mib` there.
  void Claim(int n, const std::string& dest, int64_t mib) {
    db::NewMigration m;
    m.instance_uuid = Uuid(n);
    m.dest_host = dest;
    m.requested_by = "alice";
    m.owner = "elsewhere";
    m.memory_claim_mib = mib;
    REQUIRE(stores->migrations().CreateMigration(m).ok());
  }
  db::HostRecord Host(const std::string& h) {
    auto r = stores->hosts().GetHost(h, down);
    REQUIRE(r.ok());
    return *r;
  }
  db::InstanceRecord Instance(int n) {
    auto r = stores->instances().GetInstance(Uuid(n));
    REQUIRE(r.ok());
    return *r;
  }
  std::set<std::string> Candidates(const db::DestinationQuery& q) {
    auto c = stores->hosts().ListDestinationCandidates(q, down);
    REQUIRE(c.ok());
    std::set<std::string> out;
    for (const auto& h : *c) out.insert(h.report.hostname);
    return out;
  }
  sv1::CheckMigrationResponse DryRun(int n, const std::string& dest,
                                     const v1::MigrationOptions& options = {}) {
    sv1::CheckMigrationRequest r;
    r.set_instance_uuid(Uuid(n));
    r.set_destination(dest);
    *r.mutable_options() = options;
    auto d = orch->CheckMigration(r);
    REQUIRE(d.ok());
    return *d;
  }
  absl::Status Request(int n, const std::string& dest, const v1::MigrationOptions& options = {},
                       const std::string& request_id = "") {
    sv1::LiveMigrateRequest r;
    r.set_instance_uuid(Uuid(n));
    r.set_destination(dest);
    r.set_request_id(request_id);
    *r.mutable_options() = options;
    r.set_requester("alice");
    return api->LiveMigrate(r, "").status();
  }
};

template <typename Results>
std::set<std::string> Failed(const Results& checks) {
  std::set<std::string> out;
  for (const auto& c : checks) {
    if (!c.passed()) out.insert(c.name());
  }
  return out;
}

// Every name a path produced is registered; the scheduler-side ones for that path.
template <typename Results>
void RequireRegistered(const Results& checks, uint32_t where) {
  for (const auto& c : checks) {
    const Check* k = FindCheck(c.name());
    INFO("check " << c.name() << " on " << c.host());
    REQUIRE(k != nullptr);
    if (k->predicate) CHECK((k->where & where) != 0);
  }
}

TEST_CASE("the candidate query's SQL and the C++ predicates give the same verdicts") {
  Cloud c;
  // The source runs Xen 4.17.0 on x86_64 and instance 1 (1024 MiB); instances 2 and 3 migrate
  // elsewhere and claim memory on two hosts.
  c.Add(Report("src", {Dom(1), Dom(2), Dom(3)}));
  std::map<std::string, std::function<void(db::HostReport&)>> hosts = {
      {"ok", [](db::HostReport&) {}},
      {"down", [](db::HostReport&) {}},
      {"disabled", [](db::HostReport&) {}},
      {"type-qemu", [](db::HostReport& r) { r.hypervisor_type = "QEMU"; }},
      {"version-newer", [](db::HostReport& r) { r.hypervisor_version = 4019000; }},
      {"version-older", [](db::HostReport& r) { r.hypervisor_version = 4016999; }},
      {"arch-arm", [](db::HostReport& r) { r.cpu_arch = "aarch64"; }},
      // Memory after the 512 MiB reserve: exactly 1024, one short.
      {"mem-exact", [](db::HostReport& r) { r.memory_free_mib = 1536; }},
      {"mem-short", [](db::HostReport& r) { r.memory_free_mib = 1535; }},
      // Enough free memory, but not after a 4096 MiB reserve.
      {"reserve",
       [](db::HostReport& r) {
         r.memory_free_mib = 5000;
         r.memory_reserved_mib = 4000;
       }},
      // 3584 - 512 = 3072; claims of 2048 (exactly enough) and 2049 (one short).
      {"claims-exact", [](db::HostReport& r) { r.memory_free_mib = 3584; }},
      {"claims-short", [](db::HostReport& r) { r.memory_free_mib = 3584; }},
      // Same architecture, a source feature missing: only the C++ predicate sees it.
      {"features", [](db::HostReport& r) { r.cpu_features = {"sse4.2"}; }},
  };
  for (const auto& [name, tweak] : hosts) {
    db::HostReport r = Report(name);
    tweak(r);
    c.Add(r);
  }
  c.Down("down");
  REQUIRE(c.stores->hosts().SetHostEnabled("disabled", false, "maintenance", "ops").ok());
  c.Claim(2, "claims-exact", 2048);
  c.Claim(3, "claims-short", 2049);

  const db::InstanceRecord inst = c.Instance(1);
  const db::HostRecord src = c.Host("src");
  const v1::MigrationOptions options;
  auto all = c.stores->hosts().ListHosts(c.down);
  REQUIRE(all.ok());
  REQUIRE(all->size() == hosts.size() + 1);

  // Unnarrowed, the query returns every host but the source.
  db::DestinationQuery none;
  none.source = "src";
  none.limit = 1000;
  CHECK(c.Candidates(none).size() == hosts.size());

  int narrowing = 0;
  std::set<std::string> every_pass;  // hosts every narrowing passes (C++)
  for (const auto& h : *all) {
    if (h.report.hostname != "src") every_pass.insert(h.report.hostname);
  }
  for (const Check& k : Checks()) {
    if (!(k.where & kDbNarrowing)) continue;
    ++narrowing;
    REQUIRE(k.narrow != nullptr);
    REQUIRE(k.predicate != nullptr);
    db::DestinationQuery q = none;
    k.narrow(CheckContext{inst, &src, nullptr, options}, &q);
    const std::set<std::string> sql = c.Candidates(q);
    std::set<std::string> cpp;
    for (const auto& h : *all) {
      if (h.report.hostname == "src") continue;
      if (RunCheck(k, CheckContext{inst, &src, &h, options}).passed()) {
        cpp.insert(h.report.hostname);
      } else {
        every_pass.erase(h.report.hostname);
      }
    }
    INFO("check " << k.name << ": SQL " << absl::StrJoin(sql, ",") << "; C++ "
                  << absl::StrJoin(cpp, ","));
    // Each narrowing decides something on these hosts: some fail it, most pass.
    CHECK(cpp.size() < hosts.size());
    CHECK(cpp.size() >= hosts.size() - 4);
    if (k.narrows_exactly) {
      CHECK(sql == cpp);
    } else {
      // A necessary condition only: the database never drops a host the predicate passes.
      for (const auto& h : cpp) CHECK(sql.count(h) == 1);
      CHECK(sql.size() > cpp.size());
    }
  }
  CHECK(narrowing == 6);
  // All narrowings at once (ChooseDestinations' query): the hosts every predicate passes, but the
  // one whose lacking CPU feature only the predicate sees.
  db::DestinationQuery q = none;
  NarrowQuery(CheckContext{inst, &src, nullptr, options}, &q);
  std::set<std::string> expected = every_pass;
  expected.insert("features");
  CHECK(c.Candidates(q) == expected);
  CHECK(expected ==
        std::set<std::string>{"ok", "version-newer", "mem-exact", "claims-exact", "features"});
  // ChooseDestinations over that query: the passed hosts, ranked by memory available.
  auto chosen = ChooseDestinations(c.stores->hosts(), inst, src, options, c.down);
  REQUIRE(chosen.ok());
  std::vector<std::string> passed;
  for (const auto& h : *chosen) {
    if (h.passed()) passed.push_back(h.host());
  }
  // (mem-exact before claims-exact: as much memory, no migration in flight.)
  CHECK(passed == std::vector<std::string>{"ok", "version-newer", "mem-exact", "claims-exact"});
}

TEST_CASE("each check, failing alone, is reported by every path it claims, by its name") {
  Cloud c;
  c.Add(Report("src", {Dom(1), Dom(2, "shutoff"), Dom(3), Dom(4, "shutoff")}));
  // Destinations that each fail one check.
  const std::map<std::string, std::function<void(db::HostReport&)>> dests = {
      {"dest_up", [](db::HostReport&) {}},
      {"dest_enabled", [](db::HostReport&) {}},
      {"hypervisor_type", [](db::HostReport& r) { r.hypervisor_type = "QEMU"; }},
      {"hypervisor_version", [](db::HostReport& r) { r.hypervisor_version = 4016000; }},
      {"memory", [](db::HostReport& r) { r.memory_free_mib = 1000; }},
      {"cpu", [](db::HostReport& r) { r.cpu_features = {"sse4.2"}; }},
      {"network", [](db::HostReport& r) { r.network_segments = {"br-other"}; }},
      {"storage",
       [](db::HostReport& r) {
         r.instance_path = "/srv/elsewhere";
         r.capabilities_json = R"({"profile": "fake-qemu", "supportsLive": true,
                                   "supportsBandwidth": true})";
       }},
      {"options", [](db::HostReport& r) { r.capabilities_json = kNarrowCaps; }},
  };
  for (const auto& [name, tweak] : dests) {
    db::HostReport r = Report("d-" + name);
    tweak(r);
    c.Add(r);
  }
  c.Add(Report("d-ok1"));
  c.Add(Report("d-ok2", {Dom(5)}));
  c.Down("d-dest_up");
  REQUIRE(c.stores->hosts().SetHostEnabled("d-dest_enabled", false, "maintenance", "ops").ok());
  // Sources that fail one source check, with an instance each.
  c.Add(Report("s-source_up", {Dom(11)}));
  c.Down("s-source_up");
  db::HostReport narrow = Report("s-source_options", {Dom(12)});
  narrow.capabilities_json = kNarrowCaps;
  c.Add(narrow);
  // Instance 6 is missing: its host stopped reporting it.
  c.Add(Report("s-missing", {Dom(6)}));
  db::HostReport again = Report("s-missing");
  again.seq = 2;
  c.Add(again);
  // Instances 3 (running) and 4 (shut off) are already migrating.
  c.Claim(3, "d-ok1", 0);
  c.Claim(4, "d-ok1", 0);

  v1::MigrationOptions bw;  // a bandwidth limit: "options" and "source_options" refuse it
  bw.set_bandwidth_mib_s(100);
  const db::HostRecord src = c.Host("src");
  const db::InstanceRecord inst = c.Instance(1);
  std::set<std::string> reported;  // every check name any path reported
  auto note = [&](const auto& checks) {
    for (const auto& r : checks) reported.insert(r.name());
  };

  SECTION("destination checks") {
    for (const Check& k : Checks()) {
      if (!(k.where & kDestPrecheck)) continue;
      INFO("check " << k.name);
      REQUIRE(dests.count(k.name) == 1);  // every destination check has its fixture
      const std::string host = std::string("d-") + k.name;
      // The pre-check of one destination.
      sv1::HostCheck hc = CheckDestination(inst, src, c.Host(host), bw);
      RequireRegistered(hc.checks(), kDestPrecheck);
      CHECK(Failed(hc.checks()) == std::set<std::string>{k.name});
      CHECK_FALSE(hc.passed());
      // The dry run towards it: no agent is asked (it failed), the same failure.
      sv1::CheckMigrationResponse dry = c.DryRun(1, host, bw);
      REQUIRE(dry.hosts_size() == 1);
      RequireRegistered(dry.hosts(0).checks(), kDestPrecheck);
      CHECK(Failed(dry.hosts(0).checks()) == std::set<std::string>{k.name});
      CHECK(Failed(dry.instance_checks()).empty());
      note(dry.hosts(0).checks());
      // The candidate query leaves it out when the check narrows it exactly (cpu narrows by
      // architecture only: this host lacks a feature).
      db::DestinationQuery q;
      q.source = "src";
      q.limit = 1000;
      NarrowQuery(CheckContext{inst, &src, nullptr, bw}, &q);
      CHECK(c.Candidates(q).count(host) == ((k.where & kDbNarrowing) && k.narrows_exactly ? 0 : 1));
      // The API refuses it when it is a request check (the others it would accept, to fail in
      // the pre-checks: not asked here, as that would start a migration).
      if (k.where & kRequest) {
        absl::Status api = c.Request(1, host, {});
        CHECK(api.code() == absl::StatusCode::kFailedPrecondition);
        CHECK(absl::StrContains(api.message(), "destination d-" + std::string(k.name)));
      }
    }
    // The API's words for the two request checks, as before the registry.
    CHECK(c.Request(1, "d-dest_enabled").message() ==
          "destination d-dest_enabled is disabled: maintenance (enable it with host-enable, or "
          "choose another)");
    const absl::Status down = c.Request(1, "d-dest_up");
    CHECK(absl::StartsWith(down.message(), "destination d-dest_up is down: no report since "));
    CHECK(absl::EndsWith(down.message(), " (nothing was started)"));
    // Disabled and down: the API names the disabling first, as it always did.
    c.Down("d-dest_enabled");
    CHECK(absl::StrContains(c.Request(1, "d-dest_enabled").message(), "is disabled"));
    // Every host, ranked (the dry run without a destination): the good hosts pass (d-ok1,
    // d-ok2, s-missing); the agents are asked about the best only (destination_attempts 1) and
    // do not answer.
    sv1::CheckMigrationResponse all = c.DryRun(1, "", bw);
    REQUIRE(all.hosts_size() == static_cast<int>(dests.size()) + 5);
    for (const auto& hc : all.hosts()) {
      RequireRegistered(hc.checks(), kDestPrecheck | kDryRun);
      note(hc.checks());
    }
    CHECK(all.hosts(0).checks(all.hosts(0).checks_size() - 1).name() == "agent_source");
    CHECK(all.hosts(1).checks(all.hosts(1).checks_size() - 1).name() == "agent_checks");
    CHECK_FALSE(all.passed());
    for (const Check& k : Checks()) {
      if (k.where & kDestPrecheck) CHECK(reported.count(k.name) == 1);
    }
  }

  SECTION("source and instance checks") {
    // source_up: the pre-checks and the dry run; the API does not refuse a silent source.
    CHECK(Failed(CheckSource(c.Instance(11), c.Host("s-source_up"), {})) ==
          std::set<std::string>{"source_up"});
    sv1::CheckMigrationResponse d1 = c.DryRun(11, "d-ok1");
    RequireRegistered(d1.instance_checks(), kDryRun | kSourcePrecheck);
    CHECK(Failed(d1.instance_checks()) == std::set<std::string>{"source_up"});
    note(d1.instance_checks());
    // source_options: the pre-checks, the dry run and the API.
    CHECK(Failed(CheckSource(c.Instance(12), c.Host("s-source_options"), bw)) ==
          std::set<std::string>{"source_options"});
    sv1::CheckMigrationResponse d2 = c.DryRun(12, "", bw);
    CHECK(Failed(d2.instance_checks()) == std::set<std::string>{"source_options"});
    note(d2.instance_checks());
    const absl::Status no_bw = c.Request(12, "", bw);
    CHECK(no_bw.code() == absl::StatusCode::kFailedPrecondition);
    CHECK(absl::StrContains(no_bw.message(), "a bandwidth limit (--bandwidth)"));
    CHECK(absl::EndsWith(no_bw.message(), " (nothing was started)"));
    // instance_state: shut off, and missing.
    sv1::CheckMigrationResponse d3 = c.DryRun(2, "d-ok1");
    CHECK(Failed(d3.instance_checks()) == std::set<std::string>{"instance_state"});
    note(d3.instance_checks());
    const absl::Status off = c.Request(2, "d-ok1");
    CHECK(off.code() == absl::StatusCode::kFailedPrecondition);
    CHECK(off.message() ==
          "instance vm-2 is shutoff: only a running or paused instance can be live-migrated");
    CHECK(Failed(c.DryRun(6, "d-ok1").instance_checks()) ==
          std::set<std::string>{"instance_state"});
    const absl::Status missing = c.Request(6, "d-ok1");
    CHECK(missing.code() == absl::StatusCode::kFailedPrecondition);
    CHECK(missing.message() == "instance " + Uuid(6) +
                                   " is missing: its host s-missing no longer reports it; check "
                                   "the host before migrating");
    // instance_not_migrating; shut off and migrating: ABORTED, as before the registry.
    sv1::CheckMigrationResponse d4 = c.DryRun(3, "d-ok2");
    CHECK(Failed(d4.instance_checks()) == std::set<std::string>{"instance_not_migrating"});
    note(d4.instance_checks());
    for (int n : {3, 4}) {
      const absl::Status busy = c.Request(n, "d-ok2");
      CHECK(busy.code() == absl::StatusCode::kAborted);
      CHECK(absl::StrContains(busy.message(), " is already migrating (migration "));
      CHECK(absl::EndsWith(busy.message(), ": wait for it to finish or abort it"));
    }
    for (const Check& k : Checks()) {
      if (k.where & (kSourcePrecheck | kRequest) && k.subject != CheckSubject::kDestination) {
        INFO("check " << k.name);
        CHECK(reported.count(k.name) == 1);
      }
    }
    // A check the dry run reports for its instance checks is registered for it.
    RequireRegistered(d4.instance_checks(), kDryRun | kSourcePrecheck);
  }
}

// Two fake hosts and their agents; fake-a runs instance web-1.
struct Agents {
  std::string dir = livemig::testing::MakeTempDir("checks");
  std::map<std::string, std::unique_ptr<driver::FakeDriver>> drivers;
  std::map<std::string, std::unique_ptr<agent::AgentCore>> cores;
  explicit Agents(const std::string& profile, const std::string& b_virt_caps = "") {
    for (const std::string h : {"fake-a", "fake-b"}) {
      driver::FakeDriver::Options o;
      o.state_dir = dir;
      o.hostname = h;
      o.profile = profile;
      if (h == "fake-b" && !b_virt_caps.empty()) o.xen_virt_caps = b_virt_caps;
      auto d = driver::FakeDriver::Create(o);
      REQUIRE(d.ok());
      drivers[h] = std::move(d).value();
      cores[h] =
          std::make_unique<agent::AgentCore>(agent::AgentCore::Options{h, 4}, drivers[h].get());
    }
    REQUIRE(drivers["fake-a"]->hypervisor().CreateDomain("fake-a", Uuid(1), "web-1", 256).ok());
  }
};

TEST_CASE("the agents' check names are the registry's, for their side") {
  std::set<std::string> dest_names, src_names;
  int run = 0;
  // fake-qemu; fake-libxl (its PV guests: xen_pv_shadow_paging), with and without shadow paging.
  for (const auto& [profile, virt_caps] : std::vector<std::pair<std::string, std::string>>{
           {"fake-qemu", ""}, {"fake-libxl", ""}, {"fake-libxl", "pv hvm hap"}}) {
    Agents a(profile, virt_caps);
    const std::string mid = absl::StrCat("m-", ++run);
    cv1::DescribeInstanceRequest di;
    di.set_instance_uuid(Uuid(1));
    auto desc = a.cores["fake-a"]->DescribeInstance(di);
    REQUIRE(desc.ok());
    auto info = a.cores["fake-a"]->GetHostInfo();
    REQUIRE(info.ok());
    cv1::CheckCanLiveMigrateOnDestRequest d;
    d.set_migration_id(mid);
    d.set_instance_uuid(Uuid(1));
    d.set_source_host("fake-a");
    d.set_dest_host("fake-b");
    *d.mutable_source_cpu() = info->inventory().cpu();
    d.set_source_hypervisor_type(info->inventory().hypervisor_type());
    d.set_source_hypervisor_version(info->inventory().hypervisor_version());
    *d.mutable_instance() = desc->domain();
    auto dr = a.cores["fake-b"]->CheckCanLiveMigrateOnDest(d);
    REQUIRE(dr.ok());
    RequireRegistered(dr->checks(), kDestAgent);
    for (const auto& c : dr->checks()) {
      INFO(profile << " " << virt_caps << ": destination check " << c.name());
      CHECK((FindCheck(c.name())->where & kDestAgent) != 0);
      dest_names.insert(c.name());
    }
    cv1::CheckCanLiveMigrateOnSrcRequest s;
    s.set_migration_id(mid);
    s.set_instance_uuid(Uuid(1));
    s.set_source_host("fake-a");
    s.set_dest_host("fake-b");
    *s.mutable_dest_check_data() = dr->dest_check_data();
    auto sr = a.cores["fake-a"]->CheckCanLiveMigrateOnSrc(s);
    REQUIRE(sr.ok());
    for (const auto& c : sr->checks()) {
      INFO(profile << " " << virt_caps << ": source check " << c.name());
      REQUIRE(FindCheck(c.name()) != nullptr);
      CHECK((FindCheck(c.name())->where & kSourceAgent) != 0);
      src_names.insert(c.name());
    }
  }
  // Every agent check the registry lists for a side (but those of one real driver only) was
  // returned by that side.
  for (const Check& k : Checks()) {
    INFO("check " << k.name);
    if (k.only_driver) continue;
    if (k.where & kDestAgent) CHECK(dest_names.count(k.name) == 1);
    if (k.where & kSourceAgent) CHECK(src_names.count(k.name) == 1);
  }
  CHECK(dest_names.count("xen_pv_shadow_paging") == 1);
}

}  // namespace
}  // namespace livemig::sched
