// The PostgreSQL implementations of the stores (db/stores.h), over one PgPool.
//
//   ASSIGN_OR_RETURN(auto pool, PgPool::Create({.conninfo = "host=... dbname=..."}));
//   PgStores stores(pool.get());
//   stores.migrations().CreateMigration(...);
#ifndef LIVEMIG_DB_PG_STORES_H_
#define LIVEMIG_DB_PG_STORES_H_

#include <memory>

#include "common/validate.h"
#include "db/pg_pool.h"
#include "db/stores.h"

namespace livemig::db {

class PgHostStore;
class PgInstanceStore;
class PgMigrationStore;
class PgEvacuationStore;

// Owns one implementation of each store; the pool must outlive it.
class PgStores {
 public:
  explicit PgStores(PgPool* pool);
  ~PgStores();
  HostStore& hosts();
  InstanceStore& instances();
  MigrationStore& migrations();
  EvacuationStore& evacuations();

 private:
  std::unique_ptr<PgHostStore> hosts_;
  std::unique_ptr<PgInstanceStore> instances_;
  std::unique_ptr<PgMigrationStore> migrations_;
  std::unique_ptr<PgEvacuationStore> evacuations_;
};

// The page token that continues a migration listing after migration number `id` (for APIs whose
// markers name a migration, like Nova's).
std::string PageTokenAfter(int64_t id);

// Validation shared by the stores and the API layer (one place for each rule).
bool IsValidUuid(const std::string& uuid);
bool IsValidHostname(const std::string& hostname);
// A caller's request id (scheduler.proto, LiveMigrateRequest and EvacuateHostRequest): 1 to 128
// printable ASCII characters (space to '~').
using ::livemig::kMaxRequestIdLength;  // common/validate.h
bool IsValidRequestId(const std::string& request_id);
// OK for an empty value (no request id) or a valid one; else InvalidArgument naming `field` and
// the rule.
absl::Status CheckRequestId(const std::string& field, const std::string& value);

}  // namespace livemig::db

#endif  // LIVEMIG_DB_PG_STORES_H_
