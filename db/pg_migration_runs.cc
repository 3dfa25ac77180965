// PgMigrationStore (db/pg_migration_store.h), the orchestrator's side: slot use, transitions,
// steps and their events, progress, leases.
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "db/pg_migration_store.h"
#include "db/pg_rows.h"

namespace livemig::db {

absl::StatusOr<std::vector<MigrationRecord>> PgMigrationStore::ListActiveMigrations() {
  return pool_->ReadQuery<std::vector<MigrationRecord>>(
      "list active migrations",
      [&](pqxx::transaction_base& w) -> absl::StatusOr<std::vector<MigrationRecord>> {
        return MigrationsFromResult(
            Prep(w, MigrationSelect() + "WHERE m." + kActive + " ORDER BY m.id"));
      });
}

namespace {

// The transaction-scoped advisory lock every transition that takes a slot holds while it counts
// the slots and moves (Transition::slot): "lmslot".
constexpr int64_t kSlotLockKey = 0x6c6d736c6f74;

// The slot use seen by migration `id` from `source` to `dest`: one aggregate over the active
// migrations.
SlotUse ReadSlotUse(pqxx::transaction_base& w, int64_t id, const std::string& source,
                    const std::string& dest) {
  static const std::string sql = [] {
    std::string holding;
    for (MigrationStatus s : AllMigrationStatuses()) {
      if (HoldsSlot(s))
        absl::StrAppend(&holding, holding.empty() ? "" : ", ", "'", ToString(s), "'");
    }
    const std::string busy = absl::StrCat("status IN (", holding, ")");
    return absl::StrCat(
        "SELECT count(*) FILTER (WHERE ", busy, "), count(*) FILTER (WHERE ", busy,
        " AND source_host = $2), count(*) FILTER (WHERE ", busy,
        " AND dest_host = $3), COALESCE(bool_or(status = '", ToString(MigrationStatus::kQueued),
        "' AND id < $1 AND (source_host = $2 OR dest_host = $3)), false) FROM migrations WHERE ",
        kActive, " AND id <> $1");
  }();
  pqxx::result r = Prep(w, sql, id, source, dest);
  SlotUse u;
  u.total = r[0][0].as<int>();
  u.out_of_source = r[0][1].as<int>();
  u.into_dest = r[0][2].as<int>();
  u.older_queued = r[0][3].as<bool>();
  return u;
}

}  // namespace

absl::StatusOr<SlotUse> PgMigrationStore::GetSlotUse(int64_t id, const std::string& source,
                                                     const std::string& dest) {
  return pool_->ReadQuery<SlotUse>("read slot use",
                                   [&](pqxx::transaction_base& w) -> absl::StatusOr<SlotUse> {
                                     return ReadSlotUse(w, id, source, dest);
                                   });
}

absl::StatusOr<MigrationRecord> PgMigrationStore::ApplyTransition(const Transition& t) {
  if (!CanTransition(t.from, t.to)) {
    return absl::FailedPreconditionError(absl::StrCat("migration ", t.migration_id,
                                                      ": no transition from '", ToString(t.from),
                                                      "' to '", ToString(t.to), "'"));
  }
  if (t.owner.empty()) return absl::InvalidArgumentError("a transition needs its owner");
  const bool terminal = IsTerminal(t.to);
  const absl::Time now = absl::Now();
  std::vector<MigrationEvent> events;
  MigrationEvent ev;
  ev.step = t.event_step == v1::MIGRATION_STEP_UNSPECIFIED ? t.step : t.event_step;
  ev.kind = t.event_kind;
  ev.outcome = t.event_outcome;
  ev.status = std::string(ToString(t.to));
  ev.actor = t.owner;
  ev.detail = t.event_detail;
  ev.host = t.event_host;
  ev.finished_at = now;
  ev.started_at = t.event_started_at.value_or(now);
  ev.duration_ms = absl::ToInt64Milliseconds(now - ev.started_at);
  events.push_back(std::move(ev));
  for (MigrationEvent extra : t.extra_events) {
    if (extra.status.empty()) extra.status = ToString(t.to);
    if (extra.actor.empty()) extra.actor = t.owner;
    events.push_back(std::move(extra));
  }
  // One statement, committed on its own: the compare-and-swap of the row, the instance (its
  // host when completed; its task state when terminal) and the events, then the row as
  // committed. A completion needs a destination: without one nothing changes.
  auto apply = [&](pqxx::transaction_base& w) -> absl::StatusOr<MigrationRecord> {
    pqxx::result r =
        Prep(w,
             "WITH upd AS (UPDATE migrations SET status = $3, step = $4, updated_at = now(), "
             "dest_host = COALESCE($5, dest_host), "
             // A terminal status releases the claim (scheduler.proto, memory_claimed_mib).
             "memory_claim_mib = CASE WHEN $9 THEN 0 ELSE COALESCE($6, memory_claim_mib) END, "
             "failure_reason = COALESCE($7, failure_reason), "
             "candidates = COALESCE($11::jsonb, candidates), "
             "refused_check = COALESCE($13, refused_check), "
             "error_at = CASE WHEN $3 = 'error' THEN COALESCE(error_at, now()) ELSE error_at END, "
             "started_at = CASE WHEN $8 THEN COALESCE(started_at, now()) ELSE started_at END, "
             "finished_at = CASE WHEN $9 THEN now() ELSE NULL END, "
             "owner = CASE WHEN $9 THEN NULL ELSE owner END, "
             "lease_expires_at = CASE WHEN $9 THEN NULL ELSE lease_expires_at END "
             "WHERE id = $1 AND status = $2 AND owner = $10 AND lease_expires_at > now() "
             "AND ($3 <> 'completed' OR COALESCE($5, dest_host) IS NOT NULL) RETURNING *), "
             "inst AS (UPDATE instances i SET task_state = NULL, updated_at = now(), "
             "host = CASE WHEN $3 = 'completed' THEN upd.dest_host ELSE i.host END, "
             "missing = CASE WHEN $3 = 'completed' THEN false ELSE i.missing END, "
             "missing_since = CASE WHEN $3 = 'completed' THEN NULL ELSE i.missing_since END "
             "FROM upd WHERE $9 AND i.uuid = upd.instance_uuid RETURNING 1), "
             "ev AS (" +
                 EventsInsertFrom("upd", "$12") + ") " + MigrationSelectFrom("upd"),
             t.migration_id, std::string(ToString(t.from)), std::string(ToString(t.to)),
             StepText(t.step), t.dest_host, t.memory_claim_mib, t.failure_reason, t.mark_started,
             terminal, t.owner, t.candidates_json, EventsJson(events), t.refused_check);
    if (!r.empty()) return MigrationFromRow(r[0]);
    // Nothing changed: say why.
    pqxx::result cur = Prep(w,
                            "SELECT status, COALESCE(owner, ''), lease_expires_at > now(), "
                            "dest_host IS NOT NULL FROM migrations WHERE id = $1",
                            t.migration_id);
    if (cur.empty()) {
      return absl::NotFoundError(absl::StrCat("migration ", t.migration_id, " does not exist"));
    }
    if (Str(cur[0][0]) != ToString(t.from)) {
      return absl::AbortedError(absl::StrCat("migration ", t.migration_id, " is '", Str(cur[0][0]),
                                             "', not '", ToString(t.from),
                                             "': another actor moved it"));
    }
    if (Str(cur[0][1]) == t.owner && !cur[0][2].is_null() && cur[0][2].as<bool>() &&
        t.to == MigrationStatus::kCompleted && !t.dest_host && !cur[0][3].as<bool>()) {
      return absl::FailedPreconditionError(
          absl::StrCat("migration ", t.migration_id, " cannot complete without a destination"));
    }
    return absl::AbortedError(absl::StrCat("migration ", t.migration_id, ": scheduler '", t.owner,
                                           "' does not hold its lease (owner '", Str(cur[0][1]),
                                           "')"));
  };
  if (!t.slot) return pool_->SingleQuery<MigrationRecord>("apply migration transition", apply);
  // Taking a slot: counting the slots and moving in one transaction under the slot lock, so
  // that two migrations decided at once cannot both take the last slot.
  return pool_->Query<MigrationRecord>(
      "take a migration slot", [&](pqxx::work& w) -> absl::StatusOr<MigrationRecord> {
        w.exec_params("SELECT pg_advisory_xact_lock($1)", kSlotLockKey);
        const std::string busy =
            WhyNoSlot(ReadSlotUse(w, t.migration_id, t.slot->source, t.slot->dest), *t.slot);
        if (!busy.empty()) {
          return absl::ResourceExhaustedError(
              absl::StrCat("no slot for migration ", t.migration_id, ": ", busy));
        }
        return apply(w);
      });
}

absl::Status PgMigrationStore::RecordStep(int64_t id, const std::string& owner,
                                          MigrationStatus status, v1::MigrationStep step,
                                          const std::vector<MigrationEvent>& events,
                                          const std::optional<std::string>& dest_host,
                                          const std::optional<int64_t>& memory_claim_mib) {
  std::vector<MigrationEvent> evs = events;
  for (MigrationEvent& e : evs) {
    if (e.status.empty()) e.status = ToString(status);
    if (e.actor.empty()) e.actor = owner;
  }
  // One statement: the step (under the lease) and its events.
  return pool_->Single("record migration step", [&](pqxx::transaction_base& w) -> absl::Status {
    pqxx::result r = Prep(
        w,
        "WITH upd AS (UPDATE migrations SET step = $4, updated_at = now(), dest_host = "
        "COALESCE($5, dest_host), memory_claim_mib = COALESCE($6, memory_claim_mib) WHERE "
        "id = $1 AND status = $2 AND owner = $3 AND lease_expires_at > now() RETURNING "
        "id), ev AS (" +
            EventsInsertFrom("upd", "$7") + ") SELECT count(*) FROM upd",
        id, ToString(status), owner, StepText(step), dest_host, memory_claim_mib, EventsJson(evs));
    if (r[0][0].as<int64_t>() == 0) {
      return absl::AbortedError(absl::StrCat(
          "migration ", id, ": step ", step, " not recorded: the migration is no longer '",
          ToString(status), "' under the lease of '", owner, "'"));
    }
    return absl::OkStatus();
  });
}

absl::Status PgMigrationStore::AppendEvent(const MigrationEvent& event) {
  return pool_->Single("append migration event", [&](pqxx::transaction_base& w) -> absl::Status {
    InsertEvent(w, event);
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<MigrationEvent>> PgMigrationStore::ListEvents(int64_t migration_id) {
  return pool_->ReadQuery<std::vector<MigrationEvent>>(
      "list migration events",
      [&](pqxx::transaction_base& w) -> absl::StatusOr<std::vector<MigrationEvent>> {
        pqxx::result r = Prep(
            w,
            absl::StrCat("SELECT id, migration_id, step, kind, outcome, status, actor, detail, "
                         "COALESCE(host, '') AS host, ",
                         Us("started_at"), " AS started_at, ", Us("finished_at"),
                         " AS finished_at, duration_ms FROM migration_events "
                         "WHERE migration_id = $1 ORDER BY id"),
            migration_id);
        std::vector<MigrationEvent> out;
        for (const auto& row : r) {
          MigrationEvent e;
          e.id = row["id"].as<int64_t>();
          e.migration_id = row["migration_id"].as<int64_t>();
          e.step = StepFromName(Str(row["step"]));
          e.kind = Str(row["kind"]);
          e.outcome = Str(row["outcome"]);
          e.status = Str(row["status"]);
          e.actor = Str(row["actor"]);
          e.detail = Str(row["detail"]);
          e.host = Str(row["host"]);
          e.started_at = FromUs(row["started_at"].as<int64_t>());
          e.finished_at = OptTime(row["finished_at"]);
          e.duration_ms = Opt<int64_t>(row["duration_ms"]);
          out.push_back(std::move(e));
        }
        return out;
      });
}

absl::Status PgMigrationStore::UpdateProgress(int64_t id, const std::string& owner,
                                              const MigrationProgress& p) {
  return pool_->Run("update migration progress", [&](pqxx::work& w) -> absl::Status {
    pqxx::result r =
        Prep(w,
             "UPDATE migrations SET phase = $3, bytes_total = $4, bytes_processed = $5, "
             "bytes_remaining = $6, percent = $7, downtime_ms = $8, elapsed_ms = $9, "
             "progress_at = now(), updated_at = now() WHERE id = $1 AND owner = $2 AND "
             "lease_expires_at > now() AND " +
                 std::string(kActive),
             id, owner, p.phase, p.bytes_total, p.bytes_processed, p.bytes_remaining, p.percent,
             p.downtime_ms, p.elapsed_ms);
    if (r.affected_rows() == 0) {
      return absl::AbortedError(absl::StrCat("migration ", id, ": progress not written: '", owner,
                                             "' does not hold an active lease on it"));
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<bool> PgMigrationStore::AcquireLease(int64_t id, const std::string& owner,
                                                    absl::Duration ttl) {
  if (owner.empty()) return absl::InvalidArgumentError("a lease needs an owner");
  return pool_->Query<bool>("acquire migration lease", [&](pqxx::work& w) -> absl::StatusOr<bool> {
    pqxx::result r = w.exec_params(
        "UPDATE migrations SET owner = $2, lease_expires_at = now() + make_interval(secs => "
        "$3) WHERE id = $1 AND " +
            std::string(kActive) +
            " AND (owner IS NULL OR owner = $2 OR lease_expires_at IS NULL OR "
            "lease_expires_at <= now()) RETURNING id",
        id, owner, absl::ToDoubleSeconds(ttl));
    if (!r.empty()) return true;
    pqxx::result cur = w.exec_params("SELECT status FROM migrations WHERE id = $1", id);
    if (cur.empty()) return absl::NotFoundError(absl::StrCat("migration ", id, " does not exist"));
    if (IsTerminal(ParseMigrationStatus(Str(cur[0][0])).value_or(MigrationStatus::kError))) {
      return absl::FailedPreconditionError(
          absl::StrCat("migration ", id, " is already ", Str(cur[0][0])));
    }
    return false;
  });
}

absl::StatusOr<int> PgMigrationStore::RenewLeases(const std::string& owner, absl::Duration ttl) {
  return pool_->Query<int>("renew migration leases", [&](pqxx::work& w) -> absl::StatusOr<int> {
    pqxx::result r =
        Prep(w,
             "UPDATE migrations SET lease_expires_at = now() + make_interval(secs => $2) WHERE "
             "owner = $1 AND lease_expires_at > now() AND " +
                 std::string(kActive),
             owner, absl::ToDoubleSeconds(ttl));
    return static_cast<int>(r.affected_rows());
  });
}

absl::StatusOr<std::vector<MigrationRecord>> PgMigrationStore::ListOrphaned() {
  return pool_->ReadQuery<std::vector<MigrationRecord>>(
      "list orphaned migrations",
      [&](pqxx::transaction_base& w) -> absl::StatusOr<std::vector<MigrationRecord>> {
        return MigrationsFromResult(
            Prep(w, MigrationSelect() + "WHERE m." + kActive +
                        " AND (m.owner IS NULL OR m.lease_expires_at IS NULL OR "
                        "m.lease_expires_at <= now()) ORDER BY m.id"));
      });
}

}  // namespace livemig::db
