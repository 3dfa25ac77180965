// LibvirtDriver in the two-host lab: real live migrations between two libvirtd (QEMU under TCG
// in network namespaces), in the QEMU profile and in the libxl-strict profile (the libxl
// profile enforced by StrictLibxlApi over the real QEMU connection, so a call Xen would refuse
// fails the test instead of passing).
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <mutex>
#include <regex>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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
  // Block migration's disk files are created and removed as the host's libvirtd sees them.
  o.host_command_prefix = lab.ExecPrefix(host);
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
                 bool expect_pass = true, const std::string& uuid = kUuid) {
  Prepared p;
  const std::string mid = NewMigrationId();
  auto src_inv = src.GetHostInfo();
  REQUIRE(src_inv.ok());
  auto dom = src.DescribeDomain(uuid);
  REQUIRE(dom.ok());
  REQUIRE(dom->has_value());
  cv1::CheckCanLiveMigrateOnDestRequest dreq;
  dreq.set_migration_id(mid);
  dreq.set_instance_uuid(uuid);
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
  sreq.set_instance_uuid(uuid);
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
  pre.set_instance_uuid(uuid);
  *pre.mutable_migrate_data()->mutable_src_check() = s->src_check_data();
  auto data = dst.PreLiveMigration(pre);
  REQUIRE(data.ok());
  p.live.set_migration_id(mid);
  p.live.set_instance_uuid(uuid);
  p.live.set_source_host(src_inv->hostname());
  p.live.set_dest_host("dst");
  *p.live.mutable_options() = options;
  *p.live.mutable_migrate_data()->mutable_src_check() = s->src_check_data();
  *p.live.mutable_migrate_data()->mutable_pre_live_migration() = *data;
  return p;
}

void PostSteps(LibvirtDriver& src, LibvirtDriver& dst, const std::string& mid,
               const std::string& uuid = kUuid) {
  cv1::PostLiveMigrationRequest post;
  post.set_migration_id(mid);
  post.set_instance_uuid(uuid);
  REQUIRE(src.PostLiveMigration(post).ok());
  cv1::PostLiveMigrationAtDestinationRequest at;
  at.set_migration_id(mid);
  at.set_instance_uuid(uuid);
  auto dom = dst.PostLiveMigrationAtDestination(at);
  REQUIRE(dom.ok());
  CHECK(dom->persistent());
  CHECK(dom->state() == v1::DOMAIN_STATE_RUNNING);
}

void Rollback(LibvirtDriver& src, LibvirtDriver& dst, const std::string& mid,
              const std::string& uuid = kUuid) {
  cv1::RollbackLiveMigrationAtDestinationRequest rb;
  rb.set_migration_id(mid);
  rb.set_instance_uuid(uuid);
  REQUIRE(dst.RollbackLiveMigrationAtDestination(rb).ok());
  cv1::RollbackLiveMigrationRequest r;
  r.set_migration_id(mid);
  r.set_instance_uuid(uuid);
  auto dom = src.RollbackLiveMigration(r);
  REQUIRE(dom.ok());
  CHECK(dom->state() == v1::DOMAIN_STATE_RUNNING);
}

// The guest booted once, lost no memory, and its heartbeat continues after `before` (on the
// host it runs on now).
void CheckContinuity(const std::string& guest, const Lab::Beat& before) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  Lab::Beat after;
  do {
    auto b = TheLab().Heartbeat(guest);
    REQUIRE(b.ok());
    after = *b;
  } while (after.last <= before.last + 2 && absl::Now() < deadline &&
           (absl::SleepFor(absl::Milliseconds(200)), true));
  CHECK(after.boots == 1);
  CHECK(after.corrupt == 0);
  CHECK(after.last > before.last + 2);
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
  CheckContinuity(kGuest, *before);
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

// The guest `uuid` on host `host`, on a libvirt connection of the test's own (the driver's are
// busy with the transfer).
struct TestDomain {
  std::unique_ptr<LibvirtApi> api = NewRealLibvirtApi();
  ConnHandle conn;
  DomHandle dom;
};
std::unique_ptr<TestDomain> OpenDomain(const std::string& host, const std::string& uuid = kUuid) {
  auto t = std::make_unique<TestDomain>();
  auto c = t->api->Open(TheLab().Uri(host));
  REQUIRE(c.ok());
  t->conn = *c;
  auto d = t->api->LookupByUUID(t->conn.get(), uuid);
  REQUIRE(d.ok());
  t->dom = std::move(d).value();
  return t;
}

// QEMU's migration capabilities for `guest` on `host` (query-migrate-capabilities through
// libvirt: what libvirt set up for the running migration job), as QMP prints them.
absl::StatusOr<std::string> MigrationCapabilities(const std::string& host,
                                                  const std::string& guest) {
  return livemig::testing::RunCommand(
      absl::StrCat("virsh -c '", TheLab().Uri(host), "' qemu-monitor-command ", guest,
                   " '{\"execute\":\"query-migrate-capabilities\"}'"));
}

// Whether capability `cap` is on in `caps` (MigrationCapabilities' output); nullopt if absent.
std::optional<bool> CapabilityOn(const std::string& caps, const std::string& cap) {
  const std::regex entry("\\{[^{}]*\"" + cap + "\"[^{}]*\\}");
  std::smatch m;
  if (!std::regex_search(caps, m, entry)) return std::nullopt;
  return std::regex_search(m.str(), std::regex("\"state\":\\s*true"));
}

TEST_CASE(
    "lab: completion timeout with abort; downtime steps and auto-converge in libvirt (QEMU)") {
  auto src = MakeDriver("a");
  auto dst = MakeDriver("b");
  v1::MigrationOptions o;
  o.set_bandwidth_mib_s(4);  // the guest's 64 MiB need ~16 s: the timeout comes first
  o.set_max_downtime_ms(400);
  o.set_downtime_steps(4);  // 100, 200, 300, 400 ms, one step a second
  o.set_downtime_step_delay_s(1);
  o.set_completion_timeout_s(5);
  o.set_completion_action(v1::COMPLETION_ACTION_ABORT);
  Prepared p = Prepare(*src, *dst, o);
  auto view = OpenDomain("a");
  std::atomic<bool> done{false};
  absl::StatusOr<cv1::MigrationProgressReport> r;
  const absl::Time t0 = absl::Now();
  std::thread transfer([&] {
    r = src->LiveMigration(p.live, nullptr);
    done = true;
  });
  // What libvirt reports while the transfer runs: its maximum downtime at each change (with
  // when it was seen) and, once data flows, the auto-converge capability of the job.
  std::vector<std::pair<uint64_t, absl::Duration>> downtimes;
  std::optional<absl::StatusOr<std::string>> caps;
  while (!done && absl::Now() < t0 + absl::Seconds(30)) {
    unsigned long long ms = 0;
    if (virDomainMigrateGetMaxDowntime(view->dom.get(), &ms, 0) == 0 &&
        (downtimes.empty() || downtimes.back().first != ms)) {
      downtimes.emplace_back(ms, absl::Now() - t0);
    }
    if (!caps) {
      auto job = view->api->GetJobStats(view->dom.get(), 0);
      if (job.ok() && job->type != VIR_DOMAIN_JOB_NONE && job->data_processed.value_or(0) > 0) {
        caps = MigrationCapabilities("a", kGuest);
      }
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  transfer.join();
  const absl::Duration took = absl::Now() - t0;
  std::string seen;
  for (const auto& [ms, at] : downtimes) {
    absl::StrAppend(&seen, ms, " ms at ", absl::FormatDuration(at), "; ");
  }
  UNSCOPED_INFO("max downtime seen in libvirt: " << seen << "transfer took "
                                                 << absl::FormatDuration(took));
  REQUIRE(r.ok());
  INFO(r->DebugString());
  // The steps, in order, a step delay apart (each raised by the monitor's next poll).
  std::vector<uint64_t> want = {100, 200, 300, 400};
  size_t next = 0;
  absl::Duration at_200, at_400;
  for (const auto& [ms, at] : downtimes) {
    if (next < want.size() && ms == want[next]) {
      if (ms == 200) at_200 = at;
      if (ms == 400) at_400 = at;
      ++next;
    }
  }
  CHECK(next == want.size());
  CHECK(at_400 - at_200 >= absl::Milliseconds(1500));
  REQUIRE(caps.has_value());  // seen while data flowed
  REQUIRE(caps->ok());
  INFO(**caps);
  CHECK(CapabilityOn(**caps, "auto-converge") == std::optional<bool>(true));
  CHECK(r->current_max_downtime_ms() == 400);
  // Ended by the completion timeout: aborted, and said so -- not an operator's cancel.
  CHECK(r->state() == cv1::TRANSFER_STATE_FAILED);
  CHECK(r->completion_timeout_expired());
  CHECK_FALSE(r->abort_requested());
  CHECK(absl::StrContains(r->error(), "completion timeout of 5 s expired"));
  CHECK(took >= absl::Seconds(5));
  CHECK(took < absl::Seconds(15));
  Rollback(*src, *dst, p.live.migration_id());
  CHECK(Where() == "a");
  auto d = dst->DescribeDomain(kUuid);
  REQUIRE(d.ok());
  CHECK_FALSE(d->has_value());  // nothing left on the destination
}

TEST_CASE("lab: completion timeout with force-complete: the guest goes over, one boot (QEMU)") {
  auto src = MakeDriver("a");
  auto dst = MakeDriver("b");
  auto before = TheLab().Heartbeat(kGuest);
  REQUIRE(before.ok());
  v1::MigrationOptions o;
  o.set_bandwidth_mib_s(16);  // the guest's 64 MiB need ~4 s: the timeout comes first
  o.set_completion_timeout_s(2);
  o.set_completion_action(v1::COMPLETION_ACTION_FORCE_COMPLETE);
  Prepared p = Prepare(*src, *dst, o);
  std::vector<v1::MigrationPhase> phases;
  const absl::Time t0 = absl::Now();
  auto r = src->LiveMigration(p.live, [&](const cv1::MigrationProgressReport& rep) {
    if (phases.empty() || phases.back() != rep.progress().phase()) {
      phases.push_back(rep.progress().phase());
    }
  });
  const absl::Duration took = absl::Now() - t0;
  UNSCOPED_INFO("transfer took " << absl::FormatDuration(took));
  REQUIRE(r.ok());
  INFO(r->DebugString());
  CHECK(r->state() == cv1::TRANSFER_STATE_COMPLETED);
  CHECK(r->completion_timeout_expired());
  CHECK(r->force_complete_requested());
  CHECK_FALSE(r->abort_requested());
  CHECK(took >= absl::Seconds(2));
  // Pre-copy first, then paused to complete (no post-copy allowed).
  REQUIRE_FALSE(phases.empty());
  CHECK(phases.front() == v1::MIGRATION_PHASE_PRE_COPY);
  CHECK(std::find(phases.begin(), phases.end(), v1::MIGRATION_PHASE_PAUSED_TO_COMPLETE) !=
        phases.end());
  PostSteps(*src, *dst, p.live.migration_id());
  CHECK(Where() == "b");
  CheckContinuity(kGuest, *before);
  Hop("qemu", "b", "a");
}

// A second guest with a data disk in /var/lib/libvirt/images, which is each lab host's own (a
// bind mount of DIR/hosts/X/lib): storage the two hosts do not share.
constexpr char kDiskGuest[] = "lg2";
constexpr char kDiskUuid[] = "7c1f4d2b-3a5e-4f7c-8b9d-2e3f4a5b6c7d";
constexpr char kDiskPath[] = "/var/lib/libvirt/images/lg2-data.qcow2";

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

TEST_CASE("lab: block migration copies a disk on non-shared storage (QEMU); refused on libxl") {
  Lab& lab = TheLab();
  using livemig::testing::RunCommand;
  // The disk, on host a only, with a marker: 1 MiB of 0x5a at 4 MiB.
  REQUIRE(RunCommand(absl::StrCat(lab.ExecPrefix("a"),
                                  " sh -c 'mkdir -p /var/lib/libvirt/images && qemu-img create -q "
                                  "-f qcow2 ",
                                  kDiskPath, " 32M && qemu-io -f qcow2 -c \"write -P 0x5a 4M 1M\" ",
                                  kDiskPath, "'"))
              .ok());
  const std::string on_a = lab.dir() + "/hosts/a/lib/images/lg2-data.qcow2";
  const std::string on_b = lab.dir() + "/hosts/b/lib/images/lg2-data.qcow2";
  REQUIRE(Exists(on_a));
  REQUIRE_FALSE(Exists(on_b));  // b does not see a's file
  REQUIRE(
      lab.StartGuest("a", kDiskGuest, kDiskUuid, absl::StrCat("--memory-mib 32 --disk ", kDiskPath))
          .ok());
  auto guest_where = [&] {
    auto w = lab.Where(kDiskGuest);
    REQUIRE(w.ok());
    return absl::StrJoin(*w, "");
  };
  REQUIRE(guest_where() == "a");
  auto src = MakeDriver("a");
  // The destination's instance path is its own, so the source does not see its probe file:
  // block migration (auto).
  auto dst = MakeDriver("b", {"qemu", {"br-guest"}, lab.dir() + "/private-b"});
  REQUIRE(RunCommand("mkdir -p " + lab.dir() + "/private-b").ok());

  // Prepared, the destination has the disk file: same path, format and virtual size, empty.
  Prepared p = Prepare(*src, *dst, {}, true, kDiskUuid);
  const cv1::SrcCheckData& sc = p.live.migrate_data().src_check();
  CHECK(sc.block_migration());
  REQUIRE(sc.local_disks_size() == 1);
  CHECK(sc.local_disks(0).path() == kDiskPath);
  CHECK(sc.local_disks(0).format() == "qcow2");
  CHECK(sc.local_disks(0).virtual_size_bytes() == 32ull << 20);
  CHECK(sc.block_migration_disk_mib() == 32);
  REQUIRE(Exists(on_b));
  auto info = RunCommand("qemu-img info --output=json " + on_b);
  REQUIRE(info.ok());
  CHECK(absl::StrContains(*info, "\"virtual-size\": 33554432"));
  CHECK(absl::StrContains(*info, "\"format\": \"qcow2\""));
  // A repeat is harmless; the destination's rollback removes the file it created.
  cv1::PreLiveMigrationRequest again;
  again.set_migration_id(p.live.migration_id());
  again.set_instance_uuid(kDiskUuid);
  *again.mutable_migrate_data()->mutable_src_check() = sc;
  REQUIRE(dst->PreLiveMigration(again).ok());
  Rollback(*src, *dst, p.live.migration_id(), kDiskUuid);
  CHECK_FALSE(Exists(on_b));
  CHECK(Exists(on_a));
  CHECK(guest_where() == "a");

  // The migration: the disk is copied, the guest continues on b.
  auto before = lab.Heartbeat(kDiskGuest);
  REQUIRE(before.ok());
  p = Prepare(*src, *dst, {}, true, kDiskUuid);
  const absl::Time t0 = absl::Now();
  auto r = src->LiveMigration(p.live, nullptr);
  UNSCOPED_INFO("block migration took " << absl::FormatDuration(absl::Now() - t0));
  REQUIRE(r.ok());
  INFO(r->DebugString());
  REQUIRE(r->state() == cv1::TRANSFER_STATE_COMPLETED);
  PostSteps(*src, *dst, p.live.migration_id(), kDiskUuid);
  CHECK(guest_where() == "b");
  CheckContinuity(kDiskGuest, *before);
  // b's disk holds what a's held (-U: b's QEMU has it open), the marker included.
  auto cmp = RunCommand(absl::StrCat("qemu-img compare -U -f qcow2 -F qcow2 ", on_a, " ", on_b));
  CHECK(cmp.ok());
  auto marker = RunCommand("qemu-io -U -r -f qcow2 -c 'read -P 0x5a 4M 1M' " + on_b);
  REQUIRE(marker.ok());
  INFO(*marker);
  CHECK(absl::StrContains(*marker, "read 1048576/1048576 bytes"));
  CHECK_FALSE(absl::StrContains(*marker, "failed"));

  // The libxl profile refuses block migration up front: non-shared storage without it is
  // refused by the source check, and asking for it by the options.
  auto xsrc = MakeDriver("b", {"libxl-strict"});
  REQUIRE(RunCommand("mkdir -p " + lab.dir() + "/private-a").ok());
  auto xdst = MakeDriver("a", {"libxl-strict", {"br-guest"}, lab.dir() + "/private-a"});
  auto check_of = [](const cv1::CheckCanLiveMigrateOnSrcResponse& resp, const std::string& name) {
    for (const auto& c : resp.checks()) {
      if (c.name() == name) return std::make_pair(c.passed(), c.reason());
    }
    return std::make_pair(true, std::string("check not found"));
  };
  Prepared x = Prepare(*xsrc, *xdst, {}, false, kDiskUuid);
  CHECK_FALSE(x.src.passed());
  auto [storage_ok, storage_why] = check_of(x.src, "shared_storage");
  CHECK_FALSE(storage_ok);
  CHECK(absl::StrContains(storage_why, "does not support block migration"));
  v1::MigrationOptions yes;
  yes.set_block_migration(v1::BLOCK_MIGRATION_YES);
  cv1::LiveMigrationRequest lm = p.live;
  lm.set_migration_id(NewMigrationId());
  *lm.mutable_options() = yes;
  auto no = xsrc->LiveMigration(lm, nullptr);
  CHECK(no.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(no.status().message(), "block migration"));
  CHECK(absl::StrContains(no.status().message(), "Xen"));
  CHECK(guest_where() == "b");

  // Gone: the guest and both disk files.
  RunCommand(absl::StrCat("virsh -c '", lab.Uri("b"), "' destroy ", kDiskGuest, "; virsh -c '",
                          lab.Uri("b"), "' undefine ", kDiskGuest, "; rm -f ", on_a, " ", on_b))
      .IgnoreError();
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
