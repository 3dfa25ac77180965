// The database behind a black hole: PostgreSQL reached over TCP through testing/blackhole_proxy
// (a firewall that silently drops the port: nothing refused, nothing answered), the real
// scheduler binary on it with its default database settings. An API call fails within a bound
// with UNAVAILABLE naming the database, and calls succeed again once the path is back. Also: the
// pool's TCP connections carry the keepalive settings it adds.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <memory>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "db/pg_pool.h"
#include "grpcpp/grpcpp.h"
#include "proto/scheduler.grpc.pb.h"
#include "testing/blackhole_proxy.h"
#include "testing/pg_server.h"
#include "testing/process.h"
#include "testing/run_command.h"

namespace livemig {
namespace {

namespace sv1 = ::livemig::scheduler::v1;
using testing::PgServer;

PgServer& Pg() {
  static auto server = [] {
    auto s = PgServer::Start(/*tcp=*/true);
    if (!s.ok()) FAIL(s.status().ToString());
    return std::move(s).value();
  }();
  return *server;
}

int SockOpt(int fd, int level, int name) {
  int v = -1;
  socklen_t len = sizeof(v);
  if (getsockopt(fd, level, name, &v, &len) != 0) return -1;
  return v;
}

TEST_CASE("the pool's TCP connections carry keepalives and tcp_user_timeout") {
  auto db = Pg().CreateDatabase();
  REQUIRE(db.ok());
  db::PgPool::Options o;
  o.conninfo = PgServer::OverTcp(*db, Pg().tcp_port());
  INFO(db::PgPool::ConnectionString(o));
  pqxx::connection conn(db::PgPool::ConnectionString(o));
  const int fd = conn.sock();
  REQUIRE(fd >= 0);
  CHECK(SockOpt(fd, SOL_SOCKET, SO_KEEPALIVE) == 1);
  CHECK(SockOpt(fd, IPPROTO_TCP, TCP_KEEPIDLE) == 5);
  CHECK(SockOpt(fd, IPPROTO_TCP, TCP_KEEPINTVL) == 2);
  CHECK(SockOpt(fd, IPPROTO_TCP, TCP_KEEPCNT) == 3);
  CHECK(SockOpt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT) == 10000);
  // The pool itself connects with them.
  auto pool = db::PgPool::Create(o);
  INFO(pool.status().ToString());
  REQUIRE(pool.ok());
}

TEST_CASE(
    "a black-holed database makes API calls fail within their deadline and recovers "
    "(scheduler defaults)") {
  auto db = Pg().CreateDatabase();
  REQUIRE(db.ok());
  auto proxy = testing::BlackholeProxy::Start(Pg().tcp_port());
  REQUIRE(proxy.ok());
  const std::string conninfo = PgServer::OverTcp(*db, (*proxy)->port());
  const std::string dir = testing::MakeShortTempDir("dbhole");
  struct Cleanup {
    std::string dir;
    ~Cleanup() { testing::RunCommand("rm -rf '" + dir + "'").IgnoreError(); }
  } cleanup{dir};
  testing::ChildProcess scheduler(
      absl::StrCat(testing::RunfilePath("scheduler/scheduler"), " --db '", conninfo,
                   "' --listen unix:", dir, "/api.sock --registry-listen unix:", dir,
                   "/registry.sock --insecure-plaintext --no-auth"),
      dir + "/scheduler.log");
  auto api = sv1::SchedulerApi::NewStub(
      grpc::CreateChannel("unix:" + dir + "/api.sock", grpc::InsecureChannelCredentials()));
  auto list_hosts = [&](absl::Duration deadline) {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    sv1::ListHostsResponse r;
    return api->ListHosts(&ctx, {}, &r);
  };
  const bool up =
      testing::WaitFor([&] { return list_hosts(absl::Seconds(2)).ok(); }, absl::Seconds(60));
  INFO(scheduler.LogTail(40));
  REQUIRE(up);
  CHECK((*proxy)->connections() >= 2);  // both pools connect through the proxy

  // The path to the database drops everything: the pooled connections stay open and unanswered.
  (*proxy)->SetBlackhole(true);
  const absl::Time t0 = absl::Now();
  // The client would wait a minute: the scheduler's own bounds must end the call first.
  const grpc::Status failed = list_hosts(absl::Seconds(60));
  const absl::Duration to_fail = absl::Now() - t0;
  printf("black-holed database: ListHosts failed after %.1f s with %d: %s\n",
         absl::ToDoubleSeconds(to_fail), static_cast<int>(failed.error_code()),
         failed.error_message().c_str());
  INFO(failed.error_message());
  CHECK_FALSE(failed.ok());
  CHECK(failed.error_code() == grpc::StatusCode::UNAVAILABLE);
  CHECK(absl::StrContains(failed.error_message(), "database"));
  // The defaults: statement timeout 10 s, a call with no answer abandoned 5 s later (15 s); a
  // loaded machine's margin on top.
  CHECK(to_fail < absl::Seconds(25));
  // The scheduler stays up, and a second call is bounded as well (a new connection: the connect
  // timeout; an idle one: the call timeout).
  const absl::Time t1 = absl::Now();
  const grpc::Status second = list_hosts(absl::Seconds(60));
  const absl::Duration second_fail = absl::Now() - t1;
  printf("black-holed database: a second ListHosts failed after %.1f s: %s\n",
         absl::ToDoubleSeconds(second_fail), second.error_message().c_str());
  CHECK(second.error_code() == grpc::StatusCode::UNAVAILABLE);
  CHECK(second_fail < absl::Seconds(25));
  CHECK(scheduler.Running());

  // The path comes back: calls succeed again, without a restart.
  (*proxy)->SetBlackhole(false);
  const absl::Time t2 = absl::Now();
  const bool recovered =
      testing::WaitFor([&] { return list_hosts(absl::Seconds(20)).ok(); }, absl::Seconds(40));
  printf("database path restored: ListHosts succeeded again after %.1f s\n",
         absl::ToDoubleSeconds(absl::Now() - t2));
  INFO(scheduler.LogTail(40));
  CHECK(recovered);
  CHECK(scheduler.Running());
}

}  // namespace
}  // namespace livemig
