// The repositories: pure-virtual seams between the scheduler and PostgreSQL.
//
// Errors: NotFound (unknown row), Aborted (a concurrent change won: retry from a fresh read, or
// "already migrating"), FailedPrecondition (the row is in the wrong state), InvalidArgument (bad
// input), Unavailable (the database is unreachable; the next call reconnects).
// All implementations are thread-safe.
#ifndef LIVEMIG_DB_STORES_H_
#define LIVEMIG_DB_STORES_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "db/records.h"

namespace livemig::db {

class HostStore {
 public:
  virtual ~HostStore() = default;

  // Applies an agent's report in one transaction: the host's inventory, and its domains as
  // instances. A report older than the stored one (same boot id, seq not greater) is ignored
  // (accepted=false). An instance with an active migration is never moved by a report; an
  // idle instance no longer reported by its host is marked missing, never deleted.
  virtual absl::StatusOr<ReportResult> ApplyReport(const HostReport& report) = 0;

  // `service_down_time` decides `up`.
  virtual absl::StatusOr<HostRecord> GetHost(const std::string& hostname,
                                             absl::Duration service_down_time) = 0;
  virtual absl::StatusOr<std::vector<HostRecord>> ListHosts(absl::Duration service_down_time) = 0;
  // One page by host name; InvalidArgument for a bad page size or token.
  virtual absl::StatusOr<HostPage> ListHostsPage(const HostFilter& filter,
                                                 absl::Duration service_down_time) = 0;
  // The best `q.limit` hosts that pass the checks the database can decide (see DestinationQuery);
  // the caller runs the full checks on them.
  virtual absl::StatusOr<std::vector<HostRecord>> ListDestinationCandidates(
      const DestinationQuery& q, absl::Duration service_down_time) = 0;

  // Records who changed it and why. NotFound for an unknown host.
  virtual absl::StatusOr<HostRecord> SetHostEnabled(const std::string& hostname, bool enabled,
                                                    const std::string& reason,
                                                    const std::string& by) = 0;
};

class InstanceStore {
 public:
  virtual ~InstanceStore() = default;
  virtual absl::StatusOr<InstanceRecord> GetInstance(const std::string& uuid) = 0;
  // Ordered by name, then uuid. `host` empty: every host.
  virtual absl::StatusOr<std::vector<InstanceRecord>> ListInstances(const std::string& host,
                                                                    int limit) = 0;
  // One page by name, then uuid (keyset pagination, stable while rows are inserted), filtered in
  // the database. InvalidArgument for a bad page size, host name or token.
  virtual absl::StatusOr<InstancePage> ListInstancesPage(const InstanceFilter& filter) = 0;
  // Compare-and-swap on task_state: sets `desired` only if the current value equals
  // `expected` (nullopt = idle). Aborted when it does not; NotFound for an unknown instance.
  virtual absl::Status CompareAndSetTaskState(const std::string& uuid,
                                              const std::optional<std::string>& expected,
                                              const std::optional<std::string>& desired) = 0;
};

class MigrationStore {
 public:
  virtual ~MigrationStore() = default;

  // Creates the migration row and claims the instance (task_state NULL → 'migrating') in ONE
  // transaction, with its first event and the owner's lease. A request id already used returns
  // that migration (created=false). Errors: NotFound (instance), FailedPrecondition (instance
  // missing or on no host), Aborted (instance already migrating), InvalidArgument (request id
  // reused for another instance, malformed evacuation UUID). With an evacuation UUID, the
  // migration records that evacuation (a foreign key: it must exist), and is created only while
  // the evacuation runs and was not cancelled (FailedPrecondition otherwise): the check holds a
  // share lock of the evacuation's row, so a concurrent CancelEvacuation is ordered before or
  // after it.
  virtual absl::StatusOr<CreateMigrationResult> CreateMigration(const NewMigration& m) = 0;

  virtual absl::StatusOr<MigrationRecord> GetMigration(int64_t id) = 0;
  virtual absl::StatusOr<MigrationRecord> GetMigrationByUuid(const std::string& uuid) = 0;
  virtual absl::StatusOr<MigrationRecord> FindByRequestId(const std::string& request_id) = 0;

  // Keyset pagination, newest first; stable while rows are inserted.
  virtual absl::StatusOr<MigrationPage> ListMigrations(const MigrationFilter& filter) = 0;

  // Every non-terminal migration (including `error`), oldest first.
  virtual absl::StatusOr<std::vector<MigrationRecord>> ListActiveMigrations() = 0;

  // The slot use seen by migration `id` moving from `source` to `dest` (see SlotUse): one
  // aggregate over the active migrations, so deciding costs one small row, not the whole list.
  virtual absl::StatusOr<SlotUse> GetSlotUse(int64_t id, const std::string& source,
                                             const std::string& dest) = 0;

  // One state-machine step: compare-and-swap on (status == from, owner holds an unexpired
  // lease), with its event, in one transaction. A terminal `to` releases the instance (and the
  // memory claim); `completed` also sets the instance's host to the destination.
  // Aborted if the row moved on or the lease was lost; FailedPrecondition for a transition the
  // state machine forbids; ResourceExhausted when `t.slot` is set and no slot is free.
  virtual absl::StatusOr<MigrationRecord> ApplyTransition(const Transition& t) = 0;

  // Records a step inside the current status (compare-and-swap on status and lease): sets
  // `step` and appends the given events (typically the previous step's result and the next
  // step's intent) in ONE transaction, optionally with the destination chosen.
  virtual absl::Status RecordStep(
      int64_t id, const std::string& owner, MigrationStatus status, v1::MigrationStep step,
      const std::vector<MigrationEvent>& events,
      const std::optional<std::string>& dest_host = std::nullopt,
      const std::optional<int64_t>& memory_claim_mib = std::nullopt) = 0;

  // Appends to the event log (no status change).
  virtual absl::Status AppendEvent(const MigrationEvent& event) = 0;
  virtual absl::StatusOr<std::vector<MigrationEvent>> ListEvents(int64_t migration_id) = 0;

  // Writes the progress fields if `owner` holds the lease (Aborted otherwise).
  virtual absl::Status UpdateProgress(int64_t id, const std::string& owner,
                                      const MigrationProgress& progress) = 0;

  // Takes or renews the lease of an active migration when it is free, expired or already ours.
  // Returns false when another owner holds a live lease.
  virtual absl::StatusOr<bool> AcquireLease(int64_t id, const std::string& owner,
                                            absl::Duration ttl) = 0;
  // Renews every lease `owner` holds; returns how many.
  virtual absl::StatusOr<int> RenewLeases(const std::string& owner, absl::Duration ttl) = 0;
  // Active migrations with no owner or an expired lease (candidates for a takeover).
  virtual absl::StatusOr<std::vector<MigrationRecord>> ListOrphaned() = 0;

  // Records an operator's request. FailedPrecondition if the migration is terminal. An abort
  // records its reason (abort_reason; "" keeps the one recorded before, if any).
  virtual absl::StatusOr<MigrationRecord> RequestAbort(int64_t id, const std::string& by,
                                                       const std::string& reason) = 0;
  virtual absl::StatusOr<MigrationRecord> RequestForceComplete(int64_t id,
                                                               const std::string& by) = 0;
  // An operator's resolution of a migration in `error` (SchedulerApi.ResolveMigration), whoever
  // holds its lease (an operator decides, not a scheduler): compare-and-swap on status 'error'
  // to `to` (completed or failed), in ONE transaction: step 'resolve', `failure_reason`, the
  // memory claim 0 and the lease released; the instance released (task state cleared) and on
  // `host` (not missing); `event` appended (its status `to`). Aborted when the migration is no
  // longer in error (the caller reads it again); NotFound when unknown.
  virtual absl::StatusOr<MigrationRecord> ResolveError(int64_t id, MigrationStatus to,
                                                       const std::string& host,
                                                       const std::string& failure_reason,
                                                       const MigrationEvent& event) = 0;

  // What /metrics reports, read in ONE statement (one snapshot, so a fold or a purge committing
  // meanwhile is seen entirely or not at all): what FoldMetrics and purges folded into
  // metric_totals plus the rows not folded yet. A pure read: it writes nothing and takes no lock,
  // so a scrape runs on a read-only connection too. Every field but `in_flight` only grows,
  // across folds, purges, restarts and scheduler replicas (see MigrationMetrics).
  // `service_down_time` decides a host's liveness.
  virtual absl::StatusOr<MigrationMetrics> ReadMetrics(absl::Duration service_down_time) = 0;

  // Folds into metric_totals the finished migrations not folded yet and the events older than
  // 5 minutes (schema 0008_metric_fold.sql), so that ReadMetrics reads only the recent rows; what
  // ReadMetrics reports is the same before and after. The scheduler's periodic work calls it
  // (OrchestratorOptions::metrics_fold_interval). One caller at a time: while another folds or
  // purges, returns 0 at once (that caller's fold serves as well). Returns how many migrations
  // it folded.
  virtual absl::StatusOr<int64_t> FoldMetrics() = 0;

  // Sum of memory claims of active migrations into `host`.
  virtual absl::StatusOr<int64_t> MemoryClaimedOn(const std::string& host) = 0;

  // Deletes terminal migrations (and their events) finished before `before`; returns how many.
  // Folds their contributions to the metrics into metric_totals in the same statement, so that
  // ReadMetrics' counters do not go down.
  virtual absl::StatusOr<int64_t> PurgeFinished(absl::Time before) = 0;
};

// An evacuation is driven by one scheduler at a time, its owner, while the owner's lease is live
// (the database's clock), as a migration is: the owner renews its leases (RenewEvacuationLeases)
// and its writes are compare-and-swap on its live lease; another scheduler takes over an
// evacuation only once the lease expired (ListOrphanedEvacuations, AcquireEvacuationLease).
class EvacuationStore {
 public:
  virtual ~EvacuationStore() = default;
  // Creates the evacuation and its plan (each item with the instance's name at planning time),
  // with its destination and options, owned by `e.owner` under a lease of `e.lease` (no owner
  // when empty). With a request id: AlreadyExists when an evacuation already has it
  // (FindByRequestId). NotFound for an unknown host; InvalidArgument for bad input.
  virtual absl::StatusOr<EvacuationRecord> CreateEvacuation(const NewEvacuation& e) = 0;
  virtual absl::StatusOr<EvacuationRecord> GetEvacuation(int64_t id) = 0;
  // By its public id (EvacuationRecord::uuid), with its items. InvalidArgument for a malformed
  // UUID; NotFound when none has it.
  virtual absl::StatusOr<EvacuationRecord> GetEvacuationByUuid(const std::string& uuid) = 0;
  // The evacuation created with `request_id` (with its items); NotFound when none.
  virtual absl::StatusOr<EvacuationRecord> FindEvacuationByRequestId(
      const std::string& request_id) = 0;
  // Newest first, one page of `f`, each with its items (InvalidArgument for a page token this
  // server did not issue).
  virtual absl::StatusOr<EvacuationPage> ListEvacuations(const EvacuationFilter& f) = 0;
  // The owner's writes: compare-and-swap on (running, `owner` holds an unexpired lease).
  // Aborted when the lease is not `owner`'s (lost, expired, taken over), FailedPrecondition when
  // the evacuation already finished or the item was cancelled (CancelEvacuation; the item keeps
  // that outcome), NotFound for an unknown evacuation or item. Finishing releases the lease.
  virtual absl::Status UpdateEvacuationItem(int64_t evacuation_id, const std::string& owner,
                                            const EvacuationItem& item) = 0;
  virtual absl::Status FinishEvacuation(int64_t id, const std::string& owner,
                                        const std::string& status) = 0;

  // Records a cancel of running evacuation `id` by `by` (why: `reason`), whoever owns it: its
  // pending items become `cancelled` with the reason, and from then on CreateMigration refuses
  // its migrations (FailedPrecondition). With no migration of it in flight it finishes as
  // `cancelled` at once (releasing its lease); else it stays `running` with the cancel recorded
  // until its owner finishes it. A second cancel changes nothing (the first reason stays).
  // Returns the evacuation with its items. FailedPrecondition when it finished otherwise (naming
  // its status); NotFound when unknown.
  virtual absl::StatusOr<EvacuationRecord> CancelEvacuation(int64_t id, const std::string& by,
                                                            const std::string& reason) = 0;

  // Takes or renews the lease of a running evacuation when it has no owner, its lease expired,
  // or it is already `owner`'s: true. False when another owner holds a live lease (two callers
  // never both get true). FailedPrecondition when it finished; NotFound when unknown.
  virtual absl::StatusOr<bool> AcquireEvacuationLease(int64_t id, const std::string& owner,
                                                      absl::Duration ttl) = 0;
  // Renews every live lease `owner` holds on a running evacuation; returns how many.
  virtual absl::StatusOr<int> RenewEvacuationLeases(const std::string& owner,
                                                    absl::Duration ttl) = 0;
  // Running evacuations with no owner or an expired lease (candidates for a takeover), oldest
  // first, without their items.
  virtual absl::StatusOr<std::vector<EvacuationRecord>> ListOrphanedEvacuations() = 0;
};

}  // namespace livemig::db

#endif  // LIVEMIG_DB_STORES_H_
