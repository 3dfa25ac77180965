// LibvirtDriver in the two-host lab: real live migrations between two libvirtd (QEMU under TCG
// in network namespaces), in the QEMU profile and in the libxl-strict profile (the libxl
// profile enforced by StrictLibxlApi over the real QEMU connection, so a call Xen would refuse
// fails the test instead of passing).
#include <atomic>
#include <catch2/catch.hpp>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "driver/libvirt_api.h"
#include "driver/libvirt_driver.h"
#include "testing/lab.h"
#include "testing/run_command.h"

namespace livemig::driver {
namespace {

using livemig::testing::Lab;

constexpr char kGuest[] = "lg1";
constexpr char kUuid[] = "5b0e3c1a-2f4d-4e6b-9a7c-1d2e3f4a5b6c";

Lab& TheLab() {
  static std::unique_ptr<Lab> lab = [] {
    auto l = Lab::Up();
    if (!l.ok()) FAIL("lab up failed: " << l.status().ToString());
    auto s = (*l)->StartGuest("a", kGuest, kUuid);
    if (!s.ok()) FAIL("guest start failed: " << s.ToString());
    return std::move(l).value();
  }();
  return *lab;
}

struct DriverConfig {
  std::string profile = "qemu";
  std::vector<std::string> bridges = {"br-guest"};
  std::string instance_path;  // default: the lab's shared directory
  uint64_t reserved_mib = 256;
  std::optional<std::vector<std::string>> cpu_features;
};

std::unique_ptr<LibvirtDriver> MakeDriver(const std::string& host, const DriverConfig& c = {}) {
  Lab& lab = TheLab();
  LibvirtDriver::Options o;
  o.uri = lab.Uri(host);
  o.profile = c.profile;
  o.hostname = "lab-" + host;
  o.instance_path = c.instance_path.empty() ? lab.InstancePath() : c.instance_path;
  o.memory_reserved_mib = c.reserved_mib;
  o.migration_uri = lab.PeerUri(host);
  o.migration_data_host = lab.Ip(host);
  o.tunnelled = false;
  o.bridges = c.bridges;
  o.state_dir = absl::StrCat(lab.dir(), "/agent-state-", host, "-", c.profile);
  o.cpu_features_override = c.cpu_features;
  o.poll_interval = absl::Milliseconds(100);
  o.default_downtime_step_delay_s = 1;
  auto d = LibvirtDriver::Create(o);
  REQUIRE(d.ok());
  return std::move(d).value();
}

std::string Where() {
  auto w = TheLab().Where(kGuest);
  REQUIRE(w.ok());
  std::string out;
  for (const auto& h : *w) out += h;
  return out;
}

int Counter = 0;
std::string NewMigrationId() { return absl::StrCat("lab-m", ++Counter, "-", getpid()); }

struct Prepared {
  cv1::LiveMigrationRequest live;
  cv1::CheckCanLiveMigrateOnDestResponse dest;
  cv1::CheckCanLiveMigrateOnSrcResponse src;
};

// Flow steps 4-6 from `src` to `dst`. Returns the checks even when they refuse.
Prepared Prepare(LibvirtDriver& src, LibvirtDriver& dst, const v1::MigrationOptions& options,
                 bool expect_pass = true) {
  Prepared p;
  const std::string mid = NewMigrationId();
  auto src_inv = src.GetHostInfo();
  REQUIRE(src_inv.ok());
  auto dom = src.DescribeDomain(kUuid);
  REQUIRE(dom.ok());
  REQUIRE(dom->has_value());
  cv1::CheckCanLiveMigrateOnDestRequest dreq;
  dreq.set_migration_id(mid);
  dreq.set_instance_uuid(kUuid);
  dreq.set_source_host(src_inv->hostname());
  dreq.set_dest_host("dst");
  *dreq.mutable_source_cpu() = src_inv->cpu();
  dreq.set_source_hypervisor_type(src_inv->hypervisor_type());
  dreq.set_source_hypervisor_version(src_inv->hypervisor_version());
  *dreq.mutable_instance() = **dom;
  *dreq.mutable_options() = options;
  auto d = dst.CheckCanLiveMigrateOnDest(dreq);
  REQUIRE(d.ok());
  p.dest = *d;
  if (!d->passed()) {
    if (expect_pass) FAIL("destination check refused: " << d->DebugString());
    return p;
  }
  cv1::CheckCanLiveMigrateOnSrcRequest sreq;
  sreq.set_migration_id(mid);
  sreq.set_instance_uuid(kUuid);
  sreq.set_source_host(src_inv->hostname());
  *sreq.mutable_dest_check_data() = d->dest_check_data();
  *sreq.mutable_options() = options;
  auto s = src.CheckCanLiveMigrateOnSrc(sreq);
  REQUIRE(s.ok());
  p.src = *s;
  if (!s->passed()) {
    if (expect_pass) FAIL("source check refused: " << s->DebugString());
    cv1::CheckCanLiveMigrateOnDestCleanupRequest c;
    c.set_migration_id(mid);
    REQUIRE(dst.CheckCanLiveMigrateOnDestCleanup(c).ok());
    return p;
  }
  cv1::PreLiveMigrationRequest pre;
  pre.set_migration_id(mid);
  pre.set_instance_uuid(kUuid);
  *pre.mutable_migrate_data()->mutable_src_check() = s->src_check_data();
  auto data = dst.PreLiveMigration(pre);
  REQUIRE(data.ok());
  p.live.set_migration_id(mid);
  p.live.set_instance_uuid(kUuid);
  p.live.set_source_host(src_inv->hostname());
  p.live.set_dest_host("dst");
  *p.live.mutable_options() = options;
  *p.live.mutable_migrate_data()->mutable_src_check() = s->src_check_data();
  *p.live.mutable_migrate_data()->mutable_pre_live_migration() = *data;
  return p;
}

void PostSteps(LibvirtDriver& src, LibvirtDriver& dst, const std::string& mid) {
  cv1::PostLiveMigrationRequest post;
  post.set_migration_id(mid);
  post.set_instance_uuid(kUuid);
  REQUIRE(src.PostLiveMigration(post).ok());
  cv1::PostLiveMigrationAtDestinationRequest at;
  at.set_migration_id(mid);
  at.set_instance_uuid(kUuid);
  auto dom = dst.PostLiveMigrationAtDestination(at);
  REQUIRE(dom.ok());
  CHECK(dom->persistent());
  CHECK(dom->state() == v1::DOMAIN_STATE_RUNNING);
}

void Rollback(LibvirtDriver& src, LibvirtDriver& dst, const std::string& mid) {
  cv1::RollbackLiveMigrationAtDestinationRequest rb;
  rb.set_migration_id(mid);
  rb.set_instance_uuid(kUuid);
  REQUIRE(dst.RollbackLiveMigrationAtDestination(rb).ok());
  cv1::RollbackLiveMigrationRequest r;
  r.set_migration_id(mid);
  r.set_instance_uuid(kUuid);
  auto dom = src.RollbackLiveMigration(r);
  REQUIRE(dom.ok());
  CHECK(dom->state() == v1::DOMAIN_STATE_RUNNING);
}

// Migrates the guest to host `to` and checks continuity.
void Hop(const std::string& profile, const std::string& from, const std::string& to,
         const v1::MigrationOptions& options = {}) {
  auto src = MakeDriver(from, {profile});
  auto dst = MakeDriver(to, {profile});
  auto before = TheLab().Heartbeat(kGuest);
  REQUIRE(before.ok());
  Prepared p = Prepare(*src, *dst, options);
  std::vector<cv1::MigrationProgressReport> samples;
  const absl::Time t0 = absl::Now();
  auto r = src->LiveMigration(
      p.live, [&](const cv1::MigrationProgressReport& rep) { samples.push_back(rep); });
  const absl::Duration took = absl::Now() - t0;
  REQUIRE(r.ok());
  INFO(r->DebugString());
  INFO("transfer took " << absl::FormatDuration(took) << ", " << samples.size() << " samples");
  REQUIRE(r->state() == cv1::TRANSFER_STATE_COMPLETED);
  PostSteps(*src, *dst, p.live.migration_id());
  CHECK(Where() == to);
  if (profile == "libxl-strict") {
    // The monitor polls libvirt's job every poll_interval (100 ms) from the transfer's start and
    // reports every poll that finds the job running; a lab transfer (the destination starts its
    // QEMU, then the guest's RAM crosses) takes several polls, so it is sampled. libxl gives the
    // job's elapsed time only: no sample, nor the final report, carries bytes.
    REQUIRE_FALSE(samples.empty());
    uint64_t elapsed = 0;
    for (const auto& s : samples) {
      CHECK(s.state() == cv1::TRANSFER_STATE_RUNNING);
      CHECK(s.monitor_attached());
      CHECK_FALSE(s.progress().has_bytes());
      CHECK(s.progress().bytes_processed() == 0);
      CHECK(s.progress().elapsed_ms() >= elapsed);  // the monitor's own clock: never backwards
      elapsed = s.progress().elapsed_ms();
    }
    CHECK(elapsed <= static_cast<uint64_t>(absl::ToInt64Milliseconds(took)));
    CHECK_FALSE(r->progress().has_bytes());
    CHECK(r->progress().percent() == 0);
    CHECK(r->progress().elapsed_ms() >= elapsed);  // the last poll's, at or after the last sample
  }
  // The guest booted once and its heartbeat continues on the destination.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  Lab::Beat after;
  do {
    auto b = TheLab().Heartbeat(kGuest);
    REQUIRE(b.ok());
    after = *b;
  } while (after.last <= before->last + 2 && absl::Now() < deadline &&
           (absl::SleepFor(absl::Milliseconds(200)), true));
  CHECK(after.boots == 1);
  CHECK(after.corrupt == 0);
  CHECK(after.last > before->last + 2);
}

TEST_CASE("lab: live migration a->b->a with guest continuity, QEMU profile") {
  Hop("qemu", "a", "b");
  Hop("qemu", "b", "a");
}

TEST_CASE("lab: live migration a->b->a with guest continuity, libxl-strict profile") {
  Hop("libxl-strict", "a", "b");
  Hop("libxl-strict", "b", "a");
}

TEST_CASE("lab: offline migration in both profiles") {
  v1::MigrationOptions off;
  off.set_mode(v1::MIGRATION_MODE_OFFLINE);
  Hop("qemu", "a", "b", off);
  Hop("libxl-strict", "b", "a", off);
}

TEST_CASE("lab: a bandwidth limit shows progress climbing; completed stats on the destination") {
  auto src = MakeDriver("a");
  auto dst = MakeDriver("b");
  v1::MigrationOptions o;
  o.set_bandwidth_mib_s(16);
  Prepared p = Prepare(*src, *dst, o);
  std::vector<uint64_t> processed;
  const absl::Time t0 = absl::Now();
  int calls = 0;
  auto r = src->LiveMigration(p.live, [&](const cv1::MigrationProgressReport& rep) {
    ++calls;
    if (rep.progress().has_bytes()) processed.push_back(rep.progress().bytes_processed());
  });
  UNSCOPED_INFO("migration took " << absl::FormatDuration(absl::Now() - t0) << ", sink calls "
                                  << calls);
  REQUIRE(r.ok());
  REQUIRE(r->state() == cv1::TRANSFER_STATE_COMPLETED);
  PostSteps(*src, *dst, p.live.migration_id());
  INFO("samples: " << processed.size());
  REQUIRE(processed.size() >= 3);
  for (size_t i = 1; i < processed.size(); ++i) CHECK(processed[i] >= processed[i - 1]);
  CHECK(processed.back() > processed.front());
  // The destination's completed job stats account for the whole transfer (the guest keeps
  // dirtying memory, so more than its 48 MiB working set may have been sent).
  auto api = NewRealLibvirtApi();
  auto conn = api->Open(TheLab().Uri("b"));
  REQUIRE(conn.ok());
  auto dom = api->LookupByUUID(conn->get(), kUuid);
  REQUIRE(dom.ok());
  auto done = api->GetJobStats(dom->get(), VIR_DOMAIN_JOB_STATS_COMPLETED);
  REQUIRE(done.ok());
  REQUIRE(done->data_processed.has_value());
  CHECK(*done->data_processed >= 40ull << 20);
  CHECK(Where() == "b");
  Hop("qemu", "b", "a");
}

TEST_CASE("lab: abort mid-transfer leaves the VM on the source (QEMU); refused on libxl") {
  auto src = MakeDriver("a");
  auto dst = MakeDriver("b");
  v1::MigrationOptions slow;
  slow.set_bandwidth_mib_s(4);
  Prepared p = Prepare(*src, *dst, slow);
  std::atomic<bool> aborted{false};
  absl::Status abort_status;
  auto r = src->LiveMigration(p.live, [&](const cv1::MigrationProgressReport& rep) {
    if (!aborted && rep.progress().bytes_processed() > 0) {
      aborted = true;
      abort_status = src->AbortLiveMigration(p.live.migration_id(), kUuid);
    }
  });
  REQUIRE(r.ok());
  CHECK(abort_status.ok());
  CHECK(r->state() == cv1::TRANSFER_STATE_CANCELLED);
  Rollback(*src, *dst, p.live.migration_id());
  CHECK(Where() == "a");
  auto d = dst->DescribeDomain(kUuid);
  REQUIRE(d.ok());
  CHECK_FALSE(d->has_value());  // nothing left on the destination

  auto xsrc = MakeDriver("a", {"libxl-strict"});
  auto refused = xsrc->AbortLiveMigration("whatever", kUuid);
  CHECK(refused.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(refused.message(), "cannot abort"));
  // Asking libxl for a bandwidth limit fails up front, naming the hypervisor and the feature.
  cv1::LiveMigrationRequest bw = p.live;
  bw.set_migration_id(NewMigrationId());
  bw.mutable_options()->set_bandwidth_mib_s(8);
  auto no = xsrc->LiveMigration(bw, nullptr);
  CHECK(no.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(no.status().message(), "Xen"));
  CHECK(Where() == "a");
}

TEST_CASE("lab: force-complete converges a slow migration (QEMU)") {
  auto src = MakeDriver("a");
  auto dst = MakeDriver("b");
  v1::MigrationOptions slow;
  slow.set_bandwidth_mib_s(4);
  Prepared p = Prepare(*src, *dst, slow);
  std::atomic<bool> forced{false};
  absl::Status force_status;
  auto r = src->LiveMigration(p.live, [&](const cv1::MigrationProgressReport& rep) {
    if (!forced && rep.progress().bytes_processed() > 0) {
      forced = true;
      force_status = src->ForceCompleteLiveMigration(p.live.migration_id(), kUuid);
    }
  });
  REQUIRE(r.ok());
  CHECK(force_status.ok());
  INFO(r->DebugString());
  CHECK(r->state() == cv1::TRANSFER_STATE_COMPLETED);
  PostSteps(*src, *dst, p.live.migration_id());
  CHECK(Where() == "b");
  Hop("qemu", "b", "a");
}

TEST_CASE("lab: destinations that must refuse, each with its reason") {
  auto src = MakeDriver("a");
  auto reason_of = [](const auto& resp, const std::string& check) {
    for (const auto& c : resp.checks()) {
      if (c.name() == check) return std::make_pair(c.passed(), c.reason());
    }
    return std::make_pair(true, std::string("check not found"));
  };
  SECTION("no br-guest bridge") {
    auto dst = MakeDriver("b", {"qemu", {"br-other"}});
    Prepared p = Prepare(*src, *dst, {}, false);
    auto [ok, why] = reason_of(p.dest, "network");
    CHECK_FALSE(ok);
    CHECK(absl::StrContains(why, "br-guest"));
  }
  SECTION("a private (not shared) instance directory") {
    const std::string priv = TheLab().dir() + "/private-b";
    REQUIRE(livemig::testing::RunCommand("mkdir -p " + priv).ok());
    auto dst = MakeDriver("b", {"qemu", {"br-guest"}, priv});
    v1::MigrationOptions no_block;
    no_block.set_block_migration(v1::BLOCK_MIGRATION_NO);
    Prepared p = Prepare(*src, *dst, no_block, false);
    CHECK(p.dest.passed());
    auto [ok, why] = reason_of(p.src, "shared_storage");
    CHECK_FALSE(ok);
    CHECK(absl::StrContains(why, "not shared"));
  }
  SECTION("a dom0 reserve that leaves too little memory") {
    auto dst = MakeDriver("b", {"qemu", {"br-guest"}, "", 1ull << 30});
    Prepared p = Prepare(*src, *dst, {}, false);
    auto [ok, why] = reason_of(p.dest, "memory");
    CHECK_FALSE(ok);
    CHECK(absl::StrContains(why, "dom0 reserve"));
  }
  SECTION("an incompatible CPU definition") {
    auto dst = MakeDriver("b", {"qemu", {"br-guest"}, "", 256, std::vector<std::string>{"sse2"}});
    Prepared p = Prepare(*src, *dst, {}, false);
    auto [ok, why] = reason_of(p.dest, "cpu");
    CHECK_FALSE(ok);
    CHECK(absl::StrContains(why, "lacks source features"));
  }
  CHECK(Where() == "a");
}

}  // namespace
}  // namespace livemig::driver
