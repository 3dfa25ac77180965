// PgStores (db/pg_stores.h): one of each store, over one pool. The stores are defined one per
// file (pg_host_store.cc, pg_instance_store.cc, pg_migration_*.cc, pg_evacuation_store.cc) over
// the shared row code of pg_rows.h.
#include "db/pg_stores.h"

#include "absl/strings/str_cat.h"
#include "db/pg_evacuation_store.h"
#include "db/pg_host_store.h"
#include "db/pg_instance_store.h"
#include "db/pg_migration_store.h"

namespace livemig::db {

// The rules live in common/validate.h (shared with the API parsers and cloudctl).
bool IsValidUuid(const std::string& uuid) { return ::livemig::IsValidUuid(uuid); }

bool IsValidHostname(const std::string& hostname) { return ::livemig::IsValidHostname(hostname); }

bool IsValidRequestId(const std::string& request_id) {
  return ::livemig::IsValidRequestId(request_id);
}

absl::Status CheckRequestId(const std::string& field, const std::string& value) {
  if (value.empty() || IsValidRequestId(value)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "field '", field, "' must be 1 to ", kMaxRequestIdLength,
      " printable ASCII characters (space to '~'), got ", value.size(), " bytes",
      value.size() > kMaxRequestIdLength ? "" : " with a control or non-ASCII character"));
}

PgStores::PgStores(PgPool* pool)
    : hosts_(std::make_unique<PgHostStore>(pool)),
      instances_(std::make_unique<PgInstanceStore>(pool)),
      migrations_(std::make_unique<PgMigrationStore>(pool)),
      evacuations_(std::make_unique<PgEvacuationStore>(pool)) {}
PgStores::~PgStores() = default;
HostStore& PgStores::hosts() { return *hosts_; }
InstanceStore& PgStores::instances() { return *instances_; }
MigrationStore& PgStores::migrations() { return *migrations_; }
EvacuationStore& PgStores::evacuations() { return *evacuations_; }

}  // namespace livemig::db
