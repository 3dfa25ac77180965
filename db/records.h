// Plain records the stores read and write. They mirror the tables of db/schema/*.sql; the
// scheduler translates them to and from the protos at its API edge.
#ifndef LIVEMIG_DB_RECORDS_H_
#define LIVEMIG_DB_RECORDS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/migration_status.h"
#include "common/step_name.h"

namespace livemig::db {

namespace v1 = ::livemig::v1;

// A step's name in the database (migrations.step, migration_events.step): StepName's, except
// "accepted" for the accept step (the name the store has always written); read back with
// StepFromName.
std::string StepText(v1::MigrationStep step);

// One domain as a host reports it.
struct DomainReport {
  std::string uuid;  // libvirt domain UUID (canonical 8-4-4-4-12 form)
  std::string name;
  std::string power_state;  // running, paused, shutoff, crashed, ...
  int64_t memory_mib = 0;
  int32_t vcpus = 0;
  // Its disks: a JSON array of DomainDisk in proto3 JSON (the scheduler's convert code writes and
  // reads it; the store only checks that it is an array).
  std::string disks_json = "[]";
};

// A host's inventory as its agent reports it (docs/DESIGN.md § Hosts and liveness).
struct HostReport {
  std::string hostname;
  std::string agent_address;
  std::string agent_version;
  std::string hypervisor_type;
  int64_t hypervisor_version = 0;  // major*1000000 + minor*1000 + release
  int64_t libvirt_version = 0;
  std::string cpu_arch;
  std::string cpu_model;
  std::vector<std::string> cpu_features;
  std::string cpu_xml;
  int64_t memory_total_mib = 0;
  int64_t memory_free_mib = 0;
  int64_t memory_reserved_mib = 0;
  std::vector<std::string> network_segments;
  std::vector<std::string> shared_storage;
  std::string instance_path;
  std::string capabilities_json = "{}";  // a JSON object
  // Identifies one run of the agent: sequence numbers restart with a new boot id.
  std::string agent_boot_id;
  int64_t seq = 0;
  std::vector<DomainReport> domains;
  // The reporter's deadline: a report that cannot be committed before it is not applied
  // (DeadlineExceeded). The agent counts a call past its deadline as failed and relies on the
  // report not having moved anything (the report fence); unset: no deadline.
  std::optional<absl::Time> apply_before;
};

struct HostRecord {
  HostReport report;  // the last accepted report (domains left empty)
  bool enabled = true;
  std::string disabled_reason;
  std::string disabled_by;
  std::optional<absl::Time> disabled_at;
  std::optional<absl::Time> last_report_at;
  bool up = false;                 // last report younger than service_down_time
  int64_t memory_claimed_mib = 0;  // by active inbound migrations
  int64_t migrations_in = 0;       // active inbound migrations
  int64_t migrations_out = 0;      // active outbound migrations
  int64_t instances = 0;           // instances on the host, not missing
};

// One page of hosts, by host name (HostStore::ListHostsPage).
struct HostFilter {
  std::optional<bool> enabled;  // unset: both
  std::optional<bool> up;       // unset: both
  int page_size = 50;           // 1..1000
  std::string page_token;       // from a previous page; empty: first page
};

struct HostPage {
  std::vector<HostRecord> hosts;
  std::string next_page_token;  // empty: no more
};

// The hosts that could take an instance (HostStore::ListDestinationCandidates): every host but
// `source` that passes each narrowing set (unset: not narrowed): enabled, up, runs
// `hypervisor_type` at `min_hypervisor_version` or later on `cpu_arch`, and has `memory_mib`
// available after its dom0 reserve and inbound claims. The scheduler fills it from its checks
// (scheduler/checks_registry.h, NarrowQuery). Ordered as RankDestinations ranks (most memory
// available, then fewest migrations in flight, then name).
struct DestinationQuery {
  std::string source;
  bool only_enabled = false;
  bool only_up = false;  // reported within service_down_time
  std::optional<std::string> hypervisor_type;
  std::optional<int64_t> min_hypervisor_version;
  std::optional<std::string> cpu_arch;
  std::optional<int64_t> memory_mib;
  int limit = 32;
};

struct ReportResult {
  bool accepted = false;  // false: stale (a newer report was already applied)
  int64_t seq = 0;        // the sequence number the store now holds
  int instances_upserted = 0;
  int instances_marked_missing = 0;
};

struct InstanceRecord {
  std::string uuid;
  std::string name;
  std::string host;  // empty: unknown
  std::string power_state;
  int64_t memory_mib = 0;
  int32_t vcpus = 0;
  std::optional<std::string> task_state;  // "migrating" while a migration holds it
  bool missing = false;
  std::optional<absl::Time> missing_since;
  std::optional<int64_t> active_migration_id;
  absl::Time updated_at;
  // Its disks as its host last reported them (DomainReport::disks_json); "[]" until then.
  std::string disks_json = "[]";
};

// One page of instances, by name, then UUID (InstanceStore::ListInstancesPage).
struct InstanceFilter {
  std::string host;                       // empty: every host
  std::vector<std::string> power_states;  // empty: any
  std::optional<bool> missing;            // unset: both
  std::optional<bool> migrating;          // unset: both (migrating: task_state set)
  int page_size = 50;                     // 1..1000
  std::string page_token;                 // from a previous page; empty: first page
};

struct InstancePage {
  std::vector<InstanceRecord> instances;
  std::string next_page_token;  // empty: no more
};

struct MigrationProgress {
  std::string phase;  // pre-copy, post-copy, paused-to-complete
  std::optional<int64_t> bytes_total;
  std::optional<int64_t> bytes_processed;
  std::optional<int64_t> bytes_remaining;
  std::optional<double> percent;
  std::optional<int64_t> downtime_ms;
  std::optional<int64_t> elapsed_ms;
  std::optional<absl::Time> sampled_at;
};

struct MigrationRecord {
  int64_t id = 0;    // the operator-facing number
  std::string uuid;  // the idempotency key of every agent step (proto Migration.id)
  std::optional<std::string> request_id;
  // The UUID of the evacuation that started it (proto Migration.evacuation_id); "" when it was
  // requested on its own.
  std::string evacuation_uuid;
  std::string instance_uuid;
  std::string instance_name;  // the instance's name (read with the row)
  std::string source_host;
  std::string dest_host;       // empty until chosen
  std::string requested_dest;  // empty: the scheduler chooses
  MigrationStatus status = MigrationStatus::kAccepted;
  // The step in progress (its intent recorded), or the last one. Stored as its name (StepText).
  v1::MigrationStep step = v1::MIGRATION_STEP_UNSPECIFIED;
  bool live = true;
  std::string block_migration = "auto";
  std::string options_json = "{}";
  int64_t memory_claim_mib = 0;
  std::string requested_by;
  std::string aborted_by;
  std::string abort_reason;  // the reason given with the abort ("" without one)
  std::optional<absl::Time> abort_requested_at;
  std::string force_complete_requested_by;
  std::optional<absl::Time> force_complete_requested_at;
  std::string failure_reason;
  // The destination candidates ranked when the scheduler chose the destination: a JSON array of
  // scheduler.v1.HostCheck (proto3 JSON), best first; "" when none (destination requested).
  std::string candidates_json;
  MigrationProgress progress;
  std::string owner;
  std::optional<absl::Time> lease_expires_at;
  absl::Time created_at;
  absl::Time updated_at;
  std::optional<absl::Time> started_at;
  std::optional<absl::Time> finished_at;
};

struct MigrationEvent {
  int64_t id = 0;
  int64_t migration_id = 0;
  v1::MigrationStep step = v1::MIGRATION_STEP_UNSPECIFIED;
  std::string kind = "info";  // intent, result, info
  std::string outcome;        // ok, failed, ... ('' for an intent)
  std::string status;         // the migration's status after the event
  std::string actor;
  std::string detail;
  // The host the step ran on, for a step an agent runs on one host (the source or the
  // destination); "" for the scheduler's own steps (and for events older than schema 10).
  std::string host;
  absl::Time started_at;
  std::optional<absl::Time> finished_at;
  std::optional<int64_t> duration_ms;
};

struct NewMigration {
  std::optional<std::string> request_id;
  // The UUID of the evacuation starting it (EvacuationRecord::uuid); unset: on its own.
  std::optional<std::string> evacuation_uuid;
  std::string instance_uuid;
  std::string dest_host;  // empty: the scheduler chooses later
  bool live = true;
  std::string block_migration = "auto";
  std::string options_json = "{}";
  int64_t memory_claim_mib = 0;
  std::string requested_by;
  std::string owner;  // the scheduler that will drive it (gets the first lease)
  absl::Duration lease = absl::Seconds(15);
};

struct CreateMigrationResult {
  MigrationRecord migration;
  bool created = false;  // false: the request id matched an existing migration
};

// The concurrency limits of one migration from `source` to `dest` (--max-*-migrations).
struct SlotLimits {
  std::string source, dest;
  int max_total = 0, max_out_of_source = 0, max_into_dest = 0;
};

// A state-machine step, applied with compare-and-swap on (status, owner).
struct Transition {
  int64_t migration_id = 0;
  std::string owner;  // must hold the lease
  MigrationStatus from = MigrationStatus::kAccepted;
  MigrationStatus to = MigrationStatus::kAccepted;
  v1::MigrationStep step = v1::MIGRATION_STEP_UNSPECIFIED;
  // The event recorded in the same transaction (its step: event_step, default `step`).
  v1::MigrationStep event_step = v1::MIGRATION_STEP_UNSPECIFIED;
  std::string event_kind = "result";
  std::string event_outcome = "ok";
  std::string event_detail;
  std::string event_host;                      // MigrationEvent::host
  std::optional<absl::Time> event_started_at;  // for timings; default now
  // Optional field updates.
  std::optional<std::string> dest_host;
  std::optional<int64_t> memory_claim_mib;
  std::optional<std::string> failure_reason;
  // The ranked destination candidates (MigrationRecord::candidates_json), when choosing one.
  std::optional<std::string> candidates_json;
  bool mark_started = false;  // sets started_at (the transfer began)
  // The pre-check that refused the migration (a check's stable name), with a `failed` `to`.
  std::optional<std::string> refused_check;
  // More events in the same transaction (e.g. the next step's intent).
  std::vector<MigrationEvent> extra_events;
  // Set when the transition takes a concurrency slot (into `preparing`): it applies only if,
  // under a database lock that every such transition takes, the slot use leaves room within
  // these limits (WhyNoSlot). Otherwise nothing changes and ApplyTransition returns
  // ResourceExhausted. Checking first and moving after, in two statements, would let two
  // migrations decided at the same moment both take the last slot.
  std::optional<SlotLimits> slot;
};

struct MigrationFilter {
  std::vector<MigrationStatus> statuses;  // empty: any
  std::string host;                       // source or destination
  std::string instance_uuid;
  std::optional<absl::Time> created_after;
  std::optional<absl::Time> created_before;
  int page_size = 50;      // 1..1000
  std::string page_token;  // from a previous page; empty: first page
};

// What the concurrency limits need to decide whether one migration may start: the migrations
// other than it that hold a slot (HoldsSlot) in total, out of its source and into its
// destination, and whether an older migration touching either host waits in `queued` (FIFO).
struct SlotUse {
  int total = 0;
  int out_of_source = 0;
  int into_dest = 0;
  bool older_queued = false;
};

// Why `use` leaves the migration no slot within `limits` (FIFO: an older queued migration touching
// either host goes first); "" when one is free.
std::string WhyNoSlot(const SlotUse& use, const SlotLimits& limits);

struct MigrationPage {
  std::vector<MigrationRecord> migrations;
  std::string next_page_token;  // empty: no more
};

struct EvacuationItem {
  std::string instance_uuid;
  std::optional<int64_t> migration_id;
  std::string outcome = "pending";  // pending, migrating, completed, failed, skipped, cancelled
  std::string reason;
  // Read only (GetEvacuation): the status of the item's migration ("" without one) and its
  // failure reason, so that an evacuation's progress is one read, not one per migration.
  std::string migration_status;
  std::string migration_failure_reason;
  std::string instance_name;   // at planning time (read only)
  std::string migration_uuid;  // read only: the item's migration's UUID ("" without one)
  // Read only: the item's migration's destination ("" without a migration, or not chosen yet).
  std::string migration_dest_host;
};

struct EvacuationRecord {
  int64_t id = 0;    // the internal number (evacuation_items refer to it; logs show it)
  std::string uuid;  // the public id (proto Evacuation.id)
  std::string host;
  std::string status;  // running, completed, failed, cancelled
  int32_t max_parallel = 1;
  std::string requested_by;
  std::string reason;
  std::optional<std::string> request_id;  // the caller's idempotency key
  std::string destination;                // for every instance; "": the scheduler chooses
  std::string options_json = "{}";        // for every migration (MigrationOptions, proto3 JSON)
  // The scheduler driving it while running, until its lease expires ("" and unset: none).
  std::string owner;
  std::optional<absl::Time> lease_expires_at;
  absl::Time created_at;
  absl::Time updated_at;
  std::optional<absl::Time> finished_at;
  // The cancel (CancelEvacuation): when it was recorded (unset: not cancelled), by whom, why.
  // Still `running` with a cancel: its migrations in flight are finishing (CANCELLING).
  std::optional<absl::Time> cancel_requested_at;
  std::string cancelled_by;
  std::string cancel_reason;
  std::vector<EvacuationItem> items;
  // Read only (GetEvacuation, with the items): its migrations not terminal now, whether or not
  // an item names them yet (a scheduler may have died between starting one and recording it).
  int active_migrations = 0;
};

// ListEvacuations' filter: newest first, keyset pages.
struct EvacuationFilter {
  std::string host;  // empty: every host
  // The API's statuses ("running", "cancelling", "completed", "completed_with_errors",
  // "cancelled"); empty: any.
  std::vector<std::string> statuses;
  int limit = 50;          // 1..1000
  std::string page_token;  // from a previous page; empty: first page
};

struct EvacuationPage {
  std::vector<EvacuationRecord> evacuations;
  std::string next_page_token;  // empty: no more
};

// EvacuationStore::CreateEvacuation's input.
struct NewEvacuation {
  std::string host;
  int32_t max_parallel = 1;
  std::string requested_by;
  std::string reason;
  std::vector<std::string> instance_uuids;  // the plan
  std::optional<std::string> request_id;    // the caller's idempotency key
  std::string destination;                  // for every instance; "": the scheduler chooses
  std::string options_json = "{}";          // for every migration (a JSON object)
  // The scheduler that will drive it (gets the first lease); "": none yet (any may take it over).
  std::string owner;
  absl::Duration lease = absl::Seconds(15);
};

// ---- metrics (MigrationStore::ReadMetrics) ------------------------------------------------

// Histogram bucket upper bounds, in ms. The purge folds purged values into the bucket of these
// bounds (metric_totals.le_ms): changing a bound needs a schema migration that rebuckets
// metric_totals.
inline const std::vector<int64_t>& StepDurationBoundsMs() {
  static const std::vector<int64_t> b = {100, 500, 1000, 5000, 10000, 30000, 60000, 300000};
  return b;
}
inline const std::vector<int64_t>& TransferBoundsMs() {
  static const std::vector<int64_t> b = {1000,   5000,   10000,  30000,  60000,
                                         120000, 300000, 600000, 1800000};
  return b;
}
inline const std::vector<int64_t>& DowntimeBoundsMs() {
  static const std::vector<int64_t> b = {10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000};
  return b;
}

// One histogram (of one label value): cumulative counts per bound of its family (the +Inf bucket
// is `count`), and the sum of the observed values.
struct MetricHistogram {
  std::vector<int64_t> cumulative;
  int64_t count = 0;
  double sum_ms = 0;
};

// Figures for /metrics. Counters (never decrease): every migration that ended, by terminal
// status; those that ever entered `error`; the bytes the finished ones transferred (the last
// bytes_processed reported); pre-check refusals by check. Histograms (never decrease): each
// step's duration (the event log's results), the transfer time (the hypervisor job's elapsed
// time) and downtime of completed migrations (none recorded when the hypervisor reports none,
// as libxl). Gauges: the migrations not terminal, by status; hosts by liveness; disabled hosts.
struct MigrationMetrics {
  std::map<std::string, int64_t> ended;  // completed / failed / cancelled
  int64_t entered_error = 0;
  int64_t bytes_transferred = 0;
  std::map<std::string, int64_t> refusals;   // check name -> count
  std::map<std::string, int64_t> in_flight;  // non-terminal status -> count
  std::map<std::string, int64_t> hosts;      // "up" / "down" (HostRecord::up) -> count
  int64_t hosts_disabled = 0;
  std::map<std::string, MetricHistogram> step_durations;  // step -> StepDurationBoundsMs
  MetricHistogram transfer;                               // TransferBoundsMs
  MetricHistogram downtime;                               // DowntimeBoundsMs
};

}  // namespace livemig::db

#endif  // LIVEMIG_DB_RECORDS_H_
