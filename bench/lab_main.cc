// Benchmark 4: the real lab against bare libvirt. The two-host libvirt lab (testing::Lab: two
// root libvirtd in network namespaces, QEMU under TCG, the project's 48 MiB dirtying guest), the
// real scheduler binary (PostgreSQL from testing::PgServer) and one real compute_agent binary in
// each lab host (mutual TLS, QEMU profile, the migration stream not tunnelled), as
// integration_tests/scheduler_e2e/scheduler_lab_test.cc runs them.
//
// Alternated at least 10 times each, the guest moving to the other host every time:
//   system: LiveMigrate over the scheduler's gRPC API .. `completed` seen by GetMigration (polled
//           every 10 ms);
//   bare:   virsh migrate --live --p2p --persistent --undefinesource GUEST <peer-uri> tcp://<ip>
//           (the same data path the agent uses), its wall time.
// The order rotates so that each kind runs in each position and in both directions; a third
// kind (the system asked for QEMU's default max downtime) shows what the downtime policy costs.
#include <unistd.h>

#include <iostream>
#include <optional>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "bench/bench_util.h"
#include "bench/cloud.h"
#include "grpcpp/grpcpp.h"
#include "proto/scheduler.grpc.pb.h"
#include "testing/lab.h"
#include "testing/process.h"
#include "testing/run_command.h"

namespace livemig::bench {
namespace {

namespace sv1 = ::livemig::scheduler::v1;

constexpr char kGuest[] = "bench-g1";
constexpr char kUuid[] = "6c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5";

struct Sys {
  std::unique_ptr<sv1::SchedulerApi::Stub> api;
  absl::Status Call(const std::function<grpc::Status(grpc::ClientContext*)>& f,
                    absl::Duration deadline = absl::Seconds(10)) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    grpc::Status s = f(&ctx);
    if (s.ok()) return absl::OkStatus();
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  }
  // The scheduler knows the instance on `host`, running and idle.
  bool WaitOn(const std::string& host, absl::Duration t) {
    return testing::WaitFor(
        [&] {
          sv1::GetInstanceRequest r;
          r.set_instance_uuid(kUuid);
          sv1::Instance i;
          auto s = Call([&](grpc::ClientContext* c) { return api->GetInstance(c, r, &i); });
          return s.ok() && i.host() == host && i.state() == v1::DOMAIN_STATE_RUNNING &&
                 i.active_migration_id().empty();
        },
        t);
  }
};

int Run(int argc, char** argv) {
  Flags flags(argc, argv);
  const int pairs = std::max(  // at least 1; the figure needs >= 10
      1, flags.GetInt("pairs", 10, "rounds; each migrates the guest once per kind"));
  const std::string sched_bin =
      flags.Get("scheduler-bin", "bazel-bin/scheduler/scheduler", "the scheduler binary");
  const std::string agent_bin =
      flags.Get("agent-bin", "bazel-bin/compute/compute_agent", "the compute agent binary");
  flags.Done(
      "Benchmark 4 (root): the system's live migration of the lab guest against a bare `virsh "
      "migrate --live --p2p` of the same guest, alternated; prints min, median, max and the ratio "
      "of the medians.");

  std::cout << MachineLine() << "\n";
  Section("4. Real lab: the system against bare `virsh migrate --live --p2p`");
  if (geteuid() != 0) {
    Note(
        "SKIPPED: the lab needs root (network namespaces and root libvirtd); rerun bench/run.sh "
        "as root");
    return 0;
  }
  for (const char* tool : {"virsh", "libvirtd", "qemu-system-x86_64", "ip"}) {
    if (!testing::RunCommand(absl::StrCat("command -v ", tool, " >/dev/null")).ok()) {
      Note(absl::StrCat("SKIPPED: ", tool,
                        " is not installed (deploy/install-deps.sh installs the lab's packages)"));
      return 0;
    }
  }
  for (const std::string& b : {sched_bin, agent_bin}) {
    if (access(b.c_str(), X_OK) != 0) {
      std::cerr << "no executable " << b << " (pass --scheduler-bin/--agent-bin)\n";
      return 1;
    }
  }
  auto lab_or = testing::Lab::Up();
  if (!lab_or.ok()) {
    Note(absl::StrCat("SKIPPED: the lab did not come up: ", lab_or.status().ToString()));
    return 0;
  }
  std::unique_ptr<testing::Lab> lab = std::move(lab_or).value();
  const std::string dir = lab->dir();
  auto db = NewDatabase();
  if (!db.ok()) {
    std::cerr << db.status() << "\n";
    return 1;
  }
  Note(PgSettingsLine(*db));
  const std::string pki = dir + "/pki";
  if (auto s = MakePki(pki, {"scheduler", "lab-a", "lab-b"}); !s.ok()) {
    std::cerr << s << "\n";
    return 1;
  }
  // The scheduler with the product's defaults, except agents report every second (so that the
  // scheduler learns a bare virsh move within a second).
  auto scheduler = std::make_unique<testing::ChildProcess>(
      absl::StrCat(sched_bin, " --db '", *db, "' --listen unix:", dir,
                   "/api.sock --registry-listen unix:", dir, "/registry.sock --tls-ca ", pki,
                   "/ca.pem --tls-cert ", pki, "/scheduler.pem --tls-key ", pki,
                   "/scheduler.key --no-auth --report-interval 1"),
      dir + "/scheduler.log");
  std::vector<std::unique_ptr<testing::ChildProcess>> agents;
  for (const std::string h : {"a", "b"}) {
    agents.push_back(std::make_unique<testing::ChildProcess>(
        absl::StrCat(
            lab->ExecPrefix(h), " ", agent_bin, " --hostname lab-", h, " --tls-ca ", pki,
            "/ca.pem --tls-cert ", pki, "/lab-", h, ".pem --tls-key ", pki, "/lab-", h,
            ".key --allow scheduler --scheduler unix:", dir,
            "/registry.sock --scheduler-name scheduler --report-interval 1 --listen unix:", dir,
            "/agent-", h, ".sock --libvirt-uri '", lab->Uri(h), "' --profile qemu --instance-path ",
            lab->InstancePath(), " --reserved-mib 256 --migration-uri ", lab->PeerUri(h),
            " --migration-data-host ", lab->Ip(h), " --no-tunnel --state-dir ", dir,
            "/agent-state-", h),
        dir + "/agent-" + h + ".log"));
  }
  Sys sys;
  sys.api = sv1::SchedulerApi::NewStub(
      grpc::CreateChannel("unix:" + dir + "/api.sock", grpc::InsecureChannelCredentials()));
  if (auto s = lab->StartGuest("a", kGuest, kUuid); !s.ok()) {
    std::cerr << "guest: " << s << "\n";
    return 1;
  }
  const bool both = testing::WaitFor(
      [&] {
        sv1::ListHostsRequest r;
        sv1::ListHostsResponse hosts;
        auto s = sys.Call([&](grpc::ClientContext* c) { return sys.api->ListHosts(c, r, &hosts); });
        int up = 0;
        for (const auto& h : hosts.hosts()) up += h.up() ? 1 : 0;
        return s.ok() && up == 2;
      },
      absl::Seconds(60));
  if (!both || !sys.WaitOn("lab-a", absl::Seconds(60))) {
    std::cerr << "the scheduler never saw the guest on lab-a:\n" << scheduler->LogTail(20) << "\n";
    return 1;
  }
  Note(absl::StrFormat(
      "lab %s; scheduler and agents: the optimized binaries, product defaults (agents report "
      "every 1 s); guest %s (48 MiB dirtying, TCG); %d rounds, each one migration of each kind "
      "(order rotating, the guest moving to the other host every time); before each: the "
      "scheduler sees the guest idle on its host, then 1 s pause",
      dir, kGuest, pairs));

  std::string where = "a";
  // Kind 0: the system with the product's defaults; kind 1: the system asked for QEMU's own
  // default max downtime (300 ms, one step) instead of the driver's 500 ms in 10 steps (a
  // diagnostic: what the downtime policy costs); kind 2: bare virsh.
  const char* kKinds[] = {"system", "system, max downtime 300 ms in 1 step", "bare virsh"};
  std::vector<double> total[3], pre_s[2], transfer_s[2], post_s[2];
  // Per system migration: its id and when the scheduler saw its transfer end.
  std::vector<std::pair<std::string, absl::Time>> sched_end[2];
  auto settle = [&]() -> bool {
    if (!sys.WaitOn("lab-" + where, absl::Seconds(60))) return false;
    absl::SleepFor(absl::Seconds(1));
    return true;
  };
  auto system_once = [&](int kind) -> absl::Status {
    const std::string to = where == "a" ? "b" : "a";
    const absl::Time t0 = absl::Now();
    sv1::LiveMigrateRequest r;
    r.set_instance_uuid(kUuid);
    r.set_destination("lab-" + to);
    r.set_requester("bench");
    if (kind == 1) {
      r.mutable_options()->set_max_downtime_ms(300);
      r.mutable_options()->set_downtime_steps(1);
    }
    sv1::LiveMigrateResponse resp;
    if (auto s = sys.Call([&](grpc::ClientContext* c) { return sys.api->LiveMigrate(c, r, &resp); },
                          absl::Seconds(30));
        !s.ok()) {
      return s;
    }
    sv1::Migration m;
    while (true) {
      sv1::GetMigrationRequest g;
      g.set_migration_id(resp.migration().id());
      if (auto s =
              sys.Call([&](grpc::ClientContext* c) { return sys.api->GetMigration(c, g, &m); });
          !s.ok()) {
        return s;
      }
      const auto st = m.status();
      if (st == v1::MIGRATION_STATUS_COMPLETED) break;
      if (st == v1::MIGRATION_STATUS_FAILED || st == v1::MIGRATION_STATUS_CANCELLED ||
          st == v1::MIGRATION_STATUS_ERROR) {
        return absl::InternalError(absl::StrCat("migration ended ", v1::MigrationStatus_Name(st),
                                                ": ", m.failure_reason()));
      }
      absl::SleepFor(absl::Milliseconds(10));
    }
    const absl::Time t1 = absl::Now();
    total[kind].push_back(absl::ToDoubleSeconds(t1 - t0));
    // The scheduler's timeline (same machine, same clock): before the transfer, the transfer
    // as the scheduler saw it (start .. its progress poll found it completed), after it.
    for (const auto& e : m.events()) {
      if (e.step() == v1::MIGRATION_STEP_LIVE_MIGRATION &&
          e.outcome() == sv1::STEP_OUTCOME_SUCCEEDED && e.has_finished_at()) {
        const absl::Time s = absl::FromUnixSeconds(e.started_at().seconds()) +
                             absl::Nanoseconds(e.started_at().nanos());
        const absl::Time f = absl::FromUnixSeconds(e.finished_at().seconds()) +
                             absl::Nanoseconds(e.finished_at().nanos());
        sched_end[kind].push_back({resp.migration().id(), f});
        pre_s[kind].push_back(absl::ToDoubleSeconds(s - t0));
        transfer_s[kind].push_back(absl::ToDoubleSeconds(f - s));
        post_s[kind].push_back(absl::ToDoubleSeconds(t1 - f));
      }
    }
    where = to;
    return absl::OkStatus();
  };
  auto bare_once = [&]() -> absl::Status {
    const std::string to = where == "a" ? "b" : "a";
    const std::string cmd = absl::StrCat(
        "virsh -c '", lab->Uri(where), "' migrate --live --p2p --persistent --undefinesource ",
        kGuest, " '", lab->PeerUri(to), "' 'tcp://", lab->Ip(to), "' >/dev/null");
    const absl::Time t0 = absl::Now();
    auto out = testing::RunCommand(cmd);
    const double secs = absl::ToDoubleSeconds(absl::Now() - t0);
    if (!out.ok()) return out.status();
    auto w = lab->Where(kGuest);
    if (!w.ok() || w->size() != 1 || (*w)[0] != to) {
      return absl::InternalError("after virsh migrate the guest is not (only) on " + to);
    }
    total[2].push_back(secs);
    where = to;
    return absl::OkStatus();
  };
  auto dump_logs = [&] {
    std::cerr << "---- scheduler log\n" << scheduler->LogTail(100000) << "\n";
    for (auto& a : agents) std::cerr << "---- " << a->log() << "\n" << a->LogTail(100000) << "\n";
  };
  for (int i = 0; i < pairs; ++i) {
    for (int k = 0; k < 3; ++k) {
      const int kind = (i + k) % 3;  // each kind in each position, and in both directions
      if (!settle()) {
        std::cerr << "the scheduler does not see the guest idle on lab-" << where << "\n";
        dump_logs();
        return 1;
      }
      auto s = kind == 2 ? bare_once() : system_once(kind);
      if (!s.ok()) {
        std::cerr << kKinds[kind] << " migration failed: " << s << "\n";
        dump_logs();
        return 1;
      }
      Note(absl::StrFormat("round %d: %-40s to lab-%s %.2f s", i + 1, kKinds[kind], where,
                           total[kind].back()));
    }
  }
  auto beat = lab->Heartbeat(kGuest);
  Note(beat.ok() ? absl::StrFormat("guest heartbeat after %d migrations: boots=%d corrupt=%d",
                                   3 * pairs, beat->boots, beat->corrupt)
                 : "guest heartbeat unreadable");
  for (int kind = 0; kind < 3; ++kind) {
    Figure(kKinds[kind],
           absl::StrFormat("min %.2f s, median %.2f s, max %.2f s (%d runs)", Min(total[kind]),
                           Median(total[kind]), Max(total[kind]), total[kind].size()));
  }
  for (int kind = 0; kind < 2; ++kind) {
    Figure(absl::StrCat(kKinds[kind], ": timeline"),
           absl::StrFormat("medians: request .. transfer start %.2f s; transfer as the scheduler "
                           "saw it %.2f s; transfer end .. completed seen %.2f s",
                           Median(pre_s[kind]), Median(transfer_s[kind]), Median(post_s[kind])));
  }
  // From the agents' logs: the transfer as the source agent saw it (its "step=live_migration
  // started" line .. "transfer ended"), and how late the scheduler's progress polling noticed.
  std::string logs;
  for (auto& a : agents) logs += a->LogTail(1000000) + "\n";
  auto log_time = [&](const std::string& id, const std::string& what) -> std::optional<absl::Time> {
    std::istringstream in(logs);
    std::string line;
    while (std::getline(in, line)) {
      if (line.find("migration=" + id) == std::string::npos ||
          line.find(what) == std::string::npos) {
        continue;
      }
      absl::Time t;
      std::string err;
      if (absl::ParseTime("%Y-%m-%dT%H:%M:%E*SZ", line.substr(0, line.find(' ')), &t, &err)) {
        return t;
      }
    }
    return std::nullopt;
  };
  for (int kind = 0; kind < 2; ++kind) {
    std::vector<double> agent_transfer, detect;
    for (const auto& [id, seen] : sched_end[kind]) {
      auto start = log_time(id, "step=live_migration started");
      auto end = log_time(id, "transfer ended");
      if (!start || !end) continue;
      agent_transfer.push_back(absl::ToDoubleSeconds(*end - *start));
      detect.push_back(absl::ToDoubleSeconds(seen - *end));
    }
    Figure(absl::StrCat(kKinds[kind], ": from the agent's log"),
           absl::StrFormat("medians: transfer %.2f s (LiveMigration answered .. libvirt's "
                           "migration returned); the scheduler noticed its end %.3f s later "
                           "(progress_poll 100 ms)",
                           Median(agent_transfer), Median(detect)));
  }
  const double ratio = Median(total[0]) / Median(total[2]);
  Figure("ratio of medians system / bare", Fmt(ratio, 3), "<= 1.15", ratio <= 1.15);
  Figure("(diagnostic) ratio with max downtime 300 ms",
         Fmt(Median(total[1]) / Median(total[2]), 3));
  dump_logs();
  PrintSummary("lab");
  agents.clear();
  scheduler.reset();
  lab.reset();
  StopDatabaseServer();
  return 0;
}

}  // namespace
}  // namespace livemig::bench

int main(int argc, char** argv) { return livemig::bench::Run(argc, argv); }
