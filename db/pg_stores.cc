#include "db/pg_stores.h"

#include <algorithm>
#include <atomic>
#include <functional>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace livemig::db {
namespace {

constexpr char kActive[] = "status NOT IN ('completed', 'failed', 'cancelled')";

// Timestamps cross the wire as microseconds since the epoch.
std::string Us(const std::string& col) {
  return absl::StrCat("(extract(epoch from ", col, ") * 1000000)::bigint");
}
absl::Time FromUs(int64_t us) { return absl::FromUnixMicros(us); }
int64_t ToUs(absl::Time t) { return absl::ToUnixMicros(t); }

template <typename T>
std::optional<T> Opt(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return f.as<T>();
}
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

// A PostgreSQL array literal of text values: {"a","b c"}.
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

// Runs `sql` as a named prepared statement of the transaction's connection, so that it is parsed
// and planned once per connection instead of at every call (libpqxx prepares it at its first use
// there; defining the same text again is a no-op). Only for statements whose plan suits every
// parameter value (no optional filters).
template <typename... Args>
pqxx::result Prep(pqxx::transaction_base& w, const std::string& sql, Args&&... args) {
  const std::string name = absl::StrCat("lm_", std::hash<std::string>()(sql));
  w.conn().prepare(name, sql);
  return w.exec_prepared(name, std::forward<Args>(args)...);
}

// ---- hosts -------------------------------------------------------------------------------

// The hosts columns (of alias h) and `up`, which compares with service_down_time in $1.
std::string HostColumns() {
  return absl::StrCat(
      "h.hostname, h.agent_address, h.agent_version, h.hypervisor_type, "
      "h.hypervisor_version, h.libvirt_version, h.cpu_arch, h.cpu_model, "
      "h.cpu_features::text AS cpu_features, h.cpu_xml, h.memory_total_mib, h.memory_free_mib, "
      "h.memory_reserved_mib, h.network_segments::text AS network_segments, "
      "h.shared_storage::text AS shared_storage, h.instance_path, "
      "h.capabilities::text AS capabilities, h.agent_boot_id, h.report_seq, h.enabled, "
      "h.disabled_reason, h.disabled_by, ",
      Us("h.disabled_at"), " AS disabled_at, ", Us("h.last_report_at"),
      " AS last_report_at, COALESCE(h.last_report_at > now() - make_interval(secs => $1), false) "
      "AS up");
}

// Every host with its counts: each count aggregated once over its table, then joined.
std::string HostSelect() {
  return absl::StrCat(
      "SELECT ", HostColumns(),
      ", COALESCE(c.claimed, 0) AS claimed, COALESCE(c.mig_in, 0) AS mig_in, "
      "COALESCE(o.mig_out, 0) AS mig_out, COALESCE(ic.n, 0) AS n_instances "
      "FROM hosts h "
      "LEFT JOIN (SELECT dest_host, sum(memory_claim_mib) AS claimed, count(*) AS mig_in "
      "  FROM migrations WHERE ",
      kActive,
      " GROUP BY dest_host) c ON c.dest_host = h.hostname "
      "LEFT JOIN (SELECT source_host, count(*) AS mig_out FROM migrations WHERE ",
      kActive,
      " GROUP BY source_host) o ON o.source_host = h.hostname "
      "LEFT JOIN (SELECT host, count(*) AS n FROM instances WHERE NOT missing GROUP BY host) ic "
      "ON ic.host = h.hostname ");
}

// A few hosts (the rows of `from`, a subquery of hosts rows) with their counts, each looked up
// per row through the partial indexes: cost proportional to the rows, not to the tables.
std::string HostSelectFew(const std::string& from) {
  return absl::StrCat(
      "SELECT ", HostColumns(),
      ", COALESCE(c.claimed, 0) AS claimed, c.mig_in, o.mig_out, ic.n AS n_instances FROM ", from,
      " h LEFT JOIN LATERAL (SELECT sum(memory_claim_mib)::bigint AS claimed, count(*) AS mig_in "
      "FROM "
      "migrations WHERE dest_host = h.hostname AND ",
      kActive,
      ") c ON true LEFT JOIN LATERAL (SELECT count(*) AS mig_out FROM migrations WHERE "
      "source_host = h.hostname AND ",
      kActive,
      ") o ON true LEFT JOIN LATERAL (SELECT count(*) AS n FROM instances WHERE host = "
      "h.hostname AND NOT missing) ic ON true ");
}

constexpr char kHostPageTokenPrefix[] = "h1.";
constexpr char kEvacuationPageTokenPrefix[] = "e1.";

HostRecord HostFromRow(const pqxx::row& r) {
  HostRecord h;
  HostReport& p = h.report;
  p.hostname = Str(r["hostname"]);
  p.agent_address = Str(r["agent_address"]);
  p.agent_version = Str(r["agent_version"]);
  p.hypervisor_type = Str(r["hypervisor_type"]);
  p.hypervisor_version = r["hypervisor_version"].as<int64_t>();
  p.libvirt_version = r["libvirt_version"].as<int64_t>();
  p.cpu_arch = Str(r["cpu_arch"]);
  p.cpu_model = Str(r["cpu_model"]);
  p.cpu_features = ParseJsonArray(Str(r["cpu_features"]));
  p.cpu_xml = Str(r["cpu_xml"]);
  p.memory_total_mib = r["memory_total_mib"].as<int64_t>();
  p.memory_free_mib = r["memory_free_mib"].as<int64_t>();
  p.memory_reserved_mib = r["memory_reserved_mib"].as<int64_t>();
  p.network_segments = ParseJsonArray(Str(r["network_segments"]));
  p.shared_storage = ParseJsonArray(Str(r["shared_storage"]));
  p.instance_path = Str(r["instance_path"]);
  p.capabilities_json = Str(r["capabilities"]);
  p.agent_boot_id = Str(r["agent_boot_id"]);
  p.seq = r["report_seq"].as<int64_t>();
  h.enabled = r["enabled"].as<bool>();
  h.disabled_reason = Str(r["disabled_reason"]);
  h.disabled_by = Str(r["disabled_by"]);
  h.disabled_at = OptTime(r["disabled_at"]);
  h.last_report_at = OptTime(r["last_report_at"]);
  h.up = r["up"].as<bool>();
  h.memory_claimed_mib = r["claimed"].as<int64_t>();
  h.migrations_in = r["mig_in"].as<int64_t>();
  h.migrations_out = r["mig_out"].as<int64_t>();
  h.instances = r["n_instances"].as<int64_t>();
  return h;
}

double Secs(absl::Duration d) { return absl::ToDoubleSeconds(d); }

}  // namespace

// The rules live in common/validate.h (shared with the API parsers and cloudctl).
bool IsValidUuid(const std::string& uuid) { return ::livemig::IsValidUuid(uuid); }

bool IsValidHostname(const std::string& hostname) { return ::livemig::IsValidHostname(hostname); }

bool IsValidRequestId(const std::string& request_id) {
  return ::livemig::IsValidRequestId(request_id);
}

absl::Status CheckRequestId(const std::string& field, const std::string& value) {
  if (value.empty() || IsValidRequestId(value)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "field '", field, "' must be 1 to ", kMaxRequestIdLength,
      " printable ASCII characters (space to '~'), got ", value.size(), " bytes",
      value.size() > kMaxRequestIdLength ? "" : " with a control or non-ASCII character"));
}

class PgHostStore : public HostStore {
 public:
  explicit PgHostStore(PgPool* pool) : pool_(pool) {}

  absl::StatusOr<ReportResult> ApplyReport(const HostReport& p) override {
    if (!IsValidHostname(p.hostname)) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid hostname '", p.hostname, "' in host report"));
    }
    RETURN_IF_ERROR(CheckJsonObject(p.capabilities_json, "capabilities"));
    std::vector<std::string> uuids;
    for (const DomainReport& d : p.domains) {
      if (!IsValidUuid(d.uuid)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "host ", p.hostname, " reported a domain with an invalid UUID '", d.uuid, "'"));
      }
      RETURN_IF_ERROR(CheckJsonArray(
          d.disks_json, absl::StrCat("the disks of domain ", d.uuid, " reported by ", p.hostname)));
      uuids.push_back(d.uuid);
    }
    auto past_deadline = [&]() -> absl::Status {
      if (!p.apply_before.has_value() || absl::Now() < *p.apply_before) return absl::OkStatus();
      return absl::DeadlineExceededError(absl::StrCat(
          "report ", p.seq, " of host ", p.hostname,
          " not applied: its sender's deadline passed before it could be committed (the agent "
          "counts it as failed and reports again)"));
    };
    RETURN_IF_ERROR(past_deadline());
    auto applied = pool_->Query<ReportResult>(
        "apply host report", [&](pqxx::work& w) -> absl::StatusOr<ReportResult> {
          ReportResult res;
          pqxx::result cur = w.exec_params(
              "SELECT agent_boot_id, report_seq FROM hosts WHERE hostname = $1 FOR NO KEY UPDATE",
              p.hostname);
          if (!cur.empty() && Str(cur[0][0]) == p.agent_boot_id &&
              cur[0][1].as<int64_t>() >= p.seq) {
            res.accepted = false;
            res.seq = cur[0][1].as<int64_t>();
            return res;
          }
          w.exec_params(
              "INSERT INTO hosts (hostname, agent_address, agent_version, hypervisor_type, "
              "hypervisor_version, libvirt_version, cpu_arch, cpu_model, cpu_features, cpu_xml, "
              "memory_total_mib, memory_free_mib, memory_reserved_mib, network_segments, "
              "shared_storage, instance_path, capabilities, agent_boot_id, report_seq, "
              "last_report_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, "
              "$10, $11, $12, $13, $14::jsonb, $15::jsonb, $16, $17::jsonb, $18, $19, now(), "
              "now()) ON CONFLICT (hostname) DO UPDATE SET agent_address = EXCLUDED.agent_address,"
              " agent_version = EXCLUDED.agent_version, hypervisor_type = "
              "EXCLUDED.hypervisor_type, hypervisor_version = EXCLUDED.hypervisor_version, "
              "libvirt_version = EXCLUDED.libvirt_version, cpu_arch = EXCLUDED.cpu_arch, "
              "cpu_model = EXCLUDED.cpu_model, cpu_features = EXCLUDED.cpu_features, cpu_xml = "
              "EXCLUDED.cpu_xml, memory_total_mib = EXCLUDED.memory_total_mib, memory_free_mib = "
              "EXCLUDED.memory_free_mib, memory_reserved_mib = EXCLUDED.memory_reserved_mib, "
              "network_segments = EXCLUDED.network_segments, shared_storage = "
              "EXCLUDED.shared_storage, instance_path = EXCLUDED.instance_path, capabilities = "
              "EXCLUDED.capabilities, agent_boot_id = EXCLUDED.agent_boot_id, report_seq = "
              "EXCLUDED.report_seq, last_report_at = now(), updated_at = now()",
              p.hostname, p.agent_address, p.agent_version, p.hypervisor_type, p.hypervisor_version,
              p.libvirt_version, p.cpu_arch, p.cpu_model, JsonArray(p.cpu_features), p.cpu_xml,
              p.memory_total_mib, p.memory_free_mib, p.memory_reserved_mib,
              JsonArray(p.network_segments), JsonArray(p.shared_storage), p.instance_path,
              p.capabilities_json, p.agent_boot_id, p.seq);
          for (const DomainReport& d : p.domains) {
            // A report never moves an instance that a migration holds; a leftover inactive
            // definition on another host does not steal an instance either.
            pqxx::result r = w.exec_params(
                "INSERT INTO instances AS i (uuid, name, host, power_state, memory_mib, vcpus, "
                "disks, last_seen_at, updated_at) VALUES ($1::uuid, $2, $3, $4, $5, $6, "
                "$7::jsonb, now(), now()) ON CONFLICT (uuid) DO UPDATE SET name = EXCLUDED.name, "
                "host = EXCLUDED.host, power_state = EXCLUDED.power_state, memory_mib = "
                "EXCLUDED.memory_mib, vcpus = EXCLUDED.vcpus, disks = EXCLUDED.disks, missing = "
                "false, missing_since = NULL, last_seen_at = now(), updated_at = now() WHERE "
                "i.task_state IS NULL AND (i.host IS NULL OR i.host = EXCLUDED.host OR i.missing "
                "OR EXCLUDED.power_state IN ('running', 'paused', 'blocked'))",
                d.uuid, d.name, p.hostname, d.power_state, d.memory_mib, d.vcpus, d.disks_json);
            res.instances_upserted += static_cast<int>(r.affected_rows());
          }
          pqxx::result gone = w.exec_params(
              "UPDATE instances SET missing = true, missing_since = now(), updated_at = now() "
              "WHERE host = $1 AND NOT missing AND task_state IS NULL AND NOT (uuid::text = "
              "ANY($2::text[]))",
              p.hostname, TextArray(uuids));
          res.instances_marked_missing = static_cast<int>(gone.affected_rows());
          // Checked again just before the commit: the sender may have given up meanwhile.
          RETURN_IF_ERROR(past_deadline());
          res.accepted = true;
          res.seq = p.seq;
          return res;
        });
    if (applied.ok() && applied->accepted) MaybeFoldInstanceCounts();
    return applied;
  }

  // Folds the per-host instance-count deltas into the counters (schema version 4), at most
  // every kFoldEvery per process, so that the deltas stay few. Counts read through
  // v_host_summary are exact with or without it; a failed fold leaves the deltas for the next.
  void MaybeFoldInstanceCounts() {
    constexpr int64_t kFoldEveryUs = 5'000'000;
    const int64_t now = ToUs(absl::Now());
    int64_t last = last_fold_us_.load();
    if (now - last < kFoldEveryUs || !last_fold_us_.compare_exchange_strong(last, now)) return;
    absl::Status s =
        pool_->Single("fold host instance counts", [](pqxx::transaction_base& w) -> absl::Status {
          w.exec("SELECT fold_host_instance_counts()");
          return absl::OkStatus();
        });
    if (!s.ok()) LogWarning("%s (the counts stay exact; the next report retries)", s.ToString());
  }

  absl::StatusOr<HostRecord> GetHost(const std::string& hostname,
                                     absl::Duration service_down_time) override {
    return pool_->ReadQuery<HostRecord>(
        "get host", [&](pqxx::transaction_base& w) -> absl::StatusOr<HostRecord> {
          pqxx::result r = Prep(w, HostSelectFew("(SELECT * FROM hosts WHERE hostname = $2)"),
                                Secs(service_down_time), hostname);
          if (r.empty()) {
            return absl::NotFoundError(
                absl::StrCat("host '", hostname, "' is unknown: it has never reported"));
          }
          return HostFromRow(r[0]);
        });
  }

  absl::StatusOr<std::vector<HostRecord>> ListHosts(absl::Duration service_down_time) override {
    return pool_->ReadQuery<std::vector<HostRecord>>(
        "list hosts", [&](pqxx::transaction_base& w) -> absl::StatusOr<std::vector<HostRecord>> {
          pqxx::result r =
              w.exec_params(HostSelect() + "ORDER BY h.hostname", Secs(service_down_time));
          std::vector<HostRecord> out;
          for (const auto& row : r) out.push_back(HostFromRow(row));
          return out;
        });
  }

  absl::StatusOr<HostPage> ListHostsPage(const HostFilter& f,
                                         absl::Duration service_down_time) override {
    if (f.page_size < 1 || f.page_size > 1000) {
      return absl::InvalidArgumentError(
          absl::StrCat("page size must be between 1 and 1000, got ", f.page_size));
    }
    std::optional<std::string> after;
    if (!f.page_token.empty()) {
      const std::string name =
          f.page_token.substr(std::min(f.page_token.size(), sizeof(kHostPageTokenPrefix) - 1));
      if (f.page_token.rfind(kHostPageTokenPrefix, 0) != 0 || !IsValidHostname(name)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "page token '", f.page_token,
            "' is not one this server issued: pass the next_page_token of the previous page"));
      }
      after = name;
    }
    return pool_->ReadQuery<
        HostPage>("list hosts", [&](pqxx::transaction_base& w) -> absl::StatusOr<HostPage> {
      pqxx::result r = w.exec_params(
          HostSelectFew(
              "(SELECT * FROM hosts WHERE ($2::boolean IS NULL OR enabled = $2) AND ($3::boolean "
              "IS NULL OR COALESCE(last_report_at > now() - make_interval(secs => $1), false) = "
              "$3) AND ($4::text IS NULL OR hostname > $4) ORDER BY hostname LIMIT $5)") +
              "ORDER BY h.hostname",
          Secs(service_down_time), f.enabled, f.up, after, f.page_size + 1);
      HostPage page;
      for (const auto& row : r) page.hosts.push_back(HostFromRow(row));
      if (static_cast<int>(page.hosts.size()) > f.page_size) {
        page.hosts.pop_back();
        page.next_page_token =
            absl::StrCat(kHostPageTokenPrefix, page.hosts.back().report.hostname);
      }
      return page;
    });
  }

  // Reads hosts in the order of the index hosts_memory_available (memory after the dom0
  // reserve, then name), and stops after `limit` + K of them, where K counts the hosts with an
  // active migration: only those have claims or migrations in flight, so at least `limit` of the
  // hosts read keep their rank, and every host not read ranks below them.
  absl::StatusOr<std::vector<HostRecord>> ListDestinationCandidates(
      const DestinationQuery& q, absl::Duration service_down_time) override {
    const int limit = std::clamp(q.limit, 1, 1000);
    const std::string busy = absl::StrCat(
        "(SELECT host, sum(claimed)::bigint AS claimed, sum(n)::bigint AS n FROM (SELECT "
        "dest_host AS host, memory_claim_mib AS claimed, 1 AS n FROM migrations WHERE ",
        kActive, " AND dest_host IS NOT NULL UNION ALL SELECT source_host, 0, 1 FROM migrations ",
        "WHERE ", kActive, ") x GROUP BY host)");
    return pool_->ReadQuery<std::vector<HostRecord>>(
        "list destination candidates",
        [&](pqxx::transaction_base& w) -> absl::StatusOr<std::vector<HostRecord>> {
          const int64_t k =
              w.exec(absl::StrCat("SELECT count(*) FROM ", busy, " b"))[0][0].as<int64_t>();
          pqxx::result r = w.exec_params(
              HostSelectFew(absl::StrCat(
                  "(SELECT hosts.* FROM (SELECT t.hostname FROM (SELECT hh.hostname, "
                  "hh.memory_free_mib - hh.memory_reserved_mib AS raw FROM hosts hh WHERE "
                  "hh.hostname <> $2 AND hh.enabled AND hh.last_report_at > now() - "
                  "make_interval(secs => $1) AND hh.hypervisor_type = $3 AND "
                  "hh.hypervisor_version >= $4 AND hh.cpu_arch = $5 AND hh.memory_free_mib - "
                  "hh.memory_reserved_mib >= $6 ORDER BY hh.memory_free_mib - "
                  "hh.memory_reserved_mib DESC, hh.hostname LIMIT $7::bigint + $8::bigint) t "
                  "LEFT JOIN ",
                  busy,
                  " b ON b.host = t.hostname WHERE t.raw - COALESCE(b.claimed, 0) >= $6 ORDER BY "
                  "t.raw - COALESCE(b.claimed, 0) DESC, COALESCE(b.n, 0), t.hostname LIMIT $7) "
                  "top JOIN hosts ON hosts.hostname = top.hostname)")) +
                  "ORDER BY h.memory_free_mib - h.memory_reserved_mib - COALESCE(c.claimed, 0) "
                  "DESC, c.mig_in + o.mig_out, h.hostname",
              Secs(service_down_time), q.source, q.hypervisor_type, q.min_hypervisor_version,
              q.cpu_arch, q.memory_mib, limit, k);
          std::vector<HostRecord> out;
          out.reserve(r.size());
          for (const auto& row : r) out.push_back(HostFromRow(row));
          return out;
        });
  }

  absl::StatusOr<HostRecord> SetHostEnabled(const std::string& hostname, bool enabled,
                                            const std::string& reason,
                                            const std::string& by) override {
    RETURN_IF_ERROR(pool_->Run("set host enabled", [&](pqxx::work& w) -> absl::Status {
      pqxx::result r = w.exec_params(
          "UPDATE hosts SET enabled = $2, disabled_reason = CASE WHEN $2 THEN NULL ELSE $3 END, "
          "disabled_by = $4, disabled_at = CASE WHEN $2 THEN NULL ELSE now() END, updated_at = "
          "now() WHERE hostname = $1",
          hostname, enabled, reason, by);
      if (r.affected_rows() == 0) {
        return absl::NotFoundError(absl::StrCat("host '", hostname, "' is unknown"));
      }
      return absl::OkStatus();
    }));
    return GetHost(hostname, absl::Seconds(60));
  }

 private:
  PgPool* pool_;
  std::atomic<int64_t> last_fold_us_{0};
};

// ---- instances ----------------------------------------------------------------------------

namespace {
std::string InstanceSelect() {
  return absl::StrCat(
      "SELECT i.uuid::text AS uuid, i.name, i.host, i.power_state, i.memory_mib, i.vcpus, "
      "i.task_state, i.missing, i.disks::text AS disks, ",
      Us("i.missing_since"), " AS missing_since, ", Us("i.updated_at"),
      " AS updated_at, (SELECT m.id FROM migrations m WHERE m.instance_uuid = i.uuid AND m.",
      kActive, ") AS active_migration_id FROM instances i ");
}

InstanceRecord InstanceFromRow(const pqxx::row& r) {
  InstanceRecord i;
  i.uuid = Str(r["uuid"]);
  i.name = Str(r["name"]);
  i.host = Str(r["host"]);
  i.power_state = Str(r["power_state"]);
  i.memory_mib = r["memory_mib"].as<int64_t>();
  i.vcpus = r["vcpus"].as<int32_t>();
  i.task_state = Opt<std::string>(r["task_state"]);
  i.missing = r["missing"].as<bool>();
  i.missing_since = OptTime(r["missing_since"]);
  i.updated_at = FromUs(r["updated_at"].as<int64_t>());
  i.active_migration_id = Opt<int64_t>(r["active_migration_id"]);
  i.disks_json = Str(r["disks"]);
  return i;
}

absl::Status CheckUuid(const std::string& uuid, const char* what) {
  if (IsValidUuid(uuid)) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, " '", uuid, "' is not a UUID (expected 8-4-4-4-12 hexadecimal digits)"));
}

// Instance pages continue after (name, uuid): "i1.<name, web-safe base64>.<uuid>".
constexpr char kInstancePageTokenPrefix[] = "i1.";

std::string InstancePageToken(const InstanceRecord& last) {
  std::string name;
  absl::WebSafeBase64Escape(last.name, &name);
  return absl::StrCat(kInstancePageTokenPrefix, name, ".", last.uuid);
}

absl::Status ParseInstancePageToken(const std::string& token, std::string* name,
                                    std::string* uuid) {
  const size_t prefix = sizeof(kInstancePageTokenPrefix) - 1;
  const size_t dot = token.rfind('.');
  if (token.rfind(kInstancePageTokenPrefix, 0) != 0 || dot == std::string::npos || dot < prefix ||
      !IsValidUuid(token.substr(dot + 1)) ||
      !absl::WebSafeBase64Unescape(token.substr(prefix, dot - prefix), name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "page token '", token.substr(0, 300),
        "' is not one this server issued: pass the next_page_token of the previous page"));
  }
  *uuid = token.substr(dot + 1);
  return absl::OkStatus();
}
}  // namespace

class PgInstanceStore : public InstanceStore {
 public:
  explicit PgInstanceStore(PgPool* pool) : pool_(pool) {}

  absl::StatusOr<InstanceRecord> GetInstance(const std::string& uuid) override {
    RETURN_IF_ERROR(CheckUuid(uuid, "instance"));
    return pool_->ReadQuery<InstanceRecord>(
        "get instance", [&](pqxx::transaction_base& w) -> absl::StatusOr<InstanceRecord> {
          pqxx::result r = Prep(w, InstanceSelect() + "WHERE i.uuid = $1::uuid", uuid);
          if (r.empty()) {
            return absl::NotFoundError(absl::StrCat(
                "instance ", uuid, " is unknown: no host has reported a domain with this UUID"));
          }
          return InstanceFromRow(r[0]);
        });
  }

  absl::StatusOr<std::vector<InstanceRecord>> ListInstances(const std::string& host,
                                                            int limit) override {
    if (limit <= 0 || limit > 100000) limit = 1000;
    return pool_->ReadQuery<std::vector<InstanceRecord>>(
        "list instances",
        [&](pqxx::transaction_base& w) -> absl::StatusOr<std::vector<InstanceRecord>> {
          pqxx::result r = w.exec_params(
              InstanceSelect() + "WHERE ($1 = '' OR i.host = $1) ORDER BY i.name, i.uuid LIMIT $2",
              host, limit);
          std::vector<InstanceRecord> out;
          for (const auto& row : r) out.push_back(InstanceFromRow(row));
          return out;
        });
  }

  absl::StatusOr<InstancePage> ListInstancesPage(const InstanceFilter& f) override {
    if (f.page_size < 1 || f.page_size > 1000) {
      return absl::InvalidArgumentError(
          absl::StrCat("page size must be between 1 and 1000, got ", f.page_size));
    }
    if (!f.host.empty() && !IsValidHostname(f.host)) {
      return absl::InvalidArgumentError(
          absl::StrCat("host filter '", f.host, "' is not a valid host name"));
    }
    std::optional<std::string> after_name, after_uuid;
    if (!f.page_token.empty()) {
      std::string name, uuid;
      RETURN_IF_ERROR(ParseInstancePageToken(f.page_token, &name, &uuid));
      after_name = std::move(name);
      after_uuid = std::move(uuid);
    }
    std::optional<std::string> states;
    if (!f.power_states.empty()) states = TextArray(f.power_states);
    return pool_->ReadQuery<InstancePage>(
        "list instances", [&](pqxx::transaction_base& w) -> absl::StatusOr<InstancePage> {
          pqxx::result r = w.exec_params(
              InstanceSelect() +
                  "WHERE ($1 = '' OR i.host = $1) "
                  "AND ($2::text[] IS NULL OR i.power_state = ANY($2::text[])) "
                  "AND ($3::boolean IS NULL OR i.missing = $3) "
                  "AND ($4::boolean IS NULL OR (i.task_state IS NOT NULL) = $4) "
                  "AND ($5::text IS NULL OR (i.name, i.uuid) > ($5::text, $6::uuid)) "
                  "ORDER BY i.name, i.uuid LIMIT $7",
              f.host, states, f.missing, f.migrating, after_name, after_uuid, f.page_size + 1);
          InstancePage page;
          for (const auto& row : r) page.instances.push_back(InstanceFromRow(row));
          if (static_cast<int>(page.instances.size()) > f.page_size) {
            page.instances.pop_back();
            page.next_page_token = InstancePageToken(page.instances.back());
          }
          return page;
        });
  }

  absl::Status CompareAndSetTaskState(const std::string& uuid,
                                      const std::optional<std::string>& expected,
                                      const std::optional<std::string>& desired) override {
    RETURN_IF_ERROR(CheckUuid(uuid, "instance"));
    return pool_->Run("compare-and-set task state", [&](pqxx::work& w) -> absl::Status {
      pqxx::result r = w.exec_params(
          "UPDATE instances SET task_state = $3, updated_at = now() WHERE uuid = $1::uuid AND "
          "task_state IS NOT DISTINCT FROM $2",
          uuid, expected, desired);
      if (r.affected_rows() == 1) return absl::OkStatus();
      pqxx::result cur =
          w.exec_params("SELECT task_state FROM instances WHERE uuid = $1::uuid", uuid);
      if (cur.empty()) return absl::NotFoundError(absl::StrCat("instance ", uuid, " is unknown"));
      return absl::AbortedError(absl::StrCat("instance ", uuid, " task state is '", Str(cur[0][0]),
                                             "', expected '", expected.value_or(""),
                                             "': a concurrent change won; re-read and retry"));
    });
  }

 private:
  PgPool* pool_;
};

// ---- migrations ---------------------------------------------------------------------------

namespace {
// The migration columns read from `source` (the table, or a data-modifying CTE's RETURNING *).
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
  m.step = Str(r["step"]);
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

// Events travel as one JSON array parameter, so that a state change and its events are one
// statement (see EventsInsertFrom). PostgreSQL's text cannot hold NUL: it becomes U+FFFD, as
// invalid UTF-8 does.
std::string EventsJson(const std::vector<MigrationEvent>& events) {
  nlohmann::json a = nlohmann::json::array();
  auto text = [](std::string v) {
    size_t at;
    while ((at = v.find('\0')) != std::string::npos) v.replace(at, 1, "\xEF\xBF\xBD");
    return v;
  };
  for (const MigrationEvent& e : events) {
    a.push_back({{"step", text(e.step)},
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

// A data-modifying CTE body that inserts the events of JSON parameter `param` (EventsJson) for
// the migration row of CTE `cte` (if it has one), in array order.
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
       e.migration_id, e.step, e.kind, e.outcome, e.status, e.actor, e.detail, ToUs(e.started_at),
       e.finished_at ? std::optional<int64_t>(ToUs(*e.finished_at)) : std::nullopt, e.duration_ms,
       e.host);
}

constexpr char kPageTokenPrefix[] = "m1.";

// ---- metrics: the live figures and the purge's fold share one query ----------------------

// The bucket (its upper bound in ms; -1: +Inf) of the value `v` (ms) among `bounds`: the first
// bound >= v. width_bucket counts the bounds <= its operand, so with v - 1 it counts those < v.
std::string BucketOf(const std::string& v, const std::vector<int64_t>& bounds) {
  const std::string arr = absl::StrCat("'{", absl::StrJoin(bounds, ","), "}'::bigint[]");
  return absl::StrCat("COALESCE((", arr, ")[width_bucket(GREATEST(", v, ", 0) - 1, ", arr,
                      ") + 1], -1)");
}

// Rows (family, label, le_ms, n, s) of every counter and histogram bucket contributed by the
// migration rows of `migs` and the event rows of `events` (FROM items: a subquery or a CTE):
// metric_totals' shape. ReadMetrics adds those not folded yet to metric_totals; the fold and the
// purge add them into it.
std::string MetricRows(const std::string& migs, const std::string& events) {
  return absl::StrCat(
      "SELECT 'ended'::text AS family, status AS label, 0::bigint AS le_ms, count(*) AS n, "
      "0::numeric AS s FROM ",
      migs,
      " m WHERE finished_at IS NOT NULL GROUP BY status "
      "UNION ALL SELECT 'entered_error', '', 0, count(*), 0 FROM ",
      migs,
      " m WHERE error_at IS NOT NULL "
      "UNION ALL SELECT 'bytes_transferred', '', 0, count(*), "
      "COALESCE(sum(GREATEST(bytes_processed, 0)), 0) FROM ",
      migs,
      " m WHERE finished_at IS NOT NULL AND bytes_processed IS NOT NULL "
      "UNION ALL SELECT 'refusals', refused_check, 0, count(*), 0 FROM ",
      migs,
      " m WHERE refused_check IS NOT NULL GROUP BY refused_check "
      // Completed migrations only: a failed transfer's time is not a transfer time, and a
      // hypervisor that reports no downtime (libxl) leaves downtime_ms NULL: no sample.
      "UNION ALL SELECT 'transfer', '', ",
      BucketOf("elapsed_ms", TransferBoundsMs()), ", count(*), sum(GREATEST(elapsed_ms, 0)) FROM ",
      migs,
      " m WHERE status = 'completed' AND elapsed_ms IS NOT NULL GROUP BY 3 "
      "UNION ALL SELECT 'downtime', '', ",
      BucketOf("downtime_ms", DowntimeBoundsMs()),
      ", count(*), sum(GREATEST(downtime_ms, 0)) FROM ", migs,
      " m WHERE status = 'completed' AND downtime_ms IS NOT NULL GROUP BY 3 "
      "UNION ALL SELECT 'step_duration', step, ",
      BucketOf("duration_ms", StepDurationBoundsMs()),
      ", count(*), sum(GREATEST(duration_ms, 0)) FROM ", events,
      " e WHERE kind = 'result' AND duration_ms IS NOT NULL GROUP BY step, 3");
}

// Adds `rows` (MetricRows) into metric_totals.
std::string AddToTotals(const std::string& rows) {
  return absl::StrCat(
      "INSERT INTO metric_totals (family, label, le_ms, count, sum) "
      "SELECT family, label, le_ms, sum(n), sum(s) FROM (",
      rows,
      ") x GROUP BY 1, 2, 3 HAVING sum(n) > 0 ON CONFLICT (family, label, le_ms) DO UPDATE SET "
      "count = metric_totals.count + EXCLUDED.count, sum = metric_totals.sum + EXCLUDED.sum");
}

// metric_totals rows of one histogram family (le_ms -> (count, sum)) as cumulative buckets.
MetricHistogram Cumulative(const std::map<int64_t, std::pair<int64_t, double>>& buckets,
                           const std::vector<int64_t>& bounds) {
  MetricHistogram h;
  for (int64_t b : bounds) {
    int64_t c = 0;
    for (const auto& [le, v] : buckets) c += le >= 0 && le <= b ? v.first : 0;
    h.cumulative.push_back(c);
  }
  for (const auto& [le, v] : buckets) {
    h.count += v.first;
    h.sum_ms += v.second;
  }
  return h;
}
}  // namespace

std::string PageTokenAfter(int64_t id) { return absl::StrCat(kPageTokenPrefix, id); }

class PgMigrationStore : public MigrationStore {
 public:
  explicit PgMigrationStore(PgPool* pool) : pool_(pool) {}

  absl::StatusOr<CreateMigrationResult> CreateMigration(const NewMigration& m) override {
    RETURN_IF_ERROR(CheckUuid(m.instance_uuid, "instance"));
    if (m.request_id) {
      if (m.request_id->empty()) return absl::InvalidArgumentError("request id must not be empty");
      RETURN_IF_ERROR(CheckRequestId("request_id", *m.request_id));
    }
    if (!m.dest_host.empty() && !IsValidHostname(m.dest_host)) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid destination host '", m.dest_host, "'"));
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
    ev.step = "accepted";
    ev.kind = "result";
    ev.outcome = "ok";
    ev.status = "accepted";
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
        "create migration",
        [&](pqxx::transaction_base& w) -> absl::StatusOr<CreateMigrationResult> {
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
                "claim.host, NULLIF($3, ''), NULLIF($3, ''), 'accepted', 'accepted', $4::boolean, "
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
                m.request_id, m.instance_uuid, m.dest_host, m.live, m.block_migration,
                m.options_json, m.memory_claim_mib, m.requested_by, m.owner,
                absl::ToDoubleSeconds(m.lease), EventsJson({ev}), detail_tail, m.evacuation_uuid);
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
      if (existing.instance_uuid != m.instance_uuid)
        return RequestIdReused(*m.request_id, existing);
      return CreateMigrationResult{std::move(existing), false};
    }
    return result;
  }

  absl::StatusOr<MigrationRecord> GetMigration(int64_t id) override {
    return pool_->ReadQuery<MigrationRecord>(
        "get migration", [&](pqxx::transaction_base& w) -> absl::StatusOr<MigrationRecord> {
          return SelectMigration(w, id, false);
        });
  }

  absl::StatusOr<MigrationRecord> GetMigrationByUuid(const std::string& uuid) override {
    RETURN_IF_ERROR(CheckUuid(uuid, "migration id"));
    return pool_->ReadQuery<MigrationRecord>(
        "get migration", [&](pqxx::transaction_base& w) -> absl::StatusOr<MigrationRecord> {
          pqxx::result r = Prep(w, MigrationSelect() + "WHERE m.uuid = $1::uuid", uuid);
          if (r.empty())
            return absl::NotFoundError(absl::StrCat("migration ", uuid, " does not exist"));
          return MigrationFromRow(r[0]);
        });
  }

  absl::StatusOr<MigrationRecord> FindByRequestId(const std::string& request_id) override {
    return pool_->ReadQuery<MigrationRecord>(
        "find migration by request id",
        [&](pqxx::transaction_base& w) -> absl::StatusOr<MigrationRecord> {
          return FindByRequestIdIn(w, request_id, "");
        });
  }

  absl::StatusOr<MigrationPage> ListMigrations(const MigrationFilter& f) override {
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

  absl::StatusOr<std::vector<MigrationRecord>> ListActiveMigrations() override {
    return pool_->ReadQuery<std::vector<MigrationRecord>>(
        "list active migrations",
        [&](pqxx::transaction_base& w) -> absl::StatusOr<std::vector<MigrationRecord>> {
          return MigrationsFromResult(
              Prep(w, MigrationSelect() + "WHERE m." + kActive + " ORDER BY m.id"));
        });
  }

  absl::StatusOr<SlotUse> GetSlotUse(int64_t id, const std::string& source,
                                     const std::string& dest) override {
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
    return pool_->ReadQuery<SlotUse>("read slot use",
                                     [&](pqxx::transaction_base& w) -> absl::StatusOr<SlotUse> {
                                       pqxx::result r = Prep(w, sql, id, source, dest);
                                       SlotUse u;
                                       u.total = r[0][0].as<int>();
                                       u.out_of_source = r[0][1].as<int>();
                                       u.into_dest = r[0][2].as<int>();
                                       u.older_queued = r[0][3].as<bool>();
                                       return u;
                                     });
  }

  absl::StatusOr<MigrationRecord> ApplyTransition(const Transition& t) override {
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
    ev.step = t.event_step.empty() ? t.step : t.event_step;
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
    return pool_->SingleQuery<MigrationRecord>(
        "apply migration transition",
        [&](pqxx::transaction_base& w) -> absl::StatusOr<MigrationRecord> {
          pqxx::result r = Prep(
              w,
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
              t.migration_id, std::string(ToString(t.from)), std::string(ToString(t.to)), t.step,
              t.dest_host, t.memory_claim_mib, t.failure_reason, t.mark_started, terminal, t.owner,
              t.candidates_json, EventsJson(events), t.refused_check);
          if (!r.empty()) return MigrationFromRow(r[0]);
          // Nothing changed: say why.
          pqxx::result cur = Prep(w,
                                  "SELECT status, COALESCE(owner, ''), lease_expires_at > now(), "
                                  "dest_host IS NOT NULL FROM migrations WHERE id = $1",
                                  t.migration_id);
          if (cur.empty()) {
            return absl::NotFoundError(
                absl::StrCat("migration ", t.migration_id, " does not exist"));
          }
          if (Str(cur[0][0]) != ToString(t.from)) {
            return absl::AbortedError(absl::StrCat("migration ", t.migration_id, " is '",
                                                   Str(cur[0][0]), "', not '", ToString(t.from),
                                                   "': another actor moved it"));
          }
          if (Str(cur[0][1]) == t.owner && !cur[0][2].is_null() && cur[0][2].as<bool>() &&
              t.to == MigrationStatus::kCompleted && !t.dest_host && !cur[0][3].as<bool>()) {
            return absl::FailedPreconditionError(absl::StrCat(
                "migration ", t.migration_id, " cannot complete without a destination"));
          }
          return absl::AbortedError(absl::StrCat("migration ", t.migration_id, ": scheduler '",
                                                 t.owner, "' does not hold its lease (owner '",
                                                 Str(cur[0][1]), "')"));
        });
  }

  absl::Status RecordStep(int64_t id, const std::string& owner, MigrationStatus status,
                          const std::string& step, const std::vector<MigrationEvent>& events,
                          const std::optional<std::string>& dest_host,
                          const std::optional<int64_t>& memory_claim_mib) override {
    std::vector<MigrationEvent> evs = events;
    for (MigrationEvent& e : evs) {
      if (e.status.empty()) e.status = ToString(status);
      if (e.actor.empty()) e.actor = owner;
    }
    // One statement: the step (under the lease) and its events.
    return pool_->Single("record migration step", [&](pqxx::transaction_base& w) -> absl::Status {
      pqxx::result r =
          Prep(w,
               "WITH upd AS (UPDATE migrations SET step = $4, updated_at = now(), dest_host = "
               "COALESCE($5, dest_host), memory_claim_mib = COALESCE($6, memory_claim_mib) WHERE "
               "id = $1 AND status = $2 AND owner = $3 AND lease_expires_at > now() RETURNING "
               "id), ev AS (" +
                   EventsInsertFrom("upd", "$7") + ") SELECT count(*) FROM upd",
               id, ToString(status), owner, step, dest_host, memory_claim_mib, EventsJson(evs));
      if (r[0][0].as<int64_t>() == 0) {
        return absl::AbortedError(absl::StrCat(
            "migration ", id, ": step ", step, " not recorded: the migration is no longer '",
            ToString(status), "' under the lease of '", owner, "'"));
      }
      return absl::OkStatus();
    });
  }

  absl::Status AppendEvent(const MigrationEvent& event) override {
    return pool_->Single("append migration event", [&](pqxx::transaction_base& w) -> absl::Status {
      InsertEvent(w, event);
      return absl::OkStatus();
    });
  }

  absl::StatusOr<std::vector<MigrationEvent>> ListEvents(int64_t migration_id) override {
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
            e.step = Str(row["step"]);
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

  absl::Status UpdateProgress(int64_t id, const std::string& owner,
                              const MigrationProgress& p) override {
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

  absl::StatusOr<bool> AcquireLease(int64_t id, const std::string& owner,
                                    absl::Duration ttl) override {
    if (owner.empty()) return absl::InvalidArgumentError("a lease needs an owner");
    return pool_->Query<bool>(
        "acquire migration lease", [&](pqxx::work& w) -> absl::StatusOr<bool> {
          pqxx::result r = w.exec_params(
              "UPDATE migrations SET owner = $2, lease_expires_at = now() + make_interval(secs => "
              "$3) WHERE id = $1 AND " +
                  std::string(kActive) +
                  " AND (owner IS NULL OR owner = $2 OR lease_expires_at IS NULL OR "
                  "lease_expires_at <= now()) RETURNING id",
              id, owner, absl::ToDoubleSeconds(ttl));
          if (!r.empty()) return true;
          pqxx::result cur = w.exec_params("SELECT status FROM migrations WHERE id = $1", id);
          if (cur.empty())
            return absl::NotFoundError(absl::StrCat("migration ", id, " does not exist"));
          if (IsTerminal(ParseMigrationStatus(Str(cur[0][0])).value_or(MigrationStatus::kError))) {
            return absl::FailedPreconditionError(
                absl::StrCat("migration ", id, " is already ", Str(cur[0][0])));
          }
          return false;
        });
  }

  absl::StatusOr<int> RenewLeases(const std::string& owner, absl::Duration ttl) override {
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

  absl::StatusOr<std::vector<MigrationRecord>> ListOrphaned() override {
    return pool_->ReadQuery<std::vector<MigrationRecord>>(
        "list orphaned migrations",
        [&](pqxx::transaction_base& w) -> absl::StatusOr<std::vector<MigrationRecord>> {
          return MigrationsFromResult(
              Prep(w, MigrationSelect() + "WHERE m." + kActive +
                          " AND (m.owner IS NULL OR m.lease_expires_at IS NULL OR "
                          "m.lease_expires_at <= now()) ORDER BY m.id"));
        });
  }

  absl::StatusOr<MigrationRecord> RequestAbort(int64_t id, const std::string& by,
                                               const std::string& reason) override {
    return RecordRequest(id, by, "aborted_by", "abort_requested_at", "abort requested by ", reason);
  }

  absl::StatusOr<MigrationRecord> RequestForceComplete(int64_t id, const std::string& by) override {
    return RecordRequest(id, by, "force_complete_requested_by", "force_complete_requested_at",
                         "force-complete requested by ");
  }

  absl::StatusOr<MigrationRecord> ResolveError(int64_t id, MigrationStatus to,
                                               const std::string& host,
                                               const std::string& failure_reason,
                                               const MigrationEvent& event) override {
    if (to != MigrationStatus::kCompleted && to != MigrationStatus::kFailed) {
      return absl::InvalidArgumentError(absl::StrCat("migration ", id,
                                                     ": an error resolves to "
                                                     "completed or failed, not '",
                                                     ToString(to), "'"));
    }
    MigrationEvent ev = event;
    ev.status = ToString(to);
    if (ev.step.empty()) ev.step = "resolve";
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

  absl::StatusOr<MigrationMetrics> ReadMetrics(absl::Duration service_down_time) override {
    // One statement, no write and no lock: one snapshot of the rows not folded, of metric_totals
    // and of the fold's mark, so a fold or a purge committing during the read is counted once
    // (as rows or as totals). Reads the active and recently finished migrations (partial index)
    // and the events of the last minutes (primary key range), not the whole history, as long as
    // FoldMetrics runs (the scheduler's periodic work).
    static const std::string sql = absl::StrCat(
        "SELECT family, label, le_ms, sum(n)::bigint, sum(s)::float8 FROM (",
        MetricRows("(SELECT * FROM migrations WHERE NOT metrics_folded)",
                   "(SELECT * FROM migration_events WHERE id > "
                   "(SELECT events_through FROM metric_fold))"),
        " UNION ALL SELECT 'in_flight', status, 0, count(*), 0 FROM migrations WHERE ", kActive,
        " GROUP BY status UNION ALL SELECT family, label, le_ms, count, sum FROM metric_totals "
        // Hosts by liveness (HostRecord::up's rule) and disabled ones.
        "UNION ALL SELECT 'hosts', CASE WHEN COALESCE(last_report_at > now() - "
        "make_interval(secs => $1), false) THEN 'up' ELSE 'down' END, 0, count(*), 0 FROM hosts "
        "GROUP BY 2 UNION ALL SELECT 'hosts_disabled', '', 0, count(*), 0 FROM hosts "
        "WHERE NOT enabled) x GROUP BY 1, 2, 3");
    return pool_->ReadQuery<MigrationMetrics>(
        "read metrics", [&](pqxx::transaction_base& w) -> absl::StatusOr<MigrationMetrics> {
          MigrationMetrics out;
          std::map<std::string, std::map<int64_t, std::pair<int64_t, double>>> steps;
          std::map<int64_t, std::pair<int64_t, double>> transfer, downtime;
          for (const auto& row : w.exec_params(sql, absl::ToDoubleSeconds(service_down_time))) {
            const std::string family = Str(row[0]), label = Str(row[1]);
            const int64_t le = row[2].as<int64_t>(), n = row[3].as<int64_t>();
            const double sum = row[4].as<double>();
            if (family == "ended") {
              out.ended[label] += n;
            } else if (family == "entered_error") {
              out.entered_error += n;
            } else if (family == "bytes_transferred") {
              out.bytes_transferred += static_cast<int64_t>(sum);
            } else if (family == "refusals") {
              out.refusals[label] += n;
            } else if (family == "in_flight") {
              out.in_flight[label] += n;
            } else if (family == "hosts") {
              out.hosts[label] += n;
            } else if (family == "hosts_disabled") {
              out.hosts_disabled += n;
            } else if (family == "step_duration") {
              steps[label][le] = {n, sum};
            } else if (family == "transfer") {
              transfer[le] = {n, sum};
            } else if (family == "downtime") {
              downtime[le] = {n, sum};
            }
          }
          for (const auto& [step, b] : steps) {
            out.step_durations[step] = Cumulative(b, StepDurationBoundsMs());
          }
          out.transfer = Cumulative(transfer, TransferBoundsMs());
          out.downtime = Cumulative(downtime, DowntimeBoundsMs());
          return out;
        });
  }

  absl::StatusOr<int64_t> MemoryClaimedOn(const std::string& host) override {
    return pool_->ReadQuery<
        int64_t>("sum memory claims", [&](pqxx::transaction_base& w) -> absl::StatusOr<int64_t> {
      pqxx::result r = w.exec_params(
          "SELECT COALESCE(sum(memory_claim_mib), 0)::bigint FROM migrations WHERE dest_host = $1 "
          "AND " +
              std::string(kActive),
          host);
      return r[0][0].as<int64_t>();
    });
  }

  absl::StatusOr<int64_t> PurgeFinished(absl::Time before) override {
    // Under the fold's lock (taken first, so the statement's snapshot sees every fold before
    // it): the delete and the fold of what the deleted rows and their events (which the cascade
    // removes) contributed and no fold folded yet share one statement, so the counters read by
    // ReadMetrics never go down. Evacuation items keep their outcome; their migration link is
    // cleared (SET NULL).
    static const std::string sql = absl::StrCat(
        "WITH gone AS (DELETE FROM migrations WHERE finished_at IS NOT NULL AND finished_at < "
        "to_timestamp($1::double precision / 1000000) RETURNING *), "
        "fold AS (",
        AddToTotals(MetricRows("(SELECT * FROM gone WHERE NOT metrics_folded)",
                               "(SELECT * FROM migration_events WHERE migration_id IN "
                               "(SELECT id FROM gone) AND id > (SELECT events_through FROM "
                               "metric_fold))")),
        ") SELECT count(*) FROM gone");
    return pool_->Query<int64_t>("purge finished migrations",
                                 [&](pqxx::work& w) -> absl::StatusOr<int64_t> {
                                   w.exec("SELECT 1 FROM metric_fold FOR UPDATE");
                                   pqxx::result r = w.exec_params(sql, ToUs(before));
                                   return r[0][0].as<int64_t>();
                                 });
  }

  // Folds the finished migrations not folded yet and the events up to the newest one created
  // more than 5 minutes ago (schema 0008_metric_fold.sql), under the fold's row lock; the
  // statement runs after the lock is held, so its snapshot sees every earlier fold and purge.
  // When another caller holds the lock (folding or purging), returns 0 at once.
  absl::StatusOr<int64_t> FoldMetrics() override {
    static const std::string sql = absl::StrCat(
        "WITH upto AS (SELECT COALESCE((SELECT max(id) FROM migration_events WHERE id > "
        "(SELECT events_through FROM metric_fold) AND created_at < now() - interval '5 minutes'), "
        "(SELECT events_through FROM metric_fold)) AS id), "
        "done AS (UPDATE migrations SET metrics_folded = true WHERE NOT metrics_folded AND "
        "finished_at IS NOT NULL RETURNING *), "
        "fold AS (",
        AddToTotals(MetricRows("done",
                               "(SELECT * FROM migration_events WHERE id > (SELECT events_through "
                               "FROM metric_fold) AND id <= (SELECT id FROM upto))")),
        "), mark AS (UPDATE metric_fold SET events_through = (SELECT id FROM upto) "
        "WHERE events_through <> (SELECT id FROM upto)) "
        "SELECT count(*) FROM done");
    return pool_->Query<int64_t>("fold metrics", [&](pqxx::work& w) -> absl::StatusOr<int64_t> {
      pqxx::result lock = w.exec("SELECT 1 FROM metric_fold FOR UPDATE SKIP LOCKED");
      if (lock.empty()) return 0;
      return w.exec(sql)[0][0].as<int64_t>();
    });
  }

 private:
  absl::StatusOr<MigrationRecord> FindByRequestIdIn(pqxx::transaction_base& w,
                                                    const std::string& request_id,
                                                    const std::string& instance_uuid) {
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

  static absl::Status RequestIdReused(const std::string& request_id, const MigrationRecord& m) {
    return absl::InvalidArgumentError(absl::StrCat(
        "request id '", request_id, "' was already used for migration ", m.id, " of instance ",
        m.instance_uuid, ": use a new request id for a different request"));
  }

  absl::StatusOr<MigrationRecord> FindByRequestIdOf(const std::string& request_id,
                                                    const std::string& instance_uuid) {
    return pool_->ReadQuery<MigrationRecord>(
        "find migration by request id",
        [&](pqxx::transaction_base& w) -> absl::StatusOr<MigrationRecord> {
          return FindByRequestIdIn(w, request_id, instance_uuid);
        });
  }

  // Why the claim of `uuid` (for a migration to `dest`, "" if the scheduler chooses, for
  // evacuation `evacuation_uuid` if set) failed.
  absl::Status DiagnoseClaim(pqxx::transaction_base& w, const std::string& uuid,
                             const std::string& dest,
                             const std::optional<std::string>& evacuation_uuid) {
    if (evacuation_uuid) {
      pqxx::result e = w.exec_params(
          "SELECT status, cancel_requested_at IS NOT NULL FROM evacuations WHERE uuid = $1::uuid",
          *evacuation_uuid);
      if (e.empty()) {
        return absl::NotFoundError(
            absl::StrCat("evacuation ", *evacuation_uuid, " does not exist"));
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
  absl::StatusOr<MigrationRecord> RecordRequest(int64_t id, const std::string& by,
                                                const char* by_col, const char* at_col,
                                                const char* what, const std::string& reason = "") {
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
          ev.step = std::string(by_col) == "aborted_by" ? "abort" : "force_complete";
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

  PgPool* pool_;
};

// ---- evacuations --------------------------------------------------------------------------

class PgEvacuationStore : public EvacuationStore {
 public:
  explicit PgEvacuationStore(PgPool* pool) : pool_(pool) {}

  absl::StatusOr<EvacuationRecord> CreateEvacuation(const NewEvacuation& e) override {
    if (e.request_id) {
      if (e.request_id->empty()) return absl::InvalidArgumentError("request id must not be empty");
      RETURN_IF_ERROR(CheckRequestId("request_id", *e.request_id));
    }
    if (e.max_parallel < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("max parallel must be at least 1, got ", e.max_parallel));
    }
    if (e.requested_by.empty())
      return absl::InvalidArgumentError("an evacuation needs its requester");
    if (!e.destination.empty() && !IsValidHostname(e.destination)) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid destination host '", e.destination, "'"));
    }
    RETURN_IF_ERROR(CheckJsonObject(e.options_json, "evacuation options"));
    for (const auto& u : e.instance_uuids) RETURN_IF_ERROR(CheckUuid(u, "instance"));
    auto id =
        pool_->Query<int64_t>("create evacuation", [&](pqxx::work& w) -> absl::StatusOr<int64_t> {
          pqxx::result h = w.exec_params("SELECT 1 FROM hosts WHERE hostname = $1", e.host);
          if (h.empty()) return absl::NotFoundError(absl::StrCat("host '", e.host, "' is unknown"));
          pqxx::result r;
          try {
            pqxx::subtransaction sub(w, "insert evacuation");
            // Created owned (the lease on the database's clock), so that no other scheduler
            // takes it over before its owner starts driving it.
            r = sub.exec_params(
                "INSERT INTO evacuations (host, status, max_parallel, requested_by, reason, "
                "request_id, destination, options, owner, lease_expires_at) VALUES ($1, "
                "'running', $2, $3, $4, $5, NULLIF($6, ''), $7::jsonb, NULLIF($8, ''), CASE WHEN "
                "$8 = '' THEN NULL ELSE now() + make_interval(secs => $9) END) RETURNING id",
                e.host, e.max_parallel, e.requested_by, e.reason, e.request_id, e.destination,
                e.options_json, e.owner, absl::ToDoubleSeconds(e.lease));
            sub.commit();
          } catch (const pqxx::unique_violation&) {
            return absl::AlreadyExistsError(absl::StrCat("an evacuation with request id '",
                                                         e.request_id.value_or(""), "' exists"));
          }
          const int64_t id = r[0][0].as<int64_t>();
          // The plan keeps each instance's name at planning time.
          for (const auto& u : e.instance_uuids) {
            w.exec_params(
                "INSERT INTO evacuation_items (evacuation_id, instance_uuid, instance_name) "
                "SELECT $1, $2::uuid, COALESCE((SELECT name FROM instances WHERE uuid = "
                "$2::uuid), '')",
                id, u);
          }
          return id;
        });
    if (!id.ok()) return id.status();
    return GetEvacuation(*id);
  }

  absl::StatusOr<EvacuationRecord> GetEvacuation(int64_t id) override {
    return pool_->ReadQuery<EvacuationRecord>(
        "get evacuation", [&](pqxx::transaction_base& w) -> absl::StatusOr<EvacuationRecord> {
          pqxx::result r = w.exec_params(EvacuationSelect() + "WHERE id = $1", id);
          if (r.empty()) {
            return absl::NotFoundError(absl::StrCat("evacuation ", id, " does not exist"));
          }
          return WithItems(w, EvacuationFromRow(r[0]));
        });
  }

  absl::StatusOr<EvacuationRecord> GetEvacuationByUuid(const std::string& uuid) override {
    RETURN_IF_ERROR(CheckUuid(uuid, "evacuation id"));
    return pool_->ReadQuery<EvacuationRecord>(
        "get evacuation", [&](pqxx::transaction_base& w) -> absl::StatusOr<EvacuationRecord> {
          pqxx::result r = w.exec_params(EvacuationSelect() + "WHERE uuid = $1::uuid", uuid);
          if (r.empty()) {
            return absl::NotFoundError(absl::StrCat("evacuation ", uuid, " does not exist"));
          }
          return WithItems(w, EvacuationFromRow(r[0]));
        });
  }

  absl::StatusOr<EvacuationRecord> FindEvacuationByRequestId(
      const std::string& request_id) override {
    auto id = pool_->ReadQuery<int64_t>(
        "find evacuation by request id", [&](pqxx::transaction_base& w) -> absl::StatusOr<int64_t> {
          pqxx::result r =
              w.exec_params("SELECT id FROM evacuations WHERE request_id = $1", request_id);
          if (r.empty()) {
            return absl::NotFoundError(
                absl::StrCat("no evacuation has request id '", request_id, "'"));
          }
          return r[0][0].as<int64_t>();
        });
    if (!id.ok()) return id.status();
    return GetEvacuation(*id);
  }

  absl::StatusOr<EvacuationPage> ListEvacuations(const EvacuationFilter& f) override {
    if (f.limit < 1 || f.limit > 1000) {
      return absl::InvalidArgumentError(absl::StrCat("page size must be 1 to 1000, got ", f.limit));
    }
    int64_t before = 0;  // the last id of the previous page; 0: first page
    if (!f.page_token.empty()) {
      const std::string id = f.page_token.substr(
          std::min(f.page_token.size(), sizeof(kEvacuationPageTokenPrefix) - 1));
      if (f.page_token.rfind(kEvacuationPageTokenPrefix, 0) != 0 ||
          !absl::SimpleAtoi(id, &before) || before <= 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "page token '", f.page_token,
            "' is not one this server issued: pass the next_page_token of the previous page"));
      }
    }
    return pool_->ReadQuery<EvacuationPage>(
        "list evacuations", [&](pqxx::transaction_base& w) -> absl::StatusOr<EvacuationPage> {
          // The status as the API shows it (ToProtoEvacuation): a running evacuation with a
          // cancel request is cancelling; any other ending is completed_with_errors.
          pqxx::result r = w.exec_params(
              EvacuationSelect() +
                  "WHERE ($1 = '' OR host = $1) AND (cardinality($2::text[]) = 0 OR CASE WHEN "
                  "status = 'running' AND cancel_requested_at IS NOT NULL THEN 'cancelling' WHEN "
                  "status IN ('running', 'completed', 'cancelled') THEN status ELSE "
                  "'completed_with_errors' END = ANY($2::text[])) AND ($3 = 0 OR id < $3) ORDER "
                  "BY id DESC LIMIT $4",
              f.host, TextArray(f.statuses), before, f.limit + 1);
          EvacuationPage page;
          for (const auto& row : r) {
            if (static_cast<int>(page.evacuations.size()) == f.limit) {
              page.next_page_token =
                  absl::StrCat(kEvacuationPageTokenPrefix, page.evacuations.back().id);
              break;
            }
            page.evacuations.push_back(EvacuationFromRow(row));
          }
          return page;
        });
  }

  absl::Status UpdateEvacuationItem(int64_t evacuation_id, const std::string& owner,
                                    const EvacuationItem& item) override {
    if (owner.empty())
      return absl::InvalidArgumentError("an evacuation item write needs its owner");
    return pool_->Run("update evacuation item", [&](pqxx::work& w) -> absl::Status {
      // The evacuation's row first, under the owner's live lease: it stays locked until the
      // commit, so a takeover waits for this write and then sees the lease renewed or not.
      pqxx::result owned = w.exec_params(
          "UPDATE evacuations SET updated_at = now() WHERE id = $1 AND status = 'running' AND "
          "owner = $2 AND lease_expires_at > now() RETURNING id",
          evacuation_id, owner);
      if (owned.empty()) return WhyNotOwned(w, evacuation_id, owner);
      pqxx::result r = w.exec_params(
          "UPDATE evacuation_items SET migration_id = COALESCE($3, migration_id), outcome = $4, "
          "reason = $5, updated_at = now() WHERE evacuation_id = $1 AND instance_uuid = $2::uuid "
          "AND outcome <> 'cancelled'",
          evacuation_id, item.instance_uuid, item.migration_id, item.outcome, item.reason);
      if (r.affected_rows() == 0) {
        pqxx::result cancelled = w.exec_params(
            "SELECT 1 FROM evacuation_items WHERE evacuation_id = $1 AND instance_uuid = $2::uuid",
            evacuation_id, item.instance_uuid);
        if (!cancelled.empty()) {
          return absl::FailedPreconditionError(
              absl::StrCat("evacuation ", evacuation_id, ": instance ", item.instance_uuid,
                           " was cancelled (the evacuation was cancelled before its turn)"));
        }
        return absl::NotFoundError(
            absl::StrCat("evacuation ", evacuation_id, " has no instance ", item.instance_uuid));
      }
      return absl::OkStatus();
    });
  }

  absl::Status FinishEvacuation(int64_t id, const std::string& owner,
                                const std::string& status) override {
    if (status != "completed" && status != "failed" && status != "cancelled") {
      return absl::InvalidArgumentError(absl::StrCat(
          "an evacuation finishes as completed, failed or cancelled, not '", status, "'"));
    }
    if (owner.empty()) return absl::InvalidArgumentError("finishing an evacuation needs its owner");
    return pool_->Run("finish evacuation", [&](pqxx::work& w) -> absl::Status {
      pqxx::result r = w.exec_params(
          "UPDATE evacuations SET status = $2, finished_at = now(), updated_at = now(), owner = "
          "NULL, lease_expires_at = NULL WHERE id = $1 AND status = 'running' AND owner = $3 AND "
          "lease_expires_at > now()",
          id, status, owner);
      if (r.affected_rows() == 0) return WhyNotOwned(w, id, owner);
      return absl::OkStatus();
    });
  }

  absl::StatusOr<EvacuationRecord> CancelEvacuation(int64_t id, const std::string& by,
                                                    const std::string& reason) override {
    if (by.empty()) return absl::InvalidArgumentError("a cancel needs the caller's identity");
    const std::string item_reason =
        absl::StrCat("evacuation cancelled by ", by, reason.empty() ? "" : ": ", reason);
    absl::Status done = pool_->Run("cancel evacuation", [&](pqxx::work& w) -> absl::Status {
      // The row first: the owner's item writes and CreateMigration's check of an evacuation's
      // migration (a share lock) wait for this, or this for them.
      pqxx::result cur = w.exec_params(
          "SELECT status, cancel_requested_at IS NOT NULL, uuid::text FROM evacuations WHERE id "
          "= $1 FOR UPDATE",
          id);
      if (cur.empty()) {
        return absl::NotFoundError(absl::StrCat("evacuation ", id, " does not exist"));
      }
      if (cur[0][1].as<bool>()) return absl::OkStatus();  // cancelled before: as it is
      if (Str(cur[0][0]) != "running") {
        return absl::FailedPreconditionError(absl::StrCat("evacuation ", id, " already finished (",
                                                          Str(cur[0][0]),
                                                          "): there is nothing to cancel"));
      }
      const std::string uuid = Str(cur[0][2]);
      // The clock at the cancel (after the lock), not the transaction's start: every migration
      // of the evacuation was created before it.
      w.exec_params(
          "UPDATE evacuations SET cancel_requested_at = clock_timestamp(), cancelled_by = $2, "
          "cancel_reason = $3, updated_at = now() WHERE id = $1",
          id, by, reason);
      // An item whose migration was created but not recorded yet (its driver is between the
      // two writes, or died there) is in flight, not cancelled.
      w.exec_params(
          "UPDATE evacuation_items it SET outcome = 'migrating', migration_id = m.id, updated_at "
          "= now() FROM migrations m WHERE it.evacuation_id = $1 AND it.outcome = 'pending' AND "
          "m.evacuation_uuid = $2::uuid AND m.instance_uuid = it.instance_uuid",
          id, uuid);
      w.exec_params(
          "UPDATE evacuation_items SET outcome = 'cancelled', reason = $2, updated_at = now() "
          "WHERE evacuation_id = $1 AND outcome = 'pending'",
          id, item_reason);
      // Nothing in flight: cancelled now (else its owner finishes it when the last one ends).
      w.exec_params(absl::StrCat("UPDATE evacuations SET status = 'cancelled', finished_at = "
                                 "clock_timestamp(), updated_at = now(), owner = NULL, "
                                 "lease_expires_at = NULL WHERE id = $1 AND NOT EXISTS (SELECT 1 "
                                 "FROM migrations WHERE evacuation_uuid = $2::uuid AND ",
                                 kActive, ")"),
                    id, uuid);
      return absl::OkStatus();
    });
    if (!done.ok()) return done;
    return GetEvacuation(id);
  }

  absl::StatusOr<bool> AcquireEvacuationLease(int64_t id, const std::string& owner,
                                              absl::Duration ttl) override {
    if (owner.empty()) return absl::InvalidArgumentError("a lease needs an owner");
    return pool_->Query<bool>(
        "acquire evacuation lease", [&](pqxx::work& w) -> absl::StatusOr<bool> {
          // Two callers at once: the second waits for the first's row lock, then finds the
          // lease live and another owner's (READ COMMITTED re-checks the row it waited for).
          pqxx::result r = w.exec_params(
              "UPDATE evacuations SET owner = $2, lease_expires_at = now() + make_interval(secs "
              "=> $3) WHERE id = $1 AND status = 'running' AND (owner IS NULL OR owner = $2 OR "
              "lease_expires_at IS NULL OR lease_expires_at <= now()) RETURNING id",
              id, owner, absl::ToDoubleSeconds(ttl));
          if (!r.empty()) return true;
          pqxx::result cur = w.exec_params("SELECT status FROM evacuations WHERE id = $1", id);
          if (cur.empty()) {
            return absl::NotFoundError(absl::StrCat("evacuation ", id, " does not exist"));
          }
          if (Str(cur[0][0]) != "running") {
            return absl::FailedPreconditionError(
                absl::StrCat("evacuation ", id, " is already ", Str(cur[0][0])));
          }
          return false;
        });
  }

  absl::StatusOr<int> RenewEvacuationLeases(const std::string& owner, absl::Duration ttl) override {
    return pool_->Query<int>("renew evacuation leases", [&](pqxx::work& w) -> absl::StatusOr<int> {
      pqxx::result r = Prep(w,
                            "UPDATE evacuations SET lease_expires_at = now() + "
                            "make_interval(secs => $2) WHERE owner = $1 AND lease_expires_at "
                            "> now() AND status = 'running'",
                            owner, absl::ToDoubleSeconds(ttl));
      return static_cast<int>(r.affected_rows());
    });
  }

  absl::StatusOr<std::vector<EvacuationRecord>> ListOrphanedEvacuations() override {
    return pool_->ReadQuery<std::vector<EvacuationRecord>>(
        "list orphaned evacuations",
        [&](pqxx::transaction_base& w) -> absl::StatusOr<std::vector<EvacuationRecord>> {
          pqxx::result r = Prep(w, EvacuationSelect() +
                                       "WHERE status = 'running' AND (owner IS NULL OR "
                                       "lease_expires_at IS NULL OR lease_expires_at <= now()) "
                                       "ORDER BY id");
          std::vector<EvacuationRecord> out;
          for (const auto& row : r) out.push_back(EvacuationFromRow(row));
          return out;
        });
  }

 private:
  // Why an owner's compare-and-swap on evacuation `id` changed nothing.
  static absl::Status WhyNotOwned(pqxx::transaction_base& w, int64_t id, const std::string& owner) {
    pqxx::result cur = w.exec_params(
        "SELECT status, COALESCE(owner, ''), COALESCE(lease_expires_at > now(), false) FROM "
        "evacuations WHERE id = $1",
        id);
    if (cur.empty()) return absl::NotFoundError(absl::StrCat("evacuation ", id, " does not exist"));
    if (Str(cur[0][0]) != "running") {
      return absl::FailedPreconditionError(
          absl::StrCat("evacuation ", id, " is already ", Str(cur[0][0])));
    }
    return absl::AbortedError(
        absl::StrCat("evacuation ", id, ": '", owner, "' does not hold its lease (owner '",
                     Str(cur[0][1]), "', lease ", cur[0][2].as<bool>() ? "live" : "expired", ")"));
  }
  static std::string EvacuationSelect() {
    return absl::StrCat(
        "SELECT id, uuid::text AS uuid, host, status, max_parallel, requested_by, reason, "
        "request_id, destination, options::text AS options, owner, ",
        Us("lease_expires_at"), " AS lease_expires_at, ", Us("created_at"), " AS created_at, ",
        Us("updated_at"), " AS updated_at, ", Us("finished_at"), " AS finished_at, ",
        Us("cancel_requested_at"),
        " AS cancel_requested_at, cancelled_by, cancel_reason FROM evacuations ");
  }
  // Reads the items of `e` (with their migrations' status) into it.
  static EvacuationRecord WithItems(pqxx::transaction_base& w, EvacuationRecord e) {
    pqxx::result items = w.exec_params(
        "SELECT it.instance_uuid::text, it.migration_id, it.outcome, it.reason, m.status, "
        "m.failure_reason, it.instance_name, m.uuid::text, m.dest_host FROM evacuation_items it "
        "LEFT JOIN migrations m ON m.id = it.migration_id WHERE it.evacuation_id = $1 ORDER BY "
        "it.instance_uuid",
        e.id);
    for (const auto& row : items) {
      EvacuationItem it;
      it.instance_uuid = Str(row[0]);
      it.migration_id = Opt<int64_t>(row[1]);
      it.outcome = Str(row[2]);
      it.reason = Str(row[3]);
      it.migration_status = Str(row[4]);
      it.migration_failure_reason = Str(row[5]);
      it.instance_name = Str(row[6]);
      it.migration_uuid = Str(row[7]);
      it.migration_dest_host = Str(row[8]);
      e.items.push_back(std::move(it));
    }
    e.active_migrations = w.exec_params(absl::StrCat("SELECT count(*) FROM migrations WHERE "
                                                     "evacuation_uuid = $1::uuid AND ",
                                                     kActive),
                                        e.uuid)[0][0]
                              .as<int>();
    return e;
  }
  static EvacuationRecord EvacuationFromRow(const pqxx::row& r) {
    EvacuationRecord e;
    e.id = r["id"].as<int64_t>();
    e.uuid = Str(r["uuid"]);
    e.host = Str(r["host"]);
    e.status = Str(r["status"]);
    e.max_parallel = r["max_parallel"].as<int32_t>();
    e.requested_by = Str(r["requested_by"]);
    e.reason = Str(r["reason"]);
    e.request_id = Opt<std::string>(r["request_id"]);
    e.destination = Str(r["destination"]);
    e.options_json = Str(r["options"]);
    e.owner = Str(r["owner"]);
    e.lease_expires_at = OptTime(r["lease_expires_at"]);
    e.created_at = FromUs(r["created_at"].as<int64_t>());
    e.updated_at = FromUs(r["updated_at"].as<int64_t>());
    e.finished_at = OptTime(r["finished_at"]);
    e.cancel_requested_at = OptTime(r["cancel_requested_at"]);
    e.cancelled_by = Str(r["cancelled_by"]);
    e.cancel_reason = Str(r["cancel_reason"]);
    return e;
  }

  PgPool* pool_;
};

PgStores::PgStores(PgPool* pool)
    : hosts_(std::make_unique<PgHostStore>(pool)),
      instances_(std::make_unique<PgInstanceStore>(pool)),
      migrations_(std::make_unique<PgMigrationStore>(pool)),
      evacuations_(std::make_unique<PgEvacuationStore>(pool)) {}
PgStores::~PgStores() = default;
HostStore& PgStores::hosts() { return *hosts_; }
InstanceStore& PgStores::instances() { return *instances_; }
MigrationStore& PgStores::migrations() { return *migrations_; }
EvacuationStore& PgStores::evacuations() { return *evacuations_; }

}  // namespace livemig::db
