// A throwaway PostgreSQL 15 server for tests (deploy/pgctl.sh does the work, so the tests and
// the quickstart start PostgreSQL the same way).
//
//   auto pg = PgServer::Start();            // sweeps leftovers of killed runs first
//   auto conninfo = pg->CreateDatabase();   // a fresh, empty database per test case
//
// The server runs from a private directory under $TMPDIR (/tmp), listens only on a Unix socket
// there, and is destroyed by the destructor; a detached watcher destroys it too if the test
// process dies without running destructors (SIGKILL on a timeout). Tests that use it must be
// tagged "no-sandbox" and "exclusive": inside Bazel's sandbox initdb cannot switch user.
#ifndef LIVEMIG_TESTING_PG_SERVER_H_
#define LIVEMIG_TESTING_PG_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "testing/run_command.h"

namespace livemig::testing {

class PgServer {
 public:
  // `tcp`: the server also listens on 127.0.0.1 on a free port (tcp_port()), e.g. for a proxy
  // between it and its clients; the Unix socket stays (its connection strings use it).
  static absl::StatusOr<std::unique_ptr<PgServer>> Start(bool tcp = false);
  ~PgServer();

  // The TCP port on 127.0.0.1 (0 unless started with `tcp`).
  int tcp_port() const { return tcp_port_; }
  // `conninfo` (one of CreateDatabase's) with its host and port replaced by 127.0.0.1:`port`.
  static std::string OverTcp(const std::string& conninfo, int port);

  // The server's own "postgres" database.
  const std::string& admin_conninfo() const { return conninfo_; }
  // Creates an empty database with a unique name; returns its connection string.
  absl::StatusOr<std::string> CreateDatabase();
  // Stops and restarts the server (database outage tests); data is kept.
  absl::Status Stop();
  absl::Status Restart();
  const std::string& dir() const { return dir_; }

 private:
  PgServer(std::string dir, std::string conninfo, int tcp_port)
      : dir_(dir), conninfo_(conninfo), tcp_port_(tcp_port) {}
  // The environment pgctl.sh runs with (the TCP settings, if any).
  std::string Env() const;
  std::string dir_;
  std::string conninfo_;
  int tcp_port_ = 0;
  int next_db_ = 0;
};

// The path of deploy/pgctl.sh from a test's runfiles (or the source tree).
std::string PgctlPath();

}  // namespace livemig::testing

#endif  // LIVEMIG_TESTING_PG_SERVER_H_
