// Benchmark 1: the control plane's overhead per migration against its irreducible parts.
//
// One instance migrates back and forth between two fake hosts whose transfers take no time, one
// migration at a time: the end-to-end time (LiveMigrate over gRPC until `completed` is committed
// and then read back through GetMigration over gRPC) is set beside what the migration cannot
// avoid: the write transactions it needs × one commit's latency + the RPCs it needs × one RPC
// round trip, both measured in the same run (interleaved with the migrations). Counts come from
// a separate counting pass: the store and agent-client decorators (one store call = one
// transaction), cross-checked with pg_stat_database.xact_commit and the transaction-id counter.
//
// Run twice: with the product's default orchestrator intervals, and with tuned ones.
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "bench/bench_util.h"
#include "bench/cloud.h"
#include "testing/run_command.h"

namespace livemig::bench {
namespace {

constexpr char kUuid[] = "b0b0b0b0-1111-4222-8333-444455556666";
constexpr int kApiRpcsPerMigration = 2;  // LiveMigrate + the GetMigration that observes it

struct Config {
  std::string name;
  sched::OrchestratorOptions orch;
};

struct Counts {
  double writes = 0, reads = 0;                // store transactions per migration (client side)
  double xid_writes = 0;                       // write transactions per migration (server side)
  double events = 0;                           // migration_events rows per migration
  double agent_rpcs = 0;                       // agent RPCs per migration
  double db_ms = 0, write_ms = 0, rpc_ms = 0;  // time spent in them per migration
  double e2e_ms = 0;                           // mean end-to-end in the counting pass
  Tallies by_call;                             // per migration ×N (background removed)
  std::string cpu;                             // CPU per migration in the counting pass
  int n = 0;
};

class Bench {
 public:
  Bench(BenchCloud* c) : c_(c) {}

  // One migration to the other host; its end-to-end time.
  absl::StatusOr<absl::Duration> One() {
    // The agents' periodic reports wait while a migration runs (see README.md: a report taken
    // before a migration completes can move the instance back when applied after it).
    c_->PauseReports();
    auto d = OneLocked();
    c_->ResumeReports();
    return d;
  }
  absl::StatusOr<absl::Duration> OneLocked() {
    // Keep the fake hypervisors' state file at its steady size (see PruneFakeTransfers).
    if (auto p = c_->PruneFakeTransfers(); !p.ok()) return p.status();
    const std::string dest = where_ == "bench-a" ? "bench-b" : "bench-a";
    const absl::Time t0 = absl::Now();
    auto r = c_->Migrate(kUuid, dest);
    if (!r.ok()) return r.status();
    auto st = c_->WaitTerminal(r->migration().number(), absl::Seconds(60));
    if (!st || *st != MigrationStatus::kCompleted) {
      auto m = c_->Get(r->migration().id());
      return absl::InternalError(absl::StrCat(
          "migration ", r->migration().number(), " did not complete: ",
          m.ok() ? absl::StrCat(v1::MigrationStatus_Name(m->status()), " ", m->failure_reason())
                 : std::string(m.status().message())));
    }
    // Observed through the API.
    while (true) {
      auto m = c_->Get(r->migration().id());
      if (!m.ok()) return m.status();
      if (m->status() == v1::MIGRATION_STATUS_COMPLETED) break;
    }
    const absl::Duration d = absl::Now() - t0;
    where_ = dest;
    return d;
  }

  absl::StatusOr<Counts> Count(int n) {
    const absl::Duration settle = absl::Seconds(11);  // PostgreSQL flushes idle backends' stats
    const Tallies b0 = c_->db_calls().Snapshot();
    auto s0 = ReadDbCounters(c_->conninfo());
    if (!s0.ok()) return s0.status();
    const absl::Time t0 = absl::Now();
    absl::SleepFor(settle);
    const Tallies b1 = c_->db_calls().Snapshot();
    const absl::Duration idle = absl::Now() - t0;
    auto s1 = ReadDbCounters(c_->conninfo());
    if (!s1.ok()) return s1.status();
    const Tallies r1 = c_->rpcs().Snapshot();
    const CpuTimes cpu1 = ReadCpu();
    const absl::Time w0 = absl::Now();
    absl::Duration sum;
    for (int i = 0; i < n; ++i) {
      auto d = One();
      if (!d.ok()) return d.status();
      sum += *d;
    }
    const absl::Duration window = absl::Now() - w0;
    const CpuTimes cpu2 = ReadCpu();
    auto s2 = ReadDbCounters(c_->conninfo());
    if (!s2.ok()) return s2.status();
    const Tallies b2 = c_->db_calls().Snapshot();
    const Tallies r2 = c_->rpcs().Snapshot();
    absl::SleepFor(settle);
    auto s3 = ReadDbCounters(c_->conninfo());
    if (!s3.ok()) return s3.status();
    const Tallies b3 = c_->db_calls().Snapshot();

    // Background: the dispatcher's timer passes and lease renewals, measured while idle.
    const Tallies bg = Counters::Diff(b1, b0);
    Counts out;
    out.n = n;
    out.e2e_ms = Ms(sum) / n;
    const double scale = absl::FDivDuration(window, idle);
    for (const auto& [k, v] : Counters::Diff(b2, b1)) {
      Tally t = v;
      auto it = bg.find(k);
      if (it != bg.end()) {
        t.calls -= static_cast<int64_t>(it->second.calls * scale + 0.5);
        t.time -= it->second.time * scale;
      }
      if (t.calls > 0) out.by_call[k] = t;
    }
    const Tally w = Counters::Sum(out.by_call, IsWriteCall);
    const Tally all = Counters::Sum(out.by_call);
    out.writes = static_cast<double>(w.calls) / n;
    out.reads = static_cast<double>(all.calls - w.calls) / n;
    out.db_ms = Ms(all.time) / n;
    out.write_ms = Ms(w.time) / n;
    const double xid_bg = static_cast<double>(s1->next_xid - s0->next_xid) * scale;
    out.xid_writes = (static_cast<double>(s2->next_xid - s1->next_xid) - xid_bg) / n;
    out.events = static_cast<double>(s2->events - s1->events) / n;
    const Tally rpc = Counters::Sum(Counters::Diff(r2, r1));
    out.agent_rpcs = static_cast<double>(rpc.calls) / n;
    out.rpc_ms = Ms(rpc.time) / n;
    for (const auto& [k, v] : Counters::Diff(r2, r1)) out.by_call[k] = v;
    out.cpu = CpuLine(cpu1, cpu2, n, "migration");

    const int64_t xact = s3->xact_commit - s1->xact_commit;
    const int64_t client = Counters::Sum(Counters::Diff(b3, b1)).calls;
    Note(absl::StrFormat(
        "cross-check: pg_stat_database xact_commit delta %d over the window; store calls counted "
        "client-side %d + the benchmark's own %d reads = %d; write transactions (xid counter) "
        "%.2f per migration vs %.2f counted client-side",
        xact, client, 2 * kDbCounterReadTransactions, client + 2 * kDbCounterReadTransactions,
        out.xid_writes, out.writes));
    Note(
        absl::StrFormat("background while idle (removed from the counts): %d store calls in %.1f s "
                        "(dispatcher timer passes, lease renewals)",
                        Counters::Sum(bg).calls, absl::ToDoubleSeconds(idle)));
    return out;
  }

  BenchCloud* c_;
  std::string where_ = "bench-a";
};

int Run(int argc, char** argv) {
  Flags flags(argc, argv);
  const int rounds =
      flags.GetInt("rounds", 5, "timed rounds (figures are medians over the rounds)");
  const int per_round = flags.GetInt("per-round", 100, "migrations per round");
  const int warmup = flags.GetInt("warmup", 20, "migrations before the first round");
  const int count_n = flags.GetInt("count", 100, "migrations of the counting pass");
  const int probes = flags.GetInt("probes", 2, "commit and RPC probes after each migration");
  const bool only_defaults =
      flags.Has("only-defaults", "only the product's default intervals (not the tuned ones)");
  flags.Done(
      "Benchmark 1: the end-to-end time of one migration (FakeDriver, transfer 0 ms) against its "
      "irreducible parts (commits x one commit + RPCs x one round trip), measured side by side.");

  std::cout << MachineLine() << "\n";
  auto pki_dir = testing::MakeShortTempDir("bench-pki");
  if (auto s = MakePki(pki_dir, {"scheduler", "bench-a", "bench-b"}); !s.ok()) {
    std::cerr << "PKI: " << s << "\n";
    return 1;
  }

  std::vector<Config> configs;
  configs.push_back({"product defaults", {}});
  Config tuned{"tuned intervals", {}};
  tuned.orch.dispatch_interval = absl::Milliseconds(20);
  tuned.orch.progress_poll = absl::Milliseconds(5);
  tuned.orch.progress_write = absl::Milliseconds(100);
  configs.push_back(tuned);
  if (only_defaults) configs.resize(1);

  Section(
      "1. Overhead per migration: FakeDriver (transfer 0 ms, state on /dev/shm), real PostgreSQL, "
      "real gRPC on loopback");
  bool printed_setup = false;
  for (const Config& cfg : configs) {
    auto db = NewDatabase();
    if (!db.ok()) {
      std::cerr << "database: " << db.status() << "\n";
      return 1;
    }
    CloudOptions co;
    co.conninfo = *db;
    co.pki = pki_dir;
    co.hosts = {"bench-a", "bench-b"};
    co.orch = cfg.orch;
    auto cloud = BenchCloud::Create(co);
    if (!cloud.ok()) {
      std::cerr << "cloud: " << cloud.status() << "\n";
      return 1;
    }
    BenchCloud& c = **cloud;
    if (!printed_setup) {
      Note(PgSettingsLine(*db));
      Note(
          "scheduler (Orchestrator + ApiCore + SchedulerApi gRPC service) and two compute agents "
          "(AgentCore + FakeDriver behind their gRPC service, mutual TLS, allow-list) run as "
          "in-process gRPC servers on 127.0.0.1; the benchmark calls the scheduler API over gRPC");
      Note(absl::StrFormat(
          "end to end = LiveMigrate call .. `completed` committed and read back with GetMigration; "
          "%d rounds x %d migrations after %d warm-up; figures are medians over the rounds",
          rounds, per_round, warmup));
      printed_setup = true;
    }
    if (auto s = c.CreateDomain("bench-a", kUuid, "bench-vm", 512); !s.ok()) {
      std::cerr << s << "\n";
      return 1;
    }
    if (auto s = c.ReportAll(); !s.ok()) {
      std::cerr << s << "\n";
      return 1;
    }
    Bench b(&c);
    std::cout << "\n-- " << cfg.name << ": dispatch_interval "
              << absl::FormatDuration(cfg.orch.dispatch_interval) << ", progress_poll "
              << absl::FormatDuration(cfg.orch.progress_poll) << ", progress_write "
              << absl::FormatDuration(cfg.orch.progress_write) << "\n";
    for (int i = 0; i < warmup; ++i) {
      auto d = b.One();
      if (!d.ok()) {
        std::cerr << "warm-up: " << d.status() << "\n";
        return 1;
      }
    }
    auto counts = b.Count(count_n);
    if (!counts.ok()) {
      std::cerr << "counting: " << counts.status() << "\n";
      return 1;
    }
    const Counts& k = *counts;
    const double rpcs = k.agent_rpcs + kApiRpcsPerMigration;

    std::vector<double> p50s, p99s, commit_ms, rtt_ms, irr_ms, ratios, ratios_all;
    for (int r = 0; r < rounds; ++r) {
      std::vector<double> e2e, commits, rtts;
      for (int i = 0; i < per_round; ++i) {
        auto d = b.One();
        if (!d.ok()) {
          std::cerr << "round " << r << ": " << d.status() << "\n";
          return 1;
        }
        e2e.push_back(Ms(*d));
        for (int p = 0; p < probes; ++p) {
          commits.push_back(Ms(c.ProbeCommit()));
          rtts.push_back(Ms(c.ProbeRpc(b.where_)));
        }
      }
      const double p50 = Median(e2e), p99 = Percentile(e2e, 99);
      const double commit = Median(commits), rtt = Median(rtts);
      const double irr = k.writes * commit + rpcs * rtt;
      const double irr_all = (k.writes + k.reads) * commit + rpcs * rtt;
      p50s.push_back(p50);
      p99s.push_back(p99);
      commit_ms.push_back(commit);
      rtt_ms.push_back(rtt);
      irr_ms.push_back(irr);
      ratios.push_back(p50 / irr);
      ratios_all.push_back(p50 / irr_all);
      Note(absl::StrFormat(
          "round %d: p50 %.2f ms, p99 %.2f ms, commit %.3f ms, RPC round trip %.3f ms, "
          "irreducible %.2f ms, ratio %.2f",
          r + 1, p50, p99, commit, rtt, irr, p50 / irr));
    }
    const std::string tag = cfg.name == "product defaults" ? "" : " (" + cfg.name + ")";
    Figure("end to end p50" + tag,
           absl::StrFormat("%.2f ms (rounds %.2f-%.2f)", Median(p50s), Min(p50s), Max(p50s)));
    Figure("end to end p99" + tag,
           absl::StrFormat("%.2f ms (rounds %.2f-%.2f)", Median(p99s), Min(p99s), Max(p99s)));
    Figure("commits per migration" + tag,
           absl::StrFormat("%.2f write transactions (server's xid counter %.2f); + %.2f "
                           "read-only transactions; %.2f event rows",
                           k.writes, k.xid_writes, k.reads, k.events),
           "<= 10", k.writes <= 10.0);
    Figure("RPCs per migration" + tag,
           absl::StrFormat("%.2f (%.2f agent RPCs + %d scheduler API calls)", rpcs, k.agent_rpcs,
                           kApiRpcsPerMigration));
    Figure("one commit (BEGIN; INSERT; COMMIT via PgPool)" + tag,
           absl::StrFormat("%.3f ms", Median(commit_ms)));
    Figure("one agent RPC round trip (mTLS, loopback)" + tag,
           absl::StrFormat("%.3f ms", Median(rtt_ms)));
    Figure("irreducible = commits x commit + RPCs x RTT" + tag,
           absl::StrFormat("%.2f x %.3f + %.2f x %.3f = %.2f ms", k.writes, Median(commit_ms), rpcs,
                           Median(rtt_ms), Median(irr_ms)));
    Figure("ratio p50 / irreducible" + tag, Fmt(Median(ratios), 2), "<= 2.0",
           Median(ratios) <= 2.0);
    Note(absl::StrFormat(
        "(counting every read-only transaction as needed too, the ratio would be %.2f)",
        Median(ratios_all)));
    // Where the time goes (counting pass, per migration, background removed).
    Note(absl::StrFormat(
        "where the time goes (counting pass, mean per migration %.2f ms): %.2f ms in %.2f store "
        "transactions (%.2f ms in the %.2f writes), %.2f ms in %.2f agent RPCs (incl. the "
        "agents' own work), the rest (%.2f ms) in the API calls, thread hand-offs and the "
        "orchestrator's own code",
        k.e2e_ms, k.db_ms, k.writes + k.reads, k.write_ms, k.writes, k.rpc_ms, k.agent_rpcs,
        k.e2e_ms - k.db_ms - k.rpc_ms));
    // The same reads one at a time from this thread, nothing else running: their cost without
    // the path's contention.
    {
      std::vector<double> gh, gm, gi, la, cp;
      const int64_t any = 1;  // the first migration of this cloud
      for (int i = 0; i < 200; ++i) {
        absl::Time t0 = absl::Now();
        (void)c.hosts().GetHost("bench-a", absl::Seconds(60));
        gh.push_back(Ms(absl::Now() - t0));
        t0 = absl::Now();
        (void)c.migrations().GetMigration(any);
        gm.push_back(Ms(absl::Now() - t0));
        t0 = absl::Now();
        (void)c.instances().GetInstance(kUuid);
        gi.push_back(Ms(absl::Now() - t0));
        t0 = absl::Now();
        (void)c.migrations().ListActiveMigrations();
        la.push_back(Ms(absl::Now() - t0));
        cp.push_back(Ms(c.ProbeCommit()));
      }
      Note(absl::StrFormat(
          "the same store reads alone (median of 200, one at a time): GetHost %.3f ms, "
          "GetMigration %.3f ms, GetInstance %.3f ms, ListActiveMigrations %.3f ms; the commit "
          "probe %.3f ms",
          Median(gh), Median(gm), Median(gi), Median(la), Median(cp)));
    }
    std::string calls;
    for (const auto& [name, t] : k.by_call) {
      absl::StrAppend(&calls, calls.empty() ? "" : ", ", name, " ",
                      absl::StrFormat("%.2f", static_cast<double>(t.calls) / k.n), " (",
                      absl::StrFormat("%.2f ms", Ms(t.time) / k.n), ")");
    }
    Note("per migration, by call: " + calls);
    Note(k.cpu + " (counting pass, one migration at a time)");
  }
  PrintSummary("overhead");
  testing::RunCommand("rm -rf " + pki_dir).IgnoreError();
  StopDatabaseServer();
  return 0;
}

}  // namespace
}  // namespace livemig::bench

int main(int argc, char** argv) { return livemig::bench::Run(argc, argv); }
