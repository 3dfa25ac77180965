// Host evacuations through the real binaries (PostgreSQL, the scheduler with its REST API,
// FakeDriver compute agents as separate processes, cloudctl):
//   - an evacuation of 6 instances with --max-parallel 2 never has more than 2 migrations in
//     flight, and does reach 2, by the database's recorded times of its migrations (created_at to
//     finished_at), across a SIGKILL of the scheduler in the middle of it: the restarted
//     scheduler resumes it with the same destination, max_parallel and options, and it completes;
//   - an evacuation cancelled while its first 2 migrations are in flight (cloudctl
//     evacuation-cancel --reason): those 2 finish, no migration of it was created after the
//     cancel (recorded times), the other 4 instances stay on the source, running, their items
//     cancelled with the reason; the evacuation ends cancelled with the reason, as cloudctl and
//     REST show; a second cancel answers the same; cancelling a completed one is refused naming
//     its status.
// The scheduler's own per-host limits are raised to 6, so that max_parallel is the evacuation's.
#include <sys/wait.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <regex>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "driver/fake_driver.h"
#define CPPHTTPLIB_OPENSSL_SUPPORT  // the HTTP API is served over HTTPS
#include "httplib.h"
#include "integration_tests/scheduler_e2e/e2e.h"
#include "integration_tests/scheduler_e2e/fake_cloud.h"
#include "nlohmann/json.hpp"
#include "testing/process.h"
#include "testing/run_command.h"

namespace livemig::e2e {
namespace {

using Loc = std::vector<std::pair<std::string, std::string>>;
using json = nlohmann::json;

// One migration of an evacuation as the database recorded it.
struct Recorded {
  int64_t created_us = 0, finished_us = 0;  // finished_us 0: not finished
  std::string status, dest_host, block_migration, instance_uuid;
};

// The most migrations in flight at once: each from its creation (the `accepted` event, the
// instance claimed) until its terminal status, [created, finished). At equal times an end
// counts before a start.
int PeakInFlight(const std::vector<Recorded>& ms) {
  std::vector<std::pair<int64_t, int>> edges;
  for (const auto& m : ms) {
    edges.push_back({m.created_us, +1});
    edges.push_back({m.finished_us == 0 ? INT64_MAX : m.finished_us, -1});
  }
  std::sort(edges.begin(), edges.end());
  int now = 0, peak = 0;
  for (const auto& [t, d] : edges) peak = std::max(peak, now += d);
  return peak;
}

class EvacCloud : public FakeCloud {
 public:
  EvacCloud() : EvacCloud(testing::FreePort()) {}

  httplib::SSLClient& http() { return http_; }

  // `n` new running VMs of 256 MiB on `host`, known to the scheduler.
  std::vector<std::string> NewVms(const std::string& host, int n) {
    std::vector<std::string> out;
    for (int i = 0; i < n; ++i) out.push_back(CreateVm(host, 256));
    for (const auto& uuid : out) {
      INFO(cloud_.SchedulerLog());
      REQUIRE(cloud_.WaitInstanceOn(uuid, host, absl::Seconds(20)));
    }
    return out;
  }
  std::pair<int, std::string> Cloudctl(const std::string& args) {
    return FakeCloud::Cloudctl(args, "LIVEMIG_USER=evac-test");
  }
  // Starts an evacuation with cloudctl; returns its id.
  std::string Evacuate(const std::string& args) {
    auto [rc, out] = Cloudctl("host-evacuate-live " + args);
    INFO(out);
    REQUIRE(rc == 0);
    std::smatch m;
    REQUIRE(std::regex_search(out, m, std::regex("Evacuation ([0-9a-f-]{36}) of")));
    return m[1];
  }
  absl::StatusOr<sv1::Evacuation> Get(const std::string& id) {
    grpc::ClientContext ctx;
    cloud_.Prepare(&ctx, absl::Seconds(5));
    sv1::GetEvacuationRequest r;
    r.set_evacuation_id(id);
    sv1::Evacuation e;
    grpc::Status s = cloud_.api().GetEvacuation(&ctx, r, &e);
    if (!s.ok()) return FromGrpc(s);
    return e;
  }
  // Waits until the evacuation is terminal; returns it.
  sv1::Evacuation WaitEnded(const std::string& id, absl::Duration t) {
    sv1::Evacuation last;
    const bool ended = testing::WaitFor(
        [&] {
          auto e = Get(id);
          if (!e.ok()) return false;
          last = *e;
          return last.status() != sv1::EVACUATION_STATUS_RUNNING &&
                 last.status() != sv1::EVACUATION_STATUS_CANCELLING;
        },
        t);
    INFO(last.DebugString());
    INFO(cloud_.SchedulerLog());
    REQUIRE(ended);
    return last;
  }
  // The evacuation's migrations as the database recorded them, oldest first.
  std::vector<Recorded> Migrations(const std::string& evacuation_id) {
    auto rows = cloud_.Sql(absl::StrCat(
        "SELECT (extract(epoch from created_at) * 1000000)::bigint, COALESCE((extract(epoch "
        "from finished_at) * 1000000)::bigint, 0), status, COALESCE(dest_host, ''), "
        "block_migration, instance_uuid FROM migrations WHERE evacuation_uuid = '",
        evacuation_id, "' ORDER BY id"));
    REQUIRE(rows.ok());
    std::vector<Recorded> out;
    for (absl::string_view line : absl::StrSplit(*rows, '\n', absl::SkipEmpty())) {
      std::vector<std::string> f = absl::StrSplit(line, '|');
      REQUIRE(f.size() == 6);
      Recorded m;
      REQUIRE(absl::SimpleAtoi(f[0], &m.created_us));
      REQUIRE(absl::SimpleAtoi(f[1], &m.finished_us));
      m.status = f[2];
      m.dest_host = f[3];
      m.block_migration = f[4];
      m.instance_uuid = f[5];
      out.push_back(m);
    }
    return out;
  }
  int64_t SqlMicros(const std::string& expr) {
    auto r = cloud_.Sql(absl::StrCat("SELECT (extract(epoch from ", expr, ") * 1000000)::bigint"));
    REQUIRE(r.ok());
    int64_t us = 0;
    REQUIRE(absl::SimpleAtoi(absl::StripAsciiWhitespace(*r), &us));
    return us;
  }

 private:
  explicit EvacCloud(int http_port)
      : FakeCloud({"evac",
                   absl::StrCat("--lease 3 --service-down-time 20 --report-interval 1 "
                                "--max-outbound-per-host 6 --max-inbound-per-host 6 "
                                "--http-listen 127.0.0.1:",
                                http_port),
                   {{"host-a"}, {"host-b"}, {"host-c"}},
                   /*test_hooks=*/false,
                   /*api_tls=*/true}),
        http_("127.0.0.1", http_port) {
    http_.set_ca_cert_path(cloud_.ca_pem().c_str());
    http_.enable_server_certificate_verification(true);
    http_.set_read_timeout(20, 0);
  }
  httplib::SSLClient http_;
};

EvacCloud& C() {
  static std::unique_ptr<EvacCloud> c = std::make_unique<EvacCloud>();  // removed at exit
  return *c;
}

// Set by the first case, read by the second (Catch2 runs them in this order).
std::string g_completed_evacuation;

TEST_CASE("evacuation: at most max_parallel in flight, resumed after a SIGKILL as requested") {
  REQUIRE(C().hv().SetTransferDuration("host-a", absl::Seconds(2)).ok());
  const std::vector<std::string> vms = C().NewVms("host-a", 6);
  const std::string id =
      C().Evacuate("host-a --max-parallel 2 --target-host host-b --block-migrate no");
  // Mid-way: the first slot was reused (a third migration exists), 3 instances still wait.
  REQUIRE(testing::WaitFor([&] { return C().Migrations(id).size() >= 3; }, absl::Seconds(30)));
  C().cloud().KillScheduler();
  // Every migration the killed scheduler committed was created before this (the database's
  // clock); any later one is the restarted scheduler's.
  const int64_t killed_us = C().SqlMicros("clock_timestamp()");
  const size_t before_restart = C().Migrations(id).size();
  CHECK(before_restart < 6);
  C().cloud().StartScheduler();

  // What the restarted scheduler reads back is what was asked.
  auto stored = C().Get(id);
  REQUIRE(stored.ok());
  CHECK(stored->max_parallel() == 2);
  CHECK(stored->destination() == "host-b");
  CHECK(stored->options().block_migration() == v1::BLOCK_MIGRATION_NO);

  const sv1::Evacuation done = C().WaitEnded(id, absl::Seconds(60));
  INFO(done.DebugString());
  // A migration the SIGKILL caught after it was recorded `running` but before its transfer
  // started is rolled back by the takeover (docs/DESIGN.md § Recovery rules: the source holds
  // the domain, the destination does not run it): it fails with that reason and its instance
  // stays on host-a. Only the killed scheduler's migrations (at most max_parallel) can end so.
  std::set<std::string> rolled_back;
  for (const auto& item : done.items()) {
    if (item.outcome() == sv1::EVACUATION_ITEM_OUTCOME_SUCCEEDED) continue;
    CHECK(item.outcome() == sv1::EVACUATION_ITEM_OUTCOME_FAILED);
    CHECK(item.reason() == "the transfer was not running after a scheduler takeover");
    rolled_back.insert(item.instance_uuid());
  }
  CHECK(rolled_back.size() <= 2);
  CHECK(done.status() == (rolled_back.empty() ? sv1::EVACUATION_STATUS_COMPLETED
                                              : sv1::EVACUATION_STATUS_COMPLETED_WITH_ERRORS));
  CHECK(done.succeeded() == 6 - static_cast<int>(rolled_back.size()));
  CHECK(done.max_parallel() == 2);

  const std::vector<Recorded> ms = C().Migrations(id);
  REQUIRE(ms.size() == 6);
  int after_restart = 0;
  for (const auto& m : ms) {
    INFO(m.instance_uuid << " " << m.status << " -> " << m.dest_host);
    if (rolled_back.count(m.instance_uuid)) {
      CHECK(m.status == "failed");
      CHECK(m.created_us <= killed_us);  // the killed scheduler's
    } else {
      CHECK(m.status == "completed");
    }
    CHECK(m.dest_host == "host-b");    // the requested destination, also after the restart
    CHECK(m.block_migration == "no");  // the requested options, also after the restart
    if (m.created_us > killed_us) ++after_restart;
  }
  // The restarted scheduler started the rest.
  CHECK(after_restart == static_cast<int>(6 - before_restart));
  CHECK(after_restart >= 1);
  const int peak = PeakInFlight(ms);
  std::cout << "evacuation " << id << ": peak in flight " << peak << " (max_parallel 2), "
            << after_restart << " of 6 migrations started after the SIGKILL, " << rolled_back.size()
            << " caught by it before its transfer and rolled back\n";
  CHECK(peak <= 2);
  CHECK(peak == 2);
  for (const auto& vm : vms) {
    CHECK(C().Where(vm) ==
          Loc{{rolled_back.count(vm) ? std::string("host-a") : std::string("host-b"), "running"}});
  }
  g_completed_evacuation = id;
}

TEST_CASE("evacuation: cancelled mid-way, in-flight migrations finish, no new one starts") {
  REQUIRE(C().hv().SetTransferDuration("host-c", absl::Seconds(4)).ok());
  const std::vector<std::string> vms = C().NewVms("host-c", 6);
  const std::string id = C().Evacuate("host-c --max-parallel 2 --target-host host-a");
  // The first 2 are transferring (4 s each): the next one would start when one of them ends.
  REQUIRE(testing::WaitFor(
      [&] {
        auto ms = C().Migrations(id);
        return ms.size() == 2 && ms[0].status == "running" && ms[1].status == "running";
      },
      absl::Seconds(30)));
  auto [rc, out] = C().Cloudctl("evacuation-cancel " + id + " --reason 'change freeze 42'");
  INFO(out);
  REQUIRE(rc == 0);
  CHECK(absl::StrContains(out, "cancelling"));
  CHECK(absl::StrContains(out, "change freeze 42"));
  CHECK(absl::StrContains(out, "4 instance(s) not started stay on host-c"));
  CHECK(absl::StrContains(out, "2 migration(s) in flight finish first"));

  // A second cancel answers the same: the first reason stays.
  auto again = C().Cloudctl("--json evacuation-cancel " + id + " --reason 'another reason'");
  INFO(again.second);
  REQUIRE(again.first == 0);
  const json j = json::parse(again.second);
  CHECK(j["cancel_reason"] == "change freeze 42");
  CHECK((j["status"] == "cancelling" || j["status"] == "cancelled"));

  const sv1::Evacuation done = C().WaitEnded(id, absl::Seconds(60));
  INFO(done.DebugString());
  CHECK(done.status() == sv1::EVACUATION_STATUS_CANCELLED);
  CHECK(done.cancel_reason() == "change freeze 42");
  CHECK(absl::StrContains(done.cancelled_by(), "evac-test"));
  CHECK(done.succeeded() == 2);
  CHECK(done.cancelled() == 4);
  CHECK(done.in_progress() == 0);
  CHECK(done.has_finished_at());

  // By the recorded times: every migration of it was created before the cancel, and only the
  // 2 in flight then exist; they finished (completed).
  const int64_t cancel_us = C().SqlMicros(
      absl::StrCat("(SELECT cancel_requested_at FROM evacuations WHERE uuid = '", id, "')"));
  const std::vector<Recorded> ms = C().Migrations(id);
  REQUIRE(ms.size() == 2);
  std::set<std::string> moved;
  for (const auto& m : ms) {
    CHECK(m.created_us < cancel_us);
    CHECK(m.status == "completed");
    CHECK(m.finished_us > cancel_us);  // in flight at the cancel, left to finish
    moved.insert(m.instance_uuid);
  }
  CHECK(PeakInFlight(ms) <= 2);
  for (const auto& it : done.items()) {
    INFO(it.DebugString());
    if (moved.count(it.instance_uuid())) {
      CHECK(it.outcome() == sv1::EVACUATION_ITEM_OUTCOME_SUCCEEDED);
    } else {
      CHECK(it.outcome() == sv1::EVACUATION_ITEM_OUTCOME_CANCELLED);
      CHECK(absl::StrContains(it.reason(), "change freeze 42"));
      CHECK(it.migration_id().empty());
    }
  }
  // The rest stay on the source, running, and are free to migrate.
  for (const auto& vm : vms) {
    INFO(vm);
    if (moved.count(vm)) {
      CHECK(C().Where(vm) == Loc{{"host-a", "running"}});
    } else {
      CHECK(C().Where(vm) == Loc{{"host-c", "running"}});
      grpc::ClientContext ctx;
      C().cloud().Prepare(&ctx);
      sv1::GetInstanceRequest r;
      r.set_instance_uuid(vm);
      sv1::Instance inst;
      REQUIRE(C().cloud().api().GetInstance(&ctx, r, &inst).ok());
      CHECK(inst.host() == "host-c");
      CHECK(inst.task_state() == sv1::TASK_STATE_NONE);
    }
  }

  // What operators see: cloudctl and REST.
  auto show = C().Cloudctl("evacuation-show " + id);
  INFO(show.second);
  CHECK(show.first == 0);
  CHECK(absl::StrContains(show.second, "cancelled"));
  CHECK(absl::StrContains(show.second, "change freeze 42"));
  CHECK(absl::StrContains(show.second, "4 cancelled"));
  auto rest = C().http().Get("/v1/evacuations/" + id);
  REQUIRE(rest);
  INFO(rest->body);
  REQUIRE(rest->status == 200);
  const json r = json::parse(rest->body);
  CHECK(r["status"] == "cancelled");
  CHECK(r["cancel_reason"] == "change freeze 42");
  CHECK(r["cancelled"] == 4);
  CHECK(r.contains("cancel_requested_at"));
  // Cancel again over REST: the same answer.
  auto post = C().http().Post("/v1/evacuations/" + id + "/cancel", R"({"reason":"late"})",
                              "application/json");
  REQUIRE(post);
  INFO(post->body);
  CHECK(post->status == 200);
  CHECK(json::parse(post->body)["cancel_reason"] == "change freeze 42");

  // A completed evacuation cannot be cancelled: the error names its status.
  if (!g_completed_evacuation.empty()) {
    auto refused = C().Cloudctl("evacuation-cancel " + g_completed_evacuation);
    INFO(refused.second);
    CHECK(refused.first == 5);
    CHECK(absl::StrContains(refused.second, "already finished (completed"));  // _with_errors too
    auto p = C().http().Post("/v1/evacuations/" + g_completed_evacuation + "/cancel", "{}",
                             "application/json");
    REQUIRE(p);
    INFO(p->body);
    CHECK(p->status == 409);
    CHECK(absl::StrContains(p->body, "already finished (completed"));
  }
  CHECK(C().Cloudctl("evacuation-cancel 00000000-0000-4000-8000-000000000000").first == 3);

  // Listed by status and in pages, as the API shows them.
  auto list = [&](std::vector<sv1::EvacuationStatus> statuses, uint32_t page_size,
                  const std::string& token) {
    grpc::ClientContext ctx;
    C().cloud().Prepare(&ctx, absl::Seconds(5));
    sv1::ListEvacuationsRequest r;
    for (auto st : statuses) r.add_statuses(st);
    r.set_page_size(page_size);
    r.set_page_token(token);
    sv1::ListEvacuationsResponse out;
    grpc::Status s = C().cloud().api().ListEvacuations(&ctx, r, &out);
    INFO(s.error_message());
    REQUIRE(s.ok());
    return out;
  };
  auto cancelled = list({sv1::EVACUATION_STATUS_CANCELLED}, 0, "");
  REQUIRE(cancelled.evacuations_size() >= 1);
  for (const auto& e : cancelled.evacuations()) {
    CHECK(e.status() == sv1::EVACUATION_STATUS_CANCELLED);
  }
  CHECK(list({sv1::EVACUATION_STATUS_RUNNING}, 0, "").evacuations_size() == 0);
  auto all = list({}, 0, "");
  REQUIRE(all.evacuations_size() >= 1);
  if (all.evacuations_size() < 2) return;  // run alone: the previous case's evacuation is absent
  auto first = list({}, 1, "");
  REQUIRE(first.evacuations_size() == 1);
  REQUIRE_FALSE(first.next_page_token().empty());
  auto second = list({}, 1, first.next_page_token());
  REQUIRE(second.evacuations_size() == 1);
  CHECK(first.evacuations(0).id() == all.evacuations(0).id());
  CHECK(second.evacuations(0).id() == all.evacuations(1).id());
}

}  // namespace
}  // namespace livemig::e2e
