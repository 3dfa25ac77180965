// A whole cloud from the real binaries for end-to-end tests: PostgreSQL, the scheduler and
// compute agents, with a PKI made by deploy/pki.sh, and a client of the scheduler API.
#ifndef LIVEMIG_INTEGRATION_TESTS_SCHEDULER_E2E_E2E_H_
#define LIVEMIG_INTEGRATION_TESTS_SCHEDULER_E2E_E2E_H_

#include <map>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "proto/scheduler.grpc.pb.h"
#include "testing/pg_server.h"
#include "testing/process.h"

namespace livemig::e2e {

namespace v1 = ::livemig::v1;
namespace sv1 = ::livemig::scheduler::v1;

// The API tokens of the tests whose scheduler runs with a token file: an operator's and a
// reader's.
inline constexpr char kOpToken[] = "op-token-0123456789abcdef0123456789";
inline constexpr char kReaderToken[] = "rd-token-0123456789abcdef0123456789";

// The absl::Status of a gRPC status: the same code and message.
absl::Status FromGrpc(const grpc::Status& s);

class Cloud {
 public:
  // `dir`: where sockets, logs and the PKI live.
  explicit Cloud(std::string dir);
  ~Cloud();

  const std::string& dir() const { return dir_; }
  const std::string& pki() const { return pki_; }
  const std::string& db() const { return db_; }
  // Issues a certificate (CN = name, SAN DNS:name).
  void Issue(const std::string& name);
  // The flags that put the scheduler's TCP API listeners (--listen on TCP, --http-listen) on
  // TLS: --api-tls-cert/--api-tls-key of a server certificate for 127.0.0.1 and localhost
  // (pki.sh issue-server <pki> api, issued on the first call). Clients trust ca_pem().
  std::string ApiTlsFlags();
  std::string ca_pem() const { return pki_ + "/ca.pem"; }
  void StartScheduler(const std::string& extra_flags = "");
  void KillScheduler();  // SIGKILL
  // Starts an agent with `command_prefix` (e.g. a lab exec prefix) and extra flags; it reports
  // to the scheduler's registry.
  void StartAgent(const std::string& host, const std::string& flags,
                  const std::string& command_prefix = "");
  testing::ChildProcess* agent(const std::string& host) { return agents_[host].get(); }
  testing::ChildProcess* scheduler() { return scheduler_.get(); }
  sv1::SchedulerApi::Stub& api() { return *api_; }

  // Waits until the scheduler knows `uuid` running on `host`.
  bool WaitInstanceOn(const std::string& uuid, const std::string& host, absl::Duration t);
  // Waits for a terminal status; returns the migration (with events).
  sv1::Migration WaitTerminal(const std::string& id, absl::Duration t);
  absl::StatusOr<sv1::LiveMigrateResponse> Migrate(const std::string& uuid, const std::string& dest,
                                                   const v1::MigrationOptions& o = {});
  // Migrate, REQUIREd to be accepted; returns the migration id.
  std::string StartMigration(const std::string& uuid, const std::string& dest,
                             const v1::MigrationOptions& o = {});
  absl::StatusOr<sv1::Migration> Get(const std::string& id);
  // Waits until migration `id` has status `want`; `last` (when given) gets the last migration
  // read.
  bool WaitStatus(const std::string& id, v1::MigrationStatus want, absl::Duration t,
                  sv1::Migration* last = nullptr);
  // The same, REQUIREd, with the last migration read and the scheduler's log as its context.
  void RequireStatus(const std::string& id, v1::MigrationStatus want, absl::Duration t);
  // AbortMigration of `id` by `requester` with `reason` (empty: none).
  absl::Status Abort(const std::string& id, const std::string& requester,
                     const std::string& reason = "");
  absl::StatusOr<sv1::Host> GetHost(const std::string& name);
  absl::StatusOr<sv1::Instance> GetInstance(const std::string& uuid);
  std::string SchedulerLog() const;
  // A second scheduler process on the same database (its own --scheduler-id, API socket
  // api2.sock, registry socket registry2.sock, log scheduler2.log); agents keep reporting to the
  // first one. Waits until its API answers.
  void StartSecondScheduler(const std::string& extra_flags = "");
  testing::ChildProcess* scheduler2() { return scheduler2_.get(); }
  sv1::SchedulerApi::Stub& api2() { return *api2_; }
  // The PostgreSQL server (e.g. to Stop() and Restart() it).
  testing::PgServer& pg() { return *pg_; }
  // Runs SQL on the cloud's database with psql; returns the rows, one per line, fields
  // separated by '|' (psql -A -t).
  absl::StatusOr<std::string> Sql(const std::string& query) const;
  // The bearer token sent on every API call (when the scheduler runs with --tokens-file).
  void set_token(const std::string& token) { token_ = token; }
  // Where the host registry listens (default unix:<dir>/registry.sock); set before
  // StartScheduler, e.g. "127.0.0.1:PORT" for agents in the Xen lab's dom0s.
  void set_registry_listen(const std::string& address) { registry_listen_ = address; }
  // Sets the deadline and the token on a client context.
  void Prepare(grpc::ClientContext* ctx, absl::Duration deadline = absl::Seconds(10)) const;

 private:
  std::string dir_, pki_, db_, token_, registry_listen_;
  bool api_cert_issued_ = false;
  std::unique_ptr<testing::PgServer> pg_;
  std::unique_ptr<testing::ChildProcess> scheduler_;
  std::string scheduler_flags_;
  std::map<std::string, std::unique_ptr<testing::ChildProcess>> agents_;
  std::unique_ptr<sv1::SchedulerApi::Stub> api_;
  std::unique_ptr<testing::ChildProcess> scheduler2_;
  std::unique_ptr<sv1::SchedulerApi::Stub> api2_;
};

}  // namespace livemig::e2e

#endif  // LIVEMIG_INTEGRATION_TESTS_SCHEDULER_E2E_E2E_H_
