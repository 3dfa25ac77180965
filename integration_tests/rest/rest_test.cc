// The REST/JSON API of the real scheduler binary (with two fake agents and PostgreSQL): every
// endpoint, authentication (401 / 403), malformed input (400), the error mapping, and the
// OpenAPI document checked against the server: every answer validated against its schemas.
// Over HTTPS, as deployed: the API certificate from deploy/pki.sh, the client trusting its CA.
#include <catch2/catch.hpp>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "driver/fake_driver.h"
#define CPPHTTPLIB_OPENSSL_SUPPORT  // the REST API is served over HTTPS
#include "httplib.h"
#include "integration_tests/scheduler_e2e/e2e.h"
#include "integration_tests/scheduler_e2e/fake_cloud.h"
#include "nlohmann/json.hpp"
#include "testing/process.h"
#include "testing/raw_http.h"
#include "testing/run_command.h"

namespace livemig::e2e {
namespace {

using json = nlohmann::json;
constexpr char kUuid[] = "44444444-2222-4333-8444-555555555555";

struct Rest : HttpsApiCloud {
  std::unique_ptr<httplib::SSLClient> http;
  Rest() : HttpsApiCloud("rest", "ops-alice", "dash-bob") {
    REQUIRE(hv->CreateDomain("host-a", kUuid, "web-1", 256).ok());
    http = std::make_unique<httplib::SSLClient>("127.0.0.1", port);
    http->set_ca_cert_path(cloud->ca_pem().c_str());
    http->enable_server_certificate_verification(true);
    http->set_read_timeout(20, 0);
    REQUIRE(testing::WaitFor(
        [&] {
          auto r = Get("/v1/instances/" + std::string(kUuid), kReaderToken);
          return r && r->status == 200 && absl::StrContains(r->body, R"("state":"running")");
        },
        absl::Seconds(20)));
  }
  ~Rest() { http.reset(); }
  httplib::Headers Auth(const char* token) {
    if (!token) return {};
    return {{"Authorization", std::string("Bearer ") + token}};
  }
  httplib::Result Get(const std::string& path, const char* token) {
    return Record("GET", path, http->Get(path.c_str(), Auth(token)));
  }
  httplib::Result Post(const std::string& path, const std::string& body, const char* token) {
    return Record("POST", path, http->Post(path.c_str(), Auth(token), body, "application/json"));
  }
  httplib::Result Put(const std::string& path, const std::string& body, const char* token) {
    return Record("PUT", path, http->Put(path.c_str(), Auth(token), body, "application/json"));
  }
  // Sends `request` (a request line and headers) on a new TLS connection and returns the
  // server's answer (read until its Content-Length or its close, 10 s at most).
  absl::StatusOr<testing::RawReply> HeadersOnly(const std::string& request) {
    return testing::RawTlsExchange(port, cloud->ca_pem(), request);
  }
  // Every answer, one JSON line each, for the last test case to validate against the OpenAPI
  // document in one run of api/validate_responses.py.
  std::string answers = dir + "/answers.jsonl";
  int recorded = 0;
  httplib::Result Record(const char* method, const std::string& path, httplib::Result r) {
    if (!r) return r;
    json line = {{"method", method},
                 {"path", path},
                 {"status", r->status},
                 {"content_type", r->get_header_value("Content-Type")},
                 {"body", r->body}};
    std::ofstream(answers, std::ios::app)
        << line.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    ++recorded;
    return r;
  }
};

Rest& R() {
  static std::unique_ptr<Rest> r = std::make_unique<Rest>();
  return *r;
}

std::string ErrorCode(const httplib::Result& r) {
  auto j = json::parse(r->body, nullptr, false);
  if (j.is_discarded() || !j.contains("error")) return "(no JSON error)";
  return j["error"]["code"].get<std::string>();
}

TEST_CASE("rest: health is open; everything else needs a token") {
  auto h = R().Get("/healthz", nullptr);
  REQUIRE(h);
  CHECK(h->status == 200);
  for (const char* path :
       {"/metrics", "/v1/hosts", "/v1/migrations", "/v1/instances", "/v1/evacuations"}) {
    INFO(path);
    auto r = R().Get(path, nullptr);
    REQUIRE(r);
    CHECK(r->status == 401);
    CHECK(ErrorCode(r) == "UNAUTHENTICATED");
    auto bad = R().Get(path, "not-a-valid-token-at-all");
    CHECK(bad->status == 401);
    auto ok = R().Get(path, kReaderToken);
    CHECK(ok->status == 200);
  }
  // A reader may not change anything.
  auto m = R().Post(absl::StrCat("/v1/instances/", kUuid, "/live-migration"),
                    R"({"destination":"host-b"})", kReaderToken);
  CHECK(m->status == 403);
  CHECK(ErrorCode(m) == "PERMISSION_DENIED");
  CHECK(absl::StrContains(m->body, "dash-bob"));
  auto dis = R().Put("/v1/hosts/host-b/enabled", R"({"enabled":false,"reason":"x"})", kReaderToken);
  CHECK(dis->status == 403);
}

TEST_CASE("rest: malformed input is 400 with a message; unknown things are 404") {
  auto bad_json = R().Post(absl::StrCat("/v1/instances/", kUuid, "/live-migration"),
                           "{destination: host-b", kOpToken);
  CHECK(bad_json->status == 400);
  CHECK(absl::StrContains(bad_json->body, "not valid JSON"));
  auto bad_field = R().Post(absl::StrCat("/v1/instances/", kUuid, "/live-migration"),
                            R"({"destinaton":"host-b"})", kOpToken);
  CHECK(bad_field->status == 400);
  auto bad_uuid = R().Post("/v1/instances/web-1/live-migration", "{}", kOpToken);
  CHECK(bad_uuid->status == 400);
  CHECK(absl::StrContains(bad_uuid->body, "not a UUID"));
  auto unknown =
      R().Post("/v1/instances/99999999-2222-4333-8444-555555555555/live-migration", "{}", kOpToken);
  CHECK(unknown->status == 404);
  auto same = R().Post(absl::StrCat("/v1/instances/", kUuid, "/live-migration"),
                       R"({"destination":"host-a"})", kOpToken);
  CHECK(same->status == 400);
  auto no_host = R().Get("/v1/hosts/host-zz", kReaderToken);
  CHECK(no_host->status == 404);
  auto no_mig = R().Get("/v1/migrations/424242", kReaderToken);
  CHECK(no_mig->status == 404);
  auto bad_status = R().Get("/v1/migrations?status=done", kReaderToken);
  CHECK(bad_status->status == 400);
  auto bad_limit = R().Get("/v1/migrations?limit=0", kReaderToken);
  CHECK(bad_limit->status == 400);
  auto nowhere = R().Get("/v2/nothing", kReaderToken);
  CHECK(nowhere->status == 404);
  CHECK(ErrorCode(nowhere) == "NOT_FOUND");
  // A 2 MiB body is refused from its headers (413, before the body): sent as headers alone, so
  // that the answer is read whatever the server does with the unread body after it.
  auto too_big = R().HeadersOnly(absl::StrCat(
      "POST /v1/migrations/check HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ", kOpToken,
      "\r\nContent-Type: application/json\r\nContent-Length: ", 2 << 20, "\r\n\r\n"));
  INFO(too_big.status().ToString());
  REQUIRE(too_big.ok());
  CHECK(too_big->status == 413);
  auto no_reason = R().Put("/v1/hosts/host-b/enabled", R"({"enabled":false})", kOpToken);
  CHECK(no_reason->status == 400);
  // Enum values in a body: the names the answers use; the proto names still parse; others are
  // 400 naming the valid ones.
  const std::string live = absl::StrCat("/v1/instances/", kUuid, "/live-migration");
  for (const char* mode : {"live", "MIGRATION_MODE_LIVE"}) {
    auto dry =
        R().Post(live,
                 absl::StrCat(R"({"destination":"host-b","dry_run":true,"options":{"mode":")", mode,
                              R"(","block_migration":"auto"}})"),
                 kOpToken);
    INFO(mode << ": " << dry->body);
    CHECK(dry->status == 200);
  }
  auto sideways = R().Post(live, R"({"dry_run":true,"options":{"mode":"sideways"}})", kOpToken);
  CHECK(sideways->status == 400);
  CHECK(absl::StrContains(sideways->body, "must be one of live, offline"));
}

TEST_CASE("rest: a migration over REST, its listing, and the conflicts after it") {
  auto check = R().Post("/v1/migrations/check",
                        absl::StrCat(R"({"instance_uuid":")", kUuid, R"("})"), kReaderToken);
  CHECK(check->status == 200);
  CHECK(absl::StrContains(check->body, "host-b"));
  auto m = R().Post(
      absl::StrCat("/v1/instances/", kUuid, "/live-migration"),
      R"({"destination":"host-b","request_id":"rest-1","options":{"max_downtime_ms":400}})",
      kOpToken);
  REQUIRE(m);
  INFO(m->body);
  CHECK(m->status == 202);
  auto body = json::parse(m->body);
  const std::string id = body["migration"]["id"];
  // A repeated request id returns the same migration.
  auto again = R().Post(absl::StrCat("/v1/instances/", kUuid, "/live-migration"),
                        R"({"destination":"host-b","request_id":"rest-1"})", kOpToken);
  CHECK(again->status == 200);
  CHECK(json::parse(again->body)["migration"]["id"] == id);
  json last;
  REQUIRE(testing::WaitFor(
      [&] {
        auto g = R().Get("/v1/migrations/" + id, kReaderToken);
        if (!g || g->status != 200) return false;
        last = json::parse(g->body);
        return last["status"] == "completed";
      },
      absl::Seconds(60)));
  CHECK(last["requester"] == "ops-alice");
  CHECK(last["events"].size() >= 10);
  auto list = R().Get("/v1/migrations?status=completed&limit=10", kReaderToken);
  CHECK(list->status == 200);
  CHECK(json::parse(list->body)["migrations"].size() == 1);
  auto abort = R().Post("/v1/migrations/" + id + "/abort", "{}", kOpToken);
  CHECK(abort->status == 409);
  auto force = R().Post("/v1/migrations/" + id + "/force-complete", "{}", kOpToken);
  CHECK(force->status == 409);
  auto inst = R().Get(absl::StrCat("/v1/instances/", kUuid), kReaderToken);
  CHECK(json::parse(inst->body)["host"] == "host-b");
  auto metrics = R().Get("/metrics", kReaderToken);
  CHECK(absl::StrContains(metrics->body, "livemig_migrations_total{outcome=\"completed\"} 1"));
  CHECK(absl::StrContains(metrics->body,
                          "livemig_step_duration_seconds_bucket{step=\"live_migration\""));
  CHECK(absl::StrContains(metrics->body, "livemig_hosts{state=\"up\"} 2"));
}

TEST_CASE("rest: hosts, evacuations and instances") {
  auto dis =
      R().Put("/v1/hosts/host-a/enabled", R"({"enabled":false,"reason":"firmware"})", kOpToken);
  REQUIRE(dis);
  CHECK(dis->status == 200);
  auto h = json::parse(R().Get("/v1/hosts/host-a", kReaderToken)->body);
  CHECK(h["disabled_reason"] == "firmware");
  CHECK(h["disabled_by"] == "ops-alice");
  auto en = R().Put("/v1/hosts/host-a/enabled", R"({"enabled":true})", kOpToken);
  CHECK(en->status == 200);
  // A malformed request id is refused before anything starts.
  auto bad_id =
      R().Post("/v1/hosts/host-b/evacuate-live",
               absl::StrCat(R"({"request_id":")", std::string(129, 'e'), R"("})"), kOpToken);
  REQUIRE(bad_id);
  CHECK(bad_id->status == 400);
  CHECK(absl::StrContains(bad_id->body, "request_id"));
  auto ev = R().Post("/v1/hosts/host-b/evacuate-live",
                     R"({"max_parallel":1,"request_id":"rest-evac-1"})", kOpToken);
  REQUIRE(ev);
  INFO(ev->body);
  CHECK(ev->status == 202);
  const std::string evid = json::parse(ev->body)["id"];
  CHECK(json::parse(ev->body)["request_id"] == "rest-evac-1");
  // Its plan names each instance as it was at planning time.
  for (const auto& item : json::parse(ev->body)["items"]) {
    CHECK_FALSE(item.value("instance_name", "").empty());
  }
  // A retry with the same request id returns the same evacuation.
  auto retry = R().Post("/v1/hosts/host-b/evacuate-live",
                        R"({"max_parallel":1,"request_id":"rest-evac-1"})", kOpToken);
  REQUIRE(retry);
  CHECK(json::parse(retry->body)["id"] == evid);
  REQUIRE(testing::WaitFor(
      [&] {
        auto g = R().Get("/v1/evacuations/" + evid, kReaderToken);
        return g && g->status == 200 && json::parse(g->body)["status"] != "running";
      },
      absl::Seconds(60)));
  auto list = R().Get("/v1/evacuations", kReaderToken);
  CHECK(json::parse(list->body)["evacuations"].size() == 1);
  // Filtered by the status it shows, in pages; an unknown status and a forged marker are 400.
  const std::string shown = json::parse(list->body)["evacuations"][0]["status"];
  CHECK(json::parse(R().Get("/v1/evacuations?status=" + shown, kReaderToken)->body)["evacuations"]
            .size() == 1);
  CHECK(json::parse(R().Get("/v1/evacuations?status=running", kReaderToken)->body)
            .value("evacuations", json::array())
            .empty());
  CHECK(R().Get("/v1/evacuations?status=bogus", kReaderToken)->status == 400);
  CHECK(R().Get("/v1/evacuations?limit=1&marker=h1.x", kReaderToken)->status == 400);
  auto insts = json::parse(R().Get("/v1/instances", kReaderToken)->body);
  REQUIRE(insts["instances"].size() == 1);
  CHECK(insts["instances"][0]["host"] == "host-a");
  CHECK(insts.value("next_page_token", "").empty());
  // Keyset pages: limit and marker (the previous page's next_page_token); bad ones are 400.
  auto page = json::parse(R().Get("/v1/instances?limit=1", kReaderToken)->body);
  CHECK(page["instances"].size() == 1);
  CHECK(page.value("next_page_token", "").empty());
  CHECK(R().Get("/v1/instances?limit=0", kReaderToken)->status == 400);
  CHECK(R().Get("/v1/instances?marker=garbage", kReaderToken)->status == 400);
}

TEST_CASE("rest: the OpenAPI document matches the server") {
  std::ifstream in(testing::RunfilePath("api/openapi.json"));
  REQUIRE(in);
  json doc = json::parse(in);
  int checked = 0;
  for (auto& [path, methods] : doc["paths"].items()) {
    std::string concrete =
        absl::StrReplaceAll(path, {{"{uuid}", kUuid}, {"{id}", "1"}, {"{name}", "host-a"}});
    for (auto& [method, spec] : methods.items()) {
      INFO(method << " " << path);
      httplib::Result r = method == "get"    ? R().Get(concrete, kOpToken)
                          : method == "post" ? R().Post(concrete, "{\"dry_run\":true}", kOpToken)
                                             : R().Put(concrete, "{\"enabled\":true}", kOpToken);
      REQUIRE(r);
      // The route exists: whatever the answer, it is not "no such endpoint".
      CHECK_FALSE(absl::StrContains(r->body, "no such endpoint"));
      const std::string status = std::to_string(r->status);
      CHECK((spec["responses"].contains(status) || r->status == 409));
      ++checked;
    }
  }
  CHECK(checked == 18);
}

TEST_CASE("rest: instances page by name with limit and marker") {
  const std::vector<std::pair<std::string, std::string>> more = {
      {"44444444-2222-4333-8444-000000000001", "app-1"},
      {"44444444-2222-4333-8444-000000000002", "zz-1"}};
  for (const auto& [uuid, name] : more) {
    REQUIRE(R().hv->CreateDomain("host-b", uuid, name, 64).ok());
  }
  REQUIRE(testing::WaitFor(
      [&] {
        auto r = R().Get("/v1/instances?limit=1000", kReaderToken);
        return r && r->status == 200 && json::parse(r->body)["instances"].size() == 3;
      },
      absl::Seconds(20)));
  std::vector<std::string> names;
  std::string marker;
  int pages = 0;
  do {
    auto r = R().Get("/v1/instances?limit=2" + (marker.empty() ? "" : "&marker=" + marker),
                     kReaderToken);
    REQUIRE(r);
    INFO(r->body);
    REQUIRE(r->status == 200);
    auto j = json::parse(r->body);
    CHECK(j["instances"].size() <= 2);
    for (const auto& i : j["instances"]) names.push_back(i["name"]);
    marker = j.value("next_page_token", "");
    // Tokens are URL-safe (base64url and a UUID).
    CHECK(marker.find_first_of("+/=&? ") == std::string::npos);
    REQUIRE(++pages <= 3);
  } while (!marker.empty());
  CHECK(pages == 2);
  CHECK(names == std::vector<std::string>{"app-1", "web-1", "zz-1"});
  // Filters apply to every page.
  auto by_host = json::parse(R().Get("/v1/instances?host=host-b&limit=1", kReaderToken)->body);
  CHECK(by_host["instances"].size() == 1);
  CHECK(by_host["instances"][0]["name"] == "app-1");
  CHECK_FALSE(by_host.value("next_page_token", "").empty());
}

// Last (Catch2 runs test cases in the order of this file): every answer the test cases above
// received, validated against the response schemas of api/openapi.json.
TEST_CASE("rest: every answer above matches the OpenAPI document's schemas") {
  REQUIRE(R().recorded > 50);
  const std::string report = R().dir + "/validation.txt";
  auto run = testing::RunCommand(absl::StrCat(
      "/usr/bin/python3 ", testing::RunfilePath("api/validate_responses.py"), " ",
      testing::RunfilePath("api/openapi.json"), " ", R().answers, " >", report, " 2>&1"));
  std::ifstream in(report);
  const std::string out((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  INFO(out);
  CHECK(run.ok());
  CHECK(absl::StrContains(out, absl::StrCat(R().recorded, " answers match")));
}

}  // namespace
}  // namespace livemig::e2e
