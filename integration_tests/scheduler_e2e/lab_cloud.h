// The whole system in the two-host lab for end-to-end tests: PostgreSQL and the scheduler in the
// root namespace, one compute agent inside each lab host (libvirt, QEMU profile), a real VM
// (kGuest, kUuid) started on lab-a. Root only; tests need tags no-sandbox + exclusive.
#ifndef LIVEMIG_INTEGRATION_TESTS_SCHEDULER_E2E_LAB_CLOUD_H_
#define LIVEMIG_INTEGRATION_TESTS_SCHEDULER_E2E_LAB_CLOUD_H_

#include <memory>
#include <string>

#include "integration_tests/scheduler_e2e/e2e.h"
#include "testing/lab.h"

namespace livemig::e2e {

inline constexpr char kGuest[] = "sg1";
inline constexpr char kUuid[] = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
inline constexpr char kToken[] = "lab-operator-token-0123456789abcdef";

struct LabCloud {
  std::unique_ptr<testing::Lab> lab;
  std::unique_ptr<Cloud> cloud;
  int http_port;
  std::string hooks;  // the test hooks' directory; empty when they are off

  // `test_hooks`: start every process with LIVEMIG_TEST_HOOK_DIR (common/test_hooks.h).
  explicit LabCloud(bool test_hooks = false);
  ~LabCloud();
  // Restarts one lab agent ("lab-a" or "lab-b") after a SIGKILL.
  void KillAndRestartAgent(const std::string& host);
  // The lab hosts ("a", "b") whose hypervisor holds the guest, concatenated.
  std::string Where();

 private:
  std::string AgentFlags(const std::string& h) const;
};

}  // namespace livemig::e2e

#endif  // LIVEMIG_INTEGRATION_TESTS_SCHEDULER_E2E_LAB_CLOUD_H_
