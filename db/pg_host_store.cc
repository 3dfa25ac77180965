// The hosts table: reports applied, hosts read with their counts, destination candidates.
#include "db/pg_host_store.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "db/pg_rows.h"
#include "db/pg_stores.h"

namespace livemig::db {

namespace {

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

}  // namespace

absl::StatusOr<ReportResult> PgHostStore::ApplyReport(const HostReport& p) {
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
        if (!cur.empty() && Str(cur[0][0]) == p.agent_boot_id && cur[0][1].as<int64_t>() >= p.seq) {
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
void PgHostStore::MaybeFoldInstanceCounts() {
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

absl::StatusOr<HostRecord> PgHostStore::GetHost(const std::string& hostname,
                                                absl::Duration service_down_time) {
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

absl::StatusOr<std::vector<HostRecord>> PgHostStore::ListHosts(absl::Duration service_down_time) {
  return pool_->ReadQuery<std::vector<HostRecord>>(
      "list hosts", [&](pqxx::transaction_base& w) -> absl::StatusOr<std::vector<HostRecord>> {
        pqxx::result r =
            w.exec_params(HostSelect() + "ORDER BY h.hostname", Secs(service_down_time));
        std::vector<HostRecord> out;
        for (const auto& row : r) out.push_back(HostFromRow(row));
        return out;
      });
}

absl::StatusOr<HostPage> PgHostStore::ListHostsPage(const HostFilter& f,
                                                    absl::Duration service_down_time) {
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
  return pool_->ReadQuery<HostPage>(
      "list hosts", [&](pqxx::transaction_base& w) -> absl::StatusOr<HostPage> {
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
absl::StatusOr<std::vector<HostRecord>> PgHostStore::ListDestinationCandidates(
    const DestinationQuery& q, absl::Duration service_down_time) {
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
                "hh.hostname <> $2 AND (NOT $9::boolean OR hh.enabled) AND (NOT $10::boolean "
                "OR hh.last_report_at > now() - make_interval(secs => $1)) AND ($3::text IS "
                "NULL OR hh.hypervisor_type = $3) AND ($4::bigint IS NULL OR "
                "hh.hypervisor_version >= $4) AND ($5::text IS NULL OR hh.cpu_arch = $5) AND "
                "($6::bigint IS NULL OR hh.memory_free_mib - hh.memory_reserved_mib >= $6) "
                "ORDER BY hh.memory_free_mib - "
                "hh.memory_reserved_mib DESC, hh.hostname LIMIT $7::bigint + $8::bigint) t "
                "LEFT JOIN ",
                busy,
                " b ON b.host = t.hostname WHERE ($6::bigint IS NULL OR t.raw - "
                "COALESCE(b.claimed, 0) >= "
                "$6) ORDER BY "
                "t.raw - COALESCE(b.claimed, 0) DESC, COALESCE(b.n, 0), t.hostname LIMIT $7) "
                "top JOIN hosts ON hosts.hostname = top.hostname)")) +
                "ORDER BY h.memory_free_mib - h.memory_reserved_mib - COALESCE(c.claimed, 0) "
                "DESC, c.mig_in + o.mig_out, h.hostname",
            Secs(service_down_time), q.source, q.hypervisor_type, q.min_hypervisor_version,
            q.cpu_arch, q.memory_mib, limit, k, q.only_enabled, q.only_up);
        std::vector<HostRecord> out;
        out.reserve(r.size());
        for (const auto& row : r) out.push_back(HostFromRow(row));
        return out;
      });
}

absl::StatusOr<HostRecord> PgHostStore::SetHostEnabled(const std::string& hostname, bool enabled,
                                                       const std::string& reason,
                                                       const std::string& by) {
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

}  // namespace livemig::db
