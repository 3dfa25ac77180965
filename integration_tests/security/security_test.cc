// The security matrix, against the real binaries (PostgreSQL, the scheduler, two fake compute
// agents on TCP with mutual TLS):
//
//  1. every compute agent RPC (enumerated from the service descriptor) x {no client certificate,
//     a certificate from an untrusted CA, an expired certificate, plaintext, a valid identity
//     not on the allow-list} is refused with the documented code, the fake hypervisor does not
//     change, and the allowed identity reaches every handler with the very same requests (the
//     scheduler's host registry likewise refuses forged reports);
//  2. every scheduler gRPC RPC (enumerated from the descriptor), every REST operation (from
//     api/openapi.json) and every mutating Nova route, without a token, with a wrong token and
//     with a reader token: 401/UNAUTHENTICATED and 403/PERMISSION_DENIED with a JSON message, and
//     the database unchanged; the same calls by an operator do change it;
//  3. SQL/JSON metacharacters in every string the APIs store (instance names from the hypervisor,
//     host disable reasons, request ids, requesters, abort reasons, token identities) are stored
//     and returned verbatim over gRPC, REST and Nova, filters with them match nothing, and every
//     table is still there.
#include <catch2/catch.hpp>
#include <fstream>
#include <pqxx/pqxx>
#include <set>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/tls.h"
#include "driver/fake_driver.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "google/protobuf/text_format.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/client_unary_call.h"
#define CPPHTTPLIB_OPENSSL_SUPPORT  // the REST and Nova APIs are served over HTTPS
#include "httplib.h"
#include "integration_tests/scheduler_e2e/e2e.h"
#include "integration_tests/scheduler_e2e/fake_cloud.h"
#include "nlohmann/json.hpp"
#include "proto/compute_agent.grpc.pb.h"
#include "proto/host_registry.grpc.pb.h"
#include "proto/scheduler.grpc.pb.h"
#include "testing/process.h"
#include "testing/run_command.h"

namespace livemig::e2e {
namespace {

using json = nlohmann::json;
namespace pb = ::google::protobuf;
namespace cv1 = ::livemig::compute::v1;

constexpr char kWeirdOp[] = "wo-token-0123456789abcdef0123456789";
constexpr char kWrong[] = "xx-token-0123456789abcdef0123456789";
// A token identity (no blanks, no '#': the token file's syntax) full of SQL/JSON metacharacters.
constexpr char kWeirdName[] = R"(o'brien";DROP-TABLE-hosts;--\%_$1)";

// Instances: the agent matrix's migration, the API matrix's migration, and one the API matrix
// tries to migrate.
constexpr char kAgentUuid[] = "5ec00000-0000-4000-8000-00000000000a";
constexpr char kApiUuid[] = "5ec00000-0000-4000-8000-00000000000b";
constexpr char kFreeUuid[] = "5ec00000-0000-4000-8000-00000000000c";

// NUL-free strings full of SQL, LIKE, JSON and shell metacharacters (each at most 255 bytes).
const std::vector<std::string>& Weird() {
  static const auto* w = new std::vector<std::string>{
      "'; DROP TABLE migrations; --",
      R"(Robert"); DROP TABLE hosts; --)",
      R"(back\slash \\ \' \" \x00 \n end\)",
      "100% of _all_ rows LIKE '%' OR name ILIKE '_'",
      "$1 $2::text $$dollar$$ $tag$ E'\\x27'",
      u8"ünïcødé ✓ 日本 🚀  nbsp",
      "tab\there\r\nnew line; \x01\x1f"
      " ctrl",
      "/*c*/ OR 1=1; SELECT pg_sleep(10); -- {\"json\":[1]} <b>&amp;</b>",
  };
  return *w;
}

// The request id used for Weird()[i]: the string itself when it is a valid request id (1 to
// 128 printable ASCII characters, scheduler.proto), else its C escape (cut to 128): such a
// request id is refused (INVALID_ARGUMENT), as the security test checks.
bool IsValidRequestId(const std::string& s) {
  if (s.empty() || s.size() > 128) return false;
  for (char c : s) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}
std::string WeirdRequestId(size_t i) {
  const std::string& w = Weird()[i];
  return IsValidRequestId(w) ? w : absl::CHexEscape(w).substr(0, 128);
}

std::string WeirdUuid(size_t i) {
  return absl::StrCat("5ec00000-0000-4000-8000-1000000000", 10 + i);
}

using testing::ReadFile;

std::string UrlEncode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      absl::StrAppend(&out, "%", absl::Hex(c, absl::kZeroPad2));
    }
  }
  return out;
}

bool IsRefusal(grpc::StatusCode c) {
  return c == grpc::StatusCode::UNAVAILABLE || c == grpc::StatusCode::UNAUTHENTICATED ||
         c == grpc::StatusCode::PERMISSION_DENIED;
}

std::string CodeName(grpc::StatusCode c) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(c));
}

// ---------------------------------------------------------------------------------------------
// The environment, shared by every test case (started once).

struct Env {
  std::string dir = testing::MakeShortTempDir("sec");
  std::unique_ptr<Cloud> cloud;
  int http_port = testing::FreePort();
  int port_a = testing::FreePort();
  int port_b = testing::FreePort();
  std::string state = dir + "/fake";
  std::unique_ptr<driver::FakeHypervisor> hv;
  std::unique_ptr<httplib::SSLClient> http;
  std::shared_ptr<grpc::Channel> api_channel;
  std::string agent_migration, api_migration;  // long transfers (UUIDs)
  std::vector<std::string> tables;

  Env() {
    std::ofstream(dir + "/tokens") << kOpToken << " operator ops-alice\n"
                                   << kReaderToken << " reader dash-bob\n"
                                   << kWeirdOp << " operator " << kWeirdName << "\n";
    cloud = std::make_unique<Cloud>(dir);
    cloud->set_token(kOpToken);
    cloud->StartScheduler(absl::StrCat("--tokens-file ", dir,
                                       "/tokens --http-listen 127.0.0.1:", http_port,
                                       " --report-interval 1 --max-outbound-per-host 30 "
                                       "--max-inbound-per-host 30 --max-total 60",
                                       cloud->ApiTlsFlags()));
    hv = std::make_unique<driver::FakeHypervisor>(state);
    StartFakeAgent(*cloud, state, "host-a", "--max-concurrent-migrations 30", port_a);
    StartFakeAgent(*cloud, state, "host-b", "--max-concurrent-migrations 30", port_b);
    WaitFakeHosts(*hv, {"host-a", "host-b"}, absl::Seconds(20));
    // Credentials for the agent matrix: an identity off the allow-list from the cluster CA; a
    // "scheduler" (allowed name) from a rogue CA; an expired "scheduler" from the cluster CA.
    cloud->Issue("intruder");
    const std::string pki = testing::RunfilePath("deploy/pki.sh");
    REQUIRE(testing::RunCommand(absl::StrCat(pki, " init ", dir, "/rogue")).ok());
    REQUIRE(testing::RunCommand(absl::StrCat(pki, " issue ", dir, "/rogue scheduler")).ok());
    REQUIRE(
        testing::RunCommand(absl::StrCat("mkdir -p ", dir, "/expired && cp ", cloud->pki(),
                                         "/ca.pem ", cloud->pki(), "/ca.key ", dir, "/expired/"))
            .ok());
    REQUIRE(
        testing::RunCommand(absl::StrCat(pki, " issue-expired ", dir, "/expired scheduler")).ok());

    // Transfers from host-a run for 10 minutes unless aborted or forced.
    REQUIRE(hv->SetTransferDuration("host-a", absl::Minutes(10)).ok());
    REQUIRE(hv->CreateDomain("host-a", kAgentUuid, "agent-target", 64).ok());
    REQUIRE(hv->CreateDomain("host-a", kApiUuid, "api-target", 64).ok());
    REQUIRE(hv->CreateDomain("host-a", kFreeUuid, "api-free", 64).ok());
    for (const char* u : {kAgentUuid, kApiUuid, kFreeUuid}) {
      REQUIRE(cloud->WaitInstanceOn(u, "host-a", absl::Seconds(20)));
    }
    http = std::make_unique<httplib::SSLClient>("127.0.0.1", http_port);
    http->set_ca_cert_path(cloud->ca_pem().c_str());
    http->enable_server_certificate_verification(true);
    http->set_read_timeout(20, 0);
    http->set_url_encode(false);
    api_channel =
        grpc::CreateChannel("unix:" + dir + "/api.sock", grpc::InsecureChannelCredentials());
    agent_migration = StartLong(kAgentUuid);
    api_migration = StartLong(kApiUuid);
    pqxx::connection c(cloud->db());
    pqxx::work w(c);
    for (const auto& row : w.exec("SELECT table_name FROM information_schema.tables WHERE "
                                  "table_schema = 'public' ORDER BY 1")) {
      tables.push_back(row[0].as<std::string>());
    }
  }
  ~Env() {
    http.reset();
    api_channel.reset();
    cloud.reset();
    testing::RunCommand("rm -rf " + dir).IgnoreError();
  }

  // Starts a migration host-a -> host-b whose transfer runs for 10 minutes; waits until it is
  // RUNNING and its transfer is under way in the fake hypervisor (the status is written before
  // the agent's LiveMigration starts the transfer; the sweeps compare hypervisor snapshots).
  std::string StartLong(const std::string& uuid) {
    return StartLongMigration(*cloud, *hv, uuid, "host-b");
  }

  httplib::Headers Bearer(const char* token) {
    if (token == nullptr) return {};
    return {{"Authorization", std::string("Bearer ") + token}};
  }
  httplib::Result Http(const std::string& method, const std::string& path, const std::string& body,
                       httplib::Headers headers) {
    if (method == "get") return http->Get(path.c_str(), headers);
    if (method == "post") return http->Post(path.c_str(), headers, body, "application/json");
    if (method == "put") return http->Put(path.c_str(), headers, body, "application/json");
    if (method == "delete") return http->Delete(path.c_str(), headers);
    FAIL("unknown method " << method);
    return http->Get(path.c_str(), headers);
  }

  // What the API matrix must not change (and the operator's control calls do change).
  std::string DbFingerprint() {
    pqxx::connection c(cloud->db());
    pqxx::work w(c);
    auto r = w.exec1(
        "SELECT (SELECT count(*) FROM migrations), (SELECT count(*) FROM evacuations), "
        "(SELECT count(*) FROM hosts WHERE NOT enabled OR disabled_reason IS NOT NULL), "
        "(SELECT count(*) FROM migrations WHERE aborted_by IS NOT NULL OR abort_requested_at IS "
        "NOT NULL), (SELECT count(*) FROM migrations WHERE force_complete_requested_by IS NOT "
        "NULL), (SELECT count(*) FROM migration_events WHERE actor LIKE 'dash-bob%')");
    return absl::StrCat("migrations=", r[0].as<int64_t>(), " evacuations=", r[1].as<int64_t>(),
                        " disabled_hosts=", r[2].as<int64_t>(), " aborted=", r[3].as<int64_t>(),
                        " forced=", r[4].as<int64_t>(), " reader_events=", r[5].as<int64_t>());
  }
};

Env& E() {
  static std::unique_ptr<Env> e = std::make_unique<Env>();
  return *e;
}

using Stub = sv1::SchedulerApi::Stub;

// Calls the unary RPC `rpc` of the scheduler API (with the operator's token) on a request that
// `fill` sets; returns its status, and its answer in `out` when given.
template <typename Req, typename Resp, typename Fill>
grpc::Status Call(Cloud& cloud, grpc::Status (Stub::*rpc)(grpc::ClientContext*, const Req&, Resp*),
                  Fill fill, Resp* out = nullptr) {
  grpc::ClientContext ctx;
  cloud.Prepare(&ctx);
  Req r;
  fill(r);
  Resp answer;
  return (cloud.api().*rpc)(&ctx, r, out != nullptr ? out : &answer);
}

// Enables host-b again (REQUIREd); returns it.
sv1::Host EnableHostB() {
  sv1::Host h;
  REQUIRE(Call(
              *E().cloud, &Stub::SetHostEnabled,
              [](sv1::SetHostEnabledRequest& en) {
                en.set_hostname("host-b");
                en.set_enabled(true);
              },
              &h)
              .ok());
  return h;
}

// ---------------------------------------------------------------------------------------------
// Calling any RPC of a service by its descriptor (so that a new RPC is covered automatically).

struct CallResult {
  grpc::Status status;
  int messages = 0;
};

std::unique_ptr<pb::Message> NewMessage(const pb::Descriptor* d) {
  return std::unique_ptr<pb::Message>(
      pb::MessageFactory::generated_factory()->GetPrototype(d)->New());
}

CallResult Invoke(grpc::Channel* channel, const pb::MethodDescriptor* m, const pb::Message& req,
                  const std::string& authorization = "",
                  absl::Duration deadline = absl::Seconds(10)) {
  const std::string path = absl::StrCat("/", m->service()->full_name(), "/", m->name());
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  if (!authorization.empty()) ctx.AddMetadata("authorization", authorization);
  auto resp = NewMessage(m->output_type());
  CallResult r;
  if (m->client_streaming()) {
    FAIL("client-streaming RPC " << path << ": teach Invoke about it");
  } else if (m->server_streaming()) {
    grpc::internal::RpcMethod rpc(path.c_str(), grpc::internal::RpcMethod::SERVER_STREAMING);
    std::unique_ptr<grpc::ClientReader<pb::Message>> reader(
        grpc::internal::ClientReaderFactory<pb::Message>::Create(channel, rpc, &ctx, req));
    if (reader->Read(resp.get())) {
      ++r.messages;
      ctx.TryCancel();  // one snapshot is enough: the handler ran
      while (reader->Read(resp.get())) {
      }
    }
    r.status = reader->Finish();
  } else {
    grpc::internal::RpcMethod rpc(path.c_str(), grpc::internal::RpcMethod::NORMAL_RPC);
    r.status = grpc::internal::BlockingUnaryCall<pb::Message, pb::Message>(channel, rpc, &ctx, req,
                                                                           resp.get());
    if (r.status.ok()) ++r.messages;
  }
  return r;
}

// Whether the handler ran (an answer of its own, not an authentication refusal). A stream
// cancelled by us after its first snapshot ran too.
bool ReachedHandler(const CallResult& r) {
  return r.messages > 0 || !IsRefusal(r.status.error_code());
}

// ---------------------------------------------------------------------------------------------
// 1. The compute agent.

const pb::ServiceDescriptor* AgentServiceDescriptor() {
  const pb::ServiceDescriptor* s =
      cv1::GetHostInfoRequest::descriptor()->file()->FindServiceByName("ComputeAgent");
  REQUIRE(s != nullptr);
  return s;
}

// The read-only RPCs need only a certificate from the cluster CA (compute_agent.proto,
// "Security"). Every other RPC, including any RPC added later, must need the allow-list.
const std::set<std::string>& AgentReadOnly() {
  static const auto* s =
      new std::set<std::string>{"GetHostInfo", "ListDomains", "DescribeInstance",
                                "GetMigrationProgress", "WatchMigrationProgress"};
  return *s;
}

// A well-formed request for `m` aimed at the running migration of kAgentUuid on host-a (the
// agent under test): were it accepted, abort / force-complete / rollback would change the
// hypervisor.
std::unique_ptr<pb::Message> AgentRequest(const pb::MethodDescriptor* m) {
  auto req = NewMessage(m->input_type());
  const bool dest_side = absl::StrContains(m->name(), "Dest") || m->name() == "PreLiveMigration";
  const std::map<std::string, std::string> values = {
      {"migration_id", E().agent_migration},
      {"instance_uuid", kAgentUuid},
      {"source_host", dest_side ? "host-b" : "host-a"},
      {"dest_host", dest_side ? "host-a" : "host-b"},
      {"hostname", "host-a"},
  };
  const pb::Reflection* refl = req->GetReflection();
  for (int i = 0; i < m->input_type()->field_count(); ++i) {
    const pb::FieldDescriptor* f = m->input_type()->field(i);
    auto it = values.find(f->name());
    if (it != values.end() && f->type() == pb::FieldDescriptor::TYPE_STRING && !f->is_repeated()) {
      refl->SetString(req.get(), f, it->second);
    }
  }
  return req;
}

enum class Caller { kAllowed, kNoCert, kUntrustedCa, kExpired, kNotAllowed, kPlaintext };

// A fresh channel (its own subchannel, so every call makes its own handshake) to host-a's agent.
std::shared_ptr<grpc::Channel> AgentChannel(Caller who) {
  const std::string pki = E().cloud->pki();
  auto tls = [&](const std::string& base) {
    TlsFiles f;
    f.ca = pki + "/ca.pem";  // every caller verifies the agent against the real cluster CA
    f.cert = base + ".pem";
    f.key = base + ".key";
    auto c = MakeChannelCredentials(f);
    REQUIRE(c.ok());
    return *c;
  };
  std::shared_ptr<grpc::ChannelCredentials> creds;
  switch (who) {
    case Caller::kAllowed:
      creds = tls(pki + "/scheduler");
      break;
    case Caller::kNotAllowed:
      creds = tls(pki + "/intruder");
      break;
    case Caller::kUntrustedCa:
      creds = tls(E().dir + "/rogue/scheduler");
      break;
    case Caller::kExpired:
      creds = tls(E().dir + "/expired/scheduler");
      break;
    case Caller::kNoCert: {
      grpc::SslCredentialsOptions o;
      o.pem_root_certs = ReadFile(pki + "/ca.pem");
      creds = grpc::SslCredentials(o);
      break;
    }
    case Caller::kPlaintext:
      creds = grpc::InsecureChannelCredentials();
      break;
  }
  grpc::ChannelArguments args = ClientChannelArgs("host-a");
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(absl::StrCat("127.0.0.1:", E().port_a), creds, args);
}

// Files under the fake hosts' shared instance path (probe files, staged definitions).
std::string InstancePathListing() {
  auto r = testing::RunCommand(absl::StrCat("ls -laR ", E().state,
                                            "/instances 2>/dev/null | "
                                            "grep -v '^total' | awk '{print $NF}'"));
  return r.ok() ? *r : "";
}

// Calls every agent RPC as `who`; `expect` checks each result. The fake hypervisor's state and
// the instance path must not change.
void AgentSweep(Caller who,
                const std::function<void(const pb::MethodDescriptor*, const CallResult&)>& expect) {
  auto before = E().hv->Snapshot();
  REQUIRE(before.ok());
  const std::string files_before = InstancePathListing();
  const pb::ServiceDescriptor* svc = AgentServiceDescriptor();
  REQUIRE(svc->method_count() >= 16);
  for (int i = 0; i < svc->method_count(); ++i) {
    const pb::MethodDescriptor* m = svc->method(i);
    auto req = AgentRequest(m);
    auto channel = AgentChannel(who);
    CallResult r = Invoke(channel.get(), m, *req);
    INFO(m->name() << " -> " << CodeName(r.status.error_code()) << ": "
                   << r.status.error_message());
    expect(m, r);
  }
  auto after = E().hv->Snapshot();
  REQUIRE(after.ok());
  CHECK(after->dump() == before->dump());
  CHECK(InstancePathListing() == files_before);
  // The migration the calls aimed at is still running, untouched.
  auto mig = E().cloud->Get(E().agent_migration);
  REQUIRE(mig.ok());
  CHECK(mig->status() == v1::MIGRATION_STATUS_RUNNING);
}

int CountInLog(const std::string& log, const std::string& what) {
  std::string text = ReadFile(log);
  int n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

// The TLS handshake is refused (no, untrusted or expired certificate): UNAVAILABLE, and the
// agent logged the failed handshakes.
void ExpectHandshakeRefused(Caller who) {
  const std::string log = E().cloud->agent("host-a")->log();
  const int before = CountInLog(log, "Handshake failed");
  AgentSweep(who, [](const pb::MethodDescriptor*, const CallResult& r) {
    CHECK(r.messages == 0);
    CHECK(r.status.error_code() == grpc::StatusCode::UNAVAILABLE);
  });
  CHECK(CountInLog(log, "Handshake failed") >= before + AgentServiceDescriptor()->method_count());
}

TEST_CASE("agent: no client certificate: every RPC is refused at the handshake") {
  ExpectHandshakeRefused(Caller::kNoCert);
}

TEST_CASE("agent: a certificate from an untrusted CA (CN of an allowed identity) is refused") {
  ExpectHandshakeRefused(Caller::kUntrustedCa);
}

TEST_CASE("agent: an expired certificate from the cluster CA (allowed CN) is refused") {
  ExpectHandshakeRefused(Caller::kExpired);
}

TEST_CASE("agent: a plaintext caller is refused on every RPC") {
  AgentSweep(Caller::kPlaintext, [](const pb::MethodDescriptor*, const CallResult& r) {
    CHECK(r.messages == 0);
    // The agent speaks only TLS: a plaintext HTTP/2 preface fails the handshake and the
    // connection is closed (UNAVAILABLE), before any handler. (compute_agent.proto's error
    // table says UNAUTHENTICATED; no TLS server can answer a plaintext caller with a status.)
    CHECK(r.status.error_code() == grpc::StatusCode::UNAVAILABLE);
  });
}

TEST_CASE("agent: a valid identity off the allow-list may not call any step RPC") {
  AgentSweep(Caller::kNotAllowed, [](const pb::MethodDescriptor* m, const CallResult& r) {
    if (AgentReadOnly().count(m->name())) {
      // Read-only RPCs need only a cluster certificate (documented); they change nothing.
      CHECK(ReachedHandler(r));
      return;
    }
    CHECK(r.status.error_code() == grpc::StatusCode::PERMISSION_DENIED);
    CHECK(absl::StrContains(r.status.error_message(), "'intruder'"));
    CHECK(absl::StrContains(r.status.error_message(), m->name()));
  });
}

TEST_CASE("agent: control: the allowed identity reaches every handler with the same requests") {
  auto before = E().hv->Snapshot();
  REQUIRE(before.ok());
  const pb::ServiceDescriptor* svc = AgentServiceDescriptor();
  int reached = 0;
  for (int i = 0; i < svc->method_count(); ++i) {
    const pb::MethodDescriptor* m = svc->method(i);
    auto req = AgentRequest(m);
    auto channel = AgentChannel(Caller::kAllowed);
    CallResult r = Invoke(channel.get(), m, *req);
    INFO(m->name() << " -> " << CodeName(r.status.error_code()) << ": "
                   << r.status.error_message());
    CHECK(ReachedHandler(r));
    if (AgentReadOnly().count(m->name())) CHECK(r.messages > 0);
    reached += ReachedHandler(r);
  }
  CHECK(reached == svc->method_count());
  // The same AbortLiveMigration did reach the hypervisor this time: the sweeps above would have
  // seen it.
  auto after = E().hv->Snapshot();
  REQUIRE(after.ok());
  CHECK(after->dump() != before->dump());
  CHECK((*after)["transfers"][E().agent_migration].value("abort_requested", false));
  // The scheduler notices the aborted transfer; its migration ends.
  auto m = E().cloud->WaitTerminal(E().agent_migration, absl::Seconds(60));
  CHECK(m.status() != v1::MIGRATION_STATUS_COMPLETED);
}

// The scheduler's host registry (the agents' side of the scheduler) takes the same mutual TLS:
// a forged report (for host-a, claiming a new instance) from every kind of wrong caller is
// refused, and the instance never appears.
TEST_CASE("registry: forged host reports are refused for every wrong caller") {
  constexpr char kForged[] = "5ec00000-0000-4000-8000-0000000000ee";
  const pb::ServiceDescriptor* svc =
      livemig::registry::v1::ReportHostRequest::descriptor()->file()->FindServiceByName(
          "HostRegistry");
  REQUIRE(svc != nullptr);
  REQUIRE(svc->method_count() >= 1);
  const std::string pki = E().cloud->pki();
  E().cloud->Issue("host-z");  // a valid agent certificate of another host
  auto creds_for = [&](Caller who) -> std::shared_ptr<grpc::ChannelCredentials> {
    TlsFiles f;
    f.ca = pki + "/ca.pem";
    switch (who) {
      case Caller::kNoCert: {
        grpc::SslCredentialsOptions o;
        o.pem_root_certs = ReadFile(pki + "/ca.pem");
        return grpc::SslCredentials(o);
      }
      case Caller::kPlaintext:
        return grpc::InsecureChannelCredentials();
      case Caller::kUntrustedCa:
        f.cert = E().dir + "/rogue/scheduler.pem", f.key = E().dir + "/rogue/scheduler.key";
        break;
      case Caller::kExpired:
        f.cert = E().dir + "/expired/scheduler.pem", f.key = E().dir + "/expired/scheduler.key";
        break;
      default:
        f.cert = pki + "/host-z.pem", f.key = pki + "/host-z.key";
    }
    auto c = MakeChannelCredentials(f);
    REQUIRE(c.ok());
    return *c;
  };
  for (Caller who : {Caller::kNoCert, Caller::kUntrustedCa, Caller::kExpired, Caller::kNotAllowed,
                     Caller::kPlaintext}) {
    grpc::ChannelArguments args = ClientChannelArgs("scheduler");
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto channel =
        grpc::CreateCustomChannel("unix:" + E().dir + "/registry.sock", creds_for(who), args);
    for (int i = 0; i < svc->method_count(); ++i) {
      const pb::MethodDescriptor* m = svc->method(i);
      auto req = NewMessage(m->input_type());
      REQUIRE(pb::TextFormat::ParseFromString(
          absl::StrCat("inventory { hostname: 'host-a' report_seq: 999999999 agent_address: "
                       "'127.0.0.1:1' domains { uuid: '",
                       kForged, "' name: 'forged' state: DOMAIN_STATE_RUNNING memory_mib: 1 } }"),
          req.get()));
      CallResult r = Invoke(channel.get(), m, *req);
      INFO(static_cast<int>(who) << " " << m->name() << " -> " << CodeName(r.status.error_code())
                                 << ": " << r.status.error_message());
      CHECK(r.messages == 0);
      if (who == Caller::kNotAllowed) {
        CHECK(r.status.error_code() == grpc::StatusCode::PERMISSION_DENIED);
        CHECK(absl::StrContains(r.status.error_message(), "host-z"));
      } else {
        CHECK(r.status.error_code() == grpc::StatusCode::UNAVAILABLE);
      }
    }
  }
  // ReportHost commits before it answers: a forged report, had one been applied, shows already
  // (host-a's report_seq would be 999999999). Then host-a's own agent reports again (every
  // second) and is applied: the registry is past the forged calls and still serves the host.
  auto host_a_seq = []() -> uint64_t {
    auto h = E().cloud->GetHost("host-a");
    return h.ok() ? h->inventory().report_seq() : 0;
  };
  const uint64_t seq_after_forgeries = host_a_seq();
  INFO("host-a report_seq after the forged reports: " << seq_after_forgeries);
  CHECK(seq_after_forgeries > 0);
  CHECK(seq_after_forgeries != 999999999);
  CHECK(testing::WaitFor([&] { return host_a_seq() > seq_after_forgeries; }, absl::Seconds(30)));
  grpc::ClientContext ctx;
  E().cloud->Prepare(&ctx);
  sv1::GetInstanceRequest g;
  g.set_instance_uuid(kForged);
  sv1::Instance out;
  CHECK(E().cloud->api().GetInstance(&ctx, g, &out).error_code() == grpc::StatusCode::NOT_FOUND);
  CHECK(E().cloud->WaitInstanceOn(kFreeUuid, "host-a", absl::Seconds(5)));
}

// A report for a name reserved for the scheduler's identity is refused, whoever sends it (here
// the scheduler's own certificate, whose CN is "scheduler": the CN check alone would pass it).
TEST_CASE("registry: a report for a reserved host name is refused") {
  TlsFiles f;
  f.ca = E().cloud->pki() + "/ca.pem";
  f.cert = E().cloud->pki() + "/scheduler.pem";
  f.key = E().cloud->pki() + "/scheduler.key";
  auto creds = MakeChannelCredentials(f);
  REQUIRE(creds.ok());
  grpc::ChannelArguments args = ClientChannelArgs("scheduler");
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto channel = grpc::CreateCustomChannel("unix:" + E().dir + "/registry.sock", *creds, args);
  auto stub = livemig::registry::v1::HostRegistry::NewStub(channel);
  for (const char* name : {"scheduler", "Scheduler", "api"}) {
    livemig::registry::v1::ReportHostRequest req;
    req.mutable_inventory()->set_hostname(name);
    req.mutable_inventory()->set_report_seq(1);
    livemig::registry::v1::ReportHostResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    const grpc::Status st = stub->ReportHost(&ctx, req, &resp);
    INFO(name << " -> " << CodeName(st.error_code()) << ": " << st.error_message());
    CHECK(st.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(absl::StrContains(st.error_message(), "reserved"));
  }
  CHECK(E().cloud->GetHost("scheduler").status().code() == absl::StatusCode::kNotFound);
}

// ---------------------------------------------------------------------------------------------
// 2. The APIs.

const pb::ServiceDescriptor* ApiServiceDescriptor() {
  const pb::ServiceDescriptor* s =
      sv1::LiveMigrateRequest::descriptor()->file()->FindServiceByName("SchedulerApi");
  REQUIRE(s != nullptr);
  return s;
}

// The reader's RPCs (scheduler.proto, "Authentication"); every other RPC, including any RPC
// added later, must need the operator role.
bool ApiReadOnly(const std::string& name) {
  return absl::StartsWith(name, "Get") || absl::StartsWith(name, "List") ||
         absl::StartsWith(name, "Watch") || name == "CheckMigration";
}

// A well-formed request that would change something were it accepted.
std::unique_ptr<pb::Message> ApiRequest(const pb::MethodDescriptor* m) {
  const std::string mig = E().api_migration;
  const std::map<std::string, std::string> text = {
      {"LiveMigrate", absl::StrCat("instance_uuid: '", kFreeUuid,
                                   "' destination: 'host-b' request_id: 'sec-matrix' "
                                   "options { completion_timeout_s: 3600 }")},
      {"GetMigration", absl::StrCat("migration_id: '", mig, "'")},
      {"WatchMigration", absl::StrCat("migration_id: '", mig, "'")},
      {"AbortMigration", absl::StrCat("migration_id: '", mig, "' reason: 'matrix'")},
      {"ForceCompleteMigration", absl::StrCat("migration_id: '", mig, "'")},
      {"CheckMigration", absl::StrCat("instance_uuid: '", kFreeUuid, "' destination: 'host-b'")},
      {"GetHost", "hostname: 'host-a'"},
      {"SetHostEnabled", "hostname: 'host-b' enabled: false reason: 'matrix'"},
      {"EvacuateHost", "hostname: 'host-b' max_parallel: 1"},
      {"GetEvacuation", "evacuation_id: '00000000-0000-4000-8000-000000000000'"},
      {"CancelEvacuation",
       "evacuation_id: '00000000-0000-4000-8000-000000000000' reason: 'matrix'"},
      {"GetInstance", absl::StrCat("instance_uuid: '", kFreeUuid, "'")},
  };
  auto req = NewMessage(m->input_type());
  auto it = text.find(m->name());
  if (it != text.end()) REQUIRE(pb::TextFormat::ParseFromString(it->second, req.get()));
  return req;
}

void ApiGrpcSweep(
    const std::string& authorization,
    const std::function<void(const pb::MethodDescriptor*, const CallResult&)>& expect) {
  const std::string before = E().DbFingerprint();
  const pb::ServiceDescriptor* svc = ApiServiceDescriptor();
  REQUIRE(svc->method_count() >= 15);
  for (int i = 0; i < svc->method_count(); ++i) {
    const pb::MethodDescriptor* m = svc->method(i);
    auto req = ApiRequest(m);
    CallResult r = Invoke(E().api_channel.get(), m, *req, authorization);
    INFO(m->name() << " -> " << CodeName(r.status.error_code()) << ": "
                   << r.status.error_message());
    expect(m, r);
  }
  CHECK(E().DbFingerprint() == before);
}

TEST_CASE("api gRPC: no token, a malformed header or a wrong token: UNAUTHENTICATED everywhere") {
  for (const std::string& header :
       {std::string(), std::string("Bearer "), std::string(kOpToken),
        absl::StrCat("Basic ", kOpToken), absl::StrCat("Bearer ", kWrong),
        absl::StrCat("Bearer ", kOpToken, "x"), absl::StrCat("Bearer  ", kOpToken),
        absl::StrCat("bearer ", kOpToken)}) {
    DYNAMIC_SECTION("authorization: '" << header << "'") {
      ApiGrpcSweep(header, [](const pb::MethodDescriptor* m, const CallResult& r) {
        CHECK(r.messages == 0);
        CHECK(r.status.error_code() == grpc::StatusCode::UNAUTHENTICATED);
        CHECK(absl::StrContains(r.status.error_message(), m->name()));
      });
    }
  }
}

TEST_CASE("api gRPC: a reader may read but not call any mutating RPC") {
  int mutating = 0;
  ApiGrpcSweep(absl::StrCat("Bearer ", kReaderToken),
               [&](const pb::MethodDescriptor* m, const CallResult& r) {
                 if (ApiReadOnly(m->name())) {
                   CHECK(ReachedHandler(r));
                   return;
                 }
                 ++mutating;
                 CHECK(r.status.error_code() == grpc::StatusCode::PERMISSION_DENIED);
                 CHECK(absl::StrContains(r.status.error_message(), "dash-bob"));
                 CHECK(absl::StrContains(r.status.error_message(), m->name()));
               });
  CHECK(mutating >= 5);
}

// REST operations from the OpenAPI document, with concrete paths and bodies that would change
// something.
struct RestOp {
  std::string method, path, concrete, body;
  bool mutating;
};

std::vector<RestOp> RestOps() {
  std::ifstream in(testing::RunfilePath("api/openapi.json"));
  REQUIRE(in);
  json doc = json::parse(in);
  std::vector<RestOp> ops;
  for (auto& [path, methods] : doc["paths"].items()) {
    for (auto& [method, spec] : methods.items()) {
      if (spec.value("security", json::array()).empty()) continue;  // /healthz: open
      RestOp op;
      op.method = method;
      op.path = path;
      op.mutating = absl::StrContains(spec.value("description", ""), "operator role");
      // Every operation but GET is mutating unless the document says "reader role" (the
      // dry-run check).
      if (method != "get") {
        CHECK((op.mutating || absl::StrContains(spec.value("description", ""), "reader role")));
      }
      std::string host = "host-a", uuid = kFreeUuid;
      if (absl::StrContains(path, "/enabled")) {
        host = "host-b";
        op.body = R"({"enabled":false,"reason":"rest matrix"})";
      } else if (absl::StrContains(path, "evacuate-live")) {
        host = "host-b";
        op.body = R"({"max_parallel":1})";
      } else if (absl::StrContains(path, "live-migration")) {
        op.body = R"({"destination":"host-b","request_id":"rest-matrix"})";
      } else if (absl::StrContains(path, "/abort") || absl::StrContains(path, "/cancel")) {
        op.body = R"({"reason":"rest matrix"})";
      } else if (method != "get") {
        op.body = absl::StrCat(R"({"instance_uuid":")", kFreeUuid, R"("})");
      }
      op.concrete = absl::StrReplaceAll(
          path, {{"{uuid}", uuid}, {"{id}", E().api_migration}, {"{name}", host}});
      ops.push_back(op);
    }
  }
  return ops;
}

// {"error":{"code":..., "message":...}} with a non-empty message.
void CheckRestError(const httplib::Result& r, int status, const std::string& code) {
  REQUIRE(r);
  INFO(r->status << " " << r->body);
  CHECK(r->status == status);
  CHECK(absl::StartsWith(r->get_header_value("Content-Type"), "application/json"));
  auto j = json::parse(r->body, nullptr, false);
  REQUIRE_FALSE(j.is_discarded());
  CHECK(j["error"]["code"] == code);
  CHECK(!j["error"]["message"].get<std::string>().empty());
}

TEST_CASE("api REST: every operation needs a valid token; a reader may not mutate") {
  const std::string before = E().DbFingerprint();
  auto ops = RestOps();
  CHECK(ops.size() >= 15);
  int mutating = 0;
  for (const RestOp& op : ops) {
    INFO(op.method << " " << op.concrete);
    auto none = E().Http(op.method, op.concrete, op.body, {});
    CheckRestError(none, 401, "UNAUTHENTICATED");
    CHECK(none->get_header_value("WWW-Authenticate") == "Bearer");
    CheckRestError(E().Http(op.method, op.concrete, op.body, E().Bearer(kWrong)), 401,
                   "UNAUTHENTICATED");
    CheckRestError(E().Http(op.method, op.concrete, op.body, {{"Authorization", kOpToken}}), 401,
                   "UNAUTHENTICATED");
    auto reader = E().Http(op.method, op.concrete, op.body, E().Bearer(kReaderToken));
    REQUIRE(reader);
    if (op.mutating) {
      ++mutating;
      CheckRestError(reader, 403, "PERMISSION_DENIED");
      CHECK(absl::StrContains(reader->body, "dash-bob"));
    } else {
      CHECK(reader->status != 401);
      CHECK(reader->status != 403);
    }
  }
  CHECK(mutating == 7);
  CHECK(E().DbFingerprint() == before);
}

// Nova's mutating routes (api/NOVA.md), with both of Nova's token headers.
struct NovaOp {
  std::string method, path, body;
};

std::vector<NovaOp> NovaMutatingOps() {
  const std::string mig = E().api_migration;
  return {
      {"post", absl::StrCat("/v2.1/servers/", kFreeUuid, "/action"),
       R"({"os-migrateLive":{"host":"host-b","block_migration":"auto"}})"},
      {"delete", absl::StrCat("/v2.1/servers/", kApiUuid, "/migrations/", mig), ""},
      {"post", absl::StrCat("/v2.1/servers/", kApiUuid, "/migrations/", mig, "/action"),
       R"({"force_complete":null})"},
      {"put", "/v2.1/os-services/host-b", R"({"status":"disabled","disabled_reason":"nova"})"},
  };
}

void CheckNovaError(const httplib::Result& r, int status, const std::string& key) {
  REQUIRE(r);
  INFO(r->status << " " << r->body);
  CHECK(r->status == status);
  auto j = json::parse(r->body, nullptr, false);
  REQUIRE_FALSE(j.is_discarded());
  REQUIRE(j.contains(key));
  CHECK(j[key]["code"] == status);
  CHECK(!j[key]["message"].get<std::string>().empty());
}

TEST_CASE("api Nova: every route needs a valid token; a reader may not mutate") {
  const std::string before = E().DbFingerprint();
  const httplib::Headers version = {{"OpenStack-API-Version", "compute 2.79"}};
  auto with = [&](httplib::Headers h) {
    h.insert(version.begin(), version.end());
    return h;
  };
  for (const NovaOp& op : NovaMutatingOps()) {
    INFO(op.method << " " << op.path);
    CheckNovaError(E().Http(op.method, op.path, op.body, with({})), 401, "unauthorized");
    CheckNovaError(E().Http(op.method, op.path, op.body, with({{"X-Auth-Token", kWrong}})), 401,
                   "unauthorized");
    CheckNovaError(E().Http(op.method, op.path, op.body, with(E().Bearer(kWrong))), 401,
                   "unauthorized");
    for (auto h : {httplib::Headers{{"X-Auth-Token", kReaderToken}}, E().Bearer(kReaderToken)}) {
      auto r = E().Http(op.method, op.path, op.body, with(h));
      CheckNovaError(r, 403, "forbidden");
      CHECK(absl::StrContains(r->body, "dash-bob"));
    }
  }
  // Every read route needs a token too.
  for (const std::string& path :
       {std::string("/v2.1/servers"), std::string("/v2.1/servers/detail"),
        absl::StrCat("/v2.1/servers/", kFreeUuid),
        absl::StrCat("/v2.1/servers/", kApiUuid, "/migrations"),
        absl::StrCat("/v2.1/servers/", kApiUuid, "/migrations/", E().api_migration),
        std::string("/v2.1/os-migrations"), std::string("/v2.1/os-services"),
        std::string("/v2.1/os-hypervisors"), std::string("/v2.1/os-hypervisors/detail"),
        std::string("/v2.1/os-hypervisors/host-a")}) {
    INFO(path);
    CheckNovaError(E().Http("get", path, "", with({})), 401, "unauthorized");
    auto ok = E().Http("get", path, "", with({{"X-Auth-Token", kReaderToken}}));
    REQUIRE(ok);
    CHECK(ok->status == 200);
  }
  CHECK(E().DbFingerprint() == before);
}

TEST_CASE("api: control: an operator's identical calls do change the database") {
  const std::string before = E().DbFingerprint();
  const pb::ServiceDescriptor* svc = ApiServiceDescriptor();
  std::string free_migration;
  for (int i = 0; i < svc->method_count(); ++i) {
    const pb::MethodDescriptor* m = svc->method(i);
    if (ApiReadOnly(m->name())) continue;
    auto req = ApiRequest(m);
    CallResult r = Invoke(E().api_channel.get(), m, *req, absl::StrCat("Bearer ", kOpToken));
    INFO(m->name() << " -> " << CodeName(r.status.error_code()) << ": "
                   << r.status.error_message());
    CHECK(r.status.error_code() != grpc::StatusCode::UNAUTHENTICATED);
    CHECK(r.status.error_code() != grpc::StatusCode::PERMISSION_DENIED);
  }
  const std::string after = E().DbFingerprint();
  INFO(before << " -> " << after);
  CHECK(after != before);
  pqxx::connection c(E().cloud->db());
  pqxx::work w(c);
  CHECK(w.exec1("SELECT count(*) FROM migrations WHERE request_id = 'sec-matrix'")[0].as<int>() ==
        1);
  CHECK(w.exec1("SELECT aborted_by FROM migrations WHERE uuid = " + w.quote(E().api_migration))[0]
            .as<std::string>() == "ops-alice");
  CHECK_FALSE(w.exec1("SELECT enabled FROM hosts WHERE hostname = 'host-b'")[0].as<bool>());
  CHECK(w.exec1("SELECT count(*) FROM evacuations")[0].as<int>() == 1);
  free_migration = w.exec1("SELECT uuid::text FROM migrations WHERE request_id = 'sec-matrix'")[0]
                       .as<std::string>();
  w.commit();
  // Back to normal for what follows.
  EnableHostB();
  // (It may already have failed its pre-checks: host-b was disabled right after it.)
  grpc::Status as = Call(*E().cloud, &Stub::AbortMigration, [&](sv1::AbortMigrationRequest& ab) {
    ab.set_migration_id(free_migration);
  });
  INFO(as.error_message());
  CHECK((as.ok() || as.error_code() == grpc::StatusCode::FAILED_PRECONDITION));
  CHECK(E().cloud->WaitTerminal(E().api_migration, absl::Seconds(60)).status() ==
        v1::MIGRATION_STATUS_CANCELLED);
  CHECK(E().cloud->WaitTerminal(free_migration, absl::Seconds(60)).status() !=
        v1::MIGRATION_STATUS_COMPLETED);
}

// ---------------------------------------------------------------------------------------------
// 3. Metacharacters.

json RestJson(const std::string& path) {
  auto r = E().Http("get", path, "", E().Bearer(kReaderToken));
  REQUIRE(r);
  INFO(path << " -> " << r->status << " " << r->body);
  REQUIRE(r->status == 200);
  auto j = json::parse(r->body, nullptr, false);
  REQUIRE_FALSE(j.is_discarded());
  return j;
}

json NovaJson(const std::string& path) {
  auto r = E().Http("get", path, "",
                    {{"X-Auth-Token", kReaderToken}, {"OpenStack-API-Version", "compute 2.79"}});
  REQUIRE(r);
  INFO(path << " -> " << r->status << " " << r->body);
  REQUIRE(r->status == 200);
  auto j = json::parse(r->body, nullptr, false);
  REQUIRE_FALSE(j.is_discarded());
  return j;
}

TEST_CASE("sql: instance names from the hypervisor are stored and returned verbatim") {
  const auto& weird = Weird();
  for (size_t i = 0; i < weird.size(); ++i) {
    REQUIRE(E().hv->CreateDomain("host-a", WeirdUuid(i), weird[i], 32).ok());
  }
  for (size_t i = 0; i < weird.size(); ++i) {
    INFO(weird[i]);
    REQUIRE(E().cloud->WaitInstanceOn(WeirdUuid(i), "host-a", absl::Seconds(20)));
    grpc::ClientContext ctx;
    E().cloud->Prepare(&ctx);
    sv1::GetInstanceRequest r;
    r.set_instance_uuid(WeirdUuid(i));
    sv1::Instance inst;
    REQUIRE(E().cloud->api().GetInstance(&ctx, r, &inst).ok());
    CHECK(inst.name() == weird[i]);
    CHECK(RestJson("/v1/instances/" + WeirdUuid(i))["name"] == weird[i]);
    CHECK(NovaJson("/v2.1/servers/" + WeirdUuid(i))["server"]["name"] == weird[i]);
    // Nova's name filter finds it (and only names containing the string).
    auto found = NovaJson("/v2.1/servers?name=" + UrlEncode(weird[i]))["servers"];
    REQUIRE(found.size() >= 1);
    bool present = false;
    for (const auto& s : found) {
      CHECK(absl::StrContains(s["name"].get<std::string>(), weird[i]));
      present |= s["id"] == WeirdUuid(i);
    }
    CHECK(present);
  }
  // Every instance of host-a is in the list, each name verbatim.
  grpc::ClientContext ctx;
  E().cloud->Prepare(&ctx);
  sv1::ListInstancesRequest lr;
  lr.set_host("host-a");
  lr.set_page_size(1000);
  sv1::ListInstancesResponse list;
  REQUIRE(E().cloud->api().ListInstances(&ctx, lr, &list).ok());
  std::set<std::string> names;
  for (const auto& inst : list.instances()) names.insert(inst.name());
  for (const auto& w : weird) CHECK(names.count(w) == 1);
}

// Reads host-b back through every API: disabled, with `reason`.
void CheckHostB(const std::string& reason) {
  auto h = E().cloud->GetHost("host-b");
  REQUIRE(h.ok());
  CHECK(h->disabled_reason() == reason);
  CHECK_FALSE(h->enabled());
  CHECK(RestJson("/v1/hosts/host-b")["disabled_reason"] == reason);
  auto services = NovaJson("/v2.1/os-services?host=host-b")["services"];
  REQUIRE(services.size() == 1);
  CHECK(services[0]["disabled_reason"] == reason);
  CHECK(NovaJson("/v2.1/os-hypervisors/host-b")["hypervisor"]["service"]["disabled_reason"] ==
        reason);
}

TEST_CASE("sql: host disable reasons and requesters are stored and returned verbatim") {
  for (const std::string& w : Weird()) {
    INFO(w);
    {  // gRPC
      grpc::ClientContext ctx;
      E().cloud->Prepare(&ctx);
      sv1::SetHostEnabledRequest r;
      r.set_hostname("host-b");
      r.set_enabled(false);
      r.set_reason(w);
      r.set_requester(w);
      sv1::Host h;
      grpc::Status s = E().cloud->api().SetHostEnabled(&ctx, r, &h);
      INFO(s.error_message());
      REQUIRE(s.ok());
      CHECK(h.disabled_reason() == w);
      CHECK(h.disabled_by() == absl::StrCat("ops-alice [", w, "]"));
      CheckHostB(w);
    }
    {  // REST, by the operator whose token identity is itself full of metacharacters
      const std::string reason = "rest " + w;
      auto r = E().Http("put", "/v1/hosts/host-b/enabled",
                        json{{"enabled", false}, {"reason", reason}, {"requester", w}}.dump(),
                        E().Bearer(kWeirdOp));
      REQUIRE(r);
      INFO(r->body);
      REQUIRE(r->status == 200);
      CHECK(json::parse(r->body)["disabled_reason"] == reason);
      CHECK(json::parse(r->body)["disabled_by"] == absl::StrCat(kWeirdName, " [", w, "]"));
      CheckHostB(reason);
    }
    {  // Nova
      const std::string reason = "nova " + w;
      auto r = E().Http("put", "/v2.1/os-services/host-b",
                        json{{"status", "disabled"}, {"disabled_reason", reason}}.dump(),
                        {{"X-Auth-Token", kOpToken}, {"OpenStack-API-Version", "compute 2.79"}});
      REQUIRE(r);
      INFO(r->body);
      REQUIRE(r->status == 200);
      CHECK(json::parse(r->body)["service"]["disabled_reason"] == reason);
      CheckHostB(reason);
    }
  }
  CHECK(EnableHostB().disabled_reason().empty());
}

TEST_CASE("sql: request ids, requesters, abort actors and token identities are verbatim") {
  const auto& weird = Weird();
  std::vector<std::string> ids(weird.size());
  for (size_t i = 0; i < weird.size(); ++i) {
    INFO(weird[i]);
    Cloud& cloud = *E().cloud;
    sv1::LiveMigrateRequest r;
    r.set_instance_uuid(WeirdUuid(i));
    r.set_destination("host-b");
    r.set_requester(weird[i]);
    r.mutable_options()->set_completion_timeout_s(3600);
    const std::string caller = i == 0 ? kWeirdName : "ops-alice";
    sv1::LiveMigrateResponse resp;
    if (!IsValidRequestId(weird[i])) {
      // Not 1..128 printable ASCII characters: refused, naming the field and the rule.
      grpc::ClientContext ctx;
      cloud.Prepare(&ctx);
      r.set_request_id(weird[i]);
      grpc::Status s = cloud.api().LiveMigrate(&ctx, r, &resp);
      INFO(s.error_message());
      CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
      CHECK(absl::StrContains(s.error_message(), "request_id"));
      CHECK(absl::StrContains(s.error_message(), "128 printable ASCII"));
    }
    r.set_request_id(WeirdRequestId(i));
    {
      grpc::ClientContext ctx;
      ctx.AddMetadata("authorization", absl::StrCat("Bearer ", i == 0 ? kWeirdOp : kOpToken));
      grpc::Status s = cloud.api().LiveMigrate(&ctx, r, &resp);
      INFO(s.error_message());
      REQUIRE(s.ok());
    }
    ids[i] = resp.migration().id();
    CHECK(resp.migration().request_id() == WeirdRequestId(i));
    CHECK(resp.migration().requester() == absl::StrCat(caller, " [", weird[i], "]"));
    CHECK(resp.migration().instance_name() == weird[i]);
    // The same request id finds the same migration (an exact match, not a pattern).
    {
      grpc::ClientContext ctx;
      cloud.Prepare(&ctx);
      sv1::LiveMigrateResponse again;
      REQUIRE(cloud.api().LiveMigrate(&ctx, r, &again).ok());
      CHECK(again.existing());
      CHECK(again.migration().id() == ids[i]);
    }
    // REST shows the same, verbatim.
    auto j = RestJson("/v1/migrations/" + ids[i]);
    CHECK(j["request_id"] == WeirdRequestId(i));
    CHECK(j["requester"] == absl::StrCat(caller, " [", weird[i], "]"));
    CHECK(j["instance_name"] == weird[i]);
  }
  // Even ones: aborted with a weird reason; odd ones: forced, once running.
  for (size_t i = 0; i < weird.size(); ++i) {
    INFO(weird[i]);
    Cloud& cloud = *E().cloud;
    if (i % 2 == 0) {
      sv1::AbortMigrationResponse ar;
      grpc::Status s = Call(
          cloud, &Stub::AbortMigration,
          [&](sv1::AbortMigrationRequest& a) {
            a.set_migration_id(ids[i]);
            a.set_reason(weird[i]);
            a.set_requester(weird[i]);
          },
          &ar);
      INFO(s.error_message());
      REQUIRE(s.ok());
      CHECK(ar.migration().aborted_by() == absl::StrCat("ops-alice [", weird[i], "]"));
      CHECK(ar.migration().abort_reason() == weird[i]);
    } else {
      cloud.RequireStatus(ids[i], v1::MIGRATION_STATUS_RUNNING, absl::Seconds(30));
      sv1::ForceCompleteMigrationResponse fr;
      grpc::Status s = Call(
          cloud, &Stub::ForceCompleteMigration,
          [&](sv1::ForceCompleteMigrationRequest& f) {
            f.set_migration_id(ids[i]);
            f.set_requester(weird[i]);
          },
          &fr);
      INFO(s.error_message());
      REQUIRE(s.ok());
      CHECK(fr.migration().force_completed_by() == absl::StrCat("ops-alice [", weird[i], "]"));
    }
  }
  for (size_t i = 0; i < weird.size(); ++i) {
    INFO(weird[i]);
    sv1::Migration m = E().cloud->WaitTerminal(ids[i], absl::Seconds(60));
    CHECK(m.request_id() == WeirdRequestId(i));
    auto j = RestJson("/v1/migrations/" + ids[i]);
    if (i % 2 == 0) {
      CHECK(j["aborted_by"] == absl::StrCat("ops-alice [", weird[i], "]"));
      CHECK(m.abort_reason() == weird[i]);
      CHECK(j["abort_reason"] == weird[i]);
    } else {
      CHECK(j["force_completed_by"] == absl::StrCat("ops-alice [", weird[i], "]"));
    }
    // The event log names who did it, verbatim.
    bool actor = false;
    for (const auto& e : m.events()) {
      actor |= absl::StrContains(e.detail(), weird[i]);
    }
    CHECK(actor);
    // Nova's view of the same migration.
    auto n = NovaJson(absl::StrCat("/v2.1/servers/", WeirdUuid(i), "/migrations/", ids[i]));
    CHECK(n["migration"]["server_uuid"] == WeirdUuid(i));
  }
}

TEST_CASE("sql: an evacuation's requester is stored and returned verbatim") {
  const std::string& w = Weird()[0];
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", absl::StrCat("Bearer ", kWeirdOp));
  sv1::EvacuateHostRequest r;
  r.set_hostname("host-b");
  r.set_destination("host-a");
  r.set_max_parallel(4);
  r.set_requester(w);
  sv1::Evacuation ev;
  grpc::Status s = E().cloud->api().EvacuateHost(&ctx, r, &ev);
  INFO(s.error_message());
  REQUIRE(s.ok());
  CHECK(ev.requested_by() == absl::StrCat(kWeirdName, " [", w, "]"));
  json last;
  REQUIRE(testing::WaitFor(
      [&] {
        last = RestJson("/v1/evacuations/" + ev.id());
        return last["status"] != "running";
      },
      absl::Seconds(60)));
  INFO(last.dump());
  CHECK(last["requested_by"] == absl::StrCat(kWeirdName, " [", w, "]"));
  // The force-completed instances (odd ones) were on host-b: all in the plan, all moved.
  std::set<std::string> uuids;
  for (const auto& item : last["items"]) uuids.insert(item.value("instance_uuid", ""));
  for (size_t i = 1; i < Weird().size(); i += 2) CHECK(uuids.count(WeirdUuid(i)) == 1);
  CHECK(last["status"] == "completed");
}

// A list filter with metacharacters is refused (INVALID_ARGUMENT) or matches nothing.
void CheckRefusedOrEmpty(const grpc::Status& s, int size) {
  INFO(CodeName(s.error_code()) << ": " << s.error_message());
  CHECK((s.error_code() == grpc::StatusCode::INVALID_ARGUMENT || (s.ok() && size == 0)));
}

// A lookup by a malformed id is refused (INVALID_ARGUMENT) or finds nothing.
void CheckRefusedOrNotFound(const grpc::Status& s) {
  INFO(CodeName(s.error_code()) << ": " << s.error_message());
  CHECK((s.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
         s.error_code() == grpc::StatusCode::NOT_FOUND));
}

TEST_CASE("sql: metacharacters in ids, names and filters are refused or match nothing") {
  Cloud& cloud = *E().cloud;
  for (const std::string& w : Weird()) {
    INFO(w);
    for (int field = 0; field < 3; ++field) {
      sv1::ListMigrationsResponse out;
      grpc::Status s = Call(
          cloud, &Stub::ListMigrations,
          [&](sv1::ListMigrationsRequest& r) {
            if (field == 0) r.set_host(w);
            if (field == 1) r.set_instance_uuid(w);
            if (field == 2) r.set_page_token(w);
          },
          &out);
      INFO("field " << field);
      CheckRefusedOrEmpty(s, out.migrations_size());
    }
    for (int field = 0; field < 2; ++field) {
      sv1::ListInstancesResponse out;
      grpc::Status s = Call(
          cloud, &Stub::ListInstances,
          [&](sv1::ListInstancesRequest& r) {
            if (field == 0) r.set_host(w);
            if (field == 1) r.set_page_token(w);
          },
          &out);
      INFO("field " << field);
      CheckRefusedOrEmpty(s, out.instances_size());
    }
    {
      sv1::ListEvacuationsResponse out;
      grpc::Status s = Call(
          cloud, &Stub::ListEvacuations, [&](sv1::ListEvacuationsRequest& r) { r.set_host(w); },
          &out);
      CheckRefusedOrEmpty(s, out.evacuations_size());
    }
    CheckRefusedOrNotFound(Call(cloud, &Stub::GetMigration,
                                [&](sv1::GetMigrationRequest& r) { r.set_migration_id(w); }));
    CheckRefusedOrNotFound(
        Call(cloud, &Stub::GetHost, [&](sv1::GetHostRequest& r) { r.set_hostname(w); }));
    CheckRefusedOrNotFound(Call(cloud, &Stub::GetInstance,
                                [&](sv1::GetInstanceRequest& r) { r.set_instance_uuid(w); }));
    CheckRefusedOrNotFound(Call(cloud, &Stub::GetEvacuation,
                                [&](sv1::GetEvacuationRequest& r) { r.set_evacuation_id(w); }));
    {
      grpc::Status s = Call(cloud, &Stub::LiveMigrate, [&](sv1::LiveMigrateRequest& r) {
        r.set_instance_uuid(kFreeUuid);
        r.set_destination(w);
      });
      INFO(s.error_message());
      CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    }
    // REST: 400/404 with a JSON error, or an empty list.
    const std::string enc = UrlEncode(w);
    for (const std::string& path :
         {"/v1/hosts/" + enc, "/v1/migrations/" + enc, "/v1/instances/" + enc,
          "/v1/evacuations/" + enc, "/v1/migrations?host=" + enc, "/v1/migrations?instance=" + enc,
          "/v1/instances?host=" + enc, "/v1/evacuations?host=" + enc,
          "/v1/migrations?marker=" + enc, "/v1/migrations?status=" + enc}) {
      INFO(path);
      auto r = E().Http("get", path, "", E().Bearer(kReaderToken));
      REQUIRE(r);
      INFO(r->status << " " << r->body);
      auto j = json::parse(r->body, nullptr, false);
      REQUIRE_FALSE(j.is_discarded());
      if (r->status == 200) {
        // Only a list may answer 200, and then with nothing in it.
        REQUIRE(j.is_object());
        REQUIRE(j.size() >= 1);
        for (auto& [k, v] : j.items()) {
          if (v.is_array()) CHECK(v.empty());
        }
        CHECK(absl::StrContains(path, "?"));
      } else {
        CHECK((r->status == 400 || r->status == 404));
        CHECK(!j["error"]["message"].get<std::string>().empty());
      }
    }
    // Nova: filters match nothing (or are refused); unknown ids are 404; every error is JSON.
    for (const std::string& path :
         {"/v2.1/os-migrations?host=" + enc, "/v2.1/os-migrations?instance_uuid=" + enc,
          "/v2.1/os-migrations?status=" + enc, "/v2.1/os-services?host=" + enc,
          "/v2.1/os-hypervisors?hypervisor_hostname_pattern=" + enc, "/v2.1/servers?host=" + enc,
          "/v2.1/servers/" + enc, "/v2.1/os-hypervisors/" + enc,
          "/v2.1/servers/" + enc + "/migrations"}) {
      INFO(path);
      auto r =
          E().Http("get", path, "",
                   {{"X-Auth-Token", kReaderToken}, {"OpenStack-API-Version", "compute 2.79"}});
      REQUIRE(r);
      INFO(r->status << " " << r->body);
      auto j = json::parse(r->body, nullptr, false);
      REQUIRE_FALSE(j.is_discarded());
      if (r->status == 200) {
        REQUIRE(j.is_object());
        for (auto& [k, v] : j.items()) {
          CHECK(v.is_array());
          if (v.is_array()) CHECK(v.empty());
        }
      } else {
        CHECK((r->status == 400 || r->status == 404));
        const char* key = r->status == 400 ? "badRequest" : "itemNotFound";
        REQUIRE(j.contains(key));
        CHECK(!j[key]["message"].get<std::string>().empty());
      }
    }
  }
  // LIKE wildcards as filters do not match every host.
  for (const char* pattern : {"%", "_", "host-%", "host_a", ".*"}) {
    INFO(pattern);
    sv1::ListMigrationsResponse out;
    grpc::Status s = Call(
        cloud, &Stub::ListMigrations, [&](sv1::ListMigrationsRequest& r) { r.set_host(pattern); },
        &out);
    CheckRefusedOrEmpty(s, out.migrations_size());
  }
}

TEST_CASE("sql: invalid UTF-8 in paths, queries and bodies is a JSON error, never a 500") {
  for (const std::string& bad : {std::string("%FF%FE"), std::string("%C3%28"),
                                 std::string("a%ED%A0%80b"), std::string("%27%FF%3B--")}) {
    for (const std::string& path :
         {"/v1/hosts/" + bad, "/v1/migrations/" + bad, "/v1/instances/" + bad,
          "/v1/evacuations/" + bad, "/v1/migrations?status=" + bad, "/v1/migrations?host=" + bad,
          "/v1/instances?host=" + bad}) {
      INFO(path);
      auto r = E().Http("get", path, "", E().Bearer(kReaderToken));
      REQUIRE(r);
      INFO(r->status << " " << r->body);
      CHECK((r->status == 400 || r->status == 404 || r->status == 200));
      auto j = json::parse(r->body, nullptr, false);
      CHECK_FALSE(j.is_discarded());
    }
    for (const std::string& path :
         {"/v2.1/servers/" + bad, "/v2.1/os-hypervisors/" + bad,
          "/v2.1/servers/" + bad + "/migrations", "/v2.1/os-migrations?host=" + bad,
          "/v2.1/os-migrations?changes-since=" + bad, "/v2.1/os-migrations?limit=" + bad}) {
      INFO(path);
      auto r =
          E().Http("get", path, "",
                   {{"X-Auth-Token", kReaderToken}, {"OpenStack-API-Version", "compute 2.79"}});
      REQUIRE(r);
      INFO(r->status << " " << r->body);
      CHECK((r->status == 400 || r->status == 404 || r->status == 200));
      auto j = json::parse(r->body, nullptr, false);
      CHECK_FALSE(j.is_discarded());
    }
  }
  // A body with invalid UTF-8 changes nothing.
  const std::string before = E().DbFingerprint();
  auto rest =
      E().Http("put", "/v1/hosts/host-b/enabled",
               "{\"enabled\":false,\"reason\":\"bad \xff\xfe utf-8\"}", E().Bearer(kOpToken));
  REQUIRE(rest);
  INFO(rest->body);
  CHECK(rest->status == 400);
  CHECK_FALSE(json::parse(rest->body, nullptr, false).is_discarded());
  auto nova = E().Http("put", "/v2.1/os-services/host-b",
                       "{\"status\":\"disabled\",\"disabled_reason\":\"bad \xff utf-8\"}",
                       {{"X-Auth-Token", kOpToken}, {"OpenStack-API-Version", "compute 2.79"}});
  REQUIRE(nova);
  INFO(nova->body);
  CHECK(nova->status == 400);
  CHECK_FALSE(json::parse(nova->body, nullptr, false).is_discarded());
  CHECK(E().DbFingerprint() == before);
}

TEST_CASE("sql: every table is intact, and each weird string is stored exactly once") {
  pqxx::connection c(E().cloud->db());
  pqxx::work w(c);
  std::vector<std::string> tables;
  for (const auto& row : w.exec("SELECT table_name FROM information_schema.tables WHERE "
                                "table_schema = 'public' ORDER BY 1")) {
    tables.push_back(row[0].as<std::string>());
  }
  CHECK(tables == E().tables);
  CHECK(tables.size() >= 6);
  for (const std::string& t : tables) {
    INFO(t);
    CHECK_NOTHROW(w.exec1("SELECT count(*) FROM " + w.quote_name(t)));
  }
  CHECK(w.exec1("SELECT count(*) FROM hosts")[0].as<int>() == 2);
  for (size_t i = 0; i < Weird().size(); ++i) {
    const std::string& s = Weird()[i];
    INFO(s);
    CHECK(w.exec_params1("SELECT count(*) FROM instances WHERE name = $1", s)[0].as<int>() == 1);
    CHECK(w.exec_params1("SELECT count(*) FROM migrations WHERE request_id = $1",
                         WeirdRequestId(i))[0]
              .as<int>() == 1);
  }
  // Nothing lost, nothing extra: the database and the API agree on the migrations.
  grpc::ClientContext ctx;
  E().cloud->Prepare(&ctx);
  sv1::ListMigrationsRequest lr;
  lr.set_page_size(1000);
  sv1::ListMigrationsResponse list;
  REQUIRE(E().cloud->api().ListMigrations(&ctx, lr, &list).ok());
  CHECK(w.exec1("SELECT count(*) FROM migrations")[0].as<int>() == list.migrations_size());
  CHECK(list.migrations_size() >= 3 + static_cast<int>(Weird().size()));
}

// What the API once accepted but did not store or check (found by this test): an abort's reason,
// an evacuation's request id (and its retry), the instance names of an evacuation's plan, the
// ranked destination candidates of a migration, malformed list filters and page tokens, and
// the request-id rule (1..128 printable ASCII characters).
TEST_CASE("sql: abort reasons, evacuation request ids and item names, candidates, filters") {
  const std::string& w = Weird()[0];
  REQUIRE(E().hv->CreateDomain("host-a", "5ec00000-0000-4000-8000-2000000000aa", "gap-1", 32).ok());
  REQUIRE(E().cloud->WaitInstanceOn("5ec00000-0000-4000-8000-2000000000aa", "host-a",
                                    absl::Seconds(20)));
  v1::MigrationOptions o;
  o.set_completion_timeout_s(3600);
  auto m = E().cloud->Migrate("5ec00000-0000-4000-8000-2000000000aa", "host-b", o);
  REQUIRE(m.ok());
  grpc::ClientContext ctx;
  E().cloud->Prepare(&ctx);
  sv1::AbortMigrationRequest a;
  a.set_migration_id(m->migration().id());
  a.set_reason(w);
  sv1::AbortMigrationResponse ar;
  REQUIRE(E().cloud->api().AbortMigration(&ctx, a, &ar).ok());
  CHECK(ar.migration().abort_reason() == w);
  sv1::Migration done = E().cloud->WaitTerminal(m->migration().id(), absl::Seconds(60));
  CHECK(done.abort_reason() == w);
  CHECK(RestJson("/v1/migrations/" + m->migration().id())["abort_reason"] == w);

  // Malformed list filters are INVALID_ARGUMENT (scheduler.proto), not an empty page.
  for (int field = 0; field < 2; ++field) {
    grpc::Status s = Call(*E().cloud, &Stub::ListMigrations, [&](sv1::ListMigrationsRequest& lr) {
      if (field == 0) lr.set_host(w);
      if (field == 1) lr.set_instance_uuid(w);
    });
    INFO("field " << field << ": " << s.error_message());
    CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    grpc::Status s = Call(*E().cloud, &Stub::ListInstances,
                          [&](sv1::ListInstancesRequest& lr) { lr.set_page_token(w); });
    INFO(s.error_message());
    CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  }

  // The request-id rule: 1..128 printable ASCII characters, for LiveMigrate and EvacuateHost,
  // over gRPC and REST (400); the error names the field and the rule.
  for (const std::string& bad : {std::string(129, 'r'), std::string(255, 'r'),
                                 std::string("new\nline"), std::string(u8"caf\u00e9")}) {
    INFO(absl::CHexEscape(bad));
    {
      grpc::ClientContext lctx;
      E().cloud->Prepare(&lctx);
      sv1::LiveMigrateRequest r;
      r.set_instance_uuid("5ec00000-0000-4000-8000-2000000000aa");
      r.set_destination("host-b");
      r.set_request_id(bad);
      sv1::LiveMigrateResponse out;
      grpc::Status s = E().cloud->api().LiveMigrate(&lctx, r, &out);
      INFO(s.error_message());
      CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
      CHECK(absl::StrContains(s.error_message(), "request_id"));
      CHECK(absl::StrContains(s.error_message(), "128 printable ASCII"));
    }
    {
      grpc::ClientContext lctx;
      E().cloud->Prepare(&lctx);
      sv1::EvacuateHostRequest r;
      r.set_hostname("host-a");
      r.set_request_id(bad);
      sv1::Evacuation out;
      grpc::Status s = E().cloud->api().EvacuateHost(&lctx, r, &out);
      INFO(s.error_message());
      CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
      CHECK(absl::StrContains(s.error_message(), "request_id"));
    }
    for (const std::string& path :
         {std::string("/v1/instances/5ec00000-0000-4000-8000-2000000000aa/"
                      "live-migration"),
          std::string("/v1/hosts/host-a/evacuate-live")}) {
      INFO(path);
      auto r = E().Http("post", path, json{{"request_id", bad}}.dump(), E().Bearer(kOpToken));
      REQUIRE(r);
      INFO(r->body);
      CHECK(r->status == 400);
    }
  }
  {  // 128 printable characters are a valid request id (a dry run creates nothing).
    grpc::ClientContext lctx;
    E().cloud->Prepare(&lctx);
    sv1::LiveMigrateRequest r;
    r.set_instance_uuid("5ec00000-0000-4000-8000-2000000000aa");
    r.set_destination("host-b");
    r.set_request_id(std::string(127, '~') + " ");
    r.set_dry_run(true);
    sv1::LiveMigrateResponse out;
    grpc::Status s = E().cloud->api().LiveMigrate(&lctx, r, &out);
    INFO(s.error_message());
    CHECK(s.ok());
  }

  REQUIRE(E().hv->SetTransferDuration("host-a", absl::ZeroDuration()).ok());
  grpc::ClientContext ectx;
  E().cloud->Prepare(&ectx);
  sv1::EvacuateHostRequest r;
  r.set_hostname("host-a");
  r.set_destination("host-b");
  r.set_request_id(w);
  r.set_max_parallel(8);
  sv1::Evacuation ev;
  grpc::Status s = E().cloud->api().EvacuateHost(&ectx, r, &ev);
  INFO(s.error_message());
  REQUIRE(s.ok());
  CHECK(ev.request_id() == w);
  {  // A retry with the same request id returns the same evacuation and starts nothing new.
    grpc::ClientContext rctx;
    E().cloud->Prepare(&rctx);
    sv1::Evacuation again;
    REQUIRE(E().cloud->api().EvacuateHost(&rctx, r, &again).ok());
    CHECK(again.id() == ev.id());
    CHECK(again.request_id() == w);
    // The same request id for another host is a different request: refused.
    grpc::ClientContext octx;
    E().cloud->Prepare(&octx);
    sv1::EvacuateHostRequest other = r;
    other.set_hostname("host-b");
    other.set_destination("host-a");
    sv1::Evacuation refused;
    CHECK(E().cloud->api().EvacuateHost(&octx, other, &refused).error_code() ==
          grpc::StatusCode::INVALID_ARGUMENT);
  }
  json last;
  REQUIRE(testing::WaitFor(
      [&] {
        last = RestJson("/v1/evacuations/" + ev.id());
        return last["status"] != "running";
      },
      absl::Seconds(60)));
  CHECK(last["request_id"] == w);
  std::set<std::string> names;
  for (const auto& item : last["items"]) names.insert(item.value("instance_name", ""));
  CHECK(names.count("gap-1") == 1);
  for (size_t i = 0; i < Weird().size(); i += 2) CHECK(names.count(Weird()[i]) == 1);
  {
    pqxx::connection c(E().cloud->db());
    pqxx::work tx(c);
    CHECK(
        tx.exec_params1("SELECT count(*) FROM evacuations WHERE request_id = $1", w)[0].as<int>() ==
        1);
  }

  // A migration without a destination keeps the ranked candidates the scheduler considered.
  REQUIRE(E().cloud->WaitInstanceOn("5ec00000-0000-4000-8000-2000000000aa", "host-b",
                                    absl::Seconds(20)));
  auto chosen = E().cloud->Migrate("5ec00000-0000-4000-8000-2000000000aa", "", o);
  REQUIRE(chosen.ok());
  sv1::Migration fin = E().cloud->WaitTerminal(chosen->migration().id(), absl::Seconds(60));
  INFO(fin.failure_reason());
  CHECK_FALSE(fin.dest_requested());
  REQUIRE(fin.candidates_size() >= 1);
  CHECK(fin.candidates(0).host() == "host-a");
  CHECK(fin.candidates(0).passed());
  CHECK(fin.candidates(0).rank() == 1);
  CHECK(fin.candidates(0).checks_size() >= 1);
  CHECK(fin.dest_host() == "host-a");
  auto rest = RestJson("/v1/migrations/" + chosen->migration().id());
  REQUIRE(rest["candidates"].is_array());
  CHECK(rest["candidates"][0]["host"] == "host-a");
  // A requested destination has no candidates.
  CHECK(done.candidates_size() == 0);
}

}  // namespace
}  // namespace livemig::e2e
