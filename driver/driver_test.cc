// The ComputeDriver contract, run against every implementation that can run here without the
// lab: FakeDriver (both profiles) and LibvirtDriver on libvirt's test driver (test:///default:
// inventory, lookup, lifecycle), and LibvirtDriver on a Xen-like libvirt (XenLikeApi: the test
// driver on a node file with Domain-0, answering as libvirt 9.0's libxl driver does on Xen 4.17
// where the test driver cannot). Migration on LibvirtDriver runs in the lab tests.
// Plus the shared checks and the strict libxl layer.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/clock.h"
#include "driver/checks.h"
#include "driver/fake_driver.h"
#include "driver/libvirt_api.h"
#include "driver/libvirt_driver.h"
#include "driver/libvirt_xml.h"
#include "testing/process.h"

namespace livemig::driver {
namespace {

constexpr char kTestDomainUuid[] = "6695eb01-f6a4-8304-79aa-97f2502e193f";  // test:///default
constexpr char kAbsentUuid[] = "00000000-0000-4000-8000-00000000dead";
constexpr char kFakeUuid[] = "11111111-2222-4333-8444-555555555555";
constexpr char kDomain0Uuid[] = "00000000-0000-0000-0000-000000000000";
constexpr char kXenVmUuid[] = "5b0e3c1a-2f4d-4e6b-9a7c-1d2e3f4a5b6c";

std::string TempDir(const std::string& tag) {
  std::string t =
      absl::StrCat(getenv("TEST_TMPDIR") ? getenv("TEST_TMPDIR") : "/tmp", "/", tag, "-XXXXXX");
  REQUIRE(mkdtemp(t.data()) != nullptr);
  return t;
}

// ---- A Xen-like libvirt ----------------------------------------------------------------------

// libvirt's test driver on a node file holding Domain-0 (640 MiB) and one guest (256 MiB, on
// br-guest), answering as libvirt 9.0's libxl driver does on Xen 4.17 (XEN_LAB_FACTS.md) where the
// test driver cannot: virConnectGetType "Xen" and version 4017000; Domain-0 listed with domain id
// 0; free memory as Xen's free pages (total minus every running domain, Domain-0 included); job
// stats (the test driver has none) as scripted per domain -- none, or libxl's "unbounded" job of
// unknown operation with its elapsed time only -- and a scripted pause reason (the test driver
// pauses with reason "user", as libxl pauses an incoming domain). Everything else is the test
// driver's own: suspend, destroy, undefine really change its state.
class XenLikeApi : public ForwardingLibvirtApi {
 public:
  struct Script {
    std::mutex mu;
    std::map<std::string, JobStats> jobs;     // by UUID; absent: no job (libxl: "None")
    std::map<std::string, int> pause_reason;  // by UUID: the reason of a paused domain
    ConnHandle conn;                          // the driver's connection: its private state
    // The guest's definition as libxl gives it (<domain type='xen'>, os type and machine), instead
    // of the test driver's <domain type='test'>; empty: the test driver's own.
    std::string xen_os_type;  // e.g. "<type arch='x86_64' machine='xenpvh'>xenpvh</type>"
    // A transfer that runs until aborted (the test driver cannot migrate): MigrateToURI3 reports
    // an unbounded job and blocks until AbortJob was called and the job statistics were read
    // twice more (libvirt ends an aborted job a moment later, not at once), then fails as libvirt
    // does ("operation canceled").
    bool hold_migration = false;
    bool migrating = false;
    bool aborted = false;
    int polls_after_abort = 0;
    std::condition_variable cv;
  };

  static std::string NodeFile() {
    const std::string path = TempDir("xen-node") + "/node.xml";
    std::ofstream out(path);
    out << "<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads>"
           "<active>2</active><mhz>2400</mhz><model>x86_64</model></cpu>"
           "<memory>8388608</memory>"
           "<domain type='test'><name>Domain-0</name><uuid>"
        << kDomain0Uuid
        << "</uuid><memory unit='MiB'>640</memory><os><type>xen</type></os></domain>"
           "<domain type='test'><name>xen-vm</name><uuid>"
        << kXenVmUuid
        << "</uuid><memory unit='MiB'>256</memory><vcpu>1</vcpu><os><type>xen</type></os>"
           "<devices><interface type='bridge'><source bridge='br-guest'/>"
           "<mac address='52:54:00:12:34:56'/></interface></devices></domain></node>";
    REQUIRE(out.good());
    return path;
  }

  explicit XenLikeApi(std::shared_ptr<Script> script)
      : ForwardingLibvirtApi(NewRealLibvirtApi()), script_(std::move(script)) {}

  absl::StatusOr<ConnHandle> Open(const std::string& uri) override {
    auto c = inner_->Open(uri);
    if (c.ok()) {
      std::lock_guard<std::mutex> l(script_->mu);
      if (!script_->conn) script_->conn = *c;
    }
    return c;
  }
  absl::StatusOr<std::string> GetType(virConnectPtr) override { return std::string("Xen"); }
  absl::StatusOr<uint64_t> GetVersion(virConnectPtr) override { return uint64_t{4017000}; }
  absl::StatusOr<uint64_t> GetFreeMemoryBytes(virConnectPtr c) override {
    auto node = inner_->GetNodeInfo(c);
    if (!node.ok()) return node.status();
    auto doms = inner_->ListAllDomains(c);
    if (!doms.ok()) return doms.status();
    uint64_t used_kib = 0;
    for (auto& d : *doms) {
      auto b = inner_->Describe(d.get());
      if (b.ok() && b->state != VIR_DOMAIN_SHUTOFF) used_kib += b->memory_kib;
    }
    return (node->memory_kib - std::min(node->memory_kib, used_kib)) * 1024;
  }
  absl::StatusOr<DomainBasics> Describe(virDomainPtr d) override {
    auto b = inner_->Describe(d);
    if (!b.ok()) return b;
    if (b->uuid == kDomain0Uuid) b->id = 0;  // Xen's control domain
    std::lock_guard<std::mutex> l(script_->mu);
    auto r = script_->pause_reason.find(b->uuid);
    if (r != script_->pause_reason.end() && b->state == VIR_DOMAIN_PAUSED) b->reason = r->second;
    return b;
  }
  absl::StatusOr<std::string> GetXMLDesc(virDomainPtr d, unsigned int flags) override {
    auto xml = inner_->GetXMLDesc(d, flags);
    std::lock_guard<std::mutex> l(script_->mu);
    if (!xml.ok() || script_->xen_os_type.empty()) return xml;
    std::string x = *xml;
    const size_t type = x.find("<domain type='test'");
    if (type != std::string::npos) x.replace(type, 19, "<domain type='xen'");
    const size_t a = x.find("<type"), b = x.find("</type>");
    if (a != std::string::npos && b != std::string::npos) {
      x.replace(a, b + 7 - a, script_->xen_os_type);
    }
    return x;
  }
  absl::StatusOr<JobStats> GetJobStats(virDomainPtr d, unsigned int flags) override {
    auto b = inner_->Describe(d);
    if (!b.ok()) return b.status();
    std::lock_guard<std::mutex> l(script_->mu);
    if (script_->migrating) {
      if (script_->aborted) ++script_->polls_after_abort;
      script_->cv.notify_all();
      JobStats running;
      running.type = VIR_DOMAIN_JOB_UNBOUNDED;
      running.operation = VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT;
      running.time_elapsed_ms = 100;
      return running;
    }
    auto it = script_->jobs.find(b->uuid);
    if (it == script_->jobs.end()) return JobStats{};  // type NONE
    return it->second;
  }
  absl::Status MigrateToURI3(virDomainPtr d, const std::string& dconnuri,
                             const MigrateParams& params, unsigned int flags) override {
    std::unique_lock<std::mutex> l(script_->mu);
    if (!script_->hold_migration) {
      l.unlock();
      return inner_->MigrateToURI3(d, dconnuri, params, flags);
    }
    script_->migrating = true;
    const bool ended = script_->cv.wait_for(l, std::chrono::seconds(60), [&] {
      return script_->aborted && script_->polls_after_abort >= 2;
    });
    script_->migrating = false;
    if (!ended) return absl::InternalError("test: the held transfer was never aborted");
    return absl::CancelledError("operation aborted: migration out job: canceled by client");
  }
  absl::Status AbortJob(virDomainPtr d) override {
    {
      std::lock_guard<std::mutex> l(script_->mu);
      if (script_->hold_migration) {
        script_->aborted = true;
        script_->cv.notify_all();
        return absl::OkStatus();
      }
    }
    return inner_->AbortJob(d);
  }

 private:
  std::shared_ptr<Script> script_;
};

// Suspends a domain through its own libvirt call (an operator's `virsh suspend`): paused, reason
// "user".
void SuspendDomain(virConnectPtr c, const std::string& uuid) {
  virDomainPtr d = virDomainLookupByUUIDString(c, uuid.c_str());
  REQUIRE(d != nullptr);
  const int r = virDomainSuspend(d);
  virDomainFree(d);
  REQUIRE(r == 0);
}

bool DomainExists(virConnectPtr c, const std::string& uuid) {
  virDomainPtr d = virDomainLookupByUUIDString(c, uuid.c_str());
  if (d == nullptr) return false;
  virDomainFree(d);
  return true;
}

// One implementation under the contract, with a running domain it knows.
struct Subject {
  std::string name;
  std::unique_ptr<ComputeDriver> driver;
  std::string running_uuid;
  bool libxl_like = false;
  // Pauses the running domain as an operator would (reason "user").
  std::function<void()> pause;
  // Xen-like subjects: the hypervisor lists a Domain-0 of this size; is it still there?
  uint64_t domain0_mib = 0;
  std::function<bool()> domain0_present;
  std::shared_ptr<XenLikeApi::Script> xen;  // the Xen-like libvirt's script, if any
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
  Subject s{"FakeDriver " + profile, std::move(d).value(), kFakeUuid, profile == "fake-libxl"};
  auto hv = std::make_shared<FakeHypervisor>(dir);
  s.pause = [hv] {
    REQUIRE(hv->Mutate([](nlohmann::json& st, bool* changed) {
                st["hosts"]["fake-a"]["domains"][kFakeUuid]["state"] = "paused";
                *changed = true;
                return absl::OkStatus();
              }).ok());
  };
  if (profile == "fake-libxl") {
    s.domain0_mib = o.dom0_memory_mib;
    s.domain0_present = [hv] {
      auto w = hv->Locate(kDomain0Uuid);
      REQUIRE(w.ok());
      return *w == std::vector<std::pair<std::string, std::string>>{{"fake-a", "running"}};
    };
  }
  return s;
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
  Subject s{"LibvirtDriver test:///default", std::move(d).value(), kTestDomainUuid, true};
  s.pause = [] {
    // test:///default's state is shared by the process's connections while one stays open (the
    // driver's does).
    virConnectPtr c = virConnectOpen("test:///default");
    REQUIRE(c != nullptr);
    SuspendDomain(c, kTestDomainUuid);
    virConnectClose(c);
  };
  return s;
}

// A LibvirtDriver's options on a Xen-like libvirt (XenLikeApi over a node file of its own).
LibvirtDriver::Options XenLikeOptions(const std::string& profile = "auto",
                                      const std::string& hostname = "xen-host") {
  LibvirtDriver::Options o;
  o.uri = "test://" + XenLikeApi::NodeFile();
  o.profile = profile;
  o.hostname = hostname;
  o.instance_path = TempDir("inst");
  o.state_dir = TempDir("state");
  o.bridges = {"br-guest"};
  return o;
}

// A transfer of the Xen-like libvirt's guest to `migration_uri` (the destination's data).
cv1::LiveMigrationRequest XenVmTransfer(const std::string& migration_uri) {
  cv1::LiveMigrationRequest req;
  req.set_instance_uuid(kXenVmUuid);
  req.mutable_migrate_data()->mutable_pre_live_migration()->set_migration_uri(migration_uri);
  return req;
}

Subject MakeXenLike(const std::string& profile = "auto") {
  auto script = std::make_shared<XenLikeApi::Script>();
  LibvirtDriver::Options o = XenLikeOptions(profile);
  auto d = LibvirtDriver::Create(o, std::make_unique<XenLikeApi>(script));
  REQUIRE(d.ok());
  REQUIRE(script->conn);
  Subject s{"LibvirtDriver on a Xen-like libvirt (" + (*d)->profile() + ")", std::move(d).value(),
            kXenVmUuid, profile != "qemu"};
  s.pause = [script] { SuspendDomain(script->conn.get(), kXenVmUuid); };
  s.domain0_mib = 640;
  s.domain0_present = [script] { return DomainExists(script->conn.get(), kDomain0Uuid); };
  s.xen = script;
  return s;
}

std::vector<std::function<Subject()>> Subjects() {
  return {[] { return MakeFake("fake-qemu"); }, [] { return MakeFake("fake-libxl"); },
          MakeLibvirtTest, [] { return MakeXenLike(); }};
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
        CHECK(absl::StrContains(c.reason(), "MiB dom0 reserve"));
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

// A guest with a PCI device passed through cannot live-migrate (the device's state is the host's
// hardware): the source's check refuses it with the devices, in LibvirtDriver (libvirt's test
// driver, a domain defined with <hostdev type='pci'>) and in the FakeDriver alike.
TEST_CASE("contract: a guest with a PCI device passed through is refused by the source check") {
  auto refusal = [](const cv1::CheckCanLiveMigrateOnSrcResponse& r) -> std::string {
    for (const auto& c : r.checks()) {
      if (c.name() == "pci_passthrough" && !c.passed()) return c.reason();
    }
    return "";
  };
  SECTION("LibvirtDriver on libvirt's test driver") {
    Subject s = MakeLibvirtTest();
    constexpr char kUuid[] = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    virConnectPtr c = virConnectOpen("test:///default");
    REQUIRE(c != nullptr);
    const std::string xml =
        absl::StrCat("<domain type='test'><name>gpu-1</name><uuid>", kUuid,
                     "</uuid><memory unit='MiB'>128</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
                     "<devices><hostdev mode='subsystem' type='pci' managed='yes'><source><address "
                     "domain='0x0000' bus='0x03' slot='0x00' function='0x1'/></source></hostdev>"
                     "<hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/>"
                     "<product id='0xbeef'/></source></hostdev></devices></domain>");
    virDomainPtr d = virDomainDefineXML(c, xml.c_str());
    REQUIRE(d != nullptr);
    REQUIRE(virDomainCreate(d) == 0);
    auto info = s.driver->DescribeDomain(kUuid);
    REQUIRE(info.ok());
    REQUIRE(info->has_value());
    CHECK(
        std::vector<std::string>((*info)->host_devices().begin(), (*info)->host_devices().end()) ==
        std::vector<std::string>{"0000:03:00.1"});  // the USB device is not PCI
    cv1::CheckCanLiveMigrateOnSrcRequest req;
    req.set_migration_id("m-pci");
    req.set_instance_uuid(kUuid);
    req.set_source_host("test-host");
    auto r = s.driver->CheckCanLiveMigrateOnSrc(req);
    REQUIRE(r.ok());
    CHECK_FALSE(r->passed());
    INFO(r->DebugString());
    CHECK(absl::StrContains(refusal(*r), "instance gpu-1 has PCI devices passed through"));
    CHECK(absl::StrContains(refusal(*r), "0000:03:00.1"));
    CHECK(absl::StrContains(refusal(*r), "Detach them first"));
    // A guest without one passes this check.
    auto plain = s.driver->CheckCanLiveMigrateOnSrc([&] {
      auto q = req;
      q.set_instance_uuid(kTestDomainUuid);
      return q;
    }());
    REQUIRE(plain.ok());
    CHECK(refusal(*plain).empty());
    virDomainDestroy(d);
    virDomainUndefine(d);
    virDomainFree(d);
    virConnectClose(c);
  }
  SECTION("FakeDriver") {
    Subject s = MakeFake("fake-qemu");
    auto hv = std::make_shared<FakeHypervisor>(
        static_cast<FakeDriver*>(s.driver.get())->hypervisor().state_dir());
    REQUIRE(hv->Mutate([](nlohmann::json& st, bool* changed) {
                st["hosts"]["fake-a"]["domains"][kFakeUuid]["hostdevs"] = {"0000:03:00.1"};
                *changed = true;
                return absl::OkStatus();
              }).ok());
    cv1::CheckCanLiveMigrateOnSrcRequest req;
    req.set_migration_id("m-pci");
    req.set_instance_uuid(kFakeUuid);
    req.set_source_host("fake-a");
    auto r = s.driver->CheckCanLiveMigrateOnSrc(req);
    REQUIRE(r.ok());
    CHECK_FALSE(r->passed());
    CHECK(absl::StrContains(refusal(*r), "0000:03:00.1"));
  }
}

TEST_CASE("checks: PCI host devices from a domain definition") {
  CHECK(PciHostDevices("<domain><devices><disk/></devices></domain>").empty());
  CHECK(PciHostDevices(
            "<domain><devices><hostdev mode='subsystem' type='pci' managed='yes'>"
            "<driver name='vfio'/><source><address domain='0x0000' bus='0x0a' slot='0x1f' "
            "function='0x7'/></source><address type='pci' domain='0x0000' bus='0x00' "
            "slot='0x05' function='0x0'/></hostdev>"
            "<hostdev mode='subsystem' type='pci'><source><address domain='0x0001' bus='0x00' "
            "slot='0x02' function='0x0'/></source></hostdev></devices></domain>") ==
        std::vector<std::string>{"0000:0a:1f.7", "0001:00:02.0"});
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

cv1::RollbackLiveMigrationAtDestinationRequest DestRollback(const std::string& mid,
                                                            const std::string& uuid,
                                                            bool source_runs_domain) {
  cv1::RollbackLiveMigrationAtDestinationRequest rb;
  rb.set_migration_id(mid);
  rb.set_instance_uuid(uuid);
  rb.set_source_runs_domain(source_runs_domain);
  return rb;
}

TEST_CASE("contract: Domain-0 is never reported as an instance, and its memory is not free") {
  for (auto& make : Subjects()) {
    Subject s = make();
    INFO(s.name);
    auto inv = s.driver->GetHostInfo();
    REQUIRE(inv.ok());
    auto list = s.driver->ListDomains();
    REQUIRE(list.ok());
    uint64_t guests_mib = 0;
    for (const auto& d : inv->domains()) {
      CHECK(d.uuid() != kDomain0Uuid);
      CHECK(d.name() != "Domain-0");
      guests_mib += d.memory_mib();
    }
    for (const auto& d : *list) {
      CHECK(d.uuid() != kDomain0Uuid);
      CHECK(d.name() != "Domain-0");
    }
    auto d0 = s.driver->DescribeDomain(kDomain0Uuid);
    REQUIRE(d0.ok());
    CHECK_FALSE(d0->has_value());
    if (s.domain0_mib == 0) continue;  // no Domain-0 on this hypervisor
    // Xen: free memory is the hypervisor's free pages, Domain-0's and the guests' excluded.
    CHECK(inv->memory_free_mib() == inv->memory_total_mib() - s.domain0_mib - guests_mib);
    if (s.xen) {
      for (const auto& d : *list) CHECK(d.domain_id() != 0);  // libvirt's domain ids
    }
    // No step acts on it: it cannot migrate, and no rollback destroys it.
    cv1::CheckCanLiveMigrateOnSrcRequest src;
    src.set_migration_id("m-d0");
    src.set_instance_uuid(kDomain0Uuid);
    src.set_source_host("src");
    CHECK_FALSE(s.driver->CheckCanLiveMigrateOnSrc(src).ok());
    CHECK_FALSE(
        s.driver->RollbackLiveMigrationAtDestination(DestRollback("m-d0", kDomain0Uuid, true))
            .ok());
    cv1::PostLiveMigrationRequest post;
    post.set_migration_id("m-d0");
    post.set_instance_uuid(kDomain0Uuid);
    CHECK_FALSE(s.driver->PostLiveMigration(post).ok());
    CHECK(s.domain0_present());
  }
}

TEST_CASE(
    "contract: a paused destination domain is destroyed by rollback only when the source runs "
    "the domain; a running one never") {
  for (auto& make : Subjects()) {
    Subject s = make();
    INFO(s.name);
    // Running: refused even when the scheduler says that the source runs the domain.
    auto running = s.driver->RollbackLiveMigrationAtDestination(
        DestRollback("m-10", s.running_uuid, /*source_runs_domain=*/true));
    CHECK(running.code() == absl::StatusCode::kFailedPrecondition);
    CHECK(absl::StrContains(running.message(), "only running copy"));
    // Paused with reason "user": how an operator's pause looks, and how Xen's libxl pauses the
    // domain of an incoming migration.
    s.pause();
    auto d = s.driver->DescribeDomain(s.running_uuid);
    REQUIRE(d.ok());
    REQUIRE(d->has_value());
    CHECK((*d)->state() == v1::DOMAIN_STATE_PAUSED);
    CHECK((*d)->state_reason() == "user");
    auto unproven = s.driver->RollbackLiveMigrationAtDestination(
        DestRollback("m-10", s.running_uuid, /*source_runs_domain=*/false));
    CHECK(unproven.code() == absl::StatusCode::kFailedPrecondition);
    CHECK(absl::StrContains(unproven.message(), "only running copy"));
    d = s.driver->DescribeDomain(s.running_uuid);
    REQUIRE(d.ok());
    REQUIRE(d->has_value());
    CHECK((*d)->state() == v1::DOMAIN_STATE_PAUSED);
    // The source runs the domain: this paused copy is half-received; it goes, and a repeat is
    // harmless.
    for (int i = 0; i < 2; ++i) {
      auto done = s.driver->RollbackLiveMigrationAtDestination(
          DestRollback("m-10", s.running_uuid, /*source_runs_domain=*/true));
      INFO(done.ToString());
      CHECK(done.ok());
      d = s.driver->DescribeDomain(s.running_uuid);
      REQUIRE(d.ok());
      CHECK_FALSE(d->has_value());
    }
  }
}

TEST_CASE("contract: a job of unknown operation is not reported as a migration on libxl") {
  SECTION("LibvirtDriver on a Xen-like libvirt") {
    Subject s = MakeXenLike();
    REQUIRE(s.driver->capabilities().profile() == "libxl");
    auto d = s.driver->DescribeDomain(kXenVmUuid);
    REQUIRE(d.ok());
    REQUIRE(d->has_value());
    CHECK_FALSE((*d)->job_active());  // libxl idle: job type None
    CHECK_FALSE((*d)->migration_job_active());
    JobStats unbounded;  // what libxl answers for any job: unbounded, unknown, elapsed only
    unbounded.type = VIR_DOMAIN_JOB_UNBOUNDED;
    unbounded.time_elapsed_ms = 1234;
    {
      std::lock_guard<std::mutex> l(s.xen->mu);
      s.xen->jobs[kXenVmUuid] = unbounded;
    }
    d = s.driver->DescribeDomain(kXenVmUuid);
    REQUIRE(d.ok());
    REQUIRE(d->has_value());
    CHECK((*d)->job_active());
    CHECK((*d)->job_elapsed_ms() == 1234);
    CHECK_FALSE((*d)->migration_job_active());
    CHECK((*d)->migration_id().empty());
    auto listed = s.driver->ListDomains();
    REQUIRE(listed.ok());
    REQUIRE(listed->size() == 1);
    CHECK((*listed)[0].job_active());
    CHECK_FALSE((*listed)[0].migration_job_active());
    // Asked by migration id (the scheduler knows the migration runs): the job is its transfer,
    // with elapsed time and no bytes.
    auto p = s.driver->GetMigrationProgress("m-11", kXenVmUuid);
    REQUIRE(p.ok());
    CHECK(p->state() == cv1::TRANSFER_STATE_RUNNING);
    CHECK(p->progress().elapsed_ms() == 1234);
    CHECK_FALSE(p->progress().has_bytes());
    CHECK_FALSE(p->monitor_attached());
    // A job whose operation says migration is one.
    {
      std::lock_guard<std::mutex> l(s.xen->mu);
      s.xen->jobs[kXenVmUuid].operation = VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT;
    }
    d = s.driver->DescribeDomain(kXenVmUuid);
    REQUIRE(d.ok());
    REQUIRE(d->has_value());
    CHECK((*d)->migration_job_active());
  }
  SECTION("LibvirtDriver's QEMU profile keeps calling any job a migration") {
    Subject s = MakeXenLike("qemu");
    JobStats unbounded;
    unbounded.type = VIR_DOMAIN_JOB_UNBOUNDED;
    {
      std::lock_guard<std::mutex> l(s.xen->mu);
      s.xen->jobs[kXenVmUuid] = unbounded;
    }
    auto d = s.driver->DescribeDomain(kXenVmUuid);
    REQUIRE(d.ok());
    REQUIRE(d->has_value());
    CHECK((*d)->job_active());
    CHECK((*d)->migration_job_active());
  }
}

// A transfer's marks (completion timeout expired, abort or force-complete requested) must survive
// the monitor's next sample of libvirt's job statistics: before, each sample replaced the
// transfer's report, so a transfer the completion timeout aborted ended as CANCELLED, i.e.
// "aborted by an operator", and the agent lost the operator's request from its reports.
TEST_CASE("libvirt driver: a transfer's timeout, abort and force-complete marks outlive samples") {
  auto script = std::make_shared<XenLikeApi::Script>();
  script->hold_migration = true;
  // Completion timeout, abort and force-complete are QEMU's.
  LibvirtDriver::Options o = XenLikeOptions("qemu", "qemu-host");
  o.poll_interval = absl::Milliseconds(20);
  auto d = LibvirtDriver::Create(o, std::make_unique<XenLikeApi>(script));
  REQUIRE(d.ok());
  LibvirtDriver& driver = **d;
  cv1::LiveMigrationRequest req = XenVmTransfer("qemu+tcp://peer/system");
  std::mutex mu;
  std::vector<cv1::MigrationProgressReport> samples;
  auto sink = [&](const cv1::MigrationProgressReport& r) {
    std::lock_guard<std::mutex> l(mu);
    samples.push_back(r);
  };
  auto sampled = [&](size_t n) {
    std::lock_guard<std::mutex> l(mu);
    return samples.size() >= n;
  };

  SECTION("the completion timeout aborts: FAILED, never an operator's cancel") {
    req.set_migration_id("m-timeout");
    req.mutable_options()->set_completion_timeout_s(1);
    req.mutable_options()->set_completion_action(v1::COMPLETION_ACTION_ABORT);
    auto r = driver.LiveMigration(req, sink);
    REQUIRE(r.ok());
    INFO(r->DebugString());
    CHECK(r->state() == cv1::TRANSFER_STATE_FAILED);
    CHECK(r->completion_timeout_expired());
    CHECK(absl::StrContains(r->error(), "completion timeout of 1 s expired"));
    CHECK_FALSE(r->abort_requested());
    std::lock_guard<std::mutex> l(mu);
    REQUIRE(samples.size() >= 2);
    CHECK(samples.back().completion_timeout_expired());  // sampled after the abort, still marked
  }
  SECTION("an operator's abort and force-complete stay in every later sample") {
    req.set_migration_id("m-abort");
    absl::StatusOr<cv1::MigrationProgressReport> r;
    std::thread t([&] { r = driver.LiveMigration(req, sink); });
    REQUIRE(livemig::testing::WaitFor([&] { return sampled(1); }, absl::Seconds(30)));
    REQUIRE(driver.ForceCompleteLiveMigration("m-abort", kXenVmUuid).ok());
    size_t n = 0;
    {
      std::lock_guard<std::mutex> l(mu);
      n = samples.size();
    }
    REQUIRE(livemig::testing::WaitFor([&] { return sampled(n + 2); }, absl::Seconds(30)));
    auto p = driver.GetMigrationProgress("m-abort", kXenVmUuid);
    REQUIRE(p.ok());
    CHECK(p->force_complete_requested());
    {
      std::lock_guard<std::mutex> l(mu);
      CHECK(samples.back().force_complete_requested());
    }
    REQUIRE(driver.AbortLiveMigration("m-abort", kXenVmUuid).ok());
    t.join();
    REQUIRE(r.ok());
    INFO(r->DebugString());
    CHECK(r->state() == cv1::TRANSFER_STATE_CANCELLED);
    CHECK(r->abort_requested());  // two samples came after the abort
    CHECK(r->force_complete_requested());
    CHECK_FALSE(r->completion_timeout_expired());
  }
}

// A long-running agent's driver forgets ended transfers: each is kept (its last report answers
// GetMigrationProgress and a repeated LiveMigration) for the window and only the most recent
// `max_finished_transfers` of them, whichever is smaller (as the FakeDriver and the agent).
TEST_CASE("libvirt driver: ended transfers are kept for the window and at most the count") {
  FakeClock clock;
  LibvirtDriver::Options o = XenLikeOptions();
  o.finished_transfer_keep = absl::Hours(1);
  o.max_finished_transfers = 3;
  o.clock = &clock;
  auto d = LibvirtDriver::Create(
      o, std::make_unique<XenLikeApi>(std::make_shared<XenLikeApi::Script>()));
  REQUIRE(d.ok());
  LibvirtDriver& driver = **d;
  cv1::LiveMigrationRequest req = XenVmTransfer("xen+tls://peer/system");
  // libvirt's test driver cannot migrate: each transfer ends at once, FAILED, the guest stays.
  std::map<std::string, std::string> ended;  // id -> its last report, serialized
  for (int i = 1; i <= 5; ++i) {
    req.set_migration_id(absl::StrCat("m-k", i));
    auto r = driver.LiveMigration(req, nullptr);
    REQUIRE(r.ok());
    CHECK(r->state() == cv1::TRANSFER_STATE_FAILED);
    ended[req.migration_id()] = r->SerializeAsString();
    clock.Advance(absl::Minutes(1));  // m-k<i> ended at i-1 minutes
  }
  auto kept = [&](const std::string& id) {
    auto p = driver.GetMigrationProgress(id, kXenVmUuid);
    if (p.status().code() == absl::StatusCode::kNotFound) return false;  // nor a job on libvirt
    REQUIRE(p.ok());
    CHECK(p->SerializeAsString() == ended[id]);
    return true;
  };
  // The count: the 3 most recent.
  CHECK_FALSE(kept("m-k1"));
  CHECK_FALSE(kept("m-k2"));
  CHECK(kept("m-k3"));
  CHECK(kept("m-k4"));
  CHECK(kept("m-k5"));
  // A repeated LiveMigration of a kept one answers its report (no second transfer).
  req.set_migration_id("m-k5");
  auto again = driver.LiveMigration(req, nullptr);
  REQUIRE(again.ok());
  CHECK(again->SerializeAsString() == ended["m-k5"]);
  // The window: m-k3 ended 2 minutes in, so at 62 minutes it is an hour old, still kept; a
  // second later it is gone; an hour after the last, all are.
  clock.Advance(absl::Minutes(57));
  CHECK(kept("m-k3"));
  clock.Advance(absl::Seconds(1));
  CHECK_FALSE(kept("m-k3"));
  CHECK(kept("m-k4"));
  clock.Advance(absl::Minutes(2));
  CHECK_FALSE(kept("m-k4"));
  CHECK_FALSE(kept("m-k5"));
}

// After an agent restart nothing but the hypervisor tells whether the paused source is still
// being sent (libxl pauses the source for the last pages): the source's rollback must not resume
// a domain a job still works on, or the destination may resume a second running copy.
TEST_CASE("libvirt driver: a paused source is not resumed while a job still works on it") {
  Subject s = MakeXenLike();
  s.pause();
  JobStats unbounded;  // libxl: any job, unbounded, of unknown operation
  unbounded.type = VIR_DOMAIN_JOB_UNBOUNDED;
  unbounded.time_elapsed_ms = 5000;
  {
    std::lock_guard<std::mutex> l(s.xen->mu);
    s.xen->jobs[kXenVmUuid] = unbounded;
  }
  cv1::RollbackLiveMigrationRequest r;
  r.set_migration_id("m-job");
  r.set_instance_uuid(kXenVmUuid);
  r.set_state_before_migration(v1::DOMAIN_STATE_RUNNING);
  auto refused = s.driver->RollbackLiveMigration(r);
  INFO(refused.status().ToString());
  CHECK(refused.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(absl::StrContains(refused.status().message(), "a job still runs on it"));
  auto d = s.driver->DescribeDomain(kXenVmUuid);
  REQUIRE(d.ok());
  REQUIRE(d->has_value());
  CHECK((*d)->state() == v1::DOMAIN_STATE_PAUSED);
  {
    std::lock_guard<std::mutex> l(s.xen->mu);
    s.xen->jobs.erase(kXenVmUuid);  // the job ended (the transfer failed): now it may run again
  }
  auto resumed = s.driver->RollbackLiveMigration(r);
  INFO(resumed.status().ToString());
  REQUIRE(resumed.ok());
  CHECK(resumed->state() == v1::DOMAIN_STATE_RUNNING);
}

TEST_CASE("libvirt driver: the destination's rollback by pause reason") {
  Subject s = MakeXenLike();
  s.pause();
  SECTION("post-copy: never destroyed, whatever the request says") {
    for (int reason : {VIR_DOMAIN_PAUSED_POSTCOPY, VIR_DOMAIN_PAUSED_POSTCOPY_FAILED}) {
      {
        std::lock_guard<std::mutex> l(s.xen->mu);
        s.xen->pause_reason[kXenVmUuid] = reason;
      }
      auto r = s.driver->RollbackLiveMigrationAtDestination(DestRollback("m-12", kXenVmUuid, true));
      CHECK(r.code() == absl::StatusCode::kFailedPrecondition);
      CHECK(absl::StrContains(r.message(), "only running copy"));
      CHECK(DomainExists(s.xen->conn.get(), kXenVmUuid));
    }
  }
  SECTION("migration (QEMU's incoming domain): destroyed without the source's word") {
    {
      std::lock_guard<std::mutex> l(s.xen->mu);
      s.xen->pause_reason[kXenVmUuid] = VIR_DOMAIN_PAUSED_MIGRATION;
    }
    auto d = s.driver->DescribeDomain(kXenVmUuid);
    REQUIRE(d.ok());
    REQUIRE(d->has_value());
    CHECK((*d)->state() == v1::DOMAIN_STATE_INCOMING_PAUSED);
    CHECK((*d)->state_reason() == "migration");
    CHECK(
        s.driver->RollbackLiveMigrationAtDestination(DestRollback("m-12", kXenVmUuid, false)).ok());
    CHECK_FALSE(DomainExists(s.xen->conn.get(), kXenVmUuid));
  }
}

// ---- Block migration: the local disks ----------------------------------------------------------

TEST_CASE("checks: the local file disks that block migration copies") {
  const std::string xml =
      "<domain type='qemu'><devices>"
      "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
      "<source file='/var/lib/x/a.qcow2'/><target dev='vda' bus='virtio'/></disk>"
      "<disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='hdc'/>"
      "<readonly/></disk>"
      "<disk type='file' device='disk'><source file='/var/lib/x/ro.img'/><target dev='vdb'/>"
      "<readonly/></disk>"
      "<disk type='file' device='disk'><source file='/shared/s.img'/><target dev='vde'/>"
      "<shareable/></disk>"
      "<disk type='file' device='disk'><driver name='qemu'/>"
      "<source file='/var/lib/x/b.img'/><target dev='vdc'/></disk>"
      "<disk type='block' device='disk'><source dev='/dev/vg/lv'/><target dev='vdd'/></disk>"
      "</devices></domain>";
  auto disks = LocalFileDisks(xml);
  REQUIRE(disks.size() == 2);
  CHECK(disks[0].path() == "/var/lib/x/a.qcow2");
  CHECK(disks[0].format() == "qcow2");
  CHECK(disks[0].target() == "vda");
  CHECK(disks[1].path() == "/var/lib/x/b.img");
  CHECK(disks[1].format() == "raw");  // no <driver type>: raw
  CHECK(disks[1].target() == "vdc");
  CHECK(LocalFileDisks("<domain><devices/></domain>").empty());
}

TEST_CASE("libvirt driver: block migration's destination disks, created once, rolled back") {
  LibvirtDriver::Options o;
  o.uri = "test:///default";
  o.profile = "qemu";
  o.hostname = "dest-host";
  o.instance_path = TempDir("inst");
  o.state_dir = TempDir("state");
  o.bridges = {"br-guest"};
  auto d = LibvirtDriver::Create(o);
  REQUIRE(d.ok());
  const std::string dir = TempDir("disks");
  const std::string mine = dir + "/sub dir/it's.qcow2";  // created, with its directory
  const std::string theirs = dir + "/theirs.img";        // already there: kept as it is
  {
    std::ofstream out(theirs);
    out << "the operator's data";
  }
  cv1::PreLiveMigrationRequest pre;
  pre.set_migration_id("m-block");
  pre.set_instance_uuid(kAbsentUuid);
  auto* src = pre.mutable_migrate_data()->mutable_src_check();
  src->set_block_migration(true);
  auto* a = src->add_local_disks();
  a->set_path(mine);
  a->set_format("qcow2");
  a->set_virtual_size_bytes(32ull << 20);
  a->set_target("vda");
  auto* b = src->add_local_disks();
  b->set_path(theirs);
  b->set_format("raw");
  b->set_virtual_size_bytes(1ull << 20);
  b->set_target("vdb");
  auto file_size = [](const std::string& p) -> int64_t {
    struct stat st;
    return stat(p.c_str(), &st) == 0 ? st.st_size : -1;
  };
  REQUIRE((*d)->PreLiveMigration(pre).ok());
  auto info = LibvirtDriver::RunHostCommand(
      "qemu-img info --output=json '" + dir + "/sub dir/it'\\''s.qcow2'", absl::Seconds(30));
  REQUIRE(info.ok());
  CHECK(absl::StrContains(*info, "\"virtual-size\": 33554432"));
  CHECK(absl::StrContains(*info, "\"format\": \"qcow2\""));
  // A repeat creates nothing again: the created file keeps what was written to it since.
  {
    std::ofstream out(mine, std::ios::app);
    out << "x";
  }
  const int64_t grown = file_size(mine);
  REQUIRE((*d)->PreLiveMigration(pre).ok());
  CHECK(file_size(mine) == grown);
  CHECK(file_size(theirs) == 19);
  // The destination's rollback removes what it created, only that; a repeat changes nothing.
  REQUIRE(
      (*d)->RollbackLiveMigrationAtDestination(DestRollback("m-block", kAbsentUuid, false)).ok());
  CHECK(file_size(mine) == -1);
  CHECK(file_size(theirs) == 19);
  REQUIRE(
      (*d)->RollbackLiveMigrationAtDestination(DestRollback("m-block", kAbsentUuid, false)).ok());
  CHECK(file_size(theirs) == 19);
  // A disk path that is not an absolute file path is refused, naming it.
  a->set_path("relative/x.qcow2");
  pre.set_migration_id("m-block-2");
  auto bad = (*d)->PreLiveMigration(pre);
  CHECK(bad.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(absl::StrContains(bad.status().message(), "relative/x.qcow2"));
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
  // Long enough for the restarted agent to find the transfer still running on a loaded machine.
  REQUIRE(p.a->hypervisor().SetTransferDuration("fake-a", absl::Seconds(2)).ok());
  auto lm = p.Prepare("m-2");
  // The "agent" that will be killed: the test stops listening to it, but joins it on every path
  // (its call returns once the transfer ends by itself), so it never outlives `p` and `lm`.
  std::atomic<bool> first_done{false};
  absl::StatusOr<cv1::MigrationProgressReport> first_result;
  std::thread first([&] {
    first_result = p.a->LiveMigration(lm, nullptr);
    first_done = true;
  });
  struct Joiner {
    std::thread& t;
    ~Joiner() {
      if (t.joinable()) t.join();
    }
  } joiner{first};
  REQUIRE(livemig::testing::WaitFor(
      [&] {
        auto s = p.a->hypervisor().Snapshot();
        return s.ok() && (*s)["transfers"].contains("m-2");
      },
      absl::Seconds(30)));
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
  // The first agent's monitor sees the same end.
  REQUIRE(livemig::testing::WaitFor([&] { return first_done.load(); }, absl::Seconds(30)));
  first.join();
  REQUIRE(first_result.ok());
  CHECK(first_result->state() == cv1::TRANSFER_STATE_COMPLETED);
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

TEST_CASE(
    "fake (libxl): the incoming domain is paused with reason user; a job is a migration only "
    "to the driver that monitors it") {
  FakePair p("fake-libxl");
  REQUIRE(p.a->hypervisor().SetTransferDuration("fake-a", absl::Seconds(2)).ok());
  auto lm = p.Prepare("m-13");
  absl::StatusOr<cv1::MigrationProgressReport> r;
  std::thread t([&] { r = p.a->LiveMigration(lm, nullptr); });
  while (p.Where().size() < 2) absl::SleepFor(absl::Milliseconds(2));
  CHECK(p.Where() == Loc{{"fake-a", "running"}, {"fake-b", "incoming"}});
  // The source's driver runs the transfer's monitor: it knows the job is its migration.
  auto src = p.a->DescribeDomain(kFakeUuid);
  REQUIRE(src.ok());
  REQUIRE(src->has_value());
  CHECK((*src)->job_active());
  CHECK((*src)->migration_job_active());
  CHECK((*src)->migration_id() == "m-13");
  // A restarted agent's driver sees only libxl's job: unbounded, unknown operation.
  FakeDriver::Options o;
  o.state_dir = p.dir;
  o.hostname = "fake-a";
  o.profile = "fake-libxl";
  auto restarted = FakeDriver::Create(o);
  REQUIRE(restarted.ok());
  auto again = (*restarted)->DescribeDomain(kFakeUuid);
  REQUIRE(again.ok());
  REQUIRE(again->has_value());
  CHECK((*again)->job_active());
  CHECK_FALSE((*again)->migration_job_active());
  CHECK((*again)->migration_id().empty());
  auto progress = (*restarted)->GetMigrationProgress("m-13", kFakeUuid);
  REQUIRE(progress.ok());
  CHECK(progress->state() == cv1::TRANSFER_STATE_RUNNING);
  CHECK_FALSE(progress->progress().has_bytes());
  // The destination shows the incoming domain as libxl does: paused, reason "user".
  auto dst = p.b->DescribeDomain(kFakeUuid);
  REQUIRE(dst.ok());
  REQUIRE(dst->has_value());
  CHECK((*dst)->state() == v1::DOMAIN_STATE_PAUSED);
  CHECK((*dst)->state_reason() == "user");
  CHECK_FALSE((*dst)->migration_job_active());
  t.join();
  REQUIRE(r.ok());
  CHECK(r->state() == cv1::TRANSFER_STATE_COMPLETED);
  dst = p.b->DescribeDomain(kFakeUuid);
  REQUIRE(dst.ok());
  REQUIRE(dst->has_value());
  CHECK((*dst)->state() == v1::DOMAIN_STATE_RUNNING);
  CHECK_FALSE((*dst)->job_active());
}

TEST_CASE(
    "fake: rollback at the destination destroys the incoming domain by the profile's rule, and "
    "that fails the transfer") {
  for (const char* profile : {"fake-libxl", "fake-qemu"}) {
    INFO(profile);
    const bool libxl = std::string(profile) == "fake-libxl";
    FakePair p(profile);
    REQUIRE(p.a->hypervisor().SetTransferDuration("fake-a", absl::Seconds(30)).ok());
    auto lm = p.Prepare("m-14");
    absl::StatusOr<cv1::MigrationProgressReport> r;
    std::thread t([&] { r = p.a->LiveMigration(lm, nullptr); });
    while (p.Where().size() < 2) absl::SleepFor(absl::Milliseconds(2));
    if (libxl) {
      // Paused with reason "user": without the source's word it may be a paused guest.
      auto refused =
          p.b->RollbackLiveMigrationAtDestination(DestRollback("m-14", kFakeUuid, false));
      CHECK(refused.code() == absl::StatusCode::kFailedPrecondition);
      CHECK(p.Where().size() == 2);
    }
    // libxl: the scheduler saw the source run the domain; QEMU: paused for the migration.
    REQUIRE(p.b->RollbackLiveMigrationAtDestination(DestRollback("m-14", kFakeUuid, libxl)).ok());
    t.join();
    REQUIRE(r.ok());
    CHECK(r->state() == cv1::TRANSFER_STATE_FAILED);
    CHECK(absl::StrContains(r->error(), "destroyed"));
    CHECK(p.Where() == Loc{{"fake-a", "running"}});
    auto snap = p.a->hypervisor().Snapshot();
    REQUIRE(snap.ok());
    CHECK((*snap)["hosts"]["fake-b"]["staged"].empty());
  }
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
        "destination host-b has 924 MiB free; the 512 MiB dom0 reserve leaves 412 MiB; "
        "instance web-1 needs 1024 MiB");
  CHECK_FALSE(by["network"].passed());
  CHECK(absl::StrContains(by["network"].reason(), "br-guest"));
  CHECK(by["storage_probe"].passed());

  // A reserve larger than the free memory: the figures as they are, not "0 MiB free".
  f.memory_free_mib = 900;
  f.memory_reserved_mib = 24000;
  auto small = EvaluateDestChecks(DestRequest("m-2", 512), f);
  for (const auto& c : small.checks()) {
    if (c.name() != "memory") continue;
    CHECK_FALSE(c.passed());
    CHECK(absl::StrContains(c.reason(),
                            "has 900 MiB free; that is within its 24000 MiB dom0 "
                            "reserve, so none is available; instance"));
    CHECK_FALSE(absl::StrContains(c.reason(), " 0 MiB"));
  }
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

// ---- Xen's paging modes: check "xen_pv_shadow_paging" --------------------------------------

// `xl info` of Xen 4.17 as the lab's hosts print it (XEN_LAB_FACTS.md): bookworm's main release
// 4.17.5 (shadow paging) and the 4.17.7 security build (without: XSA-495).
constexpr char kXlInfoShadow[] =
    "host                   : xena\n"
    "release                : 6.1.0-28-amd64\n"
    "machine                : x86_64\n"
    "virt_caps              : pv hvm hap shadow gnttab-v1 gnttab-v2\n"
    "total_memory           : 1535\n"
    "xen_version            : 4.17.5\n";
constexpr char kXlInfoNoShadow[] =
    "host                   : xenb\n"
    "virt_caps              : pv hvm hap gnttab-v1 gnttab-v2\n"
    "xen_version            : 4.17.7\n";
constexpr char kNoShadowCaps[] = "pv hvm hap gnttab-v1 gnttab-v2";

v1::BackendCapabilities XenCaps(const absl::StatusOr<std::string>& xl_info) {
  v1::BackendCapabilities c = LibvirtDriver::ProfileCapabilities("libxl", true);
  SetXenPagingCaps(xl_info, &c);
  return c;
}

v1::DomainInfo Guest(const std::string& kind, const std::string& name = "web-1") {
  v1::DomainInfo d;
  d.set_uuid(kFakeUuid);
  d.set_name(name);
  d.set_memory_mib(256);
  d.set_guest_kind(kind);
  return d;
}

const v1::CheckResult* FindCheck(const google::protobuf::RepeatedPtrField<v1::CheckResult>& checks,
                                 const std::string& name, const std::string& host) {
  for (const auto& c : checks) {
    if (c.name() == name && c.host() == host) return &c;
  }
  return nullptr;
}

std::string Refusal(const std::string& host, const std::string& instance = "web-1") {
  return absl::StrCat(
      "instance ", instance, " is a PV guest and host ", host,
      " runs Xen without shadow paging (xl info virt_caps: pv hvm hap gnttab-v1 gnttab-v2): PV "
      "live migration needs log-dirty on shadow paging. Ways out: boot ",
      host,
      " with a Xen built with shadow paging (CONFIG_SHADOW_PAGING=y, e.g. Debian's 4.17.5 from "
      "bookworm), or run the guest as PVH or HVM, which migrate on HAP.");
}

TEST_CASE("xen paging: virt_caps from xl info") {
  auto with = ParseXenVirtCaps(kXlInfoShadow);
  REQUIRE(with.ok());
  CHECK(*with == std::vector<std::string>{"pv", "hvm", "hap", "shadow", "gnttab-v1", "gnttab-v2"});
  auto without = ParseXenVirtCaps(kXlInfoNoShadow);
  REQUIRE(without.ok());
  CHECK(*without == std::vector<std::string>{"pv", "hvm", "hap", "gnttab-v1", "gnttab-v2"});
  // Shadow paging only, no HAP (QEMU TCG without +npt); tabs; the line alone.
  auto only = ParseXenVirtCaps("virt_caps\t:\tpv hvm shadow");
  REQUIRE(only.ok());
  CHECK(only->size() == 3);
  // "shadow" is a word of its own, never a part of one.
  auto c = XenCaps(std::string("virt_caps : pv hvm hap iommu_hap_pt_share shadowless\n"));
  CHECK(c.has_pv_live_migration());
  CHECK_FALSE(c.pv_live_migration());
  CHECK(ParseXenVirtCaps("xen_caps : xen-3.0-x86_64 hvm-3.0-x86_32\n").status().code() ==
        absl::StatusCode::kNotFound);
  CHECK(ParseXenVirtCaps("virt_caps :   \n").status().code() == absl::StatusCode::kNotFound);
  CHECK(ParseXenVirtCaps("").status().code() == absl::StatusCode::kNotFound);

  auto shadow = XenCaps(std::string(kXlInfoShadow));
  CHECK(shadow.has_pv_live_migration());
  CHECK(shadow.pv_live_migration());
  CHECK(shadow.xen_virt_caps_size() == 6);
  CHECK(shadow.xen_info_error().empty());
  auto none = XenCaps(std::string(kXlInfoNoShadow));
  CHECK(none.has_pv_live_migration());
  CHECK_FALSE(none.pv_live_migration());
  CHECK(absl::StrJoin(none.xen_virt_caps(), " ") == kNoShadowCaps);
  auto failed = XenCaps(absl::InternalError("`xl info` failed (exit status 127): xl: not found"));
  CHECK_FALSE(failed.has_pv_live_migration());
  CHECK(failed.xen_virt_caps_size() == 0);
  CHECK(failed.xen_info_error() == "`xl info` failed (exit status 127): xl: not found");
  auto garbled = XenCaps(std::string("something else\n"));
  CHECK_FALSE(garbled.has_pv_live_migration());
  CHECK(garbled.xen_info_error() == "xl info printed no virt_caps line");
  // Set again, the earlier answer is gone.
  SetXenPagingCaps(std::string(kXlInfoShadow), &failed);
  CHECK(failed.pv_live_migration());
  CHECK(failed.xen_info_error().empty());
}

TEST_CASE("xen paging: the guest kind from the domain XML") {
  const std::vector<std::pair<std::string, std::string>> cases = {
      // libvirt 9.0's libxl driver (XEN_LAB_FACTS.md: os types xen/xenpvh/hvm, machines
      // xenpv/xenpvh/xenfv); the lab's guests.
      {"<domain type='xen' id='3'><name>tiny</name><os><type arch='x86_64' "
       "machine='xenpv'>linux</type><kernel>/vmlinuz</kernel></os></domain>",
       "pv"},
      {"<domain type='xen'><os><type arch='x86_64' machine='xenpv'>xen</type></os></domain>", "pv"},
      {"<domain type='xen'><os><type>linux</type></os></domain>", "pv"},
      {"<domain type='xen'><os>\n  <type arch='x86_64' machine='xenpvh'>xenpvh</type>\n</os>"
       "</domain>",
       "pvh"},
      // PVH as older libvirt wrote it: os type xen on machine xenpvh.
      {"<domain type='xen'><os><type arch='x86_64' machine='xenpvh'>xen</type></os></domain>",
       "pvh"},
      {"<domain type=\"xen\"><os><type arch=\"x86_64\" machine=\"xenfv\">hvm</type>"
       "<loader>/usr/lib/xen-4.17/boot/hvmloader</loader></os></domain>",
       "hvm"},
      // Not Xen's: QEMU/KVM, libvirt's test driver; nothing to tell.
      {"<domain type='kvm'><os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os></domain>",
       ""},
      {"<domain type='qemu'><os><type>hvm</type></os></domain>", ""},
      {"<domain type='test'><os><type>xen</type></os></domain>", ""},
      {"<domain type='xen'><name>x</name></domain>", ""},
      {"<domain type='xen'><os><type>exe</type></os></domain>", ""},
      // The os type is <os>'s, not libosinfo metadata's or a device's.
      {"<domain type='xen'><metadata><libosinfo:os id='http://debian.org/debian/12'/></metadata>"
       "<os><type machine='xenpvh'>xenpvh</type></os><devices><disk type='file'/></devices>"
       "</domain>",
       "pvh"},
      {"", ""},
  };
  for (const auto& [xml, kind] : cases) {
    INFO(xml);
    CHECK(XenGuestKind(xml) == kind);
  }
}

TEST_CASE("checks: xen_pv_shadow_paging refuses a PV guest where Xen has no shadow paging") {
  const auto shadow = XenCaps(std::string(kXlInfoShadow));
  const auto none = XenCaps(std::string(kXlInfoNoShadow));
  const auto unknown =
      XenCaps(absl::InternalError("`xl info` failed (exit status 127): not found"));

  SECTION("on the destination") {
    DestFacts f;
    f.hostname = "xen-b";
    f.hypervisor_type = "Xen";
    f.memory_free_mib = 4096;
    f.bridges = {"br-guest"};
    f.instance_path = "/srv/instances";
    f.probe_written = true;
    f.capabilities = none;
    cv1::CheckCanLiveMigrateOnDestRequest req = DestRequest("m-1", 256);
    *req.mutable_instance() = Guest("pv");
    auto r = EvaluateDestChecks(req, f);
    CHECK_FALSE(r.passed());
    const v1::CheckResult* c = FindCheck(r.checks(), "xen_pv_shadow_paging", "xen-b");
    REQUIRE(c != nullptr);
    CHECK_FALSE(c->passed());
    CHECK(c->reason() == Refusal("xen-b"));
    for (const auto& other : r.checks()) {
      if (other.name() != "xen_pv_shadow_paging") CHECK(other.passed());
    }

    *req.mutable_instance() = Guest("pvh");
    r = EvaluateDestChecks(req, f);
    CHECK(r.passed());
    c = FindCheck(r.checks(), "xen_pv_shadow_paging", "xen-b");
    REQUIRE(c != nullptr);
    CHECK(c->passed());
    CHECK(c->reason() ==
          "instance web-1 is a PVH guest: it migrates on HAP and needs no shadow paging on the "
          "destination host xen-b");
    *req.mutable_instance() = Guest("hvm");
    CHECK(EvaluateDestChecks(req, f).passed());

    *req.mutable_instance() = Guest("pv");
    f.capabilities = shadow;
    r = EvaluateDestChecks(req, f);
    CHECK(r.passed());
    c = FindCheck(r.checks(), "xen_pv_shadow_paging", "xen-b");
    REQUIRE(c != nullptr);
    CHECK(absl::StrContains(c->reason(),
                            "runs Xen with shadow paging (xl info virt_caps: pv "
                            "hvm hap shadow gnttab-v1 gnttab-v2)"));

    // Unknown paging modes: not refused on a guess, and the reason says so.
    f.capabilities = unknown;
    r = EvaluateDestChecks(req, f);
    CHECK(r.passed());
    c = FindCheck(r.checks(), "xen_pv_shadow_paging", "xen-b");
    REQUIRE(c != nullptr);
    CHECK(c->passed());
    CHECK(absl::StrContains(c->reason(), "is unknown (`xl info` failed (exit status 127)"));
    CHECK(absl::StrContains(c->reason(), "not refused on a guess"));

    // Not a Xen guest (QEMU, or a source that does not say): no such check.
    f.capabilities = none;
    *req.mutable_instance() = Guest("");
    r = EvaluateDestChecks(req, f);
    CHECK(r.passed());
    CHECK(FindCheck(r.checks(), "xen_pv_shadow_paging", "xen-b") == nullptr);
  }

  SECTION("on the source, for itself and for the destination") {
    cv1::CheckCanLiveMigrateOnSrcRequest req;
    req.set_migration_id("m-2");
    req.set_instance_uuid(kFakeUuid);
    req.set_source_host("xen-a");
    req.set_dest_host("xen-b");
    req.mutable_dest_check_data()->set_dest_host("xen-b");
    *req.mutable_dest_check_data()->mutable_capabilities() = shadow;
    // The source lacks shadow paging.
    auto r = EvaluateSrcChecks(req, true, none, "Xen (libxl)", Guest("pv"), "<domain/>");
    CHECK_FALSE(r.passed());
    const v1::CheckResult* c = FindCheck(r.checks(), "xen_pv_shadow_paging", "xen-a");
    REQUIRE(c != nullptr);
    CHECK_FALSE(c->passed());
    CHECK(c->reason() == Refusal("xen-a"));
    CHECK(FindCheck(r.checks(), "xen_pv_shadow_paging", "xen-b") == nullptr);
    // PVH on the same hosts: passes.
    r = EvaluateSrcChecks(req, true, none, "Xen (libxl)", Guest("pvh"), "<domain/>");
    CHECK(r.passed());
    // Both have it: passes, one check (the source's).
    r = EvaluateSrcChecks(req, true, shadow, "Xen (libxl)", Guest("pv"), "<domain/>");
    CHECK(r.passed());
    c = FindCheck(r.checks(), "xen_pv_shadow_paging", "xen-a");
    REQUIRE(c != nullptr);
    CHECK(c->passed());
    // The destination lacks it (its capabilities in the check data): the source refuses too,
    // naming the destination.
    *req.mutable_dest_check_data()->mutable_capabilities() = none;
    r = EvaluateSrcChecks(req, true, shadow, "Xen (libxl)", Guest("pv"), "<domain/>");
    CHECK_FALSE(r.passed());
    c = FindCheck(r.checks(), "xen_pv_shadow_paging", "xen-b");
    REQUIRE(c != nullptr);
    CHECK(c->reason() == Refusal("xen-b"));
    // Unknown on the source: passes with the note.
    *req.mutable_dest_check_data()->mutable_capabilities() = shadow;
    r = EvaluateSrcChecks(req, true, unknown, "Xen (libxl)", Guest("pv"), "<domain/>");
    CHECK(r.passed());
    c = FindCheck(r.checks(), "xen_pv_shadow_paging", "xen-a");
    REQUIRE(c != nullptr);
    CHECK(absl::StrContains(c->reason(),
                            "whether the source host xen-a runs Xen with shadow "
                            "paging is unknown"));
    // A QEMU domain: no such check.
    r = EvaluateSrcChecks(req, true, LibvirtDriver::ProfileCapabilities("qemu", false), "QEMU",
                          Guest(""), "<domain/>");
    CHECK(FindCheck(r.checks(), "xen_pv_shadow_paging", "xen-a") == nullptr);
  }
}

TEST_CASE("libvirt driver: the host command that gives xl info") {
  auto out = LibvirtDriver::RunHostCommand("printf 'virt_caps : pv hvm\\n'", absl::Seconds(10));
  REQUIRE(out.ok());
  CHECK(*out == "virt_caps : pv hvm\n");
  auto failed = LibvirtDriver::RunHostCommand("echo oops >&2; exit 3", absl::Seconds(10));
  CHECK(failed.status().code() == absl::StatusCode::kInternal);
  CHECK(failed.status().message() == "`echo oops >&2; exit 3` failed (exit status 3): oops");
  auto missing = LibvirtDriver::RunHostCommand("/nonexistent/xl info", absl::Seconds(10));
  CHECK(absl::StrContains(missing.status().message(), "failed (exit status 127)"));
  const absl::Time start = absl::Now();
  auto slow = LibvirtDriver::RunHostCommand("sleep 30; echo late", absl::Milliseconds(300));
  CHECK(absl::Now() - start < absl::Seconds(5));
  CHECK(slow.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(slow.status().message() == "`sleep 30; echo late` did not finish in 300ms (killed)");
}

TEST_CASE("libvirt driver (libxl): the host's virt_caps once at start, the guest kind per domain") {
  auto make = [](const std::string& command, const std::string& os_type,
                 const std::string& profile = "auto") {
    auto script = std::make_shared<XenLikeApi::Script>();
    script->xen_os_type = os_type;
    LibvirtDriver::Options o;
    o.uri = "test://" + XenLikeApi::NodeFile();
    o.profile = profile;
    o.hostname = "xen-a";
    o.instance_path = TempDir("inst");
    o.state_dir = TempDir("state");
    o.bridges = {"br-guest"};
    o.xen_info_command = command;
    auto d = LibvirtDriver::Create(o, std::make_unique<XenLikeApi>(script));
    REQUIRE(d.ok());
    return std::move(d).value();
  };
  const std::string pv = "<type arch='x86_64' machine='xenpv'>linux</type>";
  const std::string pvh = "<type arch='x86_64' machine='xenpvh'>xenpvh</type>";
  const std::string print_no_shadow = absl::StrCat("printf '", kXlInfoNoShadow, "'");
  cv1::CheckCanLiveMigrateOnSrcRequest src;
  src.set_migration_id("m-7");
  src.set_instance_uuid(kXenVmUuid);
  src.set_source_host("xen-a");
  src.set_dest_host("xen-b");
  src.mutable_dest_check_data()->set_dest_host("xen-b");

  auto no_shadow = make(print_no_shadow, pv);
  const v1::BackendCapabilities caps = no_shadow->capabilities();
  CHECK(absl::StrJoin(caps.xen_virt_caps(), " ") == kNoShadowCaps);
  REQUIRE(caps.has_pv_live_migration());
  CHECK_FALSE(caps.pv_live_migration());
  auto inv = no_shadow->GetHostInfo();
  REQUIRE(inv.ok());
  CHECK_FALSE(inv->capabilities().pv_live_migration());
  REQUIRE(inv->domains_size() == 1);
  CHECK(inv->domains(0).guest_kind() == "pv");
  auto r = no_shadow->CheckCanLiveMigrateOnSrc(src);
  REQUIRE(r.ok());
  CHECK_FALSE(r->passed());
  const v1::CheckResult* c = FindCheck(r->checks(), "xen_pv_shadow_paging", "xen-a");
  REQUIRE(c != nullptr);
  CHECK_FALSE(c->passed());
  CHECK(c->reason() == Refusal("xen-a", "xen-vm"));
  CHECK(r->src_check_data().domain().guest_kind() == "pv");

  // The same host with a PVH guest: the check passes.
  auto with_pvh = make(print_no_shadow, pvh);
  auto d = with_pvh->DescribeDomain(kXenVmUuid);
  REQUIRE(d.ok());
  REQUIRE(d->has_value());
  CHECK((*d)->guest_kind() == "pvh");
  r = with_pvh->CheckCanLiveMigrateOnSrc(src);
  REQUIRE(r.ok());
  c = FindCheck(r->checks(), "xen_pv_shadow_paging", "xen-a");
  REQUIRE(c != nullptr);
  CHECK(c->passed());  // (shared_storage fails here: no probe file)

  // The command fails, or is disabled: unknown, and a PV guest is not refused.
  auto failing = make("echo 'xl: cannot open /dev/xen/privcmd' >&2; exit 1", pv, "libxl-strict");
  CHECK_FALSE(failing->capabilities().has_pv_live_migration());
  CHECK(failing->capabilities().xen_info_error() ==
        "`echo 'xl: cannot open /dev/xen/privcmd' >&2; exit 1` failed (exit status 1): xl: cannot "
        "open /dev/xen/privcmd");
  r = failing->CheckCanLiveMigrateOnSrc(src);
  REQUIRE(r.ok());
  c = FindCheck(r->checks(), "xen_pv_shadow_paging", "xen-a");
  REQUIRE(c != nullptr);
  CHECK(c->passed());
  CHECK(absl::StrContains(c->reason(), "cannot open /dev/xen/privcmd"));
  auto disabled = make("", pv);
  CHECK(absl::StrContains(disabled->capabilities().xen_info_error(), "disabled"));

  // QEMU: the command is not run, nothing about Xen is reported.
  auto qemu = make("exit 1", "", "qemu");
  CHECK(qemu->capabilities().xen_info_error().empty());
  CHECK_FALSE(qemu->capabilities().has_pv_live_migration());
  auto qd = qemu->DescribeDomain(kXenVmUuid);
  REQUIRE(qd.ok());
  REQUIRE(qd->has_value());
  CHECK((*qd)->guest_kind().empty());
}

TEST_CASE("fake (libxl): the host's virt_caps option and the guests' kinds") {
  const std::string dir = TempDir("fake-xen");
  auto make = [&](const std::string& host, const std::string& profile,
                  const std::string& virt_caps) {
    FakeDriver::Options o;
    o.state_dir = dir;
    o.hostname = host;
    o.profile = profile;
    o.xen_virt_caps = virt_caps;
    auto d = FakeDriver::Create(o);
    REQUIRE(d.ok());
    return std::move(d).value();
  };
  auto a = make("xen-a", "fake-libxl", "pv hvm hap shadow gnttab-v1 gnttab-v2");
  auto b = make("xen-b", "fake-libxl", kNoShadowCaps);
  auto u = make("xen-u", "fake-libxl", "");
  auto q = make("qemu-q", "fake-qemu", kNoShadowCaps);
  CHECK(a->capabilities().pv_live_migration());
  CHECK_FALSE(b->capabilities().pv_live_migration());
  CHECK(b->capabilities().has_pv_live_migration());
  CHECK_FALSE(u->capabilities().has_pv_live_migration());
  CHECK(absl::StrContains(u->capabilities().xen_info_error(), "--fake-xen-virt-caps is empty"));
  CHECK_FALSE(q->capabilities().has_pv_live_migration());
  CHECK(q->capabilities().xen_virt_caps_size() == 0);
  // The default: a Xen with shadow paging.
  CHECK(FakeDriver::Options().xen_virt_caps == "pv hvm hap shadow gnttab-v1 gnttab-v2");

  auto& hv = a->hypervisor();
  const std::string pv = "11111111-0000-4000-8000-000000000001";
  const std::string pvh = "11111111-0000-4000-8000-000000000002";
  const std::string hvm = "11111111-0000-4000-8000-000000000003";
  REQUIRE(hv.CreateDomain("xen-a", pv, "vm-pv", 256).ok());
  REQUIRE(hv.CreateDomain("xen-a", pvh, "vm-pvh", 256, "running", {"br-guest"}, "pvh").ok());
  REQUIRE(hv.CreateDomain("xen-a", hvm, "vm-hvm", 256, "running", {"br-guest"}, "hvm").ok());
  CHECK(hv.CreateDomain("xen-a", "11111111-0000-4000-8000-000000000004", "x", 1, "running",
                        {"br-guest"}, "kvm")
            .code() == absl::StatusCode::kInvalidArgument);
  std::map<std::string, std::string> kinds;
  auto doms = a->ListDomains();
  REQUIRE(doms.ok());
  for (const auto& dom : *doms) kinds[dom.name()] = dom.guest_kind();
  CHECK(kinds ==
        std::map<std::string, std::string>{{"vm-pv", "pv"}, {"vm-pvh", "pvh"}, {"vm-hvm", "hvm"}});
  REQUIRE(hv.CreateDomain("qemu-q", "11111111-0000-4000-8000-000000000005", "vm-q", 256).ok());
  auto qd = q->DescribeDomain("11111111-0000-4000-8000-000000000005");
  REQUIRE(qd.ok());
  REQUIRE(qd->has_value());
  CHECK((*qd)->guest_kind().empty());  // QEMU's domains are no Xen guests

  // The destination xen-b (no shadow paging) refuses the PV guest, takes the PVH one.
  for (const auto& [uuid, refused] :
       std::vector<std::pair<std::string, bool>>{{pv, true}, {pvh, false}, {hvm, false}}) {
    INFO(uuid);
    auto dom = a->DescribeDomain(uuid);
    REQUIRE(dom.ok());
    REQUIRE(dom->has_value());
    cv1::CheckCanLiveMigrateOnDestRequest req = DestRequest("m-" + uuid.substr(34), 256);
    req.set_instance_uuid(uuid);
    *req.mutable_instance() = **dom;
    auto r = b->CheckCanLiveMigrateOnDest(req);
    REQUIRE(r.ok());
    CHECK(r->passed() == !refused);
    const v1::CheckResult* c = FindCheck(r->checks(), "xen_pv_shadow_paging", "xen-b");
    REQUIRE(c != nullptr);
    CHECK(c->passed() == !refused);
    if (refused) {
      CHECK(c->reason() == Refusal("xen-b", "vm-pv"));
    }
    // An unknown host takes every kind.
    auto ru = u->CheckCanLiveMigrateOnDest(req);
    REQUIRE(ru.ok());
    CHECK(ru->passed());
  }

  // A PV guest on the host without shadow paging cannot leave it either (the source's check).
  const std::string stuck = "11111111-0000-4000-8000-000000000006";
  REQUIRE(hv.CreateDomain("xen-b", stuck, "vm-stuck", 256).ok());
  auto dest = a->CheckCanLiveMigrateOnDest([&] {
    cv1::CheckCanLiveMigrateOnDestRequest req = DestRequest("m-stuck", 256);
    req.set_instance_uuid(stuck);
    return req;
  }());
  REQUIRE(dest.ok());
  REQUIRE(dest->passed());
  cv1::CheckCanLiveMigrateOnSrcRequest src;
  src.set_migration_id("m-stuck");
  src.set_instance_uuid(stuck);
  src.set_source_host("xen-b");
  src.set_dest_host("xen-a");
  *src.mutable_dest_check_data() = dest->dest_check_data();
  auto s = b->CheckCanLiveMigrateOnSrc(src);
  REQUIRE(s.ok());
  CHECK_FALSE(s->passed());
  const v1::CheckResult* c = FindCheck(s->checks(), "xen_pv_shadow_paging", "xen-b");
  REQUIRE(c != nullptr);
  CHECK(absl::StrContains(c->reason(),
                          "instance vm-stuck is a PV guest and host xen-b runs Xen "
                          "without shadow paging"));
  // The source's check data carries the kind (and so, later, the staged definition's domain).
  CHECK(s->src_check_data().domain().guest_kind() == "pv");
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
