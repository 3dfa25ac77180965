// The agent step requests, built in one place for a migration's state machine and for the dry
// run (CheckMigration), so that a dry run asks the agents exactly what a migration would ask.
#ifndef LIVEMIG_SCHEDULER_STEP_REQUESTS_H_
#define LIVEMIG_SCHEDULER_STEP_REQUESTS_H_

#include <string>

#include "db/records.h"
#include "proto/compute_agent.pb.h"

namespace livemig::sched {

namespace v1 = ::livemig::v1;
namespace cv1 = ::livemig::compute::v1;

// Whom a step request is about: the migration (its id is every step's idempotency key), the
// instance and the two hosts. `dry_run`: a dry run's throwaway id; the agents keep no record of
// it (set on the check requests, the only ones a dry run sends).
struct StepTarget {
  std::string migration_id, instance_uuid, source_host, dest_host;
  bool dry_run = false;
};

// Any step request with the target's four common fields set.
template <typename Req>
Req StepRequest(const StepTarget& t) {
  Req r;
  r.set_migration_id(t.migration_id);
  r.set_instance_uuid(t.instance_uuid);
  r.set_source_host(t.source_host);
  r.set_dest_host(t.dest_host);
  return r;
}

// Step 4, on the destination: the source's CPU and hypervisor as its host report has them, the
// domain as the source describes it now, the migration's options.
cv1::CheckCanLiveMigrateOnDestRequest DestCheckRequest(const StepTarget& t,
                                                       const db::HostRecord& source,
                                                       const v1::DomainInfo& domain,
                                                       const v1::MigrationOptions& options);
// Step 5, on the source, with what the destination's check returned.
cv1::CheckCanLiveMigrateOnSrcRequest SrcCheckRequest(const StepTarget& t,
                                                     const cv1::DestCheckData& dest_check,
                                                     const v1::MigrationOptions& options);
// The destination's cleanup after step 4 (the source's check failed, or a dry run ends).
cv1::CheckCanLiveMigrateOnDestCleanupRequest DestCleanupRequest(
    const StepTarget& t, const cv1::DestCheckData& dest_check);
// DescribeInstance of the instance; with `migration_id`, also that migration's transfer.
cv1::DescribeInstanceRequest DescribeRequest(const std::string& instance_uuid,
                                             const std::string& migration_id = "");

}  // namespace livemig::sched

#endif  // LIVEMIG_SCHEDULER_STEP_REQUESTS_H_
