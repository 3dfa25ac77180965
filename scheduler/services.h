// The scheduler's gRPC services: thin handlers over ApiCore (SchedulerApi) and over the host
// store (HostRegistry), translating statuses in one place (common/status_map.h).
#ifndef LIVEMIG_SCHEDULER_SERVICES_H_
#define LIVEMIG_SCHEDULER_SERVICES_H_

#include "db/stores.h"
#include "proto/host_registry.grpc.pb.h"
#include "proto/scheduler.grpc.pb.h"
#include "scheduler/api_core.h"
#include "scheduler/auth.h"

namespace livemig::sched {

namespace rv1 = ::livemig::registry::v1;

class SchedulerApiService final : public sv1::SchedulerApi::Service {
 public:
  SchedulerApiService(ApiCore* core, const TokenStore* tokens) : core_(core), tokens_(tokens) {}
  grpc::Status LiveMigrate(grpc::ServerContext*, const sv1::LiveMigrateRequest*,
                           sv1::LiveMigrateResponse*) override;
  grpc::Status GetMigration(grpc::ServerContext*, const sv1::GetMigrationRequest*,
                            sv1::Migration*) override;
  grpc::Status ListMigrations(grpc::ServerContext*, const sv1::ListMigrationsRequest*,
                              sv1::ListMigrationsResponse*) override;
  grpc::Status WatchMigration(grpc::ServerContext*, const sv1::WatchMigrationRequest*,
                              grpc::ServerWriter<sv1::Migration>*) override;
  grpc::Status AbortMigration(grpc::ServerContext*, const sv1::AbortMigrationRequest*,
                              sv1::AbortMigrationResponse*) override;
  grpc::Status ForceCompleteMigration(grpc::ServerContext*,
                                      const sv1::ForceCompleteMigrationRequest*,
                                      sv1::ForceCompleteMigrationResponse*) override;
  grpc::Status CheckMigration(grpc::ServerContext*, const sv1::CheckMigrationRequest*,
                              sv1::CheckMigrationResponse*) override;
  grpc::Status ListHosts(grpc::ServerContext*, const sv1::ListHostsRequest*,
                         sv1::ListHostsResponse*) override;
  grpc::Status GetHost(grpc::ServerContext*, const sv1::GetHostRequest*, sv1::Host*) override;
  grpc::Status SetHostEnabled(grpc::ServerContext*, const sv1::SetHostEnabledRequest*,
                              sv1::Host*) override;
  grpc::Status EvacuateHost(grpc::ServerContext*, const sv1::EvacuateHostRequest*,
                            sv1::Evacuation*) override;
  grpc::Status GetEvacuation(grpc::ServerContext*, const sv1::GetEvacuationRequest*,
                             sv1::Evacuation*) override;
  grpc::Status ListEvacuations(grpc::ServerContext*, const sv1::ListEvacuationsRequest*,
                               sv1::ListEvacuationsResponse*) override;
  grpc::Status ListInstances(grpc::ServerContext*, const sv1::ListInstancesRequest*,
                             sv1::ListInstancesResponse*) override;
  grpc::Status GetInstance(grpc::ServerContext*, const sv1::GetInstanceRequest*,
                           sv1::Instance*) override;

 private:
  // The caller's principal from the "authorization" metadata (Bearer token).
  absl::StatusOr<Principal> Auth(grpc::ServerContext* ctx, bool mutating, const char* op) const;

  ApiCore* core_;
  const TokenStore* tokens_;
};

// Agents report here. With mutual TLS an agent may only report for its own hostname: the
// certificate's common name must equal the reported hostname.
class HostRegistryService final : public rv1::HostRegistry::Service {
 public:
  HostRegistryService(db::HostStore* hosts, bool insecure, absl::Duration report_interval)
      : hosts_(hosts), insecure_(insecure), report_interval_(report_interval) {}
  grpc::Status ReportHost(grpc::ServerContext*, const rv1::ReportHostRequest*,
                          rv1::ReportHostResponse*) override;

 private:
  db::HostStore* hosts_;
  const bool insecure_;
  const absl::Duration report_interval_;
};

}  // namespace livemig::sched

#endif  // LIVEMIG_SCHEDULER_SERVICES_H_
