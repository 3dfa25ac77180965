// The product on real Xen: two nested Xen 4.17 hosts (QEMU TCG), libvirt's libxl driver, the
// compute agent in each dom0 started as production starts it (--config from deploy/config's Xen
// example: --profile auto → libxl on xen:///system, xen+tls:// between the hosts, stream
// tunnelled), the scheduler and PostgreSQL on this machine, cloudctl as operators use it.
// Guests: a PV and a PVH guest whose kernel and initramfs live in the instance directory both
// dom0s share; each prints a counter with its boot id and the time every 50 ms and keeps dirtying
// memory, so continuity (one boot, no missing tick) and the guest-visible pause are measured.
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "integration_tests/xenlab/xen_cloud.h"
#include "testing/agent_flow.h"
#include "testing/process.h"

namespace livemig::e2e {
namespace {

constexpr char kPv[] = "xpv";
constexpr char kPvUuid[] = "5b1e0c2a-7d3f-4e8a-9c61-0a2b3c4d5e01";
constexpr char kPvh[] = "xpvh";
constexpr char kPvhUuid[] = "5b1e0c2a-7d3f-4e8a-9c61-0a2b3c4d5e02";

XenCloud& X() {
  static std::unique_ptr<XenCloud> x = [] {
    auto c = std::make_unique<XenCloud>();
    c->StartGuests({{"a", kPv, kPvUuid, "pv"}, {"a", kPvh, kPvhUuid, "pvh"}});
    return c;
  }();
  return *x;
}

TEST_CASE("xen: each host reports Xen 4.17 and the hypervisor's free memory, never Domain-0") {
  for (const std::string h : {"a", "b"}) {
    const std::string name = testing::XenLab::Name(h);
    // a report taken after this point (free memory moves only when domains start or stop)
    REQUIRE(X().WaitHostUp(name, absl::Seconds(30)));
    auto host = X().cloud->GetHost(name);
    REQUIRE(host.ok());
    const auto& inv = host->inventory();
    INFO(inv.DebugString());
    CHECK(inv.hypervisor_type() == "Xen");
    CHECK(inv.hypervisor_version() / 1000000 == 4);
    CHECK(inv.hypervisor_version() / 1000 % 1000 == 17);
    CHECK(inv.capabilities().profile() == "libxl");
    CHECK(inv.capabilities().tunnel_migration_stream());
    CHECK_FALSE(inv.capabilities().supports_abort());
    // Xen's free memory (xl info free_memory: the hypervisor's free pages, dom0 excluded)
    auto xl = X().lab->Ssh(h, "xl info free_memory | sed \"s/.*: *//\"");
    REQUIRE(xl.ok());
    uint64_t xl_free = 0;
    REQUIRE(absl::SimpleAtoi(absl::StripAsciiWhitespace(*xl), &xl_free));
    INFO("xl info free_memory: " << xl_free << " MiB");
    CHECK(inv.memory_free_mib() + 8 >= xl_free);
    CHECK(inv.memory_free_mib() <= xl_free + 8);
    CHECK(inv.memory_reserved_mib() == 256);
    // Xen's paging modes, read as production's unit reads them (xl info before the sandbox)
    CHECK(inv.capabilities().has_pv_live_migration());
    CHECK(inv.capabilities().pv_live_migration());  // the lab's Xen 4.17.5 has shadow paging
    for (const auto& d : inv.domains()) {
      CHECK(d.name() != "Domain-0");
      CHECK(d.uuid() != "00000000-0000-0000-0000-000000000000");
      CHECK(d.domain_id() != 0);
    }
  }
  sv1::ListInstancesRequest lr;
  sv1::ListInstancesResponse li;
  grpc::ClientContext ctx;
  X().cloud->Prepare(&ctx);
  REQUIRE(X().cloud->api().ListInstances(&ctx, lr, &li).ok());
  INFO(li.DebugString());
  CHECK(li.instances_size() == 2);  // the two guests; Domain-0 of each host is not an instance
}

TEST_CASE("xen: a PV guest migrates A→B→A with cloudctl, tunnelled over xen+tls") {
  X().MigrateWithCloudctl(kPv, kPvUuid, "b", "PV, tunnelled");
  X().MigrateWithCloudctl(kPv, kPvUuid, "a", "PV, tunnelled");
}

// The test command's time: each stream mode with one guest kind here (the tunnelled stream is
// the same for both kinds). PV guests migrate not tunnelled in "the driver's steps" below and in
// xen_volumes_test (four legs); a PVH guest tunnelled in bench/xen_lab.sh.
TEST_CASE("xen: a PVH guest migrates there and back with the stream not tunnelled") {
  X().RestartAgent("a", "--no-tunnel");
  X().RestartAgent("b", "--no-tunnel");
  REQUIRE(X().Where(kPv) == "a");
  const std::string pvh_at = X().Where(kPvh);
  REQUIRE(pvh_at.size() == 1);
  const std::string pvh_other = pvh_at == "a" ? "b" : "a";
  X().MigrateWithCloudctl(kPvh, kPvhUuid, pvh_other, "PVH, direct");
  X().MigrateWithCloudctl(kPvh, kPvhUuid, pvh_at, "PVH, direct");
}

TEST_CASE("xen: a destination short of memory after its dom0 reserve is refused with numbers") {
  const std::string from = X().Where(kPvh);
  REQUIRE(from.size() == 1);
  const std::string to = from == "a" ? "b" : "a";
  X().RestartAgent(to, "--no-tunnel --reserved-mib 100000");
  // accepted, then failed by the pre-checks before anything moves: --wait shows the reason
  auto r = X().Cloudctl(
      absl::StrCat("live-migration ", kPvhUuid, " ", testing::XenLab::Name(to), " --wait"));
  INFO(r.out);
  CHECK(r.code != 0);
  CHECK(absl::StrContains(r.out, "MiB"));
  CHECK(absl::StrContains(r.out, "100000"));
  CHECK_FALSE(absl::StrContains(r.out, "running:"));  // refused before any transfer
  CHECK(X().Where(kPvh) == from);
  X().RestartAgent(to, "--no-tunnel");
}

// The driver contract's steps on real Xen, through the agents' gRPC API (thin handlers over
// LibvirtDriver on xen:///system), without the scheduler: describe, both checks and
// pre_live_migration, then a rollback at the destination and at the source after
// pre_live_migration (the guest untouched on the source, nothing left on the destination); then
// the transfer (sent twice: the second attaches), libxl's refusals of force-complete and abort
// while it runs, post_live_migration at both ends. Every step but the transfer is sent twice.
// Both hosts run the same Xen on the same emulated CPU: the agent's test overrides make the
// destination an older Xen (4.16.0) whose CPU lacks most of the source's features, and the checks
// must refuse with the numbers and the features, before anything moves.
TEST_CASE("xen: an older Xen and a CPU lacking features on the destination are refused") {
  const std::string from = X().Where(kPv);
  REQUIRE(from.size() == 1);
  const std::string to = from == "a" ? "b" : "a";
  X().RestartAgent(to,
                   "--no-tunnel --hypervisor-version-override 4016000 "
                   "--cpu-features-override fpu,sse2");
  auto dry = X().Cloudctl(
      absl::StrCat("live-migration ", kPvUuid, " ", testing::XenLab::Name(to), " --dry-run"));
  INFO(dry.out);
  CHECK(dry.code != 0);
  const std::string flat = FlattenTable(dry.out);
  CHECK(absl::StrContains(flat, "hypervisor_version FAIL"));
  CHECK(absl::StrContains(flat, "4.16.0"));
  CHECK(absl::StrContains(flat, "4.17.0"));
  auto run = X().Cloudctl(
      absl::StrCat("live-migration ", kPvUuid, " ", testing::XenLab::Name(to), " --wait"));
  INFO(run.out);
  CHECK(run.code != 0);
  CHECK_FALSE(absl::StrContains(run.out, "running:"));  // refused before any transfer
  CHECK(X().Where(kPv) == from);
  // The CPU alone (the same Xen version): refused by the destination agent's check.
  X().RestartAgent(to, "--no-tunnel --cpu-features-override fpu,sse2");
  auto cpu = X().Cloudctl(
      absl::StrCat("live-migration ", kPvUuid, " ", testing::XenLab::Name(to), " --dry-run"));
  INFO(cpu.out);
  CHECK(cpu.code != 0);
  const std::string cflat = FlattenTable(cpu.out);
  CHECK(absl::StrContains(cflat, "cpu FAIL"));
  CHECK(absl::StrContains(cflat, "lacks source features"));
  CHECK(X().Where(kPv) == from);
  X().RestartAgent(to, "--no-tunnel");
}

TEST_CASE("xen: the driver's steps through the agents, a rollback after pre-migration, post") {
  using S = testing::AgentFlow::S;
  namespace cv1 = ::livemig::compute::v1;
  testing::AgentFlow f(kPvUuid);
  for (const char* h : {"a", "b"}) f.AddHost(h, testing::XenLab::Name(h), X().AgentChannel(h));
  const std::string from = X().Where(kPv);
  REQUIRE(from.size() == 1);
  const std::string to = from == "a" ? "b" : "a";
  auto before = X().lab->Heartbeat(kPv);
  REQUIRE(before.ok());
  auto on_src = f.Describe(from);
  REQUIRE(on_src.present());
  CHECK(on_src.domain().state() == v1::DOMAIN_STATE_RUNNING);
  CHECK(on_src.domain().name() == kPv);
  CHECK_FALSE(on_src.domain().migration_job_active());
  CHECK_FALSE(f.Describe(to).present());

  const std::string rb = absl::StrCat("xen-contract-rb-", getpid());
  auto lm = f.Prepare(rb, from, to);
  f.Rollback(rb, from, to);
  CHECK(X().Where(kPv) == from);
  auto late = f.Call(from, &S::LiveMigration, lm);  // a rolled-back migration cannot start
  CHECK(late.status().code() == absl::StatusCode::kFailedPrecondition);

  const std::string go = absl::StrCat("xen-contract-go-", getpid());
  auto lm2 = f.Prepare(go, from, to);
  auto first = f.Call(from, &S::LiveMigration, lm2);
  INFO(first.status().ToString());
  REQUIRE(first.ok());
  CHECK_FALSE(first->attached());
  auto second = f.Call(from, &S::LiveMigration, lm2);
  REQUIRE(second.ok());
  CHECK(second->attached());  // never a second transfer
  auto fc = f.Call(from, &S::ForceCompleteLiveMigration,
                   f.Step<cv1::ForceCompleteLiveMigrationRequest>(go, from, to));
  INFO(fc.status().ToString());
  CHECK(fc.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(fc.status().message(), "cannot force a running migration"));
  auto ab =
      f.Call(from, &S::AbortLiveMigration, f.Step<cv1::AbortLiveMigrationRequest>(go, from, to));
  INFO(ab.status().ToString());
  CHECK(ab.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(ab.status().message(), "cannot abort a running migration"));
  auto end = f.WaitForEnd(from, go, absl::Seconds(600));
  INFO(X().lab->AgentLog(from));
  REQUIRE(end.state() == cv1::TRANSFER_STATE_COMPLETED);
  f.PostSteps(go, from, to);
  CHECK(X().Where(kPv) == to);
  CHECK_FALSE(f.Describe(from).present());
  // the scheduler learns the move from the hosts' reports
  CHECK(X().cloud->WaitInstanceOn(kPvUuid, testing::XenLab::Name(to), absl::Seconds(30)));
  auto after = X().WaitTicking(kPv, before->last);
  CHECK(after.boots == 1);
  CHECK(after.gaps - before->gaps <= 1);
  std::cout << "xen: the driver's steps through the agents: " << kPv << " -> "
            << testing::XenLab::Name(to)
            << " (PV, direct); the guest's longest pause: " << after.max_pause_ms << " ms"
            << std::endl;
}

TEST_CASE(
    "xen: what libxl cannot do is refused with the reason: bandwidth, downtime, force-complete, "
    "abort") {
  // (in the direct mode the previous case left: the refusals do not depend on the stream)
  const std::string from = X().Where(kPv);
  REQUIRE(from.size() == 1);
  const std::string to = testing::XenLab::Name(from == "a" ? "b" : "a");
  auto bw = X().Cloudctl(absl::StrCat("live-migration ", kPvUuid, " ", to, " --bandwidth 10"));
  INFO(bw.out);
  CHECK(bw.code != 0);
  CHECK(absl::StrContains(bw.out, "bandwidth"));
  auto dt = X().Cloudctl(absl::StrCat("live-migration ", kPvUuid, " ", to, " --max-downtime 300"));
  INFO(dt.out);
  CHECK(dt.code != 0);
  CHECK(absl::StrContains(dt.out, "downtime"));
  CHECK(X().Where(kPv) == from);
  // abort while the transfer runs: libxl has no job abort; the migration goes on and completes
  auto start = X().Cloudctl(absl::StrCat("--json live-migration ", kPvUuid, " ", to));
  INFO(start.out);
  REQUIRE(start.code == 0);
  auto id_at = start.out.find("\"id\"");
  REQUIRE(id_at != std::string::npos);
  auto q1 = start.out.find('"', start.out.find(':', id_at) + 1);
  const std::string id = start.out.substr(q1 + 1, start.out.find('"', q1 + 1) - q1 - 1);
  REQUIRE(testing::WaitFor(
      [&] {
        auto m = X().cloud->Get(id);
        return m.ok() && (m->status() == v1::MIGRATION_STATUS_RUNNING ||
                          m->status() == v1::MIGRATION_STATUS_COMPLETED);
      },
      absl::Seconds(60)));
  // force-complete: refused by the API for a Xen source (libxl has neither post-copy nor
  // pause-to-complete), whatever the transfer's stage
  auto fc = X().Cloudctl("migration-force-complete " + id);
  INFO(fc.out);
  CHECK(fc.code != 0);
  if (absl::StrContains(fc.out, "only a running migration")) {
    WARN("the transfer ended before force-complete reached it; the refusal was not exercised");
  } else {
    CHECK(absl::StrContains(fc.out, "cannot force a running migration to complete"));
  }
  auto ab = X().Cloudctl("migration-abort " + id);
  INFO(ab.out);
  auto m = X().cloud->WaitTerminal(id, absl::Seconds(600));
  CHECK(m.status() == v1::MIGRATION_STATUS_COMPLETED);
  if (absl::StrContains(ab.out, "already completed")) {
    WARN("the transfer ended before the abort reached it; the refusal was not exercised");
  } else {
    CHECK(ab.code != 0);
    CHECK(absl::StrContains(ab.out, "cannot abort a running transfer"));
  }
  CHECK(X().Where(kPv) == (from == "a" ? "b" : "a"));
}

TEST_CASE(
    "xen: a migration URI whose name is not in the destination's certificate fails, saying so") {
  // xen+tls:// checks the peer's name against its certificate (issued for "xenb"): a URI by
  // address must fail with a message about the certificate, and the guest stay on the source.
  const std::string from = X().Where(kPvh);
  REQUIRE(from.size() == 1);
  const std::string to = from == "a" ? "b" : "a";
  const std::string addr = X().lab->Env(to == "a" ? "LINK_A" : "LINK_B");
  X().RestartAgent(to, absl::StrCat("--no-tunnel --migration-uri xen+tls://", addr, "/system"));
  auto r = X().Cloudctl(
      absl::StrCat("live-migration ", kPvhUuid, " ", testing::XenLab::Name(to), " --wait"));
  INFO(r.out);
  CHECK(r.code != 0);
  CHECK(absl::StrContains(absl::AsciiStrToLower(r.out), "certificate"));
  CHECK(X().Where(kPvh) == from);
  CHECK(X().cloud->WaitInstanceOn(kPvhUuid, testing::XenLab::Name(from), absl::Seconds(30)));
  auto beat = X().lab->Heartbeat(kPvh);
  REQUIRE(beat.ok());
  CHECK(beat->boots == 1);
  X().RestartAgent(to, "--no-tunnel");
}

bool Exists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0;
}

std::string MigrationId(const XenCloud::Run& r) {
  auto at = r.out.find("\"id\"");
  if (at == std::string::npos) return "";
  auto q1 = r.out.find('"', r.out.find(':', at) + 1);
  return r.out.substr(q1 + 1, r.out.find('"', q1 + 1) - q1 - 1);
}

// A crash during a migration of the PV guest: `arm` pauses the scheduler at a step boundary
// (common/test_hooks.h) or is empty; `crash` runs once the migration reached `status` (and the
// hook paused); then the promise: a terminal status within the deadline, the guest on exactly
// one host (virsh on both), the scheduler agreeing, never rebooted.
void XenCrashCase(const std::string& what, const std::string& arm, v1::MigrationStatus status,
                  const std::function<void()>& crash) {
  XenCloud& x = X();
  const std::string from = x.Where(kPv);
  REQUIRE(from.size() == 1);
  const std::string to = from == "a" ? "b" : "a";
  auto before = x.lab->Heartbeat(kPv);
  REQUIRE(before.ok());
  for (const char* f : {"arm", "paused", "resume"}) std::remove((x.hooks + "/" + f).c_str());
  if (!arm.empty()) std::ofstream(x.hooks + "/arm") << arm << "\n";
  auto start =
      x.Cloudctl(absl::StrCat("--json live-migration ", kPvUuid, " ", testing::XenLab::Name(to)));
  INFO(start.out);
  REQUIRE(start.code == 0);
  const std::string id = MigrationId(start);
  REQUIRE(!id.empty());
  const bool reached = testing::WaitFor(
      [&] {
        if (!arm.empty()) return Exists(x.hooks + "/paused");
        auto m = x.cloud->Get(id);
        return m.ok() && m->status() == status;
      },
      absl::Seconds(120));
  INFO(x.cloud->SchedulerLog());
  REQUIRE(reached);
  const absl::Time t0 = absl::Now();
  crash();
  auto m = x.cloud->WaitTerminal(id, absl::Seconds(600));
  const absl::Duration took = absl::Now() - t0;
  INFO(m.DebugString());
  std::cout << "xen crash: " << what << " -> " << v1::MigrationStatus_Name(m.status()) << " "
            << absl::FormatDuration(absl::Trunc(took, absl::Seconds(1))) << " after the crash"
            << std::endl;
  CHECK((m.status() == v1::MIGRATION_STATUS_COMPLETED ||
         m.status() == v1::MIGRATION_STATUS_FAILED ||
         m.status() == v1::MIGRATION_STATUS_CANCELLED));
  const std::string where = x.Where(kPv);
  CHECK(where.size() == 1);  // exactly one hypervisor runs it
  const std::string expected = m.status() == v1::MIGRATION_STATUS_COMPLETED ? to : from;
  CHECK(where == expected);
  CHECK(x.cloud->WaitInstanceOn(kPvUuid, testing::XenLab::Name(expected), absl::Seconds(30)));
  CHECK(m.memory_claimed_mib() == 0);
  auto after = X().WaitTicking(kPv, before->last);
  CHECK(after.boots == 1);                // live: never restarted
  CHECK(after.gaps - before->gaps <= 1);  // a torn console line at most (see above)
}

TEST_CASE("xen crash: the scheduler SIGKILLed while the transfer runs, then restarted") {
  XenCrashCase("scheduler killed in running", "scheduler:live_migration:started",
               v1::MIGRATION_STATUS_RUNNING, [] {
                 X().KillAndRestartScheduler();
                 std::ofstream(X().hooks + "/resume") << "";  // nobody waits: it died
               });
}

TEST_CASE("xen crash: the source agent SIGKILLed while libxl's job is active, then restarted") {
  const std::string src = X().Where(kPv);
  XenCrashCase("source agent killed in running", "", v1::MIGRATION_STATUS_RUNNING, [&] {
    // what libxl reports for its migration job: Unbounded, operation Unknown, elapsed time only
    auto job = X().lab->Virsh(src, std::string("domjobinfo ") + kPv);
    INFO(job.status().ToString());
    REQUIRE(job.ok());
    INFO(*job);
    CHECK(absl::StrContains(*job, "Unbounded"));
    X().KillAndRestartAgent(src);
  });
}

TEST_CASE("xen crash: the destination agent SIGKILLed during preparing, then restarted") {
  const std::string dst = X().Where(kPv) == "a" ? "b" : "a";
  XenCrashCase("destination agent killed in preparing", "scheduler:pre_live_migration:before",
               v1::MIGRATION_STATUS_PREPARING, [&] {
                 REQUIRE(X().lab->KillAgent(dst, "KILL").ok());
                 std::ofstream(X().hooks + "/resume") << "";  // the scheduler goes on
                 X().StartAgent(dst, "--no-tunnel");
               });
}

}  // namespace
}  // namespace livemig::e2e
