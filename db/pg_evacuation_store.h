// PgEvacuationStore: the EvacuationStore over PostgreSQL (evacuations, their items and leases).
// Internal to the PostgreSQL stores (db/pg_stores.h builds them); not for other callers.
#ifndef LIVEMIG_DB_PG_EVACUATION_STORE_H_
#define LIVEMIG_DB_PG_EVACUATION_STORE_H_

#include <string>
#include <vector>

#include "db/pg_pool.h"
#include "db/stores.h"

namespace livemig::db {

class PgEvacuationStore : public EvacuationStore {
 public:
  explicit PgEvacuationStore(PgPool* pool) : pool_(pool) {}
  absl::StatusOr<EvacuationRecord> CreateEvacuation(const NewEvacuation& e) override;
  absl::StatusOr<EvacuationRecord> GetEvacuation(int64_t id) override;
  absl::StatusOr<EvacuationRecord> GetEvacuationByUuid(const std::string& uuid) override;
  absl::StatusOr<EvacuationRecord> FindEvacuationByRequestId(
      const std::string& request_id) override;
  absl::StatusOr<EvacuationPage> ListEvacuations(const EvacuationFilter& f) override;
  absl::Status UpdateEvacuationItem(int64_t evacuation_id, const std::string& owner,
                                    const EvacuationItem& item) override;
  absl::Status FinishEvacuation(int64_t id, const std::string& owner,
                                const std::string& status) override;
  absl::StatusOr<EvacuationRecord> CancelEvacuation(int64_t id, const std::string& by,
                                                    const std::string& reason) override;
  absl::StatusOr<bool> AcquireEvacuationLease(int64_t id, const std::string& owner,
                                              absl::Duration ttl) override;
  absl::StatusOr<int> RenewEvacuationLeases(const std::string& owner, absl::Duration ttl) override;
  absl::StatusOr<std::vector<EvacuationRecord>> ListOrphanedEvacuations() override;

 private:
  static absl::Status WhyNotOwned(pqxx::transaction_base& w, int64_t id, const std::string& owner);
  static std::string EvacuationSelect();
  static EvacuationRecord WithItems(pqxx::transaction_base& w, EvacuationRecord e);
  static void WithItems(pqxx::transaction_base& w, std::vector<EvacuationRecord>* es);
  static EvacuationRecord EvacuationFromRow(const pqxx::row& r);
  PgPool* pool_;
};

}  // namespace livemig::db

#endif  // LIVEMIG_DB_PG_EVACUATION_STORE_H_
