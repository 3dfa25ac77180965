// The HTTP server's bounds, in process, with small caps so each one is reached at once. The
// attack suite (integration_tests/attack) runs the same against the real scheduler binary.
#include "common/http_server.h"

#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "testing/raw_http.h"

namespace livemig::http {
namespace {

using livemig::testing::RawConnect;
using livemig::testing::RawExchange;
using livemig::testing::RawRead;
using livemig::testing::RawSend;

struct Fixture {
  std::atomic<int> handled{0};
  std::unique_ptr<Server> server;
  explicit Fixture(Options o) {
    server = std::make_unique<Server>(o);
    server->Route(
        "GET", "/healthz",
        [](const Request&, Response& res) { res.set_content("ok", "text/plain"); }, nullptr,
        /*slotless=*/true);
    server->Get("/hello/([a-z]+)", [this](const Request& req, Response& res) {
      ++handled;
      res.set_content("hello " + req.matches[1] + " " + req.get_param_value("x"), "text/plain");
    });
    server->Post(
        "/upload",
        [](const Request& req, Response& res) {
          if (req.get_header_value("Authorization") == "Bearer good") return true;
          res.status = 401;
          res.set_content("no token", "text/plain");
          return false;
        },
        [this](const Request& req, Response& res) {
          ++handled;
          res.set_content(absl::StrCat(req.body.size()), "text/plain");
        });
    REQUIRE(server->Start("127.0.0.1", 0).ok());
  }
  int port() const { return server->port(); }
};

Options Small() {
  Options o;
  o.max_connections = 1;
  o.max_waiting = 2;
  o.max_per_client = 3;
  o.queue_timeout = absl::Milliseconds(400);
  o.header_timeout = absl::Milliseconds(500);
  o.max_line = 1024;
  o.max_headers = 4096;
  o.max_body = 64 * 1024;
  o.threads = 2;
  return o;
}

std::string Get(const std::string& path) {
  return absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: t\r\n\r\n");
}

TEST_CASE("http: a request is routed, its path and query decoded") {
  Fixture f(Small());
  auto r = RawExchange(f.port(), Get("/hello/%77orld?x=a+b%21"));
  REQUIRE(r.ok());
  CHECK(r->status == 200);
  CHECK(r->body == "hello world a b!");
  auto missing = RawExchange(f.port(), Get("/nothing"));
  REQUIRE(missing.ok());
  CHECK(missing->status == 404);
}

TEST_CASE("http: the limits are answered with their status and Connection: close") {
  Fixture f(Small());
  auto line = RawExchange(f.port(), Get("/hello/" + std::string(2000, 'a')));
  REQUIRE(line.ok());
  CHECK(line->status == 414);
  CHECK(line->headers["connection"] == "close");
  auto header = RawExchange(
      f.port(),
      absl::StrCat("GET /hello/a HTTP/1.1\r\nX-Big: ", std::string(2000, 'b'), "\r\n\r\n"));
  REQUIRE(header.ok());
  CHECK(header->status == 431);
  // A header line longer than all headers may be: still the header's 431, not the line's 414.
  auto huge = RawExchange(
      f.port(),
      absl::StrCat("GET /hello/a HTTP/1.1\r\nX-Huge: ", std::string(100000, 'h'), "\r\n\r\n"));
  REQUIRE(huge.ok());
  CHECK(huge->status == 431);
  auto huge_line = RawExchange(f.port(), Get("/hello/" + std::string(100000, 'a')));
  REQUIRE(huge_line.ok());
  CHECK(huge_line->status == 414);
  std::string many = "GET /hello/a HTTP/1.1\r\n";
  for (int i = 0; i < 60; ++i)
    absl::StrAppend(&many, "X-H", i, ": ", std::string(100, 'c'), "\r\n");
  auto all = RawExchange(f.port(), many + "\r\n");
  REQUIRE(all.ok());
  CHECK(all->status == 431);
  auto body = RawExchange(f.port(),
                          "POST /upload HTTP/1.1\r\nAuthorization: Bearer good\r\n"
                          "Content-Length: 100000\r\n\r\n");
  REQUIRE(body.ok());
  CHECK(body->status == 413);
  CHECK(body->headers["connection"] == "close");
  CHECK(f.handled == 0);
}

TEST_CASE("http: a gate refuses on the headers; the body is never read") {
  Fixture f(Small());
  auto fd = RawConnect(f.port());
  REQUIRE(fd.ok());
  REQUIRE(RawSend(*fd, "POST /upload HTTP/1.1\r\nContent-Length: 50000\r\n\r\n"));
  auto r = RawRead(*fd, absl::Seconds(5));  // answered although no byte of the body was sent
  close(*fd);
  REQUIRE(r.ok());
  CHECK(r->status == 401);
  CHECK(r->headers["connection"] == "close");
  CHECK(f.handled == 0);
  // With the token, the body is read and handled (chunked too).
  auto ok = RawExchange(f.port(),
                        "POST /upload HTTP/1.1\r\nAuthorization: Bearer good\r\n"
                        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n");
  REQUIRE(ok.ok());
  CHECK(ok->status == 200);
  CHECK(ok->body == "8");
}

TEST_CASE("http: headers that do not arrive in time are 408, the connection closed") {
  Fixture f(Small());
  auto fd = RawConnect(f.port());
  REQUIRE(fd.ok());
  const absl::Time start = absl::Now();
  REQUIRE(RawSend(*fd, "GET /hello/a HTTP/1.1\r\nX-Slow: "));
  auto r = RawRead(*fd, absl::Seconds(10));
  close(*fd);
  REQUIRE(r.ok());
  CHECK(r->status == 408);
  CHECK(absl::Now() - start < absl::Seconds(5));
}

TEST_CASE("http: connections beyond the slots wait, then 503; /healthz needs no slot") {
  Fixture f(Small());
  // A keep-alive connection holds the only slot.
  auto holder = RawConnect(f.port(), "127.0.0.2");
  REQUIRE(holder.ok());
  REQUIRE(RawSend(*holder, Get("/hello/a")));
  auto first = RawRead(*holder, absl::Seconds(5));
  REQUIRE(first.ok());
  CHECK(first->status == 200);
  // The health check answers meanwhile.
  auto health = RawExchange(f.port(), Get("/healthz"));
  REQUIRE(health.ok());
  CHECK(health->status == 200);
  // Another request waits for the slot, then is refused with Retry-After.
  const absl::Time start = absl::Now();
  auto busy = RawExchange(f.port(), Get("/hello/b"));
  REQUIRE(busy.ok());
  CHECK(busy->status == 503);
  CHECK(busy->headers.count("retry-after") == 1);
  CHECK(absl::Now() - start >= absl::Milliseconds(350));
  // A waiting request gets the slot when the holder leaves.
  auto waiter = RawConnect(f.port());
  REQUIRE(waiter.ok());
  REQUIRE(RawSend(*waiter, Get("/hello/c")));
  close(*holder);
  auto served = RawRead(*waiter, absl::Seconds(5));
  close(*waiter);
  REQUIRE(served.ok());
  CHECK(served->status == 200);
  CHECK(served->body == "hello c ");
}

TEST_CASE("http: a client over its connection cap gets 503 at once") {
  Options o = Small();
  o.max_connections = 10;
  Fixture f(o);
  std::vector<int> fds;
  for (int i = 0; i < 3; ++i) {
    auto fd = RawConnect(f.port(), "127.0.0.7");
    REQUIRE(fd.ok());
    fds.push_back(*fd);
  }
  // The server may not have accepted all three yet: wait until it counts them.
  const absl::Time end = absl::Now() + absl::Seconds(5);
  while (f.server->stats().connections < 3 && absl::Now() < end)
    absl::SleepFor(absl::Milliseconds(5));
  REQUIRE(f.server->stats().connections == 3);
  auto fourth = RawConnect(f.port(), "127.0.0.7");
  REQUIRE(fourth.ok());
  auto r = RawRead(*fourth, absl::Seconds(5));
  close(*fourth);
  REQUIRE(r.ok());
  CHECK(r->status == 503);
  CHECK(r->headers.count("retry-after") == 1);
  // Another address is not affected.
  auto other = RawExchange(f.port(), Get("/hello/z"));
  REQUIRE(other.ok());
  CHECK(other->status == 200);
  for (int fd : fds) close(fd);
}

}  // namespace
}  // namespace livemig::http
