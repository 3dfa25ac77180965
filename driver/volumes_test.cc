// Shared volumes (driver/volumes.h): the volumes file, how disks are told apart, the checks'
// verdicts and reasons, and the handover's commands, against a host modelled by a directory
// (its /dev and /sys) and a runner that plays iscsiadm and drbdadm on it.
#include "driver/volumes.h"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "driver/checks.h"
#include "driver/libvirt_xml.h"
#include "testing/run_command.h"

namespace livemig::driver {
namespace {

constexpr char kPortal[] = "10.0.2.101:3260";
constexpr char kIqn[] = "iqn.2026-12.lab.livemig:data";
constexpr char kWwid[] = "naa.60000000000000000e00000000010001";

// A host: a directory standing for / (dev, sys), iSCSI sessions as by-path links created and
// removed by the runner, DRBD state per resource; every command is recorded.
struct FakeHost {
  std::string root = testing::MakeTempDir("volumes");
  std::vector<std::string> commands;
  std::map<std::string, std::string> role;  // resource -> "Primary" / "Secondary"
  std::string cstate = "Connected", dstate = "UpToDate/UpToDate";
  bool two_primaries = true;
  bool device_busy = false;  // `drbdadm secondary` fails (Xen still holds the device)
  std::string wwid = kWwid;  // the LUN's identity on this host
  bool reachable = true;     // the portal answers

  FakeHost() {
    for (const char* d : {"/dev/disk/by-path", "/sys/block/sdb/device", "/sys/block/sdc/device"}) {
      REQUIRE(testing::RunCommand(absl::StrCat("mkdir -p ", root, d)).ok());
    }
    Write("/dev/drbd0", "");
    Write("/dev/sdc", "");
    Write("/sys/block/sdc/device/wwid", "naa.6000000000000000000000000000cccc\n");
  }
  ~FakeHost() { (void)testing::RunCommand("rm -rf " + root); }
  void Write(const std::string& path, const std::string& text) {
    std::ofstream(root + path) << text;
  }
  std::string Link(uint32_t lun) const { return root + IscsiByPath(kPortal, kIqn, lun); }
  void Login(uint32_t lun) {
    const std::string dev = lun == 1 ? "sdb" : absl::StrCat("sd", std::string(1, 'b' + lun));
    Write("/dev/" + dev, "");
    Write(absl::StrCat("/sys/block/", dev, "/device/wwid"), wwid + "\n");
    REQUIRE(symlink(("../../" + dev).c_str(), Link(lun).c_str()) == 0);
  }

  Volumes::Runner Runner() {
    return [this](const std::string& script) -> absl::StatusOr<std::string> {
      commands.push_back(script);
      if (absl::StrContains(script, "--login")) {
        if (access(Link(1).c_str(), F_OK) != 0) Login(1);
        return "";
      }
      if (absl::StrContains(script, "--logout")) {
        unlink(Link(1).c_str());
        return "";
      }
      if (absl::StartsWith(script, "drbdadm role")) {
        const std::string r = role.count("r0") ? role["r0"] : "Secondary";
        return absl::StrCat(r, "/Secondary\n@@\n", cstate, "\n@@\n", dstate,
                            "\n@@\nresource r0 {\n  net {\n",
                            two_primaries ? "    allow-two-primaries yes;\n" : "", "  }\n}\n");
      }
      if (absl::StartsWith(script, "drbdadm primary")) {
        role["r0"] = "Primary";
        return "";
      }
      if (absl::StartsWith(script, "drbdadm secondary")) {
        if (device_busy)
          return absl::InternalError(
              "exit 11: r0: State change failed: (-12) Device is held open by someone");
        role["r0"] = "Secondary";
        return "";
      }
      return "";  // udevadm settle
    };
  }
  Volumes Make(const std::string& file_text) {
    auto specs = ParseVolumesFile(file_text, "/etc/livemig/volumes.conf");
    REQUIRE(specs.ok());
    Volumes::Options o;
    o.hostname = "xenb";
    o.volumes_file = "/etc/livemig/volumes.conf";
    o.specs = *specs;
    o.state_dir = root;
    o.root = root;
    o.device_timeout = absl::Seconds(5);
    o.release_timeout = absl::Seconds(2);
    o.reach = [this](const std::string& portal) {
      return portal == kPortal && reachable ? absl::OkStatus()
                                            : absl::UnavailableError("connect: Connection refused");
    };
    return Volumes(o, Runner());
  }
  int Count(const std::string& needle) const {
    int n = 0;
    for (const auto& c : commands) n += absl::StrContains(c, needle);
    return n;
  }
};

const char kFile[] =
    "# volumes\n"
    "data  iscsi portal=10.0.2.101:3260 target=iqn.2026-12.lab.livemig:data lun=1\n"
    "\n"
    "r0    drbd  resource=r0 device=/dev/drbd0   # replicated between the two hosts\n";

v1::DomainDisk Disk(const std::string& type, const std::string& source, const std::string& dev) {
  v1::DomainDisk d;
  d.set_type(type);
  d.set_source(source);
  d.set_target_dev(dev);
  d.set_kind(type == "file" ? v1::DISK_KIND_FILE : v1::DISK_KIND_BLOCK);
  return d;
}

TEST_CASE("volumes file: parsed, with a clear error naming the line for each mistake") {
  auto v = ParseVolumesFile(kFile, "f");
  REQUIRE(v.ok());
  REQUIRE(v->size() == 2);
  CHECK((*v)[0].kind == v1::DISK_KIND_ISCSI);
  CHECK((*v)[0].lun == 1);
  CHECK((*v)[0].device == IscsiByPath(kPortal, kIqn, 1));
  CHECK((*v)[1].kind == v1::DISK_KIND_DRBD);
  CHECK((*v)[1].device == "/dev/drbd0");
  const std::pair<const char*, const char*> bad[] = {
      {"x nfs path=/a\n", "kind 'nfs' is neither iscsi nor drbd"},
      {"x iscsi portal=10.0.0.1:1 target=iqn.a lun=z\n", "lun='z' is not a LUN number"},
      {"x iscsi portal=h target=iqn.a lun=1\n", "portal='h' is not <IPv4 address>:<port>"},
      {"x iscsi portal=san.example.net:3260 target=iqn.a lun=1\n",
       "portal='san.example.net:3260' is not <IPv4 address>:<port> or [<IPv6 address>]:<port> (an "
       "address"},
      {"x iscsi portal=10.0.0.1:1 target=foo lun=1\n", "target='foo' is not an iSCSI name"},
      {"x drbd resource=r0 device=/dev/drbd0 speed=9\n", "unknown key 'speed'"},
      {"x drbd resource=r0\n", "device='' is not a path under /dev"},
      {"\nx drbd resource=r0 device=/dev/drbd0\nx drbd resource=r1 device=/dev/drbd1\n",
       "line 3: volume 'x' is named twice"},
      {"x\n", "a volume needs a name and a kind"},
  };
  for (const auto& [text, want] : bad) {
    auto r = ParseVolumesFile(text, "/etc/livemig/volumes.conf");
    INFO(text);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(absl::StrContains(r.status().message(), "/etc/livemig/volumes.conf line "));
    CHECK(absl::StrContains(r.status().message(), want));
  }
  CHECK(Volumes::Load("/nonexistent/volumes.conf").status().code() ==
        absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("DRBD state: 8.4's own/peer form and 9's single word") {
  DrbdState s = ParseDrbdState("Primary/Secondary\n", "Connected\n", "UpToDate/UpToDate\n",
                               "resource r0 {\n net {\n  allow-two-primaries yes;\n }\n}");
  CHECK(s.role == "Primary");
  CHECK(s.peer_role == "Secondary");
  CHECK(s.cstate == "Connected");
  CHECK(s.disk == "UpToDate");
  CHECK(s.peer_disk == "UpToDate");
  CHECK(s.two_primaries);
  DrbdState t = ParseDrbdState("Secondary", "StandAlone", "UpToDate/DUnknown", "net { }");
  CHECK(t.role == "Secondary");
  CHECK(t.peer_disk == "DUnknown");
  CHECK_FALSE(t.two_primaries);
}

TEST_CASE("disks told apart: configured iSCSI and DRBD volumes, a by-path LUN, a block device") {
  FakeHost h;
  h.Login(1);
  Volumes v = h.Make(kFile);
  v1::DomainDisk iscsi = Disk("block", IscsiByPath(kPortal, kIqn, 1), "xvda");
  v.Describe(&iscsi);
  CHECK(iscsi.kind() == v1::DISK_KIND_ISCSI);
  CHECK(iscsi.volume() == "data");
  CHECK(iscsi.iscsi_target() == kIqn);
  CHECK(iscsi.iscsi_lun() == 1);
  CHECK(iscsi.iscsi_portal() == kPortal);
  CHECK(iscsi.device_id() == kWwid);
  CHECK(iscsi.shared());

  v1::DomainDisk drbd = Disk("block", "/dev/drbd0", "xvdb");
  v.Describe(&drbd);
  CHECK(drbd.kind() == v1::DISK_KIND_DRBD);
  CHECK(drbd.volume() == "r0");
  CHECK(drbd.drbd_resource() == "r0");
  CHECK(drbd.device_id() == "drbd:r0/0");

  // Not configured: still told apart by name, but no volume.
  v1::DomainDisk other = Disk("block", IscsiByPath("10.9.9.9:3260", "iqn.x:y", 4), "xvdc");
  v.Describe(&other);
  CHECK(other.kind() == v1::DISK_KIND_ISCSI);
  CHECK(other.volume().empty());
  CHECK(other.iscsi_lun() == 4);
  v1::DomainDisk plain = Disk("block", "/dev/sdc", "xvdd");
  v.Describe(&plain);
  CHECK(plain.kind() == v1::DISK_KIND_BLOCK);
  v1::DomainDisk file = Disk("file", "/var/lib/livemig/instances/u/disk", "xvde");
  v.Describe(&file);
  CHECK(file.kind() == v1::DISK_KIND_FILE);

  // From a domain's XML.
  auto disks = DomainDisks(
      "<domain type='xen'><devices><disk type='block' device='disk'><driver name='phy'/>"
      "<source dev='/dev/drbd0'/><target dev='xvda' bus='xen'/></disk>"
      "<disk type='file' device='cdrom'><source file='/i.iso'/><target dev='hdc'/><readonly/>"
      "</disk></devices></domain>");
  REQUIRE(disks.size() == 2);
  CHECK(disks[0].source() == "/dev/drbd0");
  CHECK(disks[0].target_dev() == "xvda");
  CHECK(disks[0].kind() == v1::DISK_KIND_BLOCK);
  CHECK(disks[1].read_only());
}

TEST_CASE("checks: each refusal says what is missing on which host") {
  FakeHost src;
  src.Login(1);
  Volumes on_src = src.Make(kFile);
  v1::DomainInfo inst;
  inst.set_name("db-1");
  *inst.add_disks() = Disk("block", IscsiByPath(kPortal, kIqn, 1), "xvda");
  *inst.add_disks() = Disk("block", "/dev/drbd0", "xvdb");
  for (auto& d : *inst.mutable_disks()) on_src.Describe(&d);

  SECTION("a destination with both volumes, the LUN not logged in, DRBD ready: passes") {
    FakeHost dst;
    auto c = dst.Make(kFile).Check(inst, "destination");
    REQUIRE(c.has_value());
    INFO(c->reason());
    CHECK(c->passed());
    CHECK(c->name() == "shared_volumes");
    CHECK(c->host() == "xenb");
    CHECK(
        absl::StrContains(c->reason(), "reaches 10.0.2.101:3260 and logs in before the transfer"));
    CHECK(absl::StrContains(c->reason(), "two primaries allowed"));
  }
  SECTION("no volumes configured: both disks refused, naming the file") {
    FakeHost dst;
    auto c = dst.Make("").Check(inst, "destination");
    REQUIRE(c.has_value());
    CHECK_FALSE(c->passed());
    CHECK(absl::StrContains(c->reason(),
                            "disk xvda is iSCSI target iqn.2026-12.lab.livemig:data LUN 1, which "
                            "xenb's volumes file /etc/livemig/volumes.conf does not list"));
    CHECK(
        absl::StrContains(c->reason(), "disk xvdb is DRBD resource r0, which xenb's volumes file"));
  }
  SECTION("portal unreachable, DRBD not connected and without two primaries") {
    FakeHost dst;
    dst.cstate = "StandAlone";
    dst.dstate = "UpToDate/DUnknown";
    dst.two_primaries = false;
    dst.reachable = false;
    auto c = dst.Make(kFile).Check(inst, "destination");
    REQUIRE(c.has_value());
    CHECK_FALSE(c->passed());
    INFO(c->reason());
    CHECK(absl::StrContains(c->reason(), "xenb cannot reach iSCSI portal 10.0.2.101:3260"));
    CHECK(absl::StrContains(c->reason(), "DRBD resource r0 on xenb is StandAlone, not Connected"));
    CHECK(absl::StrContains(c->reason(), "has disks UpToDate/DUnknown, not UpToDate/UpToDate"));
    CHECK(absl::StrContains(c->reason(), "does not allow two primaries"));
  }
  SECTION("a LUN logged in with another WWID is not the same device") {
    FakeHost dst;
    dst.wwid = "naa.6000000000000000000000000000ffff";
    dst.Login(1);
    auto c = dst.Make(kFile).Check(inst, "destination");
    REQUIRE(c.has_value());
    CHECK_FALSE(c->passed());
    CHECK(absl::StrContains(c->reason(),
                            "has WWID naa.6000000000000000000000000000ffff, the source's " +
                                std::string(kWwid) + ": not the same device"));
  }
  SECTION("a block device the destination does not have") {
    v1::DomainInfo local;
    *local.add_disks() = Disk("block", "/dev/vg0/db", "xvda");
    FakeHost dst;
    auto c = dst.Make(kFile).Check(local, "destination");
    REQUIRE(c.has_value());
    CHECK_FALSE(c->passed());
    CHECK(absl::StrContains(
        c->reason(),
        "disk xvda is block device /dev/vg0/db, neither an iSCSI LUN nor a DRBD volume"));
    CHECK(absl::StrContains(c->reason(), "xenb has no such device"));
  }
  SECTION("a LUN through another portal: another device path than the guest's") {
    FakeHost dst;
    auto c = dst.Make(
                    "data iscsi portal=10.0.2.102:3260 target=iqn.2026-12.lab.livemig:data "
                    "lun=1\nr0 drbd resource=r0 device=/dev/drbd0\n")
                 .Check(inst, "destination");
    REQUIRE(c.has_value());
    CHECK_FALSE(c->passed());
    CHECK(absl::StrContains(c->reason(), "is not xenb's device for volume data"));
  }
  SECTION("a guest path that is not this host's device for the volume") {
    FakeHost dst;
    dst.Write("/dev/drbd1", "");
    auto c = dst.Make("r0 drbd resource=r0 device=/dev/drbd1\n").Check(inst, "destination");
    REQUIRE(c.has_value());
    CHECK_FALSE(c->passed());
    INFO(c->reason());
    CHECK(absl::StrContains(
        c->reason(),
        "the guest's disk path /dev/drbd0 is not xenb's device for volume r0 (/dev/drbd1)"));
  }
  SECTION("a source that does not list the LUN could not log out of it") {
    FakeHost s2;
    s2.Login(1);
    auto c = s2.Make("r0 drbd resource=r0 device=/dev/drbd0\n").Check(inst, "source");
    REQUIRE(c.has_value());
    CHECK_FALSE(c->passed());
    CHECK(absl::StrContains(c->reason(), "could not log out of it after the migration"));
  }
  SECTION("files only: no check") {
    v1::DomainInfo files;
    *files.add_disks() = Disk("file", "/var/lib/livemig/instances/u/disk", "xvda");
    FakeHost dst;
    CHECK_FALSE(dst.Make(kFile).Check(files, "destination").has_value());
  }
  SECTION("the source checks its DRBD side") {
    src.cstate = "WFConnection";
    auto c = on_src.Check(inst, "source");
    REQUIRE(c.has_value());
    CHECK_FALSE(c->passed());
    CHECK(absl::StrContains(c->reason(), "is WFConnection, not Connected"));
  }
}

TEST_CASE("handover: attach records then acts, repeats are no-ops, rollback undoes only its own") {
  FakeHost src;
  src.Login(1);
  Volumes on_src = src.Make(kFile);
  v1::DomainInfo inst;
  *inst.add_disks() = Disk("block", IscsiByPath(kPortal, kIqn, 1), "xvda");
  *inst.add_disks() = Disk("block", "/dev/drbd0", "xvdb");
  for (auto& d : *inst.mutable_disks()) on_src.Describe(&d);

  FakeHost dst;
  Volumes v = dst.Make(kFile);
  auto a = v.Attach("mig-1", inst);
  REQUIRE(a.ok());
  CHECK(*a == std::vector<std::string>{"iscsi:iqn.2026-12.lab.livemig:data:1", "drbd:r0"});
  CHECK(dst.Count("--login") == 1);
  CHECK(dst.Count("drbdadm primary r0") + dst.Count("drbdadm primary 'r0'") == 1);
  CHECK(dst.role["r0"] == "Primary");
  CHECK(access((dst.root + "/volumes/mig-1.list").c_str(), F_OK) == 0);

  // A repeat (the scheduler retried): the same answer, no second login or promotion.
  auto again = v.Attach("mig-1", inst);
  REQUIRE(again.ok());
  CHECK(*again == *a);
  CHECK(dst.Count("--login") == 1);

  // Rollback: logged out and demoted, the record gone; a repeat does nothing.
  REQUIRE(v.Undo("mig-1").ok());
  CHECK(dst.Count("--logout") == 1);
  CHECK(dst.role["r0"] == "Secondary");
  CHECK(access((dst.root + "/volumes/mig-1.list").c_str(), F_OK) != 0);
  REQUIRE(v.Undo("mig-1").ok());
  CHECK(dst.Count("--logout") == 1);

  // Held before the migration (a session of its own, primary already): attach leaves them, and
  // so does the rollback.
  FakeHost held;
  held.Login(1);
  held.role["r0"] = "Primary";
  Volumes hv = held.Make(kFile);
  auto none = hv.Attach("mig-2", inst);
  REQUIRE(none.ok());
  CHECK(none->empty());
  REQUIRE(hv.Undo("mig-2").ok());
  CHECK(held.Count("--logout") == 0);
  CHECK(held.role["r0"] == "Primary");
}

TEST_CASE("attach refuses what the volumes file does not list, and DRBD not ready, before acting") {
  FakeHost src;
  src.Login(1);
  v1::DomainInfo inst;
  *inst.add_disks() = Disk("block", IscsiByPath(kPortal, kIqn, 1), "xvda");
  src.Make(kFile).Describe(inst.mutable_disks(0));
  // A description naming a target the destination does not list (e.g. a forged one): refused,
  // and no command runs.
  v1::DomainInfo forged = inst;
  forged.mutable_disks(0)->set_iscsi_target("iqn.x';reboot;'");
  FakeHost dst;
  Volumes v = dst.Make(kFile);
  auto a = v.Attach("mig-3", forged);
  CHECK(a.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(a.status().message(), "its volumes file does not list it"));
  CHECK(dst.commands.empty());
  CHECK(access((dst.root + "/volumes/mig-3.list").c_str(), F_OK) != 0);

  // DRBD disconnected since the check: not promoted, nothing recorded.
  v1::DomainInfo drbd;
  *drbd.add_disks() = Disk("block", "/dev/drbd0", "xvdb");
  src.Make(kFile).Describe(drbd.mutable_disks(0));
  dst.cstate = "StandAlone";
  auto b = v.Attach("mig-4", drbd);
  CHECK(b.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(
      absl::StrContains(b.status().message(),
                        "not promoting DRBD resource r0 on xenb: it is StandAlone, not Connected"));
  CHECK(dst.Count("drbdadm primary") == 0);
  CHECK(access((dst.root + "/volumes/mig-4.list").c_str(), F_OK) != 0);
}

TEST_CASE("release at the source: logs out and demotes; waits while Xen holds the device") {
  FakeHost src;
  src.Login(1);
  src.role["r0"] = "Primary";
  Volumes v = src.Make(kFile);
  v1::DomainInfo inst;
  *inst.add_disks() = Disk("block", IscsiByPath(kPortal, kIqn, 1), "xvda");
  *inst.add_disks() = Disk("block", "/dev/drbd0", "xvdb");
  for (auto& d : *inst.mutable_disks()) v.Describe(&d);
  // Recorded at the transfer's start; released from the record alone (the request of
  // PostLiveMigration does not describe the domain, which is gone from the source by then).
  REQUIRE(v.NoteHeld("mig-9", inst).ok());
  REQUIRE(access((src.root + "/volumes/mig-9.held").c_str(), F_OK) == 0);
  REQUIRE(v.Release("mig-9", v1::DomainInfo()).ok());
  CHECK(src.Count("--logout") == 1);
  CHECK(src.role["r0"] == "Secondary");
  CHECK(access((src.root + "/volumes/mig-9.held").c_str(), F_OK) != 0);
  REQUIRE(v.Release("mig-9", inst).ok());  // idempotent

  // The device stays open (a domain still uses it): refused after the deadline, saying why.
  src.role["r0"] = "Primary";
  src.device_busy = true;
  absl::Status st = v.Release("mig-10", inst);
  CHECK(st.code() == absl::StatusCode::kUnavailable);
  CHECK(absl::StrContains(st.message(), "cannot make DRBD resource r0 Secondary on xenb"));
  CHECK(absl::StrContains(st.message(), "Device is held open"));

  // Another LUN of the same target in use here: the session stays.
  FakeHost two;
  two.Login(1);
  two.Login(2);
  Volumes tv = two.Make(kFile);
  v1::DomainInfo only;
  *only.add_disks() = Disk("block", IscsiByPath(kPortal, kIqn, 1), "xvda");
  tv.Describe(only.mutable_disks(0));
  REQUIRE(tv.Release("mig-11", only).ok());
  CHECK(two.Count("--logout") == 0);
}

}  // namespace
}  // namespace livemig::driver
