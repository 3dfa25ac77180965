#include "db/pg_pool.h"

#include <fcntl.h>
#include <postgresql/libpq-fe.h>
#include <sys/socket.h>
#include <unistd.h>

#include <set>
#include <thread>

#include "absl/strings/match.h"
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

PgPool::PgPool(Options options)
    : options_(std::move(options)), conninfo_(ConnectionString(options_)) {
  watchdog_ = std::thread([this] { WatchdogLoop(); });
}

PgPool::~PgPool() {
  {
    absl::MutexLock l(&watch_mu_);
    stop_watchdog_ = true;
  }
  if (watchdog_.joinable()) watchdog_.join();
}

std::string PgPool::ConnectionString(const Options& options) {
  std::string out = options.conninfo;
  if (options.tcp_keepalives) {
    // The keys the caller set win: add only the missing ones.
    std::set<std::string> given;
    char* err = nullptr;
    if (PQconninfoOption* opts = PQconninfoParse(options.conninfo.c_str(), &err)) {
      for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
        if (o->val != nullptr) given.insert(o->keyword);
      }
      PQconninfoFree(opts);
    }
    if (err != nullptr) PQfreemem(err);  // a malformed string: connecting will say why
    for (const auto& [key, value] :
         std::vector<std::pair<std::string, std::string>>{{"keepalives", "1"},
                                                          {"keepalives_idle", "5"},
                                                          {"keepalives_interval", "2"},
                                                          {"keepalives_count", "3"},
                                                          {"tcp_user_timeout", "10000"}}) {
      if (given.count(key) == 0) absl::StrAppend(&out, " ", key, "=", value);
    }
  }
  absl::StrAppend(
      &out,
      " connect_timeout=", std::max<int64_t>(1, absl::ToInt64Seconds(options.connect_timeout)),
      " options='-c statement_timeout=", absl::ToInt64Milliseconds(options.statement_timeout),
      " -c TimeZone=UTC -c jit=off'");
  return out;
}

absl::StatusOr<std::unique_ptr<PgPool>> PgPool::Create(Options options) {
  if (options.conninfo.empty()) {
    return absl::InvalidArgumentError(
        "no database connection string: pass --db (e.g. \"host=/run/livemig/pg port=5432 "
        "user=livemig dbname=livemig\")");
  }
  {
    char* err = nullptr;
    std::string placeholder;
    if (PQconninfoOption* opts = PQconninfoParse(options.conninfo.c_str(), &err)) {
      for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
        if (o->val == nullptr || std::string(o->keyword) != "password") continue;
        for (const char* p : kPlaceholderPasswords) {
          if (absl::EqualsIgnoreCase(o->val, p)) placeholder = p;
        }
      }
      PQconninfoFree(opts);
    }
    if (err != nullptr) PQfreemem(err);  // a malformed string: connecting will say why
    if (!placeholder.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the database connection string's password is the placeholder '", placeholder,
          "' of the examples (deploy/k8s/secrets.example.yaml), not a secret: put the real "
          "password of the owner role there (the one deploy/postgres/setup-database.sh set)"));
    }
  }
  if (options.size < 1) return absl::InvalidArgumentError("database pool size must be >= 1");
  if (options.acquire_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("database pool: the acquire timeout must be positive");
  }
  if (options.call_timeout <= absl::ZeroDuration()) {
    options.call_timeout = options.statement_timeout + absl::Seconds(5);
  }
  auto pool = std::unique_ptr<PgPool>(new PgPool(std::move(options)));
  // Connect once now so that a wrong connection string fails at start-up, clearly.
  auto conn = pool->Acquire("connect");
  if (!conn.ok()) return conn.status();
  pool->Release(std::move(conn).value());
  return pool;
}

absl::StatusOr<std::unique_ptr<pqxx::connection>> PgPool::Acquire(const std::string& what) {
  {
    absl::MutexLock l(&mu_);
    auto can_take = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !idle_.empty() || open_ < options_.size;
    };
    ++waiting_;
    const bool got = mu_.AwaitWithTimeout(absl::Condition(&can_take), options_.acquire_timeout);
    --waiting_;
    if (!got) {
      return absl::UnavailableError(absl::StrCat(
          "database pool exhausted during ", what, ": all ", options_.size, " connections of the ",
          options_.name, " pool stayed in use for ", absl::FormatDuration(options_.acquire_timeout),
          waiting_ > 0 ? absl::StrCat(" (", waiting_, " other calls waiting)") : "", "; raise ",
          options_.size_flag, " or reduce the load on the scheduler, then retry"));
    }
    ++in_use_;
    if (!idle_.empty()) {
      auto c = std::move(idle_.back());
      idle_.pop_back();
      return c;
    }
    ++open_;
  }
  try {
    return std::make_unique<pqxx::connection>(conninfo_);
  } catch (const std::exception& e) {
    absl::MutexLock l(&mu_);
    --open_;
    --in_use_;
    return StatusFromPqxx("connect", e);
  }
}

void PgPool::Release(std::unique_ptr<pqxx::connection> conn) {
  absl::MutexLock l(&mu_);
  --in_use_;
  if (conn && conn->is_open()) {
    idle_.push_back(std::move(conn));
  } else {
    --open_;
  }
}

int PgPool::InUse() {
  absl::MutexLock l(&mu_);
  return in_use_;
}

int PgPool::Waiting() {
  absl::MutexLock l(&mu_);
  return waiting_;
}

uint64_t PgPool::Watch(const pqxx::connection& conn) {
  const int sock = conn.sock();
  if (sock < 0) return 0;
  // A duplicate of the socket, closed only by Unwatch: if libpq closes its own descriptor
  // meanwhile, its number may be reused, but this one still names the same socket.
  const int fd = fcntl(sock, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return 0;
  absl::MutexLock l(&watch_mu_);
  const uint64_t ticket = next_ticket_++;
  // Every deadline is now + call_timeout, so none is earlier than the watchdog's next wake-up
  // (it sleeps at most call_timeout): no need to wake it.
  watched_[ticket] = Watched{fd, absl::Now() + options_.call_timeout};
  return ticket;
}

bool PgPool::Unwatch(uint64_t ticket) {
  if (ticket == 0) return false;
  absl::MutexLock l(&watch_mu_);
  auto it = watched_.find(ticket);
  if (it == watched_.end()) return false;
  const bool fired = it->second.fired;
  close(it->second.fd);
  watched_.erase(it);
  return fired;
}

void PgPool::WatchdogLoop() {
  absl::MutexLock l(&watch_mu_);
  while (!stop_watchdog_) {
    const absl::Time now = absl::Now();
    absl::Time wake = now + options_.call_timeout;
    for (auto& [ticket, w] : watched_) {
      if (w.fired) continue;
      if (w.deadline <= now) {
        // The call has had no answer in time: end it. libpq sees the connection closed and the
        // call fails at once (RunImpl says why).
        shutdown(w.fd, SHUT_RDWR);
        w.fired = true;
      } else {
        wake = std::min(wake, w.deadline);
      }
    }
    auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(watch_mu_) { return stop_watchdog_; };
    watch_mu_.AwaitWithDeadline(absl::Condition(&stopping), wake);
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
    auto conn_or = Acquire(what);
    if (!conn_or.ok()) return conn_or.status();
    std::unique_ptr<pqxx::connection> conn = std::move(conn_or).value();
    const uint64_t ticket = Watch(*conn);
    // The watchdog closed the connection under the call: say so, with the error the call saw
    // when it tells more than "connection lost" (e.g. a COMMIT whose outcome is unknown); never
    // reuse the connection.
    auto timed_out = [&](const std::string& seen) {
      return absl::UnavailableError(absl::StrCat(
          "database did not answer within ", absl::FormatDuration(options_.call_timeout),
          " during ", what,
          ": the connection was closed (PostgreSQL or the network to it is down or not "
          "answering; the next call reconnects)",
          seen.empty() ? "" : ": ", seen));
    };
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
      // Finished as the watchdog fired: its outcome stands, its connection goes.
      if (Unwatch(ticket)) conn.reset();
      Release(std::move(conn));
      return s;
    } catch (const pqxx::broken_connection& e) {
      conn.reset();  // reconnect on the next call
      last = StatusFromPqxx(what, e);
      if (Unwatch(ticket)) last = timed_out("");
    } catch (const std::exception& e) {
      const std::string state = SqlState(e);
      last = StatusFromPqxx(what, e);
      retry = state == "40001" || state == "40P01";
      if (state.rfind("57P", 0) == 0 || state.rfind("08", 0) == 0) conn.reset();
      if (Unwatch(ticket)) {
        conn.reset();
        last = timed_out(std::string(last.message()));
        retry = false;
      }
    }
    Release(std::move(conn));
    if (!retry) return last;
    std::this_thread::sleep_for(std::chrono::milliseconds(5 * (1 << attempt)));
  }
  return last;
}

}  // namespace livemig::db
