// The Xen lab from C++ tests (integration_tests/xenlab/xenlab.sh does the work): two nested
// Xen 4.17 hosts, xena and xenb, under QEMU TCG, each with libvirt's libxl driver and the
// product's compute agent started as production starts it.
//
//   auto lab = XenLab::Up({.dir = d, .pki = d + "/pki", .agent = RunfilePath(...)});
//   lab->StartAgent("a");                         // --config /etc/livemig/compute-agent.conf
//   lab->StartGuest("a", "g1", uuid, "pvh");
//   lab->Heartbeat("g1") → {boots, last, gaps, max_pause_ms}
//
// The dom0 image is built once per machine into /var/cache/livemig/xenlab (XenLab::Image).
// Tests need tags no-sandbox + exclusive and root. The destructor stops the hosts by their
// recorded pids; a killed test's lab is swept by the next Up() (its owner pid is recorded).
#ifndef LIVEMIG_TESTING_XEN_LAB_H_
#define LIVEMIG_TESTING_XEN_LAB_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace livemig::testing {

class XenLab {
 public:
  struct Options {
    std::string dir;    // the lab's directory (created by the caller, under /tmp)
    std::string pki;    // a CA made by deploy/pki.sh init; host certificates are issued into it
    std::string agent;  // the compute_agent binary copied into both dom0s
    std::string xen_b;  // "" or "noshadow": host b boots Xen built without shadow paging
    // Shared volumes (xenlab.sh up --volumes): an iSCSI LUN both dom0s reach, DRBD resource r0
    // between them, the agents' volumes file /mnt/lab/volumes.conf.
    bool volumes = false;
  };
  // Builds or finds the cached image for `agent`; returns its directory.
  static absl::StatusOr<std::string> Image(const std::string& agent);
  static absl::StatusOr<std::unique_ptr<XenLab>> Up(const Options& o);
  ~XenLab();

  const std::string& dir() const { return dir_; }
  // A value of the lab's lab.env (SSH_A, AGENT_A, REGISTRY, LINK_A, NAME_A, ...).
  std::string Env(const std::string& key) const;
  static std::string Name(const std::string& h) { return h == "a" ? "xena" : "xenb"; }
  // The 127.0.0.1 port the scheduler's host registry must listen on (QEMU forwards the dom0s'
  // 10.0.2.100:8771 to it).
  int RegistryPort() const;

  absl::StatusOr<std::string> Ssh(const std::string& h, const std::string& command) const;
  absl::StatusOr<std::string> Virsh(const std::string& h, const std::string& args) const;
  absl::Status StartAgent(const std::string& h, const std::string& extra_flags = "");
  absl::Status KillAgent(const std::string& h, const std::string& signal = "KILL");
  std::string AgentLog(const std::string& h, int lines = 40) const;
  // `kind`: "pv" or "pvh". `disk`: a dom0 block device that becomes the guest's xvda, to which
  // it writes a counter record every 200 ms (DiskRecord reads it).
  absl::Status StartGuest(const std::string& h, const std::string& name, const std::string& uuid,
                          const std::string& kind, const std::string& disk = "");
  // The guest's last record on `dev` as host h reads it (O_DIRECT): its counter, or an error
  // saying what was read.
  absl::StatusOr<long> DiskRecord(const std::string& h, const std::string& dev) const;
  // The counter of the last "disk <n> <ms> ok" line on the guest's consoles (both hosts); 0 when
  // none. `errors`: how many writes it reported failed.
  absl::StatusOr<long> DiskConsole(const std::string& name, int* errors = nullptr) const;
  struct Beat {
    int boots = 0;
    long last = 0;
    int gaps = 0;
    long max_pause_ms = 0;
    long ticks = 0;
  };
  // `since`: max_pause_ms counts only the ticks after this one (e.g. the last before a migration).
  absl::StatusOr<Beat> Heartbeat(const std::string& name, long since = 0) const;
  // Hosts ("a", "b") whose hypervisor runs `name`.
  absl::StatusOr<std::vector<std::string>> Where(const std::string& name) const;
  absl::StatusOr<std::string> Sh(const std::string& args) const;  // xenlab.sh ARGS

 private:
  explicit XenLab(std::string dir) : dir_(std::move(dir)) {}
  std::string dir_;
  std::map<std::string, std::string> env_;
};

std::string XenLabShPath();

}  // namespace livemig::testing

#endif  // LIVEMIG_TESTING_XEN_LAB_H_
