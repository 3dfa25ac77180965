// The Evacuator (scheduler/evacuator.h): planning, driving, takeover and the reads of
// evacuations.
#include "scheduler/evacuator.h"

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/migration_status.h"
#include "common/status_macros.h"
#include "db/pg_stores.h"
#include "scheduler/api_names.h"
#include "scheduler/convert.h"

namespace livemig::sched {

namespace {
sv1::Evacuation ToProtoEvacuation(const db::EvacuationRecord& e) {
  sv1::Evacuation out;
  out.set_id(e.uuid);
  out.set_host(e.host);
  out.set_status(e.status == "running" ? (e.cancel_requested_at ? sv1::EVACUATION_STATUS_CANCELLING
                                                                : sv1::EVACUATION_STATUS_RUNNING)
                 : e.status == "completed" ? sv1::EVACUATION_STATUS_COMPLETED
                 : e.status == "cancelled" ? sv1::EVACUATION_STATUS_CANCELLED
                                           : sv1::EVACUATION_STATUS_COMPLETED_WITH_ERRORS);
  if (e.cancel_requested_at) {
    *out.mutable_cancel_requested_at() = ToProtoTime(*e.cancel_requested_at);
    out.set_cancelled_by(e.cancelled_by);
    out.set_cancel_reason(e.cancel_reason);
  }
  out.set_max_parallel(static_cast<uint32_t>(e.max_parallel));
  out.set_destination(e.destination);
  *out.mutable_options() = OptionsFromJson(e.options_json);
  out.set_requested_by(e.requested_by);
  out.set_request_id(e.request_id.value_or(""));
  *out.mutable_created_at() = ToProtoTime(e.created_at);
  *out.mutable_updated_at() = ToProtoTime(e.updated_at);
  if (e.finished_at) *out.mutable_finished_at() = ToProtoTime(*e.finished_at);
  for (const auto& it : e.items) {
    auto* p = out.add_items();
    p->set_instance_uuid(it.instance_uuid);
    p->set_instance_name(it.instance_name);
    // The migration's id is its UUID (Migration.id), as everywhere in the API.
    if (!it.migration_uuid.empty()) p->set_migration_id(it.migration_uuid);
    p->set_dest_host(it.migration_dest_host);
    p->set_reason(it.reason);
    p->set_outcome(it.outcome == "pending"     ? sv1::EVACUATION_ITEM_OUTCOME_PENDING
                   : it.outcome == "migrating" ? sv1::EVACUATION_ITEM_OUTCOME_MIGRATING
                   : it.outcome == "completed" ? sv1::EVACUATION_ITEM_OUTCOME_SUCCEEDED
                   : it.outcome == "failed"    ? sv1::EVACUATION_ITEM_OUTCOME_FAILED
                   : it.outcome == "cancelled" ? sv1::EVACUATION_ITEM_OUTCOME_CANCELLED
                                               : sv1::EVACUATION_ITEM_OUTCOME_SKIPPED);
    out.set_total(out.total() + 1);
    if (it.outcome == "completed") out.set_succeeded(out.succeeded() + 1);
    if (it.outcome == "failed") out.set_failed(out.failed() + 1);
    if (it.outcome == "skipped") out.set_skipped(out.skipped() + 1);
    if (it.outcome == "cancelled") out.set_cancelled(out.cancelled() + 1);
    if (it.outcome == "migrating" || it.outcome == "pending") {
      out.set_in_progress(out.in_progress() + 1);
    }
  }
  return out;
}
}  // namespace

Evacuator::Evacuator(db::HostStore* hosts, db::InstanceStore* instances,
                     db::EvacuationStore* evacuations, db::EvacuationStore* leases,
                     Orchestrator* orchestrator, StartMigration start)
    : hosts_(hosts),
      instances_(instances),
      evacuations_(evacuations),
      leases_(leases),
      orchestrator_(orchestrator),
      start_(std::move(start)) {}

Evacuator::~Evacuator() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  std::thread loop;
  std::vector<std::thread> threads;
  {
    absl::MutexLock l(&mu_);
    loop.swap(loop_);
    for (auto& [id, t] : drivers_) threads.push_back(std::move(t));
    drivers_.clear();
    for (auto& t : ended_drivers_) threads.push_back(std::move(t));
    ended_drivers_.clear();
  }
  if (loop.joinable()) loop.join();
  for (auto& t : threads) t.join();
}

absl::StatusOr<sv1::Evacuation> Evacuator::Evacuate(const sv1::EvacuateHostRequest& r,
                                                    const std::string& requested_by) {
  // A retried request returns its evacuation, whatever happened since (scheduler.proto).
  auto same_request = [&]() -> absl::StatusOr<std::optional<sv1::Evacuation>> {
    if (r.request_id().empty()) return std::nullopt;
    auto existing = evacuations_->FindEvacuationByRequestId(r.request_id());
    if (existing.status().code() == absl::StatusCode::kNotFound) return std::nullopt;
    if (!existing.ok()) return existing.status();
    if (existing->host != r.hostname()) {
      return absl::InvalidArgumentError(
          absl::StrCat("request id '", r.request_id(), "' was used for the evacuation of ",
                       existing->host, " (evacuation ", existing->uuid, "): use a new request id"));
    }
    return ToProtoEvacuation(*existing);
  };
  {
    ASSIGN_OR_RETURN(auto again, same_request());
    if (again) return *std::move(again);
  }
  ASSIGN_OR_RETURN(auto host,
                   hosts_->GetHost(r.hostname(), orchestrator_->options().service_down_time));
  ASSIGN_OR_RETURN(auto list, instances_->ListInstances(r.hostname(), 100000));
  std::vector<std::string> uuids;
  for (const auto& i : list) {
    if (!i.missing) uuids.push_back(i.uuid);
  }
  db::NewEvacuation ne;
  ne.host = r.hostname();
  ne.max_parallel = r.max_parallel() == 0 ? 2 : static_cast<int>(r.max_parallel());
  ne.requested_by = requested_by;
  ne.instance_uuids = std::move(uuids);
  if (!r.request_id().empty()) ne.request_id = r.request_id();
  // Stored, so that whichever scheduler drives it (this one, or one taking it over) migrates
  // every instance as asked.
  ne.destination = r.destination();
  ne.options_json = OptionsToJson(r.options());
  ne.owner = orchestrator_->options().scheduler_id;
  ne.lease = orchestrator_->options().lease;
  auto created = evacuations_->CreateEvacuation(ne);
  if (created.status().code() == absl::StatusCode::kAlreadyExists) {
    // A concurrent request with the same request id committed first: this one is its retry.
    ASSIGN_OR_RETURN(auto again, same_request());
    if (again) return *std::move(again);
  }
  ASSIGN_OR_RETURN(db::EvacuationRecord e, std::move(created));
  LogInfo("evacuation %d (%s) of %s: %d instance(s), at most %d at once, to %s, by %s", e.id,
          e.uuid, r.hostname(), e.items.size(), ne.max_parallel,
          r.destination().empty() ? "(scheduler's choice)" : r.destination(), ne.requested_by);
  StartDriving(e.id);
  StartLoop();
  (void)host;
  return ToProtoEvacuation(e);
}

void Evacuator::Resume() { StartLoop(); }

int Evacuator::Running() {
  absl::MutexLock l(&mu_);
  return static_cast<int>(drivers_.size());
}

void Evacuator::StartLoop() {
  absl::MutexLock l(&mu_);
  if (stop_.HasBeenNotified() || loop_.joinable()) return;
  loop_ = std::thread([this] { Loop(); });
}

void Evacuator::Loop() {
  // As the orchestrator's renewer: the same owner name and lease, renewed every lease/3.
  const OrchestratorOptions& o = orchestrator_->options();
  do {
    auto renewed = leases_->RenewEvacuationLeases(o.scheduler_id, o.lease);
    if (!renewed.ok()) {
      LogWarning("evacuation lease renewal failed: %s", renewed.status().message());
    }
    // Take over the evacuations whose owner's lease expired (it stopped or died) or that have
    // none; the compare-and-swap lets one scheduler only have each.
    auto orphans = leases_->ListOrphanedEvacuations();
    if (!orphans.ok()) {
      LogWarning("evacuations: orphans not listed: %s", orphans.status().message());
    } else {
      for (const auto& e : *orphans) {
        auto got = leases_->AcquireEvacuationLease(e.id, o.scheduler_id, o.lease);
        if (!got.ok() || !*got) continue;  // finished meanwhile, taken by another, or retried
        LogInfo("evacuation %d (%s) of %s taken over from %s", e.id, e.uuid, e.host,
                e.owner.empty() ? "no owner" : absl::StrCat("'", e.owner, "'"));
        StartDriving(e.id);
      }
    }
    ReapDrivers();
  } while (!stop_.WaitForNotificationWithTimeout(o.lease / 3));
}

void Evacuator::StartDriving(int64_t id) {
  absl::MutexLock l(&mu_);
  if (stop_.HasBeenNotified() || drivers_.count(id) > 0) return;
  // The thread's last step waits for mu_, so its entry is in drivers_ by then.
  drivers_[id] = std::thread([this, id] {
    Drive(id);
    absl::MutexLock l(&mu_);
    auto it = drivers_.find(id);
    if (it == drivers_.end()) return;  // the destructor joins it
    ended_drivers_.push_back(std::move(it->second));
    drivers_.erase(it);
  });
}

void Evacuator::ReapDrivers() {
  std::vector<std::thread> ended;
  {
    absl::MutexLock l(&mu_);
    ended.swap(ended_drivers_);
  }
  for (auto& t : ended) t.join();
}

void Evacuator::Drive(int64_t id) {
  const std::string& me = orchestrator_->options().scheduler_id;
  // A write refused with Aborted: this scheduler's lease is gone (expired, or taken over); the
  // owner drives it from here (or this scheduler again, once it took the lease back).
  auto lost = [&](const absl::Status& s, const std::string& uuid) {
    if (s.code() != absl::StatusCode::kAborted) return false;
    LogWarning("evacuation %d (%s) no longer driven here: %s", id, uuid, s.message());
    return true;
  };
  int64_t ended_seen = 0;
  // A pass runs at once, then whenever a migration of this scheduler ends (its slot is reused
  // at once), and at least every 500 ms (migrations another scheduler drives). One read per pass:
  // the items come with their migrations' statuses.
  bool first = true;
  while (!stop_.HasBeenNotified()) {
    if (!first) {
      orchestrator_->AwaitMigrationsEnded(ended_seen, absl::Milliseconds(500));
      if (stop_.HasBeenNotified()) return;
    }
    first = false;
    ended_seen = orchestrator_->MigrationsEnded();
    auto e = evacuations_->GetEvacuation(id);
    if (!e.ok()) {
      if (e.status().code() == absl::StatusCode::kNotFound) return;
      // The database is unreachable or the like: read again at the next pass (the lease still
      // holds it for this scheduler until it expires).
      LogWarning("evacuation %d: %s", id, e.status().message());
      continue;
    }
    if (e->status != "running") return;
    if (e->owner != me) {
      LogInfo("evacuation %d (%s) is driven by '%s' now", id, e->uuid, e->owner);
      return;
    }
    // What the request asked for, as stored: the same after a takeover.
    const v1::MigrationOptions options = OptionsFromJson(e->options_json);
    // In flight: every migration of the evacuation not terminal, also one whose item does not
    // name it yet (its scheduler died between creating it and recording it; the loop below
    // finds it again by its request id), so that max_parallel holds across a takeover.
    int in_flight = e->active_migrations, pending = 0;
    for (auto& it : e->items) {
      if (it.outcome == "migrating" && it.migration_id) {
        const auto status = ParseMigrationStatus(it.migration_status);
        if (status && IsTerminal(*status)) {
          it.outcome = *status == MigrationStatus::kCompleted ? "completed" : "failed";
          it.reason = it.migration_failure_reason;
          if (lost(evacuations_->UpdateEvacuationItem(id, me, it), e->uuid)) return;
        }
      } else if (it.outcome == "pending") {
        ++pending;
      }
    }
    for (auto& it : e->items) {
      if (in_flight >= e->max_parallel) break;
      if (it.outcome != "pending") continue;
      sv1::LiveMigrateRequest req;
      req.set_instance_uuid(it.instance_uuid);
      req.set_destination(e->destination);
      *req.mutable_options() = options;
      // The number, not the UUID: an evacuation resumed across an upgrade keeps its request ids.
      // A scheduler that lost the lease and a new owner asking at once get the same migration.
      req.set_request_id(absl::StrCat("evacuation-", id, "-", it.instance_uuid));
      req.set_requester(e->requested_by);
      auto m = start_(req, e->uuid);
      if (m.ok()) {
        it.outcome = "migrating";
        it.migration_id = m->migration().number();
        // One created before (found by its request id) was counted already.
        if (!m->existing()) ++in_flight;
      } else {
        it.outcome =
            m.status().code() == absl::StatusCode::kFailedPrecondition ? "skipped" : "failed";
        it.reason = std::string(m.status().message());
      }
      --pending;
      const absl::Status w = evacuations_->UpdateEvacuationItem(id, me, it);
      if (lost(w, e->uuid)) return;
      // Cancelled meanwhile (the item, or the whole evacuation): no more starts in this pass.
      if (w.code() == absl::StatusCode::kFailedPrecondition) break;
    }
    if (in_flight == 0 && pending <= 0) {
      auto fin = evacuations_->GetEvacuation(id);
      if (!fin.ok()) continue;  // decided at the next pass
      // An item still open (one just recorded as migrating, e.g. a migration found by its
      // request id that already ended) or a migration in flight: the next pass records it first.
      bool open = fin->active_migrations > 0;
      for (const auto& it : fin->items) {
        open = open || it.outcome == "pending" || (it.outcome == "migrating" && it.migration_id);
      }
      if (open) continue;
      bool all_ok = true;
      for (const auto& it : fin->items)
        all_ok = all_ok && (it.outcome == "completed" || it.outcome == "skipped");
      const char* status = fin->cancel_requested_at ? "cancelled" : all_ok ? "completed" : "failed";
      absl::Status s = evacuations_->FinishEvacuation(id, me, status);
      if (lost(s, e->uuid)) return;
      if (!s.ok()) {
        LogWarning("evacuation %d (%s) not finished yet: %s", id, e->uuid, s.message());
        continue;
      }
      LogInfo("evacuation %d (%s) finished: %s", id, e->uuid,
              fin->cancel_requested_at ? "cancelled"
              : all_ok                 ? "completed"
                                       : "completed with errors");
      return;
    }
  }
}

absl::StatusOr<sv1::Evacuation> Evacuator::Get(const std::string& id) {
  if (!db::IsValidUuid(id)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "evacuation id '", id, "' is not a UUID (expected 8-4-4-4-12 hexadecimal digits)"));
  }
  ASSIGN_OR_RETURN(auto e, evacuations_->GetEvacuationByUuid(id));
  return ToProtoEvacuation(e);
}

absl::StatusOr<sv1::Evacuation> Evacuator::Cancel(const std::string& uuid, const std::string& who,
                                                  const std::string& reason) {
  ASSIGN_OR_RETURN(auto e, evacuations_->GetEvacuationByUuid(uuid));
  if (e.status != "running" && !e.cancel_requested_at) {
    const sv1::Evacuation shown = ToProtoEvacuation(e);
    return absl::FailedPreconditionError(absl::StrCat(
        "evacuation ", e.uuid, " of ", e.host, " already finished (",
        ApiEnumName(sv1::EvacuationStatus_descriptor()->FindValueByNumber(shown.status())),
        "): there is nothing to cancel"));
  }
  ASSIGN_OR_RETURN(auto cancelled, evacuations_->CancelEvacuation(e.id, who, reason));
  if (!e.cancel_requested_at) {
    LogInfo("evacuation %d (%s) of %s cancelled by %s%s%s: %d migration(s) in flight finish", e.id,
            e.uuid, e.host, who, reason.empty() ? "" : ": ", reason, cancelled.active_migrations);
  }
  return ToProtoEvacuation(cancelled);
}

absl::StatusOr<sv1::ListEvacuationsResponse> Evacuator::List(const sv1::ListEvacuationsRequest& r) {
  db::EvacuationFilter f;
  f.host = r.host();
  // An evacuation that ended with failures is shown completed_with_errors, never failed.
  RETURN_IF_ERROR(CheckEnumFilter("statuses", r.statuses(), sv1::EvacuationStatus_descriptor(),
                                  {sv1::EVACUATION_STATUS_FAILED}));
  for (int s : r.statuses()) {
    f.statuses.push_back(ApiEnumName(sv1::EvacuationStatus_descriptor()->FindValueByNumber(s)));
  }
  if (r.page_size() > 1000) {
    return absl::InvalidArgumentError(
        absl::StrCat("field 'page_size' must be 0 (50) to 1000, got ", r.page_size()));
  }
  f.limit = r.page_size() == 0 ? 50 : static_cast<int>(r.page_size());
  f.page_token = r.page_token();
  ASSIGN_OR_RETURN(db::EvacuationPage page, evacuations_->ListEvacuations(f));
  sv1::ListEvacuationsResponse resp;
  resp.set_next_page_token(page.next_page_token);
  for (const auto& e : page.evacuations) {
    // The counts come from the items; the items themselves only when asked for.
    sv1::Evacuation out = ToProtoEvacuation(e);
    if (!r.include_items()) out.clear_items();
    *resp.add_evacuations() = std::move(out);
  }
  return resp;
}

}  // namespace livemig::sched
