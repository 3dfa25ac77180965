// Guests whose disk is a shared volume, on real Xen (issue 21): the Xen lab with --volumes (an
// iSCSI LUN served by tgtd on this machine and reached by both dom0s at 10.0.2.101:3260; DRBD
// resource r0 replicated between the two dom0s over the lab's link, two primaries allowed), the
// agents started as production starts them with the lab's volumes file, the stream not
// tunnelled (the tunnelled path is xen_e2e_test's; here the disks are the point).
//
// Each guest writes a counter record to its disk every 200 ms, synchronously, and prints each
// write on its console. After every migration the record on the disk and the console agree (no
// write lost, none torn: a whole record of this boot), the guest never saw a write fail, and the
// source no longer holds the device (logged out of the LUN / DRBD secondary). A rollback after
// the handover (the agents' steps as the scheduler sends them when a migration fails after
// pre_live_migration) leaves the guest running on the source with its disk, and the destination
// as it was before.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "integration_tests/xenlab/xen_cloud.h"
#include "testing/agent_flow.h"
#include "testing/process.h"

namespace livemig::e2e {
namespace {

constexpr char kIscsiGuest[] = "xiscsi";
constexpr char kIscsiUuid[] = "5b1e0c2a-7d3f-4e8a-9c61-0a2b3c4d5e11";
constexpr char kDrbdGuest[] = "xdrbd";
constexpr char kDrbdUuid[] = "5b1e0c2a-7d3f-4e8a-9c61-0a2b3c4d5e12";
constexpr char kDrbdDev[] = "/dev/drbd0";
constexpr char kVolumesFlags[] = "--no-tunnel --volumes-file /mnt/lab/volumes.conf";

// The LUN's udev name, the same on both dom0s (both reach the portal at the same address).
std::string LunPathOf(XenCloud& c) {
  return absl::StrCat("/dev/disk/by-path/ip-", c.lab->Env("ISCSI_IN_LAB"), "-iscsi-",
                      c.lab->Env("ISCSI_IQN"), "-lun-1");
}

XenCloud& X() {
  static std::unique_ptr<XenCloud> x = [] {
    auto c = std::make_unique<XenCloud>("", "--no-tunnel", /*volumes=*/true);
    // Before its guests start, host a holds both volumes (as an operator sets them up).
    const std::string portal = c->lab->Env("ISCSI_IN_LAB"), iqn = c->lab->Env("ISCSI_IQN");
    auto login = c->lab->Ssh(
        "a", absl::StrCat("iscsiadm -m node -T ", iqn, " -p ", portal, " -o new >/dev/null && ",
                          "iscsiadm -m node -T ", iqn, " -p ", portal,
                          " --login && udevadm settle -t 30 && test -b ", LunPathOf(*c)));
    INFO(login.status().ToString());
    REQUIRE(login.ok());
    auto primary = c->lab->Ssh("a", "drbdadm primary r0");
    INFO(primary.status().ToString());
    REQUIRE(primary.ok());
    c->StartGuests({{"a", kIscsiGuest, kIscsiUuid, "pv", LunPathOf(*c)},
                    {"a", kDrbdGuest, kDrbdUuid, "pv", kDrbdDev}});
    return c;
  }();
  return *x;
}

// Whether host h holds the LUN (logged in: its by-path device exists there).
bool HoldsLun(const std::string& h) {
  auto out = X().lab->Ssh(h, absl::StrCat("test -b ", LunPathOf(X()), " && echo yes || echo no"));
  INFO(out.status().ToString());
  REQUIRE(out.ok());
  return absl::StrContains(*out, "yes");
}

// DRBD's "own/peer" roles of r0 on host h, e.g. "Primary/Secondary".
std::string DrbdRole(const std::string& h) {
  auto out = X().lab->Ssh(h, "drbdadm role r0");
  INFO(out.status().ToString());
  REQUIRE(out.ok());
  return std::string(absl::StripAsciiWhitespace(*out));
}

// The guest's last "ok" write on its console (waiting until it passed `after` by 5 writes: the
// writer goes on), then the record on `dev` as `holder` reads it: they agree (the record is the
// last printed or the one after, written and not yet printed; a whole record, so nothing torn),
// and no write failed. Returns the console's counter.
long CheckDiskAgrees(const std::string& guest, const std::string& holder, const std::string& dev,
                     long after) {
  long c1 = 0;
  int errors = -1;
  const bool going = testing::WaitFor(
      [&] {
        auto c = X().lab->DiskConsole(guest, &errors);
        if (c.ok()) c1 = *c;
        return c.ok() && c1 > after + 5;
      },
      absl::Seconds(90));
  INFO(guest << ": the console's last write " << c1 << ", before " << after);
  REQUIRE(going);
  auto r = X().lab->DiskRecord(holder, dev);
  auto c2 = X().lab->DiskConsole(guest);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  REQUIRE(c2.ok());
  INFO(guest << ": on " << dev << " of " << testing::XenLab::Name(holder) << ": " << *r
             << "; console " << c1 << " then " << *c2);
  CHECK(*r >= c1);
  CHECK(*r <= *c2 + 1);
  CHECK(errors == 0);
  return *c2;
}

// The scheduler's record of an instance (GetInstance).
bool GetInstance(const std::string& uuid, sv1::Instance* out) {
  grpc::ClientContext ctx;
  X().cloud->Prepare(&ctx);
  sv1::GetInstanceRequest r;
  r.set_instance_uuid(uuid);
  return X().cloud->api().GetInstance(&ctx, r, out).ok();
}

TEST_CASE("xen volumes: each disk's kind and identity reach the scheduler and cloudctl") {
  sv1::Instance iscsi, drbd;
  const bool described = testing::WaitFor(
      [&] {
        return GetInstance(kIscsiUuid, &iscsi) && GetInstance(kDrbdUuid, &drbd) &&
               iscsi.disks_size() > 0 && drbd.disks_size() > 0;
      },
      absl::Seconds(30));
  INFO(iscsi.DebugString() << drbd.DebugString());
  REQUIRE(described);
  const v1::DomainDisk& l = iscsi.disks(0);
  CHECK(l.kind() == v1::DISK_KIND_ISCSI);
  CHECK(l.source() == LunPathOf(X()));
  CHECK(l.iscsi_target() == X().lab->Env("ISCSI_IQN"));
  CHECK(l.iscsi_lun() == 1);
  CHECK(l.iscsi_portal() == X().lab->Env("ISCSI_IN_LAB"));
  CHECK(l.volume() == "lab-lun");
  CHECK_FALSE(l.device_id().empty());  // the LUN's WWID as dom0 reads it
  const v1::DomainDisk& d = drbd.disks(0);
  CHECK(d.kind() == v1::DISK_KIND_DRBD);
  CHECK(d.drbd_resource() == "r0");
  CHECK(d.device_id() == "drbd:r0/0");
  CHECK(d.volume() == "r0");
  auto show = X().Cloudctl(absl::StrCat("instance-show ", kIscsiUuid));
  INFO(show.out);
  CHECK(show.code == 0);
  CHECK(absl::StrContains(show.out, X().lab->Env("ISCSI_IQN")));
  CHECK(absl::StrContains(show.out, l.device_id()));
  std::cout << "xen volumes: " << kIscsiGuest << "'s disk: iSCSI " << l.iscsi_target() << " LUN "
            << l.iscsi_lun() << " at " << l.iscsi_portal() << ", WWID " << l.device_id() << "; "
            << kDrbdGuest << "'s disk: " << d.device_id() << std::endl;
}

TEST_CASE("xen volumes: the dry run shows the disks; a destination without the volume refuses") {
  auto ok = X().Cloudctl(absl::StrCat("live-migration ", kDrbdUuid, " xenb --dry-run"));
  INFO(ok.out);
  CHECK(ok.code == 0);
  CHECK(absl::StrContains(ok.out, "shared_volumes"));
  CHECK(absl::StrContains(ok.out, "r0"));
  // Host b's agent without its volumes file: both guests refused, each disk named.
  X().RestartAgent("b", "--no-tunnel");
  for (const char* uuid : {kIscsiUuid, kDrbdUuid}) {
    auto no = X().Cloudctl(absl::StrCat("live-migration ", uuid, " xenb --dry-run"));
    INFO(no.out);
    CHECK(no.code != 0);
    const std::string flat = FlattenTable(no.out);
    CHECK(absl::StrContains(flat, "shared_volumes"));
    CHECK(absl::StrContains(flat, "does not list"));
    std::cout << "xen volumes: dry run of " << uuid << " to xenb without its volumes file: "
              << (absl::StrContains(flat, "iSCSI target") ? "iSCSI" : "DRBD")
              << " disk refused (\"does not list\")" << std::endl;
  }
  X().RestartAgent("b", kVolumesFlags);
}

// One leg, A→B (the test command's time: each leg is 1-4 minutes of emulation); the handover
// the other way, B→A, is the rollback case's, which then leaves the guests on B.
TEST_CASE(
    "xen volumes: a guest on an iSCSI LUN and one on DRBD migrate A→B at once while writing") {
  struct G {
    const char* name;
    const char* uuid;
    std::string dev;
    long seen = 0;
    long ticks_before = 0;
  };
  std::vector<G> guests = {{kIscsiGuest, kIscsiUuid, LunPathOf(X())},
                           {kDrbdGuest, kDrbdUuid, kDrbdDev}};
  for (G& g : guests) {
    REQUIRE(X().Where(g.name) == "a");
    g.seen = CheckDiskAgrees(g.name, "a", g.dev, 0);
  }
  for (const std::string to : {"b"}) {
    const std::string from = "a", dest = testing::XenLab::Name(to);
    // Both at once (the agents take two migrations each): about half the time of one by one.
    std::vector<std::string> ids;
    for (G& g : guests) {
      auto hb = X().lab->Heartbeat(g.name);
      REQUIRE(hb.ok());
      g.ticks_before = hb->last;
      auto m = X().cloud->Migrate(g.uuid, dest);
      INFO(m.status().ToString());
      REQUIRE(m.ok());
      ids.push_back(m->migration().id());
    }
    const absl::Time t0 = absl::Now();
    for (size_t i = 0; i < guests.size(); ++i) {
      G& g = guests[i];
      const sv1::Migration done = X().cloud->WaitTerminal(ids[i], absl::Seconds(600));
      const double secs = absl::ToDoubleSeconds(absl::Now() - t0);
      INFO(done.DebugString());
      INFO(X().lab->AgentLog("a"));
      INFO(X().lab->AgentLog("b"));
      REQUIRE(done.status() == v1::MIGRATION_STATUS_COMPLETED);
      CHECK(X().Where(g.name) == to);
      CHECK(X().cloud->WaitInstanceOn(g.uuid, dest, absl::Seconds(30)));
      auto beat = X().WaitTicking(g.name, g.ticks_before);
      CHECK(beat.boots == 1);
      CHECK(beat.last > g.ticks_before);
      const bool iscsi = std::string(g.name) == kIscsiGuest;
      if (iscsi) {
        CHECK(HoldsLun(to));
        CHECK_FALSE(HoldsLun(from));  // the source logged out after the migration
      } else {
        CHECK(absl::StartsWith(DrbdRole(to), "Primary/"));
        CHECK(absl::StartsWith(DrbdRole(from), "Secondary/"));  // demoted after it
      }
      g.seen = CheckDiskAgrees(g.name, to, g.dev, g.seen);
      std::cout << "xen volumes: " << g.name << " (" << (iscsi ? "iSCSI LUN" : "DRBD r0") << ") -> "
                << dest << " in " << absl::StrFormat("%.1f", secs)
                << " s (both at once, not tunnelled); the guest's longest pause "
                << beat.max_pause_ms << " ms; disk and console agree at write " << g.seen << "; "
                << testing::XenLab::Name(from)
                << (iscsi ? std::string(" logged out") : " r0 " + DrbdRole(from)) << std::endl;
    }
  }
}

// From wherever the guest runs (B after the migration case; A when run alone) to the other host.
TEST_CASE(
    "xen volumes: a rollback after the handover leaves each guest on the source with its disk") {
  for (const auto& [guest, uuid] : {std::pair{kIscsiGuest, kIscsiUuid}, {kDrbdGuest, kDrbdUuid}}) {
    const bool iscsi = std::string(guest) == kIscsiGuest;
    const std::string dev = iscsi ? LunPathOf(X()) : kDrbdDev;
    testing::AgentFlow f(uuid);
    for (const char* h : {"a", "b"}) f.AddHost(h, testing::XenLab::Name(h), X().AgentChannel(h));
    const std::string src = X().Where(guest);
    REQUIRE((src == "a" || src == "b"));
    const std::string dst = src == "a" ? "b" : "a";
    long seen = CheckDiskAgrees(guest, src, dev, 0);
    const std::string mid = absl::StrCat("xen-volumes-rb-", guest, "-", getpid());
    f.Prepare(mid, src, dst);  // checks, then pre_live_migration: the handover
    if (iscsi) {
      CHECK(HoldsLun(dst));
    } else {
      CHECK(DrbdRole(dst) == "Primary/Primary");  // both primaries for the switch-over
    }
    f.Rollback(mid, src, dst);  // what the scheduler sends when the migration fails here
    if (iscsi) {
      CHECK_FALSE(HoldsLun(dst));
      CHECK(HoldsLun(src));
    } else {
      CHECK(DrbdRole(dst) == "Secondary/Primary");
      CHECK(DrbdRole(src) == "Primary/Secondary");
    }
    CHECK(X().Where(guest) == src);
    seen = CheckDiskAgrees(guest, src, dev, seen);
    std::cout << "xen volumes: " << guest << " rolled back after the handover to "
              << testing::XenLab::Name(dst) << ": on " << testing::XenLab::Name(src)
              << ", disk and console agree at write " << seen << ", " << testing::XenLab::Name(dst)
              << (iscsi ? " logged out" : " secondary") << std::endl;
  }
}

}  // namespace
}  // namespace livemig::e2e
