// The unchanged OpenStack client (Debian's python3-openstackclient) against the real scheduler's
// Compute API subset, with two fake agents and PostgreSQL. Over HTTPS: the scheduler's API
// certificate from `deploy/pki.sh issue-server`, the client trusting the cluster CA
// (--os-cacert), as an operator would run it.
#include <catch2/catch.hpp>
#include <fstream>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "driver/fake_driver.h"
#include "integration_tests/scheduler_e2e/e2e.h"
#include "integration_tests/scheduler_e2e/fake_cloud.h"
#include "nlohmann/json.hpp"
#include "testing/process.h"
#include "testing/run_command.h"

namespace livemig::e2e {
namespace {

using json = nlohmann::json;
constexpr char kUuid[] = "55555555-2222-4333-8444-555555555555";

struct Nova : HttpsApiCloud {
  Nova() : HttpsApiCloud("nova", "nova-operator", "nova-reader") {
    REQUIRE(hv->CreateDomain("host-a", kUuid, "web-1", 256).ok());
    REQUIRE(cloud->WaitInstanceOn(kUuid, "host-a", absl::Seconds(20)));
  }
  // Runs the unchanged client; returns stdout, or the error with stderr.
  absl::StatusOr<std::string> Os(const std::string& args, const char* token = kOpToken) {
    return testing::RunCommand(absl::StrCat(
        "HOME=", dir, " openstack --os-auth-type admin_token --os-token ", token, " --os-cacert ",
        cloud->pki(), "/ca.pem --os-endpoint https://127.0.0.1:", port,
        "/v2.1 --os-compute-api-version 2.79 ", args));
  }
  // Waits (up to 30 s) until the instance has a running migration; returns its id.
  std::string RunningMigrationId() {
    std::string mid;
    REQUIRE(testing::WaitFor(
        [&] {
          auto l = Os(
              absl::StrCat("server migration list -f json --server ", kUuid, " --status running"));
          if (!l.ok()) return false;
          auto j = json::parse(*l);
          if (j.empty()) return false;
          mid = std::to_string(j[0]["Id"].get<int64_t>());
          return true;
        },
        absl::Seconds(30)));
    return mid;
  }
};

Nova& N() {
  static std::unique_ptr<Nova> n = std::make_unique<Nova>();
  return *n;
}

TEST_CASE("openstack: server list and server show") {
  auto list = N().Os("server list -f json");
  INFO(list.status().ToString());
  REQUIRE(list.ok());
  auto j = json::parse(*list);
  REQUIRE(j.size() == 1);
  CHECK(j[0]["ID"] == kUuid);
  CHECK(j[0]["Name"] == "web-1");
  CHECK(j[0]["Status"] == "ACTIVE");
  auto show = N().Os(absl::StrCat("server show -f json ", kUuid));
  INFO(show.status().ToString());
  REQUIRE(show.ok());
  auto s = json::parse(*show);
  CHECK(s["OS-EXT-SRV-ATTR:host"] == "host-a");
  CHECK(s["status"] == "ACTIVE");
}

TEST_CASE("openstack: over HTTPS only; without the CA the client refuses the server") {
  // Plaintext to the TLS listener gets no answer.
  auto plain = testing::RunCommand(absl::StrCat(
      "curl -s -m 5 -o /dev/null -w '%{http_code}' http://127.0.0.1:", N().port, "/healthz"));
  CHECK((!plain.ok() || absl::StrContains(*plain, "000")));
  // The client without --os-cacert does not trust the cluster CA.
  auto untrusted = testing::RunCommand(
      absl::StrCat("HOME=", N().dir, " openstack --os-auth-type admin_token --os-token ", kOpToken,
                   " --os-endpoint https://127.0.0.1:", N().port,
                   "/v2.1 --os-compute-api-version 2.79 server list"));
  REQUIRE_FALSE(untrusted.ok());
  INFO(untrusted.status().message());
  CHECK(absl::StrContains(absl::AsciiStrToLower(untrusted.status().message()), "certificate"));
}

TEST_CASE("openstack: compute service list/set and hypervisor list") {
  auto svc = N().Os("compute service list -f json");
  INFO(svc.status().ToString());
  REQUIRE(svc.ok());
  auto j = json::parse(*svc);
  CHECK(j.size() == 2);
  auto set = N().Os("compute service set --disable --disable-reason firmware host-b nova-compute");
  INFO(set.status().ToString());
  REQUIRE(set.ok());
  auto after = json::parse(*N().Os("compute service list -f json --long"));
  bool disabled = false;
  for (const auto& row : after) {
    if (row["Host"] == "host-b") disabled = row["Status"] == "disabled";
  }
  CHECK(disabled);
  REQUIRE(N().Os("compute service set --enable host-b nova-compute").ok());
  auto hv = N().Os("hypervisor list -f json");
  INFO(hv.status().ToString());
  REQUIRE(hv.ok());
  CHECK(json::parse(*hv).size() == 2);
}

// Rows of `-f json` for a Lister with Name/Value columns, as a name -> value object.
json NameValues(const std::string& out) {
  json m = json::object();
  for (const auto& row : json::parse(out)) m[row["Name"].get<std::string>()] = row["Value"];
  return m;
}

TEST_CASE("openstack: hypervisor show, stats, availability zones, aggregates, limits (reader)") {
  auto hv = N().Os("hypervisor show -f json host-a", kReaderToken);
  INFO(hv.status().ToString());
  REQUIRE(hv.ok());
  auto h = json::parse(*hv);
  CHECK(h["hypervisor_hostname"] == "host-a");
  CHECK(h["service_host"] == "host-a");
  CHECK(h["state"] == "up");
  CHECK(h["aggregates"] == json::array());
  CHECK(h["running_vms"] == 1);
  CHECK(h["memory_mb"].get<int64_t>() > 0);

  auto stats = N().Os("hypervisor stats show -f json", kReaderToken);
  INFO(stats.status().ToString());
  REQUIRE(stats.ok());
  auto st = json::parse(*stats);
  CHECK(st["count"] == 2);
  CHECK(st["running_vms"] == 1);
  // The sums of both hosts: host-a's share is at most the total, and the used and free add up.
  CHECK(st["memory_mb"].get<int64_t>() > h["memory_mb"].get<int64_t>());
  CHECK(st["memory_mb_used"].get<int64_t>() + st["free_ram_mb"].get<int64_t>() ==
        st["memory_mb"].get<int64_t>());

  auto az = N().Os("availability zone list --compute --long -f json", kReaderToken);
  INFO(az.status().ToString());
  REQUIRE(az.ok());
  auto zones = json::parse(*az);
  REQUIRE(zones.size() == 2);  // one row per host's nova-compute service
  for (const auto& z : zones) {
    CHECK(z["Zone Name"] == "nova");
    CHECK(z["Zone Status"] == "available");
    CHECK(z["Service Name"] == "nova-compute");
    CHECK(absl::StartsWith(z["Service Status"].get<std::string>(), "enabled :-) 20"));
  }
  CHECK(zones[0]["Host Name"] != zones[1]["Host Name"]);

  auto agg = N().Os("aggregate list -f json", kReaderToken);
  INFO(agg.status().ToString());
  REQUIRE(agg.ok());
  CHECK(json::parse(*agg) == json::array());

  auto limits = N().Os("limits show --absolute -f json", kReaderToken);
  INFO(limits.status().ToString());
  REQUIRE(limits.ok());
  auto l = NameValues(*limits);
  INFO(l.dump());
  CHECK(l["maxTotalInstances"] == -1);
  CHECK(l["maxTotalRAMSize"] == -1);
  CHECK(l["totalInstancesUsed"] == 1);
  CHECK(l["totalRAMUsed"] == 256);
}

TEST_CASE("openstack: live-migrate, list the migration, errors the client reports") {
  auto mig = N().Os(absl::StrCat("server migrate --live-migration --host host-b ", kUuid));
  INFO(mig.status().ToString());
  REQUIRE(mig.ok());
  REQUIRE(testing::WaitFor(
      [&] {
        auto show = N().Os(absl::StrCat("server show -f json ", kUuid));
        return show.ok() && json::parse(*show)["OS-EXT-SRV-ATTR:host"] == "host-b";
      },
      absl::Seconds(60)));
  auto list = N().Os("server migration list -f json");
  INFO(list.status().ToString());
  REQUIRE(list.ok());
  auto j = json::parse(*list);
  REQUIRE(j.size() == 1);
  CHECK(j[0]["Status"] == "completed");
  CHECK(j[0]["Dest Host"] == "host-b");
  // Errors as the client reports them.
  auto unknown = N().Os("server show 99999999-2222-4333-8444-555555555555");
  REQUIRE_FALSE(unknown.ok());
  CHECK(absl::StrContains(unknown.status().message(), "No server with a name or ID"));
  auto no_token = N().Os("server list", "wrong-token-0000000000");
  REQUIRE_FALSE(no_token.ok());
  CHECK(absl::StrContains(no_token.status().message(), "401"));
  auto reader =
      N().Os(absl::StrCat("server migrate --live-migration --host host-a ", kUuid), kReaderToken);
  REQUIRE_FALSE(reader.ok());
  CHECK(absl::StrContains(reader.status().message(), "403"));
}

TEST_CASE("openstack: server event list/show: the migration as a live-migration action") {
  auto list = N().Os(absl::StrCat("server event list --long -f json ", kUuid), kReaderToken);
  INFO(list.status().ToString());
  REQUIRE(list.ok());
  auto actions = json::parse(*list);
  REQUIRE(actions.size() == 1);
  CHECK(actions[0]["Action"] == "live-migration");
  CHECK(actions[0]["Server ID"] == kUuid);
  CHECK(absl::StrContains(actions[0]["User ID"].get<std::string>(), "nova-operator"));
  const std::string req = actions[0]["Request ID"];
  CHECK(absl::StartsWith(req, "req-"));
  auto show = N().Os(absl::StrCat("server event show -f json ", kUuid, " ", req), kReaderToken);
  INFO(show.status().ToString());
  REQUIRE(show.ok());
  auto a = json::parse(*show);
  CHECK(a["action"] == "live-migration");
  CHECK(a["request_id"] == req);
  CHECK(a["message"].is_null());
  CHECK_FALSE(a["updated_at"].get<std::string>().empty());  // 2.58+
  std::map<std::string, json> events;
  std::map<std::string, int> count;
  for (const auto& e : a["events"]) {
    CHECK_FALSE(e["result"].is_null());  // every step finished: intent and result are one event
    events[e["event"].get<std::string>()] = e;
    ++count[e["event"].get<std::string>()];
  }
  for (const char* name :
       {"conductor_live_migrate_instance", "compute_check_can_live_migrate_destination",
        "compute_check_can_live_migrate_source", "compute_pre_live_migration",
        "compute_live_migration", "compute_post_live_migration_at_destination"}) {
    INFO(name);
    REQUIRE(count[name] == 1);
    CHECK(events[name]["result"] == "Success");
    CHECK_FALSE(events[name]["start_time"].get<std::string>().empty());
    CHECK_FALSE(events[name]["finish_time"].get<std::string>().empty());
    CHECK(events[name]["traceback"].is_null());
  }
  // 2.62+: where it ran, as the scheduler recorded it with the event: the source's steps on
  // host-a, the destination's on host-b; the conductor's (the scheduler's) on none.
  CHECK(events["compute_check_can_live_migrate_destination"]["host"] == "host-b");
  CHECK(events["compute_check_can_live_migrate_source"]["host"] == "host-a");
  CHECK(events["compute_pre_live_migration"]["host"] == "host-b");
  CHECK(events["compute_live_migration"]["host"] == "host-a");
  CHECK(events["compute_post_live_migration_at_destination"]["host"] == "host-b");
  CHECK(events["conductor_live_migrate_instance"]["host"] == "");
  auto unknown = N().Os(
      absl::StrCat("server event show ", kUuid, " req-99999999-2222-4333-8444-555555555555"));
  REQUIRE_FALSE(unknown.ok());
  CHECK(absl::StrContains(unknown.status().message(), "not found"));
}

TEST_CASE("openstack: abort and force-complete a slow migration; 409 while migrating") {
  REQUIRE(N().hv->SetTransferDuration("host-b", absl::Seconds(60)).ok());
  REQUIRE(N().Os(absl::StrCat("server migrate --live-migration --host host-a ", kUuid)).ok());
  std::string mid = N().RunningMigrationId();
  auto busy = N().Os(absl::StrCat("server migrate --live-migration --host host-a ", kUuid));
  REQUIRE_FALSE(busy.ok());
  CHECK(absl::StrContains(busy.status().message(), "409"));
  auto show = N().Os(absl::StrCat("server migration show -f json ", kUuid, " ", mid));
  INFO(show.status().ToString());
  CHECK(show.ok());
  auto abort = N().Os(absl::StrCat("server migration abort ", kUuid, " ", mid));
  INFO(abort.status().ToString());
  REQUIRE(abort.ok());
  REQUIRE(testing::WaitFor(
      [&] {
        auto l = N().Os("server migration list -f json --status cancelled");
        return l.ok() && json::parse(*l).size() == 1;
      },
      absl::Seconds(30)));
  // The cancelled migration's action (the newest): the abort relayed to the source, and the
  // transfer's end as an error with the reason.
  auto actions = N().Os(absl::StrCat("server event list -f json ", kUuid));
  REQUIRE(actions.ok());
  auto cancelled = N().Os(absl::StrCat("server event show -f json ", kUuid, " ",
                                       json::parse(*actions)[0]["Request ID"].get<std::string>()));
  INFO(cancelled.status().ToString());
  REQUIRE(cancelled.ok());
  INFO(*cancelled);
  const json c = json::parse(*cancelled);
  std::map<std::string, json> ev;
  for (const auto& e : c["events"]) ev[e["event"].get<std::string>()] = e;
  REQUIRE(ev.count("compute_live_migration_abort") == 1);
  CHECK(ev["compute_live_migration_abort"]["host"] == "host-b");
  CHECK(ev["compute_live_migration"]["result"] == "Error");
  // The transfer ran from before the abort request until after it.
  CHECK(ev["compute_live_migration"]["start_time"] <
        ev["compute_live_migration_abort"]["start_time"]);
  CHECK(ev["compute_live_migration"]["finish_time"] >=
        ev["compute_live_migration_abort"]["start_time"]);
  CHECK(absl::StrContains(ev["compute_live_migration"]["traceback"].get<std::string>(),
                          "aborted by nova-operator"));
  CHECK(ev["compute_rollback_live_migration_at_destination"]["result"] == "Success");
  // Force-complete: a second slow migration is forced to converge.
  REQUIRE(N().Os(absl::StrCat("server migrate --live-migration --host host-a ", kUuid)).ok());
  mid = N().RunningMigrationId();
  auto force = N().Os(absl::StrCat("server migration force complete ", kUuid, " ", mid));
  INFO(force.status().ToString());
  REQUIRE(force.ok());
  REQUIRE(testing::WaitFor(
      [&] {
        auto show = N().Os(absl::StrCat("server show -f json ", kUuid));
        return show.ok() && json::parse(*show)["OS-EXT-SRV-ATTR:host"] == "host-a";
      },
      absl::Seconds(60)));
}

TEST_CASE("openstacksdk: live_migrate_server, migrations(), server_actions()") {
  auto out = testing::RunCommand(
      absl::StrCat("HOME=", N().dir, " /usr/bin/python3 ",
                   testing::RunfilePath("integration_tests/nova/sdk_check.py"),
                   " --endpoint https://127.0.0.1:", N().port, "/v2.1 --token ", kOpToken,
                   " --cacert ", N().cloud->pki(), "/ca.pem --server ", kUuid, " --host host-b"));
  INFO(out.status().ToString());
  REQUIRE(out.ok());
  auto j = json::parse(*out);
  CHECK(j["migration"]["status"] == "completed");
  CHECK(j["migration"]["source"] == "host-a");
  CHECK(j["migration"]["dest"] == "host-b");
  // Four migrations by now (host-b, the cancelled one, the forced one, the SDK's), newest first.
  REQUIRE(j["actions"].size() == 4);
  for (const auto& a : j["actions"]) CHECK(a["action"] == "live-migration");
  CHECK(j["events"]["compute_live_migration"] == "Success");
}

}  // namespace
}  // namespace livemig::e2e
