// The whole system in the two-host lab: PostgreSQL and the scheduler in the root namespace, one
// compute agent inside each lab host (libvirt, QEMU profile or libxl-strict), a real VM.
// A migration requested through the API moves the VM and the database tells its whole story;
// the scheduler SIGKILLed in the middle of a running migration and started again ends with the
// VM on exactly one host and the database agreeing; an abort is a real rollback.
#include <catch2/catch.hpp>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "integration_tests/scheduler_e2e/e2e.h"
#include "integration_tests/scheduler_e2e/lab_cloud.h"
#include "scheduler/convert.h"
#include "testing/lab.h"
#include "testing/process.h"
#include "testing/run_command.h"

namespace livemig::e2e {
namespace {

LabCloud& L() {
  static std::unique_ptr<LabCloud> l = std::make_unique<LabCloud>();
  return *l;
}

TEST_CASE("lab e2e: a migration through the API moves the VM; the database tells the story") {
  auto before = L().lab->Heartbeat(kGuest);
  REQUIRE(before.ok());
  auto r = L().cloud->Migrate(kUuid, "lab-b");
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  auto m = L().cloud->WaitTerminal(r->migration().id(), absl::Seconds(120));
  CHECK(m.status() == v1::MIGRATION_STATUS_COMPLETED);
  CHECK(L().Where() == "b");
  CHECK(L().cloud->WaitInstanceOn(kUuid, "lab-b", absl::Seconds(10)));
  // Every step with its timing.
  for (const char* step :
       {"check_can_live_migrate_on_dest", "check_can_live_migrate_on_src", "pre_live_migration",
        "live_migration", "post_live_migration", "post_live_migration_at_destination"}) {
    bool found = false;
    for (const auto& e : m.events()) {
      if (sched::StepName(e.step()) == step && e.outcome() == sv1::STEP_OUTCOME_SUCCEEDED) {
        found = true;
        CHECK(e.has_finished_at());
      }
    }
    INFO(step);
    CHECK(found);
  }
  CHECK(m.progress().has_bytes());
  CHECK(m.progress().bytes_processed() > 0);
  auto after = L().lab->Heartbeat(kGuest);
  CHECK(after->boots == 1);
}

TEST_CASE("lab e2e: the scheduler killed mid-migration and restarted; one host, database agrees") {
  REQUIRE(L().Where() == "b");
  v1::MigrationOptions slow;
  slow.set_bandwidth_mib_s(16);
  auto r = L().cloud->Migrate(kUuid, "lab-a", slow);
  REQUIRE(r.ok());
  REQUIRE(testing::WaitFor(
      [&] {
        auto m = L().cloud->Get(r->migration().id());
        return m.ok() && m->status() == v1::MIGRATION_STATUS_RUNNING;
      },
      absl::Seconds(60)));
  L().cloud->KillScheduler();
  absl::SleepFor(absl::Seconds(1));
  L().cloud->StartScheduler();
  auto m = L().cloud->WaitTerminal(r->migration().id(), absl::Seconds(180));
  INFO(m.DebugString());
  const std::string where = L().Where();
  CHECK(where.size() == 1);  // exactly one host runs it
  const std::string db_host = m.status() == v1::MIGRATION_STATUS_COMPLETED ? "lab-a" : "lab-b";
  CHECK(where == db_host.substr(4));
  CHECK(L().cloud->WaitInstanceOn(kUuid, db_host, absl::Seconds(10)));
}

TEST_CASE("lab e2e: the unchanged openstack CLI live-migrates the lab's VM") {
  const std::string from = L().Where();
  REQUIRE(from.size() == 1);
  const std::string to = from == "a" ? "lab-b" : "lab-a";
  auto os = testing::RunCommand(absl::StrCat(
      "HOME=", L().lab->dir(), " openstack --os-auth-type admin_token --os-token ", kToken,
      " --os-cacert ", L().cloud->ca_pem(), " --os-endpoint https://127.0.0.1:", L().http_port,
      "/v2.1 --os-compute-api-version 2.79 server migrate --live-migration --host ", to, " ",
      kUuid));
  INFO(os.status().ToString());
  REQUIRE(os.ok());
  REQUIRE(L().cloud->WaitInstanceOn(kUuid, to, absl::Seconds(120)));
  CHECK(L().Where() == to.substr(4));
  auto list = testing::RunCommand(absl::StrCat(
      "HOME=", L().lab->dir(), " openstack --os-auth-type admin_token --os-token ", kToken,
      " --os-cacert ", L().cloud->ca_pem(), " --os-endpoint https://127.0.0.1:", L().http_port,
      "/v2.1 --os-compute-api-version 2.79 server migration list --status completed -f value"));
  REQUIRE(list.ok());
  CHECK(absl::StrContains(*list, to));
}

TEST_CASE("lab e2e: an abort during the transfer is a real rollback") {
  const std::string from = L().Where();
  REQUIRE(from.size() == 1);
  const std::string to = from == "a" ? "lab-b" : "lab-a";
  v1::MigrationOptions slow;
  slow.set_bandwidth_mib_s(2);
  auto r = L().cloud->Migrate(kUuid, to, slow);
  REQUIRE(r.ok());
  REQUIRE(testing::WaitFor(
      [&] {
        auto m = L().cloud->Get(r->migration().id());
        return m.ok() && m->status() == v1::MIGRATION_STATUS_RUNNING &&
               m->progress().bytes_processed() > 0;
      },
      absl::Seconds(60)));
  grpc::ClientContext ctx;
  L().cloud->Prepare(&ctx);
  sv1::AbortMigrationRequest a;
  a.set_migration_id(r->migration().id());
  a.set_requester("e2e-test");
  sv1::AbortMigrationResponse resp;
  grpc::Status s = L().cloud->api().AbortMigration(&ctx, a, &resp);
  INFO(s.error_message());
  REQUIRE(s.ok());
  auto m = L().cloud->WaitTerminal(r->migration().id(), absl::Seconds(120));
  CHECK(m.status() == v1::MIGRATION_STATUS_CANCELLED);
  CHECK(L().Where() == from);
  CHECK(L().cloud->WaitInstanceOn(kUuid, "lab-" + from, absl::Seconds(10)));
}

}  // namespace
}  // namespace livemig::e2e
