// Database outage: PostgreSQL stops for 20 s in the middle of a migration and starts again (same
// port, same data). The migration must converge to completed with the VM on exactly one host and
// the database agreeing. And "no hypervisor action happens without its intent recorded first":
// the FakeDriver journals every driver action, and for each one of the migration the database
// must hold that step's intent event for that host, written (created_at, the server's clock)
// before the action; while the database is down nothing but the transfer itself may act.
#include <catch2/catch.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "integration_tests/faults/fault_cloud.h"
#include "testing/process.h"

namespace livemig::faults {
namespace {

constexpr char kUuid[] = "66666666-2222-4333-8444-555555555555";
constexpr char kFlags[] = "--lease 6 --service-down-time 60 --report-interval 1 --agent-deadline 5";

struct Intent {
  std::string step, host;
  int64_t created_ms = 0;
};

std::vector<Intent> Intents(FaultCloud& f, const std::string& migration_uuid) {
  auto r = f.cloud.Sql(absl::StrCat(
      "SELECT e.step, e.detail, floor(extract(epoch FROM e.created_at) * 1000)::bigint FROM "
      "migration_events e JOIN migrations m ON m.id = e.migration_id WHERE m.uuid = '",
      migration_uuid, "' AND e.kind = 'intent' ORDER BY e.id"));
  REQUIRE(r.ok());
  std::vector<Intent> out;
  for (absl::string_view line : absl::StrSplit(*r, '\n', absl::SkipEmpty())) {
    std::vector<std::string> p = absl::StrSplit(line, '|');
    REQUIRE(p.size() == 3);
    Intent i;
    i.step = p[0];
    const std::string prefix = p[0] + " on ";  // the intent's detail: "<step> on <host>"
    if (p[1].rfind(prefix, 0) == 0) i.host = p[1].substr(prefix.size());
    i.created_ms = std::stoll(p[2]);
    out.push_back(i);
  }
  return out;
}

struct Outage {
  absl::Time stopped, restarting;  // the database is surely down in [stopped, restarting]
};

// Every driver action of the migration has its intent recorded first; none ran in the outage
// except the transfer progressing by itself. Returns the migration's journal.
std::vector<driver::FakeHypervisor::JournalEntry> CheckJournal(FaultCloud& f, const std::string& id,
                                                               const Outage& outage) {
  auto journal = f.hv.Journal();
  REQUIRE(journal.ok());
  const auto intents = Intents(f, id);
  std::vector<driver::FakeHypervisor::JournalEntry> mine;
  for (const auto& e : *journal) {
    const bool in_outage = e.time > outage.stopped && e.time < outage.restarting;
    if (!e.automatic) {
      INFO(e.host << " " << e.step << " of " << e.migration_id << " at "
                  << absl::FormatTime(e.time));
      CHECK_FALSE(in_outage);
    }
    if (e.migration_id != id) continue;
    mine.push_back(e);
    if (e.automatic) continue;
    INFO("driver action " << e.step << " on " << e.host << " at " << absl::ToUnixMillis(e.time));
    bool recorded_before = false;
    for (const auto& i : intents) {
      if (i.step == e.step && i.host == e.host && i.created_ms <= absl::ToUnixMillis(e.time)) {
        recorded_before = true;
      }
    }
    CHECK(recorded_before);
  }
  return mine;
}

bool Has(const std::vector<driver::FakeHypervisor::JournalEntry>& j, const std::string& step) {
  for (const auto& e : j) {
    if (e.step == step) return true;
  }
  return false;
}

const driver::FakeHypervisor::JournalEntry* Find(
    const std::vector<driver::FakeHypervisor::JournalEntry>& j, const std::string& step) {
  for (const auto& e : j) {
    if (e.step == step) return &e;
  }
  return nullptr;
}

// Stops PostgreSQL for `down`, checking that the API reports it unavailable meanwhile.
Outage StopDatabaseFor(FaultCloud& f, const std::string& id, absl::Duration down) {
  Outage o;
  REQUIRE(f.cloud.pg().Stop().ok());
  o.stopped = absl::Now();
  absl::SleepFor(absl::Seconds(2));
  auto during = f.cloud.Get(id);
  CHECK(during.status().code() == absl::StatusCode::kUnavailable);
  absl::SleepFor(down - absl::Seconds(2));
  o.restarting = absl::Now();
  REQUIRE(f.cloud.pg().Restart().ok());
  return o;
}

struct OutageCloud {
  FaultCloud f{kFlags};
  OutageCloud() { f.StartTwoHostsWithVm(kUuid); }
};

TEST_CASE("db outage: 20 s without PostgreSQL in the middle of a 35 s transfer") {
  OutageCloud c;
  FaultCloud& f = c.f;
  const std::string id = f.MigrateTransferring(kUuid, "host-a", "host-b", absl::Seconds(35));
  absl::SleepFor(absl::Seconds(4));
  const Outage outage = StopDatabaseFor(f, id, absl::Seconds(20));
  auto m = f.cloud.WaitTerminal(id, absl::Seconds(90));
  CHECK(m.status() == v1::MIGRATION_STATUS_COMPLETED);
  f.ExpectSettledOn(kUuid, "host-b");
  const auto journal = CheckJournal(f, id, outage);
  for (const char* step : {"check_can_live_migrate_on_dest", "check_can_live_migrate_on_src",
                           "pre_live_migration", "live_migration", "transfer_completed",
                           "post_live_migration", "post_live_migration_at_destination"}) {
    INFO(step);
    CHECK(Has(journal, step));
  }
  CHECK_FALSE(Has(journal, "rollback_live_migration"));
  CHECK(f.cloud.WaitInstanceOn(kUuid, "host-b", absl::Seconds(30)));
}

TEST_CASE("db outage: the transfer ends during the outage; the post steps wait for the database") {
  OutageCloud c;
  FaultCloud& f = c.f;
  const std::string id = f.MigrateTransferring(kUuid, "host-a", "host-b", absl::Seconds(6));
  const Outage outage = StopDatabaseFor(f, id, absl::Seconds(20));
  auto m = f.cloud.WaitTerminal(id, absl::Seconds(90));
  CHECK(m.status() == v1::MIGRATION_STATUS_COMPLETED);
  f.ExpectSettledOn(kUuid, "host-b");
  const auto journal = CheckJournal(f, id, outage);
  const auto* done = Find(journal, "transfer_completed");
  REQUIRE(done != nullptr);
  CHECK(done->time > outage.stopped);  // the transfer ended by itself during the outage
  CHECK(done->time < outage.restarting);
  const auto* post = Find(journal, "post_live_migration");
  const auto* at_dest = Find(journal, "post_live_migration_at_destination");
  REQUIRE(post != nullptr);
  REQUIRE(at_dest != nullptr);
  CHECK(post->time > outage.restarting);  // ... and the post steps waited for the database
  CHECK(at_dest->time > post->time);
  CHECK(f.cloud.WaitInstanceOn(kUuid, "host-b", absl::Seconds(30)));
}

}  // namespace
}  // namespace livemig::faults
