// Every path of a migration through the real binaries: the scheduler, PostgreSQL, and FakeDriver
// compute agents as separate processes talking gRPC with mutual TLS on 127.0.0.1:
//   - each pre-check failure (memory, hypervisor type, version, CPU, network, storage, an option
//     the destination's backend lacks) is recorded on the row as failed, with its numbers;
//   - a failure injected at each step up to the transfer rolls back: failed, VM on the source;
//   - a failure at each post step rolls forward: completed, VM on the destination;
//   - abort while queued and while running: cancelled, VM on the source; on Xen's backend an
//     abort during the transfer is refused with a clear error;
//   - beyond the per-host limit a migration waits as queued, then runs in FIFO order.
// One cloud with a host per trait; each case uses its own VM on host-a.
#include <sys/wait.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>

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

class PathsCloud : public FakeCloud {
 public:
  PathsCloud()
      : FakeCloud(
            {"paths",
             "--lease 3 --service-down-time 20 --report-interval 1 "
             "--max-outbound-per-host 1",
             {
                 {"host-a", ""},
                 {"host-b", ""},
                 {"host-small", "--fake-memory-mib 1280"},  // 1280 - 512 reserve = 768 MiB free
                 {"host-kvm", "--fake-hypervisor-type QEMU"},
                 {"host-old", "--fake-hypervisor-version 4016000"},
                 {"host-cpu", "--cpu-features-override sse4.2,avx,aes"},  // no avx2
                 {"host-nobr", "--bridges br-other"},
                 {"host-local", "--instance-path @DIR@/local-instances"},
                 {"xen-a", "--fake-profile fake-libxl"},
                 {"xen-b", "--fake-profile fake-libxl"},
                 // Xen without shadow paging (Debian 12's 4.17.7 security build): no PV
                 // live migration.
                 {"xen-noshadow",
                  "--fake-profile fake-libxl --fake-xen-virt-caps 'pv hvm hap gnttab-v1 "
                  "gnttab-v2'"},
             }}) {}

  // A new running VM of `mib` MiB on `host`, known to the scheduler; `kind`: its Xen guest kind
  // on fake-libxl hosts ("": PV).
  std::string NewVm(const std::string& host = "host-a", uint64_t mib = 1024,
                    const std::string& kind = "") {
    return FakeCloud::NewVm(host, mib, kind);
  }
  sv1::Migration MigrateAndWait(const std::string& uuid, const std::string& dest,
                                const v1::MigrationOptions& o = {}) {
    auto r = cloud_.Migrate(uuid, dest, o);
    INFO(r.status().ToString());
    REQUIRE(r.ok());
    return cloud_.WaitTerminal(r->migration().id(), absl::Seconds(60));
  }
  absl::Status Abort(const std::string& id) { return cloud_.Abort(id, "paths-test"); }
  std::string AgentLog(const std::string& host) {
    auto text = testing::RunCommand(absl::StrCat("cat ", dir_, "/agent-", host, ".log"));
    return text.ok() ? *text : "";
  }
};

PathsCloud& P() {
  static std::unique_ptr<PathsCloud> c = std::make_unique<PathsCloud>();  // removed at exit
  return *c;
}

TEST_CASE("paths: each pre-check failure is recorded as failed with its cause and numbers") {
  struct Want {
    std::string dest;
    std::string check, words;
    v1::MigrationOptions options;
  };
  v1::MigrationOptions no_block;
  no_block.set_block_migration(v1::BLOCK_MIGRATION_NO);
  v1::MigrationOptions downtime;
  downtime.set_max_downtime_ms(300);
  const std::vector<Want> wants = {
      {"host-small",
       "memory",
       "host-small has 1280 MiB free; the 512 MiB dom0 reserve and 0 MiB claimed by inbound "
       "migrations leave 768 MiB",
       {}},
      {"host-kvm", "hypervisor type", "source runs Xen, destination host-kvm runs QEMU", {}},
      {"host-old",
       "hypervisor version",
       "destination host-old has Xen 4.16.0 < the source's 4.17.0",
       {}},
      {"host-cpu", "CPU", "host-cpu CPU lacks source features: avx2", {}},
      {"host-nobr", "network", "host-nobr lacks network segment(s) br-guest", {}},
      {"host-local", "storage", "block migration is not possible", no_block},
      {"xen-a", "option", "does not support a maximum downtime", downtime},
  };
  for (const Want& w : wants) {
    INFO(w.check << " via " << w.dest);
    const std::string vm = P().NewVm();
    const sv1::Migration m = P().MigrateAndWait(vm, w.dest, w.options);
    CHECK(m.status() == v1::MIGRATION_STATUS_FAILED);
    INFO(m.failure_reason());
    CHECK(absl::StrContains(m.failure_reason(), w.words));
    CHECK(P().Where(vm) == Loc{{"host-a", "running"}});
    CHECK(m.memory_claimed_mib() == 0);
    std::cout << "  pre-check " << w.check << ": " << m.failure_reason() << std::endl;
  }
}

TEST_CASE(
    "paths (Xen): a PV guest is refused migration to and from a host without shadow paging, "
    "with the reason and the ways out; a PVH guest migrates there") {
  const std::string refusal =
      " is a PV guest and host xen-noshadow runs Xen without shadow paging (xl info virt_caps: pv "
      "hvm hap gnttab-v1 gnttab-v2): PV live migration needs log-dirty on shadow paging. Ways "
      "out: boot xen-noshadow with a Xen built with shadow paging (CONFIG_SHADOW_PAGING=y, e.g. "
      "Debian's 4.17.5 from bookworm), or run the guest as PVH or HVM, which migrate on HAP.";
  // The agent read its flag and said so at start; the host's paging modes reach the scheduler.
  CHECK(absl::StrContains(P().AgentLog("xen-noshadow"),
                          "Xen virt_caps: pv hvm hap gnttab-v1 gnttab-v2: no shadow paging"));
  const auto show = P().Cloudctl("host-show xen-noshadow");
  INFO(show.second);
  CHECK(show.first == 0);
  CHECK(absl::StrContains(show.second, "xen virt_caps"));
  CHECK(absl::StrContains(show.second, "pv hvm hap gnttab-v1 gnttab-v2 (no shadow paging"));

  // A PV guest on xen-a (with shadow paging) to xen-noshadow: the dry run shows the check
  // failing, and the migration fails in the destination's check, before any transfer.
  const std::string pv = P().NewVm("xen-a", 512);
  const auto dry = P().Cloudctl(absl::StrCat("live-migration ", pv, " xen-noshadow --dry-run"));
  INFO(dry.second);
  CHECK(dry.first != 0);
  CHECK(absl::StrContains(dry.second, "xen_pv_shadow_paging"));
  const auto dry_json =
      P().Cloudctl(absl::StrCat("--json live-migration ", pv, " xen-noshadow --dry-run"));
  INFO(dry_json.second);
  CHECK(absl::StrContains(dry_json.second,
                          "runs Xen without shadow paging (xl info virt_caps: pv hvm hap "
                          "gnttab-v1 gnttab-v2): PV live migration needs log-dirty on shadow "
                          "paging. Ways out: boot xen-noshadow with a Xen built with shadow "
                          "paging (CONFIG_SHADOW_PAGING=y"));
  const auto run = P().Cloudctl(absl::StrCat("live-migration ", pv, " xen-noshadow --wait"));
  INFO(run.second);
  CHECK(run.first == 8);  // --wait: the migration ended badly
  CHECK(absl::StrContains(run.second, "failed: instance vm-"));
  CHECK(absl::StrContains(run.second, refusal));
  CHECK(P().Where(pv) == Loc{{"xen-a", "running"}});
  auto journal = P().hv().Journal();
  REQUIRE(journal.ok());
  for (const auto& e : *journal) {
    if (e.host == "xen-a") CHECK(e.step != "live_migration");  // no transfer was started
  }
  std::cout << "  PV to a host without shadow paging: " << run.second;

  // A PVH guest on the same hosts: the dry run passes and it migrates.
  const std::string pvh = P().NewVm("xen-a", 512, "pvh");
  const auto pvh_dry =
      P().Cloudctl(absl::StrCat("live-migration ", pvh, " xen-noshadow --dry-run"));
  INFO(pvh_dry.second);
  CHECK(pvh_dry.first == 0);
  const auto moved = P().Cloudctl(absl::StrCat("live-migration ", pvh, " xen-noshadow --wait"));
  INFO(moved.second);
  CHECK(moved.first == 0);
  CHECK(P().Where(pvh) == Loc{{"xen-noshadow", "running"}});

  // A PV guest on xen-noshadow cannot leave it: the source's check refuses it.
  const std::string stuck = P().NewVm("xen-noshadow", 512);
  const sv1::Migration m = P().MigrateAndWait(stuck, "xen-a");
  CHECK(m.status() == v1::MIGRATION_STATUS_FAILED);
  INFO(m.failure_reason());
  CHECK(absl::StrContains(m.failure_reason(), refusal));
  CHECK(P().Where(stuck) == Loc{{"xen-noshadow", "running"}});
}

TEST_CASE("paths: a failure at each step up to the transfer rolls back to the source") {
  const std::vector<std::pair<std::string, std::string>> steps = {
      {"host-b", "check_can_live_migrate_on_dest"},
      {"host-a", "check_can_live_migrate_on_src"},
      {"host-b", "pre_live_migration"},
      {"host-a", "live_migration"},
      {"host-a", "transfer"},
  };
  for (const auto& [host, step] : steps) {
    INFO(step << " fails on " << host);
    const std::string vm = P().NewVm();
    REQUIRE(P().hv().SetFailure(host, step, "injected for the paths test").ok());
    const sv1::Migration m = P().MigrateAndWait(vm, "host-b");
    CHECK(m.status() == v1::MIGRATION_STATUS_FAILED);
    INFO(m.failure_reason());
    CHECK(absl::StrContains(m.failure_reason(), "injected for the paths test"));
    CHECK(P().Where(vm) == Loc{{"host-a", "running"}});
    CHECK(P().cloud().WaitInstanceOn(vm, "host-a", absl::Seconds(10)));
    std::cout << "  " << step << " failed -> " << v1::MigrationStatus_Name(m.status()) << ": "
              << m.failure_reason() << std::endl;
  }
}

TEST_CASE("paths: a failure at each post step rolls forward to the destination") {
  for (const auto& [host, step] : std::vector<std::pair<std::string, std::string>>{
           {"host-a", "post_live_migration"}, {"host-b", "post_live_migration_at_destination"}}) {
    INFO(step << " fails once on " << host);
    const std::string vm = P().NewVm();
    REQUIRE(P().hv().SetFailure(host, step, "injected post-step failure").ok());
    const sv1::Migration m = P().MigrateAndWait(vm, "host-b");
    CHECK(m.status() == v1::MIGRATION_STATUS_COMPLETED);
    CHECK(P().Where(vm) == Loc{{"host-b", "running"}});
    CHECK(P().cloud().WaitInstanceOn(vm, "host-b", absl::Seconds(10)));
    bool retried = false;
    for (const auto& e : m.events()) {
      retried = retried || absl::StrContains(e.detail(), "rolling forward");
    }
    CHECK(retried);
  }
}

TEST_CASE("paths: abort while running and while queued cancels; the VM stays on the source") {
  REQUIRE(P().hv().SetTransferDuration("host-a", absl::Seconds(20)).ok());
  const std::string first = P().NewVm(), second = P().NewVm();
  auto r1 = P().cloud().Migrate(first, "host-b");
  REQUIRE(r1.ok());
  REQUIRE(P().cloud().WaitStatus(r1->migration().id(), v1::MIGRATION_STATUS_RUNNING,
                                 absl::Seconds(20)));
  // host-a may send one at a time (--max-outbound-per-host 1): the second waits.
  auto r2 = P().cloud().Migrate(second, "host-b");
  REQUIRE(r2.ok());
  REQUIRE(
      P().cloud().WaitStatus(r2->migration().id(), v1::MIGRATION_STATUS_QUEUED, absl::Seconds(10)));
  REQUIRE(P().Abort(r2->migration().id()).ok());
  auto m2 = P().cloud().WaitTerminal(r2->migration().id(), absl::Seconds(20));
  CHECK(m2.status() == v1::MIGRATION_STATUS_CANCELLED);
  CHECK(P().Where(second) == Loc{{"host-a", "running"}});
  REQUIRE(P().Abort(r1->migration().id()).ok());
  auto m1 = P().cloud().WaitTerminal(r1->migration().id(), absl::Seconds(30));
  CHECK(m1.status() == v1::MIGRATION_STATUS_CANCELLED);
  CHECK(absl::StrContains(m1.failure_reason(), "aborted by"));
  CHECK(P().Where(first) == Loc{{"host-a", "running"}});
  CHECK(P().cloud().WaitInstanceOn(first, "host-a", absl::Seconds(10)));
  REQUIRE(P().hv().SetTransferDuration("host-a", absl::ZeroDuration()).ok());
}

TEST_CASE("paths: on Xen's backend an abort during the transfer is refused with a clear error") {
  REQUIRE(P().hv().SetTransferDuration("xen-a", absl::Seconds(4)).ok());
  const std::string vm = P().NewVm("xen-a");
  auto r = P().cloud().Migrate(vm, "xen-b");
  REQUIRE(r.ok());
  REQUIRE(
      P().cloud().WaitStatus(r->migration().id(), v1::MIGRATION_STATUS_RUNNING, absl::Seconds(20)));
  const absl::Status a = P().Abort(r->migration().id());
  INFO(a.ToString());
  CHECK(a.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(a.message(), "abort"));
  auto m = P().cloud().WaitTerminal(r->migration().id(), absl::Seconds(30));
  CHECK(m.status() == v1::MIGRATION_STATUS_COMPLETED);  // the transfer went on to its end
  CHECK(P().Where(vm) == Loc{{"xen-b", "running"}});
}

TEST_CASE("paths: beyond the per-host limit migrations wait as queued, then run one at a time") {
  REQUIRE(P().hv().SetTransferDuration("host-a", absl::Seconds(2)).ok());
  std::vector<std::string> vms, ids;
  for (int i = 0; i < 3; ++i) vms.push_back(P().NewVm());
  for (const auto& vm : vms) {
    auto r = P().cloud().Migrate(vm, "host-b");
    REQUIRE(r.ok());
    ids.push_back(r->migration().id());
  }
  CHECK(P().cloud().WaitStatus(ids[2], v1::MIGRATION_STATUS_QUEUED, absl::Seconds(5)));
  std::vector<sv1::Migration> done;
  for (const auto& id : ids) done.push_back(P().cloud().WaitTerminal(id, absl::Seconds(60)));
  for (size_t i = 0; i < done.size(); ++i) {
    CHECK(done[i].status() == v1::MIGRATION_STATUS_COMPLETED);
    CHECK(P().Where(vms[i]) == Loc{{"host-b", "running"}});
  }
  // One at a time: in the order their transfers started, each started after the one before had
  // finished (its slot is released by its terminal status). The order itself is FIFO among the
  // migrations waiting in `queued`; one whose pre-checks are still running is not in line yet,
  // so the second and third requests may run in either order.
  auto ms = [](const google::protobuf::Timestamp& t) {
    return t.seconds() * 1000 + t.nanos() / 1000000;
  };
  std::vector<sv1::Migration> by_start = done;
  std::sort(by_start.begin(), by_start.end(), [&](const auto& a, const auto& b) {
    return ms(a.transfer_started_at()) < ms(b.transfer_started_at());
  });
  for (size_t i = 1; i < by_start.size(); ++i) {
    INFO(by_start[i].number() << " after " << by_start[i - 1].number());
    CHECK(ms(by_start[i].transfer_started_at()) >= ms(by_start[i - 1].finished_at()) - 50);
  }
  REQUIRE(P().hv().SetTransferDuration("host-a", absl::ZeroDuration()).ok());
}

}  // namespace
}  // namespace livemig::e2e
