// The row and SQL helpers shared by the PostgreSQL stores (pg_*_store.cc): timestamps, nullable
// fields, JSON and array parameters, prepared statements, and the migration row and its events
// (read and written by the three files of PgMigrationStore). Internal to db/: not for other
// callers.
#ifndef LIVEMIG_DB_PG_ROWS_H_
#define LIVEMIG_DB_PG_ROWS_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "db/pg_pool.h"
#include "db/records.h"

namespace livemig::db {

// The condition of a migration row that is not finished.
inline constexpr char kActive[] = "status NOT IN ('completed', 'failed', 'cancelled')";

// Timestamps cross the wire as microseconds since the epoch: Us(col) selects `col` so.
std::string Us(const std::string& col);
absl::Time FromUs(int64_t us);
int64_t ToUs(absl::Time t);
double Secs(absl::Duration d);

template <typename T>
std::optional<T> Opt(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return f.as<T>();
}
std::optional<absl::Time> OptTime(const pqxx::field& f);
std::string Str(const pqxx::field& f);  // "" for NULL

std::string JsonArray(const std::vector<std::string>& v);
// The strings of a JSON array (others skipped); empty if `text` is not one.
std::vector<std::string> ParseJsonArray(const std::string& text);
// A PostgreSQL array literal of text values: {"a","b c"}.
std::string TextArray(const std::vector<std::string>& v);

absl::Status CheckJsonObject(const std::string& text, const char* what);
absl::Status CheckJsonArray(const std::string& text, const std::string& what);
// InvalidArgument naming `what` unless `uuid` is a UUID.
absl::Status CheckUuid(const std::string& uuid, const char* what);

// Runs `sql` as a named prepared statement of the transaction's connection, so that it is parsed
// and planned once per connection instead of at every call (libpqxx prepares it at its first use
// there; defining the same text again is a no-op). Only for statements whose plan suits every
// parameter value (no optional filters).
template <typename... Args>
pqxx::result Prep(pqxx::transaction_base& w, const std::string& sql, Args&&... args) {
  const std::string name = absl::StrCat("lm_", std::hash<std::string>()(sql));
  w.conn().prepare(name, sql);
  return w.exec_prepared(name, std::forward<Args>(args)...);
}

// ---- the migration row and its events ------------------------------------------------------

// The migration columns read from `source` (the table, or a data-modifying CTE's RETURNING *).
std::string MigrationSelectFrom(const std::string& source);
std::string MigrationSelect();  // from the table
absl::StatusOr<MigrationRecord> MigrationFromRow(const pqxx::row& r);
absl::StatusOr<std::vector<MigrationRecord>> MigrationsFromResult(const pqxx::result& r);
// Migration `id` (NotFound if none), its row locked first when `for_update`.
absl::StatusOr<MigrationRecord> SelectMigration(pqxx::transaction_base& w, int64_t id,
                                                bool for_update);

// Events travel as one JSON array parameter, so that a state change and its events are one
// statement (see EventsInsertFrom). PostgreSQL's text cannot hold NUL: it becomes U+FFFD, as
// invalid UTF-8 does.
std::string EventsJson(const std::vector<MigrationEvent>& events);
// A data-modifying CTE body that inserts the events of JSON parameter `param` (EventsJson) for
// the migration row of CTE `cte` (if it has one), in array order.
std::string EventsInsertFrom(const std::string& cte, const std::string& param);
void InsertEvent(pqxx::transaction_base& w, const MigrationEvent& e);

}  // namespace livemig::db

#endif  // LIVEMIG_DB_PG_ROWS_H_
