#include "integration_tests/faults/fault_cloud.h"

#include <catch2/catch.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "integration_tests/scheduler_e2e/fake_cloud.h"
#include "testing/process.h"
#include "testing/run_command.h"

namespace livemig::faults {

FaultCloud::FaultCloud(const std::string& scheduler_flags)
    : dir(testing::MakeShortTempDir("faults")), cloud(dir), state(dir + "/fake"), hv(state) {
  cloud.StartScheduler(scheduler_flags);
}

FaultCloud::~FaultCloud() = default;

FaultCloud::RemoveDir::~RemoveDir() {
  if (!dir.empty()) testing::RunCommand("rm -rf " + dir).IgnoreError();
}

void FaultCloud::StartAgent(const std::string& host, int port, const std::string& advertise,
                            const std::string& extra) {
  e2e::StartFakeAgent(
      cloud, state, host,
      absl::StrCat(advertise.empty() ? "" : "--advertise-address ", advertise, " ", extra), port);
  e2e::WaitFakeHosts(hv, {host}, absl::Seconds(20));
}

void FaultCloud::AddVm(const std::string& uuid, const std::string& host, uint64_t memory_mib) {
  REQUIRE(hv.CreateDomain(host, uuid, "vm-" + uuid.substr(0, 8), memory_mib).ok());
  if (first_vm.empty()) first_vm = uuid;
  INFO(cloud.SchedulerLog());
  REQUIRE(cloud.WaitInstanceOn(uuid, host, absl::Seconds(30)));
}

void FaultCloud::StartTwoHostsWithVm(const std::string& uuid) {
  StartAgent("host-a");
  StartAgent("host-b");
  AddVm(uuid, "host-a");
}

Loc FaultCloud::Where() { return Where(first_vm); }

Loc FaultCloud::Where(const std::string& uuid) {
  auto w = hv.Locate(uuid);
  REQUIRE(w.ok());
  return *w;
}

namespace {
std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}
}  // namespace

std::string FaultCloud::DbInstance(const std::string& uuid) {
  auto r = cloud.Sql(absl::StrCat(
      "SELECT coalesce(host, ''), coalesce(task_state, '') FROM instances WHERE uuid = '", uuid,
      "'"));
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  return Trim(*r);
}

int FaultCloud::MigrationRows(const std::string& uuid) {
  auto r =
      cloud.Sql(absl::StrCat("SELECT count(*) FROM migrations WHERE instance_uuid = '", uuid, "'"));
  REQUIRE(r.ok());
  return std::stoi(Trim(*r));
}

int FaultCloud::ActiveMigrationRows(const std::string& uuid) {
  auto r = cloud.Sql(absl::StrCat("SELECT count(*) FROM migrations WHERE instance_uuid = '", uuid,
                                  "' AND status NOT IN ('completed', 'failed', 'cancelled')"));
  REQUIRE(r.ok());
  return std::stoi(Trim(*r));
}

std::vector<std::string> FaultCloud::EventSteps(const std::string& migration_uuid) {
  auto r = cloud.Sql(absl::StrCat(
      "SELECT e.step || ':' || e.kind || ':' || e.outcome FROM migration_events e JOIN migrations "
      "m ON m.id = e.migration_id WHERE m.uuid = '",
      migration_uuid, "' AND e.kind <> 'info' ORDER BY e.id"));
  REQUIRE(r.ok());
  std::vector<std::string> out;
  for (absl::string_view line : absl::StrSplit(*r, '\n', absl::SkipEmpty())) {
    out.emplace_back(line);
  }
  return out;
}

void FaultCloud::ExpectSettledOn(const std::string& uuid, const std::string& host) {
  CHECK(Where(uuid) == Loc{{host, "running"}});
  CHECK(DbInstance(uuid) == host + "|");
  CHECK(ActiveMigrationRows(uuid) == 0);
}

std::string FaultCloud::ExpectOneHost(const std::string& uuid) {
  const Loc where = Where(uuid);
  INFO("hypervisors: " << where.size() << " host(s)");
  REQUIRE(where.size() == 1);
  CHECK(where[0].second == "running");
  CHECK(DbInstance(uuid) == where[0].first + "|");
  CHECK(ActiveMigrationRows(uuid) == 0);
  return where[0].first;
}

std::string FaultCloud::Migrate(const std::string& uuid, const std::string& dest,
                                const v1::MigrationOptions& o) {
  return cloud.StartMigration(uuid, dest, o);
}

void FaultCloud::WaitTransferRunning(const std::string& id) {
  REQUIRE(testing::WaitFor(
      [&] {
        auto m = cloud.Get(id);
        return m.ok() && m->status() == v1::MIGRATION_STATUS_RUNNING &&
               m->transfer_started_at().seconds() > 0;
      },
      absl::Seconds(30)));
  // The scheduler records the start before the source agent's LiveMigration creates the
  // transfer: a test that stops the source agent next must first see the transfer itself (seen:
  // the agent stopped before it, no transfer ever, the VM still on the source).
  e2e::WaitFakeTransferRunning(hv, id, absl::Seconds(30));
}

std::string FaultCloud::MigrateTransferring(const std::string& uuid, const std::string& source,
                                            const std::string& dest, absl::Duration transfer) {
  REQUIRE(hv.SetTransferDuration(source, transfer).ok());
  const std::string id = Migrate(uuid, dest);
  WaitTransferRunning(id);
  return id;
}

}  // namespace livemig::faults
