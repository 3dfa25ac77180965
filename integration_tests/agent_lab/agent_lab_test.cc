// Two real compute_agent processes, each inside its lab host's namespaces (its own hostname,
// network and libvirtd), driven by a test client over mutual TLS on Unix sockets: a real VM
// through every step of the flow and through a rollback, every step sent twice; and an agent
// killed and restarted during a transfer, which then reports the truth and attaches to it.
#include <signal.h>

#include <catch2/catch.hpp>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/tls.h"
#include "grpcpp/grpcpp.h"
#include "proto/compute_agent.grpc.pb.h"
#include "testing/agent_flow.h"
#include "testing/lab.h"
#include "testing/process.h"
#include "testing/run_command.h"

namespace livemig {
namespace {

namespace v1 = ::livemig::v1;
namespace cv1 = ::livemig::compute::v1;
using livemig::testing::ChildProcess;
using livemig::testing::Lab;
using livemig::testing::RunCommand;
using livemig::testing::RunfilePath;
using livemig::testing::WaitFor;

constexpr char kGuest[] = "ag1";
constexpr char kUuid[] = "7c1d2e3f-4a5b-4c6d-8e7f-90a1b2c3d4e5";

struct World {
  std::unique_ptr<Lab> lab;
  std::string pki;
  std::unique_ptr<ChildProcess> agent[2];
  std::unique_ptr<livemig::testing::AgentFlow> flow =
      std::make_unique<livemig::testing::AgentFlow>(kUuid);

  static int Index(const std::string& h) { return h == "a" ? 0 : 1; }
  std::string Socket(const std::string& h) const { return lab->dir() + "/agent-" + h + ".sock"; }

  void StartAgent(const std::string& h) {
    const std::string cmd = absl::StrCat(
        lab->ExecPrefix(h), " ", RunfilePath("compute/compute_agent"), " --listen unix:", Socket(h),
        " --driver libvirt --libvirt-uri '", lab->Uri(h), "' --profile qemu --instance-path ",
        lab->InstancePath(), " --reserved-mib 256", " --migration-uri ", lab->PeerUri(h),
        " --migration-data-host ", lab->Ip(h), " --no-tunnel --state-dir ", lab->dir(),
        "/agent-state-", h, " --tls-ca ", pki, "/ca.pem --tls-cert ", pki, "/agent-", h,
        ".pem --tls-key ", pki, "/agent-", h, ".key --allow scheduler");
    agent[Index(h)] =
        std::make_unique<ChildProcess>(cmd, absl::StrCat(lab->dir(), "/agent-", h, ".log"));
    auto creds =
        MakeChannelCredentials({pki + "/ca.pem", pki + "/scheduler.pem", pki + "/scheduler.key"});
    REQUIRE(creds.ok());
    auto channel =
        grpc::CreateCustomChannel("unix:" + Socket(h), *creds, ClientChannelArgs("lab-" + h));
    flow->AddHost(h, "lab-" + h, channel);
    const bool up = WaitFor(
        [&] {
          return flow
              ->Call(h, &livemig::testing::AgentFlow::S::GetHostInfo, cv1::GetHostInfoRequest(),
                     absl::Seconds(2))
              .ok();
        },
        absl::Seconds(30));
    INFO(agent[Index(h)]->LogTail());
    REQUIRE(up);
  }
};

World& W() {
  // Destroyed at exit: agents stop, then the lab goes down (a crashed run is swept by the next).
  static std::unique_ptr<World> w = [] {
    auto w = std::make_unique<World>();
    auto lab = Lab::Up();
    if (!lab.ok()) FAIL("lab up: " << lab.status().ToString());
    w->lab = std::move(lab).value();
    w->pki = w->lab->dir() + "/pki";
    const std::string pki = RunfilePath("deploy/pki.sh");
    for (const std::string& c : {absl::StrCat(pki, " init ", w->pki),
                                 absl::StrCat(pki, " issue ", w->pki, " agent-a DNS:lab-a"),
                                 absl::StrCat(pki, " issue ", w->pki, " agent-b DNS:lab-b"),
                                 absl::StrCat(pki, " issue ", w->pki, " scheduler")}) {
      auto r = RunCommand(c);
      if (!r.ok()) FAIL(r.status().ToString());
    }
    auto g = w->lab->StartGuest("a", kGuest, kUuid);
    if (!g.ok()) FAIL(g.ToString());
    w->StartAgent("a");
    w->StartAgent("b");
    return w;
  }();
  return *w;
}

std::string Where() {
  auto w = W().lab->Where(kGuest);
  REQUIRE(w.ok());
  std::string s;
  for (const auto& h : *w) s += h;
  return s;
}

using S = livemig::testing::AgentFlow::S;
livemig::testing::AgentFlow& F() { return *W().flow; }

void Migrate(const std::string& mid, const std::string& from, const std::string& to) {
  auto before = W().lab->Heartbeat(kGuest);
  REQUIRE(before.ok());
  auto lm = F().Prepare(mid, from, to);
  auto first = F().Call(from, &S::LiveMigration, lm);
  INFO(first.status().ToString());
  REQUIRE(first.ok());
  CHECK_FALSE(first->attached());
  auto second = F().Call(from, &S::LiveMigration, lm);  // repeated: attaches, never a second one
  REQUIRE(second.ok());
  CHECK(second->attached());
  auto end = F().WaitForEnd(from, mid, absl::Seconds(90));
  INFO(end.DebugString());
  REQUIRE(end.state() == cv1::TRANSFER_STATE_COMPLETED);
  F().PostSteps(mid, from, to);
  CHECK(Where() == to);
  REQUIRE(WaitFor(
      [&] {
        auto b = W().lab->Heartbeat(kGuest);
        return b.ok() && b->last > before->last + 2;
      },
      absl::Seconds(10)));
  auto after = W().lab->Heartbeat(kGuest);
  CHECK(after->boots == 1);
  CHECK(after->corrupt == 0);
}

TEST_CASE("agents in the lab carry a real VM through every step, each sent twice") {
  Migrate("agent-lab-1", "a", "b");
  Migrate("agent-lab-2", "b", "a");
}

TEST_CASE("agents in the lab roll back, each step sent twice") {
  REQUIRE(Where() == "a");
  auto lm = F().Prepare("agent-lab-rb", "a", "b");
  F().Rollback("agent-lab-rb", "a", "b");  // the domain runs on a, b no longer has it
  CHECK(Where() == "a");
  // The rolled-back migration cannot be started afterwards.
  auto late = F().Call("a", &S::LiveMigration, lm);
  CHECK(late.status().code() == absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("an agent killed during a transfer restarts, reports the truth and attaches") {
  REQUIRE(Where() == "a");
  v1::MigrationOptions slow;
  slow.set_bandwidth_mib_s(4);
  auto lm = F().Prepare("agent-lab-restart", "a", "b", slow);
  REQUIRE(F().Call("a", &S::LiveMigration, lm).ok());
  cv1::GetMigrationProgressRequest g;
  g.set_migration_id("agent-lab-restart");
  g.set_instance_uuid(kUuid);
  REQUIRE(WaitFor(
      [&] {
        auto r = F().Call("a", &S::GetMigrationProgress, g);
        return r.ok() && r->progress().bytes_processed() > 0;
      },
      absl::Seconds(30)));
  W().agent[0]->Kill();  // SIGKILL: the transfer continues in libvirt
  W().StartAgent("a");
  auto p = F().Call("a", &S::GetMigrationProgress, g);
  INFO(p.status().ToString());
  REQUIRE(p.ok());
  CHECK(p->state() == cv1::TRANSFER_STATE_RUNNING);
  CHECK(p->progress().has_bytes());
  auto d = F().Describe("a");
  CHECK(d.present());
  CHECK(d.domain().migration_job_active());
  auto attach = F().Call("a", &S::LiveMigration, lm);  // the reconciler's re-send
  REQUIRE(attach.ok());
  CHECK(attach->attached());
  INFO("agent a log:\n" << W().agent[0]->LogTail(40));
  auto fc =
      F().Call("a", &S::ForceCompleteLiveMigration,
               F().Step<cv1::ForceCompleteLiveMigrationRequest>("agent-lab-restart", "a", "b"));
  INFO(fc.status().ToString());
  CHECK(fc.ok());  // converge: at 4 MiB/s the busy guest never would on its own
  auto end = F().WaitForEnd("a", "agent-lab-restart", absl::Seconds(90));
  INFO(end.DebugString());
  CHECK(end.state() == cv1::TRANSFER_STATE_COMPLETED);
  F().PostSteps("agent-lab-restart", "a", "b");
  CHECK(Where() == "b");
  Migrate("agent-lab-back", "b", "a");
}

// Keep last: stops the agents and the lab.
TEST_CASE("teardown: agents stop on SIGTERM") {
  for (int i = 0; i < 2; ++i) {
    int rc = W().agent[i]->Stop(absl::Seconds(25));
    CHECK(rc == 0);
  }
  W().lab.reset();
}

}  // namespace
}  // namespace livemig
