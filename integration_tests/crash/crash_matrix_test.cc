// The crash matrix with the FakeDriver (whose hypervisor state outlives a killed agent, as a real
// hypervisor outlives its management agent): for every persisted step boundary of a migration,
// on the success path and on the rollback path, the scheduler is paused at that boundary by a
// test hook (common/test_hooks.h) and one of {scheduler, source agent, destination agent} is
// SIGKILLed and started again; and every agent is killed after doing a step's work but before
// answering. After each case, within 60 s:
//   - the migration is completed, failed or cancelled (post-copy is off: never error);
//   - the VM runs on exactly one host of the fake hypervisor, in its state from before;
//   - the scheduler's database puts the instance on that host, idle (no task state, no
//     active migration);
//   - no memory claim is left on any host, nor on the migration.
// The list of boundaries is not hand-kept: a baseline migration of each path records every point
// it passes (points.log), and the matrix is built from that, so a new step is covered at once.
#include <sys/stat.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "driver/fake_driver.h"
#include "integration_tests/scheduler_e2e/e2e.h"
#include "testing/process.h"
#include "testing/run_command.h"

namespace livemig::e2e {
namespace {

constexpr char kUuid[] = "44444444-2222-4333-8444-555555555555";
constexpr char kPausedState[] = "running";

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}
bool Exists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0;
}

std::string StatusName(v1::MigrationStatus s) { return v1::MigrationStatus_Name(s); }

// One cloud for the whole matrix: PostgreSQL, the scheduler and two FakeDriver agents on TCP.
class CrashCloud {
 public:
  CrashCloud() {
    ::mkdir(hooks_.c_str(), 0755);
    // Only the processes of this test get the hooks (they inherit the environment).
    ::setenv("LIVEMIG_TEST_HOOK_DIR", hooks_.c_str(), 1);
    cloud_.StartScheduler(
        "--lease 2 --service-down-time 30 --report-interval 1 --agent-deadline 5");
    for (const char* h : {"host-a", "host-b"}) {
      agent_flags_[h] = absl::StrCat("--driver fake --fake-state-dir ", state_,
                                     " --listen 127.0.0.1:", testing::FreePort());
      cloud_.StartAgent(h, agent_flags_[h]);
    }
    REQUIRE(testing::WaitFor(
        [&] {
          auto snap = hv_.Snapshot();
          return snap.ok() && (*snap)["hosts"].contains("host-a") &&
                 (*snap)["hosts"].contains("host-b");
        },
        absl::Seconds(20)));
    REQUIRE(hv_.CreateDomain("host-a", kUuid, "crash-vm", 512).ok());
    INFO(cloud_.SchedulerLog());
    REQUIRE(cloud_.WaitInstanceOn(kUuid, "host-a", absl::Seconds(20)));
  }
  ~CrashCloud() { ::unsetenv("LIVEMIG_TEST_HOOK_DIR"); }

  Cloud& cloud() { return cloud_; }
  driver::FakeHypervisor& hv() { return hv_; }
  const std::string& hooks() const { return hooks_; }

  // The one host the VM runs on, or "" (with the reason in *why) when that is not exactly one.
  std::string Where(std::string* why) {
    auto w = hv_.Locate(kUuid);
    if (!w.ok()) {
      *why = w.status().ToString();
      return "";
    }
    if (w->size() != 1 || (*w)[0].second != kPausedState) {
      *why = "the hypervisors hold:";
      for (auto& [h, s] : *w) absl::StrAppend(why, " ", h, "=", s);
      return "";
    }
    return (*w)[0].first;
  }

  void KillAndRestart(const std::string& who) {
    if (who == "scheduler") {
      cloud_.KillScheduler();
      cloud_.StartScheduler();
    } else {
      cloud_.agent(who)->Kill();
      cloud_.StartAgent(who, agent_flags_[who]);
    }
  }

  void ClearHooks() {
    for (const char* f : {"arm", "paused", "resume"}) std::remove((hooks_ + "/" + f).c_str());
  }
  void ClearFailures() {
    hv_.Mutate([](nlohmann::json& st, bool* changed) {
         for (auto& [name, h] : st["hosts"].items()) {
           if (h.contains("failures") && !h["failures"].empty()) {
             h["failures"] = nlohmann::json::object();
             *changed = true;
           }
         }
         return absl::OkStatus();
       })
        .IgnoreError();
  }

  // Points passed so far, in order; the log is truncated.
  std::vector<std::string> TakePoints() {
    const std::string path = hooks_ + "/points.log";
    std::vector<std::string> out = absl::StrSplit(Slurp(path), '\n', absl::SkipWhitespace());
    std::ofstream(path, std::ios::trunc);
    return out;
  }

 private:
  // First, so removed last: after cloud_ has stopped the processes that write there.
  testing::RemoveDirAtEnd remove_{testing::MakeShortTempDir("crash")};
  std::string dir_ = remove_.path;
  std::string hooks_ = dir_ + "/hooks";
  Cloud cloud_{dir_};
  std::string state_ = dir_ + "/fake";
  driver::FakeHypervisor hv_{state_};
  std::map<std::string, std::string> agent_flags_;
};

CrashCloud& TheCloud() {
  // One cloud for all cases (PostgreSQL start is slow), stopped and removed at exit.
  static std::unique_ptr<CrashCloud> c = std::make_unique<CrashCloud>();
  return *c;
}

// Where a case pauses and whom it kills. Host roles are resolved per case, because the VM
// alternates between the hosts.
struct Case {
  std::string path;   // "success" or "rollback"
  std::string point;  // "scheduler:<step>:<phase>" or "agent:<role>:<step>:<phase>"
  std::string kill;   // "scheduler", "source" or "destination"
  std::string Name() const { return absl::StrCat(path, " | pause ", point, " | kill ", kill); }
};

// Checks the promise after a case; returns "" or what broke.
std::string CheckConverged(CrashCloud& c, const std::string& migration_id, absl::Time restarted,
                           v1::MigrationStatus* final_status, std::string* host) {
  sv1::Migration m;
  const bool terminal = testing::WaitFor(
      [&] {
        auto r = c.cloud().Get(migration_id);
        if (!r.ok()) return false;
        m = *r;
        return m.status() == v1::MIGRATION_STATUS_COMPLETED ||
               m.status() == v1::MIGRATION_STATUS_FAILED ||
               m.status() == v1::MIGRATION_STATUS_CANCELLED ||
               m.status() == v1::MIGRATION_STATUS_ERROR;
      },
      restarted + absl::Seconds(60) - absl::Now());
  *final_status = m.status();
  if (!terminal) {
    return absl::StrCat("not finished 60 s after the restart: ", StatusName(m.status()),
                        " at step ", m.step());
  }
  if (m.status() == v1::MIGRATION_STATUS_ERROR) {
    return absl::StrCat("ended in error: ", m.failure_reason());
  }
  std::string why;
  *host = c.Where(&why);
  if (host->empty()) return "the VM is not on exactly one host: " + why;
  if (m.status() == v1::MIGRATION_STATUS_COMPLETED && *host != m.dest_host()) {
    return absl::StrCat("completed but the VM runs on ", *host, ", not on ", m.dest_host());
  }
  if (m.status() != v1::MIGRATION_STATUS_COMPLETED && *host != m.source_host()) {
    return absl::StrCat(StatusName(m.status()), " but the VM runs on ", *host, ", not on ",
                        m.source_host());
  }
  if (m.memory_claimed_mib() != 0) {
    return absl::StrCat("the migration still claims ", m.memory_claimed_mib(), " MiB");
  }
  // The database agrees, and the instance is free again.
  sv1::Instance inst;
  const bool agrees = testing::WaitFor(
      [&] {
        grpc::ClientContext ctx;
        c.cloud().Prepare(&ctx, absl::Seconds(2));
        sv1::GetInstanceRequest r;
        r.set_instance_uuid(kUuid);
        return c.cloud().api().GetInstance(&ctx, r, &inst).ok() && inst.host() == *host &&
               inst.state() == v1::DOMAIN_STATE_RUNNING &&
               inst.task_state() == sv1::TASK_STATE_NONE && inst.active_migration_id().empty();
      },
      absl::Seconds(15));
  if (!agrees) {
    return absl::StrCat("the database says host=", inst.host(), " state=", inst.state(),
                        " task_state=", inst.task_state(),
                        " active_migration=", inst.active_migration_id(), "; the hypervisor says ",
                        *host);
  }
  grpc::ClientContext ctx;
  c.cloud().Prepare(&ctx);
  sv1::ListHostsRequest lr;
  sv1::ListHostsResponse hosts;
  grpc::Status s = c.cloud().api().ListHosts(&ctx, lr, &hosts);
  if (!s.ok()) return "ListHosts: " + s.error_message();
  for (const auto& h : hosts.hosts()) {
    if (h.memory_claimed_mib() != 0) {
      return absl::StrCat(h.inventory().hostname(), " still has ", h.memory_claimed_mib(),
                          " MiB claimed");
    }
  }
  return "";
}

// Runs one migration from wherever the VM is to the other host, pausing and killing as `k`
// says (or, with an empty point, just records the points it passes).
std::string RunCase(CrashCloud& c, const Case& k, v1::MigrationStatus* final_status) {
  std::string why;
  const std::string src = c.Where(&why);
  if (src.empty()) return "before the case: " + why;
  const std::string dst = src == "host-a" ? "host-b" : "host-a";
  c.ClearHooks();
  c.ClearFailures();
  if (k.path == "rollback") {
    absl::Status s = c.hv().SetFailure(src, "transfer", "injected transfer failure");
    if (!s.ok()) return s.ToString();
  }
  // The point, with the role replaced by the host that plays it in this case.
  std::string point = k.point;
  if (absl::StartsWith(point, "agent:source:")) {
    point = absl::StrCat("agent:", src, point.substr(12));
  } else if (absl::StartsWith(point, "agent:destination:")) {
    point = absl::StrCat("agent:", dst, point.substr(17));
  }
  if (!point.empty()) std::ofstream(c.hooks() + "/arm") << point << "\n";

  auto r = c.cloud().Migrate(kUuid, dst);
  if (!r.ok()) return "LiveMigrate: " + r.status().ToString();
  const std::string id = r->migration().id();
  absl::Time restarted = absl::Now();
  if (!point.empty()) {
    if (!testing::WaitFor([&] { return Exists(c.hooks() + "/paused"); }, absl::Seconds(30))) {
      return absl::StrCat("the pause point ", point, " was not reached within 30 s");
    }
    const std::string victim =
        k.kill == "scheduler" ? "scheduler" : (k.kill == "source" ? src : dst);
    c.KillAndRestart(victim);
    restarted = absl::Now();
    // The paused process was not the one killed: let it go on.
    if (Exists(c.hooks() + "/paused")) std::ofstream(c.hooks() + "/resume") << "go\n";
  }
  std::string host;
  std::string broke = CheckConverged(c, id, restarted, final_status, &host);
  c.ClearFailures();
  return broke;
}

// "scheduler:<step>:<phase>" and "agent:<host>:<step>:<phase>" points of a baseline run, with
// hosts replaced by their roles, in order, without repeats.
std::vector<std::string> Boundaries(const std::vector<std::string>& points, const std::string& src,
                                    const std::string& dst) {
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (const std::string& p : points) {
    std::string q = p;
    if (absl::StartsWith(p, "agent:" + src + ":")) {
      q = "agent:source:" + p.substr(6 + src.size() + 1);
    } else if (absl::StartsWith(p, "agent:" + dst + ":")) {
      q = "agent:destination:" + p.substr(6 + dst.size() + 1);
    }
    if (seen.insert(q).second) out.push_back(q);
  }
  return out;
}

void RunMatrix(const std::string& path) {
  CrashCloud& c = TheCloud();
  // The baseline: no pause; records the boundaries this path passes.
  std::string why;
  const std::string src = c.Where(&why);
  REQUIRE(!src.empty());
  const std::string dst = src == "host-a" ? "host-b" : "host-a";
  c.TakePoints();
  v1::MigrationStatus st;
  const std::string base = RunCase(c, {path, "", ""}, &st);
  INFO(base);
  REQUIRE(base.empty());
  REQUIRE(st == (path == "success" ? v1::MIGRATION_STATUS_COMPLETED : v1::MIGRATION_STATUS_FAILED));
  const std::vector<std::string> points = Boundaries(c.TakePoints(), src, dst);
  std::vector<Case> cases;
  for (const std::string& p : points) {
    if (absl::StartsWith(p, "scheduler:")) {
      for (const char* who : {"scheduler", "source", "destination"})
        cases.push_back({path, p, who});
    } else if (absl::EndsWith(p, ":after")) {
      // An agent that did a step's work and dies before answering.
      cases.push_back({path, p, absl::StartsWith(p, "agent:source:") ? "source" : "destination"});
    }
  }
  // The matrix must cover the steps of docs/DESIGN.md § The migration flow on this path.
  std::vector<std::string> must = {"scheduler:pre_checks:before",
                                   "scheduler:check_can_live_migrate_on_dest:before",
                                   "scheduler:check_can_live_migrate_on_src:before",
                                   "scheduler:pre_live_migration:before",
                                   "scheduler:live_migration:before",
                                   "scheduler:live_migration:started"};
  if (path == "success") {
    for (const char* p : {"scheduler:live_migration:after", "scheduler:post_live_migration:before",
                          "scheduler:post_live_migration:after",
                          "scheduler:post_live_migration_at_destination:before",
                          "scheduler:post_live_migration_at_destination:after",
                          "agent:source:post_live_migration:after",
                          "agent:destination:post_live_migration_at_destination:after"}) {
      must.push_back(p);
    }
  } else {
    for (const char* p :
         {"scheduler:rollback_live_migration_at_destination:before",
          "scheduler:rollback_live_migration_at_destination:after",
          "scheduler:rollback_live_migration:before", "scheduler:rollback_live_migration:after",
          "agent:source:rollback_live_migration:after",
          "agent:destination:rollback_live_migration_at_destination:after"}) {
      must.push_back(p);
    }
  }
  for (const std::string& p : must) {
    INFO("boundary " << p << " was not passed by the baseline run");
    CHECK(std::find(points.begin(), points.end(), p) != points.end());
  }

  int passed = 0, failed = 0;
  std::map<std::string, int> outcomes;
  for (const Case& k : cases) {
    const absl::Time t0 = absl::Now();
    v1::MigrationStatus final_status = v1::MIGRATION_STATUS_UNSPECIFIED;
    const std::string broke = RunCase(c, k, &final_status);
    const std::string took =
        absl::FormatDuration(absl::Trunc(absl::Now() - t0, absl::Milliseconds(100)));
    std::cout << (broke.empty() ? "  ok    " : "  FAIL  ") << k.Name() << " -> "
              << StatusName(final_status) << " (" << took << ")"
              << (broke.empty() ? "" : ": " + broke) << std::endl;
    INFO(k.Name());
    INFO(c.cloud().SchedulerLog());
    CHECK(broke == "");
    ++outcomes[StatusName(final_status)];
    (broke.empty() ? passed : failed)++;
    c.ClearHooks();
  }
  std::cout << "crash matrix (" << path << " path, FakeDriver): " << cases.size() << " cases over "
            << points.size() << " boundaries; outcomes:";
  for (auto& [s, n] : outcomes) std::cout << " " << s << "=" << n;
  std::cout << std::endl;
  // Counted by deploy/run-tests.sh in place of Catch2's test cases.
  std::cout << "CASES: " << passed << " passed, " << failed << " failed" << std::endl;
  CHECK(cases.size() >= 30);
}

TEST_CASE("crash matrix: the success path, every boundary x {scheduler, source, destination}") {
  RunMatrix("success");
}

TEST_CASE("crash matrix: the rollback path, every boundary x {scheduler, source, destination}") {
  RunMatrix("rollback");
}

}  // namespace
}  // namespace livemig::e2e
