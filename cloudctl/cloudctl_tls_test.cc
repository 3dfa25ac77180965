// cloudctl's TLS (--ca, --server-name, LIVEMIG_CA, `ca = ...`): the real cloudctl binary against
// a small in-process gRPC server implementing the scheduler API (ListHosts only) on
// 127.0.0.1:<free port>, with the API server certificate of `deploy/pki.sh issue-server` (SANs
// DNS:localhost, IP:127.0.0.1). Verified TLS succeeds; plaintext to the TLS listener, a CA of
// another PKI, a name not in the certificate, TLS to a plaintext listener and an unreadable CA
// file fail with exit codes and messages that say which. Plus the settings code (precedence, the
// host of a target) without any server.
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "cloudctl/config.h"
#include "grpcpp/grpcpp.h"
#include "proto/scheduler.grpc.pb.h"
#include "testing/run_command.h"

namespace livemig::cloudctl {
namespace {

namespace sv1 = ::livemig::scheduler::v1;
using testing::ReadFile;

constexpr char kToken[] = "tls-test-token-0123456789abcdef0123456789";

bool Has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

const std::string& WorkDir() {
  static const std::string dir = testing::MakeTempDir("cloudctl-tls");
  return dir;
}

// Two PKIs: the scheduler's (its CA issued the server certificate) and another one.
struct Pki {
  std::string dir = WorkDir() + "/pki";
  std::string other = WorkDir() + "/other-pki";
  Pki() {
    const std::string pki = testing::RunfilePath("deploy/pki.sh");
    for (const std::string& cmd :
         {absl::StrCat("bash ", pki, " init ", dir), absl::StrCat("bash ", pki, " init ", other),
          absl::StrCat("bash ", pki, " issue-server ", dir, " api")}) {
      auto r = testing::RunCommand(cmd);
      INFO(cmd);
      REQUIRE(r.ok());
    }
  }
  std::string ca() const { return dir + "/ca.pem"; }
  std::string other_ca() const { return other + "/ca.pem"; }
};

const Pki& P() {
  static const Pki pki;
  return pki;
}

// The scheduler API, as far as host-list needs it; remembers the last token it was sent.
class FakeScheduler final : public sv1::SchedulerApi::Service {
 public:
  grpc::Status ListHosts(grpc::ServerContext* ctx, const sv1::ListHostsRequest*,
                         sv1::ListHostsResponse* resp) override {
    auto it = ctx->client_metadata().find("authorization");
    {
      absl::MutexLock l(&mu_);
      last_auth_ = it == ctx->client_metadata().end()
                       ? ""
                       : std::string(it->second.data(), it->second.size());
      ++calls_;
    }
    sv1::Host* h = resp->add_hosts();
    h->mutable_inventory()->set_hostname("tls-host-a");
    h->set_enabled(true);
    h->set_up(true);
    return grpc::Status::OK;
  }
  std::string last_auth() const {
    absl::MutexLock l(&mu_);
    return last_auth_;
  }
  int calls() const {
    absl::MutexLock l(&mu_);
    return calls_;
  }

 private:
  mutable absl::Mutex mu_;
  std::string last_auth_;
  int calls_ = 0;
};

// A server on 127.0.0.1:<port>: TLS with the `api` certificate, or plaintext.
struct Server {
  FakeScheduler service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;

  explicit Server(bool tls) {
    std::shared_ptr<grpc::ServerCredentials> creds;
    if (tls) {
      grpc::SslServerCredentialsOptions opts;
      opts.pem_key_cert_pairs.push_back(
          {ReadFile(P().dir + "/api.key"), ReadFile(P().dir + "/api.pem")});
      creds = grpc::SslServerCredentials(opts);
    } else {
      creds = grpc::InsecureServerCredentials();
    }
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", creds, &port);
    b.RegisterService(&service);
    server = b.BuildAndStart();
    REQUIRE(server != nullptr);
    REQUIRE(port > 0);
  }
  ~Server() { server->Shutdown(); }
  std::string address(const std::string& host = "127.0.0.1") const {
    return absl::StrCat(host, ":", port);
  }
};

Server& TlsServer() {
  static Server s(true);
  return s;
}

using Result = testing::CommandResult;

// Runs the built cloudctl with `args` (shell syntax) in a clean environment plus `env`.
Result Cloudctl(const std::string& args, const std::string& env = "") {
  static int n = 0;
  const std::string base = absl::StrCat(WorkDir(), "/run-", ++n);
  const Result r = testing::RunCaptured(
      absl::StrCat("env -u LIVEMIG_SERVER -u LIVEMIG_TOKEN -u LIVEMIG_USER -u LIVEMIG_CA -u "
                   "LIVEMIG_SERVER_NAME -u XDG_CONFIG_HOME -u GRPC_VERBOSITY HOME=",
                   WorkDir(), " USER=tester LIVEMIG_TOKEN=", kToken, " ", env, " ",
                   testing::RunfilePath("cloudctl/cloudctl"), " --timeout 10 ", args),
      base);
  UNSCOPED_INFO("$ cloudctl " << args << "\nexit " << r.code << "\n--- stdout\n"
                              << r.out << "--- stderr\n"
                              << r.err);
  return r;
}

TEST_CASE("--ca: TLS to the scheduler, its certificate verified; the token travels inside") {
  Server& s = TlsServer();
  auto r = Cloudctl(absl::StrCat("--server ", s.address(), " --ca ", P().ca(), " host-list"));
  CHECK(r.code == 0);
  CHECK(Has(r.out, "tls-host-a"));
  CHECK(s.service.last_auth() == absl::StrCat("Bearer ", kToken));

  // By the DNS name of the certificate; from LIVEMIG_CA; from the config file.
  r = Cloudctl(absl::StrCat("--server ", s.address("localhost"), " --ca ", P().ca(), " host-list"));
  CHECK(r.code == 0);
  r = Cloudctl(absl::StrCat("--server ", s.address(), " host-list --json"),
               absl::StrCat("LIVEMIG_CA=", P().ca()));
  CHECK(r.code == 0);
  CHECK(Has(r.out, "tls-host-a"));
  const std::string conf = WorkDir() + "/tls.conf";
  std::ofstream(conf) << "server = \"" << s.address() << "\"\nca = \"" << P().ca()
                      << "\"\nserver-name = localhost\n";
  r = Cloudctl(absl::StrCat("--config ", conf, " host-list"));
  CHECK(r.code == 0);
  CHECK(Has(r.out, "tls-host-a"));
}

TEST_CASE("without --ca, plaintext to the TLS listener fails and says TLS and --ca") {
  Server& s = TlsServer();
  const int calls = s.service.calls();
  auto r = Cloudctl(absl::StrCat("--server ", s.address(), " host-list"));
  CHECK(r.code == 7);
  CHECK(Has(r.err, "cloudctl: host-list: "));
  CHECK(Has(r.err, "TLS"));
  CHECK(Has(r.err, "--ca"));
  CHECK(r.out.empty());
  CHECK(s.service.calls() == calls);
}

TEST_CASE("a CA of another PKI: certificate verification fails, said so") {
  Server& s = TlsServer();
  const int calls = s.service.calls();
  auto r = Cloudctl(absl::StrCat("--server ", s.address(), " --ca ", P().other_ca(), " host-list"));
  CHECK(r.code == 7);
  CHECK(Has(r.err, "TLS: certificate verification failed"));
  CHECK(Has(r.err, P().other_ca()));
  CHECK(Has(r.err, "(from --ca)"));
  CHECK(s.service.calls() == calls);  // the token was never sent
}

TEST_CASE("--server-name: the name checked instead of the address's host") {
  Server& s = TlsServer();
  auto r = Cloudctl(absl::StrCat("--server ", s.address(), " --ca ", P().ca(),
                                 " --server-name localhost host-list"));
  CHECK(r.code == 0);
  r = Cloudctl(absl::StrCat("--server ", s.address(), " --ca ", P().ca(),
                            " --server-name sched.example.net host-list"));
  CHECK(r.code == 7);
  CHECK(Has(r.err, "TLS: the scheduler's certificate at " + s.address() +
                       " is not valid for the name 'sched.example.net' (--server-name)"));
}

TEST_CASE("--ca to a plaintext listener: the TLS handshake fails, said so") {
  Server plain(false);
  auto r = Cloudctl(absl::StrCat("--server ", plain.address(), " --ca ", P().ca(), " host-list"));
  CHECK(r.code == 7);
  CHECK(Has(r.err, "TLS: the TLS handshake with " + plain.address() + " failed"));
  CHECK(plain.service.calls() == 0);
  // Plaintext to it works (loopback).
  r = Cloudctl(absl::StrCat("--server ", plain.address(), " host-list"));
  CHECK(r.code == 0);
  CHECK(Has(r.out, "tls-host-a"));
}

TEST_CASE("an unreadable or non-PEM CA file is an argument error naming it; unix: ignores it") {
  const std::string missing = WorkDir() + "/no-such-ca.pem";
  auto r = Cloudctl(absl::StrCat("--server 127.0.0.1:1 --ca ", missing, " host-list"));
  CHECK(r.code == 2);
  CHECK(Has(r.err, "cannot read the CA file " + missing + " given with --ca"));
  r = Cloudctl("--server 127.0.0.1:1 host-list", "LIVEMIG_CA=" + missing);
  CHECK(r.code == 2);
  CHECK(Has(r.err, "given with LIVEMIG_CA"));
  const std::string junk = WorkDir() + "/junk.pem";
  std::ofstream(junk) << "not a certificate\n";
  r = Cloudctl(absl::StrCat("--server 127.0.0.1:1 --ca ", junk, " host-list"));
  CHECK(r.code == 2);
  CHECK(Has(r.err, junk + " given with --ca holds no PEM certificate"));
  // A unix: socket never uses TLS: the CA is not read (the socket does not exist: exit 7).
  r = Cloudctl(absl::StrCat("--server unix:/nonexistent/api.sock --ca ", missing, " host-list"));
  CHECK(r.code == 7);
  CHECK_FALSE(Has(r.err, "CA file"));
}

TEST_CASE("cloudctl --help documents --ca and --server-name") {
  auto r = Cloudctl("--help");
  CHECK(r.code == 0);
  for (const char* s : {"--ca", "--server-name", "LIVEMIG_CA", "TLS", "issue-server"}) {
    CHECK(Has(r.out, s));
  }
}

TEST_CASE("settings: --ca, LIVEMIG_CA, then `ca = ...`; the host of a target") {
  std::map<std::string, std::string> env;
  auto getenv = [&](const char* n) -> const char* {
    auto it = env.find(n);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  const std::string conf = WorkDir() + "/settings.conf";
  std::ofstream(conf) << "server = 10.0.0.1:8770\nca = " << P().ca()
                      << "\nserver-name = sched.example.net\n";
  Flags f;
  f.config = conf;
  auto s = ResolveSettings(f, getenv);
  REQUIRE(s.ok());
  CHECK(s->tls());
  CHECK(s->ca_path == P().ca());
  CHECK(s->ca_origin == "the config file " + conf);
  CHECK(s->ca_pem == ReadFile(P().ca()));
  CHECK(s->server_name == "sched.example.net");

  env["LIVEMIG_CA"] = P().other_ca();
  env["LIVEMIG_SERVER_NAME"] = "env.example.net";
  s = ResolveSettings(f, getenv);
  REQUIRE(s.ok());
  CHECK(s->ca_origin == "LIVEMIG_CA");
  CHECK(s->ca_pem == ReadFile(P().other_ca()));
  CHECK(s->server_name == "env.example.net");

  f.ca = P().ca();
  f.server_name = "flag.example.net";
  s = ResolveSettings(f, getenv);
  REQUIRE(s.ok());
  CHECK(s->ca_origin == "--ca");
  CHECK(s->server_name == "flag.example.net");

  // A unix: server: plaintext, whatever the CA.
  f.server = "unix:/run/livemig/scheduler-api.sock";
  f.ca = WorkDir() + "/missing.pem";
  s = ResolveSettings(f, getenv);
  REQUIRE(s.ok());
  CHECK_FALSE(s->tls());

  CHECK(HostOfTarget("sched.example.net:8770") == "sched.example.net");
  CHECK(HostOfTarget("127.0.0.1:8770") == "127.0.0.1");
  CHECK(HostOfTarget("[::1]:8770") == "::1");
  CHECK(HostOfTarget("dns:///sched.example.net:8770") == "sched.example.net");
  CHECK(HostOfTarget("ipv4:10.0.0.1:1") == "10.0.0.1");
  CHECK(HostOfTarget("sched.example.net") == "sched.example.net");
}

}  // namespace
}  // namespace livemig::cloudctl
