// The whole system on real Xen for end-to-end tests: PostgreSQL and the scheduler on this
// machine, the Xen lab's two nested hosts (xena, xenb) each running the compute agent in its
// dom0 as production does (--config rendered from deploy/config's Xen example: libxl profile,
// xen:///system, xen+tls:// migration URI, tunnelled stream), and guests started in the lab.
// Root only; tests need tags no-sandbox + exclusive.
#ifndef LIVEMIG_INTEGRATION_TESTS_XENLAB_XEN_CLOUD_H_
#define LIVEMIG_INTEGRATION_TESTS_XENLAB_XEN_CLOUD_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "integration_tests/scheduler_e2e/e2e.h"
#include "testing/xen_lab.h"

namespace livemig::e2e {

inline constexpr char kXenToken[] = "xen-lab-operator-token-0123456789abcdef";

// cloudctl's table text as one line: borders and line breaks out, runs of spaces as one (the
// table wraps long reasons).
std::string FlattenTable(const std::string& table);

struct XenCloud {
  std::string dir;
  std::unique_ptr<Cloud> cloud;
  std::unique_ptr<testing::XenLab> lab;

  // `xen_b`: "" or "noshadow" (host b boots Xen built without shadow paging); `agent_flags`:
  // extra flags on both agents' production command line (e.g. "--no-tunnel"); `volumes`: the
  // lab's shared volumes (an iSCSI LUN, DRBD r0), listed in both agents' --volumes-file.
  explicit XenCloud(const std::string& xen_b = "", const std::string& agent_flags = "",
                    bool volumes = false);
  ~XenCloud();

  // Starts the agent of host "a" or "b" with extra flags on production's command line and waits
  // until the scheduler sees the host up. The flags are kept for RestartAgent.
  void StartAgent(const std::string& h, const std::string& extra_flags = "");
  // SIGTERM and start again, with new flags.
  void RestartAgent(const std::string& h, const std::string& extra_flags);
  // The scheduler with the test hooks on (empty flags: the last ones).
  void StartScheduler(const std::string& flags = "");
  void KillAndRestartScheduler();
  // SIGKILL (a crash) and start again with the same flags.
  void KillAndRestartAgent(const std::string& h);
  // The test hooks' directory (common/test_hooks.h): on for the scheduler only.
  std::string hooks;
  // A guest to start in the lab: on host h ("a"/"b"), of `kind` ("pv", "pvh"), with `disk` as
  // testing::XenLab::StartGuest takes them.
  struct Guest {
    std::string h, name, uuid, kind, disk;
  };
  // Starts the guests, then waits (up to 60 s each) until the scheduler knows each on its host.
  void StartGuests(const std::vector<Guest>& guests);
  // Waits until the scheduler lists `host` (xena, xenb) up, reported after `after`.
  bool WaitHostUp(const std::string& host, absl::Duration timeout);
  // The lab hosts ("a", "b") whose hypervisor runs the guest, concatenated.
  std::string Where(const std::string& guest);
  // A channel to host h's agent as the scheduler opens it: its forwarded port on 127.0.0.1,
  // mutual TLS with the scheduler's certificate, the agent's certificate checked for xena/xenb.
  std::shared_ptr<grpc::Channel> AgentChannel(const std::string& h);
  // cloudctl against the scheduler's API with the operator token; returns exit code and output.
  struct Run {
    int code = -1;
    std::string out;
  };
  Run Cloudctl(const std::string& args);

  // Waits (up to 60 s) until the guest's counter passed `after` (it keeps running where it is);
  // the pause is the longest gap between ticks after `after`.
  testing::XenLab::Beat WaitTicking(const std::string& guest, long after);
  // Live-migrates `guest` to host `to` ("a"/"b") with cloudctl --wait and checks the guest went
  // on: one boot, its counter continuing, running on exactly the destination, the scheduler
  // agreeing. Prints the time and the guest's longest pause, labelled with `mode`.
  void MigrateWithCloudctl(const std::string& guest, const std::string& uuid, const std::string& to,
                           const std::string& mode);

 private:
  std::map<std::string, std::string> agent_flags_;
};

}  // namespace livemig::e2e

#endif  // LIVEMIG_INTEGRATION_TESTS_XENLAB_XEN_CLOUD_H_
