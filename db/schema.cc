#include "db/schema.h"

#include "absl/strings/str_cat.h"

namespace livemig::db {
namespace {
// pg_advisory_xact_lock key: "livemig" schema application.
constexpr int64_t kSchemaLockKey = 0x6c6976656d6967;

constexpr char kCreateVersionTable[] = R"SQL(
CREATE TABLE IF NOT EXISTS schema_version (
  version     integer PRIMARY KEY,
  name        text NOT NULL,
  applied_at  timestamptz NOT NULL DEFAULT now()
))SQL";

int ReadVersion(pqxx::work& w) {
  pqxx::result r = w.exec("SELECT COALESCE(max(version), 0) FROM schema_version");
  return r[0][0].as<int>();
}
}  // namespace

int LatestSchemaVersion() {
  const auto& all = SchemaMigrations();
  return all.empty() ? 0 : all.back().version;
}

absl::StatusOr<int> CurrentSchemaVersion(PgPool& pool) {
  return pool.Query<int>("read schema version", [](pqxx::work& w) -> absl::StatusOr<int> {
    pqxx::result r = w.exec("SELECT to_regclass('schema_version') IS NOT NULL");
    if (!r[0][0].as<bool>()) return 0;
    return ReadVersion(w);
  });
}

absl::StatusOr<SchemaResult> ApplySchema(PgPool& pool) {
  return pool.Query<SchemaResult>(
      "apply schema", [](pqxx::work& w) -> absl::StatusOr<SchemaResult> {
        // Serializes concurrent start-ups; released at commit.
        w.exec_params("SELECT pg_advisory_xact_lock($1)", kSchemaLockKey);
        w.exec(kCreateVersionTable);
        SchemaResult result;
        result.version_before = ReadVersion(w);
        const int latest = LatestSchemaVersion();
        if (result.version_before > latest) {
          return absl::FailedPreconditionError(
              absl::StrCat("the database schema is at version ", result.version_before,
                           " but this binary knows versions up to ", latest,
                           ": run a newer scheduler (schemas are never downgraded)"));
        }
        for (const SchemaMigration& m : SchemaMigrations()) {
          if (m.version <= result.version_before) continue;
          try {
            w.exec(m.sql);
          } catch (const std::exception& e) {
            return absl::InternalError(
                absl::StrCat("schema migration ", m.name, " failed: ", e.what()));
          }
          w.exec_params("INSERT INTO schema_version (version, name) VALUES ($1, $2)", m.version,
                        std::string(m.name));
          result.applied.push_back(m.name);
        }
        result.version_after = ReadVersion(w);
        return result;
      });
}

}  // namespace livemig::db
