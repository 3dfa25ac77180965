// The real compute_agent binary over real gRPC on 127.0.0.1, with certificates the test makes
// with deploy/pki.sh: the mutual-TLS and allow-list matrix over every RPC, start-up refusals, a
// full migration between two agent processes driven as the scheduler, and host reporting to an
// in-test registry (mutual TLS) that goes away and comes back.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/tls.h"
#include "driver/fake_driver.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "grpcpp/grpcpp.h"
#include "proto/compute_agent.grpc.pb.h"
#include "proto/host_registry.grpc.pb.h"
#include "testing/agent_flow.h"
#include "testing/process.h"
#include "testing/run_command.h"

namespace livemig::agent {
namespace {

namespace v1 = ::livemig::v1;
namespace cv1 = ::livemig::compute::v1;
namespace rv1 = ::livemig::registry::v1;
using Stub = cv1::ComputeAgent::Stub;

constexpr char kUuid[] = "11111111-2222-4333-8444-555555555555";
constexpr char kOtherUuid[] = "66666666-7777-4888-9999-000000000000";
constexpr int kCallSeconds = 5;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

std::string Describe(const grpc::Status& s) {
  return absl::StrCat(CodeName(s.error_code()), ": ", s.error_message());
}

// Deterministic bytes of a message, to compare two answers.
std::string Bytes(const google::protobuf::Message& m) {
  std::string out;
  {
    google::protobuf::io::StringOutputStream stream(&out);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    m.SerializeToCodedStream(&coded);
  }
  return out;
}

// ---- Processes ------------------------------------------------------------------------------

// A child process (stdout and stderr to a log file), stopped and reaped when destroyed.
class Child {
 public:
  Child(const std::vector<std::string>& args, std::string log_path) : log_(std::move(log_path)) {
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      // Only async-signal-safe calls between fork and exec.
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a crashed test
      int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() { Stop(); }

  bool started() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  // When stopped, show only the log's last `bytes` (a long test's agents log every step).
  void DumpOnlyTail(size_t bytes) { dump_tail_ = bytes; }

  bool Running() {
    if (pid_ <= 0 || reaped_) return false;
    int st = 0;
    pid_t r = waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      status_ = st;
      return false;
    }
    return r == 0;
  }

  // The wait status once the process exited within `timeout`.
  std::optional<int> WaitExit(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (Running()) {
      if (absl::Now() > deadline) return std::nullopt;
      absl::SleepFor(absl::Milliseconds(10));
    }
    if (!reaped_) return std::nullopt;
    return status_;
  }

  // SIGTERM, then SIGKILL if it does not exit in time; returns the wait status. Idempotent.
  int Stop() {
    if (pid_ > 0 && Running()) {
      kill(pid_, SIGTERM);
      if (!WaitExit(absl::Seconds(25))) {
        kill(pid_, SIGKILL);
        WaitExit(absl::Seconds(10));
      }
    }
    if (pid_ > 0 && !dumped_) {
      dumped_ = true;
      // Shown by Bazel when the test fails (--test_output=errors).
      std::string log = Log();
      if (log.size() > dump_tail_) log = "[...]" + log.substr(log.size() - dump_tail_);
      std::cout << "---- " << log_ << " ----\n" << log << "---- end ----" << std::endl;
    }
    return status_;
  }

  std::string Log() const { return ReadFile(log_); }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  bool dumped_ = false;
  int status_ = -1;
  size_t dump_tail_ = std::string::npos;
  std::string log_;
};

// A port that was free a moment ago (bound to port 0, then released).
int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  socklen_t len = sizeof(a);
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  close(fd);
  return ntohs(a.sin_port);
}

bool Accepts(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
  close(fd);
  return ok;
}

// ---- Certificates ---------------------------------------------------------------------------

struct Pki {
  std::string dir;        // the cluster CA and its certificates
  std::string other_dir;  // an untrusted CA
  std::string Ca() const { return dir + "/ca.pem"; }
  std::string Pem(const std::string& name) const { return dir + "/" + name + ".pem"; }
  std::string Key(const std::string& name) const { return dir + "/" + name + ".key"; }
};

std::string RunPki(const std::string& args) {
  const std::string cmd = absl::StrCat("bash ", testing::RunfilePath("deploy/pki.sh"), " ", args);
  auto out = testing::RunCommand(cmd);
  INFO(cmd);
  REQUIRE(out.ok());
  return *out;
}

// Made once per test binary run.
const Pki& Certificates() {
  static const Pki* pki = [] {
    auto* p = new Pki;
    p->dir = testing::MakeTempDir("pki");
    p->other_dir = testing::MakeTempDir("pki-untrusted");
    REQUIRE(!p->dir.empty());
    REQUIRE(!p->other_dir.empty());
    RunPki(absl::StrCat("init ", p->dir));
    RunPki(absl::StrCat("issue ", p->dir, " agent-a DNS:agent-a IP:127.0.0.1"));
    RunPki(absl::StrCat("issue ", p->dir, " agent-b DNS:agent-b IP:127.0.0.1"));
    RunPki(absl::StrCat("issue ", p->dir, " registry DNS:registry IP:127.0.0.1"));
    RunPki(absl::StrCat("issue ", p->dir, " scheduler"));
    RunPki(absl::StrCat("issue ", p->dir, " intruder"));
    RunPki(absl::StrCat("issue-expired ", p->dir, " scheduler-old"));
    RunPki(absl::StrCat("init ", p->other_dir));
    RunPki(absl::StrCat("issue ", p->other_dir, " scheduler"));
    return p;
  }();
  return *pki;
}

// ---- Agents ---------------------------------------------------------------------------------

struct Agent {
  int port = 0;
  std::unique_ptr<Child> proc;
  std::string address() const { return absl::StrCat("127.0.0.1:", port); }
};

std::string AgentBinary() { return testing::RunfilePath("compute/compute_agent"); }

// Waits until the child accepts TCP connections on `port` (false if it exited first).
bool WaitListening(Child& c, int port, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (!c.Running()) return false;
    if (Accepts(port)) return true;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return false;
}

// Starts compute_agent (fake driver, mutual TLS with the host's certificate, "scheduler"
// allowed) on a free port and waits until it listens.
Agent StartAgent(const std::string& hostname, const std::string& state_dir,
                 const std::string& log_dir, std::vector<std::string> extra = {}, bool tls = true) {
  const Pki& pki = Certificates();
  for (int attempt = 0; attempt < 3; ++attempt) {
    Agent a;
    a.port = FreePort();
    std::vector<std::string> args = {AgentBinary(),      "--driver", "fake",
                                     "--fake-state-dir", state_dir,  "--hostname",
                                     hostname,           "--listen", a.address()};
    if (tls) {
      args.insert(args.end(), {"--tls-ca", pki.Ca(), "--tls-cert", pki.Pem(hostname), "--tls-key",
                               pki.Key(hostname), "--allow", "scheduler"});
    }
    args.insert(args.end(), extra.begin(), extra.end());
    a.proc = std::make_unique<Child>(
        args, absl::StrCat(log_dir, "/", hostname, "-", a.port, "-", attempt, ".log"));
    REQUIRE(a.proc->started());
    if (WaitListening(*a.proc, a.port, absl::Seconds(20))) return a;
    const std::string log = a.proc->Log();
    if (!absl::StrContains(log, "cannot listen")) {
      INFO("compute_agent did not start:\n" << log);
      FAIL("compute_agent " << hostname << " did not start listening on " << a.address());
    }
    // The port was taken between FreePort and the agent's bind: try another.
  }
  FAIL("compute_agent " << hostname << " could not find a free port");
  return {};
}

std::shared_ptr<grpc::Channel> TlsChannel(const std::string& address, const std::string& server,
                                          const std::string& root_file,
                                          const std::string& cert_file = "",
                                          const std::string& key_file = "") {
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = ReadFile(root_file);
  REQUIRE(!o.pem_root_certs.empty());
  if (!cert_file.empty()) {
    o.pem_cert_chain = ReadFile(cert_file);
    o.pem_private_key = ReadFile(key_file);
    REQUIRE(!o.pem_cert_chain.empty());
    REQUIRE(!o.pem_private_key.empty());
  }
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride(server);
  // Every channel gets its own connections (and so its own TLS handshake).
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(address, grpc::SslCredentials(o), args);
}

std::unique_ptr<Stub> SchedulerStub(const Agent& a, const std::string& hostname) {
  const Pki& pki = Certificates();
  return cv1::ComputeAgent::NewStub(
      TlsChannel(a.address(), hostname, pki.Ca(), pki.Pem("scheduler"), pki.Key("scheduler")));
}

template <typename Req, typename Resp>
using Method = grpc::Status (Stub::*)(grpc::ClientContext*, const Req&, Resp*);

template <typename Req, typename Resp>
grpc::Status Call(Stub& stub, Method<Req, Resp> m, const Req& req, Resp* resp) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(kCallSeconds));
  return (stub.*m)(&ctx, req, resp);
}

template <typename Req>
Req StepRequest(const std::string& mid, const std::string& uuid, const std::string& src,
                const std::string& dst) {
  Req r;
  r.set_migration_id(mid);
  r.set_instance_uuid(uuid);
  r.set_source_host(src);
  r.set_dest_host(dst);
  return r;
}

// ---- The RPC table --------------------------------------------------------------------------

struct Rpc {
  std::string name;
  bool step;  // needs the allow-list
  std::function<grpc::Status(Stub&)> call;
};

template <typename Req, typename Resp>
Rpc Unary(const std::string& name, bool step, Method<Req, Resp> m, Req req) {
  return Rpc{name, step, [m, req](Stub& s) {
               Resp resp;
               return Call(s, m, req, &resp);
             }};
}

// Every RPC of the ComputeAgent service, for migration `mid` of an instance that is not on the
// host (so that a call that gets through changes nothing that matters).
std::vector<Rpc> AllRpcs(const std::string& mid) {
  const std::string u = kOtherUuid, a = "agent-a", b = "agent-b";
  std::vector<Rpc> rpcs;
  rpcs.push_back(Unary("GetHostInfo", false, &Stub::GetHostInfo, cv1::GetHostInfoRequest()));
  rpcs.push_back(Unary("ListDomains", false, &Stub::ListDomains, cv1::ListDomainsRequest()));
  cv1::DescribeInstanceRequest di;
  di.set_instance_uuid(u);
  di.set_migration_id(mid);
  rpcs.push_back(Unary("DescribeInstance", false, &Stub::DescribeInstance, di));
  auto dest = StepRequest<cv1::CheckCanLiveMigrateOnDestRequest>(mid, u, b, a);
  dest.mutable_instance()->set_memory_mib(64);
  rpcs.push_back(Unary("CheckCanLiveMigrateOnDest", true, &Stub::CheckCanLiveMigrateOnDest, dest));
  auto src = StepRequest<cv1::CheckCanLiveMigrateOnSrcRequest>(mid, u, a, b);
  src.mutable_dest_check_data()->set_dest_host(b);
  rpcs.push_back(Unary("CheckCanLiveMigrateOnSrc", true, &Stub::CheckCanLiveMigrateOnSrc, src));
  rpcs.push_back(Unary("CheckCanLiveMigrateOnDestCleanup", true,
                       &Stub::CheckCanLiveMigrateOnDestCleanup,
                       StepRequest<cv1::CheckCanLiveMigrateOnDestCleanupRequest>(mid, u, b, a)));
  auto pre = StepRequest<cv1::PreLiveMigrationRequest>(mid, u, b, a);
  pre.mutable_migrate_data()->mutable_src_check()->set_shared_instance_path(true);
  rpcs.push_back(Unary("PreLiveMigration", true, &Stub::PreLiveMigration, pre));
  rpcs.push_back(Unary("LiveMigration", true, &Stub::LiveMigration,
                       StepRequest<cv1::LiveMigrationRequest>(mid, u, a, b)));
  cv1::GetMigrationProgressRequest gp;
  gp.set_migration_id(mid);
  gp.set_instance_uuid(u);
  rpcs.push_back(Unary("GetMigrationProgress", false, &Stub::GetMigrationProgress, gp));
  rpcs.push_back(Rpc{"WatchMigrationProgress", false, [mid, u](Stub& s) {
                       cv1::WatchMigrationProgressRequest req;
                       req.set_migration_id(mid);
                       req.set_instance_uuid(u);
                       grpc::ClientContext ctx;
                       ctx.set_deadline(std::chrono::system_clock::now() +
                                        std::chrono::seconds(kCallSeconds));
                       auto reader = s.WatchMigrationProgress(&ctx, req);
                       cv1::MigrationProgressReport r;
                       if (reader->Read(&r)) {  // one report is enough
                         ctx.TryCancel();
                         reader->Finish();
                         return grpc::Status::OK;
                       }
                       return reader->Finish();
                     }});
  rpcs.push_back(Unary("AbortLiveMigration", true, &Stub::AbortLiveMigration,
                       StepRequest<cv1::AbortLiveMigrationRequest>(mid, u, a, b)));
  rpcs.push_back(Unary("ForceCompleteLiveMigration", true, &Stub::ForceCompleteLiveMigration,
                       StepRequest<cv1::ForceCompleteLiveMigrationRequest>(mid, u, a, b)));
  rpcs.push_back(Unary("PostLiveMigration", true, &Stub::PostLiveMigration,
                       StepRequest<cv1::PostLiveMigrationRequest>(mid, u, a, b)));
  rpcs.push_back(Unary("PostLiveMigrationAtDestination", true,
                       &Stub::PostLiveMigrationAtDestination,
                       StepRequest<cv1::PostLiveMigrationAtDestinationRequest>(mid, u, b, a)));
  rpcs.push_back(Unary("RollbackLiveMigration", true, &Stub::RollbackLiveMigration,
                       StepRequest<cv1::RollbackLiveMigrationRequest>(mid, u, a, b)));
  rpcs.push_back(Unary("RollbackLiveMigrationAtDestination", true,
                       &Stub::RollbackLiveMigrationAtDestination,
                       StepRequest<cv1::RollbackLiveMigrationAtDestinationRequest>(mid, u, b, a)));
  return rpcs;
}

bool RejectedForIdentity(grpc::StatusCode c) {
  return c == grpc::StatusCode::PERMISSION_DENIED || c == grpc::StatusCode::UNAUTHENTICATED;
}

// ---- 1. Security ----------------------------------------------------------------------------

TEST_CASE("agent grpc: mutual TLS and the allow-list over every RPC of the real binary") {
  const Pki& pki = Certificates();
  const std::string state = testing::MakeTempDir("sec-state");
  const std::string logs = testing::MakeTempDir("sec-logs");
  Agent agent = StartAgent("agent-a", state, logs);

  struct Identity {
    std::string label;
    std::string cert, key;  // empty: no client certificate
    enum { kRefused, kReadOnly, kAllowed } expect;
  };
  const std::vector<Identity> identities = {
      {"no client certificate", "", "", Identity::kRefused},
      {"untrusted CA", pki.other_dir + "/scheduler.pem", pki.other_dir + "/scheduler.key",
       Identity::kRefused},
      {"expired certificate", pki.Pem("scheduler-old"), pki.Key("scheduler-old"),
       Identity::kRefused},
      {"intruder", pki.Pem("intruder"), pki.Key("intruder"), Identity::kReadOnly},
      {"scheduler", pki.Pem("scheduler"), pki.Key("scheduler"), Identity::kAllowed},
  };

  int cases = 0;
  for (size_t i = 0; i < identities.size(); ++i) {
    const Identity& id = identities[i];
    std::string codes;
    const std::string mid = absl::StrCat("sec-", i);
    const std::vector<Rpc> rpcs = AllRpcs(mid);
    REQUIRE(rpcs.size() == 16);
    for (const Rpc& rpc : rpcs) {
      // A fresh channel per case: every call makes its own TLS handshake.
      auto stub = cv1::ComputeAgent::NewStub(
          TlsChannel(agent.address(), "agent-a", pki.Ca(), id.cert, id.key));
      const grpc::Status s = rpc.call(*stub);
      ++cases;
      absl::StrAppend(&codes, " ", rpc.name, "=", CodeName(s.error_code()));
      INFO(id.label << " -> " << rpc.name << ": " << Describe(s));
      const grpc::StatusCode c = s.error_code();
      switch (id.expect) {
        case Identity::kRefused:
          CHECK(c == grpc::StatusCode::UNAVAILABLE);
          break;
        case Identity::kReadOnly:
          CHECK(c != grpc::StatusCode::UNAVAILABLE);
          CHECK(c != grpc::StatusCode::DEADLINE_EXCEEDED);
          if (rpc.step) {
            CHECK(c == grpc::StatusCode::PERMISSION_DENIED);
            CHECK(absl::StrContains(s.error_message(), "'intruder'"));
            CHECK(absl::StrContains(s.error_message(), rpc.name));
          } else {
            CHECK_FALSE(RejectedForIdentity(c));
          }
          break;
        case Identity::kAllowed:
          CHECK_FALSE(RejectedForIdentity(c));
          CHECK(c != grpc::StatusCode::UNAVAILABLE);
          CHECK(c != grpc::StatusCode::DEADLINE_EXCEEDED);
          break;
      }
      if (id.expect != Identity::kRefused &&
          (rpc.name == "GetHostInfo" || rpc.name == "ListDomains")) {
        CHECK(s.ok());
      }
    }
    std::cout << id.label << ":" << codes << std::endl;
  }
  std::cout << "security matrix: " << cases << " cases (" << identities.size()
            << " identities x 16 RPCs)" << std::endl;
  CHECK(cases == 80);

  // The refused steps left no trace; the allowed ones ran (their steps are recorded).
  auto sched = SchedulerStub(agent, "agent-a");
  for (const auto& [mid, expect_steps] :
       std::vector<std::pair<std::string, bool>>{{"sec-3", false}, {"sec-4", true}}) {
    cv1::DescribeInstanceRequest di;
    di.set_instance_uuid(kOtherUuid);
    di.set_migration_id(mid);
    cv1::DescribeInstanceResponse resp;
    grpc::Status s = Call(*sched, &Stub::DescribeInstance, di, &resp);
    INFO(mid << ": " << Describe(s) << " " << resp.ShortDebugString());
    REQUIRE(s.ok());
    CHECK((resp.steps_done_size() > 0) == expect_steps);
  }
  CHECK(access((state + "/instances/.livemig-probe-sec-3").c_str(), F_OK) != 0);
  // Close our connection first: an idle client channel only reads the server's GOAWAY at its
  // next backup poll (5 s), and the agent's graceful shutdown waits for it.
  sched.reset();

  CHECK(agent.proc->Running());
  const int st = agent.proc->Stop();
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 0);
}

TEST_CASE("agent grpc: the binary refuses to start with an expired certificate or without TLS") {
  const Pki& pki = Certificates();
  const std::string state = testing::MakeTempDir("refuse-state");
  const std::string logs = testing::MakeTempDir("refuse-logs");
  auto run = [&](const std::string& tag, std::vector<std::string> extra) {
    std::vector<std::string> args = {
        AgentBinary(),      "--driver", "fake",
        "--fake-state-dir", state,      "--hostname",
        "agent-a",          "--listen", absl::StrCat("127.0.0.1:", FreePort())};
    args.insert(args.end(), extra.begin(), extra.end());
    auto c = std::make_unique<Child>(args, absl::StrCat(logs, "/", tag, ".log"));
    REQUIRE(c->started());
    return c;
  };

  SECTION("its own certificate expired") {
    auto c = run("expired", {"--tls-ca", pki.Ca(), "--tls-cert", pki.Pem("scheduler-old"),
                             "--tls-key", pki.Key("scheduler-old"), "--allow", "scheduler"});
    auto st = c->WaitExit(absl::Seconds(20));
    INFO(c->Log());
    REQUIRE(st.has_value());  // it did not start serving
    CHECK(WIFEXITED(*st));
    CHECK(WEXITSTATUS(*st) != 0);
    CHECK(absl::StrContains(c->Log(), "expired"));
    CHECK(absl::StrContains(c->Log(), "scheduler-old.pem"));
  }
  SECTION("no TLS files and no --insecure-plaintext") {
    auto c = run("no-tls", {"--allow", "scheduler"});
    auto st = c->WaitExit(absl::Seconds(20));
    INFO(c->Log());
    REQUIRE(st.has_value());
    CHECK(WIFEXITED(*st));
    CHECK(WEXITSTATUS(*st) != 0);
    CHECK(absl::StrContains(c->Log(), "--insecure-plaintext"));
  }
  SECTION("no TLS files with --insecure-plaintext: starts and serves plaintext") {
    Agent a = StartAgent("agent-a", state, logs, {"--insecure-plaintext"}, /*tls=*/false);
    auto stub = cv1::ComputeAgent::NewStub(
        grpc::CreateChannel(a.address(), grpc::InsecureChannelCredentials()));
    cv1::GetHostInfoResponse info;
    grpc::Status s = Call(*stub, &Stub::GetHostInfo, cv1::GetHostInfoRequest(), &info);
    INFO(Describe(s));
    REQUIRE(s.ok());
    CHECK(info.inventory().hostname() == "agent-a");
    CHECK(absl::StrContains(a.proc->Log(), "--insecure-plaintext"));  // the warning
  }
}

// ---- 2. A migration through two agent processes ---------------------------------------------

// Sends `req` twice; both answers must be OK and identical. Returns the answer.
template <typename Req, typename Resp>
Resp Twice(const char* name, Stub& stub, Method<Req, Resp> m, const Req& req) {
  Resp first, second;
  grpc::Status s1 = Call(stub, m, req, &first);
  INFO(name << " (first): " << Describe(s1));
  REQUIRE(s1.ok());
  grpc::Status s2 = Call(stub, m, req, &second);
  INFO(name << " (repeat): " << Describe(s2));
  REQUIRE(s2.ok());
  INFO(name << ": first " << first.ShortDebugString() << "\nrepeat " << second.ShortDebugString());
  CHECK(Bytes(first) == Bytes(second));
  return first;
}

// agent-a and agent-b on one fake hypervisor (each registers its host at start-up), with the
// instance kUuid (256 MiB) running on agent-a.
struct TwoAgents {
  explicit TwoAgents(const std::string& tag)
      : state(testing::MakeTempDir(tag + "-state")), logs(testing::MakeTempDir(tag + "-logs")) {
    a = StartAgent("agent-a", state, logs);
    b = StartAgent("agent-b", state, logs);
    hv = std::make_unique<driver::FakeHypervisor>(state);
    REQUIRE(hv->CreateDomain("agent-a", kUuid, "web-1", 256).ok());
  }
  std::string state, logs;
  Agent a, b;
  std::unique_ptr<driver::FakeHypervisor> hv;
};

TEST_CASE("agent grpc: a full migration between two agent processes over mutual TLS") {
  TwoAgents two("mig");
  Agent &a = two.a, &b = two.b;
  driver::FakeHypervisor& hv = *two.hv;
  REQUIRE(hv.SetTransferDuration("agent-a", absl::Milliseconds(300)).ok());
  auto sa = SchedulerStub(a, "agent-a");
  auto sb = SchedulerStub(b, "agent-b");
  const std::string mid = "mig-grpc-1";

  // What the scheduler knows of the source and the instance.
  cv1::GetHostInfoResponse src_info;
  REQUIRE(Call(*sa, &Stub::GetHostInfo, cv1::GetHostInfoRequest(), &src_info).ok());
  cv1::DescribeInstanceRequest di;
  di.set_instance_uuid(kUuid);
  cv1::DescribeInstanceResponse before;
  REQUIRE(Call(*sa, &Stub::DescribeInstance, di, &before).ok());
  REQUIRE(before.present());

  auto dest = StepRequest<cv1::CheckCanLiveMigrateOnDestRequest>(mid, kUuid, "agent-a", "agent-b");
  *dest.mutable_source_cpu() = src_info.inventory().cpu();
  *dest.mutable_instance() = before.domain();
  dest.set_source_hypervisor_type(src_info.inventory().hypervisor_type());
  dest.set_source_hypervisor_version(src_info.inventory().hypervisor_version());
  auto d = Twice("CheckCanLiveMigrateOnDest", *sb, &Stub::CheckCanLiveMigrateOnDest, dest);
  INFO(d.ShortDebugString());
  REQUIRE(d.passed());

  auto src = StepRequest<cv1::CheckCanLiveMigrateOnSrcRequest>(mid, kUuid, "agent-a", "agent-b");
  *src.mutable_dest_check_data() = d.dest_check_data();
  auto s = Twice("CheckCanLiveMigrateOnSrc", *sa, &Stub::CheckCanLiveMigrateOnSrc, src);
  INFO(s.ShortDebugString());
  REQUIRE(s.passed());

  auto pre = StepRequest<cv1::PreLiveMigrationRequest>(mid, kUuid, "agent-a", "agent-b");
  *pre.mutable_migrate_data()->mutable_dest_check() = d.dest_check_data();
  *pre.mutable_migrate_data()->mutable_src_check() = s.src_check_data();
  auto p = Twice("PreLiveMigration", *sb, &Stub::PreLiveMigration, pre);
  REQUIRE(!p.pre_live_migration_data().migration_uri().empty());

  auto lm = StepRequest<cv1::LiveMigrationRequest>(mid, kUuid, "agent-a", "agent-b");
  *lm.mutable_migrate_data() = pre.migrate_data();
  *lm.mutable_migrate_data()->mutable_pre_live_migration() = p.pre_live_migration_data();
  cv1::LiveMigrationResponse started, again;
  grpc::Status l1 = Call(*sa, &Stub::LiveMigration, lm, &started);
  INFO("LiveMigration: " << Describe(l1));
  REQUIRE(l1.ok());
  CHECK_FALSE(started.attached());
  grpc::Status l2 = Call(*sa, &Stub::LiveMigration, lm, &again);
  INFO("LiveMigration (repeat): " << Describe(l2));
  REQUIRE(l2.ok());
  CHECK(again.attached());  // no second transfer
  CHECK(again.report().migration_id() == mid);

  cv1::GetMigrationProgressRequest gp;
  gp.set_migration_id(mid);
  gp.set_instance_uuid(kUuid);
  cv1::MigrationProgressReport end;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  int polls = 0;
  while (true) {
    grpc::Status ps = Call(*sa, &Stub::GetMigrationProgress, gp, &end);
    INFO("GetMigrationProgress: " << Describe(ps));
    REQUIRE(ps.ok());
    ++polls;
    if (end.state() != cv1::TRANSFER_STATE_RUNNING) break;
    REQUIRE(absl::Now() < deadline);
    absl::SleepFor(absl::Milliseconds(20));
  }
  INFO(end.ShortDebugString());
  CHECK(end.state() == cv1::TRANSFER_STATE_COMPLETED);
  CHECK(end.progress().bytes_processed() == 256ull << 20);

  auto post = StepRequest<cv1::PostLiveMigrationRequest>(mid, kUuid, "agent-a", "agent-b");
  *post.mutable_migrate_data() = lm.migrate_data();
  Twice("PostLiveMigration", *sa, &Stub::PostLiveMigration, post);
  auto at =
      StepRequest<cv1::PostLiveMigrationAtDestinationRequest>(mid, kUuid, "agent-a", "agent-b");
  *at.mutable_migrate_data() = lm.migrate_data();
  auto fin =
      Twice("PostLiveMigrationAtDestination", *sb, &Stub::PostLiveMigrationAtDestination, at);
  CHECK(fin.domain().uuid() == kUuid);
  CHECK(fin.domain().persistent());
  CHECK(fin.domain().state() == v1::DOMAIN_STATE_RUNNING);

  auto where = hv.Locate(kUuid);
  REQUIRE(where.ok());
  CHECK(*where == std::vector<std::pair<std::string, std::string>>{{"agent-b", "running"}});
  // The agents agree with the hypervisor.
  cv1::ListDomainsResponse on_a, on_b;
  REQUIRE(Call(*sa, &Stub::ListDomains, cv1::ListDomainsRequest(), &on_a).ok());
  REQUIRE(Call(*sb, &Stub::ListDomains, cv1::ListDomainsRequest(), &on_b).ok());
  CHECK(on_a.domains_size() == 0);
  REQUIRE(on_b.domains_size() == 1);
  CHECK(on_b.domains(0).uuid() == kUuid);
  std::cout << "migration: completed after " << polls << " progress polls" << std::endl;
  sa.reset();  // see the security test: close our connections before stopping the agents
  sb.reset();

  for (Agent* ag : {&a, &b}) {
    const int st = ag->proc->Stop();
    CHECK(WIFEXITED(st));
    CHECK(WEXITSTATUS(st) == 0);
  }
}

// ---- 3. A long-running agent does not grow --------------------------------------------------

// What a process holds: its threads (/proc/<pid>/task), its resident memory (VmRSS) and its
// address space (VmSize: a thread that ended but was never joined keeps its 8 MiB stack mapped,
// though it is no longer a task).
struct Footprint {
  int threads = 0;
  int64_t rss_kib = 0;
  int64_t vm_kib = 0;
};

// The value in kB of `field` ("VmRSS:") in /proc/<pid>/status's text.
int64_t StatusKib(const std::string& status, absl::string_view field) {
  for (absl::string_view line : absl::StrSplit(status, '\n')) {
    if (absl::ConsumePrefix(&line, field)) {
      int64_t kib = 0;
      REQUIRE(absl::SimpleAtoi(absl::StripSuffix(absl::StripAsciiWhitespace(line), " kB"), &kib));
      return kib;
    }
  }
  FAIL("no " << field << " in /proc/<pid>/status");
  return 0;
}

Footprint FootprintOf(pid_t pid) {
  Footprint f;
  const std::string proc = absl::StrCat("/proc/", pid);
  for (const auto& e : std::filesystem::directory_iterator(proc + "/task")) f.threads += e.exists();
  const std::string status = ReadFile(proc + "/status");
  f.rss_kib = StatusKib(status, "VmRSS:");
  f.vm_kib = StatusKib(status, "VmSize:");
  REQUIRE(f.threads > 0);
  return f;
}

TEST_CASE("agent grpc: after 1000 migrations an agent has the threads and memory it had after 10") {
  TwoAgents two("long");  // transfers take no time
  Agent &a = two.a, &b = two.b;
  for (Agent* ag : {&a, &b}) ag->proc->DumpOnlyTail(20000);
  const Pki& pki = Certificates();
  testing::AgentFlow f(kUuid);
  for (const Agent* ag : {&a, &b}) {
    const std::string name = ag == &a ? "agent-a" : "agent-b";
    f.AddHost(
        name, name,
        TlsChannel(ag->address(), name, pki.Ca(), pki.Pem("scheduler"), pki.Key("scheduler")));
  }
  // Each migration through the agents' steps as the scheduler sends them (every step but the
  // transfer twice: the second answer must be the first), the VM back and forth.
  int done = 0;
  auto migrate = [&](int n) {
    for (int end = done + n; done < end; ++done) {
      const std::string from = done % 2 == 0 ? "agent-a" : "agent-b";
      const std::string to = done % 2 == 0 ? "agent-b" : "agent-a";
      const std::string mid = absl::StrCat("m-long-", done);
      auto lm = f.Prepare(mid, from, to);
      auto started = f.Call(from, &Stub::LiveMigration, lm);
      INFO(mid << ": " << started.status().ToString());
      REQUIRE(started.ok());
      REQUIRE(f.WaitForEnd(from, mid, absl::Seconds(30)).state() == cv1::TRANSFER_STATE_COMPLETED);
      f.PostSteps(mid, from, to);
    }
  };
  const absl::Time start = absl::Now();
  migrate(10);
  const Footprint a10 = FootprintOf(a.proc->pid()), b10 = FootprintOf(b.proc->pid());
  migrate(990);
  // A thread of gRPC's server or of the last step may still be ending: the counts are read once
  // they are back at their 10-migration figures, or after 10 s (990 leaked threads never would).
  testing::WaitFor(
      [&] {
        return FootprintOf(a.proc->pid()).threads <= a10.threads &&
               FootprintOf(b.proc->pid()).threads <= b10.threads;
      },
      absl::Seconds(10));
  const Footprint a1000 = FootprintOf(a.proc->pid()), b1000 = FootprintOf(b.proc->pid());
  std::cout << "1,000 migrations in " << absl::FormatDuration(absl::Now() - start) << "\n";
  for (const auto& [name, f10, f1000] :
       {std::tuple{"agent-a", a10, a1000}, std::tuple{"agent-b", b10, b1000}}) {
    std::cout << name << ": threads " << f10.threads << " after 10 migrations, " << f1000.threads
              << " after 1000; VmRSS " << f10.rss_kib / 1024.0 << " MiB after 10, "
              << f1000.rss_kib / 1024.0 << " MiB after 1000 (+"
              << (f1000.rss_kib - f10.rss_kib) / 1024.0 << " MiB); VmSize +"
              << (f1000.vm_kib - f10.vm_kib) / 1024.0 << " MiB" << std::endl;
    CHECK(f1000.threads <= f10.threads);
    CHECK(f1000.rss_kib - f10.rss_kib <= 20 * 1024);
    CHECK(f1000.vm_kib - f10.vm_kib <= 200 * 1024);  // 500 unjoined threads: about +4 GiB
  }
  // The last migration's steps are still answered from the agents' records.
  const std::string last = "m-long-999";
  auto again = f.Call("agent-b", &Stub::PostLiveMigration,
                      f.Step<cv1::PostLiveMigrationRequest>(last, "agent-b", "agent-a"));
  CHECK(again.ok());
  CHECK(f.Describe("agent-a").present());
  f = testing::AgentFlow(kUuid);  // close our connections before stopping the agents
  for (Agent* ag : {&a, &b}) {
    const int st = ag->proc->Stop();
    CHECK(WIFEXITED(st));
    CHECK(WEXITSTATUS(st) == 0);
  }
}

// ---- 4. Host reporting ----------------------------------------------------------------------

struct Report {
  rv1::ReportHostRequest req;
  std::string peer;  // the caller's certificate identity
};

class Recorder {
 public:
  void Add(Report r) {
    absl::MutexLock l(&mu_);
    reports_.push_back(std::move(r));
  }
  std::vector<Report> All() {
    absl::MutexLock l(&mu_);
    return reports_;
  }
  // Waits until `pred` holds over the reports (false at the deadline).
  bool WaitFor(const std::function<bool(const std::vector<Report>&)>& pred,
               absl::Duration timeout) {
    absl::MutexLock l(&mu_);
    auto cond = [&] { return pred(reports_); };
    return mu_.AwaitWithTimeout(absl::Condition(&cond), timeout);
  }

 private:
  absl::Mutex mu_;
  std::vector<Report> reports_ ABSL_GUARDED_BY(mu_);
};

class FakeRegistry final : public rv1::HostRegistry::Service {
 public:
  explicit FakeRegistry(Recorder* rec) : rec_(rec) {}
  grpc::Status ReportHost(grpc::ServerContext* ctx, const rv1::ReportHostRequest* req,
                          rv1::ReportHostResponse* resp) override {
    rec_->Add({*req, PeerIdentity(*ctx)});
    resp->set_accepted_report_seq(req->inventory().report_seq());
    resp->set_applied(true);
    resp->set_host_enabled(true);
    return grpc::Status::OK;  // next_report_interval_ms unset: the agent keeps its own interval
  }

 private:
  Recorder* rec_;
};

std::unique_ptr<grpc::Server> StartRegistry(FakeRegistry* service, int port) {
  const Pki& pki = Certificates();
  TlsFiles files;
  files.ca = pki.Ca();
  files.cert = pki.Pem("registry");
  files.key = pki.Key("registry");
  auto creds = MakeServerCredentials(files);
  REQUIRE(creds.ok());
  // The port may still be held for a moment after a shutdown: retry the bind.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (true) {
    grpc::ServerBuilder builder;
    int bound = 0;
    builder.AddListeningPort(absl::StrCat("127.0.0.1:", port), *creds, &bound);
    builder.RegisterService(service);
    auto server = builder.BuildAndStart();
    if (server && bound == port) return server;
    REQUIRE(absl::Now() < deadline);
    absl::SleepFor(absl::Milliseconds(50));
  }
}

bool HasDomain(const Report& r, const std::string& uuid) {
  for (const auto& d : r.req.inventory().domains()) {
    if (d.uuid() == uuid) return true;
  }
  return false;
}

// The "retrying in X" delays the agent logged for failed reports, in order.
std::vector<absl::Duration> RetryDelays(const std::string& log) {
  std::vector<absl::Duration> out;
  const std::string marker = "host report failed (retrying in ";
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    auto pos = line.find(marker);
    if (pos == absl::string_view::npos) continue;
    absl::string_view rest = line.substr(pos + marker.size());
    absl::Duration d;
    if (absl::ParseDuration(std::string(rest.substr(0, rest.find(';'))), &d)) out.push_back(d);
  }
  return out;
}

TEST_CASE("agent grpc: host reports reach the registry (mutual TLS) and resume after an outage") {
  const std::string state = testing::MakeTempDir("rep-state");
  const std::string logs = testing::MakeTempDir("rep-logs");
  Recorder rec;
  const int reg_port = FreePort();
  auto registry_service = std::make_unique<FakeRegistry>(&rec);
  auto registry = StartRegistry(registry_service.get(), reg_port);
  Agent agent = StartAgent("agent-a", state, logs,
                           {"--scheduler", absl::StrCat("127.0.0.1:", reg_port), "--scheduler-name",
                            "registry", "--report-interval", "0.2"});
  driver::FakeHypervisor hv(state);
  REQUIRE(hv.CreateDomain("agent-a", kUuid, "db-1", 128).ok());

  const bool got = rec.WaitFor(
      [](const std::vector<Report>& r) { return r.size() >= 3 && HasDomain(r.back(), kUuid); },
      absl::Seconds(20));
  std::vector<Report> first = rec.All();
  INFO(first.size() << " reports");
  REQUIRE(got);
  uint64_t last_seq = 0;
  for (const Report& r : first) {
    const v1::HostInventory& inv = r.req.inventory();
    INFO("report seq " << inv.report_seq());
    CHECK(inv.report_seq() > last_seq);
    last_seq = inv.report_seq();
    CHECK(inv.hostname() == "agent-a");
    CHECK(inv.agent_address() == agent.address());
    CHECK(r.peer == "agent-a");  // the agent presented its own certificate
  }
  CHECK(first.back().req.inventory().domains_size() == 1);
  const size_t log_offset = agent.proc->Log().size();

  // The registry goes away: the agent retries with growing delays and keeps serving.
  registry->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  registry.reset();
  registry_service.reset();
  const size_t before_outage = rec.All().size();
  std::vector<absl::Duration> delays;
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    delays = RetryDelays(agent.proc->Log().substr(log_offset));
    if (delays.size() >= 3) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  INFO(agent.proc->Log().substr(log_offset));
  REQUIRE(delays.size() >= 3);
  CHECK(delays[0] < delays[1]);
  CHECK(delays[1] < delays[2]);  // backoff, not the 0.2 s interval
  auto stub = SchedulerStub(agent, "agent-a");
  cv1::GetHostInfoResponse info;
  grpc::Status s = Call(*stub, &Stub::GetHostInfo, cv1::GetHostInfoRequest(), &info);
  INFO("GetHostInfo during the outage: " << Describe(s));
  CHECK(s.ok());
  CHECK(info.inventory().hostname() == "agent-a");
  CHECK(rec.All().size() == before_outage);

  // Back on the same port: reports resume, with their sequence still growing.
  registry_service = std::make_unique<FakeRegistry>(&rec);
  registry = StartRegistry(registry_service.get(), reg_port);
  const bool resumed =
      rec.WaitFor([&](const std::vector<Report>& r) { return r.size() >= before_outage + 2; },
                  absl::Seconds(40));
  std::vector<Report> all = rec.All();
  INFO(all.size() << " reports, " << before_outage << " before the outage");
  REQUIRE(resumed);
  last_seq = 0;
  for (const Report& r : all) {
    CHECK(r.req.inventory().report_seq() > last_seq);
    last_seq = r.req.inventory().report_seq();
  }
  CHECK(HasDomain(all.back(), kUuid));
  std::cout << "host reports: " << before_outage << " before the outage, "
            << all.size() - before_outage << " after it; retry delays";
  for (auto d : delays) std::cout << " " << absl::FormatDuration(d);
  std::cout << std::endl;

  stub.reset();
  const int st = agent.proc->Stop();
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 0);
  registry->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

}  // namespace
}  // namespace livemig::agent
