// PgMigrationStore (db/pg_migration_store.h), the requests and reads: migrations created (the
// instance claimed), read, listed and found by request id; abort, force-complete and resolve.
#include "db/pg_migration_store.h"

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "db/pg_rows.h"
#include "db/pg_stores.h"

namespace livemig::db {

namespace {

constexpr char kPageTokenPrefix[] = "m1.";

}  // namespace

std::string PageTokenAfter(int64_t id) { return absl::StrCat(kPageTokenPrefix, id); }

absl::StatusOr<CreateMigrationResult> PgMigrationStore::CreateMigration(const NewMigration& m) {
  RETURN_IF_ERROR(CheckUuid(m.instance_uuid, "instance"));
  if (m.request_id) {
    if (m.request_id->empty()) return absl::InvalidArgumentError("request id must not be empty");
    RETURN_IF_ERROR(CheckRequestId("request_id", *m.request_id));
  }
  if (!m.dest_host.empty() && !IsValidHostname(m.dest_host)) {
    return absl::InvalidArgumentError(absl::StrCat("invalid destination host '", m.dest_host, "'"));
  }
  if (m.requested_by.empty()) {
    return absl::InvalidArgumentError("a migration needs its requester (requested_by)");
  }
  if (m.block_migration != "auto" && m.block_migration != "yes" && m.block_migration != "no") {
    return absl::InvalidArgumentError(
        absl::StrCat("block migration must be auto, yes or no, got '", m.block_migration, "'"));
  }
  RETURN_IF_ERROR(CheckJsonObject(m.options_json, "migration options"));
  if (m.evacuation_uuid) RETURN_IF_ERROR(CheckUuid(*m.evacuation_uuid, "evacuation id"));
  if (m.request_id) {
    // A retried request: answer with the migration it made.
    auto existing = FindByRequestIdOf(*m.request_id, m.instance_uuid);
    if (existing.ok() || existing.status().code() != absl::StatusCode::kNotFound) {
      if (!existing.ok()) return existing.status();
      return CreateMigrationResult{std::move(existing).value(), false};
    }
  }
  MigrationEvent ev;
  ev.step = v1::MIGRATION_STEP_ACCEPT;
  ev.kind = "result";
  ev.outcome = "ok";
  ev.status = ToString(MigrationStatus::kAccepted);
  ev.actor = m.requested_by;
  ev.started_at = absl::Now();
  ev.finished_at = ev.started_at;
  ev.duration_ms = 0;
  // The detail names the source, which only the claim knows: the statement appends it.
  ev.detail = absl::StrCat("live migration of ", m.instance_uuid, " from ");
  const std::string detail_tail =
      absl::StrCat(" to ", m.dest_host.empty() ? "a host the scheduler chooses" : m.dest_host,
                   " requested by ", m.requested_by);
  bool lost_request_id_race = false;
  // One statement, committed on its own: the compare-and-swap claim of the instance (only an
  // idle, present instance, and not onto its own host), the migration row, its first event,
  // then the row as committed. If any part fails, nothing changed.
  auto result = pool_->SingleQuery<CreateMigrationResult>(
      "create migration", [&](pqxx::transaction_base& w) -> absl::StatusOr<CreateMigrationResult> {
        pqxx::result r;
        try {
          r = Prep(
              w,
              "WITH claim AS (UPDATE instances SET task_state = 'migrating', updated_at = now() "
              "WHERE uuid = $2::uuid AND task_state IS NULL AND NOT missing AND host IS NOT "
              "NULL AND host IS DISTINCT FROM NULLIF($3, '') AND ($13::uuid IS NULL OR EXISTS "
              // An evacuation's migration only while it runs, not cancelled; the share lock
              // orders this against a concurrent CancelEvacuation (which updates the row).
              "(SELECT 1 FROM evacuations WHERE uuid = $13::uuid AND status = 'running' AND "
              "cancel_requested_at IS NULL FOR SHARE)) RETURNING host), "
              "ins AS (INSERT INTO migrations (request_id, instance_uuid, source_host, "
              "dest_host, requested_dest, status, step, live, block_migration, options, "
              "memory_claim_mib, requested_by, owner, lease_expires_at, evacuation_uuid) SELECT "
              "$1::text, $2::uuid, "
              "claim.host, NULLIF($3, ''), NULLIF($3, ''), $14::text, $15::text, $4::boolean, "
              "$5::text, $6::jsonb, $7::bigint, $8::text, NULLIF($9::text, ''), now() + "
              "make_interval(secs => $10::double precision), $13::uuid FROM "
              "claim RETURNING *), "
              "ev AS (INSERT INTO migration_events (migration_id, step, kind, outcome, status, "
              "actor, detail, started_at, finished_at, duration_ms) SELECT ins.id, e.step, "
              "e.kind, e.outcome, e.status, e.actor, e.detail || ins.source_host || $12, "
              "to_timestamp(e.started_us::double precision / 1000000), "
              "to_timestamp(e.finished_us::double precision / 1000000), e.duration_ms FROM ins, "
              "jsonb_to_recordset($11::jsonb) AS e(step text, kind text, outcome text, status "
              "text, actor text, detail text, started_us bigint, finished_us bigint, "
              "duration_ms bigint) RETURNING 1) " +
                  MigrationSelectFrom("ins"),
              m.request_id, m.instance_uuid, m.dest_host, m.live, m.block_migration, m.options_json,
              m.memory_claim_mib, m.requested_by, m.owner, absl::ToDoubleSeconds(m.lease),
              EventsJson({ev}), detail_tail, m.evacuation_uuid,
              ToString(MigrationStatus::kAccepted), StepText(v1::MIGRATION_STEP_ACCEPT));
        } catch (const pqxx::foreign_key_violation& e) {
          // Only the evacuation's key is ours to explain (e.g. an unknown destination is not).
          if (std::string(e.what()).find("evacuation_uuid") == std::string::npos) throw;
          return absl::NotFoundError(
              absl::StrCat("evacuation ", m.evacuation_uuid.value_or(""), " does not exist"));
        } catch (const pqxx::unique_violation& e) {
          if (std::string(e.what()).find("request_id") != std::string::npos) {
            lost_request_id_race = true;
            return absl::AbortedError("request id race");
          }
          return absl::AbortedError(absl::StrCat(
              "instance ", m.instance_uuid, " is already migrating (a concurrent request won)"));
        }
        if (r.empty()) {
          return DiagnoseClaim(w, m.instance_uuid, m.dest_host, m.evacuation_uuid);
        }
        ASSIGN_OR_RETURN(MigrationRecord rec, MigrationFromRow(r[0]));
        return CreateMigrationResult{std::move(rec), true};
      });
  if (!result.ok() && lost_request_id_race) {
    // Another request with the same id committed first: answer with its migration.
    ASSIGN_OR_RETURN(MigrationRecord existing, FindByRequestId(*m.request_id));
    if (existing.instance_uuid != m.instance_uuid) return RequestIdReused(*m.request_id, existing);
    return CreateMigrationResult{std::move(existing), false};
  }
  return result;
}

absl::StatusOr<MigrationRecord> PgMigrationStore::GetMigration(int64_t id) {
  return pool_->ReadQuery<MigrationRecord>(
      "get migration", [&](pqxx::transaction_base& w) -> absl::StatusOr<MigrationRecord> {
        return SelectMigration(w, id, false);
      });
}

absl::StatusOr<MigrationRecord> PgMigrationStore::GetMigrationByUuid(const std::string& uuid) {
  RETURN_IF_ERROR(CheckUuid(uuid, "migration id"));
  return pool_->ReadQuery<MigrationRecord>(
      "get migration", [&](pqxx::transaction_base& w) -> absl::StatusOr<MigrationRecord> {
        pqxx::result r = Prep(w, MigrationSelect() + "WHERE m.uuid = $1::uuid", uuid);
        if (r.empty())
          return absl::NotFoundError(absl::StrCat("migration ", uuid, " does not exist"));
        return MigrationFromRow(r[0]);
      });
}

absl::StatusOr<MigrationRecord> PgMigrationStore::FindByRequestId(const std::string& request_id) {
  return pool_->ReadQuery<MigrationRecord>(
      "find migration by request id",
      [&](pqxx::transaction_base& w) -> absl::StatusOr<MigrationRecord> {
        return FindByRequestIdIn(w, request_id, "");
      });
}

absl::StatusOr<MigrationPage> PgMigrationStore::ListMigrations(const MigrationFilter& f) {
  if (f.page_size < 1 || f.page_size > 1000) {
    return absl::InvalidArgumentError(
        absl::StrCat("page size must be between 1 and 1000, got ", f.page_size));
  }
  std::optional<int64_t> before_id;
  if (!f.page_token.empty()) {
    int64_t id = 0;
    if (f.page_token.rfind(kPageTokenPrefix, 0) != 0 ||
        !absl::SimpleAtoi(f.page_token.substr(sizeof(kPageTokenPrefix) - 1), &id) || id <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "page token '", f.page_token,
          "' is not one this server issued: pass the next_page_token of the previous page"));
    }
    before_id = id;
  }
  if (!f.instance_uuid.empty()) RETURN_IF_ERROR(CheckUuid(f.instance_uuid, "instance filter"));
  std::optional<std::string> statuses;
  if (!f.statuses.empty()) {
    std::vector<std::string> names;
    for (MigrationStatus s : f.statuses) names.emplace_back(ToString(s));
    statuses = TextArray(names);
  }
  auto opt_us = [](const std::optional<absl::Time>& t) {
    return t ? std::optional<int64_t>(ToUs(*t)) : std::nullopt;
  };
  return pool_->ReadQuery<MigrationPage>(
      "list migrations", [&](pqxx::transaction_base& w) -> absl::StatusOr<MigrationPage> {
        pqxx::result r = w.exec_params(
            MigrationSelect() +
                "WHERE ($1::text[] IS NULL OR m.status = ANY($1::text[])) "
                "AND ($2 = '' OR m.source_host = $2 OR m.dest_host = $2) "
                "AND ($3 = '' OR m.instance_uuid = NULLIF($3, '')::uuid) "
                "AND ($4::bigint IS NULL OR m.created_at >= to_timestamp($4::double precision "
                "/ 1000000)) AND ($5::bigint IS NULL OR m.created_at < "
                "to_timestamp($5::double precision / 1000000)) "
                "AND ($6::bigint IS NULL OR m.id < $6) ORDER BY m.id DESC LIMIT $7",
            statuses, f.host, f.instance_uuid, opt_us(f.created_after), opt_us(f.created_before),
            before_id, f.page_size + 1);
        MigrationPage page;
        ASSIGN_OR_RETURN(page.migrations, MigrationsFromResult(r));
        if (static_cast<int>(page.migrations.size()) > f.page_size) {
          page.migrations.pop_back();
          page.next_page_token = PageTokenAfter(page.migrations.back().id);
        }
        return page;
      });
}

absl::StatusOr<MigrationRecord> PgMigrationStore::RequestAbort(int64_t id, const std::string& by,
                                                               const std::string& reason) {
  return RecordRequest(id, by, "aborted_by", "abort_requested_at", "abort requested by ", reason);
}

absl::StatusOr<MigrationRecord> PgMigrationStore::RequestForceComplete(int64_t id,
                                                                       const std::string& by) {
  return RecordRequest(id, by, "force_complete_requested_by", "force_complete_requested_at",
                       "force-complete requested by ");
}

absl::StatusOr<MigrationRecord> PgMigrationStore::ResolveError(int64_t id, MigrationStatus to,
                                                               const std::string& host,
                                                               const std::string& failure_reason,
                                                               const MigrationEvent& event) {
  if (to != MigrationStatus::kCompleted && to != MigrationStatus::kFailed) {
    return absl::InvalidArgumentError(absl::StrCat("migration ", id,
                                                   ": an error resolves to "
                                                   "completed or failed, not '",
                                                   ToString(to), "'"));
  }
  MigrationEvent ev = event;
  ev.status = ToString(to);
  if (ev.step == v1::MIGRATION_STEP_UNSPECIFIED) ev.step = v1::MIGRATION_STEP_RESOLVE;
  // One statement: the row (only while in error), the instance, the event, then the row.
  return pool_->SingleQuery<MigrationRecord>(
      "resolve migration in error",
      [&](pqxx::transaction_base& w) -> absl::StatusOr<MigrationRecord> {
        pqxx::result r = Prep(
            w,
            "WITH upd AS (UPDATE migrations SET status = $2, step = 'resolve', "
            "updated_at = now(), memory_claim_mib = 0, failure_reason = $3, "
            "finished_at = now(), owner = NULL, lease_expires_at = NULL "
            "WHERE id = $1 AND status = 'error' RETURNING *), "
            "inst AS (UPDATE instances i SET task_state = NULL, updated_at = now(), host = $4, "
            "missing = false, missing_since = NULL "
            "FROM upd WHERE i.uuid = upd.instance_uuid RETURNING 1), "
            "ev AS (" +
                EventsInsertFrom("upd", "$5") + ") " + MigrationSelectFrom("upd"),
            id, std::string(ToString(to)), failure_reason, host,
            EventsJson(std::vector<MigrationEvent>{ev}));
        if (!r.empty()) return MigrationFromRow(r[0]);
        pqxx::result cur = Prep(w, "SELECT status FROM migrations WHERE id = $1", id);
        if (cur.empty()) {
          return absl::NotFoundError(absl::StrCat("migration ", id, " does not exist"));
        }
        return absl::AbortedError(absl::StrCat("migration ", id, " is '", Str(cur[0][0]),
                                               "', no longer 'error': another actor moved it"));
      });
}

absl::StatusOr<MigrationRecord> PgMigrationStore::FindByRequestIdIn(
    pqxx::transaction_base& w, const std::string& request_id, const std::string& instance_uuid) {
  pqxx::result r = Prep(w, MigrationSelect() + "WHERE m.request_id = $1", request_id);
  if (r.empty()) {
    return absl::NotFoundError(absl::StrCat("no migration has request id '", request_id, "'"));
  }
  ASSIGN_OR_RETURN(MigrationRecord m, MigrationFromRow(r[0]));
  if (!instance_uuid.empty() && m.instance_uuid != instance_uuid) {
    return RequestIdReused(request_id, m);
  }
  return m;
}

absl::Status PgMigrationStore::RequestIdReused(const std::string& request_id,
                                               const MigrationRecord& m) {
  return absl::InvalidArgumentError(absl::StrCat(
      "request id '", request_id, "' was already used for migration ", m.id, " of instance ",
      m.instance_uuid, ": use a new request id for a different request"));
}

absl::StatusOr<MigrationRecord> PgMigrationStore::FindByRequestIdOf(
    const std::string& request_id, const std::string& instance_uuid) {
  return pool_->ReadQuery<MigrationRecord>(
      "find migration by request id",
      [&](pqxx::transaction_base& w) -> absl::StatusOr<MigrationRecord> {
        return FindByRequestIdIn(w, request_id, instance_uuid);
      });
}

// Why the claim of `uuid` (for a migration to `dest`, "" if the scheduler chooses, for
// evacuation `evacuation_uuid` if set) failed.
absl::Status PgMigrationStore::DiagnoseClaim(pqxx::transaction_base& w, const std::string& uuid,
                                             const std::string& dest,
                                             const std::optional<std::string>& evacuation_uuid) {
  if (evacuation_uuid) {
    pqxx::result e = w.exec_params(
        "SELECT status, cancel_requested_at IS NOT NULL FROM evacuations WHERE uuid = $1::uuid",
        *evacuation_uuid);
    if (e.empty()) {
      return absl::NotFoundError(absl::StrCat("evacuation ", *evacuation_uuid, " does not exist"));
    }
    if (e[0][1].as<bool>()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "evacuation ", *evacuation_uuid, " was cancelled: no new migration of it starts"));
    }
    if (Str(e[0][0]) != "running") {
      return absl::FailedPreconditionError(absl::StrCat("evacuation ", *evacuation_uuid,
                                                        " is already ", Str(e[0][0]),
                                                        ": no new migration of it starts"));
    }
  }
  pqxx::result r = w.exec_params(
      "SELECT i.task_state, i.missing, i.host, (SELECT m.id::text || ' (' || m.status || ')' "
      "FROM migrations m WHERE m.instance_uuid = i.uuid AND m." +
          std::string(kActive) + ") FROM instances i WHERE i.uuid = $1::uuid",
      uuid);
  if (r.empty()) {
    return absl::NotFoundError(absl::StrCat(
        "instance ", uuid, " is unknown: no host has reported a domain with this UUID"));
  }
  if (!r[0][0].is_null()) {
    return absl::AbortedError(absl::StrCat(
        "instance ", uuid, " is already migrating", r[0][3].is_null() ? "" : " (migration ",
        Str(r[0][3]), r[0][3].is_null() ? "" : ")", ": wait for it to finish or abort it"));
  }
  if (r[0][1].as<bool>()) {
    return absl::FailedPreconditionError(
        absl::StrCat("instance ", uuid, " is missing: its host ", Str(r[0][2]),
                     " no longer reports it; check the host before migrating"));
  }
  if (r[0][2].is_null()) {
    return absl::FailedPreconditionError(absl::StrCat("instance ", uuid, " has no known host"));
  }
  if (!dest.empty() && Str(r[0][2]) == dest) {
    return absl::InvalidArgumentError(
        absl::StrCat("destination ", dest, " is the instance's current host: choose another"));
  }
  return absl::AbortedError(
      absl::StrCat("instance ", uuid, " changed while it was claimed: retry the request"));
}

// `reason` (an abort's) is recorded in abort_reason when not empty.
absl::StatusOr<MigrationRecord> PgMigrationStore::RecordRequest(int64_t id, const std::string& by,
                                                                const char* by_col,
                                                                const char* at_col,
                                                                const char* what,
                                                                const std::string& reason) {
  if (by.empty()) return absl::InvalidArgumentError("the request needs the caller's identity");
  return pool_->Query<MigrationRecord>(
      "record operator request", [&](pqxx::work& w) -> absl::StatusOr<MigrationRecord> {
        ASSIGN_OR_RETURN(MigrationRecord cur, SelectMigration(w, id, true));
        if (IsTerminal(cur.status)) {
          return absl::FailedPreconditionError(absl::StrCat(
              "migration ", id, " is already ", ToString(cur.status), ": nothing to ",
              std::string(by_col).rfind("abort", 0) == 0 ? "abort" : "force-complete"));
        }
        w.exec_params(
            absl::StrCat("UPDATE migrations SET ", by_col, " = $2, ", at_col, " = COALESCE(",
                         at_col, ", now()), ",
                         std::string(by_col) == "aborted_by"
                             ? "abort_reason = COALESCE(NULLIF($3::text, ''), abort_reason), "
                             : "",
                         "updated_at = now() WHERE id = $1 AND $3::text IS NOT NULL"),
            id, by, reason);
        MigrationEvent ev;
        ev.migration_id = id;
        // The request's own step (a note, not a result of the step that was running).
        ev.step = std::string(by_col) == "aborted_by" ? v1::MIGRATION_STEP_ABORT
                                                      : v1::MIGRATION_STEP_FORCE_COMPLETE;
        ev.kind = "info";
        ev.outcome = "requested";
        ev.status = std::string(ToString(cur.status));
        ev.actor = by;
        ev.detail = absl::StrCat(what, by, reason.empty() ? "" : ": ", reason);
        ev.started_at = absl::Now();
        ev.finished_at = ev.started_at;
        ev.duration_ms = 0;
        InsertEvent(w, ev);
        return SelectMigration(w, id, false);
      });
}

}  // namespace livemig::db
