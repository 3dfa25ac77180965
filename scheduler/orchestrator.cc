// Size: MigrationRun, every phase of one migration (pre-checks, preparing, running, post,
// rollback) with its retries and recovery, and the dry run. Issue 19 item 2 makes the phases
// tasks, one small unit each, and moves the dry run beside them.
#include "scheduler/orchestrator.h"

#include <algorithm>
#include <random>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "common/status_map.h"
#include "common/test_hooks.h"
#include "scheduler/checks_registry.h"
#include "scheduler/convert.h"
#include "scheduler/prechecks.h"

namespace livemig::sched {

using S = MigrationStatus;

namespace {

// True when the answer shows the domain running (running or blocked).
bool DomainRuns(const cv1::DescribeInstanceResponse& r) {
  return r.present() && (r.domain().state() == v1::DOMAIN_STATE_RUNNING ||
                         r.domain().state() == v1::DOMAIN_STATE_BLOCKED);
}

// True when the source's answer shows the domain there as a complete copy that runs or can run
// again: running, blocked, paused (PAUSED: by an operator, an offline or paused-to-complete
// transfer), migrating out, or the source of an active job -- never in post-copy (the destination
// then holds the only complete copy). While the source holds the domain, a paused domain on the
// destination is a half-received copy, whatever its pause reason: on Xen, libxl pauses the incoming
// domain with reason "user" (QEMU says "migration"), and libxl resumes it on the destination before
// the source's domain is destroyed, so the destination's copy is never the only one while it is
// paused and the source still holds the domain.
bool SourceHoldsDomain(const cv1::DescribeInstanceResponse& s) {
  if (!s.present()) return false;
  const v1::DomainState st = s.domain().state();
  if (st == v1::DOMAIN_STATE_INCOMING_POST_COPY) return false;
  return s.domain().migration_job_active() || s.domain().job_active() ||
         st == v1::DOMAIN_STATE_RUNNING || st == v1::DOMAIN_STATE_BLOCKED ||
         st == v1::DOMAIN_STATE_PAUSED || st == v1::DOMAIN_STATE_MIGRATING_OUT;
}

// The host an agent runs `step` on: the destination's steps on `dest`, the source's (and the
// operator's abort and force-complete, relayed to the source) on `source`; "" for the
// scheduler's own steps (pre_checks, select_destination, wait_for_slot, reconcile, ...). Each
// event records it (MigrationEvent::host): the API, Nova's instance actions and cloudctl show it.
std::string StepHost(const std::string& step, const std::string& source, const std::string& dest) {
  static constexpr absl::string_view kOnDest[] = {
      "check_can_live_migrate_on_dest",
      "check_can_live_migrate_on_dest_cleanup",
      "pre_live_migration",
      "post_live_migration_at_destination",
      "rollback_live_migration_at_destination",
  };
  static constexpr absl::string_view kOnSource[] = {
      "check_can_live_migrate_on_src", "live_migration", "post_live_migration",
      "rollback_live_migration",       "abort",          "force_complete",
  };
  for (absl::string_view s : kOnDest) {
    if (s == step) return dest;
  }
  for (absl::string_view s : kOnSource) {
    if (s == step) return source;
  }
  return "";
}

}  // namespace

// One migration's state machine, for as long as this scheduler drives it.
class MigrationRun {
 public:
  MigrationRun(Orchestrator* o, int64_t id) : o_(o), id_(id) {}
  // Starts from the row as created (no first read) and the instance the request validated.
  void Seed(db::MigrationRecord created, std::optional<db::InstanceRecord> instance) {
    m_ = std::move(created);
    fresh_ = true;
    instance_ = std::move(instance);
  }

  void Drive() {
    while (!o_->Stopping()) {
      // After a transition, m_ is the row as that transaction committed it (abort requests
      // included): no need to read it again.
      if (!fresh_) {
        auto m = o_->migrations_->GetMigration(id_);
        if (!m.ok()) {
          LogWarning("migration=%d cannot be read: %s", id_, m.status().message());
          Sleep(absl::Seconds(1));
          continue;
        }
        m_ = *m;
      }
      fresh_ = false;
      if (IsTerminal(m_.status) || m_.owner != o_->options_.scheduler_id) return;
      absl::Status s;
      switch (m_.status) {
        case S::kAccepted:
          s = Accepted();
          break;
        case S::kQueued:
          s = Queued();
          break;
        case S::kPreparing:
          s = Preparing();
          break;
        case S::kRunning:
        case S::kRunningPostCopy:
          s = Running();
          break;
        case S::kPostMigrating:
          s = PostMigrating();
          break;
        case S::kError:
          Reconcile();
          return;  // retried later by the dispatcher
        default:
          return;
      }
      if (!s.ok()) {
        if (s.code() == absl::StatusCode::kAborted) return;  // lease lost or row moved on
        LogWarning("%s: %s (retrying)", Tag(), s.message());
        Sleep(absl::Seconds(1));
      }
    }
  }

 private:
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
  std::string HostOf(const std::string& step, const std::string& dest = "") const {
    return StepHost(step, m_.source_host, dest.empty() ? m_.dest_host : dest);
  }
  // The intent of `step`, recorded before its RPC; `dest` as in HostOf.
  db::MigrationEvent Intent(const std::string& step, const std::string& dest = "") {
    db::MigrationEvent e;
    e.step = step;
    e.kind = "intent";
    e.host = HostOf(step, dest);
    e.detail = absl::StrCat(step, " on ", e.host);
    e.started_at = Now();
    return e;
  }
  db::MigrationEvent Result(const std::string& step, bool ok, const std::string& detail,
                            absl::Time started) {
    db::MigrationEvent e;
    e.step = step;
    e.kind = "result";
    e.host = HostOf(step);
    e.outcome = ok ? "ok" : "failed";
    e.detail = detail;
    e.started_at = started;
    e.finished_at = Now();
    e.duration_ms = absl::ToInt64Milliseconds(*e.finished_at - started);
    return e;
  }

  // A state transition whose event is `step`'s result; `next` (optional) is the next intent.
  absl::Status Move(S to, const std::string& step, bool ok, const std::string& detail,
                    absl::Time started, std::optional<db::MigrationEvent> next = std::nullopt,
                    std::function<void(db::Transition&)> more = nullptr) {
    db::Transition t;
    t.migration_id = m_.id;
    if (to == S::kCompleted) next.reset();
    t.owner = opt().scheduler_id;
    t.from = m_.status;
    t.to = to;
    t.step = next ? next->step : step;
    t.event_kind = "result";
    t.event_outcome = ok ? "ok" : "failed";
    t.event_detail = detail;
    t.event_host = HostOf(step);
    t.event_started_at = started;
    if (next) t.extra_events.push_back(*next);
    if (to == S::kFailed || to == S::kCancelled || to == S::kError) t.failure_reason = detail;
    if (more) more(t);
    t.event_step = step;  // the event reports `step`; the row moves on to the next intent
    auto r = o_->migrations_->ApplyTransition(t);
    if (!r.ok()) return r.status();
    LogInfo("%s status %s -> %s (%s)%s%s", Tag(), ToString(m_.status), ToString(to), step,
            detail.empty() ? "" : ": ", detail);
    m_ = *r;
    fresh_ = true;
    if (IsTerminal(to)) o_->MigrationEnded();
    return absl::OkStatus();
  }

  absl::Status Record(const std::string& step, bool ok, const std::string& detail,
                      absl::Time started, const std::optional<db::MigrationEvent>& next,
                      std::optional<std::string> dest = std::nullopt) {
    std::vector<db::MigrationEvent> events = {Result(step, ok, detail, started)};
    if (next) events.push_back(*next);
    fresh_ = false;
    RETURN_IF_ERROR(o_->migrations_->RecordStep(m_.id, opt().scheduler_id, m_.status,
                                                next ? next->step : step, events, dest));
    if (dest) m_.dest_host = *dest;
    return absl::OkStatus();
  }

  // A host's record, read once per run of this state machine: the pre-checks, the agent checks
  // and the agent's address use the same report (7 reads per migration before, 2 now).
  absl::StatusOr<db::HostRecord> Host(const std::string& name) {
    auto it = host_records_.find(name);
    if (it != host_records_.end()) return it->second;
    ASSIGN_OR_RETURN(db::HostRecord h, o_->hosts_->GetHost(name, opt().service_down_time));
    host_records_[name] = h;
    return h;
  }
  // The agent of `name`, resolved from its host report once per run of this state machine.
  absl::StatusOr<std::shared_ptr<AgentClient>> Agent(const std::string& name) {
    auto it = agents_.find(name);
    if (it != agents_.end()) return it->second;
    ASSIGN_OR_RETURN(db::HostRecord h, Host(name));
    auto client = o_->agents_->ForHost(name, h.report.agent_address);
    agents_[name] = client;
    return client;
  }

  // An idempotent step's call under the one retry policy (OrchestratorOptions::retry).
  template <typename Resp>
  absl::StatusOr<Resp> Retry(const std::function<absl::StatusOr<Resp>()>& call) {
    return o_->RetryAgentCall<Resp>(Tag(), call);
  }

  template <typename Req>
  Req StepReq() const {
    Req r;
    r.set_migration_id(m_.uuid);
    r.set_instance_uuid(m_.instance_uuid);
    r.set_source_host(m_.source_host);
    r.set_dest_host(m_.dest_host);
    return r;
  }

  bool AbortRequested() const { return m_.abort_requested_at.has_value(); }

  // ---- accepted: pre-checks from the database, destination choice ---------------------------
  absl::Status Accepted() {
    TestPoint("pre_checks:before");  // tests only (common/test_hooks.h)
    const absl::Time start = Now();
    if (AbortRequested()) return Move(S::kCancelled, "pre_checks", false, AbortReason(), start);
    db::InstanceRecord inst;
    if (instance_ && instance_->uuid == m_.instance_uuid) {
      inst = *std::move(instance_);  // read by the request just before it claimed the instance
    } else {
      ASSIGN_OR_RETURN(inst, o_->instances_->GetInstance(m_.instance_uuid));
    }
    instance_.reset();
    ASSIGN_OR_RETURN(db::HostRecord src, Host(m_.source_host));
    const v1::MigrationOptions options = OptionsFromJson(m_.options_json);
    for (const auto& c : CheckSource(inst, src, options)) {
      if (!c.passed()) {
        return Move(S::kFailed, "pre_checks", false, c.reason(), start, std::nullopt,
                    Refused(c.name()));
      }
    }
    candidates_.clear();
    // The ranked candidates (with every check and the rejected ones' reasons), persisted with the
    // destination in the same transition (Migration.candidates); bounded.
    std::optional<std::string> ranked_json;
    if (!m_.requested_dest.empty()) {
      ASSIGN_OR_RETURN(db::HostRecord dst, Host(m_.requested_dest));
      // The request already claimed the instance's memory on its destination: that claim is
      // this migration's own and must not count against it.
      if (m_.dest_host == m_.requested_dest) {
        dst.memory_claimed_mib = std::max<int64_t>(0, dst.memory_claimed_mib - m_.memory_claim_mib);
      }
      sv1::HostCheck hc = CheckDestination(inst, src, dst, options);
      if (!hc.passed()) {
        return Move(S::kFailed, "pre_checks", false, FirstFailure(hc.checks()), start, std::nullopt,
                    Refused(FirstFailedCheck(hc.checks())));
      }
      candidates_.push_back(m_.requested_dest);
    } else {
      ASSIGN_OR_RETURN(
          std::vector<sv1::HostCheck> ranked,
          ChooseDestinations(*o_->hosts_, inst, src, options, opt().service_down_time));
      ranked_json = CandidatesToJson(ranked, kDestinationCandidates);
      std::string rejected;
      for (const auto& hc : ranked) {
        if (hc.passed()) {
          candidates_.push_back(hc.host());
        } else {
          absl::StrAppend(&rejected, rejected.empty() ? "" : "; ", FirstFailure(hc.checks()));
        }
      }
      if (!rejected.empty() && !candidates_.empty()) {
        Note("select_destination",
             absl::StrCat("candidates in order: ", absl::StrJoin(candidates_, ", "),
                          "; rejected: ", rejected));
      }
      if (candidates_.empty()) {
        return Move(
            S::kFailed, "select_destination", false,
            absl::StrCat("no host can take instance ", inst.name.empty() ? inst.uuid : inst.name,
                         rejected.empty() ? ": no other host is known" : ": ", rejected),
            start, std::nullopt, [&](db::Transition& t) {
              t.candidates_json = ranked_json;
              // The best-ranked host's refusal (or none: no other host is known).
              t.refused_check =
                  ranked.empty() ? "no_other_host" : FirstFailedCheck(ranked.front().checks());
            });
      }
    }
    const std::string dest = candidates_.front();
    const bool slot = SlotFree(Limits(m_.source_host, dest));
    auto set_dest = [&](db::Transition& t) {
      t.dest_host = dest;
      t.memory_claim_mib = inst.memory_mib;
      t.candidates_json = ranked_json;
    };
    const std::string detail =
        absl::StrCat("pre-checks passed; destination ", dest,
                     m_.requested_dest.empty() ? " (chosen)" : " (requested)");
    TestPoint("pre_checks:after");
    if (slot) {
      // Taken under the database's slot lock: another migration may have taken it meanwhile.
      absl::Status took =
          Move(S::kPreparing, "pre_checks", true, detail, start,
               Intent("check_can_live_migrate_on_dest", dest), [&](db::Transition& t) {
                 set_dest(t);
                 t.slot = Limits(m_.source_host, dest);
               });
      if (!absl::IsResourceExhausted(took)) return took;
      LogInfo("%s %s", Tag(), took.message());
    }
    return Move(S::kQueued, "pre_checks", true, detail + "; waiting for a slot", start,
                std::nullopt, set_dest);
  }

  // Records the pre-check that refused the migration (counted by /metrics by check).
  static std::function<void(db::Transition&)> Refused(std::string check) {
    return [check = std::move(check)](db::Transition& t) { t.refused_check = check; };
  }

  std::string AbortReason() const {
    return absl::StrCat("aborted by ", m_.aborted_by.empty() ? "an operator" : m_.aborted_by,
                        m_.abort_reason.empty() ? "" : ": ", m_.abort_reason);
  }

  db::SlotLimits Limits(const std::string& src, const std::string& dst) const {
    db::SlotLimits l;
    l.source = src;
    l.dest = dst;
    l.max_total = opt().max_total;
    l.max_out_of_source = opt().max_outbound_per_host;
    l.max_into_dest = opt().max_inbound_per_host;
    return l;
  }

  // FIFO within the per-host and total limits, as read now (one cheap read): whether taking a
  // slot is worth trying. The slot is taken by the transition into `preparing` (Transition::slot),
  // which checks again under the database's lock.
  bool SlotFree(const db::SlotLimits& limits) {
    auto use = o_->migrations_->GetSlotUse(m_.id, limits.source, limits.dest);
    if (!use.ok()) {
      LogWarning("migration=%d: slot use unknown, waiting: %s", m_.id, use.status().message());
      return false;
    }
    return db::WhyNoSlot(*use, limits).empty();
  }

  // ---- queued ------------------------------------------------------------------------------
  absl::Status Queued() {
    const absl::Time start = Now();
    while (!o_->Stopping()) {
      ASSIGN_OR_RETURN(m_, o_->migrations_->GetMigration(id_));
      if (m_.status != S::kQueued || m_.owner != opt().scheduler_id) return absl::OkStatus();
      if (AbortRequested())
        return Move(S::kCancelled, "wait_for_slot", false, AbortReason(), start);
      const db::SlotLimits limits = Limits(m_.source_host, m_.dest_host);
      if (SlotFree(limits)) {
        absl::Status took = Move(S::kPreparing, "wait_for_slot", true, "a slot is free", start,
                                 Intent("check_can_live_migrate_on_dest"),
                                 [&](db::Transition& t) { t.slot = limits; });
        if (!absl::IsResourceExhausted(took)) {
          // Left `queued`: the wait may have been long, so the host records cached since the
          // pre-checks (and the agents resolved from their addresses) are dropped, and
          // Preparing reads the source's and the destination's current reports. Without a
          // wait (accepted -> preparing) the cache is kept.
          host_records_.clear();
          agents_.clear();
          return took;
        }
      }
      Sleep(opt().dispatch_interval * 2);
    }
    return absl::OkStatus();
  }

  // ---- preparing: steps 4-6 ------------------------------------------------------------------
  absl::Status Preparing() {
    if (AbortRequested()) return RollBack(S::kCancelled, AbortReason());
    ASSIGN_OR_RETURN(db::HostRecord src_host, Host(m_.source_host));
    ASSIGN_OR_RETURN(auto src, Agent(m_.source_host));
    const v1::MigrationOptions options = OptionsFromJson(m_.options_json);
    if (candidates_.empty()) candidates_.push_back(m_.dest_host);
    std::string last_reason, last_check;
    int attempts = 0;
    for (const std::string& cand : candidates_) {
      if (attempts++ >= opt().destination_attempts) break;
      if (cand != m_.dest_host) {
        RETURN_IF_ERROR(Record("select_destination", true, "falling back to " + cand, Now(),
                               Intent("check_can_live_migrate_on_dest", cand), cand));
      }
      ASSIGN_OR_RETURN(db::HostRecord dst_host, Host(cand));
      ASSIGN_OR_RETURN(auto dst, Agent(cand));
      // Step 4 on the destination.
      absl::Time t = Now();
      cv1::DescribeInstanceRequest di;
      di.set_instance_uuid(m_.instance_uuid);
      auto desc = Retry<cv1::DescribeInstanceResponse>([&] { return src->DescribeInstance(di); });
      if (!desc.ok()) return RollBack(S::kFailed, std::string(desc.status().message()));
      if (!desc->present()) {
        return RollBack(S::kFailed, absl::StrCat("instance ", m_.instance_uuid,
                                                 " is not on its source ", m_.source_host));
      }
      auto dreq = StepReq<cv1::CheckCanLiveMigrateOnDestRequest>();
      *dreq.mutable_source_cpu() = ToProtoHost(src_host).inventory().cpu();
      dreq.set_source_hypervisor_type(src_host.report.hypervisor_type);
      dreq.set_source_hypervisor_version(static_cast<uint64_t>(src_host.report.hypervisor_version));
      *dreq.mutable_instance() = desc->domain();
      *dreq.mutable_options() = options;
      TestPoint("check_can_live_migrate_on_dest:before");
      auto d = Retry<cv1::CheckCanLiveMigrateOnDestResponse>(
          [&] { return dst->CheckCanLiveMigrateOnDest(dreq); });
      TestPoint("check_can_live_migrate_on_dest:after");
      if (!d.ok() || !d->passed()) {
        last_reason = d.ok() ? FirstFailure(d->checks()) : std::string(d.status().message());
        last_check = d.ok() ? FirstFailedCheck(d->checks()) : "check_can_live_migrate_on_dest";
        RETURN_IF_ERROR(
            Record("check_can_live_migrate_on_dest", false, last_reason, t, std::nullopt));
        if (!m_.requested_dest.empty()) break;
        continue;
      }
      data_.Clear();
      *data_.mutable_dest_check() = d->dest_check_data();
      RETURN_IF_ERROR(Record("check_can_live_migrate_on_dest", true, "destination accepts", t,
                             Intent("check_can_live_migrate_on_src")));
      // Step 5 on the source.
      t = Now();
      auto sreq = StepReq<cv1::CheckCanLiveMigrateOnSrcRequest>();
      *sreq.mutable_dest_check_data() = d->dest_check_data();
      *sreq.mutable_options() = options;
      TestPoint("check_can_live_migrate_on_src:before");
      auto s = Retry<cv1::CheckCanLiveMigrateOnSrcResponse>(
          [&] { return src->CheckCanLiveMigrateOnSrc(sreq); });
      TestPoint("check_can_live_migrate_on_src:after");
      if (!s.ok() || !s->passed()) {
        last_reason = s.ok() ? FirstFailure(s->checks()) : std::string(s.status().message());
        last_check = s.ok() ? FirstFailedCheck(s->checks()) : "check_can_live_migrate_on_src";
        auto cleanup = StepReq<cv1::CheckCanLiveMigrateOnDestCleanupRequest>();
        *cleanup.mutable_dest_check_data() = d->dest_check_data();
        Retry<cv1::CheckCanLiveMigrateOnDestCleanupResponse>([&] {
          return dst->CheckCanLiveMigrateOnDestCleanup(cleanup);
        }).IgnoreError();
        RETURN_IF_ERROR(
            Record("check_can_live_migrate_on_src", false, last_reason, t, std::nullopt));
        if (!m_.requested_dest.empty()) break;
        continue;
      }
      *data_.mutable_src_check() = s->src_check_data();
      RETURN_IF_ERROR(
          Record("check_can_live_migrate_on_src", true,
                 s->src_check_data().block_migration() ? "block migration" : "shared storage", t,
                 Intent("pre_live_migration", cand)));
      // Step 6 on the destination.
      t = Now();
      auto pre = StepReq<cv1::PreLiveMigrationRequest>();
      *pre.mutable_migrate_data() = data_;
      *pre.mutable_options() = options;
      TestPoint("pre_live_migration:before");
      auto p = Retry<cv1::PreLiveMigrationResponse>([&] { return dst->PreLiveMigration(pre); });
      TestPoint("pre_live_migration:after");
      if (!p.ok()) return RollBack(S::kFailed, std::string(p.status().message()));
      *data_.mutable_pre_live_migration() = p->pre_live_migration_data();
      prepared_ = true;
      state_before_ = desc->domain().state();
      ASSIGN_OR_RETURN(m_, o_->migrations_->GetMigration(id_));
      if (AbortRequested()) return RollBack(S::kCancelled, AbortReason());
      return Move(S::kRunning, "pre_live_migration", true, "destination prepared", t,
                  Intent("live_migration"), [](db::Transition& tr) { tr.mark_started = true; });
    }
    return Move(S::kFailed, "check_can_live_migrate_on_dest", false,
                last_reason.empty() ? "no destination passed the agent checks" : last_reason, Now(),
                std::nullopt,
                Refused(last_check.empty() ? "check_can_live_migrate_on_dest" : last_check));
  }

  // ---- running: the transfer -----------------------------------------------------------------
  absl::Status Running() {
    ASSIGN_OR_RETURN(auto src, Agent(m_.source_host));
    ASSIGN_OR_RETURN(auto dst, Agent(m_.dest_host));
    // When the transfer started, on the injected clock: the row's start (the database's time)
    // as long ago as it is in real time. (With the real clock: the row's start.)
    const absl::Time started =
        m_.started_at ? Now() - std::max(absl::ZeroDuration(), absl::Now() - *m_.started_at)
                      : Now();
    auto lm = StepReq<cv1::LiveMigrationRequest>();
    *lm.mutable_options() = OptionsFromJson(m_.options_json);
    if (prepared_) {
      *lm.mutable_migrate_data() = data_;
      TestPoint("live_migration:before");
      auto r = Retry<cv1::LiveMigrationResponse>([&] { return src->LiveMigration(lm); });
      TestPoint("live_migration:started");
      if (!r.ok() && r.status().code() != absl::StatusCode::kUnavailable &&
          r.status().code() != absl::StatusCode::kDeadlineExceeded) {
        return RollBack(S::kFailed, std::string(r.status().message()));
      }
      prepared_ = false;
    } else {
      // Taken over (or restarted): the truth is on the hypervisors.
      ASSIGN_OR_RETURN(Truth truth, Ask(src.get(), dst.get()));
      if (truth.src_job || truth.transfer_running) {
        auto r = Retry<cv1::LiveMigrationResponse>(
            [&] { return src->LiveMigration(lm); });  // attaches to the running job
        if (!r.ok()) LogWarning("%s re-attach: %s", Tag(), r.status().message());
      } else if (truth.dst_running && !truth.src_present) {
        return Move(S::kPostMigrating, "live_migration", true,
                    "the domain runs on the destination only (found after takeover)", started,
                    Intent("post_live_migration"));
      } else if (truth.src_present && !truth.dst_running) {
        if (m_.status == S::kRunningPostCopy) {
          return Move(S::kError, "live_migration", false,
                      "post-copy had started but the transfer is gone; check the destination",
                      started);
        }
        return RollBack(AbortRequested() ? S::kCancelled : S::kFailed,
                        truth.transfer_error.empty()
                            ? "the transfer was not running after a scheduler takeover"
                            : truth.transfer_error);
      } else {
        return Move(S::kError, "live_migration", false,
                    absl::StrCat("cannot prove where the VM runs: source ",
                                 truth.src_present ? "has" : "lacks", " it, destination ",
                                 truth.dst_running ? "runs" : "does not run", " it"),
                    started);
      }
    }
    return Monitor(src.get(), dst.get(), started);
  }

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
  absl::StatusOr<Truth> Ask(AgentClient* src, AgentClient* dst) {
    cv1::DescribeInstanceRequest di;
    di.set_instance_uuid(m_.instance_uuid);
    di.set_migration_id(m_.uuid);
    auto s = Retry<cv1::DescribeInstanceResponse>([&] { return src->DescribeInstance(di); });
    auto d = Retry<cv1::DescribeInstanceResponse>([&] { return dst->DescribeInstance(di); });
    if (!s.ok()) return s.status();
    if (!d.ok()) return d.status();
    Truth t;
    t.src_present = s->present();
    t.src_job = s->present() && (s->domain().migration_job_active() || s->domain().job_active());
    t.src_holds = SourceHoldsDomain(*s);
    t.src_running = DomainRuns(*s);
    t.transfer_running = s->transfer().state() == cv1::TRANSFER_STATE_RUNNING;
    t.transfer_error = s->transfer().error();
    t.dst_present = d->present();
    const auto st = d->domain().state();
    t.dst_running =
        d->present() && (st == v1::DOMAIN_STATE_RUNNING || st == v1::DOMAIN_STATE_BLOCKED ||
                         (st == v1::DOMAIN_STATE_PAUSED && !t.src_holds));
    return t;
  }

  absl::Status Monitor(AgentClient* src, AgentClient* dst, absl::Time started) {
    cv1::GetMigrationProgressRequest g;
    g.set_migration_id(m_.uuid);
    g.set_instance_uuid(m_.instance_uuid);
    absl::Time last_write = absl::InfinitePast(), last_ok = Now(), last_read = Now();
    bool abort_sent = false, force_sent = false;
    while (!o_->Stopping()) {
      auto r = src->GetMigrationProgress(g);
      const absl::Time now = Now();
      if (!r.ok()) {
        if (r.status().code() == absl::StatusCode::kNotFound ||
            now - last_ok > opt().agent_silence) {
          // The source agent lost the transfer (restart) or stopped answering: ask both.
          auto truth = Ask(src, dst);
          if (truth.ok() && truth->dst_running && !truth->src_present) {
            return Move(S::kPostMigrating, "live_migration", true,
                        "the domain runs on the destination only", started,
                        Intent("post_live_migration"));
          }
          if (truth.ok() && truth->src_job) {
            auto lm = StepReq<cv1::LiveMigrationRequest>();
            *lm.mutable_options() = OptionsFromJson(m_.options_json);
            src->LiveMigration(lm).IgnoreError();  // attach a new monitor
            last_ok = now;
          } else if (truth.ok() && truth->src_present && !truth->dst_running) {
            return RollBack(AbortRequested() ? S::kCancelled : S::kFailed,
                            "the transfer ended without completing");
          } else if (now - last_ok > opt().agent_silence * 2) {
            return Move(S::kError, "live_migration", false,
                        absl::StrCat("source agent on ", m_.source_host,
                                     " unreachable: ", r.status().message()),
                        started);
          }
        }
        Sleep(opt().progress_poll);
        continue;
      }
      last_ok = now;
      if (r->state() == cv1::TRANSFER_STATE_COMPLETED) {
        TestPoint("live_migration:after");
        WriteProgress(*r);
        return Move(
            S::kPostMigrating, "live_migration", true,
            absl::StrCat("transfer completed in ", r->progress().elapsed_ms(), " ms",
                         r->progress().downtime_ms() > 0
                             ? absl::StrCat(", downtime ", r->progress().downtime_ms(), " ms")
                             : ""),
            started, Intent("post_live_migration"));
      }
      if (r->state() == cv1::TRANSFER_STATE_FAILED || r->state() == cv1::TRANSFER_STATE_CANCELLED) {
        if (r->post_copy_started()) {
          return Move(S::kError, "live_migration", false,
                      "post-copy failed: " + r->error() + " (no rollback to the source)", started);
        }
        const bool cancelled = AbortRequested() || r->state() == cv1::TRANSFER_STATE_CANCELLED;
        return RollBack(cancelled && !r->completion_timeout_expired() ? S::kCancelled : S::kFailed,
                        cancelled && !r->completion_timeout_expired()
                            ? AbortReason()
                            : absl::StrCat("transfer failed: ", r->error()));
      }
      if (r->post_copy_started() && m_.status == S::kRunning) {
        RETURN_IF_ERROR(Move(S::kRunningPostCopy, "live_migration", true, "post-copy started",
                             started, Intent("live_migration")));
      }
      if (now - last_write >= opt().progress_write) {
        WriteProgress(*r);
        last_write = now;
      }
      if (now - last_read >= opt().progress_write) {
        last_read = now;
        ASSIGN_OR_RETURN(m_, o_->migrations_->GetMigration(id_));
        if (m_.owner != opt().scheduler_id) return absl::AbortedError("lease lost");
        if (AbortRequested() && !abort_sent) {
          abort_sent = true;
          auto a = Retry<cv1::AbortLiveMigrationResponse>(
              [&] { return src->AbortLiveMigration(StepReq<cv1::AbortLiveMigrationRequest>()); });
          Note("abort", a.ok() ? "abort sent to the source" : std::string(a.status().message()));
        }
        if (m_.force_complete_requested_at && !force_sent) {
          force_sent = true;
          auto f = Retry<cv1::ForceCompleteLiveMigrationResponse>([&] {
            return src->ForceCompleteLiveMigration(
                StepReq<cv1::ForceCompleteLiveMigrationRequest>());
          });
          Note("force_complete",
               f.ok() ? "force-complete sent to the source" : std::string(f.status().message()));
        }
      }
      if (now - started > opt().transfer_deadline && !abort_sent) {
        abort_sent = true;
        Note("live_migration", "the scheduler's transfer deadline passed: aborting");
        Retry<cv1::AbortLiveMigrationResponse>([&] {
          return src->AbortLiveMigration(StepReq<cv1::AbortLiveMigrationRequest>());
        }).IgnoreError();
      }
      Sleep(NextPoll(*r));
    }
    return absl::OkStatus();
  }

  // The wait before the next progress poll: progress_poll, or less when the transfer's own
  // progress (percent done in the time elapsed) says that it ends sooner, so that its end is seen
  // within progress_poll / 5 instead of up to progress_poll later. Never below progress_poll / 5.
  absl::Duration NextPoll(const cv1::MigrationProgressReport& r) const {
    const auto& p = r.progress();
    absl::Duration wait = opt().progress_poll;
    if (p.has_bytes() && p.percent() > 0 && p.percent() < 100 && p.elapsed_ms() > 0) {
      const double left_ms =
          static_cast<double>(p.elapsed_ms()) * (100 - p.percent()) / p.percent();
      wait = std::min(wait, absl::Milliseconds(left_ms));
    }
    return std::max(wait, opt().progress_poll / 5);
  }

  void Note(const std::string& step, const std::string& detail) {
    db::MigrationEvent e;
    e.migration_id = m_.id;
    e.step = step;
    e.kind = "info";
    e.status = ToString(m_.status);
    e.actor = opt().scheduler_id;
    e.detail = detail;
    e.host = HostOf(step);
    e.started_at = Now();
    o_->migrations_->AppendEvent(e).IgnoreError();
  }

  void WriteProgress(const cv1::MigrationProgressReport& r) {
    db::MigrationProgress p;
    const auto& pr = r.progress();
    p.phase = pr.phase() == v1::MIGRATION_PHASE_POST_COPY            ? "post-copy"
              : pr.phase() == v1::MIGRATION_PHASE_PAUSED_TO_COMPLETE ? "paused-to-complete"
              : pr.phase() == v1::MIGRATION_PHASE_OFFLINE_COPY       ? "offline-copy"
                                                                     : "pre-copy";
    if (pr.has_bytes()) {
      p.bytes_total = static_cast<int64_t>(pr.bytes_total());
      p.bytes_processed = static_cast<int64_t>(pr.bytes_processed());
      p.bytes_remaining = static_cast<int64_t>(pr.bytes_remaining());
      p.percent = pr.percent();
    }
    p.elapsed_ms = static_cast<int64_t>(pr.elapsed_ms());
    if (pr.downtime_ms() > 0) p.downtime_ms = static_cast<int64_t>(pr.downtime_ms());
    fresh_ = false;
    o_->migrations_->UpdateProgress(m_.id, opt().scheduler_id, p).IgnoreError();
  }

  // ---- post-migrating: roll forward ----------------------------------------------------------
  absl::Status PostMigrating() {
    ASSIGN_OR_RETURN(auto src, Agent(m_.source_host));
    ASSIGN_OR_RETURN(auto dst, Agent(m_.dest_host));
    const absl::Time deadline = Now() + opt().roll_forward_for;
    int failures = 0;  // the waits grow by the retry policy, without its attempt limit
    bool src_done = m_.step == "post_live_migration_at_destination";
    absl::Time t = Now();
    std::string last;
    while (!o_->Stopping()) {
      if (!src_done) {
        TestPoint("post_live_migration:before");
        auto p = src->PostLiveMigration(StepReq<cv1::PostLiveMigrationRequest>());
        if (p.ok()) {
          TestPoint("post_live_migration:after");
          src_done = true;
          RETURN_IF_ERROR(Record("post_live_migration", true, "source cleaned up", t,
                                 Intent("post_live_migration_at_destination")));
          t = Now();
        } else {
          last = std::string(p.status().message());
        }
      }
      if (src_done) {
        TestPoint("post_live_migration_at_destination:before");
        auto at = dst->PostLiveMigrationAtDestination(
            StepReq<cv1::PostLiveMigrationAtDestinationRequest>());
        if (at.ok()) {
          TestPoint("post_live_migration_at_destination:after");
          return Move(S::kCompleted, "post_live_migration_at_destination", true,
                      absl::StrCat("the instance runs on ", m_.dest_host), t);
        }
        last = std::string(at.status().message());
      }
      if (Now() > deadline) {
        return Move(S::kError,
                    src_done ? "post_live_migration_at_destination" : "post_live_migration", false,
                    "roll-forward could not finish: " + last, t);
      }
      Note(src_done ? "post_live_migration_at_destination" : "post_live_migration",
           "post step failed, rolling forward (retrying): " + last);
      Sleep(opt().retry.Backoff(failures++));
    }
    return absl::OkStatus();
  }

  // ---- rollback (row R) ----------------------------------------------------------------------
  absl::Status RollBack(S final_status, const std::string& reason) {
    // The step in progress failed (or was aborted): its result, then the rollback's intents.
    const std::string failed = m_.step.empty() ? "pre_checks" : m_.step;
    RETURN_IF_ERROR(Record(failed, false, reason, Now(),
                           m_.dest_host.empty()
                               ? Intent("rollback_live_migration")
                               : Intent("rollback_live_migration_at_destination")));
    absl::Time t = Now();
    if (!m_.dest_host.empty()) {
      ASSIGN_OR_RETURN(auto dst, Agent(m_.dest_host));
      // Once a transfer may have started, the destination may hold a half-received domain. On
      // Xen it is paused with reason "user", like a paused guest: only the source's state tells
      // them apart, so ask the source first (SourceHoldsDomain) and say so in the request. When
      // the source cannot answer, the request says nothing and the destination destroys only
      // what its hypervisor shows as an incoming migration's domain (QEMU).
      bool source_runs = false;
      if (m_.status == S::kRunning) {
        auto src = Agent(m_.source_host);
        if (src.ok()) {
          cv1::DescribeInstanceRequest di;
          di.set_instance_uuid(m_.instance_uuid);
          di.set_migration_id(m_.uuid);
          auto s =
              Retry<cv1::DescribeInstanceResponse>([&] { return (*src)->DescribeInstance(di); });
          source_runs = s.ok() && SourceHoldsDomain(*s);
        }
      }
      TestPoint("rollback_live_migration_at_destination:before");
      auto rollback_at_dest = [&] {
        return Retry<cv1::RollbackLiveMigrationAtDestinationResponse>([&] {
          auto req = StepReq<cv1::RollbackLiveMigrationAtDestinationRequest>();
          *req.mutable_migrate_data() = data_;
          req.set_source_runs_domain(source_runs);
          return dst->RollbackLiveMigrationAtDestination(req);
        });
      };
      auto r = rollback_at_dest();
      if (!r.ok() && ReasonOf(r.status()) == v1::ERROR_REASON_ONLY_RUNNING_COPY &&
          m_.status == S::kRunning && !source_runs && SourceRunsToo() &&
          !DestinationRuns(dst.get())) {
        // The source could not say before that it runs the domain; it does now, and the
        // destination's copy is paused, not running: the half-received one. Again, saying so.
        source_runs = true;
        r = rollback_at_dest();
      }
      TestPoint("rollback_live_migration_at_destination:after");
      if (!r.ok()) {
        if (ReasonOf(r.status()) == v1::ERROR_REASON_ONLY_RUNNING_COPY &&
            m_.status == S::kRunning) {
          // The destination keeps its copy: it may be the only running one. Unless the source
          // runs the domain too: then two copies run (two guests writing one disk), and the
          // source's is paused at once and an operator decides (status error).
          if (SourceRunsToo()) return TwoRunningCopies(r.status(), t);
          // The domain already runs on the destination: never tear it down; roll forward.
          return Move(S::kPostMigrating, "rollback_live_migration_at_destination", false,
                      "the domain runs on the destination: rolling forward instead", t,
                      Intent("post_live_migration"));
        }
        return Move(
            S::kError, "rollback_live_migration_at_destination", false,
            absl::StrCat(reason, "; rollback at destination failed: ", r.status().message()), t);
      }
      RETURN_IF_ERROR(Record("rollback_live_migration_at_destination", true,
                             "destination cleaned up", t, Intent("rollback_live_migration")));
      t = Now();
    }
    ASSIGN_OR_RETURN(auto src, Agent(m_.source_host));
    auto req = StepReq<cv1::RollbackLiveMigrationRequest>();
    ASSIGN_OR_RETURN(db::InstanceRecord inst, o_->instances_->GetInstance(m_.instance_uuid));
    req.set_state_before_migration(state_before_ != v1::DOMAIN_STATE_UNSPECIFIED
                                       ? state_before_
                                       : DomainStateFromName(inst.power_state));
    TestPoint("rollback_live_migration:before");
    auto r =
        Retry<cv1::RollbackLiveMigrationResponse>([&] { return src->RollbackLiveMigration(req); });
    TestPoint("rollback_live_migration:after");
    if (!r.ok()) {
      return Move(S::kError, "rollback_live_migration", false,
                  absl::StrCat(reason, "; rollback at source failed: ", r.status().message()), t);
    }
    return Move(final_status, "rollback_live_migration", true, reason, t);
  }

  // Whether `agent`'s host runs the domain (running or blocked), asked now; nullopt when it
  // cannot say.
  std::optional<bool> RunsOn(AgentClient* agent) {
    cv1::DescribeInstanceRequest di;
    di.set_instance_uuid(m_.instance_uuid);
    di.set_migration_id(m_.uuid);
    auto r = Retry<cv1::DescribeInstanceResponse>([&] { return agent->DescribeInstance(di); });
    if (!r.ok()) return std::nullopt;
    return DomainRuns(*r);
  }
  // The source runs the domain too; unknown counts as no (the caller then rolls forward, as it
  // did before it asked).
  bool SourceRunsToo() {
    auto src = Agent(m_.source_host);
    return src.ok() && RunsOn(src->get()).value_or(false);
  }
  // Unknown counts as yes: the caller then never tears the destination's copy down.
  bool DestinationRuns(AgentClient* dst) { return RunsOn(dst).value_or(true); }

  // The domain runs on both hosts: pause the source's copy at once (the destination's is kept:
  // it may have run on its own since), set error, and raise the alert: an error in the log, the
  // migration's event "two_running_copies" (counted by /metrics), the reason for the operators.
  absl::Status TwoRunningCopies(const absl::Status& refusal, absl::Time t) {
    std::string paused = "paused on the source";
    auto src = Agent(m_.source_host);
    absl::Status p = src.status();
    if (src.ok()) {
      cv1::PauseInstanceRequest req;
      req.set_instance_uuid(m_.instance_uuid);
      req.set_migration_id(m_.uuid);
      req.set_reason(absl::StrCat("it also runs on ", m_.dest_host));
      p = Retry<cv1::PauseInstanceResponse>([&] { return (*src)->PauseInstance(req); }).status();
    }
    if (!p.ok()) paused = absl::StrCat("NOT paused on the source (", p.message(), ")");
    const std::string detail = absl::StrCat(
        "ALERT: instance ", m_.instance_uuid, " runs on both ", m_.source_host, " and ",
        m_.dest_host, " (", refusal.message(), "); its copy on ", m_.source_host, " was ", paused,
        ". An operator must keep one copy: check the guest on each host, then destroy the other "
        "copy by hand");
    LogError("%s %s", Tag(), detail);
    return Move(S::kError, "two_running_copies", false, detail, t);
  }

  // ---- error: try to prove where the VM runs -------------------------------------------------
  void Reconcile() {
    // Two running copies were found: only an operator can tell which copy to keep.
    if (m_.step == "two_running_copies") return;
    auto src = Agent(m_.source_host);
    auto dst =
        m_.dest_host.empty()
            ? absl::StatusOr<std::shared_ptr<AgentClient>>(absl::NotFoundError("no destination"))
            : Agent(m_.dest_host);
    if (!src.ok() || !dst.ok()) return;
    auto truth = Ask(src->get(), dst->get());
    if (!truth.ok()) return;
    const absl::Time t = Now();
    if (truth->dst_running && !truth->src_present) {
      Move(S::kPostMigrating, "reconcile", true, "the domain runs on the destination only", t,
           Intent("post_live_migration"))
          .IgnoreError();
    } else if (truth->src_present && !truth->dst_present && !truth->src_job) {
      if (truth->src_running) {
        Move(S::kFailed, "reconcile", true,
             absl::StrCat(m_.failure_reason, " (resolved: the VM runs on the source)"), t)
            .IgnoreError();
      } else {
        // The source holds the domain but it does not run (paused by the migration, e.g. by
        // force-complete's pause): roll back again, which resumes it if it ran before.
        RollBack(S::kFailed,
                 absl::StrCat(m_.failure_reason, " (reconciled: rolled back again on the source)"))
            .IgnoreError();
      }
    }
  }

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

// ---- Orchestrator ----------------------------------------------------------------------------

Orchestrator::Orchestrator(OrchestratorOptions options, db::MigrationStore* migrations,
                           db::HostStore* hosts, db::InstanceStore* instances,
                           AgentClientFactory* agents)
    : options_(std::move(options)),
      migrations_(migrations),
      hosts_(hosts),
      instances_(instances),
      agents_(agents) {
  if (options_.scheduler_id.empty()) {
    char host[128] = {0};
    gethostname(host, sizeof(host) - 1);
    std::random_device rd;
    options_.scheduler_id = absl::StrCat("scheduler-", host, "-", getpid(), "-", rd() % 100000);
  }
}

Orchestrator::~Orchestrator() { Stop(); }

void Orchestrator::Start() {
  dispatcher_ = std::thread([this] { DispatchLoop(); });
  renewer_ = std::thread([this] { RenewLoop(); });
  if (options_.metrics_fold_interval > absl::ZeroDuration()) {
    folder_ = std::thread([this] { FoldLoop(); });
  }
  started_ = true;
}

void Orchestrator::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  {
    absl::MutexLock l(&sleep_mu_);
    stopping_ = true;  // ends the state machines' waits
  }
  Kick();
  if (dispatcher_.joinable()) dispatcher_.join();
  if (renewer_.joinable()) renewer_.join();
  if (folder_.joinable()) folder_.join();
  absl::MutexLock l(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return running_.empty(); };
  mu_.Await(absl::Condition(&idle));
}

void Orchestrator::SleepUnlessStopping(absl::Duration d) {
  absl::MutexLock l(&sleep_mu_);
  options_.clock->AwaitWithTimeout(&sleep_mu_, absl::Condition(&stopping_), d);
}

void Orchestrator::Kick() {
  absl::MutexLock l(&mu_);
  kicked_ = true;
  kick_.Signal();
}

void Orchestrator::MigrationEnded() {
  absl::MutexLock l(&ended_mu_);
  ++ended_;
}

int64_t Orchestrator::MigrationsEnded() {
  absl::MutexLock l(&ended_mu_);
  return ended_;
}

void Orchestrator::AwaitMigrationsEnded(int64_t seen, absl::Duration timeout) {
  absl::MutexLock l(&ended_mu_);
  auto beyond = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(ended_mu_) { return ended_ > seen; };
  ended_mu_.AwaitWithTimeout(absl::Condition(&beyond), timeout);
}

void Orchestrator::Launch(const db::MigrationRecord& created,
                          std::optional<db::InstanceRecord> instance) {
  if (started_) {
    absl::MutexLock l(&mu_);
    if (!Stopping()) {
      if (running_.insert(created.id).second) {
        std::thread([this, created, instance = std::move(instance)]() mutable {
          RunMigration(created.id, std::move(created), std::move(instance));
        }).detach();
      }
      return;
    }
  }
  Kick();
}

int Orchestrator::RunningStateMachines() {
  absl::MutexLock l(&mu_);
  return static_cast<int>(running_.size());
}

void Orchestrator::RunMigration(int64_t id, std::optional<db::MigrationRecord> created,
                                std::optional<db::InstanceRecord> instance) {
  MigrationRun run(this, id);
  if (created) run.Seed(*std::move(created), std::move(instance));
  run.Drive();
  absl::MutexLock l(&mu_);
  running_.erase(id);
}

void Orchestrator::DispatchLoop() {
  std::map<int64_t, absl::Time> error_attempts;  // on the injected clock
  while (!Stopping()) {
    {
      absl::MutexLock l(&mu_);
      if (!kicked_) kick_.WaitWithTimeout(&mu_, options_.dispatch_interval);
      kicked_ = false;
    }
    if (Stopping()) break;
    // Take over migrations whose owner's lease expired.
    auto orphans = migrations_->ListOrphaned();
    if (orphans.ok()) {
      for (const auto& m : *orphans) {
        auto got = migrations_->AcquireLease(m.id, options_.scheduler_id, options_.lease);
        if (got.ok() && *got) {
          LogInfo("migration=%d instance=%s taken over from '%s' (%s)", m.id, m.instance_uuid,
                  m.owner, ToString(m.status));
        }
      }
    }
    auto active = migrations_->ListActiveMigrations();
    if (!active.ok()) {
      LogWarning("dispatcher: %s", active.status().message());
      continue;
    }
    for (const auto& m : *active) {
      if (m.owner != options_.scheduler_id) continue;
      if (m.status == MigrationStatus::kError) {
        auto& last = error_attempts[m.id];
        const absl::Time now = options_.clock->Now();
        if (now - last < absl::Seconds(30)) continue;  // a migration in error: every 30 s
        last = now;
      }
      absl::MutexLock l(&mu_);
      if (running_.count(m.id)) continue;
      running_.insert(m.id);
      std::thread([this, id = m.id] { RunMigration(id); }).detach();
    }
  }
}

void Orchestrator::RenewLoop() {
  while (!stop_.WaitForNotificationWithTimeout(options_.lease / 3)) {
    auto n = migrations_->RenewLeases(options_.scheduler_id, options_.lease);
    if (!n.ok()) LogWarning("lease renewal failed: %s", n.status().message());
  }
}

// Off the API's path: a scrape of /metrics only reads (MigrationStore::ReadMetrics). Every
// replica folds; the store lets one at a time through and the others skip.
void Orchestrator::FoldLoop() {
  do {
    auto n = migrations_->FoldMetrics();
    if (!n.ok()) {
      LogWarning("metrics fold failed (retried in %s): %s",
                 absl::FormatDuration(options_.metrics_fold_interval), n.status().message());
    }
  } while (!stop_.WaitForNotificationWithTimeout(options_.metrics_fold_interval));
}

absl::StatusOr<std::vector<Orchestrator::DomainWhere>> Orchestrator::DescribeDomainOnHosts(
    const db::MigrationRecord& m) {
  std::vector<std::string> names = {m.source_host};
  if (!m.dest_host.empty()) names.push_back(m.dest_host);
  std::vector<DomainWhere> out;
  for (const std::string& name : names) {
    ASSIGN_OR_RETURN(db::HostRecord h, hosts_->GetHost(name, options_.service_down_time));
    auto agent = agents_->ForHost(name, h.report.agent_address);
    cv1::DescribeInstanceRequest di;
    di.set_instance_uuid(m.instance_uuid);
    di.set_migration_id(m.uuid);
    auto r = RetryAgentCall<cv1::DescribeInstanceResponse>(
        absl::StrCat("migration=", m.id, " where is the domain"),
        [&] { return agent->DescribeInstance(di); });
    if (!r.ok()) {
      return absl::UnavailableError(absl::StrCat("the agent of ", name,
                                                 " cannot say whether instance ", m.instance_uuid,
                                                 " runs there: ", r.status().message()));
    }
    DomainWhere w;
    w.host = name;
    w.present = r->present();
    w.runs = DomainRuns(*r);
    w.state = r->present() ? DomainStateName(r->domain().state()) : "no domain";
    out.push_back(std::move(w));
  }
  return out;
}

Orchestrator::DryRunCounts Orchestrator::DryRuns() {
  absl::MutexLock l(&dry_mu_);
  return dry_;
}

absl::StatusOr<sv1::CheckMigrationResponse> Orchestrator::CheckMigration(
    const sv1::CheckMigrationRequest& req, db::HostStore* hosts_store,
    db::InstanceStore* instances_store) {
  {
    absl::MutexLock l(&dry_mu_);
    if (dry_.running >= options_.max_concurrent_dry_runs) {
      ++dry_.refused;
      const std::string msg = absl::StrCat(
          "dry run refused: ", dry_.running,
          " dry runs are running, the most allowed at once (--dry-run-max-concurrent ",
          options_.max_concurrent_dry_runs, "; each asks the agents for up to ",
          absl::FormatDuration(options_.dry_run_deadline), "): retry in a few seconds");
      // A warning on the first refusal and every 100th: a flood does not flood the log.
      if (dry_.refused == 1 || dry_.refused % 100 == 0) {
        LogWarning("%s (%d refused since start)", msg, dry_.refused);
      }
      return absl::ResourceExhaustedError(msg);
    }
    ++dry_.running;
    ++dry_.admitted;
    dry_.most_running = std::max(dry_.most_running, dry_.running);
  }
  absl::Cleanup done = [this] {
    absl::MutexLock l(&dry_mu_);
    --dry_.running;
  };
  return DryRun(req, hosts_store, instances_store);
}

absl::StatusOr<sv1::CheckMigrationResponse> Orchestrator::DryRun(
    const sv1::CheckMigrationRequest& req, db::HostStore* hosts_store,
    db::InstanceStore* instances_store) {
  db::HostStore* const hosts = hosts_store ? hosts_store : hosts_;
  db::InstanceStore* const instances = instances_store ? instances_store : instances_;
  ASSIGN_OR_RETURN(db::InstanceRecord inst, instances->GetInstance(req.instance_uuid()));
  if (inst.host.empty()) {
    return absl::FailedPreconditionError("instance " + inst.uuid + " has no known host");
  }
  ASSIGN_OR_RETURN(db::HostRecord src, hosts->GetHost(inst.host, options_.service_down_time));
  sv1::CheckMigrationResponse resp;
  resp.set_instance_uuid(inst.uuid);
  resp.set_source_host(inst.host);
  // The registry's instance checks (checks_registry.h), then the source's pre-checks.
  for (auto& c : RunChecks(kDryRun, CheckSubject::kInstance,
                           CheckContext{inst, &src, nullptr, req.options()})) {
    *resp.add_instance_checks() = std::move(c);
  }
  for (auto& c : CheckSource(inst, src, req.options())) *resp.add_instance_checks() = c;
  std::vector<sv1::HostCheck> checks;
  if (!req.destination().empty()) {
    ASSIGN_OR_RETURN(db::HostRecord dst,
                     hosts->GetHost(req.destination(), options_.service_down_time));
    checks.push_back(CheckDestination(inst, src, dst, req.options()));
  } else {
    ASSIGN_OR_RETURN(auto all, hosts->ListHosts(options_.service_down_time));
    checks = RankDestinations(inst, src, all, req.options());
  }
  // Agent checks (steps 4-5) as a migration makes them: on the best `destination_attempts` hosts
  // that passed the checks above, in rank order (the requested destination alone when given),
  // each with a throwaway id and dry_run set, so that the agents keep no record of it. All within
  // one overall deadline: each agent call may take an equal share of the time left for the calls
  // still to come (and at most the agent client's own deadline), so that agents that hang cost
  // the dry run its deadline at most, and each host checked says why it failed.
  const absl::Time end = absl::Now() + options_.dry_run_deadline;
  const int attempts = std::max(1, options_.destination_attempts);
  auto fail = [](sv1::HostCheck& hc, const std::string& host, const std::string& name,
                 const std::string& reason) {
    v1::CheckResult* c = hc.add_checks();
    c->set_host(host);
    c->set_name(name);
    c->set_reason(reason);
    hc.set_passed(false);
  };
  int to_check = 0;
  for (auto& hc : checks) {
    if (!hc.passed()) continue;
    if (to_check < attempts) {
      ++to_check;
      continue;
    }
    fail(hc, hc.host(), "agent_checks",
         absl::StrCat("not checked by the agents: a migration asks the agents of its best ",
                      attempts, " candidates only, and ", hc.host(), " ranks below them"));
  }
  // The source's DescribeInstance, then per host its check, the source's check, the cleanup.
  int calls_left = to_check == 0 ? 0 : 1 + 3 * to_check;
  // The deadline of the next agent call: its share of the time left.
  auto next_deadline = [&] {
    const absl::Time now = absl::Now();
    const absl::Time d = now + std::max(absl::ZeroDuration(), end - now) / std::max(1, calls_left);
    calls_left = std::max(0, calls_left - 1);
    return d;
  };
  // An agent call's error as a reason; a deadline says whose.
  auto why = [&](const absl::Status& s, absl::Time started, absl::Time deadline) {
    std::string reason(s.message());
    if (s.code() == absl::StatusCode::kDeadlineExceeded) {
      absl::StrAppend(&reason, " (no answer within ",
                      absl::FormatDuration(absl::Trunc(deadline - started, absl::Milliseconds(1))),
                      ": this call's share of the dry run's ",
                      absl::FormatDuration(options_.dry_run_deadline), " deadline)");
    }
    return reason;
  };
  std::shared_ptr<AgentClient> src_agent;
  absl::StatusOr<cv1::DescribeInstanceResponse> desc = absl::UnavailableError("not asked");
  if (to_check > 0) {
    src_agent = agents_->ForHost(src.report.hostname, src.report.agent_address);
    cv1::DescribeInstanceRequest di;
    di.set_instance_uuid(inst.uuid);
    const absl::Time t0 = absl::Now(), deadline = next_deadline();
    ScopedAgentDeadline scope(deadline);
    desc = RetryAgentCall<cv1::DescribeInstanceResponse>(
        "dry run", [&] { return src_agent->DescribeInstance(di); }, true);
    if (!desc.ok()) {
      desc = absl::Status(desc.status().code(), why(desc.status(), t0, deadline));
    } else if (!desc->present()) {
      desc = absl::NotFoundError(
          absl::StrCat("instance ", inst.uuid, " is not on its source ", src.report.hostname));
    } else {
      // What the storage checks judge: each disk's kind and identity as the source sees it now.
      *resp.mutable_instance_disks() = desc->domain().disks();
    }
  }
  std::random_device rd;
  for (auto& hc : checks) {
    if (!hc.passed()) continue;
    if (!desc.ok()) {
      fail(hc, src.report.hostname, "agent_source",
           absl::StrCat("the source agent cannot describe the instance, so the agent "
                        "checks did not run: ",
                        desc.status().message()));
      continue;
    }
    if (absl::Now() >= end) {
      fail(hc, hc.host(), "agent_checks",
           absl::StrCat("not checked by the agents: the dry run's ",
                        absl::FormatDuration(options_.dry_run_deadline),
                        " deadline passed before its turn"));
      continue;
    }
    auto dst = hosts->GetHost(hc.host(), options_.service_down_time);
    if (!dst.ok()) {
      fail(hc, hc.host(), "agent_dest", std::string(dst.status().message()));
      calls_left = std::max(0, calls_left - 3);
      continue;
    }
    auto dst_agent = agents_->ForHost(hc.host(), dst->report.agent_address);
    const std::string probe_id = absl::StrCat("dryrun-", rd(), "-", rd());
    cv1::CheckCanLiveMigrateOnDestRequest d;
    d.set_migration_id(probe_id);
    d.set_instance_uuid(inst.uuid);
    d.set_source_host(src.report.hostname);
    d.set_dest_host(hc.host());
    *d.mutable_source_cpu() = ToProtoHost(src).inventory().cpu();
    d.set_source_hypervisor_type(src.report.hypervisor_type);
    d.set_source_hypervisor_version(static_cast<uint64_t>(src.report.hypervisor_version));
    *d.mutable_instance() = desc->domain();
    *d.mutable_options() = req.options();
    d.set_dry_run(true);
    absl::StatusOr<cv1::CheckCanLiveMigrateOnDestResponse> dr;
    {
      const absl::Time t0 = absl::Now(), deadline = next_deadline();
      ScopedAgentDeadline scope(deadline);
      dr = RetryAgentCall<cv1::CheckCanLiveMigrateOnDestResponse>(
          "dry run", [&] { return dst_agent->CheckCanLiveMigrateOnDest(d); }, true);
      if (!dr.ok()) {
        // No answer, so no probe file to clean up that the agent would say it made.
        fail(hc, hc.host(), "agent_dest", why(dr.status(), t0, deadline));
        calls_left = std::max(0, calls_left - 2);
        continue;
      }
    }
    for (const auto& c : dr->checks()) *hc.add_checks() = c;
    if (dr->passed()) {
      cv1::CheckCanLiveMigrateOnSrcRequest s;
      s.set_migration_id(probe_id);
      s.set_instance_uuid(inst.uuid);
      s.set_source_host(src.report.hostname);
      s.set_dest_host(hc.host());
      *s.mutable_dest_check_data() = dr->dest_check_data();
      *s.mutable_options() = req.options();
      s.set_dry_run(true);
      const absl::Time t0 = absl::Now(), deadline = next_deadline();
      ScopedAgentDeadline scope(deadline);
      auto sr = RetryAgentCall<cv1::CheckCanLiveMigrateOnSrcResponse>(
          "dry run", [&] { return src_agent->CheckCanLiveMigrateOnSrc(s); }, true);
      if (sr.ok()) {
        for (const auto& c : sr->checks()) *hc.add_checks() = c;
        hc.set_passed(sr->passed());
      } else {
        fail(hc, src.report.hostname, "agent_src", why(sr.status(), t0, deadline));
      }
    } else {
      hc.set_passed(false);
      calls_left = std::max(0, calls_left - 1);  // no source check
    }
    cv1::CheckCanLiveMigrateOnDestCleanupRequest cl;
    cl.set_migration_id(probe_id);
    cl.set_instance_uuid(inst.uuid);
    cl.set_source_host(src.report.hostname);
    cl.set_dest_host(hc.host());
    *cl.mutable_dest_check_data() = dr->dest_check_data();
    cl.set_dry_run(true);
    ScopedAgentDeadline scope(next_deadline());
    dst_agent->CheckCanLiveMigrateOnDestCleanup(cl).IgnoreError();
  }
  bool any = false;
  for (auto& hc : checks) {
    if (hc.passed() && resp.chosen_host().empty()) resp.set_chosen_host(hc.host());
    any = any || hc.passed();
    *resp.add_hosts() = hc;
  }
  bool src_ok = true;
  for (const auto& c : resp.instance_checks()) src_ok = src_ok && c.passed();
  resp.set_passed(src_ok && any);
  return resp;
}

}  // namespace livemig::sched
