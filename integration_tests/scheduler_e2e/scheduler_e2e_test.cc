// The real scheduler binary, the real PostgreSQL and two real compute_agent processes (FakeDriver,
// over TCP on 127.0.0.1 with mutual TLS): success, a failure that rolls back, and the scheduler
// SIGKILLed in the middle of a transfer and started again.
#include <catch2/catch.hpp>

#include "absl/strings/str_cat.h"
#include "driver/fake_driver.h"
#include "integration_tests/scheduler_e2e/e2e.h"
#include "integration_tests/scheduler_e2e/fake_cloud.h"
#include "testing/process.h"
#include "testing/run_command.h"

namespace livemig::e2e {
namespace {

constexpr char kUuid[] = "33333333-2222-4333-8444-555555555555";

// host-a and host-b, with the instance kUuid on host-a.
struct TwoHostCloud {
  std::string dir = testing::MakeShortTempDir("e2e");
  Cloud cloud{dir};
  std::string state = dir + "/fake";
  driver::FakeHypervisor hv{state};
  TwoHostCloud() {
    cloud.StartScheduler("--lease 3 --service-down-time 20 --report-interval 1");
    StartFakeAgents(cloud, hv, state, {"host-a", "host-b"});
    REQUIRE(hv.CreateDomain("host-a", kUuid, "web-1", 512).ok());
    INFO(cloud.SchedulerLog());
    REQUIRE(cloud.WaitInstanceOn(kUuid, "host-a", absl::Seconds(20)));
  }
  ~TwoHostCloud() { testing::RunCommand("rm -rf " + dir).IgnoreError(); }
  std::vector<std::pair<std::string, std::string>> Where() {
    auto w = hv.Locate(kUuid);
    REQUIRE(w.ok());
    return *w;
  }
};

using Loc = std::vector<std::pair<std::string, std::string>>;

TEST_CASE("e2e: a migration through the real binaries completes") {
  TwoHostCloud f;
  auto r = f.cloud.Migrate(kUuid, "host-b");
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  auto m = f.cloud.WaitTerminal(r->migration().id(), absl::Seconds(60));
  CHECK(m.status() == v1::MIGRATION_STATUS_COMPLETED);
  CHECK(f.Where() == Loc{{"host-b", "running"}});
  CHECK(f.cloud.WaitInstanceOn(kUuid, "host-b", absl::Seconds(5)));
  CHECK(m.events_size() >= 10);
}

TEST_CASE("e2e: a transfer failure rolls back to the source") {
  TwoHostCloud f;
  REQUIRE(f.hv.SetFailure("host-a", "transfer", "connection reset by peer").ok());
  auto r = f.cloud.Migrate(kUuid, "host-b");
  REQUIRE(r.ok());
  auto m = f.cloud.WaitTerminal(r->migration().id(), absl::Seconds(60));
  CHECK(m.status() == v1::MIGRATION_STATUS_FAILED);
  CHECK(m.failure_reason().find("connection reset by peer") != std::string::npos);
  CHECK(f.Where() == Loc{{"host-a", "running"}});
}

TEST_CASE("e2e: the scheduler killed mid-transfer and restarted resolves the migration") {
  TwoHostCloud f;
  REQUIRE(f.hv.SetTransferDuration("host-a", absl::Seconds(6)).ok());
  auto r = f.cloud.Migrate(kUuid, "host-b");
  REQUIRE(r.ok());
  REQUIRE(testing::WaitFor(
      [&] {
        auto m = f.cloud.Get(r->migration().id());
        return m.ok() && m->status() == v1::MIGRATION_STATUS_RUNNING;
      },
      absl::Seconds(20)));
  f.cloud.KillScheduler();
  f.cloud.StartScheduler();
  auto m = f.cloud.WaitTerminal(r->migration().id(), absl::Seconds(90));
  CHECK(m.status() == v1::MIGRATION_STATUS_COMPLETED);
  CHECK(f.Where() == Loc{{"host-b", "running"}});
  CHECK(f.cloud.WaitInstanceOn(kUuid, "host-b", absl::Seconds(10)));
}

}  // namespace
}  // namespace livemig::e2e
