// Real Xen without shadow paging: host xenb boots the hypervisor of Debian 12's 4.17.7 security
// build (the image's boot/xen-noshadow, built without CONFIG_SHADOW_PAGING, XSA-495; everything
// else as xena). On such a host PV guests cannot live-migrate (log-dirty needs shadow paging) but
// PVH guests can (they run on HAP). The agents run production's command line (the stream not
// tunnelled, for time); the agent reads the host's paging modes from `xl info` as the unit does.
#include <catch2/catch.hpp>
#include <iostream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "integration_tests/xenlab/xen_cloud.h"

namespace livemig::e2e {
namespace {

constexpr char kPv[] = "npv";
constexpr char kPvUuid[] = "5b1e0c2a-7d3f-4e8a-9c61-0a2b3c4d5e11";
constexpr char kPvh[] = "npvh";
constexpr char kPvhUuid[] = "5b1e0c2a-7d3f-4e8a-9c61-0a2b3c4d5e12";
constexpr char kPvOnB[] = "npvb";
constexpr char kPvOnBUuid[] = "5b1e0c2a-7d3f-4e8a-9c61-0a2b3c4d5e13";

XenCloud& X() {
  static std::unique_ptr<XenCloud> x = [] {
    auto c = std::make_unique<XenCloud>("noshadow", "--no-tunnel");
    c->StartGuests(
        {{"a", kPv, kPvUuid, "pv"}, {"a", kPvh, kPvhUuid, "pvh"}, {"b", kPvOnB, kPvOnBUuid, "pv"}});
    return c;
  }();
  return *x;
}

TEST_CASE("xen without shadow paging: the host says so, as xl info does") {
  auto caps = X().lab->Ssh("b", "xl info | grep virt_caps");
  REQUIRE(caps.ok());
  INFO(*caps);
  CHECK_FALSE(absl::StrContains(*caps, "shadow"));
  CHECK(absl::StrContains(*caps, "hap"));
  auto caps_a = X().lab->Ssh("a", "xl info | grep virt_caps");
  REQUIRE(caps_a.ok());
  CHECK(absl::StrContains(*caps_a, "shadow"));
  auto show = X().Cloudctl("host-show xenb");
  INFO(show.out);
  CHECK(show.code == 0);
  auto host = X().cloud->GetHost("xenb");
  REQUIRE(host.ok());
  INFO(host->DebugString());
  CHECK(host->inventory().capabilities().has_pv_live_migration());
  CHECK_FALSE(host->inventory().capabilities().pv_live_migration());
}

TEST_CASE(
    "xen without shadow paging: a PV guest to it is refused by the checks, before a transfer") {
  auto dry = X().Cloudctl(absl::StrCat("live-migration ", kPvUuid, " xenb --dry-run"));
  INFO(dry.out);
  CHECK(dry.code != 0);
  const std::string flat = FlattenTable(dry.out);  // the table wraps long reasons
  CHECK(absl::StrContains(flat, "xen_pv_shadow_paging FAIL"));
  CHECK(absl::StrContains(flat, "runs Xen without shadow paging"));
  CHECK(absl::StrContains(flat, "run the guest as PVH or HVM"));
  auto before = X().lab->Heartbeat(kPv);
  REQUIRE(before.ok());
  auto run = X().Cloudctl(absl::StrCat("live-migration ", kPvUuid, " xenb --wait"));
  INFO(run.out);
  CHECK(run.code != 0);
  CHECK(absl::StrContains(FlattenTable(run.out), "without shadow paging"));
  CHECK_FALSE(absl::StrContains(run.out, "live_migration started"));
  CHECK_FALSE(absl::StrContains(run.out, "running:"));  // refused before any transfer
  CHECK(X().Where(kPv) == "a");
  auto after = X().WaitTicking(kPv, before->last);
  CHECK(after.boots == 1);
}

TEST_CASE(
    "xen without shadow paging: a PV guest on it cannot leave live, refused with the reason") {
  auto run = X().Cloudctl(absl::StrCat("live-migration ", kPvOnBUuid, " xena --wait"));
  INFO(run.out);
  CHECK(run.code != 0);
  CHECK(absl::StrContains(FlattenTable(run.out), "without shadow paging"));
  CHECK_FALSE(absl::StrContains(run.out, "running:"));
  CHECK(X().Where(kPvOnB) == "b");
}

TEST_CASE("xen without shadow paging: a PVH guest migrates to it (HAP)") {
  X().MigrateWithCloudctl(kPvh, kPvhUuid, "b", "PVH to a host without shadow paging, direct");
}

}  // namespace
}  // namespace livemig::e2e
