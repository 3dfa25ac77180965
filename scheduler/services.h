// The scheduler's gRPC services: thin handlers over ApiCore (SchedulerApi) and over the host
// store (HostRegistry), translating statuses in one place (common/status_map.h).
#ifndef LIVEMIG_SCHEDULER_SERVICES_H_
#define LIVEMIG_SCHEDULER_SERVICES_H_

#include <map>
#include <string>

#include "absl/synchronization/mutex.h"
#include "db/stores.h"
#include "proto/host_registry.grpc.pb.h"
#include "proto/scheduler.grpc.pb.h"
#include "scheduler/api_core.h"
#include "scheduler/auth.h"

namespace livemig::sched {

namespace rv1 = ::livemig::registry::v1;

// Caps on WatchMigration's server streams. Each open stream holds one of the API server's gRPC
// threads (ServerLimits.max_threads) until it ends, so beyond these a new stream fails at once
// with RESOURCE_EXHAUSTED naming the cap; `total` below the thread cap keeps threads for every
// other call.
struct WatchLimits {
  int per_principal = 20;  // streams open at once per caller (token identity)
  int total = 32;          // streams open at once, all callers together
};

class SchedulerApiService final : public sv1::SchedulerApi::Service {
 public:
  SchedulerApiService(ApiCore* core, const TokenStore* tokens, WatchLimits watch = {})
      : core_(core), tokens_(tokens), watch_(watch) {}
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
  grpc::Status ResolveMigration(grpc::ServerContext*, const sv1::ResolveMigrationRequest*,
                                sv1::ResolveMigrationResponse*) override;
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
  grpc::Status CancelEvacuation(grpc::ServerContext*, const sv1::CancelEvacuationRequest*,
                                sv1::Evacuation*) override;
  grpc::Status ListInstances(grpc::ServerContext*, const sv1::ListInstancesRequest*,
                             sv1::ListInstancesResponse*) override;
  grpc::Status GetInstance(grpc::ServerContext*, const sv1::GetInstanceRequest*,
                           sv1::Instance*) override;

 private:
  // The caller's principal from the "authorization" metadata (Bearer token).
  absl::StatusOr<Principal> Auth(grpc::ServerContext* ctx, bool mutating, const char* op) const;
  // Takes a WatchMigration slot of `who`, or ResourceExhausted naming the cap reached.
  absl::Status AcquireWatch(const std::string& who);
  void ReleaseWatch(const std::string& who);

  ApiCore* core_;
  const TokenStore* tokens_;
  const WatchLimits watch_;
  absl::Mutex watch_mu_;
  std::map<std::string, int> watches_ ABSL_GUARDED_BY(watch_mu_);  // open streams per caller
  int watches_total_ ABSL_GUARDED_BY(watch_mu_) = 0;
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
