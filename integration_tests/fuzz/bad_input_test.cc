// Bad input against the real binaries: the scheduler's REST (/v1) and Compute (/v2.1) APIs answer
// malformed UUIDs, host names, numbers, JSON types, non-JSON and oversized bodies with a 4xx and
// a JSON message naming the field (never 2xx, never 5xx); cloudctl answers bad arguments with
// its usage exit code (2) and a message naming the argument, without contacting anything.
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#define CPPHTTPLIB_OPENSSL_SUPPORT  // the HTTP APIs are served over HTTPS
#include "httplib.h"
#include "integration_tests/scheduler_e2e/e2e.h"
#include "nlohmann/json.hpp"
#include "testing/process.h"
#include "testing/raw_http.h"
#include "testing/run_command.h"

namespace livemig::e2e {
namespace {

using json = nlohmann::json;
constexpr char kUuid[] = "44444444-2222-4333-8444-555555555555";

struct Server {
  std::string dir = testing::MakeShortTempDir("badin");
  std::unique_ptr<Cloud> cloud;
  int port = testing::FreePort();
  std::unique_ptr<httplib::SSLClient> http;
  Server() {
    std::ofstream(dir + "/tokens") << kOpToken << " operator ops-alice\n";
    cloud = std::make_unique<Cloud>(dir);
    cloud->set_token(kOpToken);
    cloud->StartScheduler(absl::StrCat(
        "--tokens-file ", dir, "/tokens --http-listen 127.0.0.1:", port, cloud->ApiTlsFlags()));
    http = std::make_unique<httplib::SSLClient>("127.0.0.1", port);
    http->set_ca_cert_path(cloud->ca_pem().c_str());
    http->enable_server_certificate_verification(true);
    http->set_read_timeout(30, 0);
    http->set_write_timeout(30, 0);
    REQUIRE(testing::WaitFor(
        [&] {
          auto r = http->Get("/healthz");
          return r && r->status == 200;
        },
        absl::Seconds(20)));
  }
  ~Server() {
    http.reset();
    cloud.reset();
    testing::RunCommand("rm -rf " + dir).IgnoreError();
  }
  httplib::Headers Headers(bool nova) {
    if (nova) return {{"X-Auth-Token", kOpToken}, {"OpenStack-API-Version", "compute 2.79"}};
    return {{"Authorization", absl::StrCat("Bearer ", kOpToken)}};
  }
  httplib::Result Send(const std::string& method, const std::string& path,
                       const std::string& body) {
    const bool nova = absl::StartsWith(path, "/v2.1");
    if (method == "GET") return http->Get(path.c_str(), Headers(nova));
    if (method == "PUT") return http->Put(path.c_str(), Headers(nova), body, "application/json");
    if (method == "DELETE") return http->Delete(path.c_str(), Headers(nova));
    return http->Post(path.c_str(), Headers(nova), body, "application/json");
  }
};

Server& S() {
  static std::unique_ptr<Server> s = std::make_unique<Server>();
  return *s;
}

// The error message of a JSON error document: {"error": {"message"}} (/v1) or
// {"badRequest": {"code", "message"}} (/v2.1); "" when the body is no such document.
std::string Message(const std::string& body) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object() || j.size() != 1) return "";
  const json& e = j.begin().value();
  if (!e.is_object() || !e.contains("message") || !e["message"].is_string()) return "";
  return e["message"].get<std::string>();
}

struct Case {
  std::string method, path, body;
  std::string names;  // the message must contain this (the field)
  int status = 400;
};

void Expect(const Case& c) {
  auto r = S().Send(c.method, c.path, c.body);
  INFO(c.method << " " << c.path << " " << c.body.substr(0, 200));
  REQUIRE(r);
  INFO("-> " << r->status << " " << r->body.substr(0, 400));
  CHECK(r->status == c.status);
  const std::string m = Message(r->body);
  CHECK(!m.empty());
  CHECK(absl::StrContains(m, c.names));
}

std::string Migrate(const std::string& body) {
  return absl::StrCat("/v1/instances/", kUuid, "/live-migration");
}

std::string Opt(const std::string& field, const std::string& value) {
  return absl::StrCat(R"({"destination":"host-b","options":{")", field, R"(":)", value, "}}");
}

TEST_CASE("bad input: /v1 path parameters (UUIDs, host names, ids)") {
  const std::string long_host(300, 'h');
  for (const Case& c : std::vector<Case>{
           {"POST", "/v1/instances/not-a-uuid/live-migration", "{}", "instance"},
           {"POST", "/v1/instances/44444444-2222-4333-8444-55555555555Z/live-migration", "{}",
            "instance"},
           {"GET", "/v1/instances/44444444222243338444555555555555", "", "instance"},
           {"GET", "/v1/instances/%C3%A9t%C3%A9", "", "instance"},
           {"GET", "/v1/hosts/bad%20host", "", "host"},
           {"GET", "/v1/hosts/-host", "", "host"},
           {"GET", "/v1/hosts/h%C3%B4te", "", "host"},
           {"GET", "/v1/hosts/" + long_host, "", "host"},
           {"PUT", "/v1/hosts/bad%20host/enabled", R"({"enabled":true})", "host"},
           {"POST", "/v1/hosts/a%FFb/evacuate-live", "{}", "host"},
           {"GET", "/v1/migrations/abc", "", "migration id"},
           {"GET", "/v1/migrations/-1", "", "migration id"},
           {"GET", "/v1/migrations/99999999999999999999999", "", "migration id"},
           {"POST", "/v1/migrations/1.5/abort", "{}", "migration id"},
           {"POST", "/v1/migrations/x/force-complete", "{}", "migration id"},
           {"GET", "/v1/evacuations/abc", "", "evacuation id"},
           {"GET", "/v1/evacuations/0", "", "evacuation id"},
       }) {
    Expect(c);
  }
}

TEST_CASE("bad input: /v1 bodies (host names, numbers, JSON types, not JSON)") {
  const std::string m = Migrate("");
  const std::string long_host(300, 'h');
  for (const Case& c : std::vector<Case>{
           {"POST", m, R"({"destination":"bad host"})", "destination"},
           {"POST", m, R"({"destination":"a/b"})", "destination"},
           {"POST", m, R"({"destination":"h\u00f4te"})", "destination"},
           {"POST", m, absl::StrCat(R"({"destination":")", long_host, R"("})"), "destination"},
           {"POST", m, "{\"destination\":\"\xff\xfe\"}", "not valid JSON"},
           {"POST", m, R"({"destination":5})", "destination"},
           {"POST", m, R"({"destination":["host-b"]})", "destination"},
           {"POST", m, R"({"dry_run":"yes"})", "dry_run"},
           {"POST", m, R"({"destinaton":"host-b"})", "destinaton"},
           {"POST", m, Opt("max_downtime_ms", "-5"), "max_downtime_ms"},
           {"POST", m, Opt("max_downtime_ms", "99999999999"), "max_downtime_ms"},
           {"POST", m, Opt("max_downtime_ms", "1.5"), "max_downtime_ms"},
           {"POST", m, Opt("max_downtime_ms", "\"abc\""), "max_downtime_ms"},
           {"POST", m, Opt("max_downtime_ms", "0"), "max downtime"},
           {"POST", m, Opt("max_downtime_ms", "600001"), "max downtime"},
           {"POST", m, Opt("bandwidth_mib_s", "-1"), "bandwidth_mib_s"},
           {"POST", m, Opt("bandwidth_mib_s", "1e12"), "bandwidth_mib_s"},
           {"POST", m, Opt("bandwidth_mib_s", "4000000"), "bandwidth"},
           {"POST", m, Opt("completion_timeout_s", "-1"), "completion_timeout_s"},
           {"POST", m, Opt("completion_timeout_s", "4294967296"), "completion_timeout_s"},
           {"POST", m, Opt("completion_timeout_s", "9999999"), "completion timeout"},
           {"POST", m, Opt("downtime_step_delay_s", "4000000000"), "downtime_step_delay_s"},
           {"POST", m, Opt("mode", "\"FAST\""), "mode"},
           {"POST", m, R"({"options":[]})", "options"},
           {"POST", m, "hello", "not valid JSON"},
           {"POST", m, "{\"destination\":", "not valid JSON"},
           {"POST", m, "[1,2]", "JSON object"},
           {"POST", m, "null", "JSON object"},
           {"POST", m, std::string(100, '[') + std::string(100, ']'), "deeper"},
           {"POST", "/v1/migrations/check", R"({"instance_uuid":"xyz"})", "instance_uuid"},
           {"POST", "/v1/migrations/check", R"({"instance_uuid":7})", "instance_uuid"},
           {"POST", "/v1/hosts/host-a/evacuate-live", R"({"max_parallel":-1})", "max_parallel"},
           {"POST", "/v1/hosts/host-a/evacuate-live", R"({"max_parallel":4294967296})",
            "max_parallel"},
           {"POST", "/v1/hosts/host-a/evacuate-live", R"({"max_parallel":5000})", "max_parallel"},
           {"POST", "/v1/hosts/host-a/evacuate-live", R"({"destination":"no way"})", "destination"},
           {"PUT", "/v1/hosts/host-a/enabled", R"({"enabled":"no"})", "enabled"},
           {"PUT", "/v1/hosts/host-a/enabled", R"({"reason":"x"})", "enabled"},
           {"PUT", "/v1/hosts/host-a/enabled", R"({"enabled":false,"reason":7})", "reason"},
           {"POST", "/v1/migrations/1/abort", R"({"reason":{"a":1}})", "reason"},
       }) {
    Expect(c);
  }
}

TEST_CASE("bad input: /v1 query parameters") {
  for (const Case& c : std::vector<Case>{
           {"GET", "/v1/migrations?limit=-1", "", "limit"},
           {"GET", "/v1/migrations?limit=0", "", "limit"},
           {"GET", "/v1/migrations?limit=abc", "", "limit"},
           {"GET", "/v1/migrations?limit=1.5", "", "limit"},
           {"GET", "/v1/migrations?limit=99999999999999999999", "", "limit"},
           {"GET", "/v1/migrations?limit=1001", "", "limit"},
           {"GET", "/v1/migrations?status=done", "", "status"},
           {"GET", "/v1/migrations?host=bad%20host", "", "host"},
           {"GET", "/v1/migrations?instance=xyz", "", "instance"},
           {"GET", "/v1/migrations?events=maybe", "", "events"},
           {"GET", "/v1/migrations?limit=5&limit=6", "", "limit"},
           {"GET", "/v1/migrations?marker=garbage", "", "page token"},
           {"GET", "/v1/instances?host=a/b", "", "host"},
           {"GET", "/v1/evacuations?host=%C3%A9", "", "host"},
       }) {
    Expect(c);
  }
}

TEST_CASE("bad input: /v2.1 (Compute API)") {
  const std::string action = absl::StrCat("/v2.1/servers/", kUuid, "/action");
  for (const Case& c : std::vector<Case>{
           {"POST", "/v2.1/servers/not-a-uuid/action", R"({"os-migrateLive":{"host":null}})",
            "server id"},
           {"POST", action, R"({"os-migrateLive":{"host":5,"block_migration":"auto"}})", "host"},
           {"POST", action, R"({"os-migrateLive":{"host":"bad host","block_migration":true}})",
            "host"},
           {"POST", action, R"({"os-migrateLive":{"host":"a/b"}})", "host"},
           {"POST", action, R"({"os-migrateLive":{"host":null,"block_migration":"maybe"}})",
            "block_migration"},
           {"POST", action, R"({"os-migrateLive":{"host":null,"force":"yes"}})", "force"},
           {"POST", action, R"({"os-migrateLive":{"hots":"host-b"}})", "hots"},
           {"POST", action, R"({"os-migrateLive":[]})", "os-migrateLive"},
           {"POST", action, R"({"reboot":{"type":"HARD"}})", "os-migrateLive"},
           {"POST", action, "not json", "not valid JSON"},
           {"POST", action, "[]", "JSON object"},
           {"GET", "/v2.1/servers/not-a-uuid/migrations", "", "server id"},
           {"GET", absl::StrCat("/v2.1/servers/", kUuid, "/migrations/abc"), "", "migration id"},
           {"DELETE", absl::StrCat("/v2.1/servers/", kUuid, "/migrations/-5"), "", "migration id"},
           {"POST", absl::StrCat("/v2.1/servers/", kUuid, "/migrations/1/action"),
            R"({"abort":null})", "force_complete"},
           {"GET", "/v2.1/os-migrations?limit=-1", "", "limit"},
           {"GET", "/v2.1/os-migrations?limit=abc", "", "limit"},
           {"GET", "/v2.1/os-migrations?limit=99999999999", "", "limit"},
           {"GET", "/v2.1/os-migrations?host=bad%20host", "", "host"},
           {"GET", "/v2.1/os-migrations?instance_uuid=xyz", "", "instance_uuid"},
           {"GET", "/v2.1/os-migrations?changes-since=yesterday", "", "changes-since"},
           {"GET", "/v2.1/os-migrations?marker=zzz", "", "migration id"},
           {"PUT", "/v2.1/os-services/x", R"({"status":5})", "status"},
           {"PUT", "/v2.1/os-services/x", R"({"status":"off"})", "status"},
           {"PUT", "/v2.1/os-services/x", R"({"disabled_reason":["a"]})", "disabled_reason"},
           {"PUT", "/v2.1/os-services/x", R"({"forced_down":"yes"})", "forced_down"},
           {"PUT", "/v2.1/os-services/x", "{", "not valid JSON"},
       }) {
    Expect(c);
  }
  // An unsupported microversion is Nova's 406, with a message naming the version.
  auto r = S().http->Get("/v2.1/os-migrations",
                         {{"X-Auth-Token", kOpToken}, {"OpenStack-API-Version", "compute 2.999"}});
  REQUIRE(r);
  CHECK(r->status == 406);
  CHECK(absl::StrContains(Message(r->body), "2.999"));
}

TEST_CASE("bad input: oversized bodies are 413 with a JSON message, before the body is sent") {
  // The server answers from the headers (Content-Length over the cap) and closes: the client
  // reads the answer without sending a byte of the body.
  for (const std::string& path : {Migrate(""), std::string("/v1/migrations/check"),
                                  absl::StrCat("/v2.1/servers/", kUuid, "/action")}) {
    const bool nova = absl::StartsWith(path, "/v2.1");
    const std::string head = absl::StrCat(
        "POST ", path, " HTTP/1.1\r\nHost: x\r\n",
        nova ? absl::StrCat("X-Auth-Token: ", kOpToken, "\r\nOpenStack-API-Version: compute 2.79")
             : absl::StrCat("Authorization: Bearer ", kOpToken),
        "\r\nContent-Type: application/json\r\nContent-Length: ", 8 << 20, "\r\n\r\n");
    auto r = testing::RawTlsExchange(S().port, S().cloud->ca_pem(), head);
    INFO(path);
    REQUIRE(r.ok());
    CHECK(r->status == 413);
    CHECK(r->headers["connection"] == "close");
    CHECK(absl::StrContains(Message(r->body), "too large"));
  }
  // Just over the cap, as valid JSON and sent whole, is still refused.
  const std::string over = absl::StrCat(R"({"request_id":")", std::string(1 << 20, 'a'), R"("})");
  {
    auto c = testing::RawTls::Connect(S().port, S().cloud->ca_pem());
    REQUIRE(c.ok());
    (*c)->Send(absl::StrCat("POST ", Migrate(""), " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ",
                            kOpToken, "\r\nContent-Length: ", over.size(), "\r\n\r\n"));
    auto r = (*c)->Read(absl::Seconds(10));
    REQUIRE(r.ok());
    CHECK(r->status == 413);
  }
  // A chunked body that grows past the cap: 413 once the cap is passed.
  {
    auto c = testing::RawTls::Connect(S().port, S().cloud->ca_pem());
    REQUIRE(c.ok());
    REQUIRE(
        (*c)->Send(absl::StrCat("POST /v1/migrations/check HTTP/1.1\r\nHost: x\r\nAuthorization: "
                                "Bearer ",
                                kOpToken, "\r\nTransfer-Encoding: chunked\r\n\r\n")));
    const std::string chunk = absl::StrCat("10000\r\n", std::string(0x10000, 'a'), "\r\n");
    int sent = 0;
    // 400 x 64 KiB = 25 MiB: more than the cap and the sockets' buffers together.
    while (sent < 400 && (*c)->Send(chunk)) ++sent;
    auto r = (*c)->Read(absl::Seconds(10));
    REQUIRE(r.ok());
    CHECK(r->status == 413);
    CHECK(sent < 400);  // the server stopped reading (and closed) soon after the cap
  }
  // The server is still fine afterwards.
  auto h = S().http->Get("/healthz");
  REQUIRE(h);
  CHECK(h->status == 200);
}

TEST_CASE("bad input: nothing gives a 5xx") {
  // Odd bytes everywhere: every answer is a 4xx with a JSON message (2xx is fine for GET lists).
  const std::vector<std::string> odd = {
      "%00", "%FF%FE", "..",    "%2F", "a%0Ab", "%E2%80%AE", std::string(2000, '9'),
      "-1",  "1e9",    "%22%7D"};
  for (const std::string& o : odd) {
    for (const std::string& path :
         {"/v1/instances/" + o, "/v1/hosts/" + o, "/v1/migrations/" + o, "/v1/evacuations/" + o,
          "/v1/migrations?host=" + o, "/v1/migrations?marker=" + o, "/v2.1/servers/" + o,
          "/v2.1/os-hypervisors/" + o, "/v2.1/os-migrations?marker=" + o,
          "/v2.1/servers/" + o + "/migrations"}) {
      auto r = S().Send("GET", path, "");
      INFO(path);
      REQUIRE(r);
      INFO("-> " << r->status << " " << r->body.substr(0, 300));
      CHECK(r->status < 500);
      if (r->status >= 400) CHECK(!Message(r->body).empty());
    }
  }
}

// ---- cloudctl ----------------------------------------------------------------------------

using Run = testing::CommandResult;

Run Cloudctl(const std::string& args) {
  // One directory for the whole run, removed when the test program ends.
  struct Dir {
    std::string path = testing::MakeShortTempDir("badcli");
    ~Dir() { testing::RunCommand("rm -rf " + path).IgnoreError(); }
  };
  static const Dir d;
  const std::string& dir = d.path;
  return testing::RunCaptured(absl::StrCat("env -u LIVEMIG_SERVER -u LIVEMIG_TOKEN HOME=", dir,
                                           " LIVEMIG_SERVER=unix:", dir, "/nothing.sock ",
                                           testing::RunfilePath("cloudctl/cloudctl"), " ", args),
                              dir + "/run");
}

TEST_CASE("bad input: cloudctl arguments are usage errors naming the argument") {
  const std::string u = kUuid;
  const std::string long_host(300, 'h');
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"live-migration not-a-uuid", "uuid"},
      {"live-migration " + u + "x", "uuid"},
      {"live-migration " + u + " 'bad host'", "dest"},
      {"live-migration " + u + " a/b", "dest"},
      {"live-migration " + u + " h$'\\xc3\\xb4'te", "dest"},
      {"live-migration " + u + " " + long_host, "dest"},
      {"live-migration " + u + " --max-downtime -5", "--max-downtime"},
      {"live-migration " + u + " --max-downtime 99999999999", "--max-downtime"},
      {"live-migration " + u + " --max-downtime 0", "--max-downtime"},
      {"live-migration " + u + " --max-downtime 1.5", "--max-downtime"},
      {"live-migration " + u + " --bandwidth -1", "--bandwidth"},
      {"live-migration " + u + " --bandwidth abc", "--bandwidth"},
      {"live-migration " + u + " --bandwidth 4294967296", "--bandwidth"},
      {"live-migration " + u + " --completion-timeout -1", "--completion-timeout"},
      {"live-migration " + u + " --completion-timeout 99999999", "--completion-timeout"},
      {"live-migration " + u + " --completion-action later", "--completion-action"},
      {"live-migration " + u + " --block-migrate maybe", "--block-migrate"},
      {"live-migration " + u + " --request-id " + std::string(300, 'r'), "--request-id"},
      {"migration-list --limit -1", "--limit"},
      {"migration-list --limit 1001", "--limit"},
      {"migration-list --limit x", "--limit"},
      {"migration-list --status done", "--status"},
      {"migration-list --host 'a b'", "--host"},
      {"migration-list --instance xyz", "--instance"},
      {"migration-show abc", "migration id"},
      {"migration-abort -- -3", "migration id"},
      {"host-show a/b", "host"},
      {"host-disable 'bad host' --reason x", "host"},
      {"host-disable host-a", "--reason"},
      {"host-evacuate-live host-a --max-parallel -1", "--max-parallel"},
      {"host-evacuate-live host-a --max-parallel 4294967296", "--max-parallel"},
      {"host-evacuate-live host-a --target-host 'x y'", "--target-host"},
      {"evacuation-show abc", "evacuation id"},
      {"instance-show 123", "uuid"},
      {"instance-list --host .x", "--host"},
      {"--timeout -1 host-list", "--timeout"},
      {"--timeout inf host-list", "--timeout"},
      {"--timeout nan host-list", "--timeout"},
      {"--timeout 1e300 host-list", "--timeout"},
      {"no-such-command", "no-such-command"},
      {"host-list --bogus", "--bogus"},
  };
  for (const auto& [args, names] : cases) {
    const Run r = Cloudctl(args);
    INFO("$ cloudctl " << args << "\nexit " << r.code << "\n" << r.err);
    CHECK(r.code == 2);
    CHECK(absl::StrContains(r.err, names));
    CHECK(absl::StrContains(r.err, "--help"));  // the hint
    CHECK(r.out.empty());
  }
}

}  // namespace
}  // namespace livemig::e2e
