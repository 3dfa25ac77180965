// scheduler: the live-migration scheduler. Serves the scheduler API (gRPC) and the host registry
// the compute agents report to, applies the database schema at start-up, drives every migration
// through its steps and resumes the ones in flight after a restart. See `scheduler --help`.
#include <sys/resource.h>
#include <unistd.h>

#include <iostream>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/grpc_limits.h"
#include "common/log.h"
#include "common/signals.h"
#include "common/status_map.h"
#include "common/test_hooks.h"
#include "common/tls.h"
#include "db/pg_pool.h"
#include "db/pg_stores.h"
#include "db/schema.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "scheduler/agent_client.h"
#include "scheduler/api_core.h"
#include "scheduler/auth.h"
#include "scheduler/orchestrator.h"
#include "scheduler/rest_server.h"
#include "scheduler/services.h"

namespace {

int Fail(const std::string& what, const absl::Status& s) {
  std::cerr << "scheduler: " << what << ": " << s.message() << "\n";
  const int code = livemig::ExitCodeFor(s.code());
  return code ? code : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "scheduler: the live-migration scheduler of a Xen cloud.\n"
      "Validates requests, records every step in PostgreSQL before it happens, drives the compute\n"
      "agents (mutual TLS) through each migration, and resumes in-flight migrations after a\n"
      "restart. Only this process touches the database."};
  app.set_config("--config", "", "read options from this file (TOML or INI: key = value)");
  // A misspelt key in a config file is an error, not a silently ignored setting.
  app.allow_config_extras(CLI::config_extras_mode::error);
  app.get_formatter()->column_width(44);
  std::string db = std::getenv("LIVEMIG_DB") ? std::getenv("LIVEMIG_DB") : "";
  app.add_option("--db", db, "PostgreSQL connection string (env LIVEMIG_DB)");
  int db_pool = 16, db_pool_control = 4;
  double db_acquire_s = 5, db_statement_s = 10;
  app.add_option("--db-pool", db_pool, "database connections of the API (reads, requests)")
      ->capture_default_str();
  app.add_option("--db-pool-control", db_pool_control,
                 "database connections reserved for the control loop (migrations, leases, host "
                 "reports), which API load cannot take")
      ->capture_default_str();
  app.add_option("--db-acquire-timeout", db_acquire_s,
                 "seconds a call waits for a free database connection, then UNAVAILABLE")
      ->capture_default_str();
  app.add_option("--db-statement-timeout", db_statement_s,
                 "seconds a database statement may run; a call with no answer 5 s later is "
                 "abandoned (UNAVAILABLE), as when the database is unreachable")
      ->capture_default_str();
  std::string listen = "unix:/run/livemig/scheduler-api.sock";
  app.add_option("--listen", listen, "scheduler API address (unix:/path or HOST:PORT)")
      ->capture_default_str();
  std::string registry_listen = "unix:/run/livemig/registry.sock";
  app.add_option("--registry-listen", registry_listen,
                 "host registry address the agents report to (mutual TLS)")
      ->capture_default_str();
  livemig::TlsFiles tls;
  app.add_option("--tls-ca", tls.ca, "cluster CA certificate (PEM)");
  app.add_option("--tls-cert", tls.cert, "the scheduler's certificate (PEM; CN 'scheduler')");
  app.add_option("--tls-key", tls.key, "the scheduler's private key (PEM)");
  app.add_flag("--insecure-plaintext", tls.insecure,
               "DEVELOPMENT ONLY: no TLS to the agents and on the registry");
  std::string http_listen, tokens_file;
  bool no_auth = false;
  app.add_option("--http-listen", http_listen,
                 "REST API and dashboard address HOST:PORT (e.g. 127.0.0.1:8080); empty: off");
  app.add_option("--tokens-file", tokens_file,
                 "API tokens, one per line: '<token> <role> <name>' with role operator or reader; "
                 "re-read on SIGHUP");
  app.add_flag("--no-auth", no_auth,
               "DEVELOPMENT ONLY: serve the APIs without tokens (everyone is an operator)");
  // The client-facing APIs (gRPC --listen and HTTP --http-listen): TLS on TCP.
  std::string api_cert, api_key;
  bool api_plaintext = false;
  app.add_option("--api-tls-cert", api_cert,
                 "server certificate (PEM) of the gRPC API and HTTP on TCP (deploy/pki.sh "
                 "issue-server); without it, TCP listeners must be on loopback. A renewal "
                 "written over the files is served without a restart (within about 6 s)");
  app.add_option("--api-tls-key", api_key, "its private key (PEM)");
  app.add_flag("--api-insecure-plaintext", api_plaintext,
               "NOT FOR PRODUCTION: allow the APIs in plaintext on a non-loopback TCP address");
  // The HTTP server's bounds (common/http_server.h).
  livemig::http::Options http_o;
  int64_t header_ms = 10000, body_ms = 30000, idle_ms = 30000, queue_ms = 2000;
  // An option of the `group` section of --help, shown with its default.
  auto in_group = [&app](const std::string& group) {
    return [&app, group](const std::string& name, auto& value, const std::string& help) {
      app.add_option(name, value, help)->capture_default_str()->group(group);
    };
  };
  auto http_limit = in_group("HTTP limits");
  http_limit("--http-max-connections", http_o.max_connections,
             "connections served at once; more wait in a queue");
  http_limit("--http-max-waiting", http_o.max_waiting,
             "connections that may wait for a slot; beyond: 503 at once");
  http_limit("--http-queue-timeout-ms", queue_ms, "longest wait for a slot, then 503");
  http_limit("--http-max-per-client", http_o.max_per_client,
             "connections per client address; beyond: 503");
  http_limit("--http-max-handshakes", http_o.max_handshakes,
             "TLS handshakes in progress at once (a connection counts against "
             "--http-max-connections once its handshake is done); beyond: refused at accept");
  http_limit("--http-max-line", http_o.max_line,
             "bytes in the request line (414) and in each header line (431)");
  http_limit("--http-max-headers", http_o.max_headers, "bytes of all headers (431)");
  http_limit("--http-max-body", http_o.max_body, "bytes of a body, chunked included (413)");
  http_limit("--http-header-timeout-ms", header_ms,
             "deadline for a request's headers, from the connection's start or a keep-alive "
             "request's first byte (408)");
  http_limit("--http-body-timeout-ms", body_ms, "deadline for a request's body (408)");
  http_limit("--http-idle-timeout-ms", idle_ms, "an idle keep-alive connection is closed");
  http_limit("--http-threads", http_o.threads, "threads serving HTTP");
  // The gRPC servers' bounds (common/grpc_limits.h) and WatchMigration's caps (services.h).
  livemig::ServerLimits grpc_limits;
  livemig::sched::WatchLimits watch_limits;
  int64_t grpc_memory_mib = grpc_limits.max_memory_bytes >> 20;
  auto grpc_limit = in_group("gRPC limits (the API and the host registry, each)");
  grpc_limit("--grpc-max-threads", grpc_limits.max_threads,
             "threads of a gRPC server; a call arriving while all are busy gets "
             "RESOURCE_EXHAUSTED at once");
  grpc_limit("--grpc-max-memory-mib", grpc_memory_mib, "memory of a gRPC server's buffers");
  grpc_limit("--grpc-max-streams", grpc_limits.max_concurrent_streams,
             "calls in flight on one client connection (HTTP/2 streams); more wait on the "
             "client's side");
  grpc_limit("--grpc-max-message-bytes", grpc_limits.max_receive_message_bytes,
             "largest request message accepted (RESOURCE_EXHAUSTED beyond)");
  grpc_limit("--watch-max-streams", watch_limits.per_principal,
             "WatchMigration streams one token may hold open; beyond: RESOURCE_EXHAUSTED");
  grpc_limit("--watch-max-streams-total", watch_limits.total,
             "WatchMigration streams open at once, all tokens together (each holds a "
             "thread: at most --grpc-max-threads minus 8)");
  livemig::sched::OrchestratorOptions o;
  app.add_option("--scheduler-id", o.scheduler_id,
                 "owner name on migration leases (default: scheduler-<host>-<pid>-<random>)");
  double down_s = 60, lease_s = 15, report_s = 10, progress_s = 1, agent_deadline_s = 30;
  app.add_option("--service-down-time", down_s, "seconds without a report before a host is down")
      ->capture_default_str();
  app.add_option("--lease", lease_s, "migration lease in seconds (renewed every third)")
      ->capture_default_str();
  app.add_option("--report-interval", report_s, "seconds between agent reports (told to agents)")
      ->capture_default_str();
  app.add_option("--progress-write-interval", progress_s,
                 "at most one progress write per migration per this many seconds")
      ->capture_default_str();
  app.add_option("--agent-deadline", agent_deadline_s, "deadline of each agent call in seconds")
      ->capture_default_str();
  double dry_run_deadline_s = absl::ToDoubleSeconds(o.dry_run_deadline);
  app.add_option("--dry-run-deadline", dry_run_deadline_s,
                 "seconds a dry run (CheckMigration) may take in all, its agent calls sharing it")
      ->capture_default_str();
  app.add_option("--dry-run-max-concurrent", o.max_concurrent_dry_runs,
                 "dry runs running at once (each asks agents); one more is refused at once with "
                 "RESOURCE_EXHAUSTED (REST: 429)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  app.add_option("--max-outbound-per-host", o.max_outbound_per_host,
                 "concurrent migrations out of one host")
      ->capture_default_str();
  app.add_option("--max-inbound-per-host", o.max_inbound_per_host,
                 "concurrent migrations into one host")
      ->capture_default_str();
  app.add_option("--max-total", o.max_total, "concurrent migrations in total")
      ->capture_default_str();
  int retention_days = 30;
  app.add_option("--retention-days", retention_days, "purge finished migrations after this")
      ->capture_default_str();
  int replay_agent_steps = 1;
  app.add_option("--test-replay-agent-steps", replay_agent_steps,
                 "FOR TESTS ONLY: deliver every agent step RPC this many times and log whether "
                 "the answers agree (idempotency check; never in production)")
      ->check(CLI::Range(1, 5))
      ->group("Testing (not for production)");
  CLI11_PARSE(app, argc, argv);

  livemig::BlockShutdownSignals();
  livemig::SetLogComponent("scheduler");
  if (tls.insecure) {
    livemig::LogWarning(
        "--insecure-plaintext: agents and reports are not authenticated; "
        "development only");
  }
  if (auto s = livemig::ValidateTlsFiles(tls, "scheduler"); !s.ok()) return Fail("TLS", s);

  http_o.header_timeout = absl::Milliseconds(header_ms);
  http_o.body_timeout = absl::Milliseconds(body_ms);
  http_o.idle_timeout = absl::Milliseconds(idle_ms);
  http_o.queue_timeout = absl::Milliseconds(queue_ms);
  http_o.tls_cert = api_cert;
  http_o.tls_key = api_key;
  if (auto s = livemig::http::ValidateOptions(http_o); !s.ok()) return Fail("HTTP", s);
  grpc_limits.max_memory_bytes = grpc_memory_mib << 20;
  if (auto s = livemig::ValidateServerLimits(grpc_limits); !s.ok()) return Fail("gRPC", s);
  if (watch_limits.per_principal < 1 || watch_limits.total < 1 ||
      watch_limits.total > grpc_limits.max_threads - 8) {
    return Fail("gRPC", absl::InvalidArgumentError(absl::StrCat(
                            "--watch-max-streams must be at least 1 and --watch-max-streams-total "
                            "1 to --grpc-max-threads minus 8 (",
                            grpc_limits.max_threads - 8, "), got ", watch_limits.per_principal,
                            " and ", watch_limits.total)));
  }
  if (dry_run_deadline_s <= 0) {
    return Fail("--dry-run-deadline", absl::InvalidArgumentError("must be positive"));
  }
  // A REST dry run waits for agents on one of the HTTP threads: keep threads for other calls.
  if (!http_listen.empty() && o.max_concurrent_dry_runs >= http_o.threads) {
    return Fail(
        "--dry-run-max-concurrent",
        absl::InvalidArgumentError(absl::StrCat(
            "must be below --http-threads (", http_o.threads, "), got ", o.max_concurrent_dry_runs,
            ": each REST dry run holds an HTTP thread while it waits for agents")));
  }
  const bool api_tls = !api_cert.empty();
  if (auto s = livemig::CheckApiListener("--listen", listen, api_tls, api_plaintext); !s.ok()) {
    return Fail("API", s);
  }
  if (!http_listen.empty()) {
    if (auto s = livemig::CheckApiListener("--http-listen", http_listen, api_tls, api_plaintext);
        !s.ok()) {
      return Fail("HTTP", s);
    }
  }
  // Every connection is a descriptor: allow what the HTTP caps and the pool may need.
  if (rlimit nofile; getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }

  if (tokens_file.empty() && !no_auth) {
    return Fail("authentication",
                absl::InvalidArgumentError("pass --tokens-file (create tokens with deploy/pki.sh "
                                           "token), or --no-auth for development only"));
  }
  if (no_auth) livemig::LogWarning("--no-auth: the APIs accept every caller as an operator");
  livemig::SetTestPointProcess("scheduler");
  if (livemig::TestHooksEnabled()) {
    livemig::LogWarning("test hooks are ON (LIVEMIG_TEST_HOOK_DIR is set): for tests only");
  }
  auto tokens = livemig::sched::TokenStore::Load(no_auth ? "" : tokens_file);
  if (!tokens.ok()) return Fail("tokens", tokens.status());

  // Two pools (db/README.md, "Connection pools"): the API's, and the control loop's.
  livemig::db::PgPool::Options po;
  po.conninfo = db;
  po.size = db_pool;
  po.acquire_timeout = absl::Seconds(db_acquire_s);
  po.statement_timeout = absl::Seconds(db_statement_s);
  po.name = "API";
  auto pool = livemig::db::PgPool::Create(po);
  if (!pool.ok()) return Fail("database", pool.status());
  po.size = db_pool_control;
  po.name = "control";
  po.size_flag = "--db-pool-control";
  auto control_pool = livemig::db::PgPool::Create(po);
  if (!control_pool.ok()) return Fail("database", control_pool.status());
  auto schema = livemig::db::ApplySchema(**pool);
  if (!schema.ok()) return Fail("database schema", schema.status());
  livemig::LogInfo("database schema at version %d%s", schema->version_after,
                   schema->applied.empty() ? "" : " (upgraded now)");
  livemig::db::PgStores stores(pool->get());
  livemig::db::PgStores control(control_pool->get());
  auto purged = stores.migrations().PurgeFinished(absl::Now() - absl::Hours(24) * retention_days);
  if (purged.ok() && *purged > 0) {
    livemig::LogInfo("purged %d migration(s) finished more than %d days ago", *purged,
                     retention_days);
  }

  livemig::sched::GrpcAgentClientFactory::Options ao;
  ao.tls = tls;
  ao.deadline = absl::Seconds(agent_deadline_s);
  livemig::sched::GrpcAgentClientFactory agents(ao);
  livemig::sched::AgentClientFactory* agent_factory = &agents;
  std::unique_ptr<livemig::sched::ReplayingAgentClientFactory> replaying;
  if (replay_agent_steps > 1) {
    replaying =
        std::make_unique<livemig::sched::ReplayingAgentClientFactory>(&agents, replay_agent_steps);
    agent_factory = replaying.get();
    livemig::LogWarning(
        "--test-replay-agent-steps=%d: every agent step is sent %d times (tests only)",
        replay_agent_steps, replay_agent_steps);
  }
  o.service_down_time = absl::Seconds(down_s);
  o.lease = absl::Seconds(lease_s);
  o.progress_write = absl::Seconds(progress_s);
  o.dry_run_deadline = absl::Seconds(dry_run_deadline_s);
  livemig::sched::Orchestrator orchestrator(o, &control.migrations(), &control.hosts(),
                                            &control.instances(), agent_factory);
  livemig::sched::ApiCore api(&stores.migrations(), &stores.hosts(), &stores.instances(),
                              &stores.evacuations(), &orchestrator, &control.evacuations());
  livemig::sched::SchedulerApiService api_service(&api, tokens->get(), watch_limits);
  livemig::sched::HostRegistryService registry(&control.hosts(), tls.insecure,
                                               absl::Seconds(report_s));

  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder api_builder;
  if (listen.rfind("unix:", 0) == 0) unlink(listen.substr(5).c_str());
  std::shared_ptr<grpc::ServerCredentials> api_creds = grpc::InsecureServerCredentials();
  std::unique_ptr<livemig::ApiServerTls> api_server_tls;  // outlives api_server (declared later)
  if (api_tls && listen.rfind("unix:", 0) != 0) {
    auto c = livemig::MakeApiServerCredentials(api_cert, api_key);
    if (!c.ok()) return Fail("API TLS", c.status());
    api_server_tls = *std::move(c);
    api_creds = api_server_tls->credentials();
  }
  api_builder.AddListeningPort(listen, api_creds);
  api_builder.RegisterService(&api_service);
  grpc_limits.name = "scheduler-api";
  livemig::ApplyServerLimits(api_builder, grpc_limits);
  auto api_server = api_builder.BuildAndStart();
  if (!api_server) return Fail("listen", absl::UnavailableError("cannot listen on " + listen));

  auto creds = livemig::MakeServerCredentials(tls);
  if (!creds.ok()) return Fail("TLS", creds.status());
  grpc::ServerBuilder reg_builder;
  if (registry_listen.rfind("unix:", 0) == 0) unlink(registry_listen.substr(5).c_str());
  reg_builder.AddListeningPort(registry_listen, *creds);
  reg_builder.RegisterService(&registry);
  grpc_limits.name = "scheduler-registry";
  livemig::ApplyServerLimits(reg_builder, grpc_limits);
  auto reg_server = reg_builder.BuildAndStart();
  if (!reg_server) {
    return Fail("listen", absl::UnavailableError("cannot listen on " + registry_listen));
  }
  std::unique_ptr<livemig::sched::RestServer> rest;
  if (!http_listen.empty()) {
    auto colon = http_listen.rfind(':');
    int port = 0;
    if (colon == std::string::npos || !absl::SimpleAtoi(http_listen.substr(colon + 1), &port)) {
      return Fail("--http-listen",
                  absl::InvalidArgumentError("expected HOST:PORT, got " + http_listen));
    }
    rest = std::make_unique<livemig::sched::RestServer>(&api, tokens->get(), http_o);
    if (auto s = rest->Start(http_listen.substr(0, colon), port); !s.ok()) return Fail("HTTP", s);
    livemig::LogInfo("REST API and dashboard on %s://%s:%d/", api_tls ? "https" : "http",
                     http_listen.substr(0, colon), rest->port());
  }
  orchestrator.Start();
  api.ResumeEvacuations();
  livemig::LogInfo("scheduler %s serving the API on %s and the host registry on %s",
                   orchestrator.options().scheduler_id, listen, registry_listen);

  livemig::WaitForShutdown([&] {
    if ((*tokens)->enabled()) {
      auto s = (*tokens)->Reload();
      if (s.ok()) {
        livemig::LogInfo("SIGHUP: tokens reloaded from %s", tokens_file);
      } else {
        livemig::LogError("SIGHUP: tokens not reloaded, the previous ones stay: %s", s.message());
      }
    }
    livemig::LogInfo("SIGHUP: certificates are re-read from disk by the TLS file watcher");
    if (auto s = livemig::ValidateTlsFiles(tls, "scheduler"); !s.ok()) {
      livemig::LogError("%s", s.message());
    }
  });
  livemig::LogInfo(
      "shutting down: no new requests; migrations in flight stop at a step "
      "boundary and are resumed by the next scheduler");
  if (rest) rest->Stop();
  api_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  reg_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  orchestrator.Stop();
  api_server_tls.reset();  // stops its watcher and removes its private copy (no destructors below)
  livemig::LogInfo("stopped");
  std::_Exit(0);
}
