// A small pool of libpqxx connections with the error policy of the whole db layer:
//
//   - each call runs in one transaction; serialization failures (40001) and deadlocks (40P01)
//     are retried a bounded number of times, then reported as Aborted;
//   - a lost or refused connection is Unavailable ("database unreachable ..."), the connection
//     is dropped, and the next call reconnects;
//   - every other libpqxx/PostgreSQL error becomes Internal with the server's message, except
//     the constraint violations callers ask to handle themselves (they see the exception).
//
// Thread-safe. Connections are opened lazily, at most `size` at once; callers wait for one.
#ifndef LIVEMIG_DB_PG_POOL_H_
#define LIVEMIG_DB_PG_POOL_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "pqxx/pqxx"

namespace livemig::db {

class PgPool {
 public:
  struct Options {
    std::string conninfo;  // libpq connection string, e.g. "host=/run/x port=5432 dbname=..."
    int size = 8;          // most connections open at once
    int max_retries = 5;   // for serialization failures and deadlocks
    absl::Duration statement_timeout = absl::Seconds(30);
    absl::Duration connect_timeout = absl::Seconds(5);
  };

  static absl::StatusOr<std::unique_ptr<PgPool>> Create(Options options);

  // Runs `fn` in a transaction and commits it. `what` names the operation in error messages.
  // `fn` may return a non-OK status to roll back without an exception.
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

 private:
  explicit PgPool(Options options) : options_(std::move(options)) {}
  absl::StatusOr<std::unique_ptr<pqxx::connection>> Acquire();
  void Release(std::unique_ptr<pqxx::connection> conn);
  absl::Status RunImpl(const std::string& what, bool read_only,
                       const std::function<absl::Status(pqxx::transaction_base&)>& fn);

  const Options options_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<pqxx::connection>> idle_ ABSL_GUARDED_BY(mu_);
  int open_ ABSL_GUARDED_BY(mu_) = 0;
};

// Maps a libpqxx exception to a Status naming the operation. Exposed for tests.
absl::Status StatusFromPqxx(const std::string& what, const std::exception& e);

// The SQLSTATE of a libpqxx exception, or "" if it carries none.
std::string SqlState(const std::exception& e);

}  // namespace livemig::db

#endif  // LIVEMIG_DB_PG_POOL_H_
