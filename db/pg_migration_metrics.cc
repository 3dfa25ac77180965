// PgMigrationStore (db/pg_migration_store.h), metrics and history: the live figures, the fold
// into metric_totals, the purge of finished migrations, memory claims.
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "db/pg_migration_store.h"
#include "db/pg_rows.h"

namespace livemig::db {

namespace {

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

absl::StatusOr<MigrationMetrics> PgMigrationStore::ReadMetrics(absl::Duration service_down_time) {
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

absl::StatusOr<int64_t> PgMigrationStore::MemoryClaimedOn(const std::string& host) {
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

absl::StatusOr<int64_t> PgMigrationStore::PurgeFinished(absl::Time before) {
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
absl::StatusOr<int64_t> PgMigrationStore::FoldMetrics() {
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

}  // namespace livemig::db
