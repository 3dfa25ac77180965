// Dry runs cannot make the scheduler fan out to the agents without bound, against the real
// binaries (PostgreSQL, the scheduler with API tokens and its REST API, three fake agents):
//
//  - the destination's agent hangs (SIGSTOP), so that each dry run to it waits for its share of
//    --dry-run-deadline; 4 dry runs of a reader over REST hold (--dry-run-max-concurrent 4), then
//    16 more at once (8 gRPC, 8 REST): every one is refused at once, RESOURCE_EXHAUSTED / 429
//    naming the cap and its flag, while the 4 still run: 20 in flight, at most 4 running
//    (livemig_dry_runs_running_max in /metrics);
//  - meanwhile the REST server answers /healthz and GET /v1/hosts (the held dry runs hold 4 of
//    its 8 threads, not all), gRPC answers, and a migration to another host completes;
//  - the 4 held dry runs answer, each with the hung agent's check failed within its share;
//    once the agent is back, dry runs pass again over both APIs.
#include <signal.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "driver/fake_driver.h"
#include "grpcpp/grpcpp.h"
#define CPPHTTPLIB_OPENSSL_SUPPORT  // the HTTP API is served over HTTPS
#include "httplib.h"
#include "integration_tests/scheduler_e2e/e2e.h"
#include "integration_tests/scheduler_e2e/fake_cloud.h"
#include "testing/process.h"
#include "testing/run_command.h"

namespace livemig::e2e {
namespace {

constexpr char kOp[] = "op-token-dryrun-0123456789abcdef012";
constexpr char kReader[] = "rd-token-dryrun-0123456789abcdef012";
constexpr char kChecked[] = "5d7c0000-0000-4000-8000-000000000001";   // dry runs' instance
constexpr char kMigrated[] = "5d7c0000-0000-4000-8000-000000000002";  // migrated meanwhile
constexpr int kCap = 4;                                               // --dry-run-max-concurrent
constexpr int kDeadlineS = 15;  // --dry-run-deadline: a dry run to the hung agent holds ~5 s
constexpr int kMore = 16;       // fired while kCap hold

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

struct DryRunCloud {
  std::string dir = testing::MakeShortTempDir("dryrun");
  std::unique_ptr<Cloud> cloud;
  int port = testing::FreePort();
  std::string state = dir + "/fake";
  std::unique_ptr<driver::FakeHypervisor> hv;
  std::shared_ptr<grpc::Channel> channel;

  DryRunCloud() {
    std::ofstream(dir + "/tokens") << kOp << " operator ops-dry\n"
                                   << kReader << " reader dash-dry\n";
    cloud = std::make_unique<Cloud>(dir);
    cloud->set_token(kOp);
    cloud->StartScheduler(absl::StrCat("--tokens-file ", dir, "/tokens --http-listen 127.0.0.1:",
                                       port, " --report-interval 1 --dry-run-max-concurrent ", kCap,
                                       " --dry-run-deadline ", kDeadlineS, cloud->ApiTlsFlags()));
    hv = std::make_unique<driver::FakeHypervisor>(state);
    StartFakeAgents(*cloud, *hv, state, {"host-a", "host-b", "host-c"});
    REQUIRE(hv->CreateDomain("host-a", kChecked, "checked-1", 64).ok());
    REQUIRE(hv->CreateDomain("host-a", kMigrated, "migrated-1", 64).ok());
    REQUIRE(cloud->WaitInstanceOn(kChecked, "host-a", absl::Seconds(20)));
    REQUIRE(cloud->WaitInstanceOn(kMigrated, "host-a", absl::Seconds(20)));
    channel = grpc::CreateChannel("unix:" + dir + "/api.sock", grpc::InsecureChannelCredentials());
  }
  ~DryRunCloud() {
    if (cloud && cloud->agent("host-b")) cloud->agent("host-b")->Signal(SIGCONT);
    channel.reset();
    cloud.reset();
    testing::RunCommand("rm -rf " + dir).IgnoreError();
  }

  // A dry run of kChecked to host-b with the reader's token over gRPC.
  std::pair<grpc::Status, sv1::CheckMigrationResponse> GrpcDryRun() {
    auto stub = sv1::SchedulerApi::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(kDeadlineS + 10)));
    ctx.AddMetadata("authorization", std::string("Bearer ") + kReader);
    sv1::CheckMigrationRequest r;
    r.set_instance_uuid(kChecked);
    r.set_destination("host-b");
    sv1::CheckMigrationResponse out;
    grpc::Status s = stub->CheckMigration(&ctx, r, &out);
    return {s, out};
  }
  // The same over REST: the HTTP status and the body (status -1: no answer).
  std::pair<int, std::string> RestDryRun() {
    return Rest("POST", "/v1/migrations/check",
                absl::StrCat(R"({"instance_uuid":")", kChecked, R"(","destination":"host-b"})"));
  }
  std::pair<int, std::string> Rest(const std::string& method, const std::string& path,
                                   const std::string& body = "") {
    httplib::SSLClient c("127.0.0.1", port);
    c.set_ca_cert_path(cloud->ca_pem().c_str());
    c.enable_server_certificate_verification(true);
    c.set_read_timeout(kDeadlineS + 10, 0);
    httplib::Headers h = {{"Authorization", std::string("Bearer ") + kReader}};
    auto r = method == "GET" ? c.Get(path.c_str(), h)
                             : c.Post(path.c_str(), h, body, "application/json");
    if (!r) return {-1, httplib::to_string(r.error())};
    return {r->status, r->body};
  }
  // A value of /metrics (the first line starting with `series` followed by a space).
  int64_t Metric(const std::string& series) {
    auto [status, body] = Rest("GET", "/metrics");
    REQUIRE(status == 200);
    std::istringstream lines(body);
    for (std::string line; std::getline(lines, line);) {
      if (line.rfind(series + " ", 0) != 0) continue;
      int64_t v = -1;
      REQUIRE(absl::SimpleAtoi(line.substr(series.size() + 1), &v));
      return v;
    }
    FAIL("no " << series << " in /metrics:\n" << body);
    return -1;
  }
};

bool NamesCap(const std::string& message) {
  return absl::StrContains(message, absl::StrCat("--dry-run-max-concurrent ", kCap));
}

TEST_CASE("dry-run cap: 20 concurrent dry runs, at most 4 run, the rest refused at once") {
  DryRunCloud c;
  // The path works while every agent answers: a dry run to host-b passes, in milliseconds.
  {
    const absl::Time t0 = absl::Now();
    auto [s, out] = c.GrpcDryRun();
    INFO(s.error_message());
    REQUIRE(s.ok());
    CHECK(out.passed());
    printf("a dry run with every agent answering: passed in %.0f ms\n", Ms(absl::Now() - t0));
  }
  REQUIRE(c.hv->SetTransferDuration("host-a", absl::Seconds(3)).ok());
  StopAgentOutsideState(*c.cloud, *c.hv, "host-b");  // its agent hangs: calls to it wait

  // Phase 1: kCap dry runs over REST, held by the hung agent.
  struct Held {
    int status = 0;
    std::string body;
    absl::Duration took;
  };
  std::vector<Held> held(kCap);
  std::vector<std::thread> held_threads;
  const absl::Time held_start = absl::Now();
  for (int i = 0; i < kCap; ++i) {
    held_threads.emplace_back([&, i] {
      const absl::Time t0 = absl::Now();
      std::tie(held[i].status, held[i].body) = c.RestDryRun();
      held[i].took = absl::Now() - t0;
    });
  }
  const bool all_running =
      testing::WaitFor([&] { return c.Metric("livemig_dry_runs_running") == kCap; },
                       absl::Seconds(kDeadlineS / 3 - 1));
  INFO(c.cloud->SchedulerLog());
  REQUIRE(all_running);
  const absl::Duration held_after = absl::Now() - held_start;

  // Meanwhile the REST server (4 of its 8 threads held) and gRPC answer other calls.
  const absl::Time h0 = absl::Now();
  auto [health, health_body] = c.Rest("GET", "/healthz");
  const absl::Duration health_took = absl::Now() - h0;
  const absl::Time l0 = absl::Now();
  auto [hosts, hosts_body] = c.Rest("GET", "/v1/hosts");
  const absl::Duration hosts_took = absl::Now() - l0;
  grpc::ClientContext ctx;
  c.cloud->Prepare(&ctx, absl::Seconds(5));
  sv1::ListHostsResponse lh;
  const absl::Time g0 = absl::Now();
  const grpc::Status gs = c.cloud->api().ListHosts(&ctx, {}, &lh);
  const absl::Duration grpc_took = absl::Now() - g0;

  // A migration to another host, started while the cap is held.
  auto m = c.cloud->Migrate(kMigrated, "host-c");
  INFO(m.status().ToString());
  REQUIRE(m.ok());
  const std::string migration = m->migration().id();

  // Phase 2: kMore dry runs at once, half gRPC, half REST, while the kCap still run.
  struct More {
    bool grpc;
    int code;  // gRPC status code or HTTP status
    std::string message;
    absl::Duration took;
  };
  std::vector<More> more(kMore);
  std::vector<std::thread> more_threads;
  absl::Mutex go_mu;
  bool go = false;
  for (int i = 0; i < kMore; ++i) {
    more_threads.emplace_back([&, i] {
      {
        absl::MutexLock l(&go_mu);
        go_mu.Await(absl::Condition(&go));
      }
      const absl::Time t0 = absl::Now();
      more[i].grpc = i % 2 == 0;
      if (more[i].grpc) {
        auto [s, out] = c.GrpcDryRun();
        more[i].code = s.error_code();
        more[i].message = s.error_message();
      } else {
        std::tie(more[i].code, more[i].message) = c.RestDryRun();
      }
      more[i].took = absl::Now() - t0;
    });
  }
  {
    absl::MutexLock l(&go_mu);
    go = true;
  }
  for (auto& t : more_threads) t.join();
  const int64_t running_during = c.Metric("livemig_dry_runs_running");

  for (auto& t : held_threads) t.join();
  const sv1::Migration done = c.cloud->WaitTerminal(migration, absl::Seconds(30));

  int refused_grpc = 0, refused_rest = 0, other = 0;
  absl::Duration slowest_refusal = absl::ZeroDuration();
  std::string example, other_error;
  for (const auto& r : more) {
    const bool refused = r.grpc ? r.code == grpc::StatusCode::RESOURCE_EXHAUSTED : r.code == 429;
    if (refused && NamesCap(r.message)) {
      (r.grpc ? refused_grpc : refused_rest)++;
      slowest_refusal = std::max(slowest_refusal, r.took);
      if (r.grpc) example = r.message;
    } else {
      ++other;
      other_error = absl::StrCat(r.grpc ? "gRPC " : "REST ", r.code, ": ", r.message);
    }
  }
  int held_answered = 0;
  absl::Duration held_min = absl::InfiniteDuration(), held_max = absl::ZeroDuration();
  for (const auto& h : held) {
    INFO(h.body);
    // Each answers 200 with host-b failed at the agent check: its agent did not answer.
    CHECK(h.status == 200);
    CHECK(absl::StrContains(h.body, "agent_dest"));
    CHECK(absl::StrContains(h.body, "Deadline Exceeded"));
    CHECK_FALSE(absl::StrContains(h.body, R"("chosen_host")"));  // none passed
    held_answered += h.status == 200;
    held_min = std::min(held_min, h.took);
    held_max = std::max(held_max, h.took);
  }
  const int64_t most = c.Metric("livemig_dry_runs_running_max");
  const int64_t refused_total = c.Metric(R"(livemig_dry_runs_total{outcome="refused"})");
  printf(
      "%d dry runs over REST held by a hung agent (all running %.0f ms after they were sent), "
      "then %d more at once: %d refused over gRPC (RESOURCE_EXHAUSTED) and %d over REST (429), "
      "the slowest refusal in %.0f ms, %d otherwise; running while they were refused: %lld\n",
      kCap, Ms(held_after), kMore, refused_grpc, refused_rest, Ms(slowest_refusal), other,
      static_cast<long long>(running_during));
  printf("the refusal: %s\n", example.c_str());
  printf(
      "meanwhile: GET /healthz %d in %.0f ms, GET /v1/hosts %d in %.0f ms, gRPC ListHosts %s in "
      "%.0f ms; the migration to host-c: %s\n",
      health, Ms(health_took), hosts, Ms(hosts_took), gs.ok() ? "OK" : gs.error_message().c_str(),
      Ms(grpc_took), v1::MigrationStatus_Name(done.status()).c_str());
  printf(
      "the %d held dry runs answered 200 in %.1f-%.1f s (host-b's agent check failed within its "
      "share of %d s); /metrics: livemig_dry_runs_running_max %lld, refused %lld\n",
      held_answered, absl::ToDoubleSeconds(held_min), absl::ToDoubleSeconds(held_max), kDeadlineS,
      static_cast<long long>(most), static_cast<long long>(refused_total));

  INFO(other_error);
  CHECK(other == 0);
  CHECK(refused_grpc == kMore / 2);
  CHECK(refused_rest == kMore / 2);
  CHECK(slowest_refusal < absl::Seconds(2));
  CHECK(running_during == kCap);
  CHECK(most == kCap);
  CHECK(refused_total == kMore);
  CHECK(health == 200);
  CHECK(health_took < absl::Seconds(2));
  CHECK(hosts == 200);
  CHECK(hosts_took < absl::Seconds(2));
  CHECK(gs.ok());
  CHECK(grpc_took < absl::Seconds(2));
  CHECK(done.status() == v1::MIGRATION_STATUS_COMPLETED);
  // The held ones waited for the hung agent (their share of the deadline), no longer than it.
  CHECK(held_min > absl::Seconds(2));
  CHECK(held_max < absl::Seconds(kDeadlineS));

  // The agent back: the slots are free and dry runs pass again over both APIs (the scheduler's
  // connection to the agent may first have to be made again: polled).
  c.cloud->agent("host-b")->Signal(SIGCONT);
  int after = 0;
  grpc::Status last_status;
  sv1::CheckMigrationResponse last;
  const bool passes = testing::WaitFor(
      [&] {
        ++after;
        std::tie(last_status, last) = c.GrpcDryRun();
        return last_status.ok() && last.passed();
      },
      absl::Seconds(20));
  INFO(last_status.error_message());
  INFO(last.DebugString());
  CHECK(passes);
  auto [rest, rest_body] = c.RestDryRun();
  ++after;
  INFO(rest_body);
  CHECK(rest == 200);
  CHECK(absl::StrContains(rest_body, R"("passed":true)"));
  CHECK(c.Metric("livemig_dry_runs_running") == 0);
  CHECK(c.Metric(R"(livemig_dry_runs_total{outcome="run"})") == 1 + kCap + after);
  CHECK(c.Metric(R"(livemig_dry_runs_total{outcome="refused"})") == kMore);
  printf("agent back: dry runs pass again over gRPC (after %d tries) and REST\n", after - 1);
}

}  // namespace
}  // namespace livemig::e2e
