// Attacks on the scheduler's HTTP listener, against the real binary (PostgreSQL; no compute
// agents), with raw POSIX sockets so the bytes on the wire are exactly the ones each case sends
// (OpenSSL for the TLS clients). The scheduler runs with the HTTP server's default bounds:
//
//  1. slowloris: 200 connections from 127.0.0.2..127.0.0.201 trickle one header byte a second;
//     each is closed by the server at its 10 s header deadline (408 or a bare close), while
//     authorized GET /v1/hosts and GET /healthz from 127.0.0.1 keep answering 200 within 2 s;
//  2. oversized: a 20 KiB request line (414), a 20 KiB header line (431), 60 KB of headers
//     (431), a 2 MiB Content-Length (413 before the body is sent), a chunked body over 1 MiB
//     (413, closed), a 200 MB header line (refused and closed after a bounded number of bytes),
//     a 300 MB body with a wrong or no token (401 before the body is read); the scheduler's RSS
//     grows by less than 300 MB;
//  3. 1,000 concurrent authorized requests from 250 addresses: >= 90% 200, the rest 503 with
//     Retry-After, none hanging;
//  4. the per-client cap: of 70 idle connections from one address, the 6 beyond 64 get 503 with
//     Retry-After at once, other addresses are served, and the cap is released on close;
//  5. TLS (--api-tls-cert/--api-tls-key, a second scheduler on the same database): plaintext is
//     closed without a 200, a client trusting the CA gets 200, a client trusting another CA fails
//     the handshake with a verify error, and the log has one line per refused handshake.
//
// Every refusal must carry `Connection: close` and the server must actually close. The figures
// (times, byte counts, RSS) are printed with printf for bench/README.md.
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "testing/pg_server.h"
#include "testing/process.h"
#include "testing/run_command.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

namespace livemig::attack {
namespace {

// Tokens of at least 32 characters (the token file's minimum).
constexpr char kOp[] = "attack-operator-0123456789abcdef0123456789";
constexpr char kReader[] = "attack-reader-0123456789abcdef012345678901";
constexpr char kWrong[] = "attack-wrong-0123456789abcdef0123456789012";
constexpr char kUuid[] = "a77ac000-0000-4000-8000-000000000001";

constexpr uint64_t kKiB = 1024, kMiB = 1024 * 1024;

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}
double Max(const std::vector<double>& v) {
  return v.empty() ? 0 : *std::max_element(v.begin(), v.end());
}
double Min(const std::vector<double>& v) {
  return v.empty() ? 0 : *std::min_element(v.begin(), v.end());
}

// The resident set of a process in KiB (VmRSS from /proc/<pid>/status), -1 if unreadable.
long RssKb(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, "VmRSS:")) {
      std::string v(absl::StripAsciiWhitespace(line.substr(6)));
      v = std::string(absl::StripSuffix(v, "kB"));
      long kb = -1;
      if (absl::SimpleAtoi(absl::StripAsciiWhitespace(v), &kb)) return kb;
    }
  }
  return -1;
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 over POSIX sockets.

// A TCP connection to 127.0.0.1:port, bound first to `source` (any 127/8 address is local on
// Linux; the port is picked at connect time so that many sockets can share a source address).
// Blocking (connect waits at most 20 s) unless `nonblocking` (then connect may be in progress).
// Returns the fd, or -errno.
int Connect(int port, const std::string& source, bool nonblocking = false) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
  if (fd < 0) return -errno;
  int one = 1;
  setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (!nonblocking) {
    timeval tv{20, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }
  if (!source.empty()) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    if (inet_pton(AF_INET, source.c_str(), &a.sin_addr) != 1) {
      close(fd);
      return -EINVAL;
    }
    if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      const int e = errno;
      close(fd);
      return -e;
    }
  }
  sockaddr_in d{};
  d.sin_family = AF_INET;
  d.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &d.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&d), sizeof d) != 0 &&
      !(nonblocking && errno == EINPROGRESS)) {
    const int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

void SetNonBlocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

// What came back on a connection.
struct Reply {
  int status = 0;  // 0: no status line and headers yet; -1: not HTTP
  std::string head;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  bool closed = false;     // the server closed the connection (EOF or an error)
  bool reset = false;      // ... with a reset
  bool timed_out = false;  // the deadline passed first
  int connect_errno = 0, send_errno = 0, recv_errno = 0;
  uint64_t sent = 0;  // request bytes the kernel took
  uint64_t received = 0;
  double head_s = -1;  // from the start (before connect) to the end of the reply's headers
  double total_s = 0;  // from the start until the exchange ended

  std::string Header(const std::string& name) const {
    auto it = headers.find(absl::AsciiStrToLower(name));
    return it == headers.end() ? "" : it->second;
  }
  bool ConnectionClose() const {
    return absl::StrContains(absl::AsciiStrToLower(Header("connection")), "close");
  }
  bool RetryAfter() const { return !Header("retry-after").empty(); }
  std::string StatusLine() const { return head.substr(0, head.find("\r\n")); }
  std::string Describe() const {
    return absl::StrCat(
        "status=", status, " [", StatusLine(), "] closed=", closed, " reset=", reset,
        " timed_out=", timed_out, " connect_errno=", connect_errno, " send_errno=", send_errno,
        " (", send_errno ? strerror(send_errno) : "", ") recv_errno=", recv_errno, " sent=", sent,
        " received=", received, " head_s=", head_s, " total_s=", total_s, "\n", head);
  }
};

// Parses the status line and headers once "\r\n\r\n" has arrived in `raw`.
bool ParseHead(const std::string& raw, Reply* r) {
  const size_t end = raw.find("\r\n\r\n");
  if (end == std::string::npos) return false;
  r->head = raw.substr(0, end);
  r->body = raw.substr(end + 4);
  std::vector<std::string> lines = absl::StrSplit(r->head, "\r\n");
  r->status = -1;
  if (!lines.empty() && absl::StartsWith(lines[0], "HTTP/1.") && lines[0].size() >= 12) {
    int code = 0;
    if (absl::SimpleAtoi(lines[0].substr(9, 3), &code)) r->status = code;
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t colon = lines[i].find(':');
    if (colon == std::string::npos) continue;
    r->headers[absl::AsciiStrToLower(lines[i].substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
  }
  return true;
}

// Whether the reply's body is complete (Content-Length or a chunked body's last chunk); a reply
// with neither ends when the server closes.
bool BodyComplete(const Reply& r) {
  uint64_t len = 0;
  if (absl::SimpleAtoi(r.Header("content-length"), &len)) return r.body.size() >= len;
  if (absl::StrContains(absl::AsciiStrToLower(r.Header("transfer-encoding")), "chunked")) {
    return absl::EndsWith(r.body, "0\r\n\r\n");
  }
  return false;
}

// The request's bytes, piece by piece ("" when there are no more).
using Producer = std::function<std::string()>;

Producer Once(std::string bytes) {
  auto s = std::make_shared<std::string>(std::move(bytes));
  return [s]() {
    std::string out;
    out.swap(*s);
    return out;
  };
}

// `prefix`, then `n` bytes of `fill` in pieces of 64 KiB.
Producer Filler(std::string prefix, uint64_t n, char fill) {
  auto first = std::make_shared<std::string>(std::move(prefix));
  auto left = std::make_shared<uint64_t>(n);
  return [first, left, fill]() {
    if (!first->empty()) {
      std::string out;
      out.swap(*first);
      return out;
    }
    const uint64_t k = std::min<uint64_t>(*left, 64 * kKiB);
    *left -= k;
    return std::string(k, fill);
  };
}

// `head`, then `chunks` chunks of `size` bytes each, then the last chunk.
Producer Chunked(std::string head, int chunks, size_t size) {
  auto first = std::make_shared<std::string>(std::move(head));
  auto left = std::make_shared<int>(chunks);
  auto ended = std::make_shared<bool>(false);
  return [=]() {
    if (!first->empty()) {
      std::string out;
      out.swap(*first);
      return out;
    }
    if (*left > 0) {
      --*left;
      char hex[32];
      snprintf(hex, sizeof hex, "%zx\r\n", size);
      return absl::StrCat(hex, std::string(size, 'x'), "\r\n");
    }
    if (!*ended) {
      *ended = true;
      return std::string("0\r\n\r\n");
    }
    return std::string();
  };
}

struct TalkOptions {
  absl::Duration timeout = absl::Seconds(10);
  // Go on sending after the reply's headers came (to measure what the server takes before it
  // closes); by default sending stops at the reply.
  bool keep_sending = false;
  // After the reply, wait until the server closes the connection (or the deadline).
  bool until_close = false;
};

TalkOptions Opts(absl::Duration timeout, bool until_close = false, bool keep_sending = false) {
  TalkOptions o;
  o.timeout = timeout;
  o.until_close = until_close;
  o.keep_sending = keep_sending;
  return o;
}

// Sends what `next` produces while reading the reply, on a connected socket (made
// non-blocking): reading while sending catches a reply the server sends before the request
// ends, before a reset can discard it.
Reply Talk(int fd, const Producer& next, const TalkOptions& o, absl::Time start) {
  Reply r;
  SetNonBlocking(fd);
  const absl::Time deadline = absl::Now() + o.timeout;
  std::string out;
  size_t pos = 0;
  bool sending = true;
  bool have_head = false;
  std::string raw;
  std::vector<char> buf(64 * kKiB);
  for (;;) {
    if (sending && pos == out.size()) {
      out = next();
      pos = 0;
      if (out.empty()) sending = false;
    }
    if (r.closed) break;
    if (have_head && !o.until_close && BodyComplete(r)) break;
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      r.timed_out = true;
      break;
    }
    pollfd p{fd, static_cast<short>(POLLIN | (sending ? POLLOUT : 0)), 0};
    const int n = poll(&p, 1,
                       static_cast<int>(std::max<int64_t>(
                           1, std::min<int64_t>(absl::ToInt64Milliseconds(left), 1000))));
    if (n <= 0) continue;
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      const ssize_t got = recv(fd, buf.data(), buf.size(), 0);
      if (got > 0) {
        r.received += got;
        if (raw.size() < kMiB) raw.append(buf.data(), got);
      } else if (got == 0) {
        r.closed = true;
      } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        r.closed = true;
        r.recv_errno = errno;
        r.reset = errno == ECONNRESET;
      }
    }
    if (sending && !r.closed && (p.revents & (POLLOUT | POLLERR | POLLHUP))) {
      const ssize_t s = send(fd, out.data() + pos, out.size() - pos, MSG_NOSIGNAL);
      if (s > 0) {
        pos += s;
        r.sent += s;
      } else if (s < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        // EPIPE/ECONNRESET: the server closed; what it answered can still be read.
        r.send_errno = errno;
        sending = false;
      }
    }
    if (!have_head && ParseHead(raw, &r)) {
      have_head = true;
      r.head_s = Seconds(absl::Now() - start);
      if (!o.keep_sending) sending = false;
    } else if (have_head) {
      r.body = raw.substr(r.head.size() + 4);
    }
  }
  r.total_s = Seconds(absl::Now() - start);
  return r;
}

// One exchange on a new connection from `source`.
Reply Exchange(int port, const Producer& next, const std::string& source = "",
               const TalkOptions& o = {}) {
  const absl::Time start = absl::Now();
  const int fd = Connect(port, source);
  if (fd < 0) {
    Reply r;
    r.connect_errno = -fd;
    r.total_s = Seconds(absl::Now() - start);
    return r;
  }
  Reply r = Talk(fd, next, o, start);
  close(fd);
  return r;
}
Reply Exchange(int port, const std::string& bytes, const std::string& source = "",
               const TalkOptions& o = {}) {
  return Exchange(port, Once(bytes), source, o);
}

std::string Bearer(const char* token) {
  return token ? absl::StrCat("Authorization: Bearer ", token, "\r\n") : "";
}

// A GET with `Connection: close`.
std::string Get(const std::string& path, const char* token = nullptr) {
  return absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\n", Bearer(token),
                      "Connection: close\r\n\r\n");
}

// A refusal by the server: the status, `Connection: close`, and the connection closed.
void CheckRefusal(const Reply& r, int status) {
  INFO(r.Describe());
  CHECK(r.status == status);
  CHECK(r.ConnectionClose());
  CHECK(r.closed);
  CHECK_FALSE(r.timed_out);
}

// ---------------------------------------------------------------------------------------------
// TLS clients (OpenSSL).

struct TlsReply {
  bool handshake = false;
  long verify = X509_V_OK;
  std::string error;
  Reply r;
};

std::string OpenSslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    absl::StrAppend(&out, out.empty() ? "" : "; ", buf);
  }
  return out;
}

// `request` over TLS to 127.0.0.1:port, trusting only `ca_file` and checking that the server's
// certificate names IP 127.0.0.1.
TlsReply TlsExchange(int port, const std::string& ca_file, const std::string& request,
                     absl::Duration timeout = absl::Seconds(10)) {
  TlsReply t;
  const absl::Time start = absl::Now();
  const int fd = Connect(port, "");
  if (fd < 0) {
    t.error = absl::StrCat("connect: ", strerror(-fd));
    return t;
  }
  timeval tv{static_cast<time_t>(absl::ToInt64Seconds(timeout)), 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)> ctx(SSL_CTX_new(TLS_client_method()),
                                                        SSL_CTX_free);
  ERR_clear_error();
  if (!ctx || SSL_CTX_load_verify_locations(ctx.get(), ca_file.c_str(), nullptr) != 1) {
    t.error = absl::StrCat("CA ", ca_file, ": ", OpenSslErrors());
    close(fd);
    return t;
  }
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  std::unique_ptr<SSL, decltype(&SSL_free)> ssl(SSL_new(ctx.get()), SSL_free);
  SSL_set_fd(ssl.get(), fd);
  X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl.get()), "127.0.0.1");
  if (SSL_connect(ssl.get()) != 1) {
    t.verify = SSL_get_verify_result(ssl.get());
    t.error = OpenSslErrors();
    close(fd);
    return t;
  }
  t.handshake = true;
  t.verify = SSL_get_verify_result(ssl.get());
  size_t pos = 0;
  while (pos < request.size()) {
    const int w =
        SSL_write(ssl.get(), request.data() + pos, static_cast<int>(request.size() - pos));
    if (w <= 0) {
      t.error = absl::StrCat("write: ", OpenSslErrors());
      break;
    }
    pos += w;
  }
  t.r.sent = pos;
  std::string raw;
  bool have_head = false;
  char buf[16384];
  while (absl::Now() - start < timeout) {
    const int n = SSL_read(ssl.get(), buf, sizeof buf);
    if (n <= 0) {
      t.r.closed = true;
      break;
    }
    t.r.received += n;
    raw.append(buf, n);
    if (!have_head && ParseHead(raw, &t.r)) {
      have_head = true;
      t.r.head_s = Seconds(absl::Now() - start);
    } else if (have_head) {
      t.r.body = raw.substr(t.r.head.size() + 4);
    }
    if (have_head && BodyComplete(t.r)) break;
  }
  t.r.total_s = Seconds(absl::Now() - start);
  SSL_shutdown(ssl.get());
  close(fd);
  return t;
}

// ---------------------------------------------------------------------------------------------
// The environment: PostgreSQL and one scheduler with the HTTP server's defaults, started once.

struct Env {
  std::string dir;
  std::unique_ptr<testing::PgServer> pg;
  std::string db;
  int port = 0;
  std::unique_ptr<testing::ChildProcess> sched;
  long rss_start_kb = -1;
  long rss_before_oversized_kb = -1;

  Env() {
    signal(SIGPIPE, SIG_IGN);
    dir = testing::MakeShortTempDir("attack");
    REQUIRE(!dir.empty());
    std::ofstream(dir + "/tokens") << kOp << " operator attack-op\n"
                                   << kReader << " reader attack-reader\n";
    auto p = testing::PgServer::Start();
    INFO(p.status().ToString());
    REQUIRE(p.ok());
    pg = std::move(p).value();
    auto d = pg->CreateDatabase();
    INFO(d.status().ToString());
    REQUIRE(d.ok());
    db = *d;
    port = testing::FreePort();
    // Still plaintext HTTP on loopback (allowed there by CheckApiListener): cases 1-4 send exact
    // HTTP bytes over thousands of raw, partly non-blocking sockets at the HTTP layer's limits,
    // and their figures (connections held, RSS) are for that layer alone; over TLS each would
    // first need a handshake on a non-blocking socket (not done yet: issue 16). TLS itself and
    // its refusal of plaintext are case 5's subject.
    sched = StartScheduler("attack", port, "", [this] {
      return Exchange(port, Get("/healthz"), "", Opts(absl::Seconds(2))).status == 200;
    });
    rss_start_kb = RssKb(sched->pid());
    printf("attack: scheduler pid %d on 127.0.0.1:%d, RSS at start %ld KiB\n", sched->pid(), port,
           rss_start_kb);
    fflush(stdout);
  }
  ~Env() {
    if (sched) sched->Stop(absl::Seconds(10));
    sched.reset();
    pg.reset();
    testing::RunCommand("rm -rf " + dir).IgnoreError();
  }

  // A scheduler on this database, no agents (plaintext registry), the HTTP server on
  // 127.0.0.1:http_port; waits until `up` (or the process exits).
  std::unique_ptr<testing::ChildProcess> StartScheduler(const std::string& name, int http_port,
                                                        const std::string& extra,
                                                        const std::function<bool()>& up) {
    auto p = std::make_unique<testing::ChildProcess>(
        absl::StrCat(testing::RunfilePath("scheduler/scheduler"), " --db '", db,
                     "' --listen unix:", dir, "/", name, "-api.sock --registry-listen unix:", dir,
                     "/", name, "-reg.sock --insecure-plaintext --tokens-file ", dir,
                     "/tokens --scheduler-id ", name, " --http-listen 127.0.0.1:", http_port, " ",
                     extra),
        dir + "/" + name + ".log");
    const bool ok =
        testing::WaitFor([&] { return !p->Running() || up(); }, absl::Seconds(60)) && p->Running();
    INFO(p->LogTail(40));
    REQUIRE(ok);
    return p;
  }

  void CheckAlive() {
    INFO(sched->LogTail(40));
    REQUIRE(sched->Running());
  }
  void MarkOversizedStart() {
    if (rss_before_oversized_kb < 0) rss_before_oversized_kb = RssKb(sched->pid());
  }
};

Env& E() {
  static std::unique_ptr<Env> e = std::make_unique<Env>();
  return *e;
}

// ---------------------------------------------------------------------------------------------
// 1. Slowloris.

TEST_CASE(
    "slowloris: 200 addresses trickling headers are cut at the 10 s header deadline while "
    "the API keeps answering") {
  Env& e = E();
  constexpr int kSlow = 200;
  struct Slow {
    int fd = -1;
    int connect_errno = 0;
    absl::Time start;
    double closed_after = -1;  // seconds from before connect() to the server's close
    std::string got;
    int bytes = 0;
  };
  std::vector<Slow> slow(kSlow);
  std::atomic<bool> done{false};
  const absl::Time t0 = absl::Now();
  std::thread loris([&] {
    const std::string first = "GET /v1/hosts HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    for (int i = 0; i < kSlow; ++i) {
      Slow& s = slow[i];
      s.start = absl::Now();
      const int fd = Connect(e.port, absl::StrCat("127.0.0.", 2 + i));
      if (fd < 0) {
        s.connect_errno = -fd;
        continue;
      }
      s.fd = fd;
      SetNonBlocking(fd);
      const ssize_t w = send(fd, first.data(), first.size(), MSG_NOSIGNAL);
      if (w > 0) s.bytes += w;
    }
    // One header byte a second on every connection the server has not closed, for up to 25 s.
    absl::Time tick = absl::Now() + absl::Seconds(1);
    const absl::Time end = t0 + absl::Seconds(25);
    for (;;) {
      std::vector<pollfd> fds;
      std::vector<int> idx;
      for (int i = 0; i < kSlow; ++i) {
        if (slow[i].fd >= 0 && slow[i].closed_after < 0) {
          fds.push_back({slow[i].fd, POLLIN, 0});
          idx.push_back(i);
        }
      }
      if (fds.empty() || absl::Now() >= end) break;
      const int wait_ms =
          static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(tick - absl::Now())));
      if (poll(fds.data(), fds.size(), wait_ms) > 0) {
        for (size_t k = 0; k < fds.size(); ++k) {
          if (!fds[k].revents) continue;
          Slow& s = slow[idx[k]];
          char buf[4096];
          const ssize_t got = recv(s.fd, buf, sizeof buf, 0);
          if (got > 0) {
            s.got.append(buf, got);
          } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
            s.closed_after = Seconds(absl::Now() - s.start);
          }
        }
      }
      if (absl::Now() >= tick) {
        for (Slow& s : slow) {
          if (s.fd < 0 || s.closed_after >= 0) continue;
          const ssize_t w = send(s.fd, "a", 1, MSG_NOSIGNAL);
          if (w == 1) {
            s.bytes++;
          } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
            s.closed_after = Seconds(absl::Now() - s.start);
          }
        }
        tick += absl::Seconds(1);
      }
    }
    done = true;
  });

  // Meanwhile, from 127.0.0.1, an authorized GET /v1/hosts and a GET /healthz every 0.5 s.
  std::vector<double> hosts_s, health_s;
  std::vector<std::string> bad;
  while (!done) {
    const absl::Time round = absl::Now();
    for (const bool health : {false, true}) {
      const Reply r =
          Exchange(e.port, health ? Get("/healthz") : Get("/v1/hosts", kReader), "127.0.0.1");
      (health ? health_s : hosts_s).push_back(r.total_s);
      if (r.status != 200 || r.total_s > 2.0 || (!BodyComplete(r) && !r.closed)) {
        bad.push_back(absl::StrCat(health ? "GET /healthz" : "GET /v1/hosts", " at ",
                                   Seconds(round - t0), " s: ", r.Describe()));
      }
    }
    // Pacing of the probes (a rate, not a condition to wait for).
    const absl::Duration rest = round + absl::Milliseconds(500) - absl::Now();
    if (rest > absl::ZeroDuration() && !done) absl::SleepFor(rest);
  }
  loris.join();

  int connected = 0, closed = 0, in_window = 0, with_408 = 0, silent = 0, other_reply = 0;
  std::vector<double> close_times;
  std::vector<std::string> wrong;
  for (int i = 0; i < kSlow; ++i) {
    Slow& s = slow[i];
    if (s.fd < 0) {
      wrong.push_back(absl::StrCat("127.0.0.", 2 + i, ": connect: ", strerror(s.connect_errno)));
      continue;
    }
    connected++;
    close(s.fd);
    if (s.closed_after < 0) {
      wrong.push_back(
          absl::StrCat("127.0.0.", 2 + i, ": still open after 25 s (", s.bytes, " bytes sent)"));
      continue;
    }
    closed++;
    close_times.push_back(s.closed_after);
    if (s.closed_after >= 9.0 && s.closed_after <= 20.0) {
      in_window++;
    } else {
      wrong.push_back(absl::StrCat("127.0.0.", 2 + i, ": closed after ", s.closed_after, " s"));
    }
    if (s.got.empty()) {
      silent++;
    } else if (absl::StartsWith(s.got, "HTTP/1.1 408")) {
      with_408++;
    } else {
      other_reply++;
      wrong.push_back(absl::StrCat("127.0.0.", 2 + i, ": answered ", s.got.substr(0, 200)));
    }
  }
  printf(
      "slowloris: %d connections from 127.0.0.2-127.0.0.%d, %d closed by the server after "
      "min %.2f s, median %.2f s, max %.2f s (408: %d, closed without an answer: %d, other "
      "answers: %d)\n",
      connected, 1 + kSlow, closed, Min(close_times), Median(close_times), Max(close_times),
      with_408, silent, other_reply);
  printf(
      "slowloris: during the attack, %zu authorized GET /v1/hosts answered in median %.1f ms, "
      "max %.1f ms; %zu GET /healthz in median %.1f ms, max %.1f ms (%zu failed or over 2 s)\n",
      hosts_s.size(), 1000 * Median(hosts_s), 1000 * Max(hosts_s), health_s.size(),
      1000 * Median(health_s), 1000 * Max(health_s), bad.size());
  fflush(stdout);
  for (size_t i = 0; i < std::min<size_t>(wrong.size(), 10); ++i) UNSCOPED_INFO(wrong[i]);
  for (size_t i = 0; i < std::min<size_t>(bad.size(), 10); ++i) UNSCOPED_INFO(bad[i]);
  CHECK(connected == kSlow);
  CHECK(closed == connected);
  CHECK(in_window == connected);  // closed by the 10 s deadline, not before 9 s nor after 20 s
  CHECK(other_reply == 0);
  CHECK(with_408 == connected);  // each is told why: 408 at the header deadline
  CHECK(hosts_s.size() >= 10);
  CHECK(health_s.size() >= 10);
  CHECK(bad.empty());
  e.CheckAlive();
}

// ---------------------------------------------------------------------------------------------
// 2. Oversized requests.

TEST_CASE("oversized: a 20 KiB request line is answered 414 and the connection closed") {
  Env& e = E();
  e.MarkOversizedStart();
  const Reply r =
      Exchange(e.port,
               absl::StrCat("GET /v1/hosts?pad=", std::string(20 * kKiB, 'a'),
                            " HTTP/1.1\r\nHost: 127.0.0.1\r\n", Bearer(kReader), "\r\n"),
               "", Opts(absl::Seconds(10), /*until_close=*/true));
  printf("oversized: 20 KiB request line: %d in %.1f ms, closed=%d\n", r.status, 1000 * r.head_s,
         r.closed);
  CheckRefusal(r, 414);
  e.CheckAlive();
}

TEST_CASE("oversized: a 20 KiB header line is answered 431 and the connection closed") {
  Env& e = E();
  e.MarkOversizedStart();
  const Reply r =
      Exchange(e.port,
               absl::StrCat("GET /v1/hosts HTTP/1.1\r\nHost: 127.0.0.1\r\n", Bearer(kReader),
                            "X-Big: ", std::string(20 * kKiB, 'b'), "\r\n\r\n"),
               "", Opts(absl::Seconds(10), /*until_close=*/true));
  printf("oversized: 20 KiB header line: %d in %.1f ms, closed=%d\n", r.status, 1000 * r.head_s,
         r.closed);
  CheckRefusal(r, 431);
  e.CheckAlive();
}

TEST_CASE(
    "oversized: 200 headers of 300 bytes (60 KB, each line within the limit) are answered "
    "431") {
  Env& e = E();
  e.MarkOversizedStart();
  std::string req = absl::StrCat("GET /v1/hosts HTTP/1.1\r\nHost: 127.0.0.1\r\n", Bearer(kReader));
  for (int i = 0; i < 200; ++i) {
    std::string line = absl::StrCat("X-Pad-", i, ": ");
    line += std::string(300 - 2 - line.size(), 'c');
    absl::StrAppend(&req, line, "\r\n");
  }
  req += "\r\n";
  const Reply r = Exchange(e.port, req, "", Opts(absl::Seconds(10), /*until_close=*/true));
  printf("oversized: 200 headers of 300 bytes: %d in %.1f ms, closed=%d\n", r.status,
         1000 * r.head_s, r.closed);
  CheckRefusal(r, 431);
  e.CheckAlive();
}

TEST_CASE("oversized: a 2 MiB Content-Length is answered 413 before the body is sent") {
  Env& e = E();
  e.MarkOversizedStart();
  // The headers only: the answer must come without a byte of the body.
  const Reply r = Exchange(
      e.port,
      absl::StrCat("POST /v1/migrations/check HTTP/1.1\r\nHost: 127.0.0.1\r\n", Bearer(kOp),
                   "Content-Type: application/json\r\nContent-Length: ", 2 * kMiB, "\r\n\r\n"),
      "", Opts(absl::Seconds(10), /*until_close=*/true));
  printf("oversized: Content-Length 2 MiB: %d in %.1f ms without the body, closed=%d\n", r.status,
         1000 * r.head_s, r.closed);
  CheckRefusal(r, 413);
  e.CheckAlive();
}

TEST_CASE("oversized: a chunked body over 1 MiB is answered 413 and the connection closed") {
  Env& e = E();
  e.MarkOversizedStart();
  // 48 chunks of 64 KiB (3 MiB) unless the server answers first.
  const Reply r = Exchange(
      e.port,
      Chunked(absl::StrCat("POST /v1/migrations/check HTTP/1.1\r\nHost: 127.0.0.1\r\n", Bearer(kOp),
                           "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"),
              48, 64 * kKiB),
      "", Opts(absl::Seconds(30), /*until_close=*/true));
  printf("oversized: chunked body: %d after %.1f KiB sent, in %.1f ms, closed=%d\n", r.status,
         r.sent / 1024.0, 1000 * r.head_s, r.closed);
  CheckRefusal(r, 413);
  e.CheckAlive();
}

TEST_CASE(
    "oversized: a 200 MB header line without a token is refused and closed after a "
    "bounded number of bytes") {
  Env& e = E();
  e.MarkOversizedStart();
  // Keep sending until the server closes (EOF, EPIPE or ECONNRESET): what the client managed to
  // send is the server's reading plus the kernel's socket buffers on both sides.
  const Reply r = Exchange(
      e.port,
      Filler("GET /v1/hosts HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: ", 200 * 1000 * 1000, 'h'), "",
      Opts(absl::Seconds(60), /*until_close=*/true,
           /*keep_sending=*/true));
  printf(
      "oversized: 200 MB header line: %d in %.1f ms; the client sent %.1f KiB (%.2f MiB) "
      "before the server closed (send: %s) after %.2f s\n",
      r.status, 1000 * r.head_s, r.sent / 1024.0, r.sent / 1048576.0,
      r.send_errno ? strerror(r.send_errno) : "no error", r.total_s);
  INFO(r.Describe());
  CHECK(r.status == 431);  // a header line, not the request line
  CHECK(r.ConnectionClose());
  CHECK(r.closed);
  CHECK_FALSE(r.timed_out);
  CHECK(r.sent < 64 * kMiB);
  e.CheckAlive();
}

TEST_CASE(
    "oversized: a 300 MB chunked live-migration with a wrong token is answered 401 before "
    "the body is read") {
  Env& e = E();
  e.MarkOversizedStart();
  const Reply r =
      Exchange(e.port,
               absl::StrCat("POST /v1/instances/", kUuid,
                            "/live-migration HTTP/1.1\r\nHost: 127.0.0.1\r\n", Bearer(kWrong),
                            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"),
               "", Opts(absl::Seconds(10), /*until_close=*/true));
  printf(
      "oversized: wrong token + 300 MB chunked body (headers only sent): %d in %.1f ms, "
      "closed=%d\n",
      r.status, 1000 * r.head_s, r.closed);
  CheckRefusal(r, 401);
  e.CheckAlive();
}

TEST_CASE(
    "oversized: a 300 MB Content-Length without a token is answered 401 before the body is "
    "read") {
  Env& e = E();
  e.MarkOversizedStart();
  const Reply r = Exchange(e.port,
                           absl::StrCat("POST /v1/migrations/check HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                        "Content-Type: application/json\r\nContent-Length: ",
                                        300 * 1000 * 1000, "\r\n\r\n"),
                           "", Opts(absl::Seconds(10), /*until_close=*/true));
  printf(
      "oversized: no token + Content-Length 300 MB (headers only sent): %d in %.1f ms, "
      "closed=%d\n",
      r.status, 1000 * r.head_s, r.closed);
  CheckRefusal(r, 401);
  e.CheckAlive();
}

TEST_CASE("oversized: the scheduler's RSS grew by less than 300 MB over the oversized requests") {
  Env& e = E();
  e.MarkOversizedStart();
  const long after = RssKb(e.sched->pid());
  printf("oversized: scheduler RSS before %ld KiB, after %ld KiB (%+.1f MiB)\n",
         e.rss_before_oversized_kb, after, (after - e.rss_before_oversized_kb) / 1024.0);
  fflush(stdout);
  REQUIRE(e.rss_before_oversized_kb > 0);
  REQUIRE(after > 0);
  CHECK(after - e.rss_before_oversized_kb < 300 * 1024);
  // And it still answers.
  CHECK(Exchange(e.port, Get("/v1/hosts", kReader)).status == 200);
  e.CheckAlive();
}

// ---------------------------------------------------------------------------------------------
// 3. 1,000 concurrent requests.

TEST_CASE(
    "1,000 concurrent authorized requests: at least 90% answered 200, the rest 503 with "
    "Retry-After, none hanging") {
  Env& e = E();
  constexpr int kConns = 1000;
  rlimit rl{};
  REQUIRE(getrlimit(RLIMIT_NOFILE, &rl) == 0);
  if (rl.rlim_cur < 4096) {
    rl.rlim_cur = std::min<rlim_t>(4096, rl.rlim_max);
    REQUIRE(setrlimit(RLIMIT_NOFILE, &rl) == 0);
  }
  REQUIRE(rl.rlim_cur >= kConns + 100);

  enum State { kConnecting, kSending, kReading, kDone };
  struct Conn {
    int fd = -1;
    State state = kConnecting;
    size_t pos = 0;
    std::string raw;
    Reply r;
    int err = 0;
    absl::Time start, end;
  };
  const std::string req = Get("/v1/hosts", kReader);
  std::vector<Conn> c(kConns);
  const absl::Time t0 = absl::Now();
  // 4 connections from each of 127.0.1.1 .. 127.0.1.250: the per-client cap (64) is not the
  // limit; the total caps are.
  for (int i = 0; i < kConns; ++i) {
    c[i].start = absl::Now();
    const int fd = Connect(e.port, absl::StrCat("127.0.1.", 1 + i / 4), /*nonblocking=*/true);
    if (fd < 0) {
      c[i].err = -fd;
      c[i].state = kDone;
      c[i].end = absl::Now();
      continue;
    }
    c[i].fd = fd;
  }
  const absl::Time deadline = t0 + absl::Seconds(60);
  std::vector<pollfd> fds;
  std::vector<int> idx;
  char buf[16384];
  for (;;) {
    fds.clear();
    idx.clear();
    for (int i = 0; i < kConns; ++i) {
      if (c[i].state == kDone) continue;
      fds.push_back({c[i].fd, static_cast<short>(c[i].state == kReading ? POLLIN : POLLOUT), 0});
      idx.push_back(i);
    }
    if (fds.empty() || absl::Now() >= deadline) break;
    if (poll(fds.data(), fds.size(), 100) <= 0) continue;
    for (size_t k = 0; k < fds.size(); ++k) {
      if (!fds[k].revents) continue;
      Conn& x = c[idx[k]];
      auto finish = [&](int err) {
        x.err = err;
        x.state = kDone;
        x.end = absl::Now();
        close(x.fd);
        x.fd = -1;
      };
      if (x.state == kConnecting) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(x.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          finish(err);
          continue;
        }
        x.state = kSending;
      }
      if (x.state == kSending) {
        const ssize_t w = send(x.fd, req.data() + x.pos, req.size() - x.pos, MSG_NOSIGNAL);
        if (w > 0) x.pos += w;
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
          finish(errno);
          continue;
        }
        if (x.pos == req.size()) x.state = kReading;
        continue;
      }
      const ssize_t got = recv(x.fd, buf, sizeof buf, 0);
      if (got > 0) {
        x.raw.append(buf, got);
        if (x.r.status == 0) {
          ParseHead(x.raw, &x.r);
        } else {
          x.r.body = x.raw.substr(x.r.head.size() + 4);
        }
        if (x.r.status != 0 && BodyComplete(x.r)) finish(0);
      } else if (got == 0) {
        x.r.closed = true;
        finish(0);
      } else if (errno != EAGAIN && errno != EINTR) {
        finish(x.r.status != 0 ? 0 : errno);
      }
    }
  }
  int ok = 0, busy = 0, busy_no_retry = 0, hanging = 0, errors = 0;
  std::map<int, int> others;
  std::vector<double> ok_s;
  absl::Time last = t0;
  std::string example;
  for (Conn& x : c) {
    if (x.state != kDone) {
      hanging++;
      close(x.fd);
      continue;
    }
    last = std::max(last, x.end);
    if (x.r.status == 200) {
      ok++;
      ok_s.push_back(Seconds(x.end - x.start));
    } else if (x.r.status == 503) {
      (x.r.RetryAfter() && x.r.ConnectionClose() ? busy : busy_no_retry)++;
    } else if (x.r.status != 0) {
      others[x.r.status]++;
      if (example.empty()) example = x.r.head;
    } else {
      errors++;
      if (example.empty()) example = absl::StrCat("no answer: ", strerror(x.err));
    }
  }
  std::string other_text;
  for (auto [s, n] : others) absl::StrAppend(&other_text, " ", s, ":", n);
  printf(
      "concurrent: %d connections from 250 addresses: 200: %d, 503 with Retry-After: %d, 503 "
      "without: %d, other statuses:%s, no answer: %d, hanging after 60 s: %d; all done in "
      "%.2f s (the 200s: median %.0f ms, max %.0f ms)\n",
      kConns, ok, busy, busy_no_retry, other_text.empty() ? " none" : other_text.c_str(), errors,
      hanging, Seconds(last - t0), 1000 * Median(ok_s), 1000 * Max(ok_s));
  fflush(stdout);
  INFO(example);
  CHECK(hanging == 0);
  CHECK(ok >= kConns * 9 / 10);
  CHECK(ok + busy == kConns);
  e.CheckAlive();
}

// ---------------------------------------------------------------------------------------------
// 4. The per-client cap.

TEST_CASE(
    "per-client cap: of 70 idle connections from one address the 6 beyond 64 get 503 with "
    "Retry-After at once") {
  Env& e = E();
  constexpr int kIdle = 70, kCap = 64;
  const std::string src = "127.0.0.9";
  struct Idle {
    int fd = -1;
    absl::Time start;
    std::string raw;
    Reply r;
    bool closed = false;
    double answered_s = -1;
  };
  std::vector<Idle> idle(kIdle);
  for (int i = 0; i < kIdle; ++i) {
    idle[i].start = absl::Now();
    idle[i].fd = Connect(e.port, src);
    INFO("connection " << i << ": " << strerror(-idle[i].fd));
    REQUIRE(idle[i].fd >= 0);
    SetNonBlocking(idle[i].fd);
  }
  auto read_all = [&](int timeout_ms) {
    std::vector<pollfd> fds;
    std::vector<int> idx;
    for (int i = 0; i < kIdle; ++i) {
      if (idle[i].closed) continue;
      fds.push_back({idle[i].fd, POLLIN, 0});
      idx.push_back(i);
    }
    if (fds.empty() || poll(fds.data(), fds.size(), timeout_ms) <= 0) return;
    for (size_t k = 0; k < fds.size(); ++k) {
      if (!fds[k].revents) continue;
      Idle& x = idle[idx[k]];
      char buf[4096];
      const ssize_t got = recv(x.fd, buf, sizeof buf, 0);
      if (got > 0) {
        x.raw.append(buf, got);
        if (x.r.status == 0 && ParseHead(x.raw, &x.r)) {
          x.answered_s = Seconds(absl::Now() - x.start);
        }
      } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
        x.closed = true;
      }
    }
  };
  auto refused = [&] {
    int n = 0;
    for (const Idle& x : idle) n += x.r.status != 0 && x.closed;
    return n;
  };
  // Wait (up to 10 s: the idle ones' header deadline) for the refusals to arrive and close.
  const absl::Time deadline = absl::Now() + absl::Seconds(9);
  while (refused() < kIdle - kCap && absl::Now() < deadline) read_all(100);
  // Another address is served meanwhile; then whatever else the 70 got has had time to arrive.
  const Reply other = Exchange(e.port, Get("/v1/hosts", kReader), "127.0.0.10");
  read_all(0);

  int busy = 0, silent = 0;
  std::vector<double> times;
  std::string which;
  for (int i = 0; i < kIdle; ++i) {
    const Idle& x = idle[i];
    if (x.r.status == 503 && x.r.RetryAfter() && x.r.ConnectionClose() && x.closed) {
      busy++;
      times.push_back(x.answered_s);
      absl::StrAppend(&which, which.empty() ? "" : ",", i + 1);
    } else if (x.raw.empty() && !x.closed) {
      silent++;
    } else {
      UNSCOPED_INFO("connection " << i + 1 << ": closed=" << x.closed << " got: " << x.raw);
    }
  }
  printf(
      "per-client: %d idle connections from %s: %d refused with 503 + Retry-After (connections "
      "%s) in max %.1f ms, %d open and waiting; another address answered %d in %.1f ms\n",
      kIdle, src.c_str(), busy, which.c_str(), 1000 * Max(times), silent, other.status,
      1000 * other.total_s);
  fflush(stdout);
  CHECK(busy == kIdle - kCap);
  CHECK(silent == kCap);
  CHECK(Max(times) <= 2.0);
  INFO(other.Describe());
  CHECK(other.status == 200);
  for (Idle& x : idle) close(x.fd);
  // Closing them frees the address's connections: a request from it is served again.
  Reply again;
  const bool served = testing::WaitFor(
      [&] {
        again = Exchange(e.port, Get("/v1/hosts", kReader), src);
        return again.status == 200;
      },
      absl::Seconds(10));
  INFO(again.Describe());
  CHECK(served);
  e.CheckAlive();
}

// ---------------------------------------------------------------------------------------------
// 5. TLS.

int HandshakeLines(const std::string& log, std::string* lines = nullptr) {
  std::ifstream in(log);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    if (absl::StrContains(absl::AsciiStrToLower(line), "handshake")) {
      n++;
      if (lines) absl::StrAppend(lines, line, "\n");
    }
  }
  return n;
}

TEST_CASE(
    "TLS: plaintext is closed without a 200, the cluster CA's client gets 200, another CA's "
    "client fails the handshake, one log line per refusal") {
  Env& e = E();
  const std::string pki = e.dir + "/api-pki", rogue = e.dir + "/rogue-pki";
  const std::string sh = testing::RunfilePath("deploy/pki.sh");
  REQUIRE(testing::RunCommand(absl::StrCat(sh, " init ", pki)).ok());
  REQUIRE(testing::RunCommand(absl::StrCat(sh, " init ", rogue)).ok());
  // The API server certificate (SAN DNS:localhost, IP:127.0.0.1, serverAuth only).
  REQUIRE(testing::RunCommand(absl::StrCat(sh, " issue-server ", pki, " api")).ok());
  const std::string ca = pki + "/ca.pem";
  const int tls_port = testing::FreePort();
  auto tls = e.StartScheduler(
      "tls", tls_port,
      absl::StrCat("--api-tls-cert ", pki, "/api.pem --api-tls-key ", pki, "/api.key"),
      [&] { return TlsExchange(tls_port, ca, Get("/healthz"), absl::Seconds(2)).r.status == 200; });
  const std::string log = e.dir + "/tls.log";

  const TlsReply health = TlsExchange(tls_port, ca, Get("/healthz"));
  const TlsReply hosts = TlsExchange(tls_port, ca, Get("/v1/hosts", kReader));
  printf(
      "tls: with the CA: GET /healthz %d in %.1f ms, GET /v1/hosts %d in %.1f ms (handshake "
      "included)\n",
      health.r.status, 1000 * health.r.head_s, hosts.r.status, 1000 * hosts.r.head_s);
  {
    INFO(health.error << "\n" << health.r.Describe());
    CHECK(health.handshake);
    CHECK(health.r.status == 200);
    INFO(hosts.error << "\n" << hosts.r.Describe());
    CHECK(hosts.r.status == 200);
  }

  const int before = HandshakeLines(log);
  constexpr int kPlain = 3, kRogue = 2;
  for (int i = 0; i < kPlain; ++i) {
    const Reply r =
        Exchange(tls_port, Get("/healthz"), "", Opts(absl::Seconds(15), /*until_close=*/true));
    printf("tls: plaintext GET /healthz: %s after %.1f ms (%llu bytes back)\n",
           r.status > 0 ? r.StatusLine().c_str() : "closed without an HTTP answer",
           1000 * r.total_s, static_cast<unsigned long long>(r.received));
    INFO(r.Describe());
    CHECK(r.status != 200);
    CHECK(r.closed);
    CHECK_FALSE(r.timed_out);
  }
  for (int i = 0; i < kRogue; ++i) {
    const TlsReply t = TlsExchange(tls_port, rogue + "/ca.pem", Get("/healthz"));
    printf("tls: a client trusting another CA: handshake %s, verify result %ld (%s): %s\n",
           t.handshake ? "succeeded" : "failed", t.verify, X509_verify_cert_error_string(t.verify),
           t.error.c_str());
    INFO(t.error << "\n" << t.r.Describe());
    CHECK_FALSE(t.handshake);
    CHECK(t.verify != X509_V_OK);
    CHECK(t.r.status == 0);
  }
  // One log line per refused connection: wait for them, then (after one more good request, so
  // the server has moved on) check there are no more.
  const int refusals = kPlain + kRogue;
  testing::WaitFor([&] { return HandshakeLines(log) - before >= refusals; }, absl::Seconds(15));
  const TlsReply barrier = TlsExchange(tls_port, ca, Get("/healthz"));
  CHECK(barrier.r.status == 200);
  std::string lines;
  const int logged = HandshakeLines(log, &lines) - before;
  printf("tls: %d refused connections, %d log lines mentioning the handshake:\n%s", refusals,
         logged, lines.c_str());
  fflush(stdout);
  INFO(tls->LogTail(40));
  CHECK(logged == refusals);
  CHECK(tls->Running());
  tls->Stop(absl::Seconds(10));
  e.CheckAlive();
}

// ---------------------------------------------------------------------------------------------

TEST_CASE("after every attack: the scheduler still answers and its RSS grew by less than 300 MB") {
  Env& e = E();
  const Reply health = Exchange(e.port, Get("/healthz"));
  const Reply hosts = Exchange(e.port, Get("/v1/hosts", kReader));
  const long now = RssKb(e.sched->pid());
  printf(
      "attack: scheduler RSS at start %ld KiB, after every attack %ld KiB (%+.1f MiB); "
      "GET /healthz %d, GET /v1/hosts %d\n",
      e.rss_start_kb, now, (now - e.rss_start_kb) / 1024.0, health.status, hosts.status);
  fflush(stdout);
  CHECK(health.status == 200);
  CHECK(hosts.status == 200);
  REQUIRE(e.rss_start_kb > 0);
  REQUIRE(now > 0);
  CHECK(now - e.rss_start_kb < 300 * 1024);
  e.CheckAlive();
}

TEST_CASE(
    "TLS: the gRPC API on TCP takes the server certificate; cloudctl --ca works, cloudctl without "
    "it is refused; a network address without a certificate is refused at start-up") {
  Env& e = E();
  const std::string pki = e.dir + "/grpc-pki";
  const std::string sh = testing::RunfilePath("deploy/pki.sh");
  REQUIRE(testing::RunCommand(absl::StrCat(sh, " init ", pki)).ok());
  REQUIRE(testing::RunCommand(absl::StrCat(sh, " issue-server ", pki, " api")).ok());
  const std::string cloudctl = testing::RunfilePath("cloudctl/cloudctl");
  const int grpc_port = testing::FreePort();
  const std::string tcp = absl::StrCat("127.0.0.1:", grpc_port);
  auto ctl = [&](const std::string& args) {
    return testing::RunCommand(absl::StrCat(cloudctl, " --server ", tcp, " --token ", kReader,
                                            " --timeout 10 ", args, " host-list"));
  };
  // Started with its gRPC API on TCP with TLS (the HTTP listener as in the other cases).
  auto sched = std::make_unique<testing::ChildProcess>(
      absl::StrCat(testing::RunfilePath("scheduler/scheduler"), " --db '", e.db, "' --listen ", tcp,
                   " --registry-listen unix:", e.dir,
                   "/grpc-reg.sock --insecure-plaintext --tokens-file ", e.dir,
                   "/tokens --scheduler-id grpc-tls --api-tls-cert ", pki,
                   "/api.pem --api-tls-key ", pki, "/api.key"),
      e.dir + "/grpc-tls.log");
  const bool up = testing::WaitFor(
      [&] { return !sched->Running() || ctl(absl::StrCat("--ca ", pki, "/ca.pem")).ok(); },
      absl::Seconds(60));
  INFO(sched->LogTail(30));
  REQUIRE(up);
  REQUIRE(sched->Running());
  auto with_ca = ctl(absl::StrCat("--ca ", pki, "/ca.pem"));
  INFO(with_ca.status().ToString());
  CHECK(with_ca.ok());
  // Plaintext to the TLS listener: refused, and the message says TLS.
  auto without = ctl("");
  REQUIRE_FALSE(without.ok());
  printf("tls: cloudctl without --ca: %s\n", std::string(without.status().message()).c_str());
  CHECK(absl::StrContains(without.status().message(), "TLS"));
  sched->Stop(absl::Seconds(10));

  // No certificate on a network address: the scheduler refuses to start (before it binds), and
  // says what to pass. 10.250.0.99 is never bound: the check comes first.
  for (const std::string& flags :
       {std::string("--listen 10.250.0.99:7001"),
        absl::StrCat("--listen unix:", e.dir, "/x-api.sock --http-listen 10.250.0.99:7002")}) {
    auto refused = testing::RunCommand(
        absl::StrCat(testing::RunfilePath("scheduler/scheduler"), " --db '", e.db, "' ", flags,
                     " --registry-listen unix:", e.dir,
                     "/x-reg.sock --insecure-plaintext --tokens-file ", e.dir, "/tokens"));
    INFO(flags);
    REQUIRE_FALSE(refused.ok());
    CHECK(absl::StrContains(refused.status().message(), "--api-tls-cert"));
  }
  e.CheckAlive();
}

}  // namespace
}  // namespace livemig::attack
