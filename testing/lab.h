// The two-host libvirt lab from C++ tests (integration_tests/lab/lab.sh does the work).
//
//   auto lab = Lab::Up();                 // sweeps leftovers of killed runs, builds the guest
//   lab->StartGuest("a", "g1", uuid);
//   lab->Heartbeat("g1") → {boots, last}
//
// Tests that use it need tags = ["no-sandbox", "exclusive"] and root. The destructor tears the
// lab down; a killed test's lab is swept by the next one (its owner pid is recorded).
#ifndef LIVEMIG_TESTING_LAB_H_
#define LIVEMIG_TESTING_LAB_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace livemig::testing {

class Lab {
 public:
  static absl::StatusOr<std::unique_ptr<Lab>> Up(const std::string& extra_args = "");
  ~Lab();

  const std::string& dir() const { return dir_; }
  std::string Uri(const std::string& host) const;      // qemu+unix:///system?socket=...
  std::string PeerUri(const std::string& host) const;  // qemu+tcp://10.250.0.X/system
  std::string Ip(const std::string& host) const;
  std::string InstancePath() const { return dir_ + "/instances"; }

  // `extra_args`: more of lab.sh guest-start's options (e.g. "--memory-mib 32 --disk FILE").
  absl::Status StartGuest(const std::string& host, const std::string& name, const std::string& uuid,
                          const std::string& extra_args = "");
  struct Beat {
    int boots = 0;
    long last = 0;
    int corrupt = 0;
  };
  absl::StatusOr<Beat> Heartbeat(const std::string& name);
  // Hosts where `name` runs ("a", "b").
  absl::StatusOr<std::vector<std::string>> Where(const std::string& name);
  // A shell command prefix that runs something inside host `host`'s namespaces.
  std::string ExecPrefix(const std::string& host) const;
  // Runs a shell command with lab.sh's path.
  absl::StatusOr<std::string> LabSh(const std::string& args) const;

 private:
  explicit Lab(std::string dir) : dir_(std::move(dir)) {}
  std::string dir_;
  std::string uri_a_, uri_b_, peer_a_, peer_b_, ip_a_, ip_b_;
};

std::string LabShPath();

}  // namespace livemig::testing

#endif  // LIVEMIG_TESTING_LAB_H_
