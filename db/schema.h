// Versioned schema migrations (db/schema/NNNN_name.sql), applied at start-up.
//
// ApplySchema takes a transaction-scoped advisory lock, so two schedulers starting at once apply
// each migration exactly once; re-applying is a no-op; a database whose schema is newer than this
// binary knows is refused with FailedPrecondition (upgrade the binary, never downgrade the schema).
#ifndef LIVEMIG_DB_SCHEMA_H_
#define LIVEMIG_DB_SCHEMA_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "db/pg_pool.h"

namespace livemig::db {

struct SchemaMigration {
  int version;
  const char* name;
  const char* sql;
};

// Every migration this binary knows, in version order (generated from db/schema/*.sql).
const std::vector<SchemaMigration>& SchemaMigrations();

// The newest version this binary knows.
int LatestSchemaVersion();

struct SchemaResult {
  int version_before = 0;  // 0: empty database
  int version_after = 0;
  std::vector<std::string> applied;  // names of the migrations applied now
};

absl::StatusOr<SchemaResult> ApplySchema(PgPool& pool);

// The version recorded in the database (0 if none).
absl::StatusOr<int> CurrentSchemaVersion(PgPool& pool);

}  // namespace livemig::db

#endif  // LIVEMIG_DB_SCHEMA_H_
