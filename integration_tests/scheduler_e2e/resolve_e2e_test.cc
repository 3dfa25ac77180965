// ResolveMigration (scheduler.proto) through the real binaries: PostgreSQL, the scheduler,
// FakeDriver agents as separate processes, gRPC and cloudctl. A real two-running-copies error
// (the destination refuses its rollback as the only running copy while the source runs the
// guest: the scheduler pauses the source's copy and sets error, step two_running_copies), then:
//   - with the source's agent down: Unavailable naming it; with the source's copy paused and
//     nothing on the destination: refused, the guest runs on neither host;
//   - with the guest running on both hosts: refused, saying what each host reports;
//   - after the source's copy is destroyed, naming the wrong host: refused, saying where it runs;
//   - naming the right host (cloudctl migration-resolve): completed, the instance on the
//     destination, no memory claim, the resolve event in cloudctl migration-show;
//   - again: the same answer; naming the other host now: refused;
//   - a migration that completed on its own: FailedPrecondition naming its status.
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "driver/fake_driver.h"
#include "integration_tests/scheduler_e2e/e2e.h"
#include "integration_tests/scheduler_e2e/fake_cloud.h"
#include "testing/process.h"
#include "testing/run_command.h"

namespace livemig::e2e {
namespace {

using Loc = FakeCloud::Loc;

class ResolveCloud : public FakeCloud {
 public:
  ResolveCloud()
      : FakeCloud({"resolv", "--lease 3 --report-interval 1", {{"host-a"}, {"host-b"}}}) {}

  absl::StatusOr<sv1::ResolveMigrationResponse> Resolve(const std::string& id,
                                                        const std::string& running_on) {
    grpc::ClientContext ctx;
    cloud_.Prepare(&ctx, absl::Seconds(30));
    sv1::ResolveMigrationRequest r;
    r.set_migration_id(id);
    r.set_running_on(running_on);
    r.set_reason("checked by hand");
    r.set_requester("resolve-test");
    sv1::ResolveMigrationResponse resp;
    grpc::Status s = cloud_.api().ResolveMigration(&ctx, r, &resp);
    if (!s.ok()) return FromGrpc(s);
    return resp;
  }
  std::pair<int, std::string> Cloudctl(const std::string& args) {
    return FakeCloud::Cloudctl("--requester resolve-test " + args);
  }
};

int Count(const sv1::Migration& m, v1::MigrationStep step) {
  int n = 0;
  for (const auto& e : m.events()) n += e.step() == step;
  return n;
}

TEST_CASE("resolve: a two-running-copies error is closed only where the guest runs alone") {
  ResolveCloud c;
  const std::string vm = c.NewVm("host-a");
  auto& hv = c.hv();
  // The transfer fails; the destination refuses its rollback as the only running copy while the
  // source runs the guest: two running copies, as scheduler_test provokes them.
  REQUIRE(hv.SetTransferDuration("host-a", absl::Milliseconds(300)).ok());
  REQUIRE(hv.SetFailure("host-a", "transfer", "the link went down").ok());
  REQUIRE(hv.SetFailure("host-b", "rollback_live_migration_at_destination",
                        "domain runs on the destination host-b: it may be the only running copy", 1,
                        absl::StatusCode::kFailedPrecondition, v1::ERROR_REASON_ONLY_RUNNING_COPY)
              .ok());
  auto r = c.cloud().Migrate(vm, "host-b");
  REQUIRE(r.ok());
  const std::string id = r->migration().id();
  sv1::Migration m;
  const bool in_error = testing::WaitFor(
      [&] {
        auto g = c.cloud().Get(id);
        if (g.ok()) m = *g;
        return g.ok() && m.status() == v1::MIGRATION_STATUS_ERROR;
      },
      absl::Seconds(20));
  INFO(m.DebugString());
  INFO(c.cloud().SchedulerLog());
  REQUIRE(in_error);
  REQUIRE(m.step() == v1::MIGRATION_STEP_TWO_RUNNING_COPIES);
  CHECK(m.memory_claimed_mib() > 0);  // still claimed: nothing closes it on its own
  CHECK(c.Where(vm) == Loc{{"host-a", "paused"}});
  const std::string number = std::to_string(m.number());

  // The source's agent is down: nothing is guessed, the answer names the host.
  c.cloud().agent("host-a")->Stop(absl::Seconds(10));
  auto unreachable = c.Resolve(id, "host-b");
  INFO(unreachable.status().ToString());
  CHECK(unreachable.status().code() == absl::StatusCode::kUnavailable);
  CHECK(absl::StrContains(unreachable.status().message(), "the agent of host-a cannot say"));
  CHECK(c.cloud().Get(id)->status() == v1::MIGRATION_STATUS_ERROR);
  // Back (on a new port, reported to the registry): the paused copy is not a running one.
  c.StartAgent("host-a");
  absl::StatusOr<sv1::ResolveMigrationResponse> neither = absl::UnknownError("not asked");
  CHECK(testing::WaitFor(
      [&] {
        neither = c.Resolve(id, "host-b");
        return neither.status().code() != absl::StatusCode::kUnavailable;
      },
      absl::Seconds(15)));
  INFO(neither.status().ToString());
  CHECK(neither.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(neither.status().message(),
                          "runs on neither host (host-a: paused; host-b: no domain)"));

  // Both hosts run the guest (the copy on host-b runs; host-a's is resumed by hand).
  REQUIRE(hv.Mutate([&](nlohmann::json& st, bool* changed) {
              nlohmann::json d = st["hosts"]["host-a"]["domains"][vm];
              d["state"] = "running";
              st["hosts"]["host-a"]["domains"][vm] = d;
              st["hosts"]["host-b"]["domains"][vm] = d;
              *changed = true;
              return absl::OkStatus();
            }).ok());
  auto both = c.Resolve(id, "host-b");
  INFO(both.status().ToString());
  REQUIRE_FALSE(both.ok());
  CHECK(both.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(both.status().message(), "runs on both host-a and host-b"));
  CHECK(absl::StrContains(both.status().message(), "(host-a: running; host-b: running)"));
  CHECK(absl::StrContains(both.status().message(), "destroy or pause one copy first"));
  CHECK(c.cloud().Get(id)->status() == v1::MIGRATION_STATUS_ERROR);

  // host-a's copy paused again, host-b's running: a paused copy would take the instance back
  // through host-a's reports once no migration holds it, so it is refused too.
  REQUIRE(hv.Mutate([&](nlohmann::json& st, bool* changed) {
              st["hosts"]["host-a"]["domains"][vm]["state"] = "paused";
              *changed = true;
              return absl::OkStatus();
            }).ok());
  auto paused = c.Resolve(id, "host-b");
  INFO(paused.status().ToString());
  REQUIRE_FALSE(paused.ok());
  CHECK(paused.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(paused.status().message(),
                          "runs on host-b but host-a still holds a paused copy"));
  CHECK(absl::StrContains(paused.status().message(), "destroy the copy on host-a"));
  CHECK(c.cloud().Get(id)->status() == v1::MIGRATION_STATUS_ERROR);

  // The operator destroys the copy on host-a, then names the wrong host: refused, saying where.
  REQUIRE(hv.Mutate([&](nlohmann::json& st, bool* changed) {
              st["hosts"]["host-a"]["domains"].erase(vm);
              *changed = true;
              return absl::OkStatus();
            }).ok());
  CHECK(c.Where(vm) == Loc{{"host-b", "running"}});
  auto wrong = c.Cloudctl(absl::StrCat("migration-resolve ", number, " --running-on host-a"));
  INFO(wrong.second);
  CHECK(wrong.first == 5);  // failed precondition
  CHECK(absl::StrContains(wrong.second, "runs on host-b, not host-a"));
  CHECK(absl::StrContains(wrong.second, "(host-a: no domain; host-b: running)"));
  CHECK(c.cloud().Get(id)->status() == v1::MIGRATION_STATUS_ERROR);

  // The right host: completed, the instance on host-b, the claim released, the event shown.
  auto ok = c.Cloudctl(absl::StrCat("migration-resolve ", number,
                                    " --running-on host-b --reason 'copy on host-a destroyed'"));
  INFO(ok.second);
  REQUIRE(ok.first == 0);
  CHECK(absl::StrContains(ok.second, "resolved: completed"));
  auto done = c.cloud().Get(id);
  REQUIRE(done.ok());
  INFO(done->DebugString());
  CHECK(done->status() == v1::MIGRATION_STATUS_COMPLETED);
  CHECK(done->memory_claimed_mib() == 0);
  CHECK(Count(*done, v1::MIGRATION_STEP_RESOLVE) == 1);
  const std::string event =
      "resolved by anonymous [resolve-test]: runs on host-b: copy on host-a destroyed";
  bool seen = false;
  for (const auto& e : done->events()) {
    seen = seen || (e.step() == v1::MIGRATION_STEP_RESOLVE && e.detail() == event &&
                    e.outcome() == sv1::STEP_OUTCOME_SUCCEEDED);
  }
  CHECK(seen);
  auto inst = c.cloud().GetInstance(vm);
  REQUIRE(inst.ok());
  CHECK(inst->host() == "host-b");
  CHECK(inst->task_state() == sv1::TASK_STATE_NONE);
  auto host_b = c.cloud().GetHost("host-b");
  REQUIRE(host_b.ok());
  CHECK(host_b->memory_claimed_mib() == 0);
  auto show = c.Cloudctl("migration-show " + number);
  INFO(show.second);
  CHECK(show.first == 0);
  CHECK(absl::StrContains(show.second, "| resolve "));
  CHECK(absl::StrContains(show.second, "resolved by anonymous [resolve-test]: runs on"));
  auto json = c.Cloudctl("migration-show --json " + number);
  INFO(json.second);
  CHECK(absl::StrContains(json.second, absl::StrCat("\"detail\": \"", event, "\"")));
  // Stays there as the agents report.
  CHECK(c.cloud().WaitInstanceOn(vm, "host-b", absl::Seconds(10)));

  // Again: the same answer, nothing added; the other host now: refused.
  auto again = c.Resolve(id, "host-b");
  INFO(again.status().ToString());
  REQUIRE(again.ok());
  CHECK(again->migration().status() == v1::MIGRATION_STATUS_COMPLETED);
  CHECK(again->migration().events_size() == done->events_size());
  auto other = c.Resolve(id, "host-a");
  CHECK(other.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(other.status().message(), "already resolved as running on host-b"));

  // A migration that completed on its own has nothing to resolve.
  const std::string vm2 = c.NewVm("host-a");
  auto r2 = c.cloud().Migrate(vm2, "host-b");
  REQUIRE(r2.ok());
  const sv1::Migration m2 = c.cloud().WaitTerminal(r2->migration().id(), absl::Seconds(20));
  REQUIRE(m2.status() == v1::MIGRATION_STATUS_COMPLETED);
  auto finished = c.Resolve(m2.id(), "host-b");
  INFO(finished.status().ToString());
  CHECK(finished.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(finished.status().message(), "is already completed: nothing to resolve"));
}

}  // namespace
}  // namespace livemig::e2e
