// Debian's real Prometheus (2.42) scrapes the real scheduler's /metrics over HTTPS with a reader
// token (credentials_file), with two fake agents and PostgreSQL; the test asks Prometheus's HTTP
// API (/api/v1/query) PromQL questions after a few migrations, and again after the scheduler
// purged them at a restart: the counters have not decreased. promtool checks the scraped text
// and the example alert rules (deploy/prometheus/), which the private Prometheus also loads.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "driver/fake_driver.h"
#include "integration_tests/scheduler_e2e/e2e.h"
#include "integration_tests/scheduler_e2e/fake_cloud.h"
#include "nlohmann/json.hpp"
#include "testing/process.h"
#include "testing/run_command.h"

namespace livemig::e2e {
namespace {

using json = nlohmann::json;
constexpr char kWeb[] = "77777777-2222-4333-8444-555555555555";
constexpr char kBig[] = "77777777-2222-4333-8444-666666666666";
constexpr uint64_t kWebMiB = 256;

struct Prom : HttpsApiCloud {
  int prom_port = testing::FreePort();
  std::unique_ptr<testing::ChildProcess> prometheus;
  int migrations_done = 0;

  Prom() : HttpsApiCloud("prom", "prom-operator", "prometheus") {
    REQUIRE(testing::RunCommand("command -v prometheus && command -v promtool").ok());
    std::ofstream(dir + "/reader.token") << kReaderToken << "\n";
    // fake-qemu measures a downtime at the end of each transfer, as QEMU does.
    for (const char* h : {"host-a", "host-b"}) {
      REQUIRE(hv->SetTransferDowntime(h, absl::Milliseconds(30)).ok());
    }
    REQUIRE(hv->CreateDomain("host-a", kWeb, "web-1", kWebMiB).ok());
    REQUIRE(cloud->WaitInstanceOn(kWeb, "host-a", absl::Seconds(20)));

    // A private Prometheus: its own port, storage and configuration; the reader token through
    // credentials_file, the cluster CA for the scheduler's HTTPS.
    std::ofstream(dir + "/prometheus.yml")
        << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        // Absolute: Prometheus reads rule files relative to its configuration's directory.
        << "rule_files:\n  - "
        << std::filesystem::absolute(testing::RunfilePath("deploy/prometheus/alerts.yml")).string()
        << "\n"
        << "scrape_configs:\n  - job_name: livemig\n    scrape_interval: 1s\n"
        << "    scrape_timeout: 1s\n    scheme: https\n    tls_config:\n      ca_file: "
        << cloud->pki() << "/ca.pem\n    authorization:\n      type: Bearer\n"
        << "      credentials_file: " << dir << "/reader.token\n"
        << "    static_configs:\n      - targets: ['127.0.0.1:" << port << "']\n";
    prometheus = std::make_unique<testing::ChildProcess>(
        absl::StrCat("prometheus --config.file=", dir, "/prometheus.yml --storage.tsdb.path=", dir,
                     "/tsdb --web.listen-address=127.0.0.1:", prom_port),
        dir + "/prometheus.log");
    const bool ready = testing::WaitFor(
        [&] {
          return testing::RunCommand(
                     absl::StrCat("curl -sf -m 2 http://127.0.0.1:", prom_port, "/-/ready"))
              .ok();
        },
        absl::Seconds(30));
    INFO(prometheus->LogTail(30));
    REQUIRE(ready);
  }
  // Prometheus is killed by pid (its process group), also when a test failed; then the cloud.
  ~Prom() { prometheus.reset(); }

  // The single sample of an instant query; nullopt when the result is empty.
  std::optional<double> Query(const std::string& promql) {
    auto out =
        testing::RunCommand(absl::StrCat("curl -sS -m 5 -G http://127.0.0.1:", prom_port,
                                         "/api/v1/query --data-urlencode 'query=", promql, "'"));
    INFO(promql);
    REQUIRE(out.ok());
    const json j = json::parse(*out);
    INFO(*out);
    REQUIRE(j["status"] == "success");
    const json& result = j["data"]["result"];
    if (result.empty()) return std::nullopt;
    REQUIRE(result.size() == 1);
    return std::stod(result[0]["value"][1].get<std::string>());
  }
  // Polls until `promql` answers `want` (Prometheus scrapes every second).
  void WaitValue(const std::string& promql, double want, absl::Duration t = absl::Seconds(20)) {
    std::optional<double> last;
    const bool ok = testing::WaitFor(
        [&] {
          last = Query(promql);
          return last && *last == want;
        },
        t);
    INFO(promql << " = " << (last ? absl::StrCat(*last) : "(no sample)") << ", want " << want);
    INFO(prometheus->LogTail(20));
    CHECK(ok);
  }
  // The scheduler's /metrics as Prometheus fetches it.
  absl::StatusOr<std::string> Scrape() {
    return testing::RunCommand(absl::StrCat("curl -sS -f -m 5 --cacert ", cloud->pki(),
                                            "/ca.pem -H 'Authorization: Bearer ", kReaderToken,
                                            "' https://127.0.0.1:", port, "/metrics"));
  }
  // Migrates web-1 to the other host and waits for completion.
  void MigrateWeb() {
    const std::string to = migrations_done % 2 == 0 ? "host-b" : "host-a";
    auto r = cloud->Migrate(kWeb, to);
    INFO(r.status().ToString());
    REQUIRE(r.ok());
    auto m = cloud->WaitTerminal(r->migration().id(), absl::Seconds(30));
    REQUIRE(m.status() == v1::MIGRATION_STATUS_COMPLETED);
    ++migrations_done;
  }
};

Prom& P() {
  static std::unique_ptr<Prom> p = std::make_unique<Prom>();
  return *p;
}

constexpr char kCompleted[] = "livemig_migrations_total{outcome=\"completed\"}";
constexpr char kDowntimeMedian[] =
    "histogram_quantile(0.5, sum by (le) (livemig_migration_downtime_seconds_bucket))";

TEST_CASE("prometheus: PromQL answers after a few migrations") {
  for (int i = 0; i < 3; ++i) P().MigrateWeb();
  // A pre-check refusal: host-b (16384 MiB, web-1 on it) has no memory for this guest. Then the
  // guest goes, so that host-a has room for web-1 again.
  REQUIRE(P().hv->CreateDomain("host-a", kBig, "big-1", 16000).ok());
  REQUIRE(P().cloud->WaitInstanceOn(kBig, "host-a", absl::Seconds(20)));
  auto big = P().cloud->Migrate(kBig, "host-b");
  REQUIRE(big.ok());
  CHECK(P().cloud->WaitTerminal(big->migration().id(), absl::Seconds(30)).status() ==
        v1::MIGRATION_STATUS_FAILED);
  REQUIRE(P().hv
              ->Mutate([](json& st, bool* changed) {
                st["hosts"]["host-a"]["domains"].erase(kBig);
                *changed = true;
                return absl::OkStatus();
              })
              .ok());

  P().WaitValue(kCompleted, P().migrations_done);
  P().WaitValue("livemig_precheck_refusals_total{check=\"memory\"}", 1);
  P().WaitValue("livemig_migrations_total{outcome=\"failed\"}", 1);
  P().WaitValue("livemig_migration_bytes_transferred_total", 3.0 * kWebMiB * 1024 * 1024);
  P().WaitValue("livemig_migration_transfer_seconds_count", 3);
  P().WaitValue("sum(livemig_migrations_in_flight)", 0);
  P().WaitValue("livemig_hosts{state=\"up\"}", 2);
  P().WaitValue("livemig_two_running_copies_detected_total", 0);
  // 30 ms downtimes: the median lies in the (25 ms, 50 ms] bucket.
  auto median = P().Query(kDowntimeMedian);
  REQUIRE(median);
  CHECK(std::isfinite(*median));
  CHECK(*median > 0.025);
  CHECK(*median <= 0.05);

  // promtool accepts the scraped text and the example rules, which Prometheus loaded and
  // evaluates without error.
  auto text = P().Scrape();
  REQUIRE(text.ok());
  const std::string file = P().dir + "/metrics.txt";
  std::ofstream(file) << *text;
  auto lint = testing::RunCommand("promtool check metrics < " + file + " 2>&1");
  INFO(lint.status().ToString());
  CHECK(lint.ok());
  auto rules = testing::RunCommand(absl::StrCat(
      "promtool check rules ", testing::RunfilePath("deploy/prometheus/alerts.yml"), " 2>&1"));
  INFO(rules.status().ToString());
  CHECK(rules.ok());
  auto config = testing::RunCommand(
      absl::StrCat("promtool check config --syntax-only ",
                   testing::RunfilePath("deploy/prometheus/prometheus.yml"), " 2>&1"));
  INFO(config.status().ToString());
  CHECK(config.ok());
  json groups;
  const bool evaluated = testing::WaitFor(
      [&] {
        auto r = testing::RunCommand(
            absl::StrCat("curl -sS -m 5 http://127.0.0.1:", P().prom_port, "/api/v1/rules"));
        if (!r.ok()) return false;
        groups = json::parse(*r)["data"]["groups"];
        if (groups.size() != 1 || groups[0]["rules"].size() != 4) return false;
        for (const auto& rule : groups[0]["rules"]) {
          if (rule["health"] != "ok") return false;
        }
        return true;
      },
      absl::Seconds(20));
  INFO(groups.dump());
  CHECK(evaluated);
  // Nothing to alert about in a healthy cloud.
  P().WaitValue("count(ALERTS{alertstate=\"firing\"}) or vector(0)", 0);
}

TEST_CASE("prometheus: after a purge and a restart the counters have not decreased") {
  const std::optional<double> before = P().Query(kCompleted);
  REQUIRE(before);
  REQUIRE(*before == P().migrations_done);
  // Every finished migration older than the retention: the restarted scheduler purges them.
  P().cloud->KillScheduler();
  REQUIRE(P().cloud
              ->Sql("UPDATE migrations SET finished_at = now() - interval '40 days' "
                    "WHERE finished_at IS NOT NULL")
              .ok());
  P().cloud->StartScheduler();
  INFO(P().cloud->SchedulerLog());
  CHECK(absl::StrContains(P().cloud->SchedulerLog(), "purged 4 migration(s)"));
  auto rows = P().cloud->Sql("SELECT count(*) FROM migrations");
  REQUIRE(rows.ok());
  CHECK(absl::StripAsciiWhitespace(*rows) == "0");
  // The counters are read from the restarted scheduler, with no row left behind them.
  P().WaitValue("up{job=\"livemig\"}", 1);
  P().WaitValue(kCompleted, P().migrations_done);
  P().WaitValue("livemig_precheck_refusals_total{check=\"memory\"}", 1);
  P().WaitValue("livemig_migration_downtime_seconds_count", 3);
  // One more migration adds to the folded totals.
  REQUIRE(P().cloud->WaitInstanceOn(kWeb, "host-b", absl::Seconds(20)));
  P().MigrateWeb();
  P().WaitValue(kCompleted, P().migrations_done);
  P().WaitValue("livemig_migration_downtime_seconds_count", 4);
  // Prometheus saw no decrease (a counter reset) over the whole run.
  P().WaitValue("resets(livemig_migrations_total{outcome=\"completed\"}[10m])", 0);
  P().WaitValue("resets(livemig_migration_bytes_transferred_total[10m])", 0);
  P().WaitValue("resets(livemig_migration_downtime_seconds_count[10m])", 0);
  auto median = P().Query(kDowntimeMedian);
  REQUIRE(median);
  CHECK(std::isfinite(*median));
}

}  // namespace
}  // namespace livemig::e2e
