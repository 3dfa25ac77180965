// One migration's state machine (the orchestrator's MigrationRun), for as long as this scheduler
// drives it: the state it carries between phases and the helpers every phase uses. Internal to
// //scheduler:orchestrator.
//
// Each phase is its own unit, with its forward action and its undo (docs/DESIGN.md § The
// migration flow), as Nova's conductor tasks are:
//
//   phase          file              forward                               undo
//   pre-checks     run_prechecks.cc  Accepted: database checks, choose    none: a refusal ends
//                                    the destination; Queued: wait for    the migration
//                                    a concurrency slot                   (`failed`)
//   preparing      run_preparing.cc  Preparing: steps 4-6 on the agents   RollBack
//   running        run_transfer.cc   Running + Monitor: the transfer      RollBack (before the
//                                    (started, or re-attached after a     domain runs on the
//                                    takeover)                            destination)
//   post           run_post.cc       PostMigrating: roll forward          none: retried until
//                                                                         roll_forward_for
//   rollback       run_rollback.cc   RollBack (row R); TwoRunningCopies;  -
//                                    Reconcile (status error)
//
// Drive() (migration_run.cc) dispatches on the row's status; a phase returns after its
// transition, and Drive() goes on from the row that transition committed.
#ifndef LIVEMIG_SCHEDULER_MIGRATION_RUN_H_
#define LIVEMIG_SCHEDULER_MIGRATION_RUN_H_

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "db/records.h"
#include "scheduler/agent_client.h"
#include "scheduler/orchestrator.h"
#include "scheduler/step_requests.h"

namespace livemig::sched {

// True when the answer shows the domain running (running or blocked).
bool DomainRuns(const cv1::DescribeInstanceResponse& r);

// True when the source's answer shows the domain there as a complete copy that runs or can run
// again (see migration_run.cc).
bool SourceHoldsDomain(const cv1::DescribeInstanceResponse& s);

// The host an agent runs `step` on: the destination's steps on `dest`, the source's (and the
// operator's abort and force-complete, relayed to the source) on `source`; "" for the
// scheduler's own steps (pre_checks, select_destination, wait_for_slot, reconcile, ...). Each
// event records it (MigrationEvent::host): the API, Nova's instance actions and cloudctl show it.
std::string StepHost(v1::MigrationStep step, const std::string& source, const std::string& dest);

class MigrationRun {
 public:
  using S = MigrationStatus;

  MigrationRun(Orchestrator* o, int64_t id) : o_(o), id_(id) {}
  // Starts from the row as created (no first read) and the instance the request validated.
  void Seed(db::MigrationRecord created, std::optional<db::InstanceRecord> instance) {
    m_ = std::move(created);
    fresh_ = true;
    instance_ = std::move(instance);
  }
  // Runs the phases until the migration is terminal or no longer this scheduler's.
  void Drive();

 private:
  // ---- shared by the phases (migration_run.cc) ------------------------------------------------
  std::string Tag() const {
    return absl::StrCat("migration=", m_.uuid, " number=", m_.id, " instance=", m_.instance_uuid);
  }
  const OrchestratorOptions& opt() const { return o_->options_; }
  // The state machine's timers (retry waits, polls, the roll-forward window, the agent-silence
  // limit, the transfer deadline) and its events' times, on the injected clock
  // (OrchestratorOptions::clock; docs/DESIGN.md § Clocks).
  absl::Time Now() const { return opt().clock->Now(); }
  void Sleep(absl::Duration d) const { o_->SleepUnlessStopping(d); }

  // The host an agent runs `step` on (StepHost), for this migration; `dest`: the destination
  // when the row does not name it yet (a candidate about to be tried).
  std::string HostOf(v1::MigrationStep step, const std::string& dest = "") const {
    return StepHost(step, m_.source_host, dest.empty() ? m_.dest_host : dest);
  }
  // The intent of `step`, recorded before its RPC; `dest` as in HostOf.
  db::MigrationEvent Intent(v1::MigrationStep step, const std::string& dest = "");
  db::MigrationEvent Result(v1::MigrationStep step, bool ok, const std::string& detail,
                            absl::Time started);
  // A state transition whose event is `step`'s result; `next` (optional) is the next intent.
  absl::Status Move(S to, v1::MigrationStep step, bool ok, const std::string& detail,
                    absl::Time started, std::optional<db::MigrationEvent> next = std::nullopt,
                    std::function<void(db::Transition&)> more = nullptr);
  // A step's result (and the next intent) without a change of status.
  absl::Status Record(v1::MigrationStep step, bool ok, const std::string& detail,
                      absl::Time started, const std::optional<db::MigrationEvent>& next,
                      std::optional<std::string> dest = std::nullopt);
  // An event of kind "info" (a note in the migration's log).
  void Note(v1::MigrationStep step, const std::string& detail);
  void WriteProgress(const cv1::MigrationProgressReport& r);

  absl::StatusOr<db::HostRecord> Host(const std::string& name);
  absl::StatusOr<std::shared_ptr<AgentClient>> Agent(const std::string& name);

  // An idempotent step's call under the one retry policy (OrchestratorOptions::retry).
  template <typename Resp>
  absl::StatusOr<Resp> Retry(const std::function<absl::StatusOr<Resp>()>& call) {
    return o_->RetryAgentCall<Resp>(Tag(), call);
  }
  // Who this migration's step requests are about (step_requests.h).
  StepTarget Target() const {
    return StepTarget{m_.uuid, m_.instance_uuid, m_.source_host, m_.dest_host};
  }
  template <typename Req>
  Req StepReq() const {
    return StepRequest<Req>(Target());
  }

  bool AbortRequested() const { return m_.abort_requested_at.has_value(); }
  std::string AbortReason() const;

  // What both hypervisors show of the instance (docs/DESIGN.md § Recovery rules).
  //   src_job: a job runs on the source's domain that may be this migration's transfer: one the
  //     agent names a migration (migration_job_active), or, on Xen, any job (job_active): libxl
  //     reports every job as "unbounded" of unknown operation, and the record says that this
  //     migration is (or was) transferring the domain. A job that was not the transfer is found
  //     out by the re-attached monitor (the transfer then ends FAILED and the migration rolls
  //     back); the cost of the other choice would be a rollback under a running transfer.
  //   src_holds: the source holds a complete copy (SourceHoldsDomain).
  //   dst_running: the destination has the running copy: running or blocked; or paused while the
  //     source does not hold the domain (a guest paused before the migration ends paused there).
  //     A paused destination domain while the source holds the domain is a half-received copy,
  //     not "the running copy", whatever its pause reason (Xen: "user", QEMU: "migration", which
  //     the agent already reports as INCOMING_PAUSED). So, after a takeover, Xen's half-received
  //     domain next to a source that runs the VM without a job leads to a rollback, as QEMU's.
  //   src_running: the source's domain runs (running or blocked), whatever else.
  struct Truth {
    bool src_present = false, src_job = false, src_holds = false, src_running = false;
    bool dst_present = false, dst_running = false;
    bool transfer_running = false;
    std::string transfer_error;
  };
  absl::StatusOr<Truth> Ask(AgentClient* src, AgentClient* dst);

  // ---- pre-checks (run_prechecks.cc) ----------------------------------------------------------
  absl::Status Accepted();
  absl::Status Queued();
  // Records the pre-check that refused the migration (counted by /metrics by check).
  static std::function<void(db::Transition&)> Refused(std::string check);
  db::SlotLimits Limits(const std::string& src, const std::string& dst) const;
  bool SlotFree(const db::SlotLimits& limits);

  // ---- preparing (run_preparing.cc) -----------------------------------------------------------
  absl::Status Preparing();

  // ---- running (run_transfer.cc) --------------------------------------------------------------
  absl::Status Running();
  absl::Status Monitor(AgentClient* src, AgentClient* dst, absl::Time started);
  absl::Duration NextPoll(const cv1::MigrationProgressReport& r) const;

  // ---- post-migrating (run_post.cc) -----------------------------------------------------------
  absl::Status PostMigrating();

  // ---- rollback and recovery (run_rollback.cc) ------------------------------------------------
  absl::Status RollBack(S final_status, const std::string& reason);
  // Whether `agent`'s host runs the domain (running or blocked), asked now; nullopt when it
  // cannot say.
  std::optional<bool> RunsOn(AgentClient* agent);
  // The source runs the domain too; unknown counts as no (the caller then rolls forward, as it
  // did before it asked).
  bool SourceRunsToo();
  // Unknown counts as yes: the caller then never tears the destination's copy down.
  bool DestinationRuns(AgentClient* dst) { return RunsOn(dst).value_or(true); }
  absl::Status TwoRunningCopies(const absl::Status& refusal, absl::Time t);
  void Reconcile();

  Orchestrator* o_;
  const int64_t id_;
  db::MigrationRecord m_;
  std::vector<std::string> candidates_;
  std::map<std::string, std::shared_ptr<AgentClient>> agents_;
  std::map<std::string, db::HostRecord> host_records_;
  bool fresh_ = false;  // m_ is the row a transition of this run just committed
  std::optional<db::InstanceRecord> instance_;  // seeded by Launch, used once by Accepted
  cv1::LiveMigrateData data_;
  bool prepared_ = false;
  v1::DomainState state_before_ = v1::DOMAIN_STATE_UNSPECIFIED;
};

}  // namespace livemig::sched

#endif  // LIVEMIG_SCHEDULER_MIGRATION_RUN_H_
