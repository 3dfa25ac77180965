// The row and SQL helpers of the PostgreSQL stores (db/pg_rows.h).
#include "db/pg_rows.h"

#include "common/status_macros.h"
#include "db/pg_stores.h"
#include "nlohmann/json.hpp"

namespace livemig::db {

std::string Us(const std::string& col) {
  return absl::StrCat("(extract(epoch from ", col, ") * 1000000)::bigint");
}
absl::Time FromUs(int64_t us) { return absl::FromUnixMicros(us); }
int64_t ToUs(absl::Time t) { return absl::ToUnixMicros(t); }

double Secs(absl::Duration d) { return absl::ToDoubleSeconds(d); }

std::optional<absl::Time> OptTime(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return FromUs(f.as<int64_t>());
}
std::string Str(const pqxx::field& f) { return f.is_null() ? "" : f.as<std::string>(); }

std::string JsonArray(const std::vector<std::string>& v) { return nlohmann::json(v).dump(); }
std::vector<std::string> ParseJsonArray(const std::string& text) {
  std::vector<std::string> out;
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_array()) return out;
  for (const auto& e : j) {
    if (e.is_string()) out.push_back(e.get<std::string>());
  }
  return out;
}

std::string TextArray(const std::vector<std::string>& v) {
  std::string out = "{";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) out += ",";
    out += '"';
    for (char c : v[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  return out + "}";
}

absl::Status CheckJsonObject(const std::string& text, const char* what) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " must be a JSON object, got: ", text));
  }
  return absl::OkStatus();
}

absl::Status CheckJsonArray(const std::string& text, const std::string& what) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be a JSON array, got: ", text.substr(0, 300)));
  }
  return absl::OkStatus();
}

absl::Status CheckUuid(const std::string& uuid, const char* what) {
  if (IsValidUuid(uuid)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, " '", uuid, "' is not a UUID (expected 8-4-4-4-12 hexadecimal digits)"));
}

std::string MigrationSelectFrom(const std::string& source) {
  return absl::StrCat(
      "SELECT m.id, m.uuid::text AS uuid, COALESCE(mi.name, '') AS instance_name, m.request_id, "
      "m.evacuation_uuid::text AS evacuation_uuid, m.instance_uuid::text AS instance_uuid, "
      "m.source_host, "
      "m.dest_host, m.requested_dest, m.status, m.step, m.live, m.block_migration, "
      "m.options::text AS options, m.memory_claim_mib, m.requested_by, m.aborted_by, "
      "m.abort_reason, COALESCE(m.candidates::text, '') AS candidates, ",
      Us("m.abort_requested_at"), " AS abort_requested_at, m.force_complete_requested_by, ",
      Us("m.force_complete_requested_at"),
      " AS force_complete_requested_at, m.failure_reason, m.phase, m.bytes_total, "
      "m.bytes_processed, m.bytes_remaining, m.percent, m.downtime_ms, m.elapsed_ms, ",
      Us("m.progress_at"), " AS progress_at, m.owner, ", Us("m.lease_expires_at"),
      " AS lease_expires_at, ", Us("m.created_at"), " AS created_at, ", Us("m.updated_at"),
      " AS updated_at, ", Us("m.started_at"), " AS started_at, ", Us("m.finished_at"),
      " AS finished_at FROM ", source, " m LEFT JOIN instances mi ON mi.uuid = m.instance_uuid ");
}

std::string MigrationSelect() { return MigrationSelectFrom("migrations"); }

absl::StatusOr<MigrationRecord> MigrationFromRow(const pqxx::row& r) {
  MigrationRecord m;
  m.id = r["id"].as<int64_t>();
  m.uuid = Str(r["uuid"]);
  m.instance_name = Str(r["instance_name"]);
  m.request_id = Opt<std::string>(r["request_id"]);
  m.evacuation_uuid = Str(r["evacuation_uuid"]);
  m.instance_uuid = Str(r["instance_uuid"]);
  m.source_host = Str(r["source_host"]);
  m.dest_host = Str(r["dest_host"]);
  m.requested_dest = Str(r["requested_dest"]);
  auto status = ParseMigrationStatus(Str(r["status"]));
  if (!status) {
    return absl::InternalError(
        absl::StrCat("migration ", m.id, " has an unknown status '", Str(r["status"]), "'"));
  }
  m.status = *status;
  m.step = StepFromName(Str(r["step"]));
  m.live = r["live"].as<bool>();
  m.block_migration = Str(r["block_migration"]);
  m.options_json = Str(r["options"]);
  m.memory_claim_mib = r["memory_claim_mib"].as<int64_t>();
  m.requested_by = Str(r["requested_by"]);
  m.aborted_by = Str(r["aborted_by"]);
  m.abort_reason = Str(r["abort_reason"]);
  m.candidates_json = Str(r["candidates"]);
  m.abort_requested_at = OptTime(r["abort_requested_at"]);
  m.force_complete_requested_by = Str(r["force_complete_requested_by"]);
  m.force_complete_requested_at = OptTime(r["force_complete_requested_at"]);
  m.failure_reason = Str(r["failure_reason"]);
  m.progress.phase = Str(r["phase"]);
  m.progress.bytes_total = Opt<int64_t>(r["bytes_total"]);
  m.progress.bytes_processed = Opt<int64_t>(r["bytes_processed"]);
  m.progress.bytes_remaining = Opt<int64_t>(r["bytes_remaining"]);
  m.progress.percent = Opt<double>(r["percent"]);
  m.progress.downtime_ms = Opt<int64_t>(r["downtime_ms"]);
  m.progress.elapsed_ms = Opt<int64_t>(r["elapsed_ms"]);
  m.progress.sampled_at = OptTime(r["progress_at"]);
  m.owner = Str(r["owner"]);
  m.lease_expires_at = OptTime(r["lease_expires_at"]);
  m.created_at = FromUs(r["created_at"].as<int64_t>());
  m.updated_at = FromUs(r["updated_at"].as<int64_t>());
  m.started_at = OptTime(r["started_at"]);
  m.finished_at = OptTime(r["finished_at"]);
  return m;
}

absl::StatusOr<std::vector<MigrationRecord>> MigrationsFromResult(const pqxx::result& r) {
  std::vector<MigrationRecord> out;
  out.reserve(r.size());
  for (const auto& row : r) {
    ASSIGN_OR_RETURN(MigrationRecord m, MigrationFromRow(row));
    out.push_back(std::move(m));
  }
  return out;
}

absl::StatusOr<MigrationRecord> SelectMigration(pqxx::transaction_base& w, int64_t id,
                                                bool for_update) {
  // Lock the row first: the select joins the instance's name (an outer join cannot be locked).
  if (for_update) Prep(w, "SELECT 1 FROM migrations WHERE id = $1 FOR UPDATE", id);
  pqxx::result r = Prep(w, MigrationSelect() + "WHERE m.id = $1", id);
  if (r.empty()) return absl::NotFoundError(absl::StrCat("migration ", id, " does not exist"));
  return MigrationFromRow(r[0]);
}

std::string EventsJson(const std::vector<MigrationEvent>& events) {
  nlohmann::json a = nlohmann::json::array();
  auto text = [](std::string v) {
    size_t at;
    while ((at = v.find('\0')) != std::string::npos) v.replace(at, 1, "\xEF\xBF\xBD");
    return v;
  };
  for (const MigrationEvent& e : events) {
    a.push_back({{"step", text(StepText(e.step))},
                 {"kind", text(e.kind)},
                 {"outcome", text(e.outcome)},
                 {"status", text(e.status)},
                 {"actor", text(e.actor)},
                 {"detail", text(e.detail)},
                 {"host", text(e.host)},
                 {"started_us", ToUs(e.started_at)},
                 {"finished_us", e.finished_at ? nlohmann::json(ToUs(*e.finished_at)) : nullptr},
                 {"duration_ms", e.duration_ms ? nlohmann::json(*e.duration_ms) : nullptr}});
  }
  return a.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string EventsInsertFrom(const std::string& cte, const std::string& param) {
  return absl::StrCat(
      "INSERT INTO migration_events (migration_id, step, kind, outcome, status, actor, detail, "
      "host, started_at, finished_at, duration_ms) SELECT ",
      cte,
      ".id, e.step, e.kind, e.outcome, e.status, e.actor, e.detail, NULLIF(e.host, ''), "
      "to_timestamp(e.started_us::double precision / 1000000), "
      "to_timestamp(e.finished_us::double precision / 1000000), e.duration_ms FROM ",
      cte, ", ROWS FROM (jsonb_to_recordset(", param,
      "::jsonb) AS (step text, kind text, outcome text, status text, actor text, detail text, "
      "host text, started_us bigint, finished_us bigint, duration_ms bigint)) WITH ORDINALITY "
      "AS e(step, kind, outcome, status, actor, detail, host, started_us, finished_us, "
      "duration_ms, ord) ORDER BY e.ord RETURNING 1");
}

void InsertEvent(pqxx::transaction_base& w, const MigrationEvent& e) {
  Prep(w,
       "INSERT INTO migration_events (migration_id, step, kind, outcome, status, actor, detail, "
       "started_at, finished_at, duration_ms, host) VALUES ($1, $2, $3, $4, $5, $6, $7, "
       "to_timestamp($8::double precision / 1000000), CASE WHEN $9::bigint IS NULL THEN NULL "
       "ELSE to_timestamp($9::double precision / 1000000) END, $10, NULLIF($11, ''))",
       e.migration_id, StepText(e.step), e.kind, e.outcome, e.status, e.actor, e.detail,
       ToUs(e.started_at),
       e.finished_at ? std::optional<int64_t>(ToUs(*e.finished_at)) : std::nullopt, e.duration_ms,
       e.host);
}

}  // namespace livemig::db
