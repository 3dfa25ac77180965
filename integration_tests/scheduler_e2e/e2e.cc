#include "integration_tests/scheduler_e2e/e2e.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "testing/run_command.h"

namespace livemig::e2e {

using testing::RunCommand;
using testing::RunfilePath;

absl::Status FromGrpc(const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

Cloud::Cloud(std::string dir) : dir_(std::move(dir)), pki_(dir_ + "/pki") {
  auto pg = testing::PgServer::Start();
  REQUIRE(pg.ok());
  pg_ = std::move(pg).value();
  auto db = pg_->CreateDatabase();
  REQUIRE(db.ok());
  db_ = *db;
  REQUIRE(RunCommand(absl::StrCat(RunfilePath("deploy/pki.sh"), " init ", pki_)).ok());
  Issue("scheduler");
}

Cloud::~Cloud() {
  api_.reset();
  api2_.reset();
  for (auto& [h, a] : agents_) a->Stop(absl::Seconds(10));
  if (scheduler2_) scheduler2_->Stop(absl::Seconds(10));
  if (scheduler_) scheduler_->Stop(absl::Seconds(10));
}

void Cloud::Issue(const std::string& name) {
  REQUIRE(RunCommand(absl::StrCat(RunfilePath("deploy/pki.sh"), " issue ", pki_, " ", name)).ok());
}

std::string Cloud::ApiTlsFlags() {
  if (!api_cert_issued_) {
    REQUIRE(RunCommand(absl::StrCat(RunfilePath("deploy/pki.sh"), " issue-server ", pki_, " api"))
                .ok());
    api_cert_issued_ = true;
  }
  return absl::StrCat(" --api-tls-cert ", pki_, "/api.pem --api-tls-key ", pki_, "/api.key ");
}

void Cloud::StartScheduler(const std::string& extra) {
  if (!extra.empty()) scheduler_flags_ = extra;
  scheduler_ = std::make_unique<testing::ChildProcess>(
      absl::StrCat(RunfilePath("scheduler/scheduler"), " --db '", db_, "' --listen unix:", dir_,
                   "/api.sock --registry-listen ",
                   registry_listen_.empty() ? "unix:" + dir_ + "/registry.sock" : registry_listen_,
                   " --tls-ca ", pki_, "/ca.pem --tls-cert ", pki_, "/scheduler.pem --tls-key ",
                   pki_, "/scheduler.key ",
                   scheduler_flags_.find("--tokens-file") == std::string::npos ? "--no-auth " : "",
                   scheduler_flags_),
      dir_ + "/scheduler.log");
  auto channel =
      grpc::CreateChannel("unix:" + dir_ + "/api.sock", grpc::InsecureChannelCredentials());
  api_ = sv1::SchedulerApi::NewStub(channel);
  const bool up = testing::WaitFor(
      [&] {
        grpc::ClientContext ctx;
        Prepare(&ctx, absl::Seconds(1));
        sv1::ListHostsResponse r;
        return api_->ListHosts(&ctx, {}, &r).ok();
      },
      absl::Seconds(30));
  INFO(SchedulerLog());
  REQUIRE(up);
}

void Cloud::KillScheduler() { scheduler_->Kill(); }

void Cloud::StartSecondScheduler(const std::string& extra) {
  scheduler2_ = std::make_unique<testing::ChildProcess>(
      absl::StrCat(RunfilePath("scheduler/scheduler"), " --db '", db_, "' --listen unix:", dir_,
                   "/api2.sock --registry-listen unix:", dir_, "/registry2.sock --tls-ca ", pki_,
                   "/ca.pem --tls-cert ", pki_, "/scheduler.pem --tls-key ", pki_,
                   "/scheduler.key ",
                   extra.find("--tokens-file") == std::string::npos ? "--no-auth " : "", extra),
      dir_ + "/scheduler2.log");
  api2_ = sv1::SchedulerApi::NewStub(
      grpc::CreateChannel("unix:" + dir_ + "/api2.sock", grpc::InsecureChannelCredentials()));
  const bool up = testing::WaitFor(
      [&] {
        grpc::ClientContext ctx;
        Prepare(&ctx, absl::Seconds(1));
        sv1::ListHostsResponse r;
        return api2_->ListHosts(&ctx, {}, &r).ok();
      },
      absl::Seconds(30));
  INFO(scheduler2_->LogTail(40));
  REQUIRE(up);
}

absl::StatusOr<std::string> Cloud::Sql(const std::string& query) const {
  static std::atomic<int> n{0};
  const std::string file = absl::StrCat(dir_, "/query-", n++, ".sql");
  {
    std::ofstream out(file);
    out << query << "\n";
  }
  auto r = RunCommand(absl::StrCat("psql -X -q -A -t -v ON_ERROR_STOP=1 '", db_, "' -f ", file));
  std::remove(file.c_str());
  return r;
}

void Cloud::Prepare(grpc::ClientContext* ctx, absl::Duration deadline) const {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  if (!token_.empty()) ctx->AddMetadata("authorization", "Bearer " + token_);
}

void Cloud::StartAgent(const std::string& host, const std::string& flags,
                       const std::string& prefix) {
  Issue(host);
  agents_[host] = std::make_unique<testing::ChildProcess>(
      absl::StrCat(prefix, " ", RunfilePath("compute/compute_agent"), " --hostname ", host,
                   " --tls-ca ", pki_, "/ca.pem --tls-cert ", pki_, "/", host, ".pem --tls-key ",
                   pki_, "/", host, ".key --allow scheduler --scheduler unix:", dir_,
                   "/registry.sock --scheduler-name scheduler --report-interval 1 ", flags),
      dir_ + "/agent-" + host + ".log");
}

std::string Cloud::SchedulerLog() const { return scheduler_ ? scheduler_->LogTail(40) : ""; }

bool Cloud::WaitInstanceOn(const std::string& uuid, const std::string& host, absl::Duration t) {
  return testing::WaitFor(
      [&] {
        grpc::ClientContext ctx;
        Prepare(&ctx, absl::Seconds(2));
        sv1::GetInstanceRequest r;
        r.set_instance_uuid(uuid);
        sv1::Instance i;
        return api_->GetInstance(&ctx, r, &i).ok() && i.host() == host &&
               i.state() == v1::DOMAIN_STATE_RUNNING;
      },
      t);
}

absl::StatusOr<sv1::LiveMigrateResponse> Cloud::Migrate(const std::string& uuid,
                                                        const std::string& dest,
                                                        const v1::MigrationOptions& o) {
  grpc::ClientContext ctx;
  Prepare(&ctx, absl::Seconds(20));
  sv1::LiveMigrateRequest r;
  r.set_instance_uuid(uuid);
  r.set_destination(dest);
  *r.mutable_options() = o;
  r.set_requester("e2e-test");
  sv1::LiveMigrateResponse resp;
  grpc::Status s = api_->LiveMigrate(&ctx, r, &resp);
  if (!s.ok()) return FromGrpc(s);
  return resp;
}

std::string Cloud::StartMigration(const std::string& uuid, const std::string& dest,
                                  const v1::MigrationOptions& o) {
  auto r = Migrate(uuid, dest, o);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  return r->migration().id();
}

absl::StatusOr<sv1::Migration> Cloud::Get(const std::string& id) {
  grpc::ClientContext ctx;
  Prepare(&ctx, absl::Seconds(5));
  sv1::GetMigrationRequest r;
  r.set_migration_id(id);
  sv1::Migration m;
  grpc::Status s = api_->GetMigration(&ctx, r, &m);
  if (!s.ok()) return FromGrpc(s);
  return m;
}

bool Cloud::WaitStatus(const std::string& id, v1::MigrationStatus want, absl::Duration t,
                       sv1::Migration* last) {
  return testing::WaitFor(
      [&] {
        auto m = Get(id);
        if (m.ok() && last != nullptr) *last = *m;
        return m.ok() && m->status() == want;
      },
      t);
}

void Cloud::RequireStatus(const std::string& id, v1::MigrationStatus want, absl::Duration t) {
  sv1::Migration last;
  const bool ok = WaitStatus(id, want, t, &last);
  INFO(last.DebugString());
  INFO(SchedulerLog());
  REQUIRE(ok);
}

absl::Status Cloud::Abort(const std::string& id, const std::string& requester,
                          const std::string& reason) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  sv1::AbortMigrationRequest a;
  a.set_migration_id(id);
  a.set_requester(requester);
  a.set_reason(reason);
  sv1::AbortMigrationResponse resp;
  return FromGrpc(api_->AbortMigration(&ctx, a, &resp));
}

absl::StatusOr<sv1::Host> Cloud::GetHost(const std::string& name) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  sv1::GetHostRequest r;
  r.set_hostname(name);
  sv1::Host h;
  grpc::Status s = api_->GetHost(&ctx, r, &h);
  if (!s.ok()) return FromGrpc(s);
  return h;
}

absl::StatusOr<sv1::Instance> Cloud::GetInstance(const std::string& uuid) {
  grpc::ClientContext ctx;
  Prepare(&ctx);
  sv1::GetInstanceRequest r;
  r.set_instance_uuid(uuid);
  sv1::Instance i;
  grpc::Status s = api_->GetInstance(&ctx, r, &i);
  if (!s.ok()) return FromGrpc(s);
  return i;
}

sv1::Migration Cloud::WaitTerminal(const std::string& id, absl::Duration t) {
  sv1::Migration last;
  const bool done = testing::WaitFor(
      [&] {
        auto m = Get(id);
        if (!m.ok()) return false;
        last = *m;
        return last.status() == v1::MIGRATION_STATUS_COMPLETED ||
               last.status() == v1::MIGRATION_STATUS_FAILED ||
               last.status() == v1::MIGRATION_STATUS_CANCELLED;
      },
      t);
  INFO(last.DebugString());
  INFO(SchedulerLog());
  REQUIRE(done);
  return last;
}

}  // namespace livemig::e2e
