// Replays: the scheduler runs with --test-replay-agent-steps=N (a test-only decorator of its agent
// clients), so every agent step RPC is delivered N times in a row and the answers are compared.
// docs/DESIGN.md § Durable writes and idempotency: "Every step RPC is idempotent, keyed by
// migration id, and safe to repeat". For N = 2
// and 3, a completed migration, a transfer failure and a pre_live_migration failure (both rolled
// back) and an operator's abort must end exactly as without replay (same status, the VM on the
// same single host, the database agreeing, the same intent/result events), with 0 different
// answers.
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "integration_tests/faults/fault_cloud.h"
#include "testing/process.h"

namespace livemig::faults {
namespace {

constexpr char kUuid[] = "55555555-2222-4333-8444-555555555555";
constexpr char kFlags[] = "--lease 5 --service-down-time 30 --report-interval 1";

struct Summary {
  int steps = -1, times = -1, different = -1;
  int mismatch_lines = 0;
  std::string mismatches;
};

std::string ReadFrom(const std::string& path, std::streamoff offset) {
  std::ifstream in(path);
  in.seekg(offset);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The last "replay: <steps> steps delivered <times> times, <different> different answers" line.
Summary ParseSummary(const std::string& log) {
  Summary s;
  std::istringstream in(log);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("answered differently") != std::string::npos) {
      ++s.mismatch_lines;
      s.mismatches += line + "\n";
    }
    auto pos = line.find("replay: ");
    if (pos == std::string::npos) continue;
    Summary t;
    if (std::sscanf(line.c_str() + pos, "replay: %d steps delivered %d times, %d different",
                    &t.steps, &t.times, &t.different) == 3) {
      s.steps = t.steps;
      s.times = t.times;
      s.different = t.different;
    }
  }
  return s;
}

struct Outcome {
  v1::MigrationStatus status = v1::MIGRATION_STATUS_UNSPECIFIED;
  std::string host;  // where the VM ended
  std::vector<std::string> steps;
  Summary replay;
};

class ReplayCloud {
 public:
  ReplayCloud() { f_.StartTwoHostsWithVm(kUuid); }
  FaultCloud& f() { return f_; }
  const std::string& vm_host() const { return vm_host_; }
  std::string other() const { return vm_host_ == "host-a" ? "host-b" : "host-a"; }

  // Restarts the scheduler with `times` deliveries per step (1: no replay).
  void RestartScheduler(int times) {
    f_.cloud.KillScheduler();
    std::ifstream in(f_.cloud.scheduler()->log(), std::ios::ate);
    log_offset_ = in ? static_cast<std::streamoff>(in.tellg()) : 0;
    f_.cloud.StartScheduler(times > 1 ? absl::StrCat(kFlags, " --test-replay-agent-steps ", times)
                                      : kFlags);
    INFO(f_.cloud.SchedulerLog());
    REQUIRE(f_.cloud.WaitInstanceOn(kUuid, vm_host_, absl::Seconds(30)));
  }

  // Runs one migration of the VM to the other host; `during` runs once it is accepted.
  Outcome Run(const std::function<void(const std::string& id)>& during = nullptr) {
    const std::string id = f_.Migrate(kUuid, other());
    if (during) during(id);
    auto m = f_.cloud.WaitTerminal(id, absl::Seconds(90));
    Outcome o;
    o.status = m.status();
    o.host = f_.ExpectOneHost(kUuid);
    vm_host_ = o.host;
    o.steps = f_.EventSteps(id);
    o.replay = ParseSummary(ReadFrom(f_.cloud.scheduler()->log(), log_offset_));
    // The scheduler knows it there again (its reports are applied once the claim is released).
    CHECK(f_.cloud.WaitInstanceOn(kUuid, vm_host_, absl::Seconds(30)));
    return o;
  }

 private:
  FaultCloud f_{kFlags};
  std::string vm_host_ = "host-a";
  std::streamoff log_offset_ = 0;
};

// Runs `scenario` without replay, then with 2 and 3 deliveries per step, and compares.
void CompareReplays(ReplayCloud& c, v1::MigrationStatus expected, bool moves,
                    const std::function<Outcome(int times)>& scenario) {
  std::vector<std::string> baseline;
  for (int times : {1, 2, 3}) {
    INFO("deliveries per step: " << times);
    c.RestartScheduler(times);
    const std::string from = c.vm_host(), to = c.other();
    Outcome o = scenario(times);
    CHECK(o.status == expected);
    CHECK(o.host == (moves ? to : from));
    INFO("events: " << absl::StrJoin(o.steps, ", "));
    CHECK(o.steps.size() >= 4);
    if (times == 1) {
      baseline = o.steps;
      CHECK(o.replay.steps == -1);  // no replay line without the flag
      continue;
    }
    INFO("mismatches: " << o.replay.mismatches);
    CHECK(o.steps == baseline);
    CHECK(o.replay.times == times);
    CHECK(o.replay.steps >= 3);
    CHECK(o.replay.different == 0);
    CHECK(o.replay.mismatch_lines == 0);
  }
}

TEST_CASE("replays: a completed migration, every step delivered 2 and 3 times") {
  ReplayCloud c;
  CompareReplays(c, v1::MIGRATION_STATUS_COMPLETED, true, [&](int) { return c.Run(); });
}

TEST_CASE("replays: a transfer failure rolls back the same way when steps are replayed") {
  ReplayCloud c;
  CompareReplays(c, v1::MIGRATION_STATUS_FAILED, false, [&](int) {
    REQUIRE(c.f().hv.SetFailure(c.vm_host(), "transfer", "connection reset by peer").ok());
    return c.Run();
  });
}

TEST_CASE("replays: a pre_live_migration failure rolls back the same way when replayed") {
  ReplayCloud c;
  CompareReplays(c, v1::MIGRATION_STATUS_FAILED, false, [&](int times) {
    // Fails every delivery alike (a persistent failure), so the answers must agree.
    REQUIRE(c.f().hv.SetFailure(c.other(), "pre_live_migration", "disk full", times).ok());
    return c.Run();
  });
}

TEST_CASE("replays: an operator's abort cancels the same way when steps are replayed") {
  ReplayCloud c;
  CompareReplays(c, v1::MIGRATION_STATUS_CANCELLED, false, [&](int) {
    REQUIRE(c.f().hv.SetTransferDuration(c.vm_host(), absl::Seconds(30)).ok());
    Outcome o = c.Run([&](const std::string& id) {
      c.f().WaitTransferRunning(id);
      absl::SleepFor(absl::Milliseconds(500));
      const absl::Status s = c.f().cloud.Abort(id, /*requester=*/"", "replay test");
      INFO(s.message());
      REQUIRE(s.ok());
    });
    REQUIRE(c.f().hv.SetTransferDuration(c.vm_host(), absl::ZeroDuration()).ok());
    return o;
  });
}

TEST_CASE("replays: an operator's force-complete finishes the same way when replayed") {
  ReplayCloud c;
  CompareReplays(c, v1::MIGRATION_STATUS_COMPLETED, true, [&](int) {
    REQUIRE(c.f().hv.SetTransferDuration(c.vm_host(), absl::Seconds(30)).ok());
    const std::string src = c.vm_host();
    Outcome o = c.Run([&](const std::string& id) {
      c.f().WaitTransferRunning(id);
      absl::SleepFor(absl::Milliseconds(500));
      grpc::ClientContext ctx;
      c.f().cloud.Prepare(&ctx);
      sv1::ForceCompleteMigrationRequest r;
      r.set_migration_id(id);
      sv1::ForceCompleteMigrationResponse resp;
      grpc::Status s = c.f().cloud.api().ForceCompleteMigration(&ctx, r, &resp);
      INFO(s.error_message());
      REQUIRE(s.ok());
    });
    REQUIRE(c.f().hv.SetTransferDuration(src, absl::ZeroDuration()).ok());
    return o;
  });
}

}  // namespace
}  // namespace livemig::faults
