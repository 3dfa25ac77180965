// The operator dashboard (scheduler/dashboard/index.html, served by the real scheduler binary)
// in Debian's headless Chromium, against PostgreSQL, the real scheduler with its REST API and
// token file, and fake agents (FakeDriver): without a token the page asks for one; a refused
// token shows the error banner; a migration of a fixed duration is shown in flight with its
// progress and phase, then in the history as completed with its duration. A second pair of
// hosts uses the fake libxl profile (no byte counters), whose migration shows elapsed time only.
// The charts (inline SVG drawn by the page) count each host's migrations out and in, and draw
// each finished migration's duration and downtime: measured on the QEMU profile, "no downtime
// reported" on libxl (as Xen).
// Assertions are on the DOM that Chromium dumps (--dump-dom); screenshots are saved to
// $TEST_UNDECLARED_OUTPUTS_DIR.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <optional>
#include <regex>
#include <tuple>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "driver/fake_driver.h"
#define CPPHTTPLIB_OPENSSL_SUPPORT  // the dashboard is served over HTTPS
#include "httplib.h"
#include "integration_tests/scheduler_e2e/e2e.h"
#include "integration_tests/scheduler_e2e/fake_cloud.h"
#include "nlohmann/json.hpp"
#include "testing/process.h"
#include "testing/run_command.h"

namespace livemig::e2e {
namespace {

using json = nlohmann::json;

constexpr char kChromium[] = "/usr/bin/chromium";
// A name with markup: the page must show it as text, never as HTML.
constexpr char kUuid[] = "55555555-2222-4333-8444-666666666666";
constexpr char kName[] = "web-<i>1</i>";
constexpr char kXenUuid[] = "55555555-2222-4333-8444-777777777777";
constexpr char kXenName[] = "xen-guest-1";

std::string OutputDir() {
  static const std::string dir = [] {
    const char* d = getenv("TEST_UNDECLARED_OUTPUTS_DIR");
    return d ? std::string(d) : testing::MakeTempDir("dashboard-out");
  }();
  return dir;
}

void Save(const std::string& name, const std::string& text) {
  std::ofstream(OutputDir() + "/" + name) << text;
}

// Runs headless Chromium on `url` with flags that keep it off the internet, in a new empty
// profile, and `extra` (--dump-dom or --screenshot=...). Returns stdout; stderr is noise.
// Chromium's HOME: its NSS database ($HOME/.pki/nssdb) holds the cluster CA (deploy/pki.sh) as
// a trusted root, as an operator's browser would; no certificate error is ignored.
std::string g_home;

std::string Chromium(const std::string& url, const std::string& extra) {
  const std::string profile = testing::MakeTempDir("chromium-profile");
  REQUIRE(!profile.empty());
  REQUIRE(!g_home.empty());
  const std::string cmd = absl::StrCat(
      "HOME=", g_home, " timeout 90 ", kChromium,
      " --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking"
      " --disable-component-update --disable-sync --disable-quic --disable-dev-shm-usage"
      " --user-data-dir=",
      profile, " --virtual-time-budget=3000 ", extra, " '", url, "'");
  auto out = testing::RunCommand(cmd);
  testing::RunCommand("rm -rf " + profile).IgnoreError();
  INFO(out.status().ToString());
  REQUIRE(out.ok());
  return *out;
}

// The element that opens at `open_pos` up to its matching close tag (no nesting of the same tag
// name is assumed for <tr>; tables are matched by counting nested <table>).
std::string ElementAt(const std::string& dom, size_t open_pos, const std::string& tag) {
  const std::string open = "<" + tag, close = "</" + tag + ">";
  int depth = 0;
  size_t pos = open_pos;
  while (pos < dom.size()) {
    size_t o = dom.find(open, pos), c = dom.find(close, pos);
    if (c == std::string::npos) return dom.substr(open_pos);
    if (o != std::string::npos && o < c) {
      ++depth;
      pos = o + open.size();
    } else {
      if (--depth == 0) return dom.substr(open_pos, c + close.size() - open_pos);
      pos = c + close.size();
    }
  }
  return dom.substr(open_pos);
}

// The <table id="..."> element of the dumped DOM; empty when missing.
std::string Table(const std::string& dom, const std::string& id) {
  const size_t p = dom.find("<table id=\"" + id + "\"");
  return p == std::string::npos ? "" : ElementAt(dom, p, "table");
}

// The element <tag class="..." ... attr="value" ...> of `s` whose opening tag has attr=value.
std::optional<std::string> Element(const std::string& s, const std::string& tag_name,
                                   const std::string& cls, const std::string& attr,
                                   const std::string& value) {
  size_t pos = 0;
  const std::string open = "<" + tag_name + " class=\"" + cls;
  while ((pos = s.find(open, pos)) != std::string::npos) {
    const size_t end = s.find('>', pos);
    const std::string tag = s.substr(pos, end - pos);
    if (absl::StrContains(tag, absl::StrCat(" ", attr, "=\"", value, "\""))) {
      return ElementAt(s, pos, tag_name);
    }
    pos = end;
  }
  return std::nullopt;
}

// The row <tr class="..." ... attr="value" ...> of `table` whose opening tag has attr=value.
std::optional<std::string> Row(const std::string& table, const std::string& cls,
                               const std::string& attr, const std::string& value) {
  return Element(table, "tr", cls, attr, value);
}

// The chart <svg id="..."> of the dumped DOM; empty when missing.
std::string Chart(const std::string& dom, const std::string& id) {
  const size_t p = dom.find("<svg id=\"" + id + "\"");
  return p == std::string::npos ? "" : ElementAt(dom, p, "svg");
}

// An attribute of the first tag of `element`.
std::string Attr(const std::string& element, const std::string& name) {
  const std::string tag = element.substr(0, element.find('>'));
  std::smatch m;
  if (std::regex_search(tag, m, std::regex(" " + name + "=\"([^\"]*)\""))) return m[1];
  return "<missing>";
}

// The text of the first element with class `cls` inside `element` (up to its next tag).
std::string TextOf(const std::string& element, const std::string& cls) {
  std::smatch m;
  if (std::regex_search(element, m,
                        std::regex("class=\"[^\"]*\\b" + cls + "\\b[^\"]*\"[^>]*>([^<]*)<"))) {
    return m[1];
  }
  return "<missing>";
}

int CountOf(const std::string& s, const std::string& needle) {
  int n = 0;
  for (size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + 1)) ++n;
  return n;
}

struct DashboardCloud {
  std::string dir = testing::MakeShortTempDir("dash");
  int port = testing::FreePort();
  std::string state = dir + "/fake";
  std::unique_ptr<Cloud> cloud;
  std::unique_ptr<driver::FakeHypervisor> hv;
  std::unique_ptr<httplib::SSLClient> http;

  DashboardCloud() {
    std::ofstream(dir + "/tokens") << "# dashboard test tokens\n"
                                   << kOpToken << " operator ops-dash\n"
                                   << kReaderToken << " reader dash-viewer\n";
    cloud = std::make_unique<Cloud>(dir);
    cloud->set_token(kReaderToken);  // the helper's own gRPC calls (it waits for the API)
    // HTTPS with the API certificate (pki.sh issue-server); the test's client and Chromium
    // trust the CA that issued it (Chromium through an NSS database in its own HOME: certutil,
    // package libnss3-tools).
    const std::string pki = cloud->pki();
    g_home = dir + "/home";
    auto nss = testing::RunCommand(
        absl::StrCat("mkdir -p ", g_home, "/.pki/nssdb && certutil -d sql:", g_home,
                     "/.pki/nssdb -N --empty-password && certutil -d sql:", g_home,
                     "/.pki/nssdb -A -t C,, -n livemig-test-ca -i ", pki, "/ca.pem 2>&1"));
    INFO(nss.status().ToString());
    REQUIRE(nss.ok());
    cloud->StartScheduler(absl::StrCat(
        "--tokens-file ", dir, "/tokens --http-listen 127.0.0.1:", port,
        " --lease 3 --service-down-time 20 --report-interval 1", cloud->ApiTlsFlags()));
    hv = std::make_unique<driver::FakeHypervisor>(state);
    // host-a/host-b: the fake QEMU profile (byte counters); xen-a/xen-b: the fake libxl profile
    // (elapsed time only, as Xen/libxl).
    for (const char* h : {"host-a", "host-b"}) StartFakeAgent(*cloud, state, h);
    for (const char* h : {"xen-a", "xen-b"}) {
      StartFakeAgent(*cloud, state, h, "--fake-profile fake-libxl");
    }
    WaitFakeHosts(*hv, {"host-a", "host-b", "xen-a", "xen-b"}, absl::Seconds(30));
    REQUIRE(hv->CreateDomain("host-a", kUuid, kName, 512).ok());
    REQUIRE(hv->CreateDomain("xen-a", kXenUuid, kXenName, 256).ok());
    http = std::make_unique<httplib::SSLClient>("127.0.0.1", port);
    http->set_ca_cert_path((pki + "/ca.pem").c_str());
    http->enable_server_certificate_verification(true);
    http->set_read_timeout(20, 0);
    for (const char* uuid : {kUuid, kXenUuid}) {
      INFO(cloud->SchedulerLog());
      REQUIRE(testing::WaitFor(
          [&] {
            auto j = GetJson(absl::StrCat("/v1/instances/", uuid));
            return j && j->value("state", "") == "running";
          },
          absl::Seconds(30)));
    }
  }
  ~DashboardCloud() {
    http.reset();
    cloud.reset();
    testing::RunCommand("rm -rf " + dir).IgnoreError();
  }

  std::string Url(const std::string& path_and_fragment) const {
    return absl::StrCat("https://127.0.0.1:", port, path_and_fragment);
  }
  std::optional<json> GetJson(const std::string& path) {
    auto r = http->Get(path.c_str(), {{"Authorization", std::string("Bearer ") + kReaderToken}});
    if (!r || r->status != 200) return std::nullopt;
    auto j = json::parse(r->body, nullptr, false);
    if (j.is_discarded()) return std::nullopt;
    return j;
  }
  // Starts a migration over REST with the operator token; returns the migration JSON.
  json Migrate(const std::string& uuid, const std::string& dest) {
    auto r = http->Post(absl::StrCat("/v1/instances/", uuid, "/live-migration").c_str(),
                        {{"Authorization", std::string("Bearer ") + kOpToken}},
                        json{{"destination", dest}, {"requester", "dashboard-test"}}.dump(),
                        "application/json");
    REQUIRE(r);
    INFO(r->body);
    REQUIRE(r->status == 202);
    auto j = json::parse(r->body, nullptr, false);
    REQUIRE(j.contains("migration"));
    return j["migration"];
  }
  // Waits until the migration satisfies `pred`; returns its last JSON.
  json WaitMigration(const std::string& id, const std::function<bool(const json&)>& pred,
                     absl::Duration timeout) {
    json last;
    const bool ok = testing::WaitFor(
        [&] {
          auto j = GetJson("/v1/migrations/" + id);
          if (!j) return false;
          last = *j;
          return pred(last);
        },
        timeout);
    INFO(last.dump(2));
    INFO(cloud->SchedulerLog());
    REQUIRE(ok);
    return last;
  }
};

TEST_CASE("dashboard: token form, live progress in flight, then completion in the history") {
  DashboardCloud c;

  // The page is served at / and /dashboard, self-contained.
  {
    for (const char* path : {"/", "/dashboard"}) {
      auto r = c.http->Get(path);
      REQUIRE(r);
      CHECK(r->status == 200);
      CHECK(absl::StrContains(r->get_header_value("Content-Type"), "text/html"));
      CHECK(absl::StrContains(r->body, "id=\"token-form\""));
      // No external resources: nothing loaded from another origin.
      CHECK_FALSE(absl::StrContains(r->body, "src=\"http"));
      CHECK_FALSE(absl::StrContains(r->body, "href=\"http"));
      for (const char* html_sink :
           {"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"}) {
        INFO(html_sink);
        CHECK_FALSE(absl::StrContains(r->body, html_sink));
      }
    }
  }

  // Without a token: the page asks for one (the form is shown, nothing is loaded).
  {
    const std::string dom = Chromium(c.Url("/"), "--dump-dom");
    Save("dom-no-token.html", dom);
    INFO(dom.substr(0, 4000));
    CHECK(absl::StrContains(dom, "<body data-state=\"need-token\""));
    CHECK(absl::StrContains(dom, "<form id=\"token-form\" autocomplete=\"off\">"));  // not hidden
    CHECK(absl::StrContains(dom, "id=\"error-banner\" role=\"alert\" data-kind=\"need-token\">"));
    CHECK(CountOf(Table(dom, "hosts"), "<tr class=\"host\"") == 0);
  }
  // A refused token: the error banner says so and offers the form again.
  {
    const std::string dom = Chromium(c.Url("/#token=not-a-valid-token"), "--dump-dom");
    Save("dom-bad-token.html", dom);
    INFO(dom.substr(0, 4000));
    CHECK(absl::StrContains(dom, "<body data-state=\"unauthenticated\""));
    CHECK(absl::StrContains(dom, "data-kind=\"unauthenticated\">"));
    CHECK(absl::StrContains(dom, "UNAUTHENTICATED"));
    CHECK(absl::StrContains(dom, "<form id=\"token-form\" autocomplete=\"off\">"));
    CHECK(CountOf(Table(dom, "hosts"), "<tr class=\"host\"") == 0);
  }

  // Two migrations of a fixed duration: one with byte counters, one without (libxl).
  REQUIRE(c.hv->SetTransferDuration("host-a", absl::Seconds(12)).ok());
  REQUIRE(c.hv->SetTransferDuration("xen-a", absl::Seconds(12)).ok());
  // A measured downtime on completion: the QEMU profile reports it; libxl (as Xen) never does.
  REQUIRE(c.hv->SetTransferDowntime("host-a", absl::Milliseconds(35)).ok());
  REQUIRE(c.hv->SetTransferDowntime("xen-a", absl::Milliseconds(35)).ok());
  const json m = c.Migrate(kUuid, "host-b");
  const json x = c.Migrate(kXenUuid, "xen-b");
  const std::string id = m["id"], number = m["number"];
  const std::string xid = x["id"], xnumber = x["number"];
  auto running_with_progress = [](const json& j) {
    return j.value("status", "") == "running" && j.contains("progress") &&
           j["progress"].contains("elapsed_ms");
  };
  // The first progress sample of a transfer may carry 0 bytes: wait for one that has moved.
  const json running = c.WaitMigration(
      id,
      [&](const json& j) {
        return running_with_progress(j) && j["progress"].contains("bytes_processed") &&
               std::stod(j["progress"]["bytes_processed"].is_string()
                             ? j["progress"]["bytes_processed"].get<std::string>()
                             : j["progress"]["bytes_processed"].dump()) > 0;
      },
      absl::Seconds(30));
  c.WaitMigration(xid, running_with_progress, absl::Seconds(30));
  const absl::Time t_dump = absl::Now();

  const std::string url = c.Url(absl::StrCat("/#token=", kReaderToken));
  {
    const std::string dom = Chromium(url, "--dump-dom");
    Save("dom-in-flight.html", dom);
    INFO(dom);
    const absl::Duration dump_took = absl::Now() - t_dump;
    INFO("dump took " << absl::FormatDuration(dump_took));
    CHECK(absl::StrContains(dom, "<body data-state=\"ok\""));
    // The token came from the fragment and the fragment was cleared (not kept in the URL).
    CHECK(absl::StrContains(dom, "id=\"error-banner\" role=\"alert\" data-kind=\"\" hidden"));

    const std::string hosts = Table(dom, "hosts");
    for (const char* h : {"host-a", "host-b", "xen-a", "xen-b"}) {
      auto row = Row(hosts, "host", "data-host", h);
      INFO(h);
      REQUIRE(row);
      CHECK(Attr(*row, "data-up") == "true");
      CHECK(Attr(*row, "data-enabled") == "true");
    }
    CHECK(TextOf(*Row(hosts, "host", "data-host", "host-a"), "migrations-out") == "1");
    CHECK(TextOf(*Row(hosts, "host", "data-host", "host-b"), "migrations-in") == "1");
    CHECK(TextOf(*Row(hosts, "host", "data-host", "host-a"), "instances") == "1");

    const std::string inflight = Table(dom, "inflight");
    auto row = Row(inflight, "migration", "data-number", number);
    REQUIRE(row);
    CHECK(Attr(*row, "data-id") == id);
    CHECK(Attr(*row, "data-status") == "running");
    CHECK(Attr(*row, "data-phase") == "pre-copy");
    CHECK(Attr(*row, "data-has-bytes") == "true");
    const double percent = std::stod(Attr(*row, "data-percent"));
    CHECK(percent > 0.0);
    CHECK(percent < 100.0);
    const std::string text = TextOf(*row, "progress-text");
    CHECK(absl::EndsWith(text, "%"));
    CHECK(std::stod(text) == Approx(percent).margin(0.05));
    CHECK(absl::StrContains(*row, "<progress class=\"progress\" max=\"100\" value=\""));
    CHECK(absl::StrContains(*row, "remaining "));
    CHECK(absl::StrContains(*row, " MiB, sent "));
    CHECK(absl::StrContains(*row, "host-a → host-b"));
    CHECK(TextOf(*row, "step") == "live migration");
    // The instance name is text, not markup.
    CHECK(absl::StrContains(*row, "web-&lt;i&gt;1&lt;/i&gt;"));
    CHECK_FALSE(absl::StrContains(dom, "<i>1</i>"));

    // The libxl migration: no byte counts, elapsed seconds with a note.
    auto xrow = Row(inflight, "migration", "data-number", xnumber);
    REQUIRE(xrow);
    CHECK(Attr(*xrow, "data-status") == "running");
    CHECK(Attr(*xrow, "data-has-bytes") == "false");
    CHECK(absl::EndsWith(TextOf(*xrow, "progress-text"), " s elapsed"));
    CHECK(absl::StrContains(*xrow, "gives no byte counts"));

    // Not in the history yet.
    CHECK_FALSE(Row(Table(dom, "history"), "migration", "data-number", number));
    CHECK(absl::Now() - t_dump < absl::Seconds(10));  // the dump saw the transfer, not its end

    // The host chart counts the migrations in flight: one out of each source, one into each
    // destination, one bar each (both were requested at once); no finished migration is drawn.
    const std::string hchart = Chart(dom, "chart-hosts");
    INFO(hchart);
    REQUIRE(!hchart.empty());
    CHECK(absl::StrContains(hchart, "role=\"img\""));
    for (const auto& [h, out, in] :
         std::vector<std::tuple<std::string, std::string, std::string>>{{"host-a", "1", "0"},
                                                                        {"host-b", "0", "1"},
                                                                        {"xen-a", "1", "0"},
                                                                        {"xen-b", "0", "1"}}) {
      INFO(h);
      auto g = Element(hchart, "g", "host-row", "data-host", h);
      REQUIRE(g);
      CHECK(Attr(*g, "data-out") == out);
      CHECK(Attr(*g, "data-in") == in);
      CHECK(absl::StrContains(*g, ">" + h + "<"));  // the host's label
    }
    CHECK(CountOf(hchart, "<rect class=\"bar-out\"") == 2);
    CHECK(CountOf(hchart, "<rect class=\"bar-in\"") == 2);
    CHECK(CountOf(Chart(dom, "chart-durations"), "<g class=\"migration-bar\"") == 0);
  }
  Chromium(url, absl::StrCat("--window-size=1280,900 --screenshot=", OutputDir(),
                             "/dashboard-in-flight.png"));

  const json done = c.WaitMigration(
      id, [](const json& j) { return j.value("status", "") == "completed"; }, absl::Seconds(60));
  c.WaitMigration(
      xid, [](const json& j) { return j.value("status", "") == "completed"; }, absl::Seconds(60));
  {
    const std::string dom = Chromium(url, "--dump-dom");
    Save("dom-completed.html", dom);
    INFO(dom);
    CHECK(absl::StrContains(dom, "<body data-state=\"ok\""));
    CHECK_FALSE(Row(Table(dom, "inflight"), "migration", "data-number", number));
    const std::string history = Table(dom, "history");
    auto row = Row(history, "migration", "data-number", number);
    REQUIRE(row);
    CHECK(Attr(*row, "data-id") == id);
    CHECK(Attr(*row, "data-status") == "completed");
    // Duration = finished_at - created_at, at least the transfer's 12 s.
    const std::string duration_ms = Attr(*row, "data-duration-ms");
    REQUIRE(duration_ms != "<missing>");
    REQUIRE(!duration_ms.empty());
    CHECK(std::stol(duration_ms) >= 12000);
    CHECK(std::stol(duration_ms) < 120000);
    CHECK(absl::EndsWith(TextOf(*row, "duration"), " s"));
    CHECK(TextOf(*row, "failure-reason").empty());
    auto xrow = Row(history, "migration", "data-number", xnumber);
    REQUIRE(xrow);
    CHECK(Attr(*xrow, "data-status") == "completed");
    // The hosts no longer count migrations in flight; the instance moved.
    const std::string hosts = Table(dom, "hosts");
    CHECK(TextOf(*Row(hosts, "host", "data-host", "host-a"), "migrations-out") == "0");
    CHECK(TextOf(*Row(hosts, "host", "data-host", "host-b"), "migrations-in") == "0");
    CHECK(TextOf(*Row(hosts, "host", "data-host", "host-b"), "instances") == "1");

    // The durations chart: one bar per finished migration of the history, with the history's
    // duration; the QEMU migration's measured downtime, the libxl one "no downtime reported".
    const std::string dchart = Chart(dom, "chart-durations");
    INFO(dchart);
    REQUIRE(!dchart.empty());
    CHECK(CountOf(dchart, "<g class=\"migration-bar\"") ==
          CountOf(history, "<tr class=\"migration"));
    CHECK(CountOf(dchart, "<rect class=\"duration\"") == 2);
    auto bar = Element(dchart, "g", "migration-bar", "data-number", number);
    REQUIRE(bar);
    CHECK(Attr(*bar, "data-status") == "completed");
    CHECK(Attr(*bar, "data-duration-ms") == duration_ms);
    CHECK(Attr(*bar, "data-downtime") == "reported");
    CHECK(Attr(*bar, "data-downtime-ms") == "35");
    CHECK(absl::StrContains(*bar, "<rect class=\"downtime\""));
    CHECK(absl::StrContains(*bar, ">35 ms<"));
    auto xbar = Element(dchart, "g", "migration-bar", "data-number", xnumber);
    REQUIRE(xbar);
    CHECK(Attr(*xbar, "data-status") == "completed");
    CHECK(Attr(*xbar, "data-downtime") == "none-reported");
    CHECK_FALSE(absl::StrContains(*xbar, "<rect class=\"downtime\""));
    CHECK(absl::StrContains(*xbar, ">no downtime reported<"));
    CHECK(CountOf(dchart, "<rect class=\"downtime\"") == 1);
    // The text alternative names both.
    CHECK(absl::StrContains(dchart, "role=\"img\""));
    CHECK(std::regex_search(dchart, std::regex("<desc[^>]*>[^<]*downtime 35 ms")));
    CHECK(std::regex_search(dchart,
                            std::regex(absl::StrCat("<desc[^>]*>[^<]*", kXenName,
                                                    ": completed, [^;<]*no downtime reported"))));
    // The host chart still counts both (the history's migrations of the window).
    const std::string hchart = Chart(dom, "chart-hosts");
    CHECK(Attr(*Element(hchart, "g", "host-row", "data-host", "host-a"), "data-out") == "1");
    CHECK(Attr(*Element(hchart, "g", "host-row", "data-host", "xen-b"), "data-in") == "1");
    CHECK(absl::StrContains(hchart, "host-a: 1 out, 0 in"));
  }
  // A link to one migration opens its details with the step timeline (GET /v1/migrations/{id}).
  {
    const std::string dom =
        Chromium(c.Url(absl::StrCat("/#token=", kReaderToken, "&migration=", id)), "--dump-dom");
    Save("dom-detail.html", dom);
    INFO(dom);
    CHECK(absl::StrContains(dom, absl::StrCat("<section id=\"detail\" data-id=\"", id, "\">")));
    const std::string events = Table(dom, "detail-events");
    CHECK(CountOf(events, "<tr class=\"event\"") == static_cast<int>(done["events"].size()));
    CHECK(CountOf(events, "<tr class=\"event\"") >= 10);
    CHECK(CountOf(events, "data-outcome=\"failed\"") == 0);
    CHECK(absl::StrContains(events, "live migration"));
    CHECK(absl::StrContains(*Row(Table(dom, "history"), "migration", "data-number", number),
                            "<tr class=\"migration selected\""));
  }
  // Tall enough to show the charts below the tables.
  Chromium(url, absl::StrCat("--window-size=1280,1300 --screenshot=", OutputDir(),
                             "/dashboard-completed.png"));
  INFO("screenshots in " << OutputDir());
  CHECK(access((OutputDir() + "/dashboard-in-flight.png").c_str(), R_OK) == 0);
  CHECK(access((OutputDir() + "/dashboard-completed.png").c_str(), R_OK) == 0);
}

}  // namespace
}  // namespace livemig::e2e
