// Benchmark 5: evacuation. `--instances` (100) instances on one fake host are evacuated with
// ApiCore::EvacuateHost and `--max-parallel` k in {1, 4, 16}; every transfer takes
// `--duration-ms` (FakeDriver). The figure is the total time (the request until the evacuation
// is finished) against its floor ceil(instances / k) x duration. The scheduler chooses each
// destination among `--dests` hosts (ChooseDestinations); the orchestrator's and the agents'
// limits are off, so that max_parallel alone limits the evacuation.
#include <algorithm>
#include <cmath>
#include <iostream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "bench/bench_util.h"
#include "bench/cloud.h"

namespace livemig::bench {
namespace {

std::string InstanceUuid(int round, int i) {
  return absl::StrFormat("e7ac0000-0000-4000-8000-%04d%08d", round, i);
}

int Run(int argc, char** argv) {
  Flags flags(argc, argv);
  const int instances =
      flags.GetInt("instances", 100, "instances evacuated from the one source host");
  const int duration_ms =
      flags.GetInt("duration-ms", 1000, "each transfer's duration in ms (FakeDriver)");
  const int dests = flags.GetInt("dests", 4, "hosts the scheduler chooses destinations among");
  const std::string max_parallel_list = flags.Get(
      "max-parallel", "1,4,16", "max_parallel widths, comma-separated: one evacuation each");
  const int repeat = flags.GetInt("repeat", 3, "evacuations per k (the figure is their median)");
  flags.Done(
      "Benchmark 5: evacuation of --instances instances from one fake host with max_parallel k for "
      "each k of --max-parallel; prints the total time against ceil(instances / k) x duration.");
  if (repeat < 1 || instances < 1 || duration_ms < 1 || dests < 1) {
    std::cerr << "--repeat, --instances, --duration-ms and --dests must be positive\n";
    return 2;
  }
  std::vector<int> ks;
  for (absl::string_view k : absl::StrSplit(max_parallel_list, ',')) {
    int v = 0;
    if (!absl::SimpleAtoi(k, &v) || v < 1) {
      std::cerr << "--max-parallel: a comma-separated list of positive numbers\n";
      return 2;
    }
    ks.push_back(v);
  }

  std::cout << MachineLine() << "\n";
  Section(absl::StrFormat(
      "5. Evacuation: %d instances, max_parallel %s, transfers of %d ms (FakeDriver), %d "
      "destination hosts",
      instances, max_parallel_list, duration_ms, dests));
  const std::string src = "evac-src";
  CloudOptions co;
  co.hosts.push_back(src);
  for (int i = 0; i < dests; ++i) co.hosts.push_back(absl::StrFormat("evac-dst-%d", i));
  co.partitions = 1;
  LiftLimits(co);
  // Reports are held back during each evacuation (see BenchCloud::PauseReports): the hosts must
  // stay `up` meanwhile.
  co.orch.service_down_time = absl::Hours(1);
  auto cloud = BenchCloud::CreateWithNewPkiAndDatabase(co);
  if (!cloud.ok()) {
    std::cerr << cloud.status() << "\n";
    return 1;
  }
  BenchCloud& c = **cloud;
  Note(PgSettingsLine(c.conninfo()));
  Note(absl::StrFormat(
      "in-process scheduler (product default intervals: dispatch %s, progress_poll %s; limits "
      "off) and %d agents over gRPC with mutual TLS; instances of 64 MiB; the scheduler chooses "
      "the destinations",
      absl::FormatDuration(co.orch.dispatch_interval), absl::FormatDuration(co.orch.progress_poll),
      dests + 1));
  if (auto s = c.hypervisor(src).SetTransferDuration(src, absl::Milliseconds(duration_ms));
      !s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }

  int round = 0;  // each evacuation moves fresh instances
  for (const int k : ks) {
    const int waves = (instances + k - 1) / k;
    const double floor_s = waves * duration_ms / 1000.0;
    std::vector<double> ratios;
    std::string runs;
    int succeeded_min = instances;
    for (int run = 0; run < repeat; ++run, ++round) {
      for (int i = 0; i < instances; ++i) {
        auto s = c.CreateDomain(src, InstanceUuid(round, i),
                                absl::StrFormat("evac-%d-%d", round, i), 64);
        if (!s.ok()) {
          std::cerr << s << "\n";
          return 1;
        }
      }
      if (auto s = c.ReportAll(); !s.ok()) {
        std::cerr << "report: " << s << "\n";
        return 1;
      }
      c.PauseReports();
      sv1::EvacuateHostRequest req;
      req.set_hostname(src);
      req.set_max_parallel(static_cast<uint32_t>(k));
      req.set_requester("bench");
      const absl::Time t0 = absl::Now();
      auto ev = c.api_core().EvacuateHost(req, "bench");
      if (!ev.ok()) {
        c.ResumeReports();
        std::cerr << "evacuate: " << ev.status() << "\n";
        return 1;
      }
      absl::StatusOr<sv1::Evacuation> last = *ev;
      const absl::Time deadline =
          t0 + absl::Milliseconds(duration_ms) * instances * 3 + absl::Seconds(60);
      while (absl::Now() < deadline) {
        last = c.api_core().GetEvacuation(ev->id());
        if (!last.ok() || last->status() != sv1::EVACUATION_STATUS_RUNNING) break;
        absl::SleepFor(absl::Milliseconds(5));
      }
      const absl::Duration total = absl::Now() - t0;
      c.ResumeReports();
      if (!last.ok() || last->status() == sv1::EVACUATION_STATUS_RUNNING) {
        std::cerr << "evacuation " << ev->id()
                  << " did not finish: " << (last.ok() ? "still running" : last.status().ToString())
                  << "\n";
        return 1;
      }
      const double ratio = absl::ToDoubleSeconds(total) / floor_s;
      ratios.push_back(ratio);
      succeeded_min = std::min(succeeded_min, static_cast<int>(last->succeeded()));
      Note(absl::StrFormat(
          "max_parallel %d, run %d: total %.2f s vs ceil(%d/%d) x %.2f s = %.2f s: ratio %.3f (%d "
          "succeeded, %d failed, %d skipped; %.0f ms per wave above the transfer)",
          k, run + 1, absl::ToDoubleSeconds(total), instances, k, duration_ms / 1000.0, floor_s,
          ratio, last->succeeded(), last->failed(), last->skipped(),
          (absl::ToDoubleSeconds(total) - floor_s) * 1000 / waves));
      absl::StrAppend(&runs, runs.empty() ? "" : ", ", absl::StrFormat("%.3f", ratio));
      if (auto p = c.PruneFakeTransfers(); !p.ok()) {
        std::cerr << "prune: " << p.status() << "\n";
        return 1;
      }
    }
    const double median = Median(ratios);
    Figure(absl::StrFormat("evacuation, max_parallel %d", k),
           absl::StrFormat("median ratio %.3f of total time to ceil(%d/%d) x %.2f s = %.2f s "
                           "(runs: %s; %.0f ms per wave above the transfer at the median)",
                           median, instances, k, duration_ms / 1000.0, floor_s, runs,
                           (median - 1) * duration_ms),
           "<= 1.1", median <= 1.1 && succeeded_min == instances);
  }
  PrintSummary("evacuation");
  cloud->reset();  // also removes its PKI
  StopDatabaseServer();
  return 0;
}

}  // namespace
}  // namespace livemig::bench

int main(int argc, char** argv) { return livemig::bench::Run(argc, argv); }
