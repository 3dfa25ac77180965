// Benchmark 2: throughput. 1000 migrations across 20 fake agent hosts (limits off, transfers of
// 0 ms), all requested at once through the scheduler API; migrations per second from the first
// request to the last `completed` commit. Beside it, in the same run, the database's own ceiling:
// concurrent commits per second on the same server (as many clients as the scheduler has pool
// connections) divided by the write transactions one migration needs (counted in the run).
#include <atomic>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "bench/bench_util.h"
#include "bench/cloud.h"

namespace livemig::bench {
namespace {

std::string HostName(int i) { return absl::StrFormat("tp-%02d", i); }
std::string InstanceUuid(int i) { return absl::StrFormat("7e570000-0000-4000-8000-%012d", i); }

// Concurrent commits per second: `clients` threads, each with its own connection, committing
// one-row write transactions for `d`.
double CommitCeiling(BenchCloud& c, int clients, absl::Duration d) {
  db::PgPool::Options po;
  po.conninfo = c.conninfo();
  po.size = clients;
  auto pool = db::PgPool::Create(po);
  if (!pool.ok()) return 0;
  for (int i = 0; i < clients; ++i) c.ProbeCommit(pool->get());  // open the connections
  std::atomic<int64_t> n{0};
  std::vector<std::thread> threads;
  const absl::Time end = absl::Now() + d;
  const absl::Time t0 = absl::Now();
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&] {
      while (absl::Now() < end) {
        c.ProbeCommit(pool->get());
        ++n;
      }
    });
  }
  for (auto& t : threads) t.join();
  return n.load() / absl::ToDoubleSeconds(absl::Now() - t0);
}

int Run(int argc, char** argv) {
  Flags flags(argc, argv);
  const int hosts = flags.GetInt("hosts", 20, "fake agent hosts (even)");
  const int migrations =
      flags.GetInt("migrations", 1000, "migrations per run (a multiple of --hosts)");
  const int runs = flags.GetInt("runs", 3, "runs (the figure is their median)");
  const int partitions = flags.GetInt("partitions", hosts / 2,
                                      "fake-hypervisor state directories (must divide hosts / 2)");
  const int submitters = flags.GetInt("submitters", 4, "threads calling LiveMigrate");
  const double ceiling_s =
      flags.GetDouble("ceiling-seconds", 3, "seconds of the database ceiling's commit measurement");
  flags.Done(
      "Benchmark 2: --migrations migrations across --hosts agent hosts at once (FakeDriver, limits "
      "off): migrations per second against the database's ceiling, commits/s / writes per "
      "migration, measured in the same run.");
  if (migrations % hosts != 0 || hosts % 2 != 0 || (hosts / 2) % partitions != 0) {
    std::cerr << "--migrations must be a multiple of --hosts (even), and --partitions divide "
                 "hosts/2\n";
    return 2;
  }

  std::cout << MachineLine() << "\n";
  Section(absl::StrFormat(
      "2. Throughput: %d migrations across %d agent hosts (FakeDriver, transfer 0 ms, limits off)",
      migrations, hosts));
  CloudOptions co;
  for (int i = 0; i < hosts; ++i) co.hosts.push_back(HostName(i));
  co.partitions = partitions;
  LiftLimits(co);
  auto cloud = BenchCloud::CreateWithNewPkiAndDatabase(co);
  if (!cloud.ok()) {
    std::cerr << cloud.status() << "\n";
    return 1;
  }
  BenchCloud& c = **cloud;
  Note(PgSettingsLine(c.conninfo()));
  Note(absl::StrFormat(
      "in-process scheduler (product default intervals, limits off, db pool %d) and %d agents "
      "(in-process gRPC servers, mutual TLS, 127.0.0.1); %d submitter threads call LiveMigrate "
      "over gRPC; the fake hypervisors' state is split into %d directories on /dev/shm (host i "
      "and i+%d share one; each migration moves an instance between them)",
      co.db_pool, hosts, submitters, partitions, hosts / 2));
  // Instances: migrations/hosts per host, 64 MiB each.
  const int per_host = migrations / hosts;
  std::vector<int> location(migrations);
  for (int i = 0; i < migrations; ++i) {
    location[i] = i % hosts;
    auto s = c.CreateDomain(HostName(location[i]), InstanceUuid(i), absl::StrCat("tp-vm-", i), 64);
    if (!s.ok()) {
      std::cerr << s << "\n";
      return 1;
    }
  }
  (void)per_host;
  if (auto s = c.ReportAll(); !s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }

  std::vector<double> rates, ceilings, ceiling_commits, writes_pm, reads_pm, fractions;
  for (int run = 0; run < runs; ++run) {
    // Fresh reports first: the database must know where every instance is. The fake
    // hypervisors forget the previous run's finished transfers (see PruneFakeTransfers).
    if (auto p = c.PruneFakeTransfers(); !p.ok()) {
      std::cerr << "prune: " << p.status() << "\n";
      return 1;
    }
    if (auto s = c.ReportAll(); !s.ok()) {
      std::cerr << "report: " << s << "\n";
      return 1;
    }
    const double commits_s = CommitCeiling(c, co.db_pool, absl::Seconds(ceiling_s));
    auto s1 = ReadDbCounters(c.conninfo());
    const Tallies b1 = c.db_calls().Snapshot();
    const CpuTimes cpu1 = ReadCpu();
    std::vector<int64_t> numbers(migrations, 0);
    std::atomic<int> next{0}, failed_requests{0};
    absl::Mutex refusal_mu;
    std::string first_refusal;
    const absl::Time t0 = absl::Now();
    std::vector<std::thread> threads;
    for (int t = 0; t < submitters; ++t) {
      threads.emplace_back([&] {
        for (int i = next++; i < migrations; i = next++) {
          const int dest = (location[i] + hosts / 2) % hosts;
          auto r = c.Migrate(InstanceUuid(i), HostName(dest));
          if (!r.ok()) {
            ++failed_requests;
            std::cerr << "LiveMigrate " << i << ": " << r.status() << "\n";
            absl::MutexLock l(&refusal_mu);
            if (first_refusal.empty()) first_refusal = r.status().ToString();
            continue;
          }
          numbers[i] = r->migration().number();
        }
      });
    }
    for (auto& t : threads) t.join();
    const absl::Time submitted = absl::Now();
    int completed = 0, other = 0;
    for (int i = 0; i < migrations; ++i) {
      if (numbers[i] == 0) continue;
      auto st = c.WaitTerminal(numbers[i], absl::Minutes(10));
      if (st && *st == MigrationStatus::kCompleted) {
        ++completed;
        location[i] = (location[i] + hosts / 2) % hosts;
      } else {
        ++other;
      }
    }
    const absl::Time t1 = absl::Now();
    const CpuTimes cpu2 = ReadCpu();
    // Instances the database places elsewhere than where they run: moved back by a host report
    // that was read before their migration completed and applied after it.
    int misplaced = 0;
    if (auto where = c.DbHosts(); where.ok()) {
      for (int i = 0; i < migrations; ++i) {
        if ((*where)[InstanceUuid(i)] != HostName(location[i])) ++misplaced;
      }
    }
    auto s2 = ReadDbCounters(c.conninfo());
    const Tallies calls = Counters::Diff(c.db_calls().Snapshot(), b1);
    const double secs = absl::ToDoubleSeconds(t1 - t0);
    const double rate = completed / secs;
    const Tally w = Counters::Sum(calls, IsWriteCall);
    const Tally all = Counters::Sum(calls);
    const double wpm = (s1.ok() && s2.ok() && completed > 0)
                           ? static_cast<double>(s2->next_xid - s1->next_xid) / completed
                           : static_cast<double>(w.calls) / std::max(1, completed);
    const double rpm = static_cast<double>(all.calls - w.calls) / std::max(1, completed);
    const double ceiling = commits_s / wpm;
    rates.push_back(rate);
    ceilings.push_back(ceiling);
    ceiling_commits.push_back(commits_s);
    writes_pm.push_back(wpm);
    reads_pm.push_back(rpm);
    fractions.push_back(rate / ceiling);
    Note(absl::StrFormat(
        "run %d: %d completed, %d not completed, %d refused; %.1f s (requests took %.1f s): "
        "%.1f migrations/s; %.2f write + %.2f read-only transactions per migration; database "
        "%.0f commits/s with %d clients -> ceiling %.1f migrations/s; fraction %.2f",
        run + 1, completed, other, failed_requests.load(), secs,
        absl::ToDoubleSeconds(submitted - t0), rate, wpm, rpm, commits_s, co.db_pool, ceiling,
        rate / ceiling));
    Note("   " + CpuLine(cpu1, cpu2, std::max(1, completed), "migration"));
    if (!first_refusal.empty()) {
      Note(absl::StrCat("   first refusal (all in the log): ",
                        first_refusal.substr(0, first_refusal.find('\n'))));
    }
    Note(absl::StrFormat(
        "   after the run the database placed %d instance(s) on another host than the one they "
        "run on (a periodic host report read before their migration completed, applied after)",
        misplaced));
    if (run == 0) {
      std::string by;
      for (const auto& [k, v] : calls) {
        absl::StrAppend(&by, by.empty() ? "" : ", ", k, " ",
                        absl::StrFormat("%.2f", static_cast<double>(v.calls) / completed), " (",
                        absl::StrFormat("%.2f ms", Ms(v.time) / completed), ")");
      }
      Note("run 1 store calls per migration (with the mean time of each, under load): " + by);
    }
  }
  Figure("throughput", absl::StrFormat("%.1f migrations/s (runs %.1f-%.1f)", Median(rates),
                                       Min(rates), Max(rates)));
  Figure("database commits/s (concurrent)",
         absl::StrFormat("%.0f with %d clients", Median(ceiling_commits), co.db_pool));
  Figure("write transactions per migration", Fmt(Median(writes_pm), 2));
  Figure("database ceiling = commits/s / writes",
         absl::StrFormat("%.1f migrations/s", Median(ceilings)));
  Figure("throughput / ceiling", Fmt(Median(fractions), 3), ">= 0.5", Median(fractions) >= 0.5);
  PrintSummary("throughput");
  cloud->reset();  // also removes its PKI
  StopDatabaseServer();
  return 0;
}

}  // namespace
}  // namespace livemig::bench

int main(int argc, char** argv) { return livemig::bench::Run(argc, argv); }
