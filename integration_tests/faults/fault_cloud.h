// Shared fixture of the fault tests: a Cloud (real PostgreSQL, the scheduler binary, compute
// agents with the FakeDriver over mutual TLS on 127.0.0.1) plus the checks every fault test makes:
// the VM runs on exactly one host, and the database says which.
#ifndef LIVEMIG_INTEGRATION_TESTS_FAULTS_FAULT_CLOUD_H_
#define LIVEMIG_INTEGRATION_TESTS_FAULTS_FAULT_CLOUD_H_

#include <string>
#include <utility>
#include <vector>

#include "driver/fake_driver.h"
#include "integration_tests/scheduler_e2e/e2e.h"

namespace livemig::faults {

namespace v1 = ::livemig::v1;
namespace sv1 = ::livemig::scheduler::v1;
using Loc = std::vector<std::pair<std::string, std::string>>;

struct FaultCloud {
  // Starts PostgreSQL and the scheduler with `scheduler_flags` (no agents yet).
  explicit FaultCloud(const std::string& scheduler_flags);
  ~FaultCloud();

  // Starts the agent of `host` listening on 127.0.0.1:`port` (0: a free port), advertising
  // `advertise` (default: its listen address); waits until its fake host is registered.
  void StartAgent(const std::string& host, int port = 0, const std::string& advertise = "",
                  const std::string& extra = "");
  // Creates a running VM on `host` and waits until the scheduler knows it there.
  void AddVm(const std::string& uuid, const std::string& host, uint64_t memory_mib = 512);
  // Starts the agents of host-a and host-b, then adds the VM `uuid` on host-a.
  void StartTwoHostsWithVm(const std::string& uuid);

  // The hypervisors' truth: the hosts that have the domain, with its state.
  Loc Where(const std::string& uuid);
  Loc Where();  // of the first VM added
  // The database's instance row: "host|task_state" ('' for NULL).
  std::string DbInstance(const std::string& uuid);
  // Migration rows (any status) of the instance, and the active ones.
  int MigrationRows(const std::string& uuid);
  int ActiveMigrationRows(const std::string& uuid);
  // Intent and result events of a migration (by its UUID), oldest first: "step:kind:outcome".
  std::vector<std::string> EventSteps(const std::string& migration_uuid);

  // CHECKs that the VM runs on `host` only, and that the database says so with no claim and no
  // active migration left.
  void ExpectSettledOn(const std::string& uuid, const std::string& host);
  // CHECKs that the VM runs on exactly one host and that the database's host is that one;
  // returns the host.
  std::string ExpectOneHost(const std::string& uuid);

  // Migrates through the first scheduler's API (REQUIREs acceptance); returns the migration id.
  std::string Migrate(const std::string& uuid, const std::string& dest,
                      const v1::MigrationOptions& o = {});
  // REQUIREs that migration `id` is running with its transfer started, within 30 s.
  void WaitTransferRunning(const std::string& id);
  // Makes transfers from `source` last `transfer`, migrates `uuid` (on `source`) to `dest` and
  // waits until its transfer runs; returns the migration id.
  std::string MigrateTransferring(const std::string& uuid, const std::string& source,
                                  const std::string& dest, absl::Duration transfer);

  // Removes `dir` last, once the processes below have stopped (members die in reverse order).
  struct RemoveDir {
    std::string dir;
    ~RemoveDir();
  };
  std::string dir;
  RemoveDir remove_dir{dir};
  e2e::Cloud cloud;
  std::string state;
  driver::FakeHypervisor hv;
  std::string first_vm;
};

}  // namespace livemig::faults

#endif  // LIVEMIG_INTEGRATION_TESTS_FAULTS_FAULT_CLOUD_H_
