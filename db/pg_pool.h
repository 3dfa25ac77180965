// A small pool of libpqxx connections with the error policy of the whole db layer:
//
//   - each call runs in one transaction; serialization failures (40001) and deadlocks (40P01)
//     are retried a bounded number of times, then reported as Aborted;
//   - a lost or refused connection is Unavailable ("database unreachable ..."), the connection
//     is dropped, and the next call reconnects;
//   - every other libpqxx/PostgreSQL error becomes Internal with the server's message, except
//     the constraint violations callers ask to handle themselves (they see the exception).
//
// No call waits forever (a lost database fails in seconds):
//
//   - a call waits at most `acquire_timeout` for a free connection when all `size` are in use,
//     then fails Unavailable naming the pool, its size and the wait ("raise <size_flag> or
//     reduce the load");
//   - opening a connection is bounded by `connect_timeout` (libpq's, the whole start-up);
//   - the server ends a statement after `statement_timeout` (DeadlineExceeded); and a watchdog
//     closes the socket of a call that has had no answer `call_timeout` after it started
//     (Unavailable), for when the server cannot even be told: a black-holed network, a frozen
//     server, where TCP alone would wait for minutes;
//   - TCP keepalives (idle 5 s, then every 2 s, 3 probes) and tcp_user_timeout (10 s of
//     unacknowledged data) are added to the connection string unless it sets them, so that the
//     kernel drops a connection to a host that vanished (libpq ignores them on Unix sockets).
//
// Thread-safe. Connections are opened lazily, at most `size` at once. A scheduler runs two
// pools: one for the API and one for the control loop (db/README.md, "Connection pools").
#ifndef LIVEMIG_DB_PG_POOL_H_
#define LIVEMIG_DB_PG_POOL_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "pqxx/pqxx"

namespace livemig::db {

// The placeholder passwords the repository's examples show in connection strings
// (deploy/k8s/secrets.example.yaml's LIVEMIG_DB, deploy/README.md): refused by PgPool::Create,
// compared case-insensitively. Keep this list in step with the examples.
inline constexpr const char* kPlaceholderPasswords[] = {
    "REPLACE",     // deploy/k8s/secrets.example.yaml (the Secret livemig-db)
    "...",         // its comment and deploy/README.md (kubectl create secret ... password=...)
    "<password>",  // the usual spelling of one
};

class PgPool {
 public:
  struct Options {
    std::string conninfo;  // libpq connection string, e.g. "host=/run/x port=5432 dbname=..."
    int size = 8;          // most connections open at once
    int max_retries = 5;   // for serialization failures and deadlocks
    absl::Duration statement_timeout = absl::Seconds(30);
    absl::Duration connect_timeout = absl::Seconds(5);
    // The longest a call waits for a free connection when all `size` are in use.
    absl::Duration acquire_timeout = absl::Seconds(5);
    // Client-side bound on one attempt of a call, from when it has its connection: past it the
    // connection is closed under the call, which fails Unavailable. Zero: statement_timeout +
    // 5 s (the server's own timeout answers first when the server can be reached).
    absl::Duration call_timeout = absl::ZeroDuration();
    // Adds keepalives=1 keepalives_idle=5 keepalives_interval=2 keepalives_count=3
    // tcp_user_timeout=10000 to the connection string, each unless it is given there.
    bool tcp_keepalives = true;
    // For messages: the pool's name ("API", "control") and the flag that sets its size.
    std::string name = "database";
    std::string size_flag = "--db-pool";
  };

  // Connects once (a wrong connection string fails at start-up, clearly). Refuses, before
  // connecting, a connection string whose password is a placeholder of the examples
  // (kPlaceholderPasswords): InvalidArgument naming it, so that a copied example never reaches a
  // database whose owner was given that publicly known password.
  static absl::StatusOr<std::unique_ptr<PgPool>> Create(Options options);
  ~PgPool();
  PgPool(const PgPool&) = delete;
  PgPool& operator=(const PgPool&) = delete;

  // The libpq connection string the pool connects with: `options.conninfo` plus the keepalive
  // settings it lacks (see Options::tcp_keepalives), connect_timeout and the session settings
  // (statement_timeout, TimeZone=UTC, jit=off). Exposed for tests.
  static std::string ConnectionString(const Options& options);

  // Runs `fn` in a transaction and commits it. `what` names the operation in error messages.
  // `fn` may return a non-OK status to roll back without an exception. `fn` should only talk to
  // the database: its own slow work counts against call_timeout.
  absl::Status Run(const std::string& what, const std::function<absl::Status(pqxx::work&)>& fn);

  // Same, returning a value.
  template <typename T>
  absl::StatusOr<T> Query(const std::string& what,
                          const std::function<absl::StatusOr<T>(pqxx::work&)>& fn) {
    absl::StatusOr<T> out = absl::UnknownError("not run");
    absl::Status s = Run(what, [&](pqxx::work& w) -> absl::Status {
      out = fn(w);
      return out.status();
    });
    if (!s.ok()) return s;
    return out;
  }

  // For reads: runs `fn` outside a transaction block (each statement commits on its own), which
  // saves the BEGIN and COMMIT round trips. Use it for reads of one statement, or of several that
  // need no common snapshot. Same error and retry policy as Run.
  absl::Status Read(const std::string& what,
                    const std::function<absl::Status(pqxx::transaction_base&)>& fn);

  template <typename T>
  absl::StatusOr<T> ReadQuery(const std::string& what,
                              const std::function<absl::StatusOr<T>(pqxx::transaction_base&)>& fn) {
    absl::StatusOr<T> out = absl::UnknownError("not run");
    absl::Status s = Read(what, [&](pqxx::transaction_base& t) -> absl::Status {
      out = fn(t);
      return out.status();
    });
    if (!s.ok()) return s;
    return out;
  }

  // For a write that is ONE statement (several tables at once through data-modifying CTEs):
  // outside a transaction block the statement commits on its own, atomically, and saves the
  // BEGIN and COMMIT round trips. Statements `fn` runs after it (e.g. to explain why it changed
  // nothing) commit separately. A retried statement (serialization failure, deadlock) had
  // changed nothing.
  absl::Status Single(const std::string& what,
                      const std::function<absl::Status(pqxx::transaction_base&)>& fn) {
    return RunImpl(what, true, fn);
  }
  template <typename T>
  absl::StatusOr<T> SingleQuery(
      const std::string& what,
      const std::function<absl::StatusOr<T>(pqxx::transaction_base&)>& fn) {
    return ReadQuery<T>(what, fn);
  }

  const Options& options() const { return options_; }

  // Connections in use by calls now, and calls waiting for one (for tests and diagnostics).
  int InUse();
  int Waiting();

 private:
  explicit PgPool(Options options);
  // A connection, waiting at most options_.acquire_timeout for one to be free; `what` names the
  // call in the error.
  absl::StatusOr<std::unique_ptr<pqxx::connection>> Acquire(const std::string& what);
  void Release(std::unique_ptr<pqxx::connection> conn);
  absl::Status RunImpl(const std::string& what, bool read_only,
                       const std::function<absl::Status(pqxx::transaction_base&)>& fn);
  // The call watchdog: Watch() registers a call on `conn` until now + call_timeout (returns its
  // ticket, or 0 when the socket cannot be watched); Unwatch() ends it and says whether the
  // watchdog closed the socket.
  uint64_t Watch(const pqxx::connection& conn);
  bool Unwatch(uint64_t ticket);
  void WatchdogLoop();

  const Options options_;
  const std::string conninfo_;  // ConnectionString(options_)
  absl::Mutex mu_;
  std::vector<std::unique_ptr<pqxx::connection>> idle_ ABSL_GUARDED_BY(mu_);
  int open_ ABSL_GUARDED_BY(mu_) = 0;
  int in_use_ ABSL_GUARDED_BY(mu_) = 0;
  int waiting_ ABSL_GUARDED_BY(mu_) = 0;

  struct Watched {
    int fd;  // a duplicate of the connection's socket, owned here (no reuse race on close)
    absl::Time deadline;
    bool fired = false;
  };
  absl::Mutex watch_mu_;
  std::map<uint64_t, Watched> watched_ ABSL_GUARDED_BY(watch_mu_);
  uint64_t next_ticket_ ABSL_GUARDED_BY(watch_mu_) = 1;
  bool stop_watchdog_ ABSL_GUARDED_BY(watch_mu_) = false;
  std::thread watchdog_;
};

// Maps a libpqxx exception to a Status naming the operation. Exposed for tests.
absl::Status StatusFromPqxx(const std::string& what, const std::exception& e);

// The SQLSTATE of a libpqxx exception, or "" if it carries none.
std::string SqlState(const std::exception& e);

}  // namespace livemig::db

#endif  // LIVEMIG_DB_PG_POOL_H_
