// AgentCore over the FakeDriver: every step, repeated calls, injected failures, conflicts,
// limits and an agent restart during a transfer.
#include "compute/agent_core.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <filesystem>
#include <map>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "driver/fake_driver.h"
#include "testing/process.h"
#include "testing/run_command.h"

namespace livemig::agent {
namespace {

constexpr char kUuid[] = "11111111-2222-4333-8444-555555555555";

// A FakeDriver for `hostname` over the hypervisor state in `dir`, polling every 5 ms (`tweak`
// changes its options).
std::unique_ptr<driver::FakeDriver> NewDriver(
    const std::string& dir, const std::string& hostname, const std::string& profile,
    const std::function<void(driver::FakeDriver::Options&)>& tweak = nullptr) {
  driver::FakeDriver::Options o;
  o.state_dir = dir;
  o.hostname = hostname;
  o.profile = profile;
  o.poll_interval = absl::Milliseconds(5);
  if (tweak) tweak(o);
  auto created = driver::FakeDriver::Create(o);
  REQUIRE(created.ok());
  return std::move(created).value();
}

struct Hosts {
  std::string dir = livemig::testing::MakeTempDir("agent");
  std::unique_ptr<driver::FakeDriver> da, db;
  std::unique_ptr<AgentCore> a, b;
  // `tweak_b` changes fake-b's options (e.g. its Xen's virt_caps).
  explicit Hosts(int max_concurrent = 4, const std::string& profile = "fake-qemu",
                 const std::function<void(driver::FakeDriver::Options&)>& tweak_b = nullptr) {
    da = NewDriver(dir, "fake-a", profile);
    db = NewDriver(dir, "fake-b", profile, tweak_b);
    a = std::make_unique<AgentCore>(AgentCore::Options{"fake-a", max_concurrent}, da.get());
    b = std::make_unique<AgentCore>(AgentCore::Options{"fake-b", max_concurrent}, db.get());
    REQUIRE(da->hypervisor().CreateDomain("fake-a", kUuid, "web-1", 256).ok());
  }
  std::vector<std::pair<std::string, std::string>> Where() {
    auto w = da->hypervisor().Locate(kUuid);
    REQUIRE(w.ok());
    return *w;
  }
};

cv1::GetMigrationProgressRequest Progress(const std::string& mid) {
  cv1::GetMigrationProgressRequest r;
  r.set_migration_id(mid);
  r.set_instance_uuid(kUuid);
  return r;
}

template <typename Req>
Req Step(const std::string& mid, const std::string& uuid = kUuid,
         const std::string& source = "fake-a", const std::string& dest = "fake-b") {
  Req r;
  r.set_migration_id(mid);
  r.set_instance_uuid(uuid);
  r.set_source_host(source);
  r.set_dest_host(dest);
  return r;
}

// Runs steps 4-6 (of instance `uuid`, 256 MiB) and returns the LiveMigration request.
cv1::LiveMigrationRequest Prepare(Hosts& h, const std::string& mid,
                                  const std::string& uuid = kUuid) {
  auto dest = Step<cv1::CheckCanLiveMigrateOnDestRequest>(mid, uuid);
  dest.mutable_instance()->set_memory_mib(256);
  auto d = h.b->CheckCanLiveMigrateOnDest(dest);
  REQUIRE(d.ok());
  REQUIRE(d->passed());
  auto src = Step<cv1::CheckCanLiveMigrateOnSrcRequest>(mid, uuid);
  *src.mutable_dest_check_data() = d->dest_check_data();
  auto s = h.a->CheckCanLiveMigrateOnSrc(src);
  REQUIRE(s.ok());
  REQUIRE(s->passed());
  auto pre = Step<cv1::PreLiveMigrationRequest>(mid, uuid);
  *pre.mutable_migrate_data()->mutable_src_check() = s->src_check_data();
  auto p = h.b->PreLiveMigration(pre);
  REQUIRE(p.ok());
  auto lm = Step<cv1::LiveMigrationRequest>(mid, uuid);
  *lm.mutable_migrate_data()->mutable_src_check() = s->src_check_data();
  *lm.mutable_migrate_data()->mutable_pre_live_migration() = p->pre_live_migration_data();
  return lm;
}

cv1::MigrationProgressReport WaitForEnd(AgentCore& core, const std::string& mid,
                                        const std::string& uuid = kUuid) {
  cv1::GetMigrationProgressRequest req;
  req.set_migration_id(mid);
  req.set_instance_uuid(uuid);
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    auto r = core.GetMigrationProgress(req);
    REQUIRE(r.ok());
    if (r->state() != cv1::TRANSFER_STATE_RUNNING) return *r;
    absl::SleepFor(absl::Milliseconds(5));
  }
  FAIL("transfer did not end within 20 s");
  return {};
}

TEST_CASE("agent: every step of a migration, each repeated, gives the same end state") {
  Hosts h;
  REQUIRE(h.da->hypervisor().SetTransferDuration("fake-a", absl::Milliseconds(100)).ok());
  auto lm = Prepare(h, "m-1");
  // Repeated checks return the recorded answers.
  auto dest = Step<cv1::CheckCanLiveMigrateOnDestRequest>("m-1");
  dest.mutable_instance()->set_memory_mib(256);
  auto again = h.b->CheckCanLiveMigrateOnDest(dest);
  REQUIRE(again.ok());
  CHECK(again->passed());
  auto first = h.a->LiveMigration(lm);
  REQUIRE(first.ok());
  CHECK_FALSE(first->attached());
  auto second = h.a->LiveMigration(lm);  // repeated: attaches, no second transfer
  REQUIRE(second.ok());
  CHECK(second->attached());
  auto end = WaitForEnd(*h.a, "m-1");
  CHECK(end.state() == cv1::TRANSFER_STATE_COMPLETED);
  CHECK(end.progress().bytes_processed() == 256ull << 20);
  for (int i = 0; i < 2; ++i) {
    REQUIRE(h.a->PostLiveMigration(Step<cv1::PostLiveMigrationRequest>("m-1")).ok());
    auto at = h.b->PostLiveMigrationAtDestination(
        Step<cv1::PostLiveMigrationAtDestinationRequest>("m-1"));
    REQUIRE(at.ok());
    CHECK(at->domain().persistent());
  }
  CHECK(h.Where() == std::vector<std::pair<std::string, std::string>>{{"fake-b", "running"}});
  // Conflicting steps after the post steps are refused.
  auto rb = h.b->RollbackLiveMigrationAtDestination(
      Step<cv1::RollbackLiveMigrationAtDestinationRequest>("m-1"));
  CHECK(rb.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(rb.status().message(), "post_live_migration_at_destination"));
  auto src_rb = h.a->RollbackLiveMigration(Step<cv1::RollbackLiveMigrationRequest>("m-1"));
  CHECK(src_rb.status().code() == absl::StatusCode::kFailedPrecondition);
  // DescribeInstance tells the truth on both hosts.
  cv1::DescribeInstanceRequest di;
  di.set_instance_uuid(kUuid);
  di.set_migration_id("m-1");
  auto on_a = h.a->DescribeInstance(di);
  auto on_b = h.b->DescribeInstance(di);
  REQUIRE(on_a.ok());
  REQUIRE(on_b.ok());
  CHECK_FALSE(on_a->present());
  CHECK(on_b->present());
  CHECK(on_b->domain().state() == v1::DOMAIN_STATE_RUNNING);
  CHECK(on_a->transfer().state() == cv1::TRANSFER_STATE_COMPLETED);
}

TEST_CASE("agent: the post steps answer only after a host report read before them has ended") {
  Hosts h;
  auto lm = Prepare(h, "m-f");
  REQUIRE(h.a->LiveMigration(lm).ok());
  REQUIRE(WaitForEnd(*h.a, "m-f").state() == cv1::TRANSFER_STATE_COMPLETED);
  // A report of host b read before the post step, still on its way to the scheduler.
  h.b->ReportStarted();
  std::thread reporter([&] {
    absl::SleepFor(absl::Milliseconds(400));
    h.b->ReportEnded();
  });
  const absl::Time t0 = absl::Now();
  auto at =
      h.b->PostLiveMigrationAtDestination(Step<cv1::PostLiveMigrationAtDestinationRequest>("m-f"));
  const absl::Duration waited = absl::Now() - t0;
  reporter.join();
  REQUIRE(at.ok());
  CHECK(waited >= absl::Milliseconds(350));
  // No report in flight (the one above ended): the source's post step does not wait.
  const absl::Time t1 = absl::Now();
  REQUIRE(h.a->PostLiveMigration(Step<cv1::PostLiveMigrationRequest>("m-f")).ok());
  CHECK(absl::Now() - t1 < absl::Milliseconds(300));
  // A report that never ends delays a step by report_fence_timeout (6 s) on the agent's clock:
  // the answer waits while the clock is short of it and comes once the clock passes it.
  FakeClock clock;
  AgentCore::Options o{"fake-b", 4};
  o.clock = &clock;
  AgentCore stuck(o, h.db.get());
  stuck.ReportStarted();
  std::atomic<bool> answered{false};
  std::thread step([&] {
    stuck
        .RollbackLiveMigrationAtDestination(
            Step<cv1::RollbackLiveMigrationAtDestinationRequest>("m-other"))
        .IgnoreError();
    answered = true;
  });
  REQUIRE(clock.AwaitWaiters(1, absl::Seconds(10)));  // the step waits at the fence
  clock.Advance(o.report_fence_timeout - absl::Seconds(1));
  CHECK_FALSE(clock.AwaitWaiters(2, absl::Milliseconds(300)));  // real time passes: still waits
  CHECK_FALSE(answered);
  clock.Advance(absl::Seconds(1));
  step.join();
  CHECK(answered);
}

TEST_CASE("agent: a rollback before the transfer, each step repeated") {
  Hosts h;
  auto lm = Prepare(h, "m-2");
  for (int i = 0; i < 2; ++i) {
    REQUIRE(h.b->RollbackLiveMigrationAtDestination(
                   Step<cv1::RollbackLiveMigrationAtDestinationRequest>("m-2"))
                .ok());
    auto r = h.a->RollbackLiveMigration(Step<cv1::RollbackLiveMigrationRequest>("m-2"));
    REQUIRE(r.ok());
    CHECK(r->domain().state() == v1::DOMAIN_STATE_RUNNING);
  }
  CHECK(h.Where() == std::vector<std::pair<std::string, std::string>>{{"fake-a", "running"}});
  // The transfer cannot start after the rollback, nor pre-live-migration run again.
  CHECK(h.a->LiveMigration(lm).status().code() == absl::StatusCode::kFailedPrecondition);
  auto pre = Step<cv1::PreLiveMigrationRequest>("m-2");
  *pre.mutable_migrate_data()->mutable_src_check() = lm.migrate_data().src_check();
  CHECK(h.b->PreLiveMigration(pre).status().code() == absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("agent: injected failures are reported and a retry succeeds") {
  Hosts h;
  REQUIRE(
      h.db->hypervisor()
          .SetFailure("fake-b", "post_live_migration_at_destination", "network announce failed", 2)
          .ok());
  auto lm = Prepare(h, "m-3");
  REQUIRE(h.a->LiveMigration(lm).ok());
  CHECK(WaitForEnd(*h.a, "m-3").state() == cv1::TRANSFER_STATE_COMPLETED);
  auto req = Step<cv1::PostLiveMigrationAtDestinationRequest>("m-3");
  auto f1 = h.b->PostLiveMigrationAtDestination(req);
  CHECK(absl::StrContains(f1.status().message(), "network announce failed"));
  CHECK_FALSE(h.b->PostLiveMigrationAtDestination(req).ok());
  CHECK(h.b->PostLiveMigrationAtDestination(req).ok());  // roll forward succeeds
}

TEST_CASE("agent: unknown migrations, bad input, unsupported options, limits") {
  Hosts h(1);
  auto p = h.a->GetMigrationProgress(Progress("nope"));
  CHECK(p.status().code() == absl::StatusCode::kNotFound);
  CHECK(h.a->AbortLiveMigration(Step<cv1::AbortLiveMigrationRequest>("nope")).status().code() ==
        absl::StatusCode::kNotFound);
  auto bad = Step<cv1::CheckCanLiveMigrateOnDestRequest>("a/b");
  CHECK(h.b->CheckCanLiveMigrateOnDest(bad).status().code() == absl::StatusCode::kInvalidArgument);
  // A request sent to the wrong host, and a pre-live-migration without its check.
  auto wrong = Step<cv1::CheckCanLiveMigrateOnDestRequest>("m-4");
  auto misrouted = h.a->CheckCanLiveMigrateOnDest(wrong);  // dest_host is fake-b
  CHECK(misrouted.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(absl::StrContains(misrouted.status().message(), "send it to the agent of fake-b"));
  auto early = Step<cv1::PreLiveMigrationRequest>("m-4");
  early.mutable_migrate_data()->mutable_src_check()->set_domain_xml("<domain/>");
  auto pre = h.b->PreLiveMigration(early);
  CHECK(pre.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(pre.status().message(), "before check_can_live_migrate_on_dest"));
  auto no_data = Step<cv1::LiveMigrationRequest>("m-4");
  CHECK(h.a->LiveMigration(no_data).status().code() == absl::StatusCode::kFailedPrecondition);

  REQUIRE(h.da->hypervisor().SetTransferDuration("fake-a", absl::Seconds(30)).ok());
  REQUIRE(h.da->hypervisor()
              .CreateDomain("fake-a", "22222222-2222-4333-8444-555555555555", "web-2", 64)
              .ok());
  auto lm = Prepare(h, "m-5");
  REQUIRE(h.a->LiveMigration(lm).ok());
  CHECK(h.a->RunningTransfers() == 1);
  // A second transfer beyond max_concurrent_migrations=1 is Unavailable (retry later).
  auto lm2 = lm;
  lm2.set_migration_id("m-6");
  lm2.set_instance_uuid("22222222-2222-4333-8444-555555555555");
  CHECK(h.a->LiveMigration(lm2).status().code() == absl::StatusCode::kUnavailable);
  // A rollback while the transfer runs is refused; abort first.
  CHECK(
      h.a->RollbackLiveMigration(Step<cv1::RollbackLiveMigrationRequest>("m-5")).status().code() ==
      absl::StatusCode::kFailedPrecondition);
  auto ab = h.a->AbortLiveMigration(Step<cv1::AbortLiveMigrationRequest>("m-5"));
  INFO(ab.status().ToString());
  REQUIRE(ab.ok());
  // Repeated at once and after the end, the abort answers the same (idempotent).
  auto ab2 = h.a->AbortLiveMigration(Step<cv1::AbortLiveMigrationRequest>("m-5"));
  INFO(ab2.status().ToString());
  CHECK(ab2.ok());
  CHECK(WaitForEnd(*h.a, "m-5").state() == cv1::TRANSFER_STATE_CANCELLED);
  auto ab3 = h.a->AbortLiveMigration(Step<cv1::AbortLiveMigrationRequest>("m-5"));
  INFO(ab3.status().ToString());
  CHECK(ab3.ok());
  CHECK(h.a->RollbackLiveMigration(Step<cv1::RollbackLiveMigrationRequest>("m-5")).ok());
  CHECK(h.Where() == std::vector<std::pair<std::string, std::string>>{{"fake-a", "running"}});

  // Options the backend lacks fail before any transfer (a libxl-like host).
  driver::FakeDriver::Options o;
  o.state_dir = h.dir;
  o.hostname = "fake-x";
  o.profile = "fake-libxl";
  auto x = driver::FakeDriver::Create(o);
  REQUIRE(x.ok());
  AgentCore xen({"fake-x", 4}, x->get());
  auto opt = lm;
  opt.set_migration_id("m-7");
  opt.set_source_host("fake-x");
  opt.mutable_options()->set_bandwidth_mib_s(8);
  auto refused = xen.LiveMigration(opt);
  CHECK(refused.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(refused.status().message(), "bandwidth"));
}

TEST_CASE("agent: a restarted agent learns the running transfer from the hypervisor") {
  Hosts h;
  REQUIRE(h.da->hypervisor().SetTransferDuration("fake-a", absl::Milliseconds(400)).ok());
  auto lm = Prepare(h, "m-8");
  REQUIRE(h.a->LiveMigration(lm).ok());
  // "Restart": a new core and driver over the same hypervisor state; the old one is gone.
  auto d2 = NewDriver(h.dir, "fake-a", "fake-qemu");
  AgentCore restarted({"fake-a", 4}, d2.get());
  auto p = restarted.GetMigrationProgress(Progress("m-8"));
  REQUIRE(p.ok());
  CHECK(p->state() == cv1::TRANSFER_STATE_RUNNING);
  cv1::DescribeInstanceRequest di;
  di.set_instance_uuid(kUuid);
  auto d = restarted.DescribeInstance(di);
  REQUIRE(d.ok());
  CHECK(d->domain().migration_job_active());
  auto attach = restarted.LiveMigration(lm);
  REQUIRE(attach.ok());
  CHECK(attach->attached());
  CHECK(WaitForEnd(restarted, "m-8").state() == cv1::TRANSFER_STATE_COMPLETED);
  CHECK(h.Where() == std::vector<std::pair<std::string, std::string>>{{"fake-b", "running"}});
  WaitForEnd(*h.a, "m-8");
}

TEST_CASE("agent (libxl): a restarted agent attaches to the transfer it sees as a job only") {
  Hosts h(4, "fake-libxl");
  REQUIRE(h.da->hypervisor().SetTransferDuration("fake-a", absl::Milliseconds(600)).ok());
  auto lm = Prepare(h, "m-9");
  REQUIRE(h.a->LiveMigration(lm).ok());
  // "Restart": a new core and driver over the same hypervisor state.
  auto d2 = NewDriver(h.dir, "fake-a", "fake-libxl");
  AgentCore restarted({"fake-a", 4}, d2.get());
  cv1::DescribeInstanceRequest di;
  di.set_instance_uuid(kUuid);
  auto d = restarted.DescribeInstance(di);
  REQUIRE(d.ok());
  // libxl's job is unbounded, of unknown operation: a job, not named a migration.
  CHECK(d->domain().job_active());
  CHECK_FALSE(d->domain().migration_job_active());
  // The scheduler, whose record says the migration runs, re-sends the step as it does after a
  // takeover: without the destination's data. The agent attaches instead of refusing it.
  auto resend = Step<cv1::LiveMigrationRequest>("m-9");
  auto attach = restarted.LiveMigration(resend);
  INFO(attach.status().ToString());
  REQUIRE(attach.ok());
  CHECK(attach->attached());
  d = restarted.DescribeInstance(di);
  REQUIRE(d.ok());
  if (d->present() && d->domain().job_active()) {
    CHECK(d->domain().migration_job_active());  // this driver now monitors it
  }
  const auto end = WaitForEnd(restarted, "m-9");
  CHECK(end.state() == cv1::TRANSFER_STATE_COMPLETED);
  CHECK_FALSE(end.progress().has_bytes());
  CHECK(h.Where() == std::vector<std::pair<std::string, std::string>>{{"fake-b", "running"}});
  WaitForEnd(*h.a, "m-9");
}

TEST_CASE(
    "agent (libxl): a PV guest is refused migration to and from a host without shadow paging, "
    "a PVH guest migrates") {
  // fake-b runs Xen without shadow paging (Debian 12's 4.17.7 security build); fake-a with.
  Hosts h(4, "fake-libxl", [](driver::FakeDriver::Options& o) {
    o.xen_virt_caps = "pv hvm hap gnttab-v1 gnttab-v2";
  });
  auto inv = h.b->GetHostInfo();
  REQUIRE(inv.ok());
  CHECK_FALSE(inv->inventory().capabilities().pv_live_migration());
  CHECK(inv->inventory().capabilities().xen_virt_caps_size() == 5);
  const std::string want =
      "instance web-1 is a PV guest and host fake-b runs Xen without shadow paging (xl info "
      "virt_caps: pv hvm hap gnttab-v1 gnttab-v2): PV live migration needs log-dirty on shadow "
      "paging. Ways out: boot fake-b with a Xen built with shadow paging (CONFIG_SHADOW_PAGING=y, "
      "e.g. Debian's 4.17.5 from bookworm), or run the guest as PVH or HVM, which migrate on HAP.";
  // The instance as the scheduler passes it: the source agent's description of it.
  auto describe = [&](AgentCore& core, const std::string& uuid) {
    cv1::DescribeInstanceRequest di;
    di.set_instance_uuid(uuid);
    auto d = core.DescribeInstance(di);
    REQUIRE(d.ok());
    REQUIRE(d->present());
    return d->domain();
  };
  auto failed = [](const auto& checks) {
    std::vector<std::string> out;
    for (const auto& c : checks) {
      if (!c.passed()) out.push_back(c.name() + "@" + c.host() + ": " + c.reason());
    }
    return out;
  };

  // PV web-1 on fake-a -> fake-b: the destination refuses.
  CHECK(describe(*h.a, kUuid).guest_kind() == "pv");
  auto dest = Step<cv1::CheckCanLiveMigrateOnDestRequest>("m-pv");
  *dest.mutable_instance() = describe(*h.a, kUuid);
  auto d = h.b->CheckCanLiveMigrateOnDest(dest);
  REQUIRE(d.ok());
  CHECK_FALSE(d->passed());
  CHECK(failed(d->checks()) == std::vector<std::string>{"xen_pv_shadow_paging@fake-b: " + want});
  REQUIRE(h.b->CheckCanLiveMigrateOnDestCleanup(
                 Step<cv1::CheckCanLiveMigrateOnDestCleanupRequest>("m-pv"))
              .ok());

  // A PVH guest on fake-a migrates to fake-b: every step passes, it runs there.
  constexpr char kPvh[] = "11111111-2222-4333-8444-0000000000a1";
  REQUIRE(h.da->hypervisor()
              .CreateDomain("fake-a", kPvh, "web-pvh", 256, "running", {"br-guest"}, "pvh")
              .ok());
  auto step = [&](auto req) {
    req.set_instance_uuid(kPvh);
    return req;
  };
  auto pdest = step(Step<cv1::CheckCanLiveMigrateOnDestRequest>("m-pvh"));
  *pdest.mutable_instance() = describe(*h.a, kPvh);
  auto pd = h.b->CheckCanLiveMigrateOnDest(pdest);
  REQUIRE(pd.ok());
  CHECK(failed(pd->checks()).empty());
  CHECK(pd->passed());
  auto psrc = step(Step<cv1::CheckCanLiveMigrateOnSrcRequest>("m-pvh"));
  *psrc.mutable_dest_check_data() = pd->dest_check_data();
  auto ps = h.a->CheckCanLiveMigrateOnSrc(psrc);
  REQUIRE(ps.ok());
  CHECK(failed(ps->checks()).empty());
  REQUIRE(ps->passed());
  auto pre = step(Step<cv1::PreLiveMigrationRequest>("m-pvh"));
  *pre.mutable_migrate_data()->mutable_src_check() = ps->src_check_data();
  auto pp = h.b->PreLiveMigration(pre);
  REQUIRE(pp.ok());
  auto lm = step(Step<cv1::LiveMigrationRequest>("m-pvh"));
  *lm.mutable_migrate_data()->mutable_src_check() = ps->src_check_data();
  *lm.mutable_migrate_data()->mutable_pre_live_migration() = pp->pre_live_migration_data();
  REQUIRE(h.a->LiveMigration(lm).ok());
  cv1::GetMigrationProgressRequest pr;
  pr.set_migration_id("m-pvh");
  pr.set_instance_uuid(kPvh);
  cv1::TransferState state = cv1::TRANSFER_STATE_RUNNING;
  for (const absl::Time end = absl::Now() + absl::Seconds(20);
       state == cv1::TRANSFER_STATE_RUNNING && absl::Now() < end;
       absl::SleepFor(absl::Milliseconds(5))) {
    auto r = h.a->GetMigrationProgress(pr);
    REQUIRE(r.ok());
    state = r->state();
  }
  CHECK(state == cv1::TRANSFER_STATE_COMPLETED);
  CHECK(describe(*h.b, kPvh).guest_kind() == "pvh");  // still PVH on fake-b

  // A PV guest on fake-b cannot leave it: fake-a (with shadow paging) accepts, the source
  // (fake-b) refuses.
  constexpr char kPvOnB[] = "11111111-2222-4333-8444-0000000000b1";
  REQUIRE(h.db->hypervisor().CreateDomain("fake-b", kPvOnB, "web-b", 256).ok());
  auto back = Step<cv1::CheckCanLiveMigrateOnDestRequest>("m-back", kPvOnB, "fake-b", "fake-a");
  *back.mutable_instance() = describe(*h.b, kPvOnB);
  auto bd = h.a->CheckCanLiveMigrateOnDest(back);
  REQUIRE(bd.ok());
  CHECK(bd->passed());
  auto bsrc = Step<cv1::CheckCanLiveMigrateOnSrcRequest>("m-back", kPvOnB, "fake-b", "fake-a");
  *bsrc.mutable_dest_check_data() = bd->dest_check_data();
  auto bs = h.b->CheckCanLiveMigrateOnSrc(bsrc);
  REQUIRE(bs.ok());
  CHECK_FALSE(bs->passed());
  auto refusals = failed(bs->checks());
  REQUIRE(refusals.size() == 1);
  CHECK(absl::StrContains(refusals[0],
                          "xen_pv_shadow_paging@fake-b: instance web-b is a PV "
                          "guest and host fake-b runs Xen without shadow paging"));
}

// The threads of this process now.
int ThreadCount() {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/task")) n += e.exists();
  return n;
}

// The steps of `mid` that `core` has a record of (DescribeInstance), as step names.
std::vector<std::string> StepsDone(AgentCore& core, const std::string& mid,
                                   const std::string& uuid) {
  cv1::DescribeInstanceRequest di;
  di.set_instance_uuid(uuid);
  di.set_migration_id(mid);
  auto d = core.DescribeInstance(di);
  REQUIRE(d.ok());
  std::vector<std::string> out;
  for (int s : d->steps_done()) out.push_back(StepName(static_cast<v1::MigrationStep>(s)));
  return out;
}

TEST_CASE(
    "agent: records of ended migrations are kept for the window and at most the count, whichever "
    "is smaller; transfer threads are joined when the transfer ends") {
  Hosts h;
  FakeClock clock;
  // Cores with the agent's retention on a fake clock (the hypervisor keeps real time).
  AgentCore::Options o{"fake-a", 4};
  o.finished_keep = absl::Hours(1);
  o.max_finished = 3;
  o.clock = &clock;
  h.a = std::make_unique<AgentCore>(o, h.da.get());
  o.hostname = "fake-b";
  h.b = std::make_unique<AgentCore>(o, h.db.get());
  const int threads_before = ThreadCount();
  auto uuid = [](int i) { return absl::StrFormat("11111111-2222-4333-8444-%012d", i); };
  std::map<int, cv1::PostLiveMigrationAtDestinationResponse> post_at;

  // Five migrations, each of another instance from fake-a to fake-b, each with its transfer.
  for (int i = 1; i <= 5; ++i) {
    const std::string mid = absl::StrCat("m-r", i);
    REQUIRE(h.da->hypervisor().CreateDomain("fake-a", uuid(i), absl::StrCat("web-", i), 64).ok());
    auto lm = Prepare(h, mid, uuid(i));
    REQUIRE(h.a->LiveMigration(lm).ok());
    REQUIRE(WaitForEnd(*h.a, mid, uuid(i)).state() == cv1::TRANSFER_STATE_COMPLETED);
    REQUIRE(h.a->PostLiveMigration(Step<cv1::PostLiveMigrationRequest>(mid, uuid(i))).ok());
    auto at = h.b->PostLiveMigrationAtDestination(
        Step<cv1::PostLiveMigrationAtDestinationRequest>(mid, uuid(i)));
    REQUIRE(at.ok());
    post_at[i] = *at;
    clock.Advance(absl::Minutes(1));
  }
  // The worker threads: joined by the agent's next call once their transfer ended.
  CHECK(livemig::testing::WaitFor(
      [&] {
        (void)h.a->GetHostInfo();  // any call reaps
        return h.a->WorkerThreadCount() == 0;
      },
      absl::Seconds(10)));
  CHECK(ThreadCount() == threads_before);
  // The count: only the 3 most recently ended are kept on each side.
  CHECK(h.a->RecordCount() == 3);
  CHECK(h.b->RecordCount() == 3);
  CHECK(StepsDone(*h.b, "m-r1", uuid(1)).empty());
  CHECK(StepsDone(*h.a, "m-r2", uuid(2)).empty());
  CHECK(StepsDone(*h.a, "m-r3", uuid(3)) ==
        std::vector<std::string>{"check_can_live_migrate_on_src", "live_migration",
                                 "post_live_migration"});
  // Within the bound a replayed step gets its first answer, a conflicting one its refusal.
  for (int i : {3, 5}) {
    auto again = h.b->PostLiveMigrationAtDestination(
        Step<cv1::PostLiveMigrationAtDestinationRequest>(absl::StrCat("m-r", i), uuid(i)));
    REQUIRE(again.ok());
    CHECK(again->SerializeAsString() == post_at[i].SerializeAsString());
  }
  CHECK(h.b->RollbackLiveMigrationAtDestination(
               Step<cv1::RollbackLiveMigrationAtDestinationRequest>("m-r4", uuid(4)))
            .status()
            .code() == absl::StatusCode::kFailedPrecondition);

  // A migration that has not ended here is never dropped, however old: the destination's check
  // and pre-live-migration stay through two hours. The source ran only its check (which changes
  // nothing): that counts as ended, and goes with the window.
  REQUIRE(h.da->hypervisor().CreateDomain("fake-a", uuid(6), "web-6", 64).ok());
  auto lm6 = Prepare(h, "m-r6", uuid(6));
  clock.Advance(absl::Hours(2));
  (void)h.a->GetHostInfo();  // any call reaps
  (void)h.b->GetHostInfo();  // any call reaps
  CHECK(StepsDone(*h.b, "m-r6", uuid(6)) ==
        std::vector<std::string>{"check_can_live_migrate_on_dest", "pre_live_migration"});
  // The window: the five ended more than an hour ago are gone on both sides.
  CHECK(h.a->RecordCount() == 0);
  CHECK(h.b->RecordCount() == 1);
  CHECK(StepsDone(*h.b, "m-r5", uuid(5)).empty());
  // m-r6 ends with a rollback at both ends: kept for the window (at 59 minutes a repeated
  // rollback is answered from the record), then dropped.
  REQUIRE(h.b->RollbackLiveMigrationAtDestination(
                 Step<cv1::RollbackLiveMigrationAtDestinationRequest>("m-r6", uuid(6)))
              .ok());
  auto rb = h.a->RollbackLiveMigration(Step<cv1::RollbackLiveMigrationRequest>("m-r6", uuid(6)));
  REQUIRE(rb.ok());
  clock.Advance(absl::Minutes(59));
  CHECK(StepsDone(*h.b, "m-r6", uuid(6)) ==
        std::vector<std::string>{"check_can_live_migrate_on_dest", "pre_live_migration",
                                 "rollback_live_migration_at_destination"});
  auto rb2 = h.a->RollbackLiveMigration(Step<cv1::RollbackLiveMigrationRequest>("m-r6", uuid(6)));
  REQUIRE(rb2.ok());
  CHECK(rb2->SerializeAsString() == rb->SerializeAsString());
  auto pre6 = Step<cv1::PreLiveMigrationRequest>("m-r6", uuid(6));
  *pre6.mutable_migrate_data()->mutable_src_check() = lm6.migrate_data().src_check();
  auto late = h.b->PreLiveMigration(pre6);  // after its rollback: refused, from the record
  CHECK(late.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(late.status().message(), "rollback_live_migration_at_destination"));
  clock.Advance(absl::Minutes(1) + absl::Seconds(1));
  CHECK(StepsDone(*h.b, "m-r6", uuid(6)).empty());
  CHECK(h.b->RecordCount() == 0);
  (void)h.a->GetHostInfo();  // any call reaps
  CHECK(h.a->RecordCount() == 0);

  // A step refused before anything was recorded leaves no record behind; a refusing check is
  // recorded (a repeat gets the same refusal) and goes with the window.
  CHECK(h.a->LiveMigration(Step<cv1::LiveMigrationRequest>("m-r7", uuid(6))).status().code() ==
        absl::StatusCode::kFailedPrecondition);
  CHECK(h.a->RecordCount() == 0);
  auto big = Step<cv1::CheckCanLiveMigrateOnDestRequest>("m-r8", uuid(6));
  big.mutable_instance()->set_memory_mib(1 << 20);  // more than fake-b has
  auto refused = h.b->CheckCanLiveMigrateOnDest(big);
  REQUIRE(refused.ok());
  CHECK_FALSE(refused->passed());
  CHECK(h.b->RecordCount() == 1);
  clock.Advance(absl::Hours(1) + absl::Seconds(1));
  (void)h.b->GetHostInfo();  // any call reaps
  CHECK(h.b->RecordCount() == 0);
}

}  // namespace
}  // namespace livemig::agent
