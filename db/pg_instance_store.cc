// The instances table: instances read and paged, their task state compared-and-set.
#include "db/pg_instance_store.h"

#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "db/pg_rows.h"
#include "db/pg_stores.h"

namespace livemig::db {

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

absl::StatusOr<InstanceRecord> PgInstanceStore::GetInstance(const std::string& uuid) {
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

absl::StatusOr<std::vector<InstanceRecord>> PgInstanceStore::ListInstances(const std::string& host,
                                                                           int limit) {
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

absl::StatusOr<InstancePage> PgInstanceStore::ListInstancesPage(const InstanceFilter& f) {
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

absl::Status PgInstanceStore::CompareAndSetTaskState(const std::string& uuid,
                                                     const std::optional<std::string>& expected,
                                                     const std::optional<std::string>& desired) {
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

}  // namespace livemig::db
