#include "integration_tests/scheduler_e2e/fake_cloud.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "testing/process.h"
#include "testing/run_command.h"

namespace livemig::e2e {
namespace {

// The directory first, and the hooks' environment before the cloud starts any process.
std::string MakeDir(const FakeCloud::Options& o) {
  std::string dir = testing::MakeShortTempDir(o.tag);
  if (o.test_hooks) {
    const std::string hooks = dir + "/hooks";
    ::mkdir(hooks.c_str(), 0755);
    // Only this test's processes get the hooks (they inherit the environment); a point pauses
    // only when armed.
    ::setenv("LIVEMIG_TEST_HOOK_DIR", hooks.c_str(), 1);
  }
  return dir;
}

}  // namespace

FakeCloud::FakeCloud(const Options& o)
    : remove_{MakeDir(o)},
      dir_(remove_.path),
      hooks_(o.test_hooks ? dir_ + "/hooks" : ""),
      state_(dir_ + "/fake"),
      cloud_(dir_),
      hv_(state_) {
  cloud_.StartScheduler(o.api_tls ? o.scheduler_flags + cloud_.ApiTlsFlags() : o.scheduler_flags);
  std::vector<std::string> names;
  for (const auto& h : o.hosts) {
    StartAgent(h.name, absl::StrReplaceAll(h.flags, {{"@DIR@", dir_}}));
    names.push_back(h.name);
  }
  WaitFakeHosts(hv_, names, absl::Seconds(30));
}

FakeCloud::~FakeCloud() {
  if (!hooks_.empty()) ::unsetenv("LIVEMIG_TEST_HOOK_DIR");
}

void FakeCloud::StartAgent(const std::string& host, const std::string& flags) {
  StartFakeAgent(cloud_, state_, host, flags);
}

void StartFakeAgent(Cloud& cloud, const std::string& state, const std::string& host,
                    const std::string& flags, int port) {
  cloud.StartAgent(host,
                   absl::StrCat("--driver fake --fake-state-dir ", state, " --listen 127.0.0.1:",
                                port == 0 ? testing::FreePort() : port, " ", flags));
}

void WaitFakeHosts(driver::FakeHypervisor& hv, const std::vector<std::string>& hosts,
                   absl::Duration timeout) {
  REQUIRE(testing::WaitFor(
      [&] {
        auto snap = hv.Snapshot();
        if (!snap.ok()) return false;
        for (const auto& h : hosts) {
          if (!(*snap)["hosts"].contains(h)) return false;
        }
        return true;
      },
      timeout));
}

HttpsApiCloud::HttpsApiCloud(const std::string& tag, const std::string& operator_id,
                             const std::string& reader_id)
    : dir(testing::MakeShortTempDir(tag)), port(testing::FreePort()), state(dir + "/fake") {
  std::ofstream(dir + "/tokens") << kOpToken << " operator " << operator_id << "\n"
                                 << kReaderToken << " reader " << reader_id << "\n";
  cloud = std::make_unique<Cloud>(dir);
  cloud->set_token(kOpToken);
  cloud->StartScheduler(absl::StrCat("--tokens-file ", dir, "/tokens --http-listen 127.0.0.1:",
                                     port, " --report-interval 1", cloud->ApiTlsFlags()));
  hv = std::make_unique<driver::FakeHypervisor>(state);
  StartFakeAgents(*cloud, *hv, state, {"host-a", "host-b"});
}

HttpsApiCloud::~HttpsApiCloud() {
  cloud.reset();
  testing::RunCommand("rm -rf " + dir).IgnoreError();
}

void StartFakeAgents(Cloud& cloud, driver::FakeHypervisor& hv, const std::string& state,
                     const std::vector<std::string>& hosts, const std::string& flags) {
  for (const auto& h : hosts) StartFakeAgent(cloud, state, h, flags);
  WaitFakeHosts(hv, hosts, absl::Seconds(20));
}

std::string FakeCloud::CreateVm(const std::string& host, uint64_t mib, const std::string& kind) {
  char uuid[40];
  std::snprintf(uuid, sizeof(uuid), "fa4ec10d-0000-4000-8000-%012d", ++vms_);
  REQUIRE(
      hv_.CreateDomain(host, uuid, absl::StrCat("vm-", vms_), mib, "running", {"br-guest"}, kind)
          .ok());
  return uuid;
}

std::string FakeCloud::NewVm(const std::string& host, uint64_t mib, const std::string& kind) {
  const std::string uuid = CreateVm(host, mib, kind);
  INFO(cloud_.SchedulerLog());
  REQUIRE(cloud_.WaitInstanceOn(uuid, host, absl::Seconds(20)));
  return uuid;
}

FakeCloud::Loc FakeCloud::Where(const std::string& uuid) {
  auto w = hv_.Locate(uuid);
  REQUIRE(w.ok());
  return *w;
}

std::pair<int, std::string> FakeCloud::Cloudctl(const std::string& args, const std::string& env) {
  const std::string out = absl::StrCat(dir_, "/cloudctl.out");
  const int rc =
      std::system(absl::StrCat("env -u LIVEMIG_TOKEN ", env, " HOME=", dir_, " ",
                               testing::RunfilePath("cloudctl/cloudctl"), " --server unix:", dir_,
                               "/api.sock ", args, " >", out, " 2>&1 </dev/null")
                      .c_str());
  auto text = testing::RunCommand("cat " + out);
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, text.ok() ? *text : ""};
}

std::string StartLongMigration(Cloud& cloud, driver::FakeHypervisor& hv, const std::string& uuid,
                               const std::string& dest) {
  v1::MigrationOptions o;
  o.set_completion_timeout_s(3600);
  const std::string id = cloud.StartMigration(uuid, dest, o);
  cloud.RequireStatus(id, v1::MIGRATION_STATUS_RUNNING, absl::Seconds(30));
  WaitFakeTransferRunning(hv, id, absl::Seconds(30));
  return id;
}

void WaitFakeTransferRunning(driver::FakeHypervisor& hv, const std::string& id,
                             absl::Duration timeout) {
  INFO("the fake hypervisor's transfer of migration " << id);
  REQUIRE(testing::WaitFor(
      [&] {
        auto s = hv.Snapshot();
        if (!s.ok() || !(*s)["transfers"].contains(id)) return false;
        return (*s)["transfers"][id].value("state", "") == "running";
      },
      timeout));
}

namespace {

// Whether every thread of every process in process group `pgid` is stopped (state T or t in
// /proc/<pid>/task/<tid>/stat), and there is at least one.
bool GroupStopped(pid_t pgid) {
  int threads = 0;
  std::error_code ec;
  for (const auto& p : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = p.path().filename();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    for (const auto& t : std::filesystem::directory_iterator(p.path() / "task", ec)) {
      std::ifstream in(t.path() / "stat");
      std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      const size_t close = stat.rfind(')');
      if (close == std::string::npos) continue;  // gone meanwhile
      char state = 0;
      int ppid = 0, pgrp = 0;
      if (sscanf(stat.c_str() + close + 1, " %c %d %d", &state, &ppid, &pgrp) != 3) continue;
      if (pgrp != pgid) break;  // another process: its threads share its group
      if (state != 'T' && state != 't') return false;
      ++threads;
    }
  }
  return threads > 0;
}

}  // namespace

void StopAgentOutsideState(Cloud& cloud, driver::FakeHypervisor& hv, const std::string& host) {
  testing::ChildProcess* agent = cloud.agent(host);
  REQUIRE(agent != nullptr);
  // SIGSTOP is delivered asynchronously: a thread of the agent waiting for the lock could still
  // take it once it is released, before it stops. So the lock is held until every thread of the
  // agent is stopped.
  bool stopped = false;
  REQUIRE(hv.Mutate([&](nlohmann::json&, bool*) {
              agent->Signal(SIGSTOP);
              stopped =
                  testing::WaitFor([&] { return GroupStopped(agent->pid()); }, absl::Seconds(20));
              return absl::OkStatus();
            }).ok());
  REQUIRE(stopped);
}

}  // namespace livemig::e2e
