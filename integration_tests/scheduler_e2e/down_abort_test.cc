// Two promised paths through the real binaries (PostgreSQL, the scheduler, FakeDriver agents as
// separate processes, gRPC and cloudctl):
//   - a migration refused because its destination, or its source, is down (no report within the
//     scheduler's --service-down-time, here 6 s): the exact message users see from LiveMigrate,
//     from the migration's record, from the dry run (CheckMigration) and from cloudctl;
//   - abort while `accepted` and while `preparing`, the migration held at that step by the
//     scheduler's test hooks (common/test_hooks.h): cancelled, the guest untouched on the source,
//     nothing left on the destination (no domain, no staged configuration), no memory claim, and
//     the timeline holds the abort request (step abort, outcome note) and, once the destination
//     was prepared, the rollback steps.
#include <sys/stat.h>
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <regex>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "driver/fake_driver.h"
#include "integration_tests/scheduler_e2e/e2e.h"
#include "integration_tests/scheduler_e2e/fake_cloud.h"
#include "testing/process.h"
#include "testing/run_command.h"

namespace livemig::e2e {
namespace {

using Loc = std::vector<std::pair<std::string, std::string>>;

constexpr int kServiceDownSeconds = 6;

// "<role> <host> is down: no report since <UTC time> (<N>s ago, ...); <what to do>", as a regex
// of the whole message (the time and the age vary).
std::string DownMessage(const std::string& role, const std::string& host) {
  const std::string todo =
      role == "source"
          ? "the instance can be migrated once the host reports again: check its compute agent "
            "\\(running\\? its log; can it reach the scheduler's registry\\?\\)"
          : "choose another destination, or check its compute agent \\(running\\? its log; can "
            "it reach the scheduler's registry\\?\\)";
  return absl::StrCat(role, " ", host,
                      " is down: no report since "
                      "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z \\(([0-9]+)s ago, "
                      "longer than the scheduler's service_down_time\\); ",
                      todo);
}

// Checks `text` is exactly the down message (with `suffix`), and that the age it gives is at
// least the scheduler's service_down_time.
void CheckDown(const std::string& text, const std::string& role, const std::string& host,
               const std::string& suffix = "") {
  INFO(text);
  std::smatch m;
  const std::regex re(DownMessage(role, host) + suffix);
  REQUIRE(std::regex_match(text, m, re));
  CHECK(std::stoi(m[1].str()) >= kServiceDownSeconds);
}

class DownCloud : public FakeCloud {
 public:
  DownCloud()
      : FakeCloud({"downab",
                   absl::StrCat("--lease 3 --service-down-time ", kServiceDownSeconds,
                                " --report-interval 1"),
                   {{"host-a"}, {"host-b"}, {"host-gone"}, {"host-src"}},
                   /*test_hooks=*/true}) {}

  nlohmann::json HostState(const std::string& host) {
    auto snap = hv_.Snapshot();
    REQUIRE(snap.ok());
    return (*snap)["hosts"][host];
  }
  // Stops `host`'s agent and waits until the scheduler shows the host down.
  void TakeDown(const std::string& host) {
    cloud_.agent(host)->Stop(absl::Seconds(10));
    const bool down = testing::WaitFor(
        [&] {
          auto h = cloud_.GetHost(host);
          return h.ok() && !h->up();
        },
        absl::Seconds(kServiceDownSeconds + 20));
    INFO(cloud_.SchedulerLog());
    REQUIRE(down);
  }
  absl::StatusOr<sv1::CheckMigrationResponse> DryRun(const std::string& uuid,
                                                     const std::string& dest) {
    grpc::ClientContext ctx;
    cloud_.Prepare(&ctx, absl::Seconds(30));
    sv1::CheckMigrationRequest r;
    r.set_instance_uuid(uuid);
    r.set_destination(dest);
    sv1::CheckMigrationResponse resp;
    grpc::Status s = cloud_.api().CheckMigration(&ctx, r, &resp);
    if (!s.ok()) return FromGrpc(s);
    return resp;
  }
  absl::Status Abort(const std::string& id) {
    return cloud_.Abort(id, "down-abort-test", "operator changed their mind");
  }

  // Arms the scheduler's test point `point`: the next migration to reach it pauses there.
  void Arm(const std::string& point) {
    for (const char* f : {"paused", "resume"}) std::remove((hooks_ + "/" + f).c_str());
    std::ofstream(hooks_ + "/arm") << "scheduler:" << point;
  }
  bool WaitPaused(const std::string& point) {
    return testing::WaitFor(
        [&] {
          std::ifstream in(hooks_ + "/paused");
          std::string s;
          in >> s;  // "<process>:<point> <pid>"
          return s == "scheduler:" + point;
        },
        absl::Seconds(20));
  }
  void Resume() { std::ofstream(hooks_ + "/resume") << "go"; }
};

DownCloud& D() {
  static std::unique_ptr<DownCloud> c = std::make_unique<DownCloud>();  // removed at exit
  return *c;
}

TEST_CASE("down: a migration to a destination that is down is refused, saying why and what to do") {
  const std::string vm = D().NewVm("host-a");
  D().TakeDown("host-gone");

  // The dry run shows the reason on the destination's dest_up check.
  auto dry = D().DryRun(vm, "host-gone");
  INFO(dry.status().ToString());
  REQUIRE(dry.ok());
  CHECK_FALSE(dry->passed());
  REQUIRE(dry->hosts_size() == 1);
  bool seen = false;
  for (const auto& c : dry->hosts(0).checks()) {
    if (c.name() != "dest_up") continue;
    seen = true;
    CHECK_FALSE(c.passed());
    CheckDown(c.reason(), "destination", "host-gone");
  }
  CHECK(seen);

  // LiveMigrate refuses it at once: nothing is created.
  auto r = D().cloud().Migrate(vm, "host-gone");
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kFailedPrecondition);
  CheckDown(std::string(r.status().message()), "destination", "host-gone",
            " \\(nothing was started\\)");

  // cloudctl prints the same message and fails.
  const auto run = D().Cloudctl(absl::StrCat("live-migration ", vm, " host-gone"));
  INFO(run.second);
  CHECK(run.first != 0);
  CHECK(absl::StrContains(run.second, "destination host-gone is down: no report since "));
  CHECK(absl::StrContains(run.second, "choose another destination, or check its compute agent"));

  CHECK(D().Where(vm) == Loc{{"host-a", "running"}});
}

TEST_CASE(
    "down: a migration of an instance whose source is down fails its pre-checks, saying "
    "why and what to do") {
  const std::string vm = D().NewVm("host-src");
  D().TakeDown("host-src");

  auto dry = D().DryRun(vm, "host-b");
  INFO(dry.status().ToString());
  REQUIRE(dry.ok());
  CHECK_FALSE(dry->passed());
  bool seen = false;
  for (const auto& c : dry->instance_checks()) {
    if (c.name() != "source_up") continue;
    seen = true;
    CHECK_FALSE(c.passed());
    CheckDown(c.reason(), "source", "host-src");
  }
  CHECK(seen);

  auto r = D().cloud().Migrate(vm, "host-b");
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  const sv1::Migration m = D().cloud().WaitTerminal(r->migration().id(), absl::Seconds(30));
  CHECK(m.status() == v1::MIGRATION_STATUS_FAILED);
  CheckDown(m.failure_reason(), "source", "host-src");
  CHECK(m.memory_claimed_mib() == 0);
  CHECK(D().Where(vm) == Loc{{"host-src", "running"}});
  // No agent was asked anything: the destination holds nothing of it.
  const nlohmann::json b = D().HostState("host-b");
  CHECK_FALSE(b["domains"].contains(vm));
  CHECK((!b.contains("staged") || !b["staged"].contains(m.id())));
}

// Abort while the scheduler holds the migration at `point` (status `held`), then let it go on.
sv1::Migration AbortAt(const std::string& point, v1::MigrationStatus held, const std::string& vm) {
  const nlohmann::json before = D().HostState("host-a")["domains"][vm];
  D().Arm(point);
  auto r = D().cloud().Migrate(vm, "host-b");
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  const std::string id = r->migration().id();
  INFO(D().cloud().SchedulerLog());
  REQUIRE(D().WaitPaused(point));
  auto now = D().cloud().Get(id);
  REQUIRE(now.ok());
  CHECK(now->status() == held);
  REQUIRE(D().Abort(id).ok());
  D().Resume();
  const sv1::Migration m = D().cloud().WaitTerminal(id, absl::Seconds(30));
  INFO(m.DebugString());
  CHECK(m.status() == v1::MIGRATION_STATUS_CANCELLED);
  CHECK(m.failure_reason() ==
        "aborted by anonymous [down-abort-test]: operator changed their mind");
  CHECK(m.memory_claimed_mib() == 0);
  // The guest is untouched on the source: the same domain, running, and only there.
  CHECK(D().Where(vm) == Loc{{"host-a", "running"}});
  CHECK(D().HostState("host-a")["domains"][vm] == before);
  CHECK(D().cloud().WaitInstanceOn(vm, "host-a", absl::Seconds(10)));
  // Nothing is left on the destination: no domain, no staged configuration, no memory claim.
  const nlohmann::json b = D().HostState("host-b");
  CHECK_FALSE(b["domains"].contains(vm));
  CHECK((!b.contains("staged") || !b["staged"].contains(id)));
  auto host_b = D().cloud().GetHost("host-b");
  REQUIRE(host_b.ok());
  CHECK(host_b->memory_claimed_mib() == 0);
  // The abort request is a note on the abort step.
  bool note = false;
  for (const auto& e : m.events()) {
    note =
        note || (e.step() == v1::MIGRATION_STEP_ABORT && e.outcome() == sv1::STEP_OUTCOME_NOTE &&
                 absl::StrContains(e.detail(), "abort requested by anonymous [down-abort-test]"));
  }
  CHECK(note);
  return m;
}

bool Has(const sv1::Migration& m, v1::MigrationStep step, sv1::StepOutcome outcome) {
  for (const auto& e : m.events()) {
    if (e.step() == step && e.outcome() == outcome) return true;
  }
  return false;
}

TEST_CASE(
    "abort while accepted: cancelled before the destination is prepared; the guest "
    "untouched") {
  const std::string vm = D().NewVm("host-a");
  const sv1::Migration m = AbortAt("pre_checks:before", v1::MIGRATION_STATUS_ACCEPTED, vm);
  // The run starts from the row as created (no first read: Orchestrator's MigrationRun::Seed),
  // so an abort requested during `accepted` is seen on entering `preparing`, which rolls back
  // (idempotent on a destination that holds nothing): the destination was never prepared and no
  // transfer started.
  CHECK_FALSE(Has(m, v1::MIGRATION_STEP_LIVE_MIGRATION, sv1::STEP_OUTCOME_SUCCEEDED));
  auto journal = D().hv().Journal();
  REQUIRE(journal.ok());
  for (const auto& e : *journal) {
    if (e.migration_id != m.id()) continue;
    INFO(e.host << " " << e.step);
    CHECK(e.step != "pre_live_migration");
    CHECK(e.step != "live_migration");
  }
}

TEST_CASE("abort while preparing: the prepared destination is rolled back; the guest untouched") {
  const std::string vm = D().NewVm("host-a");
  const sv1::Migration m = AbortAt("pre_live_migration:before", v1::MIGRATION_STATUS_PREPARING, vm);
  // The destination was prepared (staged configuration), then rolled back.
  CHECK(Has(m, v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION_AT_DESTINATION,
            sv1::STEP_OUTCOME_SUCCEEDED));
  CHECK(Has(m, v1::MIGRATION_STEP_ROLLBACK_LIVE_MIGRATION, sv1::STEP_OUTCOME_SUCCEEDED));
  CHECK_FALSE(Has(m, v1::MIGRATION_STEP_LIVE_MIGRATION, sv1::STEP_OUTCOME_SUCCEEDED));
  // The journal: the destination staged it and rolled it back; the source never transferred.
  auto journal = D().hv().Journal();
  REQUIRE(journal.ok());
  bool staged = false, rolled_back = false;
  for (const auto& e : *journal) {
    if (e.migration_id != m.id()) continue;
    INFO(e.host << " " << e.step);
    staged = staged || (e.host == "host-b" && e.step == "pre_live_migration");
    rolled_back =
        rolled_back || (e.host == "host-b" && e.step == "rollback_live_migration_at_destination");
    CHECK(e.step != "live_migration");
  }
  CHECK(staged);
  CHECK(rolled_back);
}

}  // namespace
}  // namespace livemig::e2e
