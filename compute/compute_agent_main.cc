// compute_agent: the per-host agent. Serves the compute agent RPCs over mutual TLS, executes
// the host-side steps of live migrations through a ComputeDriver, and reports its host to the
// scheduler. See `compute_agent --help`.
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/grpc_limits.h"
#include "common/log.h"
#include "common/signals.h"
#include "common/status_map.h"
#include "common/test_hooks.h"
#include "common/tls.h"
#include "common/validate.h"
#include "compute/agent_core.h"
#include "compute/agent_service.h"
#include "compute/host_reporter.h"
#include "driver/fake_driver.h"
#include "driver/libvirt_driver.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"

namespace {

using livemig::LogError;
using livemig::LogInfo;
using livemig::LogWarning;

// The identities in an allow-list file; an error naming the file when it cannot be read (a
// missing file is never an empty list: that would lock every caller out, or hide a typo).
absl::StatusOr<std::vector<std::string>> ReadAllowFile(const std::string& path) {
  std::vector<std::string> out;
  std::ifstream in(path);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot read the allow-list file ", path, ": ", std::strerror(errno)));
  }
  std::string line;
  while (std::getline(in, line)) {
    auto hash = line.find('#');
    if (hash != std::string::npos) line = line.substr(0, hash);
    line.erase(0, line.find_first_not_of(" \t"));
    line.erase(line.find_last_not_of(" \t\r") + 1);
    if (!line.empty()) out.push_back(line);
  }
  return out;
}

int Fail(const std::string& what, const absl::Status& s) {
  std::cerr << "compute_agent: " << what << ": " << s.message() << "\n";
  return livemig::ExitCodeFor(s.code()) ? livemig::ExitCodeFor(s.code()) : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "compute_agent: the live-migration agent of one hypervisor host (runs in Xen's dom0).\n"
      "Serves the compute agent RPCs (mutual TLS), drives the host-side migration steps through\n"
      "libvirt (or a fake hypervisor for tests) and reports the host to the scheduler."};
  app.set_config("--config", "", "read options from this file (TOML or INI: key = value)");
  // A misspelt key in a config file is an error, not a silently ignored setting.
  app.allow_config_extras(CLI::config_extras_mode::error);
  app.get_formatter()->column_width(44);

  std::string listen, hostname, advertise;
  app.add_option("--listen", listen, "address to serve on: unix:/path/agent.sock or HOST:PORT")
      ->required();
  app.add_option("--hostname", hostname, "this host's name (default: the system hostname)");
  app.add_option("--advertise-address", advertise,
                 "address the scheduler uses to reach this agent (default: --listen)");

  std::string driver_kind = "libvirt";
  app.add_option("--driver", driver_kind, "libvirt or fake")
      ->check(CLI::IsMember({"libvirt", "fake"}))
      ->capture_default_str();
  livemig::driver::LibvirtDriver::Options lv;
  app.add_option("--libvirt-uri", lv.uri, "libvirt connection URI")->capture_default_str();
  app.add_option("--profile", lv.profile,
                 "backend profile: auto (from the hypervisor), libxl, libxl-strict (the libxl "
                 "profile enforced over any backend, for the lab) or qemu")
      ->check(CLI::IsMember({"auto", "libxl", "libxl-strict", "qemu"}))
      ->capture_default_str();
  app.add_option("--instance-path", lv.instance_path, "the shared instance directory")
      ->capture_default_str();
  app.add_option("--reserved-mib", lv.memory_reserved_mib, "dom0 memory reserve in MiB")
      ->capture_default_str();
  app.add_option("--migration-uri", lv.migration_uri,
                 "URI the source's libvirtd uses to reach this host's libvirtd (default: "
                 "xen+tls://<hostname>/system on Xen)");
  app.add_option("--migration-data-host", lv.migration_data_host,
                 "host of the migration data stream tcp://<host> (default: the hostname)");
  bool no_tunnel = false;
  app.add_flag("--no-tunnel", no_tunnel,
               "send the migration stream in the clear on ports 49152-49216 instead of "
               "tunnelling it through libvirt (TUNNELLED is the default on Xen)");
  std::string bridges;
  app.add_option("--bridges", bridges,
                 "comma-separated bridges this host offers (default: every bridge in "
                 "/sys/class/net)");
  app.add_option("--state-dir", lv.state_dir, "directory for staged domain definitions")
      ->capture_default_str();
  app.add_option("--xen-info-command", lv.xen_info_command,
                 "libxl profiles: command run once at start whose output has `xl info`'s "
                 "virt_caps line; without \"shadow\" there (a Xen built without shadow paging) "
                 "PV guests are refused migration from and to this host; empty: not run, the "
                 "paging modes are unknown and nothing is refused")
      ->capture_default_str();
  app.add_option("--volumes-file", lv.volumes_file,
                 "the shared volumes (iSCSI LUNs, DRBD resources) this host may attach for a "
                 "migrating guest, one a line: `<name> iscsi portal=<host:port> target=<iqn> "
                 "lun=<n>` or `<name> drbd resource=<res> device=/dev/drbdN` (deploy/README.md, "
                 "\"Shared volumes\"); a guest on a volume not listed is refused migration to "
                 "this host; a malformed file refuses the start");
  std::string cpu_features;
  app.add_option("--cpu-features-override", cpu_features,
                 "comma-separated CPU features to report and check instead of the host's");
  uint64_t version_override = 0;
  app.add_option("--hypervisor-version-override", version_override,
                 "for tests: the hypervisor version to report and check instead of the host's, "
                 "as libvirt encodes it (major*1000000+minor*1000+micro, e.g. 4016000)");
  livemig::driver::FakeDriver::Options fk;
  app.add_option("--fake-state-dir", fk.state_dir,
                 "fake hypervisor state directory (--driver fake)");
  app.add_option("--fake-profile", fk.profile, "fake-qemu or fake-libxl")->capture_default_str();
  uint64_t fake_memory = fk.memory_total_mib;
  app.add_option("--fake-memory-mib", fake_memory, "fake host memory")->capture_default_str();
  app.add_option("--fake-hypervisor-type", fk.hypervisor_type, "fake hypervisor type")
      ->capture_default_str();
  app.add_option("--fake-hypervisor-version", fk.hypervisor_version,
                 "fake hypervisor version as libvirt encodes it (major*1000000+minor*1000+micro)")
      ->capture_default_str();
  app.add_option("--fake-xen-virt-caps", fk.xen_virt_caps,
                 "fake-libxl: the fake Xen's `xl info` virt_caps (without \"shadow\": no PV "
                 "live migration from or to this host; empty: unknown)")
      ->capture_default_str();

  std::string scheduler, scheduler_name;
  double report_interval_s = 10;
  app.add_option("--scheduler", scheduler,
                 "scheduler's host registry address (unix:/path or HOST:PORT); empty: no reports");
  app.add_option("--scheduler-name", scheduler_name,
                 "name in the scheduler's certificate (default: the address's host; needed for "
                 "unix: addresses)");
  app.add_option("--report-interval", report_interval_s, "seconds between host reports")
      ->capture_default_str();

  livemig::TlsFiles tls;
  app.add_option("--tls-ca", tls.ca, "cluster CA certificate (PEM)");
  app.add_option("--tls-cert", tls.cert, "this agent's certificate (PEM)");
  app.add_option("--tls-key", tls.key, "this agent's private key (PEM)");
  app.add_flag("--insecure-plaintext", tls.insecure,
               "DEVELOPMENT ONLY: no TLS, no authentication, every caller allowed");
  std::string allow, allow_file;
  app.add_option("--allow", allow,
                 "comma-separated certificate identities (CN) allowed to drive migration steps");
  app.add_option("--allow-file", allow_file,
                 "file with one allowed identity per line; re-read on SIGHUP");
  livemig::agent::AgentCore::Options core_options;
  app.add_option("--max-concurrent-migrations", core_options.max_concurrent_migrations,
                 "transfers running at once from this host")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  // How long a finished migration's answers are remembered (a repeated step request, or the
  // scheduler asking after a restart, still gets its answer), bounded in time and in count so a
  // long-running agent does not grow with every migration it served. The same limits apply to the
  // agent's records and to the libvirt driver's finished transfers.
  double finished_keep_s = absl::ToDoubleSeconds(core_options.finished_keep);
  app.add_option("--finished-retention", finished_keep_s,
                 "seconds a finished migration's record is kept (at least as long as the "
                 "scheduler's roll-forward window and its agent-silence limit)")
      ->capture_default_str()
      ->check(CLI::Range(60.0, 7 * 86400.0));
  app.add_option("--finished-max", core_options.max_finished,
                 "most finished migration records kept (the oldest go first)")
      ->capture_default_str()
      ->check(CLI::Range(size_t{10}, size_t{1000000}));
  CLI11_PARSE(app, argc, argv);
  core_options.finished_keep = absl::Seconds(finished_keep_s);
  lv.finished_transfer_keep = core_options.finished_keep;
  lv.max_finished_transfers = core_options.max_finished;

  // Signals are handled by one thread (sigwait), never asynchronously.
  livemig::BlockShutdownSignals();

  if (hostname.empty()) {
    char buf[256] = {0};
    gethostname(buf, sizeof(buf) - 1);
    hostname = buf;
  }
  if (livemig::IsReservedHostname(hostname)) {
    std::cerr << "compute_agent: the host name '" << hostname
              << "' is reserved for the scheduler's identity (the agents' allow-lists name it); "
                 "run the agent with --hostname set to this host's own name\n";
    return 2;
  }
  livemig::SetLogComponent("compute_agent[" + hostname + "]");
  livemig::SetTestPointProcess("agent:" + hostname);
  if (livemig::TestHooksEnabled()) {
    livemig::LogWarning("test hooks are ON (LIVEMIG_TEST_HOOK_DIR is set): for tests only");
  }
  if (tls.insecure) {
    LogWarning(
        "--insecure-plaintext: no TLS and no authentication; every caller may drive "
        "migrations. Never use this outside development.");
  }
  if (auto s = livemig::ValidateTlsFiles(tls, "compute_agent"); !s.ok()) {
    return Fail("TLS configuration", s);
  }

  std::unique_ptr<livemig::driver::ComputeDriver> driver;
  if (driver_kind == "fake") {
    fk.hostname = hostname;
    fk.memory_total_mib = fake_memory;
    fk.memory_reserved_mib = lv.memory_reserved_mib;
    if (!bridges.empty()) fk.bridges = absl::StrSplit(bridges, ',', absl::SkipEmpty());
    if (!cpu_features.empty()) {
      fk.cpu_features = absl::StrSplit(cpu_features, ',', absl::SkipEmpty());
    }
    if (app.count("--instance-path") > 0) fk.instance_path = lv.instance_path;
    auto d = livemig::driver::FakeDriver::Create(fk);
    if (!d.ok()) return Fail("fake driver", d.status());
    driver = std::move(d).value();
  } else {
    lv.hostname = hostname;
    if (no_tunnel) lv.tunnelled = false;
    if (!bridges.empty()) lv.bridges = absl::StrSplit(bridges, ',', absl::SkipEmpty());
    if (!cpu_features.empty()) {
      lv.cpu_features_override =
          std::vector<std::string>(absl::StrSplit(cpu_features, ',', absl::SkipEmpty()));
    }
    if (version_override > 0) lv.hypervisor_version_override = version_override;
    auto d = livemig::driver::LibvirtDriver::Create(lv);
    if (!d.ok()) return Fail("libvirt driver", d.status());
    LogInfo("libvirt %s: profile %s", lv.uri, (*d)->profile());
    driver = std::move(d).value();
  }

  // Xen's paging modes, read once at start (check "xen_pv_shadow_paging").
  const livemig::v1::BackendCapabilities caps = driver->capabilities();
  if (!caps.xen_info_error().empty()) {
    LogWarning(
        "Xen paging modes unknown: %s; PV guests' migrations from and to this host are not "
        "refused on a guess (they fail after ~2 s where Xen lacks shadow paging)",
        caps.xen_info_error());
  } else if (caps.has_pv_live_migration()) {
    const std::string virt_caps = absl::StrJoin(caps.xen_virt_caps(), " ");
    if (caps.pv_live_migration()) {
      LogInfo("Xen virt_caps: %s (shadow paging: PV guests can live-migrate)", virt_caps);
    } else {
      LogWarning(
          "Xen virt_caps: %s: no shadow paging, so PV guests cannot live-migrate from or to this "
          "host (refused); PVH and HVM guests can (HAP). A Xen built with shadow paging "
          "(CONFIG_SHADOW_PAGING=y, e.g. Debian's 4.17.5 from bookworm) lifts this",
          virt_caps);
    }
  }

  core_options.hostname = hostname;
  livemig::agent::AgentCore core(core_options, driver.get());
  std::vector<std::string> ids = absl::StrSplit(allow, ',', absl::SkipEmpty());
  if (!allow_file.empty()) {
    auto more = ReadAllowFile(allow_file);
    if (!more.ok()) return Fail("--allow-file", more.status());
    ids.insert(ids.end(), more->begin(), more->end());
  }
  if (ids.empty() && !tls.insecure) {
    LogWarning("the allow-list is empty: no caller may drive migration steps (pass --allow)");
  }
  livemig::agent::AllowList allow_list(ids, tls.insecure);
  livemig::agent::AgentService service(&core, &allow_list);

  auto creds = livemig::MakeServerCredentials(tls);
  if (!creds.ok()) return Fail("TLS", creds.status());
  if (listen.rfind("unix:", 0) == 0) unlink(listen.substr(5).c_str());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, *creds, &port);
  builder.RegisterService(&service);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  livemig::ServerLimits limits;  // the defaults: 64 threads, 100 streams per connection, ...
  limits.name = "compute-agent";
  livemig::ApplyServerLimits(builder, limits);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server) {
    return Fail("listen", absl::UnavailableError("cannot listen on " + listen +
                                                 " (in use, or a bad address?)"));
  }
  LogInfo("serving on %s (driver %s, profile %s, allowed: %s)", listen, driver_kind,
          driver->capabilities().profile(), absl::StrJoin(allow_list.identities(), ","));

  std::unique_ptr<livemig::agent::HostReporter> reporter;
  if (!scheduler.empty()) {
    auto ccreds = livemig::MakeChannelCredentials(tls);
    if (!ccreds.ok()) return Fail("TLS", ccreds.status());
    auto channel =
        grpc::CreateCustomChannel(scheduler, *ccreds, livemig::ClientChannelArgs(scheduler_name));
    livemig::agent::HostReporter::Options ro;
    ro.agent_address = advertise.empty() ? listen : advertise;
    ro.interval = absl::Seconds(report_interval_s);
    reporter = std::make_unique<livemig::agent::HostReporter>(
        ro, &core, livemig::registry::v1::HostRegistry::NewStub(channel));
    reporter->Start();
  }

  const int sig = livemig::WaitForShutdown([&] {
    std::vector<std::string> fresh = absl::StrSplit(allow, ',', absl::SkipEmpty());
    absl::StatusOr<std::vector<std::string>> more = std::vector<std::string>();
    if (!allow_file.empty()) more = ReadAllowFile(allow_file);
    if (!more.ok()) {
      LogError("SIGHUP: %s; the allow-list stays as it was (%s)", more.status().message(),
               absl::StrJoin(allow_list.identities(), ","));
      return;
    }
    fresh.insert(fresh.end(), more->begin(), more->end());
    allow_list.Replace(fresh);
    if (auto s = livemig::ValidateTlsFiles(tls, "compute_agent"); !s.ok()) {
      LogError("after SIGHUP: %s", s.message());
    }
    LogInfo("SIGHUP: allow-list reloaded (%s); certificates are re-read from disk",
            absl::StrJoin(fresh, ","));
  });
  LogInfo(
      "signal %d: shutting down (steps in progress finish; transfers continue on the "
      "hypervisor and a restarted agent attaches to them)",
      sig);
  if (reporter) reporter->Stop();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(20));
  LogInfo("stopped");
  // Running transfers belong to the hypervisor; do not wait for them.
  std::_Exit(0);
}
