// The crash matrix's cases in the two-host lab (real libvirt, a real VM): the scheduler killed
// during `running` and during `post-migrating`, and the source agent killed during `running`,
// each paused at its boundary by a test hook (common/test_hooks.h), SIGKILLed and started again.
// Within 60 s the migration is completed, failed or cancelled; the VM runs on exactly one host,
// was never rebooted, and the database puts it there; no memory claim is left.
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "integration_tests/scheduler_e2e/lab_cloud.h"
#include "testing/process.h"

namespace livemig::e2e {
namespace {

LabCloud& L() {
  static std::unique_ptr<LabCloud> l = std::make_unique<LabCloud>(/*test_hooks=*/true);
  return *l;
}

bool Exists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0;
}

// Migrates the VM to the other host with the hook armed at `point` (which may name "{src}"),
// kills `victim` ("scheduler", "source") when it pauses, restarts it, and checks the promise.
void CrashCase(const std::string& point, const std::string& victim) {
  LabCloud& l = L();
  const std::string from = l.Where();
  REQUIRE(from.size() == 1);
  const std::string src = "lab-" + from, dst = from == "a" ? "lab-b" : "lab-a";
  auto boots_before = l.lab->Heartbeat(kGuest);
  REQUIRE(boots_before.ok());
  for (const char* f : {"arm", "paused", "resume"}) std::remove((l.hooks + "/" + f).c_str());
  std::string armed = point;
  const auto at = armed.find("{src}");
  if (at != std::string::npos) armed.replace(at, 5, src);
  std::ofstream(l.hooks + "/arm") << armed << "\n";

  v1::MigrationOptions slow;
  slow.set_bandwidth_mib_s(32);  // a transfer of a few seconds: the kill lands inside it
  auto r = l.cloud->Migrate(kUuid, dst, slow);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  const bool paused =
      testing::WaitFor([&] { return Exists(l.hooks + "/paused"); }, absl::Seconds(60));
  INFO(l.cloud->SchedulerLog());
  REQUIRE(paused);
  const absl::Time killed = absl::Now();
  if (victim == "scheduler") {
    l.cloud->KillScheduler();
    l.cloud->StartScheduler();
  } else {
    l.KillAndRestartAgent(src);
  }
  auto m = l.cloud->WaitTerminal(r->migration().id(), absl::Seconds(60));
  const absl::Duration took = absl::Now() - killed;
  INFO(m.DebugString());
  std::cout << "  lab: pause " << armed << ", kill " << victim << " -> "
            << v1::MigrationStatus_Name(m.status()) << " "
            << absl::FormatDuration(absl::Trunc(took, absl::Milliseconds(100))) << " after the kill"
            << std::endl;
  CHECK(took < absl::Seconds(60));
  CHECK((m.status() == v1::MIGRATION_STATUS_COMPLETED ||
         m.status() == v1::MIGRATION_STATUS_FAILED ||
         m.status() == v1::MIGRATION_STATUS_CANCELLED));
  const std::string where = l.Where();
  CHECK(where.size() == 1);  // exactly one hypervisor holds it
  const std::string expected = m.status() == v1::MIGRATION_STATUS_COMPLETED ? dst : src;
  CHECK("lab-" + where == expected);
  CHECK(l.cloud->WaitInstanceOn(kUuid, expected, absl::Seconds(15)));
  CHECK(m.memory_claimed_mib() == 0);
  auto boots_after = l.lab->Heartbeat(kGuest);
  REQUIRE(boots_after.ok());
  CHECK(boots_after->boots == boots_before->boots);  // live: never restarted
}

TEST_CASE("lab crash: the scheduler killed during running (transfer in flight)") {
  CrashCase("scheduler:live_migration:started", "scheduler");
}

TEST_CASE("lab crash: the scheduler killed during post-migrating") {
  CrashCase("scheduler:post_live_migration:before", "scheduler");
}

TEST_CASE("lab crash: the source agent killed during running (transfer in flight)") {
  CrashCase("agent:{src}:live_migration:after", "source");
}

}  // namespace
}  // namespace livemig::e2e
