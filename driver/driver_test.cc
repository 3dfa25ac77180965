// The ComputeDriver contract, run against every implementation that can run here without the
// lab: FakeDriver (both profiles) and LibvirtDriver on libvirt's test driver (test:///default:
// inventory, lookup, lifecycle). Migration on LibvirtDriver runs in the lab tests.
// Plus the shared checks and the strict libxl layer.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/clock.h"
#include "driver/checks.h"
#include "driver/fake_driver.h"
#include "driver/libvirt_api.h"
#include "driver/libvirt_driver.h"

namespace livemig::driver {
namespace {

constexpr char kTestDomainUuid[] = "6695eb01-f6a4-8304-79aa-97f2502e193f";  // test:///default
constexpr char kAbsentUuid[] = "00000000-0000-4000-8000-00000000dead";
constexpr char kFakeUuid[] = "11111111-2222-4333-8444-555555555555";

std::string TempDir(const std::string& tag) {
  std::string t =
      absl::StrCat(getenv("TEST_TMPDIR") ? getenv("TEST_TMPDIR") : "/tmp", "/", tag, "-XXXXXX");
  REQUIRE(mkdtemp(t.data()) != nullptr);
  return t;
}

// One implementation under the contract, with a running domain it knows.
struct Subject {
  std::string name;
  std::unique_ptr<ComputeDriver> driver;
  std::string running_uuid;
  bool libxl_like = false;
};

Subject MakeFake(const std::string& profile) {
  const std::string dir = TempDir("fake");
  FakeDriver::Options o;
  o.state_dir = dir;
  o.hostname = "fake-a";
  o.profile = profile;
  auto d = FakeDriver::Create(o);
  REQUIRE(d.ok());
  REQUIRE((*d)->hypervisor().CreateDomain("fake-a", kFakeUuid, "web-1", 256).ok());
  return Subject{"FakeDriver " + profile, std::move(d).value(), kFakeUuid, profile == "fake-libxl"};
}

Subject MakeLibvirtTest() {
  LibvirtDriver::Options o;
  o.uri = "test:///default";
  o.hostname = "test-host";
  o.instance_path = TempDir("inst");
  o.state_dir = TempDir("state");
  o.bridges = {"br-guest"};
  auto d = LibvirtDriver::Create(o);
  REQUIRE(d.ok());
  return Subject{"LibvirtDriver test:///default", std::move(d).value(), kTestDomainUuid, true};
}

std::vector<std::function<Subject()>> Subjects() {
  return {[] { return MakeFake("fake-qemu"); }, [] { return MakeFake("fake-libxl"); },
          MakeLibvirtTest};
}

cv1::CheckCanLiveMigrateOnDestRequest DestRequest(const std::string& mid, uint64_t mib,
                                                  const std::string& bridge = "br-guest") {
  cv1::CheckCanLiveMigrateOnDestRequest r;
  r.set_migration_id(mid);
  r.set_instance_uuid(kFakeUuid);
  r.set_source_host("src");
  r.set_dest_host("dst");
  r.mutable_instance()->set_memory_mib(mib);
  r.mutable_instance()->set_name("web-1");
  r.mutable_instance()->add_interfaces()->set_bridge(bridge);
  return r;
}

bool Exists(const std::string& p) { return access(p.c_str(), F_OK) == 0; }

TEST_CASE("contract: inventory describes the host and its domains") {
  for (auto& make : Subjects()) {
    Subject s = make();
    INFO(s.name);
    auto inv = s.driver->GetHostInfo();
    REQUIRE(inv.ok());
    CHECK_FALSE(inv->hostname().empty());
    CHECK_FALSE(inv->hypervisor_type().empty());
    CHECK(inv->hypervisor_version() > 0);
    CHECK(inv->memory_total_mib() > 0);
    CHECK(inv->memory_free_mib() <= inv->memory_total_mib());
    CHECK_FALSE(inv->cpu().arch().empty());
    CHECK_FALSE(inv->capabilities().profile().empty());
    CHECK(inv->capabilities().supports_live());
    auto list = s.driver->ListDomains();
    REQUIRE(list.ok());
    CHECK(static_cast<int>(list->size()) == inv->domains_size());
    bool found = false;
    for (const auto& d : *list) found = found || d.uuid() == s.running_uuid;
    CHECK(found);
  }
}

TEST_CASE("contract: lookup by UUID") {
  for (auto& make : Subjects()) {
    Subject s = make();
    INFO(s.name);
    auto d = s.driver->DescribeDomain(s.running_uuid);
    REQUIRE(d.ok());
    REQUIRE(d->has_value());
    CHECK((*d)->uuid() == s.running_uuid);
    CHECK((*d)->state() == v1::DOMAIN_STATE_RUNNING);
    CHECK((*d)->memory_mib() > 0);
    auto absent = s.driver->DescribeDomain(kAbsentUuid);
    REQUIRE(absent.ok());
    CHECK_FALSE(absent->has_value());
    CHECK(s.driver->DescribeDomain("web-1").status().code() == absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("contract: destination check decides with numbers, and its probe is cleaned up") {
  for (auto& make : Subjects()) {
    Subject s = make();
    INFO(s.name);
    auto inv = s.driver->GetHostInfo();
    REQUIRE(inv.ok());
    auto ok = s.driver->CheckCanLiveMigrateOnDest(DestRequest("m-1", 64));
    REQUIRE(ok.ok());
    CHECK(ok->passed());
    const std::string probe = ok->dest_check_data().probe_file_name();
    REQUIRE_FALSE(probe.empty());
    CHECK(Exists(probe));
    // Repeating the step is harmless.
    CHECK(s.driver->CheckCanLiveMigrateOnDest(DestRequest("m-1", 64))->passed());
    cv1::CheckCanLiveMigrateOnDestCleanupRequest cleanup;
    cleanup.set_migration_id("m-1");
    REQUIRE(s.driver->CheckCanLiveMigrateOnDestCleanup(cleanup).ok());
    CHECK_FALSE(Exists(probe));
    REQUIRE(s.driver->CheckCanLiveMigrateOnDestCleanup(cleanup).ok());  // idempotent

    auto big = s.driver->CheckCanLiveMigrateOnDest(DestRequest("m-2", 1ull << 40));
    REQUIRE(big.ok());
    CHECK_FALSE(big->passed());
    bool memory_reason = false;
    for (const auto& c : big->checks()) {
      if (c.name() == "memory") {
        CHECK_FALSE(c.passed());
        CHECK(absl::StrContains(c.reason(), "MiB free after the"));
        CHECK(absl::StrContains(c.reason(), "needs 1099511627776 MiB"));
        memory_reason = true;
      }
    }
    CHECK(memory_reason);

    auto nobridge = s.driver->CheckCanLiveMigrateOnDest(DestRequest("m-3", 64, "br-other"));
    REQUIRE(nobridge.ok());
    CHECK_FALSE(nobridge->passed());
    CHECK(s.driver->CheckCanLiveMigrateOnDest(DestRequest("../etc", 64)).status().code() ==
          absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("contract: a running domain is never destroyed by a rollback or post step") {
  for (auto& make : Subjects()) {
    Subject s = make();
    INFO(s.name);
    cv1::RollbackLiveMigrationAtDestinationRequest rb;
    rb.set_migration_id("m-9");
    rb.set_instance_uuid(s.running_uuid);
    auto r = s.driver->RollbackLiveMigrationAtDestination(rb);
    CHECK(r.code() == absl::StatusCode::kFailedPrecondition);
    CHECK(absl::StrContains(r.message(), "only running copy"));
    cv1::PostLiveMigrationRequest post;
    post.set_migration_id("m-9");
    post.set_instance_uuid(s.running_uuid);
    CHECK(s.driver->PostLiveMigration(post).code() == absl::StatusCode::kFailedPrecondition);
    auto d = s.driver->DescribeDomain(s.running_uuid);
    REQUIRE(d.ok());
    REQUIRE(d->has_value());
    CHECK((*d)->state() == v1::DOMAIN_STATE_RUNNING);
    // Rolling back on the source keeps it running there.
    cv1::RollbackLiveMigrationRequest src;
    src.set_migration_id("m-9");
    src.set_instance_uuid(s.running_uuid);
    auto info = s.driver->RollbackLiveMigration(src);
    REQUIRE(info.ok());
    CHECK(info->state() == v1::DOMAIN_STATE_RUNNING);
    // Cleaning a destination that has nothing is fine (idempotent).
    rb.set_instance_uuid(kAbsentUuid);
    CHECK(s.driver->RollbackLiveMigrationAtDestination(rb).ok());
    src.set_instance_uuid(kAbsentUuid);
    CHECK(s.driver->RollbackLiveMigration(src).status().code() ==
          absl::StatusCode::kFailedPrecondition);
  }
}

TEST_CASE("contract: options the backend lacks fail up front, naming hypervisor and feature") {
  for (auto& make : Subjects()) {
    Subject s = make();
    INFO(s.name);
    cv1::CheckCanLiveMigrateOnSrcRequest src;
    src.set_migration_id("m-5");
    src.set_instance_uuid(s.running_uuid);
    src.set_source_host("src");
    src.mutable_options()->set_bandwidth_mib_s(8);
    src.mutable_options()->set_allow_post_copy(true);
    auto r = s.driver->CheckCanLiveMigrateOnSrc(src);
    REQUIRE(r.ok());
    bool options_ok = true;
    std::string reason;
    for (const auto& c : r->checks()) {
      if (c.name() == "options") {
        options_ok = c.passed();
        reason = c.reason();
      }
    }
    if (s.libxl_like) {
      CHECK_FALSE(options_ok);
      CHECK(absl::StrContains(reason, "Xen"));
      CHECK(absl::StrContains(reason, "bandwidth"));
      CHECK(absl::StrContains(reason, "post-copy"));
      CHECK_FALSE(s.driver->capabilities().supports_abort());
      CHECK(s.driver->AbortLiveMigration("m-5", s.running_uuid).code() ==
            absl::StatusCode::kFailedPrecondition);
    } else {
      CHECK(options_ok);
    }
    // Without the probe file the source sees no shared storage.
    CHECK(r->src_check_data().shared_instance_path() == false);
  }
}

// ---- FakeDriver migrations ----------------------------------------------------------------

struct FakePair {
  std::string dir = TempDir("pair");
  std::unique_ptr<FakeDriver> a, b;
  explicit FakePair(const std::string& profile = "fake-qemu") {
    for (auto* p : {&a, &b}) {
      FakeDriver::Options o;
      o.state_dir = dir;
      o.hostname = p == &a ? "fake-a" : "fake-b";
      o.profile = profile;
      o.poll_interval = absl::Milliseconds(5);
      auto d = FakeDriver::Create(o);
      REQUIRE(d.ok());
      *p = std::move(d).value();
    }
    REQUIRE(a->hypervisor().CreateDomain("fake-a", kFakeUuid, "web-1", 256).ok());
  }

  // Steps 4-6; returns the LiveMigration request.
  cv1::LiveMigrationRequest Prepare(const std::string& mid, v1::MigrationOptions opts = {}) {
    auto dest_req = DestRequest(mid, 256);
    dest_req.set_dest_host("fake-b");
    auto dest = b->CheckCanLiveMigrateOnDest(dest_req);
    REQUIRE(dest.ok());
    REQUIRE(dest->passed());
    cv1::CheckCanLiveMigrateOnSrcRequest src_req;
    src_req.set_migration_id(mid);
    src_req.set_instance_uuid(kFakeUuid);
    src_req.set_source_host("fake-a");
    *src_req.mutable_dest_check_data() = dest->dest_check_data();
    *src_req.mutable_options() = opts;
    auto src = a->CheckCanLiveMigrateOnSrc(src_req);
    REQUIRE(src.ok());
    REQUIRE(src->passed());
    CHECK(src->src_check_data().shared_instance_path());
    cv1::PreLiveMigrationRequest pre;
    pre.set_migration_id(mid);
    pre.set_instance_uuid(kFakeUuid);
    *pre.mutable_migrate_data()->mutable_src_check() = src->src_check_data();
    auto data = b->PreLiveMigration(pre);
    REQUIRE(data.ok());
    cv1::LiveMigrationRequest lm;
    lm.set_migration_id(mid);
    lm.set_instance_uuid(kFakeUuid);
    lm.set_source_host("fake-a");
    lm.set_dest_host("fake-b");
    *lm.mutable_options() = opts;
    *lm.mutable_migrate_data()->mutable_pre_live_migration() = *data;
    return lm;
  }
  std::vector<std::pair<std::string, std::string>> Where() {
    auto w = a->hypervisor().Locate(kFakeUuid);
    REQUIRE(w.ok());
    return *w;
  }
};

using Loc = std::vector<std::pair<std::string, std::string>>;

TEST_CASE("fake: a live migration follows libvirt peer-to-peer's contract") {
  FakePair p;
  REQUIRE(p.a->hypervisor().SetTransferDuration("fake-a", absl::Milliseconds(200)).ok());
  auto lm = p.Prepare("m-1");
  CHECK(p.Where() == Loc{{"fake-a", "running"}});  // staged configuration only
  std::vector<cv1::MigrationProgressReport> seen;
  std::atomic<bool> saw_incoming{false};
  auto r = p.a->LiveMigration(lm, [&](const cv1::MigrationProgressReport& rep) {
    seen.push_back(rep);
    auto w = p.a->hypervisor().Locate(kFakeUuid);
    if (w.ok() && w->size() == 2) saw_incoming = true;
  });
  REQUIRE(r.ok());
  CHECK(r->state() == cv1::TRANSFER_STATE_COMPLETED);
  CHECK(saw_incoming);  // an incoming paused domain during the transfer
  REQUIRE(seen.size() >= 2);
  CHECK(seen.front().progress().has_bytes());
  CHECK(seen.back().progress().bytes_processed() >= seen.front().progress().bytes_processed());
  CHECK(p.Where() == Loc{{"fake-b", "running"}});
  // Post steps, each twice: same end state.
  for (int i = 0; i < 2; ++i) {
    cv1::PostLiveMigrationRequest post;
    post.set_migration_id("m-1");
    post.set_instance_uuid(kFakeUuid);
    REQUIRE(p.a->PostLiveMigration(post).ok());
    cv1::PostLiveMigrationAtDestinationRequest at;
    at.set_migration_id("m-1");
    at.set_instance_uuid(kFakeUuid);
    auto dom = p.b->PostLiveMigrationAtDestination(at);
    REQUIRE(dom.ok());
    CHECK(dom->persistent());
  }
  CHECK(p.Where() == Loc{{"fake-b", "running"}});
  // A repeated LiveMigration attaches to the finished transfer: no second transfer.
  auto again = p.a->LiveMigration(lm, nullptr);
  REQUIRE(again.ok());
  CHECK(again->state() == cv1::TRANSFER_STATE_COMPLETED);
  CHECK(p.Where() == Loc{{"fake-b", "running"}});
}

TEST_CASE("fake: the action journal records every driver action, once, with its time") {
  FakePair p;
  const absl::Time t0 = absl::Now() - absl::Milliseconds(1);
  auto lm = p.Prepare("m-j");
  REQUIRE(p.a->LiveMigration(lm, nullptr).ok());
  cv1::PostLiveMigrationRequest post;
  post.set_migration_id("m-j");
  post.set_instance_uuid(kFakeUuid);
  REQUIRE(p.a->PostLiveMigration(post).ok());
  REQUIRE(p.a->LiveMigration(lm, nullptr).ok());  // attaches: no action, no entry
  auto j = p.a->hypervisor().Journal();
  REQUIRE(j.ok());
  std::vector<std::string> steps;
  for (const auto& e : *j) {
    if (e.migration_id != "m-j") continue;
    steps.push_back(absl::StrCat(e.host, ":", e.step, e.automatic ? ":auto" : ""));
    CHECK(e.time >= t0);
    CHECK(e.time <= absl::Now());
  }
  CHECK(steps == std::vector<std::string>{"fake-b:check_can_live_migrate_on_dest",
                                          "fake-a:check_can_live_migrate_on_src",
                                          "fake-b:pre_live_migration", "fake-a:live_migration",
                                          "fake-a:transfer_completed:auto",
                                          "fake-a:post_live_migration"});
}

TEST_CASE("fake: a transfer proceeds without its agent, and a new agent attaches to it") {
  FakePair p;
  REQUIRE(p.a->hypervisor().SetTransferDuration("fake-a", absl::Milliseconds(300)).ok());
  auto lm = p.Prepare("m-2");
  std::thread first([&] { p.a->LiveMigration(lm, nullptr).IgnoreError(); });
  first.detach();  // the "agent" that will be killed
  absl::SleepFor(absl::Milliseconds(50));
  // A fresh driver on the same state (the restarted agent) sees the job and attaches.
  FakeDriver::Options o;
  o.state_dir = p.dir;
  o.hostname = "fake-a";
  o.poll_interval = absl::Milliseconds(5);
  auto restarted = FakeDriver::Create(o);
  REQUIRE(restarted.ok());
  auto d = (*restarted)->DescribeDomain(kFakeUuid);
  REQUIRE(d.ok());
  REQUIRE(d->has_value());
  CHECK((*d)->migration_job_active());
  CHECK((*d)->migration_id() == "m-2");
  auto r = (*restarted)->LiveMigration(lm, nullptr);
  REQUIRE(r.ok());
  CHECK(r->state() == cv1::TRANSFER_STATE_COMPLETED);
  CHECK(p.Where() == Loc{{"fake-b", "running"}});
  absl::SleepFor(absl::Milliseconds(50));  // let the detached monitor see the end
}

TEST_CASE("fake: abort leaves the VM on the source and nothing on the destination") {
  FakePair p;
  REQUIRE(p.a->hypervisor().SetTransferDuration("fake-a", absl::Seconds(30)).ok());
  auto lm = p.Prepare("m-3");
  absl::StatusOr<cv1::MigrationProgressReport> r;
  std::thread t([&] { r = p.a->LiveMigration(lm, nullptr); });
  while (p.Where().size() < 2) absl::SleepFor(absl::Milliseconds(2));
  REQUIRE(p.a->AbortLiveMigration("m-3", kFakeUuid).ok());
  t.join();
  REQUIRE(r.ok());
  CHECK(r->state() == cv1::TRANSFER_STATE_CANCELLED);
  CHECK(p.Where() == Loc{{"fake-a", "running"}});
  CHECK(p.a->AbortLiveMigration("m-3", kFakeUuid).code() == absl::StatusCode::kFailedPrecondition);
  cv1::RollbackLiveMigrationAtDestinationRequest rb;
  rb.set_migration_id("m-3");
  rb.set_instance_uuid(kFakeUuid);
  REQUIRE(p.b->RollbackLiveMigrationAtDestination(rb).ok());
  auto snap = p.a->hypervisor().Snapshot();
  REQUIRE(snap.ok());
  CHECK((*snap)["hosts"]["fake-b"]["staged"].empty());
}

TEST_CASE("fake: completion timeout aborts, or forces completion") {
  SECTION("abort") {
    FakePair p;
    REQUIRE(p.a->hypervisor().SetTransferDuration("fake-a", absl::Seconds(30)).ok());
    v1::MigrationOptions o;
    o.set_completion_timeout_s(0);  // unset-equivalent: no timeout
    o.set_completion_timeout_s(1);
    o.set_completion_action(v1::COMPLETION_ACTION_ABORT);
    auto r = p.a->LiveMigration(p.Prepare("m-4", o), nullptr);
    REQUIRE(r.ok());
    CHECK(r->state() == cv1::TRANSFER_STATE_FAILED);
    CHECK(r->completion_timeout_expired());
    CHECK(absl::StrContains(r->error(), "completion timeout"));
    CHECK(p.Where() == Loc{{"fake-a", "running"}});
  }
  SECTION("force complete with post-copy") {
    FakePair p;
    REQUIRE(p.a->hypervisor().SetTransferDuration("fake-a", absl::Seconds(30)).ok());
    v1::MigrationOptions o;
    o.set_completion_timeout_s(1);
    o.set_completion_action(v1::COMPLETION_ACTION_FORCE_COMPLETE);
    o.set_allow_post_copy(true);
    auto r = p.a->LiveMigration(p.Prepare("m-5", o), nullptr);
    REQUIRE(r.ok());
    CHECK(r->state() == cv1::TRANSFER_STATE_COMPLETED);
    CHECK(r->post_copy_started());
    CHECK(p.Where() == Loc{{"fake-b", "running"}});
  }
}

TEST_CASE("fake: injected failures fail exactly the step they name") {
  FakePair p;
  REQUIRE(p.b->hypervisor().SetFailure("fake-b", "pre_live_migration", "disk full").ok());
  cv1::PreLiveMigrationRequest pre;
  pre.set_migration_id("m-6");
  pre.set_instance_uuid(kFakeUuid);
  auto r = p.b->PreLiveMigration(pre);
  CHECK(r.status().code() == absl::StatusCode::kInternal);
  CHECK(absl::StrContains(r.status().message(), "disk full"));
  CHECK(p.b->PreLiveMigration(pre).ok());  // only once

  REQUIRE(p.a->hypervisor().SetFailure("fake-a", "transfer", "connection reset").ok());
  auto lm = p.Prepare("m-7");
  auto t = p.a->LiveMigration(lm, nullptr);
  REQUIRE(t.ok());
  CHECK(t->state() == cv1::TRANSFER_STATE_FAILED);
  CHECK(t->error() == "connection reset");
  CHECK(p.Where() == Loc{{"fake-a", "running"}});
}

TEST_CASE("fake: offline migration pauses the guest and runs it on the destination") {
  FakePair p("fake-libxl");
  REQUIRE(p.a->hypervisor().SetTransferDuration("fake-a", absl::Milliseconds(100)).ok());
  v1::MigrationOptions o;
  o.set_mode(v1::MIGRATION_MODE_OFFLINE);
  auto lm = p.Prepare("m-8", o);
  bool saw_paused = false;
  auto r = p.a->LiveMigration(lm, [&](const cv1::MigrationProgressReport& rep) {
    CHECK_FALSE(rep.progress().has_bytes());  // libxl: elapsed time only
    for (auto& [h, st] : p.Where()) saw_paused = saw_paused || (h == "fake-a" && st == "paused");
  });
  REQUIRE(r.ok());
  CHECK(r->state() == cv1::TRANSFER_STATE_COMPLETED);
  CHECK(saw_paused);
  CHECK(p.Where() == Loc{{"fake-b", "running"}});
  // Xen's profile refuses what libxl lacks, before any transfer.
  v1::MigrationOptions bw;
  bw.set_bandwidth_mib_s(8);
  lm.set_migration_id("m-9");
  *lm.mutable_options() = bw;
  auto refused = p.b->LiveMigration(lm, nullptr);
  CHECK(refused.status().code() == absl::StatusCode::kFailedPrecondition);
}

// ---- FakeHypervisor's cached state, pruning and the monitor's wake-up -------------------------

constexpr char kOtherUuid[] = "22222222-3333-4444-8555-666666666666";

nlohmann::json StateFile(const std::string& dir) {
  std::ifstream in(dir + "/state.json");
  std::stringstream ss;
  ss << in.rdbuf();
  return nlohmann::json::parse(ss.str(), nullptr, false);
}

nlohmann::json SnapshotOf(FakeHypervisor& hv) {
  auto s = hv.Snapshot();
  REQUIRE(s.ok());
  return *s;
}

TEST_CASE("fake: the cached state sees every other writer") {
  FakePair p;
  FakeHypervisor other(p.dir);  // a second object of this process on the same directory
  REQUIRE(other.CreateDomain("fake-b", kOtherUuid, "db-1", 128).ok());
  auto d = p.b->DescribeDomain(kOtherUuid);
  REQUIRE(d.ok());
  CHECK(d->has_value());

  SECTION("another process, two same-size writes at once, many times") {
    for (int round = 0; round < 40; ++round) {
      // This process writes (and caches what it wrote); a child process at once writes twice,
      // the same size each time: a new file may get the inode number just freed, in the same
      // clock tick.
      REQUIRE(other.SetFailure("fake-a", "abort", "x", 1 + round % 9).ok());
      const pid_t pid = fork();
      REQUIRE(pid >= 0);
      if (pid == 0) {
        FakeHypervisor child(p.dir);
        const bool ok = child.SetFailure("fake-a", "abort", "x", 1 + (round + 3) % 9).ok() &&
                        child.SetFailure("fake-a", "abort", "x", 1 + (round + 5) % 9).ok();
        _exit(ok ? 0 : 1);
      }
      int status = 0;
      REQUIRE(waitpid(pid, &status, 0) == pid);
      REQUIRE(WIFEXITED(status));
      REQUIRE(WEXITSTATUS(status) == 0);
      const auto snap = SnapshotOf(p.a->hypervisor());
      REQUIRE(snap["hosts"]["fake-a"]["failures"]["abort"]["remaining"] == 1 + (round + 5) % 9);
    }
  }
  SECTION("a test rewriting state.json in place, the same size, or deleting it") {
    REQUIRE(other.SetFailure("fake-a", "abort", "x", 3).ok());
    REQUIRE(SnapshotOf(p.a->hypervisor())["hosts"]["fake-a"]["failures"]["abort"]["remaining"] ==
            3);
    nlohmann::json st = StateFile(p.dir);
    REQUIRE(st.is_object());
    const std::string before = st.dump();
    st["hosts"]["fake-a"]["failures"]["abort"]["remaining"] = 4;
    const std::string after = st.dump();
    REQUIRE(after.size() == before.size());
    {
      std::ofstream out(p.dir + "/state.json", std::ios::trunc);  // the same inode
      out << after;
    }
    CHECK(SnapshotOf(p.a->hypervisor())["hosts"]["fake-a"]["failures"]["abort"]["remaining"] == 4);
    REQUIRE(unlink((p.dir + "/state.json").c_str()) == 0);
    auto where = other.Locate(kFakeUuid);
    REQUIRE(where.ok());
    CHECK(where->empty());
    CHECK(SnapshotOf(other)["hosts"].empty());
  }
  SECTION("threads of this process on several objects") {
    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        FakeHypervisor mine(p.dir);
        for (int i = 0; i < 25; ++i) {
          const std::string uuid = absl::StrFormat("33333333-4444-4555-8666-%06d%06d", t, i);
          if (!mine.CreateDomain(t % 2 ? "fake-a" : "fake-b", uuid, "vm", 64).ok()) ++failures;
          auto w = (i % 2 ? other : p.a->hypervisor()).Locate(uuid);
          if (!w.ok() || w->size() != 1) ++failures;
        }
      });
    }
    for (auto& t : threads) t.join();
    CHECK(failures == 0);
    const auto snap = StateFile(p.dir);
    CHECK(snap["hosts"]["fake-a"]["domains"].size() + snap["hosts"]["fake-b"]["domains"].size() ==
          102);
    CHECK(snap == SnapshotOf(other));
  }
}

TEST_CASE("fake: a change Mutate's callback does not flag never outlives the call") {
  FakePair p;
  FakeHypervisor& hv = p.a->hypervisor();
  auto has = [&](const std::string& host) {
    const bool cached = SnapshotOf(hv)["hosts"].contains(host);
    CHECK(StateFile(p.dir)["hosts"].contains(host) == cached);  // the file says the same
    return cached;
  };
  REQUIRE(!has("ghost-1"));
  REQUIRE(hv.Mutate([](nlohmann::json& st, bool*) {
              st["hosts"]["ghost-1"] = nlohmann::json::object();  // not flagged
              return absl::OkStatus();
            }).ok());
  CHECK_FALSE(has("ghost-1"));
  CHECK(hv.Mutate([](nlohmann::json& st, bool*) {
            st["hosts"]["ghost-2"] = nlohmann::json::object();
            return absl::InternalError("refused");
          }).code() == absl::StatusCode::kInternal);
  CHECK_FALSE(has("ghost-2"));
  CHECK_THROWS(hv.Mutate([](nlohmann::json& st, bool* changed) -> absl::Status {
    st["hosts"]["ghost-3"] = nlohmann::json::object();
    *changed = true;
    throw std::runtime_error("boom");
  }));
  CHECK_FALSE(has("ghost-3"));
  // Flagged, with an error: written (like an injected failure consumed by a failing step).
  CHECK(hv.Mutate([](nlohmann::json& st, bool* changed) {
            st["hosts"]["ghost-4"] = nlohmann::json::object();
            *changed = true;
            return absl::InternalError("failed after the change");
          }).code() == absl::StatusCode::kInternal);
  CHECK(has("ghost-4"));
  // A read-only view is never written and keeps the state.
  REQUIRE(hv.Read([](const nlohmann::json& st) {
              CHECK(st["hosts"].contains("ghost-4"));
              return absl::OkStatus();
            }).ok());
}

TEST_CASE("fake: finished transfers are kept 10 minutes, the 1000 most recent, then pruned") {
  FakeClock clock;
  const std::string dir = TempDir("prune");
  std::unique_ptr<FakeDriver> a, b;
  for (auto* p : {&a, &b}) {
    FakeDriver::Options o;
    o.state_dir = dir;
    o.hostname = p == &a ? "fake-a" : "fake-b";
    o.poll_interval = absl::Milliseconds(5);
    o.clock = &clock;
    auto d = FakeDriver::Create(o);
    REQUIRE(d.ok());
    *p = std::move(d).value();
  }
  FakeHypervisor& hv = a->hypervisor();
  REQUIRE(hv.CreateDomain("fake-a", kFakeUuid, "web-1", 256).ok());
  REQUIRE(hv.SetTransferDuration("fake-a", absl::Milliseconds(200)).ok());
  cv1::LiveMigrationRequest lm;
  lm.set_migration_id("m-p");
  lm.set_instance_uuid(kFakeUuid);
  lm.set_source_host("fake-a");
  lm.set_dest_host("fake-b");
  absl::StatusOr<cv1::MigrationProgressReport> r;
  std::thread t([&] { r = a->LiveMigration(lm, nullptr); });
  while (true) {  // the transfer runs (the fake clock stands still)
    auto w = hv.Locate(kFakeUuid);
    REQUIRE(w.ok());
    if (w->size() == 2) break;
    absl::SleepFor(absl::Milliseconds(2));
  }
  clock.Advance(absl::Milliseconds(200));
  t.join();
  REQUIRE(r.ok());
  CHECK(r->state() == cv1::TRANSFER_STATE_COMPLETED);
  // Right after it finished, and 9 minutes later: still reported, and a repeated call attaches.
  auto progress = a->GetMigrationProgress("m-p", kFakeUuid);
  REQUIRE(progress.ok());
  CHECK(progress->state() == cv1::TRANSFER_STATE_COMPLETED);
  clock.Advance(absl::Minutes(9));
  progress = b->GetMigrationProgress("m-p", kFakeUuid);
  REQUIRE(progress.ok());
  CHECK(progress->state() == cv1::TRANSFER_STATE_COMPLETED);
  auto again = a->LiveMigration(lm, nullptr);
  REQUIRE(again.ok());
  CHECK(again->state() == cv1::TRANSFER_STATE_COMPLETED);
  // Past 10 minutes: gone, from the file too.
  clock.Advance(absl::Seconds(61));
  CHECK(a->GetMigrationProgress("m-p", kFakeUuid).status().code() == absl::StatusCode::kNotFound);
  CHECK(SnapshotOf(hv)["transfers"].empty());
  CHECK(StateFile(dir)["transfers"].empty());

  // 1100 finished in the last 11 s, and a running one started an hour ago: the running one and
  // the 1000 most recent stay.
  const int64_t now = absl::ToUnixMillis(clock.Now());
  REQUIRE(hv.Mutate([&](nlohmann::json& st, bool* changed) {
              for (int i = 0; i < 1100; ++i) {
                st["transfers"][absl::StrFormat("f-%04d", i)] = {
                    {"uuid", kOtherUuid},         {"src", "fake-b"},   {"dst", "fake-a"},
                    {"start_ms", now - 20'000},   {"duration_ms", 10}, {"state", "completed"},
                    {"finished_ms", now - 10 * i}};
              }
              st["transfers"]["r-long"] = {
                  {"uuid", kOtherUuid},          {"src", "fake-b"},          {"dst", "fake-a"},
                  {"start_ms", now - 3'600'000}, {"duration_ms", 7'200'000}, {"state", "running"}};
              *changed = true;
              return absl::OkStatus();
            }).ok());
  for (const auto& st : {SnapshotOf(hv), StateFile(dir)}) {
    const auto& transfers = st["transfers"];
    CHECK(transfers.size() == 1001);
    CHECK(transfers.contains("r-long"));
    CHECK(transfers.contains("f-0000"));
    CHECK(transfers.contains("f-0999"));
    CHECK_FALSE(transfers.contains("f-1000"));
    CHECK_FALSE(transfers.contains("f-1099"));
  }
  auto dom = b->DescribeDomain(kFakeUuid);  // on fake-b after the migration
  REQUIRE(dom.ok());
  REQUIRE(dom->has_value());
  CHECK_FALSE((*dom)->migration_job_active());
  clock.Advance(absl::Minutes(11));
  const auto left = SnapshotOf(hv)["transfers"];
  CHECK(left.size() == 1);
  CHECK(left.contains("r-long"));
}

TEST_CASE("fake: the monitor reports a transfer's end when it happens, not at the next poll") {
  const std::string dir = TempDir("wake");
  std::unique_ptr<FakeDriver> a, b;
  for (auto* p : {&a, &b}) {
    FakeDriver::Options o;
    o.state_dir = dir;
    o.hostname = p == &a ? "fake-a" : "fake-b";
    o.poll_interval = absl::Seconds(2);
    auto d = FakeDriver::Create(o);
    REQUIRE(d.ok());
    *p = std::move(d).value();
  }
  REQUIRE(a->hypervisor().CreateDomain("fake-a", kFakeUuid, "web-1", 256).ok());
  REQUIRE(a->hypervisor().SetTransferDuration("fake-a", absl::Milliseconds(200)).ok());
  cv1::LiveMigrationRequest lm;
  lm.set_migration_id("m-w");
  lm.set_instance_uuid(kFakeUuid);
  lm.set_source_host("fake-a");
  lm.set_dest_host("fake-b");
  int reports = 0;
  const absl::Time t0 = absl::Now();
  auto r = a->LiveMigration(lm, [&](const cv1::MigrationProgressReport&) { ++reports; });
  const absl::Duration took = absl::Now() - t0;
  REQUIRE(r.ok());
  CHECK(r->state() == cv1::TRANSFER_STATE_COMPLETED);
  CHECK(reports >= 1);
  CHECK(took >= absl::Milliseconds(199));
  CHECK(took < absl::Milliseconds(700));  // was up to a whole poll_interval (2 s) late
}

// ---- shared checks and the strict layer ---------------------------------------------------

TEST_CASE("checks: the destination check explains each refusal") {
  DestFacts f;
  f.hostname = "host-b";
  f.hypervisor_type = "Xen";
  f.hypervisor_version = 4016000;
  f.cpu.set_arch("x86_64");
  f.cpu.add_features("sse4.2");
  f.memory_free_mib = 924;
  f.memory_reserved_mib = 512;
  f.bridges = {"br-mgmt"};
  f.instance_path = "/srv/instances";
  f.probe_written = true;
  cv1::CheckCanLiveMigrateOnDestRequest req = DestRequest("m-1", 1024);
  req.set_source_hypervisor_type("Xen");
  req.set_source_hypervisor_version(4017000);
  req.mutable_source_cpu()->set_arch("x86_64");
  req.mutable_source_cpu()->add_features("avx2");
  auto r = EvaluateDestChecks(req, f);
  CHECK_FALSE(r.passed());
  std::map<std::string, v1::CheckResult> by;
  for (const auto& c : r.checks()) by[c.name()] = c;
  CHECK(by["hypervisor_type"].passed());
  CHECK_FALSE(by["hypervisor_version"].passed());
  CHECK(absl::StrContains(by["hypervisor_version"].reason(), "4.16.0 < source's 4.17.0"));
  CHECK_FALSE(by["cpu"].passed());
  CHECK(absl::StrContains(by["cpu"].reason(), "avx2"));
  CHECK_FALSE(by["memory"].passed());
  CHECK(by["memory"].reason() ==
        "destination host-b has 412 MiB free after the 512 MiB dom0 reserve (924 MiB free); "
        "instance web-1 needs 1024 MiB");
  CHECK_FALSE(by["network"].passed());
  CHECK(absl::StrContains(by["network"].reason(), "br-guest"));
  CHECK(by["storage_probe"].passed());
}

TEST_CASE("checks: options against Xen's capabilities") {
  auto xen = LibvirtDriver::ProfileCapabilities("libxl", true);
  v1::MigrationOptions o;
  CHECK(CheckOptionsSupported(o, xen, "Xen (libxl)").ok());
  o.set_mode(v1::MIGRATION_MODE_OFFLINE);
  CHECK(CheckOptionsSupported(o, xen, "Xen (libxl)").ok());
  o.set_max_downtime_ms(300);
  o.set_completion_timeout_s(60);
  auto s = CheckOptionsSupported(o, xen, "Xen (libxl)");
  CHECK(s.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(s.message(), "maximum downtime"));
  CHECK(absl::StrContains(s.message(), "completion timeout"));
  CHECK(CheckOptionsSupported(o, LibvirtDriver::ProfileCapabilities("qemu", false), "QEMU").ok());
  CHECK(ValidateMigrationId("6c0f-..x").ok());
  CHECK_FALSE(ValidateMigrationId("a/b").ok());
  CHECK_FALSE(ValidateMigrationId("..").ok());
  CHECK(FormatVersion(4017000) == "4.17.0");
}

TEST_CASE("strict libxl layer refuses with libvirt's own messages") {
  auto strict = NewStrictLibxlApi(NewRealLibvirtApi());
  auto conn = strict->Open("test:///default");
  REQUIRE(conn.ok());
  auto dom = strict->LookupByUUID(conn->get(), kTestDomainUuid);
  REQUIRE(dom.ok());
  MigrateParams p;
  p.bandwidth_mib_s = 8;
  auto bw = strict->MigrateToURI3(dom->get(), "qemu+tcp://10.250.0.2/system", p,
                                  VIR_MIGRATE_LIVE | VIR_MIGRATE_PEER2PEER);
  CHECK(bw.message() == "parameter 'bandwidth' not supported");
  auto flags = strict->MigrateToURI3(dom->get(), "x", MigrateParams{},
                                     VIR_MIGRATE_PEER2PEER | VIR_MIGRATE_AUTO_CONVERGE);
  CHECK(absl::StrContains(flags.message(), "unsupported flags (0x2000)"));
  CHECK(strict->AbortJob(dom->get()).message() ==
        "this function is not supported by the connection driver: virDomainAbortJob");
  CHECK(absl::StrContains(strict->MigrateStartPostCopy(dom->get()).message(),
                          "not supported by the connection driver"));
  CHECK(absl::StrContains(strict->MigrateSetMaxSpeed(dom->get(), 1).message(),
                          "not supported by the connection driver"));
  CHECK(absl::StrContains(
      strict->GetJobStats(dom->get(), VIR_DOMAIN_JOB_STATS_COMPLETED).status().message(),
      "unsupported flags"));
  // The test driver itself cannot migrate: libvirt's own refusal comes through.
  auto real = strict->MigrateToURI3(dom->get(), "test:///default", MigrateParams{},
                                    VIR_MIGRATE_LIVE | VIR_MIGRATE_PEER2PEER);
  CHECK_FALSE(real.ok());
}

TEST_CASE("libvirt driver: profiles and errors") {
  LibvirtDriver::Options o;
  o.uri = "test:///default";
  o.state_dir = TempDir("st");
  o.profile = "bogus";
  CHECK(LibvirtDriver::Create(o).status().code() == absl::StatusCode::kInvalidArgument);
  o.profile = "auto";
  auto d = LibvirtDriver::Create(o);
  REQUIRE(d.ok());
  CHECK((*d)->profile() == "libxl");  // the test driver gets the strictest profile
  o.profile = "qemu";
  auto q = LibvirtDriver::Create(o);
  REQUIRE(q.ok());
  CHECK((*q)->capabilities().supports_abort());
  o.uri = "qemu+unix:///system?socket=/nonexistent/sock";
  auto bad = LibvirtDriver::Create(o);
  CHECK(bad.status().code() == absl::StatusCode::kUnavailable);
  CHECK(absl::StrContains(bad.status().message(), "/nonexistent/sock"));
}

}  // namespace
}  // namespace livemig::driver
