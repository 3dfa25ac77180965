// The scheduler's client-facing certificate (--api-tls-cert/--api-tls-key) renewed on disk while
// the scheduler runs, as an operator renews it (deploy/pki.sh issue-server): the gRPC API on TCP
// and the HTTP server (REST, Nova, dashboard, /metrics) serve the new certificate to new
// connections without a restart, and clients that trust the CA still get answers. A renewal that
// cannot be used (a certificate file that does not parse) changes nothing: the previous
// certificate is still served on both listeners, and the log says why.
#include <catch2/catch.hpp>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "integration_tests/scheduler_e2e/e2e.h"
#include "proto/scheduler.grpc.pb.h"
#include "testing/process.h"
#include "testing/raw_http.h"
#include "testing/run_command.h"

namespace livemig::e2e {
namespace {

// The SHA-256 fingerprint of the certificate served on 127.0.0.1:`port` once verified against
// `ca` ("" when no verified handshake happened).
std::string Served(int port, const std::string& ca) {
  auto r = testing::RunCommand(absl::StrCat(
      "echo | timeout 10 openssl s_client -connect 127.0.0.1:", port, " -alpn h2 -CAfile ", ca,
      " -verify_return_error 2>/dev/null | openssl x509 -noout -fingerprint -sha256 2>/dev/null"));
  return r.ok() ? std::string(absl::StripAsciiWhitespace(*r)) : "";
}

// The same fingerprint of the certificate file `pem`.
std::string OnDisk(const std::string& pem) {
  auto r =
      testing::RunCommand(absl::StrCat("openssl x509 -in ", pem, " -noout -fingerprint -sha256"));
  REQUIRE(r.ok());
  return std::string(absl::StripAsciiWhitespace(*r));
}

TEST_CASE("a renewed API certificate is served on gRPC and HTTP without a restart") {
  const std::string dir = testing::MakeShortTempDir("certreload");
  Cloud cloud(dir);
  const std::string tls_flags = cloud.ApiTlsFlags();  // issues pki/api.pem and api.key
  const std::string ca = cloud.ca_pem(), cert = cloud.pki() + "/api.pem";
  const int grpc_port = testing::FreePort(), http_port = testing::FreePort();
  // Its private copy of the certificate for gRPC goes to $TMPDIR: here, to look at it.
  const std::string tmp = dir + "/tmp";
  REQUIRE(testing::RunCommand("mkdir -m 700 " + tmp).ok());
  testing::ChildProcess sched(
      absl::StrCat("env TMPDIR=", tmp, " ", testing::RunfilePath("scheduler/scheduler"), " --db '",
                   cloud.db(), "' --listen 127.0.0.1:", grpc_port,
                   " --http-listen 127.0.0.1:", http_port, " --registry-listen unix:", dir,
                   "/registry.sock --tls-ca ", ca, " --tls-cert ", cloud.pki(),
                   "/scheduler.pem --tls-key ", cloud.pki(), "/scheduler.key --no-auth", tls_flags),
      dir + "/scheduler.log");
  const std::string first = OnDisk(cert);
  {
    const bool up = testing::WaitFor(
        [&] {
          return !sched.Running() ||
                 (Served(grpc_port, ca) == first && Served(http_port, ca) == first);
        },
        absl::Seconds(30));
    INFO(sched.LogTail(40));
    REQUIRE(up);
    REQUIRE(sched.Running());
  }
  const pid_t pid = sched.pid();

  // Renewed as pki.sh renews it: the old pair removed, a new key and certificate written.
  REQUIRE(testing::RunCommand(absl::StrCat("rm ", cert, " ", cloud.pki(), "/api.key && ",
                                           testing::RunfilePath("deploy/pki.sh"), " issue-server ",
                                           cloud.pki(), " api"))
              .ok());
  const std::string second = OnDisk(cert);
  REQUIRE(second != first);
  std::string on_grpc, on_http;
  const bool renewed = testing::WaitFor(
      [&] {
        on_grpc = Served(grpc_port, ca);
        on_http = Served(http_port, ca);
        return on_grpc == second && on_http == second;
      },
      absl::Seconds(30));
  INFO("first " << first << "\nsecond " << second << "\ngRPC serves " << on_grpc << "\nHTTP serves "
                << on_http << "\n"
                << sched.LogTail(40));
  REQUIRE(renewed);
  CHECK(sched.Running());
  CHECK(sched.pid() == pid);  // the same process: no restart
  CHECK(absl::StrContains(sched.LogTail(200), "reloaded: it changed on disk"));

  // Clients that trust the CA get answers from both listeners.
  auto health = testing::RawTlsExchange(http_port, ca,
                                        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                        "Connection: close\r\n\r\n");
  INFO(health.status().ToString());
  REQUIRE(health.ok());
  CHECK(health->status == 200);
  grpc::SslCredentialsOptions ssl;
  {
    std::ifstream in(ca);
    ssl.pem_root_certs.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto stub = sv1::SchedulerApi::NewStub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", grpc_port), grpc::SslCredentials(ssl)));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  sv1::ListHostsResponse hosts;
  const grpc::Status listed = stub->ListHosts(&ctx, {}, &hosts);
  INFO(listed.error_message());
  CHECK(listed.ok());

  // A renewal that cannot be used: the certificate file no longer parses. Both listeners keep
  // the previous certificate and say why in the log.
  std::ofstream(cert) << "-----BEGIN CERTIFICATE-----\nnot a certificate\n"
                         "-----END CERTIFICATE-----\n";
  const bool logged = testing::WaitFor(
      [&] {
        Served(http_port, ca);  // a new connection makes the HTTP server look at the files
        const std::string log = sched.LogTail(200);
        return absl::StrContains(log, "HTTP: the TLS certificate changed on disk but cannot be") &&
               absl::StrContains(log, "gRPC API: the TLS certificate changed on disk but cannot");
      },
      absl::Seconds(20));
  INFO(sched.LogTail(40));
  CHECK(logged);
  // gRPC's watcher looks every 5 s: over 7 s, every new connection still gets the second one.
  const absl::Time until = absl::Now() + absl::Seconds(7);
  while (absl::Now() < until) {
    REQUIRE(Served(grpc_port, ca) == second);
    REQUIRE(Served(http_port, ca) == second);
  }
  CHECK(sched.Running());
  // The copy (a private directory) exists while the scheduler runs and is gone once it stops.
  auto copies = testing::RunCommand(absl::StrCat("ls ", tmp));
  REQUIRE(copies.ok());
  CHECK(absl::StartsWith(*copies, "livemig-api-tls-"));
  CHECK(sched.Stop() == 0);
  copies = testing::RunCommand(absl::StrCat("ls ", tmp));
  REQUIRE(copies.ok());
  CHECK(*copies == "");
  testing::RunCommand("rm -rf " + dir).IgnoreError();
}

}  // namespace
}  // namespace livemig::e2e
