// The Evacuator: host evacuations (scheduler.proto, EvacuateHost), beside the orchestrator.
//
// An evacuation is a stored plan (one item per instance of the host) that a driver thread turns
// into live migrations, at most max_parallel in flight, each started through the API's own
// LiveMigrate (so it is validated and recorded as any request, with the evacuation's UUID). The
// driver holds the evacuation's lease (the orchestrator's owner name and lease, renewed every
// lease/3); a scheduler whose lease expired loses it to another, which resumes with the stored
// destination and options. ApiCore validates the requests and hands them here.
#ifndef LIVEMIG_SCHEDULER_EVACUATOR_H_
#define LIVEMIG_SCHEDULER_EVACUATOR_H_

#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "db/stores.h"
#include "proto/scheduler.pb.h"
#include "scheduler/orchestrator.h"

namespace livemig::sched {

class Evacuator {
 public:
  // Starts one migration of an evacuation (the API's LiveMigrate, recording `evacuation_uuid`).
  using StartMigration = std::function<absl::StatusOr<sv1::LiveMigrateResponse>(
      const sv1::LiveMigrateRequest& r, const std::string& evacuation_uuid)>;

  // `leases` serves the lease renewal and takeover only (the scheduler passes the control loop's
  // store, so that API load cannot delay them); everything else goes through `evacuations`.
  Evacuator(db::HostStore* hosts, db::InstanceStore* instances, db::EvacuationStore* evacuations,
            db::EvacuationStore* leases, Orchestrator* orchestrator, StartMigration start);
  ~Evacuator();  // stops and joins the driver threads
  Evacuator(const Evacuator&) = delete;
  Evacuator& operator=(const Evacuator&) = delete;

  // Plans the evacuation of r.hostname() (validated by the caller) requested by `requested_by`
  // and starts driving it; a repeated request id returns the evacuation it made.
  absl::StatusOr<sv1::Evacuation> Evacuate(const sv1::EvacuateHostRequest& r,
                                           const std::string& requested_by);
  // `uuid`: the evacuation's UUID (Evacuation.id).
  absl::StatusOr<sv1::Evacuation> Get(const std::string& uuid);
  absl::StatusOr<sv1::ListEvacuationsResponse> List(const sv1::ListEvacuationsRequest& r);
  // No new migration of it starts; those in flight finish. Idempotent; FailedPrecondition once
  // it finished otherwise.
  absl::StatusOr<sv1::Evacuation> Cancel(const std::string& uuid, const std::string& who,
                                         const std::string& reason);

  // Takes over the running evacuations that no scheduler owns (their owner's lease expired, or
  // they have none), now and whenever such a lease expires later, and drives each with its
  // stored destination and options; renews the leases of the evacuations this scheduler drives.
  // Several schedulers sharing the database each call it: each evacuation is driven by one at a
  // time. Idempotent. Evacuate starts the same background work.
  void Resume();
  // How many evacuations this scheduler drives now (for tests).
  int Running();

 private:
  // Starts the background work of Resume once.
  void StartLoop();
  // Renews this scheduler's evacuation leases and takes over the orphaned evacuations, every
  // lease/3 until the destructor.
  void Loop();
  // Starts a thread driving evacuation `id` (its lease is this scheduler's), unless one runs.
  void StartDriving(int64_t id);
  // Drives evacuation `id` while it runs and this scheduler holds its lease.
  void Drive(int64_t id);
  // Joins the driving threads that ended.
  void ReapDrivers();

  db::HostStore* hosts_;
  db::InstanceStore* instances_;
  db::EvacuationStore* evacuations_;
  db::EvacuationStore* leases_;
  Orchestrator* orchestrator_;
  const StartMigration start_;
  absl::Notification stop_;
  absl::Mutex mu_;
  std::thread loop_ ABSL_GUARDED_BY(mu_);
  // Evacuations driven now, by id, with their threads; the threads of those that ended.
  std::map<int64_t, std::thread> drivers_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> ended_drivers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace livemig::sched

#endif  // LIVEMIG_SCHEDULER_EVACUATOR_H_
