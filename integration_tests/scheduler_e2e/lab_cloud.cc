#include "integration_tests/scheduler_e2e/lab_cloud.h"

#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "testing/process.h"

namespace livemig::e2e {

LabCloud::LabCloud(bool test_hooks) : http_port(testing::FreePort()) {
  auto l = testing::Lab::Up();
  if (!l.ok()) FAIL(l.status().ToString());
  lab = std::move(l).value();
  if (test_hooks) {
    hooks = lab->dir() + "/hooks";
    ::mkdir(hooks.c_str(), 0755);
    ::setenv("LIVEMIG_TEST_HOOK_DIR", hooks.c_str(), 1);  // inherited by the processes below
  }
  cloud = std::make_unique<Cloud>(lab->dir());
  std::ofstream(lab->dir() + "/tokens") << kToken << " operator lab-operator\n";
  cloud->set_token(kToken);
  cloud->StartScheduler(absl::StrCat("--lease 4 --service-down-time 30 --report-interval 1 ",
                                     "--tokens-file ", lab->dir(), "/tokens --http-listen ",
                                     "127.0.0.1:", http_port, cloud->ApiTlsFlags()));
  for (const std::string h : {"a", "b"}) {
    cloud->StartAgent("lab-" + h, AgentFlags(h), lab->ExecPrefix(h));
  }
  REQUIRE(lab->StartGuest("a", kGuest, kUuid).ok());
  INFO(cloud->SchedulerLog());
  REQUIRE(cloud->WaitInstanceOn(kUuid, "lab-a", absl::Seconds(30)));
}

LabCloud::~LabCloud() {
  cloud.reset();  // agents and scheduler first, then the lab
  lab.reset();
  if (!hooks.empty()) ::unsetenv("LIVEMIG_TEST_HOOK_DIR");
}

std::string LabCloud::AgentFlags(const std::string& h) const {
  return absl::StrCat("--listen unix:", lab->dir(), "/agent-", h, ".sock --libvirt-uri '",
                      lab->Uri(h), "' --profile qemu --instance-path ", lab->InstancePath(),
                      " --reserved-mib 256 --migration-uri ", lab->PeerUri(h),
                      " --migration-data-host ", lab->Ip(h), " --no-tunnel --state-dir ",
                      lab->dir(), "/agent-state-", h);
}

void LabCloud::KillAndRestartAgent(const std::string& host) {
  const std::string h = host.substr(4);
  cloud->agent(host)->Kill();
  cloud->StartAgent(host, AgentFlags(h), lab->ExecPrefix(h));
}

std::string LabCloud::Where() {
  auto w = lab->Where(kGuest);
  REQUIRE(w.ok());
  std::string s;
  for (const auto& h : *w) s += h;
  return s;
}

}  // namespace livemig::e2e
