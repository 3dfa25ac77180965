// Benchmark 3: scale. 10,000 reported hosts, 100,000 instances and 100,000 migrations (100 in
// flight) in PostgreSQL; times the scheduler's automatic destination choice (the orchestrator's
// path: HostStore::ListHosts + RankDestinations), the first page of ListMigrations, and the
// dashboard's queries (its GET /v1/hosts and /v1/migrations calls through ApiCore, and the SQL
// views external dashboards read: v_migrations_in_flight, v_host_summary).
//
// The first host is reported by the real store (ApplyReport of a FakeDriver host's inventory);
// the others are SQL copies of it with other names and amounts of free memory; instances and
// migrations are generated in SQL (the event log stays empty: none of the timed calls read it).
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "bench/bench_util.h"
#include "bench/cloud.h"
#include "compute/agent_core.h"
#include "db/pg_pool.h"
#include "db/pg_stores.h"
#include "db/schema.h"
#include "driver/fake_driver.h"
#include "google/protobuf/util/json_util.h"
#include "scheduler/agent_client.h"
#include "scheduler/api_core.h"
#include "scheduler/convert.h"
#include "scheduler/orchestrator.h"
#include "scheduler/prechecks.h"
#include "testing/run_command.h"

namespace livemig::bench {
namespace {

namespace sv1 = ::livemig::scheduler::v1;

absl::Status Exec(db::PgPool& pool, const std::string& sql) {
  return pool.Run("bench load", [&](pqxx::work& w) {
    w.exec(sql);
    return absl::OkStatus();
  });
}

// A host report from a real FakeDriver host (the inventory an agent would send).
absl::StatusOr<db::HostReport> TemplateReport() {
  const std::string dir = testing::MakeShortTempDir("bench-scale-fake");
  driver::FakeDriver::Options fo;
  fo.state_dir = dir;
  fo.hostname = "host-00000";
  fo.memory_total_mib = 262144;
  fo.memory_reserved_mib = 4096;
  auto d = driver::FakeDriver::Create(fo);
  if (!d.ok()) return d.status();
  agent::AgentCore core({"host-00000", 4}, d->get());
  auto info = core.GetHostInfo();
  if (!info.ok()) return info.status();
  v1::HostInventory inv = info->inventory();
  inv.set_agent_address("10.0.0.1:7000");
  inv.set_report_seq(1);
  inv.mutable_agent_started_at()->set_seconds(1);
  testing::RunCommand("rm -rf " + dir).IgnoreError();
  return sched::ReportFromInventory(inv);
}

struct Timing {
  std::vector<double> round_p50;  // one per round
  std::vector<double> all;
};

// `rounds` rounds of `reps` calls after `warmup`; returns each round's p50 (ms).
absl::StatusOr<Timing> Time(int rounds, int reps, int warmup,
                            const std::function<absl::Status()>& fn) {
  for (int i = 0; i < warmup; ++i) {
    if (auto s = fn(); !s.ok()) return s;
  }
  Timing t;
  for (int r = 0; r < rounds; ++r) {
    std::vector<double> v;
    for (int i = 0; i < reps; ++i) {
      const absl::Time t0 = absl::Now();
      if (auto s = fn(); !s.ok()) return s;
      v.push_back(Ms(absl::Now() - t0));
    }
    t.round_p50.push_back(Median(v));
    t.all.insert(t.all.end(), v.begin(), v.end());
  }
  return t;
}

void Report(const std::string& name, const Timing& t, double target_ms, const std::string& what) {
  const double p50 = Median(t.round_p50);
  Figure(name,
         absl::StrFormat("p50 %.2f ms (rounds %.2f-%.2f; p99 %.2f ms)%s", p50, Min(t.round_p50),
                         Max(t.round_p50), Percentile(t.all, 99), what),
         absl::StrFormat("p50 <= %.0f ms", target_ms), p50 <= target_ms);
}

int Run(int argc, char** argv) {
  Flags flags(argc, argv);
  const int n_hosts = flags.GetInt("hosts", 10000, "reported hosts");
  const int n_migrations =
      flags.GetInt("migrations", 100000, "migrations (and instances) in the tables");
  const int in_flight = flags.GetInt("in-flight", 100, "of those, migrations in flight");
  const int rounds =
      flags.GetInt("rounds", 5, "timed rounds (figures are medians over the rounds)");
  const int reps = flags.GetInt("reps", 20, "timed calls per round");
  const bool explain = flags.Has(
      "explain", "auto_explain for the stores' connections, plans to the log (slows the timings)");
  flags.Done(
      "Benchmark 3: destination choice, ListMigrations, the dashboard's calls and the SQL views "
      "with --hosts hosts and --migrations rows in PostgreSQL.");

  std::cout << MachineLine() << "\n";
  Section(absl::StrFormat(
      "3. Scale: %d reported hosts, %d instances, %d migrations (%d in flight) in PostgreSQL",
      n_hosts, n_migrations, n_migrations, in_flight));
  auto conninfo = NewDatabase();
  if (!conninfo.ok()) {
    std::cerr << conninfo.status() << "\n";
    return 1;
  }
  Note(PgSettingsLine(*conninfo));
  if (explain) {
    // Every statement of the stores' connections logs its plan (server.log, copied to the log).
    pqxx::connection admin(*conninfo);
    pqxx::nontransaction w(admin);
    const std::string db = w.exec1("SELECT current_database()")[0].as<std::string>();
    for (const char* set :
         {"session_preload_libraries = 'auto_explain'", "auto_explain.log_min_duration = '2ms'",
          "auto_explain.log_analyze = on", "auto_explain.log_nested_statements = on"}) {
      w.exec(absl::StrCat("ALTER DATABASE ", db, " SET ", set));
    }
  }
  db::PgPool::Options po;
  po.conninfo = *conninfo;
  po.size = 4;
  auto pool = db::PgPool::Create(po);
  if (!pool.ok() || !db::ApplySchema(**pool).ok()) {
    std::cerr << "database setup failed\n";
    return 1;
  }
  db::PgStores stores(pool->get());
  db::PgPool& p = **pool;

  // ---- load ----
  const absl::Time load0 = absl::Now();
  auto tmpl = TemplateReport();
  if (!tmpl.ok()) {
    std::cerr << tmpl.status() << "\n";
    return 1;
  }
  if (auto r = stores.hosts().ApplyReport(*tmpl); !r.ok()) {
    std::cerr << r.status() << "\n";
    return 1;
  }
  const std::string cols =
      "agent_version, hypervisor_type, hypervisor_version, libvirt_version, cpu_arch, "
      "cpu_model, cpu_features, cpu_xml, memory_total_mib, memory_reserved_mib, network_segments, "
      "shared_storage, instance_path, capabilities, agent_boot_id, report_seq";
  std::vector<std::string> load = {
      absl::StrCat("INSERT INTO hosts (hostname, agent_address, memory_free_mib, enabled, "
                   "disabled_reason, last_report_at, ",
                   cols,
                   ") SELECT format('host-%s', lpad(g::text, 5, '0')), format('10.0.%s.%s:7000', "
                   "g / 250, g % 250), 60000 + (g * 7919) % 190000, g % 100 <> 0, CASE WHEN g % "
                   "100 = 0 THEN 'maintenance' END, now(), ",
                   cols, " FROM hosts t, generate_series(1, ", n_hosts - 1,
                   ") g WHERE t.hostname = 'host-00000'"),
      absl::StrCat("INSERT INTO instances (uuid, name, host, power_state, memory_mib, vcpus, "
                   "last_seen_at) SELECT format('%s-0000-4000-8000-%s', lpad(to_hex(g), 8, '0'), "
                   "lpad(g::text, 12, '0'))::uuid, format('vm-%s', g), format('host-%s', "
                   "lpad((g % ",
                   n_hosts, ")::text, 5, '0')), 'running', 1024, 2, now() FROM generate_series(1, ",
                   n_migrations, ") g"),
      absl::StrCat(
          "INSERT INTO migrations (instance_uuid, source_host, dest_host, requested_dest, status, "
          "step, requested_by, owner, lease_expires_at, memory_claim_mib, created_at, updated_at, "
          "started_at, finished_at, elapsed_ms) SELECT i.uuid, i.host, format('host-%s', "
          "lpad(((g + 1) % ",
          n_hosts, ")::text, 5, '0')), NULL, CASE WHEN g > ", n_migrations - in_flight,
          " THEN 'running' ELSE 'completed' END, CASE WHEN g > ", n_migrations - in_flight,
          " THEN 'live_migration' ELSE 'post_live_migration_at_destination' END, 'bench', CASE "
          "WHEN g > ",
          n_migrations - in_flight, " THEN 'bench-scheduler' END, CASE WHEN g > ",
          n_migrations - in_flight,
          " THEN now() + interval '1 hour' END, 1024, now() - make_interval(secs => ", n_migrations,
          " - g), now(), now() - make_interval(secs => ", n_migrations, " - g), CASE WHEN g > ",
          n_migrations - in_flight, " THEN NULL ELSE now() - make_interval(secs => ", n_migrations,
          " - g) + interval '20 seconds' END, 20000 FROM generate_series(1, ", n_migrations,
          ") g JOIN instances i ON i.uuid = format('%s-0000-4000-8000-%s', lpad(to_hex(g), 8, "
          "'0'), lpad(g::text, 12, '0'))::uuid"),
      absl::StrCat("UPDATE instances SET task_state = 'migrating' WHERE uuid IN (SELECT "
                   "instance_uuid FROM migrations WHERE status = 'running')"),
  };
  for (const auto& sql : load) {
    if (auto s = Exec(p, sql); !s.ok()) {
      std::cerr << "load: " << s << "\n";
      return 1;
    }
  }
  {
    // ANALYZE cannot run in a transaction block.
    pqxx::connection conn(*conninfo);
    pqxx::nontransaction w(conn);
    // The load's 100,000 instance inserts left as many per-host count deltas (schema version 4);
    // a running scheduler folds them after the next host report, within 5 s: do it now.
    const int64_t folded = w.exec1("SELECT fold_host_instance_counts()")[0].as<int64_t>();
    Note(
        absl::StrFormat("folded %d per-host instance-count deltas (as a scheduler does after a "
                        "host report)",
                        folded));
    w.exec("VACUUM ANALYZE");
    auto counts = w.exec1(
        "SELECT (SELECT count(*) FROM hosts), (SELECT count(*) FROM instances), (SELECT "
        "count(*) FROM migrations), (SELECT count(*) FROM migrations WHERE status NOT IN "
        "('completed', 'failed', 'cancelled'))");
    Note(absl::StrFormat(
        "loaded in %.1f s: %d hosts, %d instances, %d migrations (%d in flight); VACUUM ANALYZE "
        "done",
        absl::ToDoubleSeconds(absl::Now() - load0), counts[0].as<int64_t>(),
        counts[1].as<int64_t>(), counts[2].as<int64_t>(), counts[3].as<int64_t>()));
  }
  Note(absl::StrFormat(
      "each figure: the median of %d rounds' p50 (%d calls per round); the scheduler runs with "
      "--service-down-time 3600 so that the hosts reported at load time stay `up` throughout",
      rounds, reps));

  // ---- the scheduler's destination choice ----
  sched::LocalAgentClientFactory no_agents;
  sched::OrchestratorOptions oo;
  oo.scheduler_id = "bench-scale";
  oo.service_down_time = absl::Hours(1);
  sched::Orchestrator orch(oo, &stores.migrations(), &stores.hosts(), &stores.instances(),
                           &no_agents);  // never started: ApiCore reads its options only
  sched::ApiCore api(&stores.migrations(), &stores.hosts(), &stores.instances(),
                     &stores.evacuations(), &orch);
  const std::string inst_uuid = "00000001-0000-4000-8000-000000000001";
  auto inst = stores.instances().GetInstance(inst_uuid);
  if (!inst.ok()) {
    std::cerr << inst.status() << "\n";
    return 1;
  }
  auto src = stores.hosts().GetHost(inst->host, oo.service_down_time);
  if (!src.ok()) {
    std::cerr << src.status() << "\n";
    return 1;
  }
  v1::MigrationOptions options;
  size_t candidates = 0;
  std::string chosen;
  absl::Duration list_time, rank_time;
  // What the orchestrator's Accepted() runs: sched::ChooseDestinations (the database's best
  // candidates, then the full checks on those).
  auto choice = Time(rounds, reps, 3, [&]() -> absl::Status {
    auto ranked =
        sched::ChooseDestinations(stores.hosts(), *inst, *src, options, oo.service_down_time);
    if (!ranked.ok()) return ranked.status();
    candidates = 0;
    for (const auto& hc : *ranked) candidates += hc.passed() ? 1 : 0;
    chosen = ranked->empty() ? "" : (*ranked)[0].host();
    return absl::OkStatus();
  });
  if (!choice.ok()) {
    std::cerr << choice.status() << "\n";
    return 1;
  }
  // The same choice over every host (what CheckMigration's dry run still does), for reference,
  // and whether both choose the same hosts in the same order.
  std::string full_chosen, same = "yes";
  auto full = Time(1, 5, 1, [&]() -> absl::Status {
    const absl::Time t0 = absl::Now();
    auto hosts = stores.hosts().ListHosts(oo.service_down_time);
    if (!hosts.ok()) return hosts.status();
    const absl::Time t1 = absl::Now();
    auto ranked = sched::RankDestinations(*inst, *src, *hosts, options);
    list_time += t1 - t0;
    rank_time += absl::Now() - t1;
    auto fast =
        sched::ChooseDestinations(stores.hosts(), *inst, *src, options, oo.service_down_time);
    if (!fast.ok()) return fast.status();
    for (size_t i = 0; i < fast->size() && i < ranked.size(); ++i) {
      if ((*fast)[i].passed() && (*fast)[i].host() != ranked[i].host()) same = "NO";
    }
    full_chosen = ranked.empty() ? "" : ranked[0].host();
    return absl::OkStatus();
  });
  if (!full.ok()) {
    std::cerr << full.status() << "\n";
    return 1;
  }
  Report(
      "destination choice among the hosts", *choice, 5,
      absl::StrFormat(" (ChooseDestinations: %d candidates checked and passed, best %s; over "
                      "every host: ListHosts %.2f ms + RankDestinations %.2f ms, best %s, "
                      "same order: %s)",
                      candidates, chosen, Ms(list_time) / 6, Ms(rank_time) / 6, full_chosen, same));

  // ---- ListMigrations, first page ----
  auto first_page = Time(rounds, reps, 3, [&]() -> absl::Status {
    sv1::ListMigrationsRequest r;
    auto resp = api.ListMigrations(r);
    if (!resp.ok()) return resp.status();
    if (resp->migrations_size() != 50) return absl::InternalError("short page");
    return absl::OkStatus();
  });
  if (!first_page.ok()) {
    std::cerr << first_page.status() << "\n";
    return 1;
  }
  Report("ListMigrations first page (50, no filter)", *first_page, 20, " (ApiCore)");

  // ---- the dashboard ----
  auto in_flight_page = Time(rounds, reps, 3, [&]() -> absl::Status {
    sv1::ListMigrationsRequest r;
    for (auto s : {v1::MIGRATION_STATUS_ACCEPTED, v1::MIGRATION_STATUS_QUEUED,
                   v1::MIGRATION_STATUS_PREPARING, v1::MIGRATION_STATUS_RUNNING,
                   v1::MIGRATION_STATUS_RUNNING_POSTCOPY, v1::MIGRATION_STATUS_POST_MIGRATING}) {
      r.add_statuses(s);
    }
    r.set_page_size(200);
    auto resp = api.ListMigrations(r);
    if (!resp.ok()) return resp.status();
    return absl::OkStatus();
  });
  auto history_page = Time(rounds, reps, 3, [&]() -> absl::Status {
    sv1::ListMigrationsRequest r;
    for (auto s : {v1::MIGRATION_STATUS_COMPLETED, v1::MIGRATION_STATUS_FAILED,
                   v1::MIGRATION_STATUS_CANCELLED, v1::MIGRATION_STATUS_ERROR}) {
      r.add_statuses(s);
    }
    r.set_page_size(50);
    auto resp = api.ListMigrations(r);
    if (!resp.ok()) return resp.status();
    return absl::OkStatus();
  });
  size_t listed_hosts = 0;
  // The dashboard's GET /v1/hosts: the first page (the API's default, 50 hosts).
  auto list_hosts = Time(rounds, reps, 3, [&]() -> absl::Status {
    auto resp = api.ListHosts({});
    if (!resp.ok()) return resp.status();
    listed_hosts = resp->hosts_size();
    return absl::OkStatus();
  });
  pqxx::connection view_conn(*conninfo);
  size_t view_rows = 0;
  auto view = [&](const std::string& sql) {
    return Time(rounds, reps, 3, [&]() -> absl::Status {
      try {
        pqxx::work w(view_conn);
        pqxx::result r = w.exec(sql);
        view_rows = r.size();
        w.commit();
      } catch (const std::exception& e) {
        return absl::InternalError(e.what());
      }
      return absl::OkStatus();
    });
  };
  auto v_in_flight = view("SELECT * FROM v_migrations_in_flight");
  const size_t in_flight_rows = view_rows;
  auto v_hosts = view("SELECT * FROM v_host_summary");
  const size_t host_rows = view_rows;
  // What a dashboard that pages the view pays, and what the full view costs the server without
  // formatting and sending its 10,000 rows (the rest of the full figure is the answer's size).
  auto v_hosts_page = view("SELECT * FROM v_host_summary ORDER BY hostname LIMIT 50");
  const size_t page_rows = view_rows;
  auto v_hosts_count = view("SELECT count(*) FROM (SELECT * FROM v_host_summary OFFSET 0) v");
  for (auto* t : {&in_flight_page, &history_page, &list_hosts, &v_in_flight, &v_hosts,
                  &v_hosts_page, &v_hosts_count}) {
    if (!t->ok()) {
      std::cerr << t->status() << "\n";
      return 1;
    }
  }
  Report("dashboard: in-flight migrations (200)", *in_flight_page, 20,
         " (ApiCore ListMigrations, the 6 in-flight statuses, page 200)");
  Report("dashboard: history page (50)", *history_page, 20,
         " (ApiCore ListMigrations, the 4 final statuses)");
  Report("dashboard: ListHosts", *list_hosts, 20,
         absl::StrFormat(" (ApiCore, %d hosts returned)", listed_hosts));
  Report("SQL view v_migrations_in_flight", *v_in_flight, 20,
         absl::StrFormat(" (%d rows)", in_flight_rows));
  Report("SQL view v_host_summary", *v_hosts, 20, absl::StrFormat(" (%d rows)", host_rows));
  Report("SQL view v_host_summary, first page", *v_hosts_page, 20,
         absl::StrFormat(" (ORDER BY hostname LIMIT 50: %d rows)", page_rows));
  Figure("diagnostic: v_host_summary computed, not sent",
         absl::StrFormat("p50 %.2f ms (SELECT count(*) over the whole view: the query without "
                         "formatting and sending its rows)",
                         Median(v_hosts_count->round_p50)));
  // ---- diagnostics ----
  {
    // What prechecks' Caps() does for every candidate host, twice (CheckDestination and the
    // Hypervisor() name for its options check): JSON to BackendCapabilities.
    const std::string caps_json = tmpl->capabilities_json;
    std::vector<double> us;
    for (int i = 0; i < 2000; ++i) {
      v1::BackendCapabilities c;
      google::protobuf::util::JsonParseOptions jp;
      jp.ignore_unknown_fields = true;
      const absl::Time t0 = absl::Now();
      (void)google::protobuf::util::JsonStringToMessage(caps_json, &c, jp);
      us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
    }
    Note(absl::StrFormat(
        "diagnostic: one host's capabilities JSON parsed into BackendCapabilities "
        "(google::protobuf::util::JsonStringToMessage, as prechecks.cc's Caps() does twice per "
        "candidate host): median %.1f us -> %.1f ms per choice among %d hosts",
        Median(us), 2 * Median(us) * (n_hosts - 1) / 1000, n_hosts));
    // The views' own cost in the server (EXPLAIN ANALYZE).
    for (const char* v : {"v_migrations_in_flight", "v_host_summary"}) {
      try {
        pqxx::work w(view_conn);
        pqxx::result r = w.exec(absl::StrCat("EXPLAIN (ANALYZE, SUMMARY) SELECT * FROM ", v));
        std::string plan, summary;
        for (const auto& row : r) {
          const std::string line = row[0].as<std::string>();
          absl::StrAppend(&plan, line, "\n");
          const bool jit =
              line.find("Timing:") != std::string::npos && line.find("Total") != std::string::npos;
          if (line.rfind("Planning Time", 0) == 0 || line.rfind("Execution Time", 0) == 0 || jit) {
            absl::StrAppend(&summary, summary.empty() ? "" : ", ",
                            jit ? "JIT " + std::string(absl::StripAsciiWhitespace(line)) : line);
          }
        }
        w.commit();
        Note(absl::StrCat("diagnostic: EXPLAIN ANALYZE SELECT * FROM ", v, ": ", summary,
                          " (plan in the log)"));
        std::cerr << "---- EXPLAIN ANALYZE SELECT * FROM " << v << "\n" << plan;
      } catch (const std::exception& e) {
        Note(absl::StrCat("EXPLAIN failed: ", e.what()));
      }
    }
    if (explain) {
      Note(
          "diagnostic: auto_explain was on (--explain): the timings above include its cost; the "
          "plans of the store's statements are in the log");
      std::cerr << "---- server log (auto_explain)\n"
                << testing::RunCommand(absl::StrCat("cat ", DatabaseServerDir(), "/server.log"))
                       .value_or("(unreadable)");
    }
  }
  PrintSummary("scale");
  StopDatabaseServer();
  return 0;
}

}  // namespace
}  // namespace livemig::bench

int main(int argc, char** argv) { return livemig::bench::Run(argc, argv); }
