#include "db/pg_pool.h"

#include <thread>

#include "absl/strings/str_cat.h"

namespace livemig::db {

std::string SqlState(const std::exception& e) {
  // libpqxx 6.4's transaction_rollback family is not an sql_error: name their states here.
  if (dynamic_cast<const pqxx::deadlock_detected*>(&e) != nullptr) return "40P01";
  if (dynamic_cast<const pqxx::serialization_failure*>(&e) != nullptr) return "40001";
  if (auto* se = dynamic_cast<const pqxx::sql_error*>(&e)) return se->sqlstate();
  return "";
}

absl::Status StatusFromPqxx(const std::string& what, const std::exception& e) {
  std::string msg = e.what();
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  if (dynamic_cast<const pqxx::broken_connection*>(&e) != nullptr) {
    return absl::UnavailableError(absl::StrCat(
        "database unreachable during ", what, ": ", msg,
        " (check that PostgreSQL is running and the connection string is right; the next "
        "call reconnects)"));
  }
  const std::string state = SqlState(e);
  if (state == "40001" || state == "40P01") {
    return absl::AbortedError(
        absl::StrCat(what, ": concurrent change (SQLSTATE ", state, "), retry: ", msg));
  }
  if (state == "57P01" || state == "57P02" || state == "57P03" || state.rfind("08", 0) == 0) {
    return absl::UnavailableError(
        absl::StrCat("database unavailable during ", what, " (SQLSTATE ", state, "): ", msg));
  }
  if (state == "57014") {
    return absl::DeadlineExceededError(absl::StrCat(what, ": statement timed out: ", msg));
  }
  if (dynamic_cast<const pqxx::in_doubt_error*>(&e) != nullptr) {
    return absl::UnavailableError(absl::StrCat(
        what, ": the connection was lost during COMMIT; the outcome is unknown: ", msg));
  }
  return absl::InternalError(absl::StrCat(what, " failed", state.empty() ? "" : " (SQLSTATE ",
                                          state, state.empty() ? "" : ")", ": ", msg));
}

absl::StatusOr<std::unique_ptr<PgPool>> PgPool::Create(Options options) {
  if (options.conninfo.empty()) {
    return absl::InvalidArgumentError(
        "no database connection string: pass --db (e.g. \"host=/run/livemig/pg port=5432 "
        "user=livemig dbname=livemig\")");
  }
  if (options.size < 1) return absl::InvalidArgumentError("database pool size must be >= 1");
  auto pool = std::unique_ptr<PgPool>(new PgPool(std::move(options)));
  // Connect once now so that a wrong connection string fails at start-up, clearly.
  auto conn = pool->Acquire();
  if (!conn.ok()) return conn.status();
  pool->Release(std::move(conn).value());
  return pool;
}

absl::StatusOr<std::unique_ptr<pqxx::connection>> PgPool::Acquire() {
  {
    absl::MutexLock l(&mu_);
    auto can_take = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !idle_.empty() || open_ < options_.size;
    };
    mu_.Await(absl::Condition(&can_take));
    if (!idle_.empty()) {
      auto c = std::move(idle_.back());
      idle_.pop_back();
      return c;
    }
    ++open_;
  }
  try {
    std::string conninfo = absl::StrCat(
        options_.conninfo,
        " connect_timeout=", std::max<int64_t>(1, absl::ToInt64Seconds(options_.connect_timeout)),
        " options='-c statement_timeout=", absl::ToInt64Milliseconds(options_.statement_timeout),
        " -c TimeZone=UTC -c jit=off'");
    return std::make_unique<pqxx::connection>(conninfo);
  } catch (const std::exception& e) {
    absl::MutexLock l(&mu_);
    --open_;
    return StatusFromPqxx("connect", e);
  }
}

void PgPool::Release(std::unique_ptr<pqxx::connection> conn) {
  absl::MutexLock l(&mu_);
  if (conn && conn->is_open()) {
    idle_.push_back(std::move(conn));
  } else {
    --open_;
  }
}

absl::Status PgPool::Run(const std::string& what,
                         const std::function<absl::Status(pqxx::work&)>& fn) {
  return RunImpl(what, false, [&](pqxx::transaction_base& t) {
    return fn(static_cast<pqxx::work&>(t));  // RunImpl makes a pqxx::work when !read_only
  });
}

absl::Status PgPool::Read(const std::string& what,
                          const std::function<absl::Status(pqxx::transaction_base&)>& fn) {
  return RunImpl(what, true, fn);
}

absl::Status PgPool::RunImpl(const std::string& what, bool read_only,
                             const std::function<absl::Status(pqxx::transaction_base&)>& fn) {
  absl::Status last;
  for (int attempt = 0; attempt <= options_.max_retries; ++attempt) {
    auto conn_or = Acquire();
    if (!conn_or.ok()) return conn_or.status();
    std::unique_ptr<pqxx::connection> conn = std::move(conn_or).value();
    bool retry = false;
    try {
      absl::Status s;
      if (read_only) {
        pqxx::nontransaction w(*conn, what);
        s = fn(w);
      } else {
        pqxx::work w(*conn, what);
        s = fn(w);
        if (s.ok()) {
          w.commit();
        } else {
          w.abort();
        }
      }
      Release(std::move(conn));
      return s;
    } catch (const pqxx::broken_connection& e) {
      conn.reset();  // reconnect on the next call
      last = StatusFromPqxx(what, e);
    } catch (const std::exception& e) {
      const std::string state = SqlState(e);
      last = StatusFromPqxx(what, e);
      retry = state == "40001" || state == "40P01";
      if (state.rfind("57P", 0) == 0 || state.rfind("08", 0) == 0) conn.reset();
    }
    Release(std::move(conn));
    if (!retry) return last;
    std::this_thread::sleep_for(std::chrono::milliseconds(5 * (1 << attempt)));
  }
  return last;
}

}  // namespace livemig::db
