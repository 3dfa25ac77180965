// The evacuations and evacuation_items tables: evacuations created, read, paged, owned and
// cancelled.
#include "db/pg_evacuation_store.h"

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "db/pg_rows.h"
#include "db/pg_stores.h"

namespace livemig::db {

namespace {

constexpr char kEvacuationPageTokenPrefix[] = "e1.";

}  // namespace

absl::StatusOr<EvacuationRecord> PgEvacuationStore::CreateEvacuation(const NewEvacuation& e) {
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

absl::StatusOr<EvacuationRecord> PgEvacuationStore::GetEvacuation(int64_t id) {
  return pool_->ReadQuery<EvacuationRecord>(
      "get evacuation", [&](pqxx::transaction_base& w) -> absl::StatusOr<EvacuationRecord> {
        pqxx::result r = w.exec_params(EvacuationSelect() + "WHERE id = $1", id);
        if (r.empty()) {
          return absl::NotFoundError(absl::StrCat("evacuation ", id, " does not exist"));
        }
        return WithItems(w, EvacuationFromRow(r[0]));
      });
}

absl::StatusOr<EvacuationRecord> PgEvacuationStore::GetEvacuationByUuid(const std::string& uuid) {
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

absl::StatusOr<EvacuationRecord> PgEvacuationStore::FindEvacuationByRequestId(
    const std::string& request_id) {
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

absl::StatusOr<EvacuationPage> PgEvacuationStore::ListEvacuations(const EvacuationFilter& f) {
  if (f.limit < 1 || f.limit > 1000) {
    return absl::InvalidArgumentError(absl::StrCat("page size must be 1 to 1000, got ", f.limit));
  }
  int64_t before = 0;  // the last id of the previous page; 0: first page
  if (!f.page_token.empty()) {
    const std::string id =
        f.page_token.substr(std::min(f.page_token.size(), sizeof(kEvacuationPageTokenPrefix) - 1));
    if (f.page_token.rfind(kEvacuationPageTokenPrefix, 0) != 0 || !absl::SimpleAtoi(id, &before) ||
        before <= 0) {
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
        WithItems(w, &page.evacuations);
        return page;
      });
}

absl::Status PgEvacuationStore::UpdateEvacuationItem(int64_t evacuation_id,
                                                     const std::string& owner,
                                                     const EvacuationItem& item) {
  if (owner.empty()) return absl::InvalidArgumentError("an evacuation item write needs its owner");
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

absl::Status PgEvacuationStore::FinishEvacuation(int64_t id, const std::string& owner,
                                                 const std::string& status) {
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

absl::StatusOr<EvacuationRecord> PgEvacuationStore::CancelEvacuation(int64_t id,
                                                                     const std::string& by,
                                                                     const std::string& reason) {
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

absl::StatusOr<bool> PgEvacuationStore::AcquireEvacuationLease(int64_t id, const std::string& owner,
                                                               absl::Duration ttl) {
  if (owner.empty()) return absl::InvalidArgumentError("a lease needs an owner");
  return pool_->Query<bool>("acquire evacuation lease", [&](pqxx::work& w) -> absl::StatusOr<bool> {
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

absl::StatusOr<int> PgEvacuationStore::RenewEvacuationLeases(const std::string& owner,
                                                             absl::Duration ttl) {
  return pool_->Query<int>("renew evacuation leases", [&](pqxx::work& w) -> absl::StatusOr<int> {
    pqxx::result r = Prep(w,
                          "UPDATE evacuations SET lease_expires_at = now() + "
                          "make_interval(secs => $2) WHERE owner = $1 AND lease_expires_at "
                          "> now() AND status = 'running'",
                          owner, absl::ToDoubleSeconds(ttl));
    return static_cast<int>(r.affected_rows());
  });
}

absl::StatusOr<std::vector<EvacuationRecord>> PgEvacuationStore::ListOrphanedEvacuations() {
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

// Why an owner's compare-and-swap on evacuation `id` changed nothing.
absl::Status PgEvacuationStore::WhyNotOwned(pqxx::transaction_base& w, int64_t id,
                                            const std::string& owner) {
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

std::string PgEvacuationStore::EvacuationSelect() {
  return absl::StrCat(
      "SELECT id, uuid::text AS uuid, host, status, max_parallel, requested_by, reason, "
      "request_id, destination, options::text AS options, owner, ",
      Us("lease_expires_at"), " AS lease_expires_at, ", Us("created_at"), " AS created_at, ",
      Us("updated_at"), " AS updated_at, ", Us("finished_at"), " AS finished_at, ",
      Us("cancel_requested_at"),
      " AS cancel_requested_at, cancelled_by, cancel_reason FROM evacuations ");
}

// Reads the items of `e` (with their migrations' status) into it.
EvacuationRecord PgEvacuationStore::WithItems(pqxx::transaction_base& w, EvacuationRecord e) {
  std::vector<EvacuationRecord> one;
  one.push_back(std::move(e));
  WithItems(w, &one);
  return std::move(one.front());
}

// Reads the items of each of `es` (with their migrations' status) and the count of its
// migrations in flight into it: two statements, however many evacuations.
void PgEvacuationStore::WithItems(pqxx::transaction_base& w, std::vector<EvacuationRecord>* es) {
  if (es->empty()) return;
  std::map<int64_t, EvacuationRecord*> by_id;
  std::map<std::string, EvacuationRecord*> by_uuid;
  std::vector<std::string> ids, uuids;
  for (EvacuationRecord& e : *es) {
    by_id[e.id] = &e;
    by_uuid[e.uuid] = &e;
    ids.push_back(absl::StrCat(e.id));
    uuids.push_back(e.uuid);
  }
  pqxx::result items = w.exec_params(
      "SELECT it.evacuation_id, it.instance_uuid::text, it.migration_id, it.outcome, it.reason, "
      "m.status, m.failure_reason, it.instance_name, m.uuid::text, m.dest_host FROM "
      "evacuation_items it LEFT JOIN migrations m ON m.id = it.migration_id WHERE "
      "it.evacuation_id = ANY($1::bigint[]) ORDER BY it.evacuation_id, it.instance_uuid",
      absl::StrCat("{", absl::StrJoin(ids, ","), "}"));
  for (const auto& row : items) {
    EvacuationItem it;
    it.instance_uuid = Str(row[1]);
    it.migration_id = Opt<int64_t>(row[2]);
    it.outcome = Str(row[3]);
    it.reason = Str(row[4]);
    it.migration_status = Str(row[5]);
    it.migration_failure_reason = Str(row[6]);
    it.instance_name = Str(row[7]);
    it.migration_uuid = Str(row[8]);
    it.migration_dest_host = Str(row[9]);
    by_id.at(row[0].as<int64_t>())->items.push_back(std::move(it));
  }
  pqxx::result active =
      w.exec_params(absl::StrCat("SELECT evacuation_uuid::text, count(*) FROM migrations WHERE "
                                 "evacuation_uuid = ANY($1::uuid[]) AND ",
                                 kActive, " GROUP BY evacuation_uuid"),
                    TextArray(uuids));
  for (const auto& row : active) {
    auto it = by_uuid.find(Str(row[0]));
    if (it != by_uuid.end()) it->second->active_migrations = row[1].as<int>();
  }
}

EvacuationRecord PgEvacuationStore::EvacuationFromRow(const pqxx::row& r) {
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

}  // namespace livemig::db
