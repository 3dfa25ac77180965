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
  std::unique_ptr<cv1::ComputeAgent::Stub> stub[2];

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
    stub[Index(h)] = cv1::ComputeAgent::NewStub(channel);
    const bool up = WaitFor(
        [&] {
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
          cv1::GetHostInfoResponse r;
          return stub[Index(h)]->GetHostInfo(&ctx, {}, &r).ok();
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

template <typename Req, typename Resp>
using Rpc = grpc::Status (cv1::ComputeAgent::Stub::*)(grpc::ClientContext*, const Req&, Resp*);

template <typename Req, typename Resp>
absl::StatusOr<Resp> Call(const std::string& host, Rpc<Req, Resp> rpc, const Req& req) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  Resp resp;
  grpc::Status s = (W().stub[World::Index(host)].get()->*rpc)(&ctx, req, &resp);
  if (!s.ok())
    return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  return resp;
}

// Calls twice and checks that both answers are the same.
template <typename Req, typename Resp>
Resp Twice(const std::string& host, Rpc<Req, Resp> rpc, const Req& req) {
  auto first = Call(host, rpc, req);
  INFO(first.status().ToString());
  REQUIRE(first.ok());
  auto second = Call(host, rpc, req);
  REQUIRE(second.ok());
  CHECK(first->SerializeAsString() == second->SerializeAsString());
  return *first;
}

template <typename Req>
Req Step(const std::string& mid, const std::string& from, const std::string& to) {
  Req r;
  r.set_migration_id(mid);
  r.set_instance_uuid(kUuid);
  r.set_source_host("lab-" + from);
  r.set_dest_host("lab-" + to);
  return r;
}

std::string Where() {
  auto w = W().lab->Where(kGuest);
  REQUIRE(w.ok());
  std::string s;
  for (const auto& h : *w) s += h;
  return s;
}

using S = cv1::ComputeAgent::Stub;

// Steps 4-6 (each twice); returns the LiveMigration request.
cv1::LiveMigrationRequest Prepare(const std::string& mid, const std::string& from,
                                  const std::string& to, v1::MigrationOptions options = {}) {
  auto src_info = Call<cv1::GetHostInfoRequest, cv1::GetHostInfoResponse>(
      from, &S::GetHostInfo, cv1::GetHostInfoRequest());
  REQUIRE(src_info.ok());
  CHECK(src_info->inventory().hostname() == "lab-" + from);  // the agent's UTS namespace
  cv1::DescribeInstanceRequest di;
  di.set_instance_uuid(kUuid);
  auto dom = Call(from, &S::DescribeInstance, di);
  REQUIRE(dom.ok());
  REQUIRE(dom->present());
  auto dreq = Step<cv1::CheckCanLiveMigrateOnDestRequest>(mid, from, to);
  *dreq.mutable_source_cpu() = src_info->inventory().cpu();
  dreq.set_source_hypervisor_type(src_info->inventory().hypervisor_type());
  dreq.set_source_hypervisor_version(src_info->inventory().hypervisor_version());
  *dreq.mutable_instance() = dom->domain();
  *dreq.mutable_options() = options;
  auto d = Twice(to, &S::CheckCanLiveMigrateOnDest, dreq);
  INFO(d.DebugString());
  REQUIRE(d.passed());
  auto sreq = Step<cv1::CheckCanLiveMigrateOnSrcRequest>(mid, from, to);
  *sreq.mutable_dest_check_data() = d.dest_check_data();
  *sreq.mutable_options() = options;
  auto s = Twice(from, &S::CheckCanLiveMigrateOnSrc, sreq);
  REQUIRE(s.passed());
  auto pre = Step<cv1::PreLiveMigrationRequest>(mid, from, to);
  *pre.mutable_migrate_data()->mutable_src_check() = s.src_check_data();
  *pre.mutable_options() = options;
  auto p = Twice(to, &S::PreLiveMigration, pre);
  auto lm = Step<cv1::LiveMigrationRequest>(mid, from, to);
  *lm.mutable_options() = options;
  *lm.mutable_migrate_data()->mutable_dest_check() = d.dest_check_data();
  *lm.mutable_migrate_data()->mutable_src_check() = s.src_check_data();
  *lm.mutable_migrate_data()->mutable_pre_live_migration() = p.pre_live_migration_data();
  return lm;
}

cv1::MigrationProgressReport WaitForEnd(const std::string& host, const std::string& mid) {
  cv1::GetMigrationProgressRequest g;
  g.set_migration_id(mid);
  g.set_instance_uuid(kUuid);
  cv1::MigrationProgressReport last;
  REQUIRE(WaitFor(
      [&] {
        auto r = Call(host, &S::GetMigrationProgress, g);
        if (!r.ok()) return false;
        last = *r;
        return r->state() != cv1::TRANSFER_STATE_RUNNING;
      },
      absl::Seconds(90)));
  return last;
}

void PostSteps(const std::string& mid, const std::string& from, const std::string& to) {
  Twice(from, &S::PostLiveMigration, Step<cv1::PostLiveMigrationRequest>(mid, from, to));
  auto at = Twice(to, &S::PostLiveMigrationAtDestination,
                  Step<cv1::PostLiveMigrationAtDestinationRequest>(mid, from, to));
  CHECK(at.domain().state() == v1::DOMAIN_STATE_RUNNING);
  CHECK(at.domain().persistent());
}

void Migrate(const std::string& mid, const std::string& from, const std::string& to) {
  auto before = W().lab->Heartbeat(kGuest);
  REQUIRE(before.ok());
  auto lm = Prepare(mid, from, to);
  auto first = Call(from, &S::LiveMigration, lm);
  INFO(first.status().ToString());
  REQUIRE(first.ok());
  CHECK_FALSE(first->attached());
  auto second = Call(from, &S::LiveMigration, lm);  // repeated: attaches, never a second transfer
  REQUIRE(second.ok());
  CHECK(second->attached());
  auto end = WaitForEnd(from, mid);
  INFO(end.DebugString());
  REQUIRE(end.state() == cv1::TRANSFER_STATE_COMPLETED);
  PostSteps(mid, from, to);
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
  auto lm = Prepare("agent-lab-rb", "a", "b");
  Twice("b", &S::RollbackLiveMigrationAtDestination,
        Step<cv1::RollbackLiveMigrationAtDestinationRequest>("agent-lab-rb", "a", "b"));
  auto r = Twice("a", &S::RollbackLiveMigration,
                 Step<cv1::RollbackLiveMigrationRequest>("agent-lab-rb", "a", "b"));
  CHECK(r.domain().state() == v1::DOMAIN_STATE_RUNNING);
  CHECK(Where() == "a");
  cv1::DescribeInstanceRequest di;
  di.set_instance_uuid(kUuid);
  auto on_b = Call("b", &S::DescribeInstance, di);
  REQUIRE(on_b.ok());
  CHECK_FALSE(on_b->present());
  // The rolled-back migration cannot be started afterwards.
  auto late = Call("a", &S::LiveMigration, lm);
  CHECK(late.status().code() == absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("an agent killed during a transfer restarts, reports the truth and attaches") {
  REQUIRE(Where() == "a");
  v1::MigrationOptions slow;
  slow.set_bandwidth_mib_s(4);
  auto lm = Prepare("agent-lab-restart", "a", "b", slow);
  REQUIRE(Call("a", &S::LiveMigration, lm).ok());
  cv1::GetMigrationProgressRequest g;
  g.set_migration_id("agent-lab-restart");
  g.set_instance_uuid(kUuid);
  REQUIRE(WaitFor(
      [&] {
        auto r = Call("a", &S::GetMigrationProgress, g);
        return r.ok() && r->progress().bytes_processed() > 0;
      },
      absl::Seconds(30)));
  W().agent[0]->Kill();  // SIGKILL: the transfer continues in libvirt
  W().StartAgent("a");
  auto p = Call("a", &S::GetMigrationProgress, g);
  INFO(p.status().ToString());
  REQUIRE(p.ok());
  CHECK(p->state() == cv1::TRANSFER_STATE_RUNNING);
  CHECK(p->progress().has_bytes());
  cv1::DescribeInstanceRequest di;
  di.set_instance_uuid(kUuid);
  auto d = Call("a", &S::DescribeInstance, di);
  REQUIRE(d.ok());
  CHECK(d->present());
  CHECK(d->domain().migration_job_active());
  auto attach = Call("a", &S::LiveMigration, lm);  // the reconciler's re-send
  REQUIRE(attach.ok());
  CHECK(attach->attached());
  INFO("agent a log:\n" << W().agent[0]->LogTail(40));
  auto fc = Call("a", &S::ForceCompleteLiveMigration,
                 Step<cv1::ForceCompleteLiveMigrationRequest>("agent-lab-restart", "a", "b"));
  INFO(fc.status().ToString());
  CHECK(fc.ok());  // converge: at 4 MiB/s the busy guest never would on its own
  auto end = WaitForEnd("a", "agent-lab-restart");
  INFO(end.DebugString());
  CHECK(end.state() == cv1::TRANSFER_STATE_COMPLETED);
  PostSteps("agent-lab-restart", "a", "b");
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
