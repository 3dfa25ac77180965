// PgInstanceStore: the InstanceStore over PostgreSQL (instances as their hosts report them).
// Internal to the PostgreSQL stores (db/pg_stores.h builds them); not for other callers.
#ifndef LIVEMIG_DB_PG_INSTANCE_STORE_H_
#define LIVEMIG_DB_PG_INSTANCE_STORE_H_

#include <optional>
#include <string>
#include <vector>

#include "db/pg_pool.h"
#include "db/stores.h"

namespace livemig::db {

class PgInstanceStore : public InstanceStore {
 public:
  explicit PgInstanceStore(PgPool* pool) : pool_(pool) {}
  absl::StatusOr<InstanceRecord> GetInstance(const std::string& uuid) override;
  absl::StatusOr<std::vector<InstanceRecord>> ListInstances(const std::string& host,
                                                            int limit) override;
  absl::StatusOr<InstancePage> ListInstancesPage(const InstanceFilter& f) override;
  absl::Status CompareAndSetTaskState(const std::string& uuid,
                                      const std::optional<std::string>& expected,
                                      const std::optional<std::string>& desired) override;

 private:
  PgPool* pool_;
};

}  // namespace livemig::db

#endif  // LIVEMIG_DB_PG_INSTANCE_STORE_H_
