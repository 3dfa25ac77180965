// PgHostStore: the HostStore over PostgreSQL (host reports, host pages, destination candidates).
// Internal to the PostgreSQL stores (db/pg_stores.h builds them); not for other callers.
#ifndef LIVEMIG_DB_PG_HOST_STORE_H_
#define LIVEMIG_DB_PG_HOST_STORE_H_

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "db/pg_pool.h"
#include "db/stores.h"

namespace livemig::db {

class PgHostStore : public HostStore {
 public:
  explicit PgHostStore(PgPool* pool) : pool_(pool) {}
  absl::StatusOr<ReportResult> ApplyReport(const HostReport& p) override;
  void MaybeFoldInstanceCounts();
  absl::StatusOr<HostRecord> GetHost(const std::string& hostname,
                                     absl::Duration service_down_time) override;
  absl::StatusOr<std::vector<HostRecord>> ListHosts(absl::Duration service_down_time) override;
  absl::StatusOr<HostPage> ListHostsPage(const HostFilter& f,
                                         absl::Duration service_down_time) override;
  absl::StatusOr<std::vector<HostRecord>> ListDestinationCandidates(
      const DestinationQuery& q, absl::Duration service_down_time) override;
  absl::StatusOr<HostRecord> SetHostEnabled(const std::string& hostname, bool enabled,
                                            const std::string& reason,
                                            const std::string& by) override;

 private:
  PgPool* pool_;
  std::atomic<int64_t> last_fold_us_{0};
};

}  // namespace livemig::db

#endif  // LIVEMIG_DB_PG_HOST_STORE_H_
