// PgMigrationStore: the MigrationStore over PostgreSQL, defined in three files: requests and
// reads (pg_migration_store.cc), the orchestrator's writes (pg_migration_runs.cc), metrics
// and history (pg_migration_metrics.cc).
// Internal to the PostgreSQL stores (db/pg_stores.h builds them); not for other callers.
#ifndef LIVEMIG_DB_PG_MIGRATION_STORE_H_
#define LIVEMIG_DB_PG_MIGRATION_STORE_H_

#include <optional>
#include <string>
#include <vector>

#include "db/pg_pool.h"
#include "db/stores.h"

namespace livemig::db {

class PgMigrationStore : public MigrationStore {
 public:
  explicit PgMigrationStore(PgPool* pool) : pool_(pool) {}
  absl::StatusOr<CreateMigrationResult> CreateMigration(const NewMigration& m) override;
  absl::StatusOr<MigrationRecord> GetMigration(int64_t id) override;
  absl::StatusOr<MigrationRecord> GetMigrationByUuid(const std::string& uuid) override;
  absl::StatusOr<MigrationRecord> FindByRequestId(const std::string& request_id) override;
  absl::StatusOr<MigrationPage> ListMigrations(const MigrationFilter& f) override;
  absl::StatusOr<std::vector<MigrationRecord>> ListActiveMigrations() override;
  absl::StatusOr<SlotUse> GetSlotUse(int64_t id, const std::string& source,
                                     const std::string& dest) override;
  absl::StatusOr<MigrationRecord> ApplyTransition(const Transition& t) override;
  absl::Status RecordStep(int64_t id, const std::string& owner, MigrationStatus status,
                          v1::MigrationStep step, const std::vector<MigrationEvent>& events,
                          const std::optional<std::string>& dest_host,
                          const std::optional<int64_t>& memory_claim_mib) override;
  absl::Status AppendEvent(const MigrationEvent& event) override;
  absl::StatusOr<std::vector<MigrationEvent>> ListEvents(int64_t migration_id) override;
  absl::Status UpdateProgress(int64_t id, const std::string& owner,
                              const MigrationProgress& p) override;
  absl::StatusOr<bool> AcquireLease(int64_t id, const std::string& owner,
                                    absl::Duration ttl) override;
  absl::StatusOr<int> RenewLeases(const std::string& owner, absl::Duration ttl) override;
  absl::StatusOr<std::vector<MigrationRecord>> ListOrphaned() override;
  absl::StatusOr<MigrationRecord> RequestAbort(int64_t id, const std::string& by,
                                               const std::string& reason) override;
  absl::StatusOr<MigrationRecord> RequestForceComplete(int64_t id, const std::string& by) override;
  absl::StatusOr<MigrationRecord> ResolveError(int64_t id, MigrationStatus to,
                                               const std::string& host,
                                               const std::string& failure_reason,
                                               const MigrationEvent& event) override;
  absl::StatusOr<MigrationMetrics> ReadMetrics(absl::Duration service_down_time) override;
  absl::StatusOr<int64_t> MemoryClaimedOn(const std::string& host) override;
  absl::StatusOr<int64_t> PurgeFinished(absl::Time before) override;
  absl::StatusOr<int64_t> FoldMetrics() override;

 private:
  absl::StatusOr<MigrationRecord> FindByRequestIdIn(pqxx::transaction_base& w,
                                                    const std::string& request_id,
                                                    const std::string& instance_uuid);
  static absl::Status RequestIdReused(const std::string& request_id, const MigrationRecord& m);
  absl::StatusOr<MigrationRecord> FindByRequestIdOf(const std::string& request_id,
                                                    const std::string& instance_uuid);
  absl::Status DiagnoseClaim(pqxx::transaction_base& w, const std::string& uuid,
                             const std::string& dest,
                             const std::optional<std::string>& evacuation_uuid);
  absl::StatusOr<MigrationRecord> RecordRequest(int64_t id, const std::string& by,
                                                const char* by_col, const char* at_col,
                                                const char* what, const std::string& reason = "");
  PgPool* pool_;
};

}  // namespace livemig::db

#endif  // LIVEMIG_DB_PG_MIGRATION_STORE_H_
