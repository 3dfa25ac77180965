#include "scheduler/step_requests.h"

#include "scheduler/convert.h"

namespace livemig::sched {

cv1::CheckCanLiveMigrateOnDestRequest DestCheckRequest(const StepTarget& t,
                                                       const db::HostRecord& source,
                                                       const v1::DomainInfo& domain,
                                                       const v1::MigrationOptions& options) {
  auto r = StepRequest<cv1::CheckCanLiveMigrateOnDestRequest>(t);
  *r.mutable_source_cpu() = ToProtoHost(source).inventory().cpu();
  r.set_source_hypervisor_type(source.report.hypervisor_type);
  r.set_source_hypervisor_version(static_cast<uint64_t>(source.report.hypervisor_version));
  *r.mutable_instance() = domain;
  *r.mutable_options() = options;
  r.set_dry_run(t.dry_run);
  return r;
}

cv1::CheckCanLiveMigrateOnSrcRequest SrcCheckRequest(const StepTarget& t,
                                                     const cv1::DestCheckData& dest_check,
                                                     const v1::MigrationOptions& options) {
  auto r = StepRequest<cv1::CheckCanLiveMigrateOnSrcRequest>(t);
  *r.mutable_dest_check_data() = dest_check;
  *r.mutable_options() = options;
  r.set_dry_run(t.dry_run);
  return r;
}

cv1::CheckCanLiveMigrateOnDestCleanupRequest DestCleanupRequest(
    const StepTarget& t, const cv1::DestCheckData& dest_check) {
  auto r = StepRequest<cv1::CheckCanLiveMigrateOnDestCleanupRequest>(t);
  *r.mutable_dest_check_data() = dest_check;
  r.set_dry_run(t.dry_run);
  return r;
}

cv1::DescribeInstanceRequest DescribeRequest(const std::string& instance_uuid,
                                             const std::string& migration_id) {
  cv1::DescribeInstanceRequest r;
  r.set_instance_uuid(instance_uuid);
  if (!migration_id.empty()) r.set_migration_id(migration_id);
  return r;
}

}  // namespace livemig::sched
