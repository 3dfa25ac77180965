// The fixture of the multi-process tests on the FakeDriver: a Cloud (PostgreSQL, the real
// scheduler and compute_agent binaries) whose agents all run `--driver fake` on one shared
// fake-hypervisor state directory, which the test reads and drives (driver/fake_driver.h).
#ifndef LIVEMIG_INTEGRATION_TESTS_SCHEDULER_E2E_FAKE_CLOUD_H_
#define LIVEMIG_INTEGRATION_TESTS_SCHEDULER_E2E_FAKE_CLOUD_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "driver/fake_driver.h"
#include "integration_tests/scheduler_e2e/e2e.h"
#include "testing/run_command.h"

namespace livemig::e2e {

class FakeCloud {
 public:
  // Where a domain is: (host, state) per copy on the fake hypervisor.
  using Loc = std::vector<std::pair<std::string, std::string>>;
  struct Host {
    std::string name;
    // the agent's extra flags, e.g. "--fake-memory-mib 1280"; @DIR@ stands for dir()
    std::string flags;
  };
  struct Options {
    std::string tag;              // names the temporary directory (/tmp/lm-<tag>-…)
    std::string scheduler_flags;  // e.g. "--lease 3 --report-interval 1"
    std::vector<Host> hosts;
    // LIVEMIG_TEST_HOOK_DIR=<dir>/hooks for the processes it starts (common/test_hooks.h)
    bool test_hooks = false;
    // the scheduler's TCP API listeners on TLS (Cloud::ApiTlsFlags); clients trust ca_pem()
    bool api_tls = false;
  };
  // Starts the scheduler, an agent per host (each on a free loopback port), and waits until
  // every host is in the fake hypervisor's state.
  explicit FakeCloud(const Options& o);
  ~FakeCloud();  // stops the processes, then removes the directory
  FakeCloud(const FakeCloud&) = delete;
  FakeCloud& operator=(const FakeCloud&) = delete;

  Cloud& cloud() { return cloud_; }
  driver::FakeHypervisor& hv() { return hv_; }
  const std::string& dir() const { return dir_; }
  const std::string& hooks() const { return hooks_; }

  // (Re)starts the agent of `host` with the fake driver and its extra `flags`.
  void StartAgent(const std::string& host, const std::string& flags = "");
  // A new running domain of `mib` MiB on `host` ("vm-<n>", `kind` as CreateDomain takes it).
  std::string CreateVm(const std::string& host, uint64_t mib, const std::string& kind = "");
  // The same, once the scheduler knows it on `host`.
  std::string NewVm(const std::string& host, uint64_t mib = 512, const std::string& kind = "");
  Loc Where(const std::string& uuid);
  // cloudctl against the scheduler's API socket, with `env` (e.g. "LIVEMIG_USER=x") and no
  // LIVEMIG_TOKEN: its exit status and its output (stdout and stderr).
  std::pair<int, std::string> Cloudctl(const std::string& args, const std::string& env = "");

 protected:
  // Removes the directory when everything else is gone (members end in reverse order).
  testing::RemoveDirAtEnd remove_;  // first, so removed last
  std::string dir_;
  std::string hooks_;
  std::string state_;
  Cloud cloud_;
  driver::FakeHypervisor hv_;
  int vms_ = 0;
};

// For the tests of the HTTP APIs: the scheduler with API tokens and its REST and Compute APIs over
// HTTPS on 127.0.0.1:`port` (Cloud::ApiTlsFlags; clients trust cloud->ca_pem()), and the agents of
// host-a and host-b on the fake driver. The token file holds kOpToken (an operator, `operator_id`)
// and kReaderToken (a reader, `reader_id`); the Cloud's own calls carry kOpToken.
struct HttpsApiCloud {
  HttpsApiCloud(const std::string& tag, const std::string& operator_id,
                const std::string& reader_id);
  ~HttpsApiCloud();  // stops the processes, then removes `dir`
  HttpsApiCloud(const HttpsApiCloud&) = delete;
  HttpsApiCloud& operator=(const HttpsApiCloud&) = delete;

  std::string dir;
  std::unique_ptr<Cloud> cloud;
  int port;
  std::string state;  // the fake hypervisors' state directory
  std::unique_ptr<driver::FakeHypervisor> hv;
};

// Starts the agent of `host` with the fake driver on the state directory `state`, listening on
// 127.0.0.1:`port` (0: a free port), with extra `flags`.
void StartFakeAgent(Cloud& cloud, const std::string& state, const std::string& host,
                    const std::string& flags = "", int port = 0);
// REQUIREs that every host of `hosts` is in the fake hypervisor's state within `timeout`.
void WaitFakeHosts(driver::FakeHypervisor& hv, const std::vector<std::string>& hosts,
                   absl::Duration timeout);
// Starts an agent per host of `hosts` (StartFakeAgent, each with `flags`) and waits until every
// one is in `hv`'s state (WaitFakeHosts, 20 s).
void StartFakeAgents(Cloud& cloud, driver::FakeHypervisor& hv, const std::string& state,
                     const std::vector<std::string>& hosts, const std::string& flags = "");

// Starts a migration of `uuid` to `dest` with an hour's completion timeout (for a transfer made
// long with SetTransferDuration); waits until it is RUNNING and its transfer runs in the fake
// hypervisor (the status is written before the agent's LiveMigration starts the transfer, which
// reads the host's transfer duration then). Returns the migration id.
std::string StartLongMigration(Cloud& cloud, driver::FakeHypervisor& hv, const std::string& uuid,
                               const std::string& dest);
// Waits (REQUIRE, at most `timeout`) until the fake hypervisor holds migration `id`'s transfer,
// running: the scheduler's `running` and transfer_started_at are written before the source
// agent's LiveMigration creates it.
void WaitFakeTransferRunning(driver::FakeHypervisor& hv, const std::string& id,
                             absl::Duration timeout);

// SIGSTOPs `host`'s agent while holding the fake hypervisors' state lock (REQUIREs it), so that
// the stopped agent cannot be frozen inside it: that would hang every other agent on the shared
// state, which no real hypervisor does when one host's agent stops.
void StopAgentOutsideState(Cloud& cloud, driver::FakeHypervisor& hv, const std::string& host);

}  // namespace livemig::e2e

#endif  // LIVEMIG_INTEGRATION_TESTS_SCHEDULER_E2E_FAKE_CLOUD_H_
