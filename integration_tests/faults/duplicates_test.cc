// Duplicate requests: two scheduler processes share one database; 50 concurrent LiveMigrate calls
// for one instance (distinct request ids, split across both schedulers, released together) must
// create exactly one migration — the other 49 get ABORTED (docs/DESIGN.md § Errors: "instance
// already migrating; concurrent change"), or, when a call reads the instance only after the winner
// completed, INVALID_ARGUMENT (the destination is now its current host) — round after round,
// migrating back and forth. And 50 concurrent calls with the same request id all get that one
// migration.
#include <atomic>
#include <catch2/catch.hpp>
#include <functional>
#include <map>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "integration_tests/faults/fault_cloud.h"

namespace livemig::faults {
namespace {

constexpr char kUuid[] = "44444444-2222-4333-8444-555555555555";
constexpr int kCalls = 50;
constexpr int kRounds = 20;

struct Answer {
  grpc::StatusCode code = grpc::StatusCode::UNKNOWN;
  std::string message, migration_id;
  bool existing = false;
  int scheduler = 0;  // 1 or 2
};

// Fires kCalls LiveMigrate calls at once (a barrier releases them together), alternating between
// the two schedulers' APIs.
std::vector<Answer> Burst(FaultCloud& f, const std::string& dest,
                          const std::function<std::string(int)>& request_id) {
  std::vector<Answer> answers(kCalls);
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < kCalls; ++i) {
    threads.emplace_back([&, i] {
      sv1::LiveMigrateRequest r;
      r.set_instance_uuid(kUuid);
      r.set_destination(dest);
      r.set_request_id(request_id(i));
      r.set_requester("duplicates-test");
      grpc::ClientContext ctx;
      f.cloud.Prepare(&ctx, absl::Seconds(30));
      sv1::LiveMigrateResponse resp;
      auto& api = i % 2 == 0 ? f.cloud.api() : f.cloud.api2();
      ready++;
      while (!go) std::this_thread::yield();
      grpc::Status s = api.LiveMigrate(&ctx, r, &resp);
      answers[i] = {s.error_code(), s.error_message(), resp.migration().id(), resp.existing(),
                    i % 2 == 0 ? 1 : 2};
    });
  }
  while (ready < kCalls) std::this_thread::yield();
  go = true;
  for (auto& t : threads) t.join();
  return answers;
}

std::string Codes(const std::vector<Answer>& answers) {
  std::map<std::string, int> n;
  for (const auto& a : answers) {
    n[absl::StrCat(a.code, a.code == grpc::StatusCode::OK ? "" : " " + a.message)]++;
  }
  std::string out;
  for (const auto& [k, c] : n) absl::StrAppend(&out, c, "x [", k, "]\n");
  return out;
}

struct TwoSchedulers {
  FaultCloud f{"--scheduler-id sched-1 --lease 5 --service-down-time 30 --report-interval 1"};
  TwoSchedulers() {
    f.cloud.StartSecondScheduler(
        "--scheduler-id sched-2 --lease 5 --service-down-time 30 --report-interval 1");
    f.StartTwoHostsWithVm(kUuid);
  }
};

TEST_CASE("duplicates: 50 concurrent requests over two schedulers create one migration") {
  TwoSchedulers t;
  FaultCloud& f = t.f;
  int won_by[3] = {0, 0, 0};
  for (int round = 0; round < kRounds; ++round) {
    const std::string src = round % 2 == 0 ? "host-a" : "host-b";
    const std::string dst = round % 2 == 0 ? "host-b" : "host-a";
    INFO("round " << round << ": " << src << " -> " << dst);
    const int rows_before = f.MigrationRows(kUuid);
    auto answers = Burst(f, dst, [&](int i) { return absl::StrCat("dup-", round, "-", i); });
    INFO(Codes(answers));
    int ok = 0, aborted = 0, late = 0;
    std::string id;
    for (const auto& a : answers) {
      if (a.code == grpc::StatusCode::OK) {
        ++ok;
        id = a.migration_id;
        won_by[a.scheduler]++;
        CHECK_FALSE(a.existing);
      } else if (a.code == grpc::StatusCode::ABORTED) {
        ++aborted;
      } else if (a.code == grpc::StatusCode::INVALID_ARGUMENT &&
                 a.message.find("is the instance's current host") != std::string::npos) {
        ++late;  // read the instance after the winner had already completed: it is on `dst`
      }
    }
    REQUIRE(ok == 1);
    CHECK(aborted + late == kCalls - 1);
    CHECK(f.MigrationRows(kUuid) == rows_before + 1);
    auto m = f.cloud.WaitTerminal(id, absl::Seconds(60));
    CHECK(m.status() == v1::MIGRATION_STATUS_COMPLETED);
    f.ExpectSettledOn(kUuid, dst);
  }
  WARN("accepted by scheduler 1: " << won_by[1] << ", by scheduler 2: " << won_by[2]);
  CHECK(f.MigrationRows(kUuid) == kRounds);
}

TEST_CASE("duplicates: 50 concurrent requests with one request id all get the same migration") {
  TwoSchedulers t;
  FaultCloud& f = t.f;
  for (int round = 0; round < 3; ++round) {
    const std::string dst = round % 2 == 0 ? "host-b" : "host-a";
    INFO("round " << round);
    const int rows_before = f.MigrationRows(kUuid);
    const std::string rid = absl::StrCat("same-request-", round);
    auto answers = Burst(f, dst, [&](int) { return rid; });
    INFO(Codes(answers));
    int ok = 0, created = 0;
    std::set<std::string> ids;
    for (const auto& a : answers) {
      if (a.code != grpc::StatusCode::OK) continue;
      ++ok;
      ids.insert(a.migration_id);
      if (!a.existing) ++created;
    }
    CHECK(ok == kCalls);
    CHECK(ids.size() == 1);
    CHECK(created == 1);
    CHECK(f.MigrationRows(kUuid) == rows_before + 1);
    REQUIRE(!ids.empty());
    auto m = f.cloud.WaitTerminal(*ids.begin(), absl::Seconds(60));
    CHECK(m.status() == v1::MIGRATION_STATUS_COMPLETED);
    CHECK(m.request_id() == rid);
    f.ExpectSettledOn(kUuid, dst);
    // Retried after completion: still the same migration, nothing new.
    auto again = Burst(f, dst, [&](int) { return rid; });
    for (const auto& a : again) {
      CHECK(a.code == grpc::StatusCode::OK);
      CHECK(a.migration_id == *ids.begin());
      CHECK(a.existing);
    }
    CHECK(f.MigrationRows(kUuid) == rows_before + 1);
  }
}

}  // namespace
}  // namespace livemig::faults
