// ApiCore: the scheduler API's operations over the stores and the orchestrator, independent of
// any transport (the gRPC handlers in services.h and, later, REST call it).
//
// Validation follows step 1 of docs/DESIGN.md § The migration flow: malformed input, unknown
// instance or host, destination = source, destination disabled or down, instance neither running
// nor paused, and instance already migrating are answered at once (InvalidArgument / NotFound /
// FailedPrecondition / Aborted) and create no migration row; a repeated request id returns the
// same migration.
#ifndef LIVEMIG_SCHEDULER_API_CORE_H_
#define LIVEMIG_SCHEDULER_API_CORE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "db/stores.h"
#include "proto/scheduler.pb.h"
#include "scheduler/evacuator.h"
#include "scheduler/orchestrator.h"

namespace livemig::sched {

class ApiCore {
 public:
  // `evacuation_leases`, when given, is used for the evacuations' lease renewal and takeover
  // only (the scheduler passes the control loop's store, so that API load cannot delay them);
  // everything else goes through the stores before it.
  ApiCore(db::MigrationStore* migrations, db::HostStore* hosts, db::InstanceStore* instances,
          db::EvacuationStore* evacuations, Orchestrator* orchestrator,
          db::EvacuationStore* evacuation_leases = nullptr);

  // `caller` is the authenticated identity (or "" when unauthenticated); the request's
  // requester label is recorded beside it.
  absl::StatusOr<sv1::LiveMigrateResponse> LiveMigrate(const sv1::LiveMigrateRequest& r,
                                                       const std::string& caller);
  absl::StatusOr<sv1::Migration> GetMigration(const std::string& id, bool include_events = true);
  absl::StatusOr<sv1::ListMigrationsResponse> ListMigrations(const sv1::ListMigrationsRequest& r);
  absl::StatusOr<sv1::AbortMigrationResponse> AbortMigration(const sv1::AbortMigrationRequest& r,
                                                             const std::string& caller);
  absl::StatusOr<sv1::ForceCompleteMigrationResponse> ForceCompleteMigration(
      const sv1::ForceCompleteMigrationRequest& r, const std::string& caller);
  // Closes a migration in error once both agents show the guest running on exactly the host the
  // operator names (scheduler.proto, ResolveMigration).
  absl::StatusOr<sv1::ResolveMigrationResponse> ResolveMigration(
      const sv1::ResolveMigrationRequest& r, const std::string& caller);
  absl::StatusOr<sv1::CheckMigrationResponse> CheckMigration(const sv1::CheckMigrationRequest& r);
  absl::StatusOr<sv1::ListHostsResponse> ListHosts(const sv1::ListHostsRequest& r);
  // Every host, walking all pages of ListHosts (for small views such as Nova's services).
  absl::StatusOr<std::vector<sv1::Host>> ListAllHosts();
  absl::StatusOr<sv1::Host> GetHost(const std::string& hostname);
  absl::StatusOr<sv1::Host> SetHostEnabled(const sv1::SetHostEnabledRequest& r,
                                           const std::string& caller);
  absl::StatusOr<sv1::Evacuation> EvacuateHost(const sv1::EvacuateHostRequest& r,
                                               const std::string& caller);
  // `id`: the evacuation's UUID (Evacuation.id).
  absl::StatusOr<sv1::Evacuation> GetEvacuation(const std::string& id);
  absl::StatusOr<sv1::ListEvacuationsResponse> ListEvacuations(
      const sv1::ListEvacuationsRequest& r);
  // Cancels a running evacuation (scheduler.proto, CancelEvacuation): no new migration of it
  // starts; those in flight finish. Idempotent; FailedPrecondition once it finished otherwise.
  absl::StatusOr<sv1::Evacuation> CancelEvacuation(const sv1::CancelEvacuationRequest& r,
                                                   const std::string& caller);
  absl::StatusOr<sv1::ListInstancesResponse> ListInstances(const sv1::ListInstancesRequest& r);
  absl::StatusOr<sv1::Instance> GetInstance(const std::string& uuid);

  // Prometheus text format (deploy/README.md, "Metrics"): counters that never decrease (migrations
  // by outcome, bytes, pre-check refusals, two running copies), histograms (step durations,
  // transfer time, downtime), gauges (migrations in flight, hosts).
  absl::StatusOr<std::string> MetricsText();

  // Takes over the running evacuations that no scheduler owns, now and whenever one's lease
  // expires, and drives them (Evacuator::Resume). Stopped by the destructor.
  void ResumeEvacuations();

  // How many evacuations this ApiCore drives now (for tests).
  int RunningEvacuations();

 private:
  // LiveMigrate for an evacuation's migration: it records `evacuation_uuid` ("" for none).
  absl::StatusOr<sv1::LiveMigrateResponse> LiveMigrateFor(const sv1::LiveMigrateRequest& r,
                                                          const std::string& caller,
                                                          const std::string& evacuation_uuid);
  absl::StatusOr<db::MigrationRecord> FindMigration(const std::string& id);
  absl::Status ValidateOptions(const v1::MigrationOptions& o);
  std::string Who(const std::string& caller, const std::string& requester) const;

  db::MigrationStore* migrations_;
  db::HostStore* hosts_;
  db::InstanceStore* instances_;
  Orchestrator* orchestrator_;
  // Declared last: destroyed first, it joins its threads, which call LiveMigrateFor.
  Evacuator evacuator_;
};

}  // namespace livemig::sched

#endif  // LIVEMIG_SCHEDULER_API_CORE_H_
