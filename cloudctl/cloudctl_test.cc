// cloudctl against the real binaries: a scheduler on PostgreSQL and two compute agents
// (FakeDriver) started by the e2e Cloud helper, and the real `cloudctl` binary run as a
// subprocess, asserting on its output and exit codes. Plus the formatting and settings code
// without any server.
//
// The cloud is shared by the test cases that need one (starting it costs seconds); each case
// establishes its own preconditions (where the instance runs) instead of relying on the order.
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "cloudctl/config.h"
#include "cloudctl/format.h"
#include "driver/fake_driver.h"
#include "grpcpp/grpcpp.h"
#include "integration_tests/scheduler_e2e/e2e.h"
#include "integration_tests/scheduler_e2e/fake_cloud.h"
#include "testing/process.h"
#include "testing/run_command.h"
#include "testing/sample_disks.h"

namespace livemig::cloudctl {
namespace {

using e2e::Cloud;
using testing::ReadFile;

constexpr char kUuid[] = "33333333-2222-4333-8444-555555555555";
// The shared cloud's scheduler runs with a token file (as in production).
constexpr char kOperatorToken[] = "op-token-0123456789abcdef0123456789";
constexpr char kReaderToken[] = "reader-token-0123456789abcdef012345";

// Where command outputs and the fake $HOME live (Bazel's TEST_TMPDIR: no sockets here).
const std::string& WorkDir() {
  static const std::string dir = testing::MakeTempDir("cloudctl");
  return dir;
}

struct Result : testing::CommandResult {
  std::string all() const { return out + err; }
};

// The environment every cloudctl run gets: no settings leak in from the machine.
std::string CleanEnv() {
  return absl::StrCat(
      "env -u LIVEMIG_SERVER -u LIVEMIG_TOKEN -u LIVEMIG_USER -u LIVEMIG_CA -u LIVEMIG_SERVER_NAME "
      "-u XDG_CONFIG_HOME HOME=",
      WorkDir(), " USER=tester ");
}

std::string Binary() { return testing::RunfilePath("cloudctl/cloudctl"); }

// Runs cloudctl with `args` (shell syntax), stdout and stderr captured apart.
Result Cloudctl(const std::string& args, const std::string& env = "") {
  static int n = 0;
  const std::string base = absl::StrCat(WorkDir(), "/run-", ++n);
  Result r{testing::RunCaptured(absl::StrCat(CleanEnv(), env, " ", Binary(), " ", args), base)};
  UNSCOPED_INFO("$ cloudctl " << args << "\nexit " << r.code << "\n--- stdout\n"
                              << r.out << "--- stderr\n"
                              << r.err);
  return r;
}

bool Has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// ---- the shared cloud ----------------------------------------------------------------------

// PostgreSQL, the scheduler (with API tokens: ops-cli is an operator, viewer a reader) and agents
// host-a and host-b (fake-qemu: byte progress, abort, force-complete), with instance web-1 (kUuid)
// on host-a at first.
struct SharedCloud {
  testing::RemoveDirAtEnd remove{testing::MakeShortTempDir("cli")};  // destroyed last
  std::string dir = remove.path;
  Cloud cloud{dir};
  std::string state = dir + "/fake";
  driver::FakeHypervisor hv{state};

  SharedCloud() {
    REQUIRE(dir.size() < 60);
    std::ofstream(dir + "/tokens") << kOperatorToken << " operator ops-cli\n"
                                   << kReaderToken << " reader viewer\n";
    cloud.set_token(kOperatorToken);
    cloud.StartScheduler(absl::StrCat("--tokens-file ", dir,
                                      "/tokens --lease 3 --service-down-time 20 "
                                      "--report-interval 1"));
    e2e::StartFakeAgents(cloud, hv, state, {"host-a", "host-b"});
    REQUIRE(hv.CreateDomain("host-a", kUuid, "web-1", 512).ok());
    INFO(cloud.SchedulerLog());
    REQUIRE(cloud.WaitInstanceOn(kUuid, "host-a", absl::Seconds(20)));
    // Both hosts up in the scheduler's view.
    REQUIRE(testing::WaitFor(
        [&] {
          grpc::ClientContext ctx;
          cloud.Prepare(&ctx, absl::Seconds(2));
          e2e::sv1::ListHostsResponse r;
          if (!cloud.api().ListHosts(&ctx, {}, &r).ok() || r.hosts_size() != 2) return false;
          for (const auto& h : r.hosts()) {
            if (!h.up()) return false;
          }
          return true;
        },
        absl::Seconds(20)));
  }

  // The scheduler's address without a token, and with the operator token.
  std::string bare_server() const { return "--server unix:" + dir + "/api.sock"; }
  std::string server() const { return bare_server() + " --token " + kOperatorToken; }

  // The instance's host in the scheduler's view.
  std::string InstanceHost() {
    grpc::ClientContext ctx;
    cloud.Prepare(&ctx, absl::Seconds(5));
    e2e::sv1::GetInstanceRequest r;
    r.set_instance_uuid(kUuid);
    e2e::sv1::Instance i;
    REQUIRE(cloud.api().GetInstance(&ctx, r, &i).ok());
    return i.host();
  }

  // Waits until the instance runs, unclaimed, on a host; returns {source, the other host}.
  std::pair<std::string, std::string> Settled() {
    std::string host;
    REQUIRE(testing::WaitFor(
        [&] {
          grpc::ClientContext ctx;
          cloud.Prepare(&ctx, absl::Seconds(2));
          e2e::sv1::GetInstanceRequest r;
          r.set_instance_uuid(kUuid);
          e2e::sv1::Instance i;
          if (!cloud.api().GetInstance(&ctx, r, &i).ok()) return false;
          host = i.host();
          return i.state() == e2e::v1::DOMAIN_STATE_RUNNING &&
                 i.task_state() == e2e::sv1::TASK_STATE_NONE;
        },
        absl::Seconds(30)));
    return {host, host == "host-a" ? "host-b" : "host-a"};
  }
};

std::unique_ptr<SharedCloud> g_cloud;  // destroyed at exit: stops every process

SharedCloud& Shared() {
  if (!g_cloud) g_cloud = std::make_unique<SharedCloud>();
  return *g_cloud;
}

// The migration number from "Migration 7 (uuid) accepted: ..." (the first line of --wait).
int64_t MigrationNumber(const std::string& text) {
  std::smatch m;
  static const std::regex kRe("Migration ([0-9]+) \\(");
  if (!std::regex_search(text, m, kRe)) return 0;
  return std::stoll(m[1]);
}

// ---- without a server ----------------------------------------------------------------------

TEST_CASE("format: tables, progress lines and summaries") {
  Table t({"Host", "Status"});
  t.AddRow({"host-a", "enabled"});
  t.AddRow({"b", "two\nlines"});
  CHECK(t.Render() ==
        "+--------+---------+\n"
        "| Host   | Status  |\n"
        "+--------+---------+\n"
        "| host-a | enabled |\n"
        "| b      | two     |\n"
        "|        | lines   |\n"
        "+--------+---------+\n");

  sv1::Migration m;
  m.set_number(7);
  m.set_instance_name("web-1");
  m.set_source_host("host-a");
  m.set_dest_host("host-b");
  m.set_status(v1::MIGRATION_STATUS_PREPARING);
  m.set_step(v1::MIGRATION_STEP_PRE_LIVE_MIGRATION);
  CHECK(ProgressLine(m) == "preparing: pre_live_migration");

  m.set_status(v1::MIGRATION_STATUS_RUNNING);
  m.set_step(v1::MIGRATION_STEP_LIVE_MIGRATION);
  auto* p = m.mutable_progress();
  p->set_phase(v1::MIGRATION_PHASE_PRE_COPY);
  p->set_has_bytes(true);
  p->set_bytes_total(512ull << 20);
  p->set_bytes_processed(256ull << 20);
  p->set_bytes_remaining(256ull << 20);
  p->set_percent(50);
  CHECK(ProgressLine(m) ==
        "running: live_migration | pre-copy [############............]  50.0%  remaining 256.0 "
        "of 512.0 MiB, sent 256.0 MiB");

  // A guest that keeps dirtying memory: more sent than the total; each figure named, the
  // percentage from what remains.
  p->set_bytes_total((uint64_t{646} << 20) / 10);
  p->set_bytes_processed((uint64_t{5733} << 20) / 10);
  p->set_bytes_remaining((uint64_t{347} << 20) / 10);
  p->set_percent(0);
  p->set_iteration(3);
  m.set_status(v1::MIGRATION_STATUS_RUNNING);
  p->set_downtime_ms(300);
  const std::string shown = RenderMigration(m);
  INFO(shown);
  CHECK(absl::StrContains(shown, "46.3% (remaining 34.7 of 64.6 MiB, sent 573.3 MiB), pass 3"));
  CHECK(absl::StrContains(shown, "expected downtime"));
  m.set_status(v1::MIGRATION_STATUS_COMPLETED);
  CHECK_FALSE(absl::StrContains(RenderMigration(m), "expected downtime"));
  m.set_status(v1::MIGRATION_STATUS_RUNNING);

  // The first sample, before the hypervisor's first figures.
  p->Clear();
  p->set_phase(v1::MIGRATION_PHASE_PRE_COPY);
  p->set_has_bytes(true);
  CHECK(ProgressLine(m) == "running: live_migration | pre-copy waiting for the first byte counts");

  p->Clear();
  p->set_elapsed_ms(12345);
  CHECK(ProgressLine(m) ==
        "running: live_migration | elapsed 12.3 s (this hypervisor reports no byte counts)");

  m.set_status(v1::MIGRATION_STATUS_RUNNING_POSTCOPY);
  CHECK(StatusName(m.status()) == "running (post-copy)");
  CHECK(StatusName(static_cast<v1::MigrationStatus>(99)) == "unknown(99)");
  CHECK_FALSE(EndsWait(v1::MIGRATION_STATUS_POST_MIGRATING));
  CHECK(EndsWait(v1::MIGRATION_STATUS_ERROR));
  CHECK(EndsWait(v1::MIGRATION_STATUS_CANCELLED));
  CHECK_FALSE(IsTerminalStatus(v1::MIGRATION_STATUS_ERROR));

  m.set_status(v1::MIGRATION_STATUS_COMPLETED);
  m.mutable_created_at()->set_seconds(1000);
  m.mutable_finished_at()->set_seconds(1004);
  p->set_downtime_ms(35);
  CHECK(SummaryLine(m) ==
        "Migration 7 completed: web-1 moved from host-a to host-b in 4.0 s (transfer 12.3 s), "
        "downtime 35 ms.");
  m.set_status(v1::MIGRATION_STATUS_FAILED);
  m.set_failure_reason("transfer failed: boom");
  CHECK(SummaryLine(m) ==
        "Migration 7 failed after 4.0 s; web-1 stays on host-a: transfer failed: boom");

  CHECK(HumanDuration(absl::Milliseconds(850)) == "850 ms");
  CHECK(HumanDuration(absl::Seconds(245)) == "4 min 05 s");
  CHECK(HumanDuration(absl::Minutes(123)) == "2 h 03 min");
  google::protobuf::Timestamp ts;
  CHECK(FormatTime(ts) == "-");
  ts.set_seconds(1714566896);
  ts.set_nanos(123000000);
  CHECK(FormatTime(ts) == "2024-05-01T12:34:56Z");
  CHECK(FormatTime(ts, true) == "2024-05-01T12:34:56.123Z");
}

// Issue 21: instance-show and the dry run show each disk's kind and identity, with one function.
TEST_CASE("format: an instance's disks, iSCSI, DRBD and file, in instance-show and the dry run") {
  sv1::Instance i;
  i.set_uuid(kUuid);
  i.set_name("db-1");
  i.set_host("host-a");
  CHECK(RenderDisks(i.disks()) == "Disks: none reported\n");
  CHECK(Has(RenderInstance(i), "Disks: none reported"));

  *i.mutable_disks() = livemig::testing::SharedVolumeDisks();  // xvda: iSCSI, xvdb: DRBD
  v1::DomainDisk* f = i.add_disks();
  f->set_target_dev("xvdc");
  f->set_type("file");
  f->set_kind(v1::DISK_KIND_FILE);
  f->set_source("/var/lib/livemig/instances/db-1/disk.img");
  f->set_shared(true);
  f->set_read_only(true);
  v1::DomainDisk* old_agent = i.add_disks();  // an agent that does not say the kind
  old_agent->set_target_dev("xvdd");
  old_agent->set_type("file");
  old_agent->set_source("/srv/local/scratch.img");
  v1::DomainDisk* unseen = i.add_disks();  // an iSCSI LUN whose WWID the host cannot read
  unseen->set_target_dev("xvde");
  unseen->set_kind(v1::DISK_KIND_ISCSI);
  unseen->set_iscsi_target("iqn.2026-12.net.example:db2");
  unseen->set_iscsi_lun(0);

  const std::string disks = RenderDisks(i.disks());
  INFO(disks);
  const std::vector<std::string> lines = absl::StrSplit(disks, '\n');
  REQUIRE(lines.size() > 4);
  CHECK(lines[0] == "Disks:");
  CHECK(Has(lines[2], "| Device | Kind "));
  CHECK(Has(lines[2], "| Source and identity "));
  CHECK(Has(lines[2], "| Volume | Shared "));
  // One row a disk, its first line naming device, kind, the whole source path and volume.
  auto row_of = [&](const std::string& dev) {
    for (const auto& l : lines) {
      if (absl::StartsWith(l, "| " + dev + " ")) return l;
    }
    return std::string();
  };
  const std::string xvda = row_of("xvda");
  CHECK(Has(xvda, "| iscsi "));
  CHECK(Has(xvda, "/dev/disk/by-path/ip-10.0.2.101:3260-iscsi-iqn.2026-12.net.example:db1-lun-1"));
  CHECK(Has(disks, "| target iqn.2026-12.net.example:db1 lun 1 "));
  CHECK(Has(xvda, "| data1 "));
  CHECK(Has(xvda, "| yes "));
  CHECK(Has(xvda, "| 20.0 GiB "));
  CHECK(Has(disks, "| portal 10.0.2.101:3260 "));
  CHECK(Has(disks, "| wwid naa.60000000000000000e00000000010001 "));
  const std::string xvdb = row_of("xvdb");
  CHECK(Has(xvdb, "| drbd "));
  CHECK(Has(xvdb, "| /dev/drbd0 "));
  CHECK(Has(disks, "| resource r0 "));
  CHECK(Has(xvdb, "| r0 "));
  CHECK(Has(disks, "| drbd:r0/0 "));
  CHECK_FALSE(Has(disks, "wwid drbd:"));
  const std::string xvdc = row_of("xvdc");
  CHECK(Has(xvdc, "| file (read-only) "));
  CHECK(Has(xvdc, "| /var/lib/livemig/instances/db-1/disk.img "));
  CHECK(Has(xvdc, "| yes "));
  const std::string xvdd = row_of("xvdd");
  CHECK(Has(xvdd, "| file "));
  CHECK(Has(xvdd, "| no (local) "));
  const std::string xvde = row_of("xvde");
  CHECK(Has(xvde, "| (empty drive) "));
  CHECK(Has(disks, "| target iqn.2026-12.net.example:db2 lun 0 "));
  CHECK(Has(disks, "| wwid unknown "));
  CHECK(DiskKindName(v1::DomainDisk()) == "-");
  v1::DomainDisk newer;
  newer.set_kind(static_cast<v1::DiskKind>(42));
  CHECK(DiskKindName(newer) == "unknown(42)");

  // instance-show and the dry run print the same section.
  CHECK(Has(RenderInstance(i), "\n" + disks));
  sv1::CheckMigrationResponse check;
  check.set_instance_uuid(kUuid);
  check.set_source_host("host-a");
  CHECK(Has(RenderCheck(check), "Disks: none reported"));
  *check.mutable_instance_disks() = i.disks();
  CHECK(Has(RenderCheck(check), "\n" + disks));
  // --json carries them with the API's names.
  auto j = nlohmann::json::parse(ToJson(i));
  REQUIRE(j["disks"].size() == 5);
  CHECK(j["disks"][0]["kind"] == "iscsi");
  CHECK(j["disks"][0]["iscsi_lun"] == 1);
  CHECK(j["disks"][1]["drbd_resource"] == "r0");
  CHECK(nlohmann::json::parse(ToJson(check))["instance_disks"][0]["device_id"] ==
        "naa.60000000000000000e00000000010001");
}

TEST_CASE("settings: flag, then environment, then config file, then default") {
  std::map<std::string, std::string> env;
  auto getenv = [&](const char* n) -> const char* {
    auto it = env.find(n);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  const std::string home = WorkDir() + "/home-settings";
  REQUIRE(testing::RunCommand("mkdir -p " + home + "/.config/livemig").ok());
  env["HOME"] = home;
  env["USER"] = "alice";

  auto s = ResolveSettings({}, getenv);
  REQUIRE(s.ok());
  CHECK(s->server == kDefaultServer);
  CHECK(s->requester == "alice");
  CHECK(s->timeout_s == 30);

  {
    std::ofstream f(home + "/.config/livemig/cloudctl.conf");
    f << "# cloudctl\nserver = \"unix:/from/file.sock\"\ntoken = t0k\ntimeout = 5\n";
  }
  s = ResolveSettings({}, getenv);
  REQUIRE(s.ok());
  CHECK(s->server == "unix:/from/file.sock");
  CHECK(s->token == "t0k");
  CHECK(s->timeout_s == 5);

  env["LIVEMIG_SERVER"] = "/from/env.sock";
  env["LIVEMIG_USER"] = "bob";
  s = ResolveSettings({}, getenv);
  REQUIRE(s.ok());
  CHECK(s->server == "unix:/from/env.sock");
  CHECK(s->server_origin == "LIVEMIG_SERVER");
  CHECK(s->requester == "bob");

  Flags f;
  f.server = "10.0.0.1:7000";
  f.requester = "carol";
  f.timeout_s = 2;
  s = ResolveSettings(f, getenv);
  REQUIRE(s.ok());
  CHECK(s->server == "10.0.0.1:7000");
  CHECK(s->requester == "carol");
  CHECK(s->timeout_s == 2);

  f.config = home + "/missing.conf";
  CHECK(ResolveSettings(f, getenv).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(ParseConfig("sever = x\n", "c.conf").status().message() ==
        "c.conf:1: unknown key 'sever' (known: server, token, requester, timeout, ca, "
        "server-name)");
}

TEST_CASE("cloudctl --help explains the commands and the exit codes") {
  auto r = Cloudctl("--help");
  CHECK(r.code == 0);
  for (const char* cmd :
       {"live-migration", "migration-list", "migration-show", "migration-abort",
        "migration-force-complete", "host-list", "host-show", "host-disable", "host-enable",
        "host-evacuate-live", "evacuation-list", "evacuation-show", "evacuation-cancel",
        "instance-list", "instance-show", "Exit codes", "LIVEMIG_SERVER", "--json"}) {
    CHECK(Has(r.out, cmd));
  }
  r = Cloudctl("live-migration --help");
  CHECK(r.code == 0);
  for (const char* opt : {"--block-migrate", "--offline", "--completion-timeout",
                          "--completion-action", "--max-downtime", "--bandwidth",
                          "--allow-post-copy", "--dry-run", "--wait", "--request-id", "Examples"}) {
    CHECK(Has(r.out, opt));
  }
  CHECK(Cloudctl("migration-list --help").code == 0);
  CHECK(Has(Cloudctl("host-evacuate-live --help").out, "--max-parallel"));
  r = Cloudctl("evacuation-cancel --help");
  CHECK(r.code == 0);
  CHECK(Has(r.out, "--reason"));
  CHECK(Has(r.out, "migrations in flight finish"));
  CHECK(Cloudctl("evacuation-cancel not-a-uuid").code == 2);
}

// The completion script is generated from the parser: every command and option is in it, bash
// accepts it, and it completes a command, an option and a status (run by bash itself).
TEST_CASE("cloudctl completion bash completes commands, options and statuses") {
  auto r = Cloudctl("completion bash");
  REQUIRE(r.code == 0);
  for (const char* word :
       {"live-migration", "host-evacuate-live", "evacuation-cancel", "instance-show", "--dry-run",
        "--max-parallel", "--server", "complete -F _cloudctl cloudctl"}) {
    CHECK(Has(r.out, word));
  }
  const std::string script = WorkDir() + "/cloudctl.bash";
  std::ofstream(script) << r.out;
  auto complete = [&](const std::string& words, int cword) {
    auto out = testing::RunCommand(absl::StrCat("bash -c 'source ", script, "; COMP_WORDS=(", words,
                                                "); COMP_CWORD=", cword,
                                                "; _cloudctl; echo \"${COMPREPLY[*]}\"'"));
    return out.ok() ? *out : std::string(out.status().message());
  };
  CHECK(complete("cloudctl host-dis", 1) == "host-disable\n");
  CHECK(complete("cloudctl --server x:1 live-migration --allow", 4) == "--allow-post-copy\n");
  CHECK(complete("cloudctl migration-list --status runn", 3) == "running running-post-copy\n");
  CHECK(complete("cloudctl host-list --state \"\"", 3) == "up down\n");
  auto bad = Cloudctl("completion fish");
  CHECK(bad.code == 2);
  CHECK(Has(bad.err, "fish"));
}

TEST_CASE("command-line errors exit 2 before calling the scheduler") {
  // The server does not exist: these must fail on their arguments, not on the connection.
  const std::string server = "--server unix:/nonexistent/cloudctl-test.sock";
  auto r = Cloudctl(server + " host-disable host-a");
  CHECK(r.code == 2);
  CHECK(Has(r.err, "--reason is required"));
  r = Cloudctl(server + " migration-list --status sleeping");
  CHECK(r.code == 2);
  CHECK(Has(r.err, "'sleeping' is not a migration status"));
  r = Cloudctl(server + " live-migration " + kUuid + " host-b --block-migrate maybe");
  CHECK(r.code == 2);
  r = Cloudctl(server + " frobnicate");
  CHECK(r.code == 2);
  r = Cloudctl("");
  CHECK(r.code == 2);
  r = Cloudctl(server + " --config /nonexistent/cloudctl.conf host-list");
  CHECK(r.code == 2);
  CHECK(Has(r.err, "cannot read the config file"));
}

TEST_CASE("a scheduler that is not running: exit 7 and a hint") {
  testing::RemoveDirAtEnd tmp{testing::MakeShortTempDir("cli-none")};
  const std::string sock = tmp.path + "/nobody-listens.sock";
  auto r = Cloudctl("--server unix:" + sock + " host-list");
  CHECK(r.code == 7);
  CHECK(Has(r.err, "cloudctl: host-list: "));
  CHECK(Has(r.err, "is the scheduler running? cloudctl tried unix:" + sock + " (from --server)"));
  // The same from the environment, and a short timeout is honoured.
  r = Cloudctl("--timeout 2 instance-list", "LIVEMIG_SERVER=unix:" + sock);
  CHECK(r.code == 7);
  CHECK(Has(r.err, "(from LIVEMIG_SERVER)"));
  // A socket path longer than Unix allows is an argument error, said plainly.
  r = Cloudctl("--server unix:/" + std::string(120, 'x') + "/api.sock host-list");
  CHECK(r.code == 2);
  CHECK(Has(r.err, "longer than"));
}

// ---- against the cloud ---------------------------------------------------------------------

TEST_CASE("host-list, host-show and instance-list show the cloud") {
  auto& c = Shared();
  auto r = Cloudctl(c.server() + " host-list");
  REQUIRE(r.code == 0);
  CHECK(Has(r.out, "| host-a "));
  CHECK(Has(r.out, "| host-b "));
  CHECK(Has(r.out, "enabled"));
  CHECK(Has(r.out, " up "));

  r = Cloudctl(c.server() + " host-list --json");
  REQUIRE(r.code == 0);
  auto j = nlohmann::json::parse(r.out);
  REQUIRE(j["hosts"].size() == 2);
  CHECK(j["hosts"][0]["inventory"]["hostname"] == "host-a");

  // The address from a config file: the default one under $HOME, and one given with --config.
  const std::string home = WorkDir() + "/home-with-config";
  REQUIRE(testing::RunCommand("mkdir -p " + home + "/.config/livemig").ok());
  {
    std::ofstream f(home + "/.config/livemig/cloudctl.conf");
    f << "# written by cloudctl_test\nserver = unix:" << c.dir << "/api.sock\n"
      << "token = " << kOperatorToken << "\n";
  }
  r = Cloudctl("host-list", "HOME=" + home);
  CHECK(r.code == 0);
  CHECK(Has(r.out, "| host-b "));
  r = Cloudctl("--config " + home + "/.config/livemig/cloudctl.conf host-list");
  CHECK(r.code == 0);
  // The environment wins over the config file; the flag wins over both.
  r = Cloudctl("host-list", "HOME=" + home + " LIVEMIG_SERVER=unix:/nonexistent/api.sock");
  CHECK(r.code == 7);
  r = Cloudctl(c.server() + " host-list", "LIVEMIG_SERVER=unix:/nonexistent/api.sock");
  CHECK(r.code == 0);

  r = Cloudctl(c.server() + " host-show host-b");
  REQUIRE(r.code == 0);
  CHECK(Has(r.out, "| host "));
  CHECK(Has(r.out, "memory available"));

  r = Cloudctl(c.server() + " host-show no-such-host");
  CHECK(r.code == 3);
  CHECK(Has(r.err, "cloudctl host-list shows the hosts"));

  r = Cloudctl(c.server() + " instance-list");
  REQUIRE(r.code == 0);
  CHECK(Has(r.out, kUuid));
  CHECK(Has(r.out, "web-1"));
  CHECK(Has(r.out, "running"));

  r = Cloudctl(c.server() + " --json instance-show " + kUuid);
  REQUIRE(r.code == 0);
  CHECK(nlohmann::json::parse(r.out)["name"] == "web-1");
  CHECK(nlohmann::json::parse(r.out)["disks"].is_array());
}

TEST_CASE("tokens: none or a bad one exits 6 with a hint; a reader may look, not change") {
  auto& c = Shared();
  auto r = Cloudctl(c.bare_server() + " host-list");
  CHECK(r.code == 6);
  CHECK(Has(r.err, "cloudctl: host-list: "));
  CHECK(Has(r.err, "LIVEMIG_TOKEN"));
  r = Cloudctl(c.bare_server() + " --token not-a-known-token-0123456789 host-list");
  CHECK(r.code == 6);
  CHECK(Has(r.err, "hint: give a valid token with --token or LIVEMIG_TOKEN"));
  r = Cloudctl(c.bare_server() + " host-list", std::string("LIVEMIG_TOKEN=") + kReaderToken);
  CHECK(r.code == 0);
  CHECK(Has(r.out, "| host-a "));
  r = Cloudctl(c.bare_server() + " host-disable host-b --reason 'not allowed'",
               std::string("LIVEMIG_TOKEN=") + kReaderToken);
  CHECK(r.code == 6);
  CHECK(Has(r.err, "reader role"));
  CHECK(Has(r.err, "hint: this command needs a token with the operator role"));
  // A dry run changes nothing: a reader may run it (cloudctl calls CheckMigration).
  r = Cloudctl(c.bare_server() + " live-migration " + kUuid + " --dry-run",
               std::string("LIVEMIG_TOKEN=") + kReaderToken);
  CHECK(r.code == 0);
  r = Cloudctl(c.bare_server() + " live-migration " + kUuid,
               std::string("LIVEMIG_TOKEN=") + kReaderToken);
  CHECK(r.code == 6);
}

TEST_CASE("live-migration --dry-run prints every check for the candidate") {
  auto& c = Shared();
  auto [src, dst] = c.Settled();
  auto r = Cloudctl(c.server() + " live-migration " + kUuid + " --dry-run");
  REQUIRE(r.code == 0);
  CHECK(Has(r.out, "| Host "));
  CHECK(Has(r.out, "| Check "));
  CHECK(Has(r.out, "| Result "));
  CHECK(Has(r.out, "| Reason "));
  CHECK(Has(r.out, "| " + dst + " "));
  CHECK(Has(r.out, "memory"));
  CHECK(Has(r.out, "pass"));
  CHECK(Has(r.out, "nothing was changed"));
  CHECK(Has(r.out, "destination: " + dst));
  // The disks section (the FakeDriver reports none today: "Disks: none reported"; the format
  // test above renders iSCSI, DRBD and file disks).
  CHECK(Has(r.out, "\nDisks:"));

  r = Cloudctl(c.server() + " --json live-migration " + kUuid + " " + dst + " --dry-run");
  REQUIRE(r.code == 0);
  auto j = nlohmann::json::parse(r.out);
  CHECK(j["passed"] == true);
  CHECK(j["chosen_host"] == dst);
  CHECK(j["hosts"][0]["host"] == dst);
  CHECK(j["hosts"][0]["checks"].size() > 3);
  CHECK(j["instance_disks"].is_array());
  // A malformed option: exit 2.
  r = Cloudctl(c.server() + " live-migration " + kUuid + " " + dst + " --dry-run --max-downtime 0");
  CHECK(r.code == 2);  // 0 ms is malformed (must be > 0)
  // Nothing was created.
  CHECK(c.InstanceHost() == src);
  CHECK(Has(Cloudctl(c.server() + " migration-list --instance " + kUuid + " --status accepted").out,
            "No migrations match."));
}

TEST_CASE("refused requests: bad UUID 2, unknown instance 3, same host 2, disabled host 5") {
  auto& c = Shared();
  auto [src, dst] = c.Settled();
  auto r = Cloudctl(c.server() + " live-migration not-a-uuid " + dst);
  CHECK(r.code == 2);
  // Checked before anything is sent: the message names the argument.
  CHECK(Has(r.err, "cloudctl: live-migration: uuid 'not-a-uuid'"));
  CHECK(Has(r.err, "is not a UUID"));

  r = Cloudctl(c.server() + " live-migration 00000000-0000-4000-8000-000000000000 " + dst);
  CHECK(r.code == 3);
  CHECK(Has(r.err, "00000000-0000-4000-8000-000000000000"));
  CHECK(Has(r.err, "hint: cloudctl instance-list"));

  r = Cloudctl(c.server() + " instance-show 00000000-0000-4000-8000-000000000000");
  CHECK(r.code == 3);

  r = Cloudctl(c.server() + " live-migration " + kUuid + " " + src);
  CHECK(r.code == 2);
  CHECK(Has(r.err, "current host"));

  r = Cloudctl(c.server() + " live-migration " + kUuid + " host-z");
  CHECK(r.code == 3);

  r = Cloudctl(c.server() + " migration-show 999999");
  CHECK(r.code == 3);
  r = Cloudctl(c.server() + " migration-show nonsense");
  CHECK(r.code == 2);

  REQUIRE(Cloudctl(c.server() + " host-disable " + dst + " --reason 'test: refusals'").code == 0);
  r = Cloudctl(c.server() + " live-migration " + kUuid + " " + dst);
  CHECK(r.code == 5);
  CHECK(Has(r.err, "disabled"));
  // The dry run reports the same as a failed check, and exits 5 too.
  r = Cloudctl(c.server() + " live-migration " + kUuid + " " + dst + " --dry-run");
  CHECK(r.code == 5);
  CHECK(Has(r.out, "| dest_enabled "));
  CHECK(Has(r.out, "FAIL"));
  CHECK(Has(r.out, "Result: the migration would fail"));
  REQUIRE(Cloudctl(c.server() + " host-enable " + dst).code == 0);
}

TEST_CASE("live-migration --wait shows progress and completes; show, list and JSON agree") {
  auto& c = Shared();
  auto [src, dst] = c.Settled();
  REQUIRE(c.hv.SetTransferDuration(src, absl::Seconds(3)).ok());
  const absl::Time start = absl::Now();
  auto r =
      Cloudctl(c.server() + " --requester alice live-migration " + kUuid + " " + dst + " --wait");
  const absl::Duration took = absl::Now() - start;
  REQUIRE(c.hv.SetTransferDuration(src, absl::ZeroDuration()).ok());
  INFO(c.cloud.SchedulerLog());
  REQUIRE(r.code == 0);
  const int64_t n = MigrationNumber(r.out);
  REQUIRE(n > 0);
  CHECK(Has(r.out, "accepted: " + std::string(kUuid) + " from " + src + " to " + dst));
  CHECK(Has(r.out, "running: live_migration | pre-copy ["));
  CHECK(Has(r.out, " MiB"));
  CHECK(Has(r.out, absl::StrCat("Migration ", n, " completed: web-1 moved from ", src, " to ", dst,
                                " in ")));
  CHECK(r.err.empty());
  // Not a terminal: no carriage returns, and at most one progress line per second.
  CHECK_FALSE(Has(r.out, "\r"));
  int lines = 0;
  for (char ch : r.out) lines += ch == '\n';
  CHECK(lines <= absl::ToInt64Seconds(took) + 4);

  r = Cloudctl(c.server() + " instance-show " + kUuid);
  REQUIRE(r.code == 0);
  CHECK(Has(r.out, "| host "));
  CHECK(Has(r.out, " " + dst + " "));
  CHECK(Has(r.out, "\nDisks:"));
  CHECK(c.InstanceHost() == dst);

  r = Cloudctl(c.server() + " --json migration-show " + std::to_string(n));
  REQUIRE(r.code == 0);
  auto j = nlohmann::json::parse(r.out);
  // The REST API's names, as the table prints them; no proto enum names.
  CHECK(j["status"] == "completed");
  CHECK(j["events"][0]["outcome"] == "succeeded");
  for (const char* proto_name : {"MIGRATION_STATUS_", "MIGRATION_STEP_", "STEP_OUTCOME_"}) {
    CHECK_FALSE(Has(r.out, proto_name));
  }
  CHECK(j["number"] == std::to_string(n));  // int64 is a string in proto3 JSON
  CHECK(j["dest_host"] == dst);
  CHECK(j["events"].size() >= 10);
  CHECK(Has(j["requester"].get<std::string>(), "alice"));

  r = Cloudctl(c.server() + " migration-show " + std::to_string(n));
  REQUIRE(r.code == 0);
  CHECK(Has(r.out, "| status "));
  CHECK(Has(r.out, "completed"));
  CHECK(Has(r.out, "Step timeline"));
  for (const char* step : {"accept", "pre_checks", "check_can_live_migrate_on_dest",
                           "check_can_live_migrate_on_src", "pre_live_migration", "live_migration",
                           "post_live_migration", "post_live_migration_at_destination"}) {
    CHECK(Has(r.out, std::string("| ") + step + " "));
  }
  CHECK(Has(r.out, "succeeded"));
  // The timeline's Host column: where each agent step ran, as the scheduler recorded it.
  for (const auto& [step, host] : std::vector<std::pair<std::string, std::string>>{
           {"check_can_live_migrate_on_src", src}, {"pre_live_migration", dst}}) {
    bool shown = false;
    for (absl::string_view line : absl::StrSplit(r.out, '\n')) {
      shown = shown || (absl::StrContains(line, "| " + step + " ") &&
                        absl::StrContains(line, "| " + host + " "));
    }
    INFO(step << " on " << host << "\n" << r.out);
    CHECK(shown);
  }

  r = Cloudctl(c.server() + " migration-list --status completed");
  REQUIRE(r.code == 0);
  CHECK(Has(r.out, j["id"].get<std::string>()));
  r = Cloudctl(c.server() + " migration-list --status failed --status running");
  REQUIRE(r.code == 0);
  CHECK_FALSE(Has(r.out, j["id"].get<std::string>()));

  r = Cloudctl(c.server() + " migration-list --json --instance " + kUuid);
  REQUIRE(r.code == 0);
  CHECK(nlohmann::json::parse(r.out)["migrations"].size() >= 1);
}

TEST_CASE("migration-list pages with --limit and --marker") {
  auto& c = Shared();
  // Two migrations exist after these two round trips at the latest.
  for (int i = 0; i < 2; ++i) {
    auto [src, dst] = c.Settled();
    REQUIRE(Cloudctl(c.server() + " live-migration " + kUuid + " " + dst + " --wait").code == 0);
  }
  auto r = Cloudctl(c.server() + " migration-list --limit 1");
  REQUIRE(r.code == 0);
  std::smatch m;
  REQUIRE(std::regex_search(r.out, m, std::regex("--marker (\\S+)")));
  const std::string marker = m[1];
  auto j1 = nlohmann::json::parse(Cloudctl(c.server() + " --json migration-list --limit 1").out);
  auto j2 = nlohmann::json::parse(
      Cloudctl(c.server() + " --json migration-list --limit 1 --marker '" + marker + "'").out);
  REQUIRE(j1["migrations"].size() == 1);
  REQUIRE(j2["migrations"].size() == 1);
  CHECK(j1["migrations"][0]["id"] != j2["migrations"][0]["id"]);
  CHECK(Cloudctl(c.server() + " migration-list --marker garbage").code == 2);
}

TEST_CASE("host-disable and host-enable round trip; the reason shows in host-show") {
  auto& c = Shared();
  auto r = Cloudctl(c.server() + " host-disable host-b");
  CHECK(r.code == 2);  // --reason is required
  r = Cloudctl(c.server() + " --requester bob host-disable host-b --reason 'BIOS update, CHG-42'");
  REQUIRE(r.code == 0);
  CHECK(Has(r.out, "Host host-b disabled (reason: BIOS update, CHG-42"));
  r = Cloudctl(c.server() + " host-show host-b");
  REQUIRE(r.code == 0);
  CHECK(Has(r.out, "disabled"));
  CHECK(Has(r.out, "BIOS update, CHG-42"));
  CHECK(Has(r.out, "bob"));
  r = Cloudctl(c.server() + " host-list");
  CHECK(Has(r.out, "BIOS update, CHG-42"));
  r = Cloudctl(c.server() + " host-list --status disabled --json");
  REQUIRE(r.code == 0);
  auto j = nlohmann::json::parse(r.out);
  REQUIRE(j["hosts"].size() == 1);
  CHECK(j["hosts"][0]["disabled_reason"] == "BIOS update, CHG-42");

  r = Cloudctl(c.server() + " host-enable host-b");
  REQUIRE(r.code == 0);
  r = Cloudctl(c.server() + " --json host-show host-b");
  REQUIRE(r.code == 0);
  j = nlohmann::json::parse(r.out);
  CHECK(j["enabled"] == true);
  CHECK(j["disabled_reason"] == "");
  CHECK(Cloudctl(c.server() + " host-enable no-such-host").code == 3);
}

TEST_CASE("a failed migration with --wait exits 8 and prints the reason") {
  auto& c = Shared();
  auto [src, dst] = c.Settled();
  REQUIRE(c.hv.SetFailure(src, "transfer", "boom").ok());
  auto r = Cloudctl(c.server() + " live-migration " + kUuid + " " + dst + " --wait");
  CHECK(r.code == 8);
  CHECK(Has(r.out, "failed after"));
  CHECK(Has(r.out, "stays on " + src));
  CHECK(Has(r.all(), "boom"));
  CHECK(Has(r.err, "cloudctl: migration "));
  CHECK(Has(r.err, "hint: cloudctl migration-show"));
  CHECK(c.Settled().first == src);
  // The timeline shows the failed step.
  const int64_t n = MigrationNumber(r.out);
  REQUIRE(n > 0);
  r = Cloudctl(c.server() + " migration-show " + std::to_string(n));
  CHECK(Has(r.out, "| status              | failed"));
  CHECK(Has(r.out, "| failure reason      | transfer failed: boom"));
  CHECK(Has(r.out, "| rollback_live_migration "));
}

TEST_CASE("without --wait: the migration is printed at once; force-complete and abort steer it") {
  auto& c = Shared();
  auto [src, dst] = c.Settled();
  REQUIRE(c.hv.SetTransferDuration(src, absl::Seconds(60)).ok());
  auto r = Cloudctl(c.server() + " --json live-migration " + kUuid + " " + dst +
                    " --request-id cli-test-force --completion-timeout 300 --max-downtime 400");
  REQUIRE(r.code == 0);
  auto j = nlohmann::json::parse(r.out);
  const std::string id = j["migration"]["id"];
  CHECK(j["migration"]["status"] == "accepted");
  CHECK(j["migration"]["options"]["max_downtime_ms"] == 400);
  CHECK(j["existing"] == false);
  // A retry with the same request id returns the same migration.
  r = Cloudctl(c.server() + " live-migration " + kUuid + " " + dst +
               " --request-id cli-test-force");
  REQUIRE(r.code == 0);
  CHECK(Has(r.out, "was already used"));
  CHECK(Has(r.out, id));
  // A second request without an id: conflict.
  r = Cloudctl(c.server() + " live-migration " + kUuid + " " + dst);
  CHECK(r.code == 4);
  CHECK(Has(r.err, "already migrating"));

  REQUIRE(testing::WaitFor(
      [&] {
        auto m = c.cloud.Get(id);
        return m.ok() && m->status() == e2e::v1::MIGRATION_STATUS_RUNNING;
      },
      absl::Seconds(30)));
  r = Cloudctl(c.server() + " migration-force-complete " + id);
  REQUIRE(r.code == 0);
  CHECK(Has(r.out, "Force-complete of migration"));
  auto m = c.cloud.WaitTerminal(id, absl::Seconds(30));
  CHECK(m.status() == e2e::v1::MIGRATION_STATUS_COMPLETED);
  r = Cloudctl(c.server() + " migration-show " + id);
  CHECK(Has(r.out, "force-completed by"));
  // Force-complete and abort of a finished migration: wrong state.
  CHECK(Cloudctl(c.server() + " migration-force-complete " + id).code == 5);
  CHECK(Cloudctl(c.server() + " migration-abort " + id).code == 5);

  // Abort: back on the source, cancelled.
  std::tie(src, dst) = c.Settled();
  REQUIRE(c.hv.SetTransferDuration(src, absl::Seconds(60)).ok());
  r = Cloudctl(c.server() + " --json live-migration " + kUuid + " " + dst);
  REQUIRE(r.code == 0);
  const std::string id2 = nlohmann::json::parse(r.out)["migration"]["id"];
  REQUIRE(testing::WaitFor(
      [&] {
        auto m2 = c.cloud.Get(id2);
        return m2.ok() && m2->status() == e2e::v1::MIGRATION_STATUS_RUNNING;
      },
      absl::Seconds(30)));
  r = Cloudctl(c.server() + " --requester carol migration-abort " + id2 +
               " --reason 'window closed'");
  REQUIRE(r.code == 0);
  CHECK(Has(r.out, "Abort of migration"));
  m = c.cloud.WaitTerminal(id2, absl::Seconds(30));
  CHECK(m.status() == e2e::v1::MIGRATION_STATUS_CANCELLED);
  REQUIRE(c.hv.SetTransferDuration(src, absl::ZeroDuration()).ok());
  r = Cloudctl(c.server() + " migration-show " + id2);
  CHECK(Has(r.out, "cancelled"));
  CHECK(Has(r.out, "carol"));
  CHECK(c.Settled().first == src);
}

TEST_CASE("--wait falls back to polling when the scheduler restarts mid-migration") {
  auto& c = Shared();
  auto [src, dst] = c.Settled();
  REQUIRE(c.hv.SetTransferDuration(src, absl::Seconds(8)).ok());
  const std::string log = WorkDir() + "/restart-wait.log";
  testing::ChildProcess cli(
      absl::StrCat(CleanEnv(), Binary(), " ", c.server(), " --timeout 5 live-migration ", kUuid,
                   " ", dst, " --wait"),
      log);
  int64_t n = 0;
  REQUIRE(testing::WaitFor([&] { return (n = MigrationNumber(ReadFile(log))) > 0; },
                           absl::Seconds(20)));
  REQUIRE(testing::WaitFor(
      [&] {
        auto m = c.cloud.Get(std::to_string(n));
        return m.ok() && m->status() == e2e::v1::MIGRATION_STATUS_RUNNING;
      },
      absl::Seconds(20)));
  c.cloud.KillScheduler();
  // cloudctl notices the outage (the point of this test): its stream breaks, and its first poll
  // finds no scheduler.
  const bool noticed = testing::WaitFor(
      [&] { return Has(ReadFile(log), "cannot reach the scheduler"); }, absl::Seconds(30));
  c.cloud.StartScheduler();  // whatever happened: the cases after this one share the scheduler
  REQUIRE(testing::WaitFor([&] { return !cli.Running(); }, absl::Seconds(120)));
  const int code = cli.Stop();
  const std::string out = ReadFile(log);
  REQUIRE(c.hv.SetTransferDuration(src, absl::ZeroDuration()).ok());
  INFO(out);
  INFO(c.cloud.SchedulerLog());
  CHECK(noticed);
  CHECK(code == 0);
  CHECK(Has(out, "polling the migration every second"));
  CHECK(Has(out, "the scheduler answers again"));
  CHECK(Has(out, absl::StrCat("Migration ", n, " completed")));
  CHECK(c.Settled().first == dst);
}

TEST_CASE("host-evacuate-live --wait moves every instance off; evacuation-list and -show") {
  auto& c = Shared();
  auto [src, dst] = c.Settled();
  auto r = Cloudctl(c.server() + " host-evacuate-live " + src + " --max-parallel 1 --wait");
  INFO(c.cloud.SchedulerLog());
  REQUIRE(r.code == 0);
  CHECK(Has(r.out, "Evacuation "));
  CHECK(Has(r.out, "succeeded"));
  CHECK(Has(r.out, "1 succeeded, 0 failed"));
  CHECK(c.Settled().first == dst);
  std::smatch m;
  REQUIRE(std::regex_search(r.out, m, std::regex("Evacuation ([0-9a-f-]{36}) of")));
  const std::string id = m[1];

  r = Cloudctl(c.server() + " evacuation-list --host " + src);
  REQUIRE(r.code == 0);
  CHECK(Has(r.out, "| " + id + " "));
  CHECK(Has(r.out, "completed"));
  r = Cloudctl(c.server() + " evacuation-show " + id);
  REQUIRE(r.code == 0);
  CHECK(Has(r.out, kUuid));
  CHECK(Has(r.out, "succeeded"));
  r = Cloudctl(c.server() + " --json evacuation-show " + id);
  REQUIRE(r.code == 0);
  const auto ev = nlohmann::json::parse(r.out);
  CHECK(ev["id"] == id);
  CHECK(ev["status"] == "completed");
  // The evacuation's migration names it (Migration.evacuation_id).
  REQUIRE(ev["items"].size() == 1);
  const std::string mig = ev["items"][0]["migration_id"];
  r = Cloudctl(c.server() + " --json migration-show " + mig);
  REQUIRE(r.code == 0);
  CHECK(nlohmann::json::parse(r.out)["evacuation_id"] == id);
  CHECK(Cloudctl(c.server() + " evacuation-show 00000000-0000-4000-8000-000000000000").code == 3);
  CHECK(Cloudctl(c.server() + " evacuation-show 999999").code == 2);
}

}  // namespace
}  // namespace livemig::cloudctl
