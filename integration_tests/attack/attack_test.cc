// Attacks on the scheduler's HTTP listener, against the real binary (PostgreSQL; no compute
// agents). The listener speaks TLS, as every API listener on TCP must: the scheduler runs with
// --api-tls-cert/--api-tls-key (a certificate from deploy/pki.sh), and every client here is a raw
// POSIX socket with OpenSSL on top, non-blocking, so that the bytes inside TLS are exactly the
// ones each case sends and thousands of handshakes run at once in one poll loop. The scheduler
// runs with the HTTP server's default bounds:
//
//  1. slowloris: 200 connections from 127.0.0.2..127.0.0.201 complete the handshake and then
//     trickle one header byte a second; each is closed by the server at its 10 s header deadline
//     with a 408, and 8 more from 127.0.2.1..8 that stop inside the handshake (half a
//     ClientHello) are closed at the same deadline and logged as "no handshake in time", while
//     authorized GET /v1/hosts and GET /healthz from 127.0.0.1 keep answering 200 within 2 s;
//  2. oversized: a 20 KiB request line (414), a 20 KiB header line (431), 60 KB of headers
//     (431), a 2 MiB Content-Length (413 before the body is sent), a chunked body over 1 MiB
//     (413, closed), a 200 MB header line (refused and closed after a bounded number of bytes), a
//     300 MB body with a wrong or no token (401 before the body is read); the scheduler's RSS grows
//     by less than 300 MB;
//  3. 1,000 concurrent authorized requests from 250 addresses: >= 90% 200, the rest 503 with
//     Retry-After (after a handshake), none hanging;
//  4. the per-client cap: of 70 idle connections (handshake done) from one address, the 6 beyond
//     64 get 503 with Retry-After at once, other addresses are served, and the cap is released on
//     close;
//  5. TLS itself: plaintext is closed without a 200, a client trusting the CA gets 200, a client
//     trusting another CA fails the handshake with a verify error, and the log has one line per
//     refused handshake.
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
#include <iterator>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
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

// CPU seconds (user + system) used so far by process `pid`, from /proc/<pid>/stat; -1 if
// unreadable.
double CpuSeconds(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t paren = stat.rfind(')');  // the command name may hold spaces
  if (paren == std::string::npos) return -1;
  std::vector<std::string> f = absl::StrSplit(stat.substr(paren + 2), ' ');
  long utime = 0, stime = 0;  // fields 14 and 15 of the line, 12 and 13 after the name
  if (f.size() < 13 || !absl::SimpleAtoi(f[11], &utime) || !absl::SimpleAtoi(f[12], &stime)) {
    return -1;
  }
  return static_cast<double>(utime + stime) / sysconf(_SC_CLK_TCK);
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
// Client connections: non-blocking TCP, TLS on top (OpenSSL).

std::string OpenSslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    absl::StrAppend(&out, out.empty() ? "" : "; ", buf);
  }
  return out;
}

using SslCtx = std::unique_ptr<SSL_CTX, decltype(&SSL_CTX_free)>;

// A client context trusting only `ca_file`, requiring the server's certificate to name IP
// 127.0.0.1; null (and `error`) if the CA cannot be loaded. Writes may be partial and retried
// from a moved buffer, so a non-blocking writer can go on from where the last write stopped.
SslCtx ClientContext(const std::string& ca_file, std::string* error) {
  ERR_clear_error();
  SslCtx ctx(SSL_CTX_new(TLS_client_method()), SSL_CTX_free);
  if (!ctx || SSL_CTX_load_verify_locations(ctx.get(), ca_file.c_str(), nullptr) != 1) {
    *error = absl::StrCat("CA ", ca_file, ": ", OpenSslErrors());
    return SslCtx(nullptr, SSL_CTX_free);
  }
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  X509_VERIFY_PARAM_set1_ip_asc(SSL_CTX_get0_param(ctx.get()), "127.0.0.1");
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  return ctx;
}

// Where a client connects: 127.0.0.1:port, with TLS trusting `tls`'s CA (null: plaintext, to
// show the TLS listener refusing it).
struct Endpoint {
  int port = 0;
  SSL_CTX* tls = nullptr;
};

// One client connection. Every call returns at once: Handshake (the TCP connect, then the TLS
// handshake) until it is ready, then Send and Recv; after kAgain or 0, poll for Events(). Errors
// are kept in the public fields.
class Wire {
 public:
  enum Step { kAgain, kReady, kFailed };

  Wire() = default;
  Wire(const Wire&) = delete;
  Wire& operator=(const Wire&) = delete;
  ~Wire() { Close(); }

  // Starts a connect to `to` from `source` ("": any). Any 127/8 address is local on Linux; the
  // port is picked at connect time so that many sockets can share a source address. false:
  // connect_errno says why.
  bool Open(const Endpoint& to, const std::string& source) {
    Close();
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd_ < 0) return Failed(errno);
    int one = 1;
    setsockopt(fd_, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (!source.empty()) {
      sockaddr_in a{};
      a.sin_family = AF_INET;
      if (inet_pton(AF_INET, source.c_str(), &a.sin_addr) != 1) return Failed(EINVAL);
      if (bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return Failed(errno);
    }
    sockaddr_in d{};
    d.sin_family = AF_INET;
    d.sin_port = htons(to.port);
    inet_pton(AF_INET, "127.0.0.1", &d.sin_addr);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&d), sizeof d) == 0) {
      connecting_ = false;
    } else if (errno == EINPROGRESS) {
      connecting_ = true;
    } else {
      return Failed(errno);
    }
    if (to.tls != nullptr) {
      ERR_clear_error();
      ssl_ = SSL_new(to.tls);
      if (ssl_ == nullptr || SSL_set_fd(ssl_, fd_) != 1) {
        tls_error = OpenSslErrors();
        return Failed(ENOMEM);
      }
      SSL_set_connect_state(ssl_);
    }
    return true;
  }

  // Drives the connect and the TLS handshake (plaintext: ready once connected).
  Step Handshake() {
    if (ready_) return kReady;
    if (fd_ < 0) return kFailed;
    if (connecting_) {
      pollfd p{fd_, POLLOUT, 0};
      if (poll(&p, 1, 0) <= 0) {
        hwant_ = POLLOUT;
        return kAgain;
      }
      int err = 0;
      socklen_t len = sizeof err;
      getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        connect_errno = err;
        return kFailed;
      }
      connecting_ = false;
    }
    if (ssl_ == nullptr) {
      ready_ = true;
      return kReady;
    }
    ERR_clear_error();
    errno = 0;
    const int r = SSL_do_handshake(ssl_);
    if (r == 1) {
      ready_ = handshake = true;
      verify = SSL_get_verify_result(ssl_);
      return kReady;
    }
    const int e = SSL_get_error(ssl_, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      hwant_ = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
      return kAgain;
    }
    verify = SSL_get_verify_result(ssl_);
    tls_error = OpenSslErrors();
    if (e == SSL_ERROR_SYSCALL) {
      recv_errno = errno;
      reset = errno == ECONNRESET;
      absl::StrAppend(&tls_error, tls_error.empty() ? "" : "; ",
                      "handshake: ", errno ? strerror(errno) : "EOF");
    }
    return kFailed;
  }

  // Sends up to n bytes: how many were taken (> 0), 0 (would block: poll), or -1 (the
  // connection cannot send any more: send_errno). TLS: after 0, the next call must start with
  // the same bytes (SSL_write's retry rule; the buffer may move).
  long Send(const char* p, size_t n) {
    if (ssl_ == nullptr) {
      const ssize_t s = send(fd_, p, n, MSG_NOSIGNAL);
      if (s >= 0) return s;
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        wwant_ = POLLOUT;
        return 0;
      }
      send_errno = errno;
      return -1;
    }
    ERR_clear_error();
    errno = 0;
    const int w = SSL_write(ssl_, p, static_cast<int>(std::min<size_t>(n, 1 << 30)));
    if (w > 0) return w;
    const int e = SSL_get_error(ssl_, w);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      wwant_ = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
      return 0;
    }
    send_errno = e == SSL_ERROR_SYSCALL && errno != 0 ? errno : EPIPE;
    if (e == SSL_ERROR_SSL) tls_error = OpenSslErrors();
    return -1;
  }

  // Reads up to n bytes: how many (> 0), 0 (nothing yet: poll), or -1 when the server closed:
  // its close_notify (SSL_ERROR_ZERO_RETURN), EOF or a reset (SSL_ERROR_SYSCALL), or a TLS error.
  long Recv(char* p, size_t n) {
    if (ssl_ == nullptr) {
      const ssize_t got = recv(fd_, p, n, 0);
      if (got > 0) return got;
      if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        rwant_ = POLLIN;
        return 0;
      }
      if (got < 0) {
        recv_errno = errno;
        reset = errno == ECONNRESET;
      }
      return -1;
    }
    ERR_clear_error();
    errno = 0;
    const int got = SSL_read(ssl_, p, static_cast<int>(std::min<size_t>(n, 1 << 30)));
    if (got > 0) return got;
    const int e = SSL_get_error(ssl_, got);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      rwant_ = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
      return 0;
    }
    if (e == SSL_ERROR_SYSCALL) {
      recv_errno = errno;
      reset = errno == ECONNRESET;
    } else if (e == SSL_ERROR_SSL) {
      tls_error = OpenSslErrors();  // e.g. "unexpected eof while reading": EOF, no close_notify
    }
    return -1;
  }

  // What to poll for: the handshake's need until it is ready, then the last reads' and writes'.
  short Events(bool reading, bool writing) const {
    if (!ready_) return hwant_;
    return static_cast<short>((reading ? rwant_ : 0) | (writing ? wwant_ : 0));
  }
  bool ready() const { return ready_; }
  int fd() const { return fd_; }

  // Closes the socket (no close_notify: the clients here just go).
  void Close() {
    if (ssl_ != nullptr) SSL_free(ssl_);
    ssl_ = nullptr;
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  bool handshake = false;  // the TLS handshake completed
  long verify = X509_V_OK;
  std::string tls_error;
  int connect_errno = 0, send_errno = 0, recv_errno = 0;
  bool reset = false;

 private:
  bool Failed(int e) {
    connect_errno = e;
    Close();
    return false;
  }

  int fd_ = -1;
  SSL* ssl_ = nullptr;
  bool connecting_ = false, ready_ = false;
  short hwant_ = POLLOUT, rwant_ = POLLIN, wwant_ = POLLOUT;
};

// Reads everything that has arrived (until the read would block: OpenSSL can hold decrypted
// bytes that poll no longer shows), appending to `raw` while it is under 1 MiB and counting into
// `received`. false: the server closed.
bool ReadAvailable(Wire& w, std::string* raw, uint64_t* received = nullptr) {
  thread_local std::vector<char> buf(64 * kKiB);
  for (;;) {
    const long got = w.Recv(buf.data(), buf.size());
    if (got == 0) return true;
    if (got < 0) return false;
    if (received) *received += got;
    if (raw->size() < kMiB) raw->append(buf.data(), got);
  }
}

// Sends the front of `out` until it is empty or the write would block; erases what was taken and
// adds it to `sent`. false: the connection cannot send any more.
bool Flush(Wire& w, std::string* out, uint64_t* sent) {
  while (!out->empty()) {
    const long n = w.Send(out->data(), out->size());
    if (n < 0) return false;
    if (n == 0) return true;
    out->erase(0, n);
    *sent += n;
  }
  return true;
}

// The first half of a ClientHello from `ctx` (the record header promises more than follows), for
// a client that stops inside the handshake.
std::string HalfClientHello(SSL_CTX* ctx) {
  SSL* s = SSL_new(ctx);
  if (s == nullptr) return "";
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  SSL_set_bio(s, in, out);  // owned by `s` from here
  SSL_set_connect_state(s);
  SSL_do_handshake(s);  // writes the ClientHello to `out`, then wants to read
  char* data = nullptr;
  const long n = BIO_get_mem_data(out, &data);
  std::string hello(data, n > 0 ? n : 0);
  SSL_free(s);
  ERR_clear_error();
  return hello.substr(0, hello.size() / 2);
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 over those connections.

// What came back on a connection.
struct Reply {
  int status = 0;  // 0: no status line and headers yet; -1: not HTTP
  std::string head;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  bool closed = false;     // the server closed the connection (or it failed before a request)
  bool reset = false;      // ... with a reset
  bool timed_out = false;  // the deadline passed first
  bool handshake = false;  // the TLS handshake completed
  long verify = X509_V_OK;
  std::string tls_error;
  int connect_errno = 0, send_errno = 0, recv_errno = 0;
  uint64_t sent = 0;          // request bytes taken (TLS: inside records written to the socket)
  uint64_t sent_at_head = 0;  // ... when the reply's headers had come
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
        " timed_out=", timed_out, " handshake=", handshake, " verify=", verify, " tls_error=[",
        tls_error, "] connect_errno=", connect_errno, " send_errno=", send_errno, " (",
        send_errno ? strerror(send_errno) : "", ") recv_errno=", recv_errno, " sent=", sent,
        " received=", received, " head_s=", head_s, " total_s=", total_s, "\n", head);
  }
  void TakeErrors(const Wire& w) {
    handshake = w.handshake;
    verify = w.verify;
    tls_error = w.tls_error;
    connect_errno = w.connect_errno;
    send_errno = w.send_errno;
    recv_errno = w.recv_errno;
    reset = w.reset;
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

// Drives `w` (opened at `start`) through its handshake, then sends what `next` produces while
// reading the reply: reading while sending catches a reply the server sends before the request
// ends, before a reset can discard it.
Reply Talk(Wire& w, const Producer& next, const TalkOptions& o, absl::Time start) {
  Reply r;
  const absl::Time deadline = absl::Now() + o.timeout;
  std::string out, raw;
  size_t pos = 0;
  bool sending = true;
  bool have_head = false;
  for (;;) {
    if (w.ready() && sending && pos == out.size()) {
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
    pollfd p{w.fd(), w.Events(/*reading=*/true, sending), 0};
    const int n = poll(&p, 1,
                       static_cast<int>(std::max<int64_t>(
                           1, std::min<int64_t>(absl::ToInt64Milliseconds(left), 1000))));
    if (n <= 0) continue;
    if (!w.ready()) {
      // The connection ends here if the connect or the handshake fails.
      if (w.Handshake() == Wire::kFailed) r.closed = true;
      continue;
    }
    if (!ReadAvailable(w, &raw, &r.received)) r.closed = true;
    while (sending && !r.closed && pos < out.size()) {
      const long s = w.Send(out.data() + pos, out.size() - pos);
      if (s <= 0) {
        // -1 (EPIPE, ECONNRESET: the server closed): what it answered can still be read.
        if (s < 0) sending = false;
        break;
      }
      pos += s;
      r.sent += s;
    }
    if (!have_head && ParseHead(raw, &r)) {
      have_head = true;
      r.head_s = Seconds(absl::Now() - start);
      r.sent_at_head = r.sent;
      if (!o.keep_sending) sending = false;
    } else if (have_head) {
      r.body = raw.substr(r.head.size() + 4);
    }
  }
  r.TakeErrors(w);
  r.total_s = Seconds(absl::Now() - start);
  return r;
}

// One exchange on a new connection to `to` from `source`.
Reply Exchange(const Endpoint& to, const Producer& next, const std::string& source = "",
               const TalkOptions& o = {}) {
  const absl::Time start = absl::Now();
  Wire w;
  if (!w.Open(to, source)) {
    Reply r;
    r.TakeErrors(w);
    r.closed = true;
    r.total_s = Seconds(absl::Now() - start);
    return r;
  }
  return Talk(w, next, o, start);
}
Reply Exchange(const Endpoint& to, const std::string& bytes, const std::string& source = "",
               const TalkOptions& o = {}) {
  return Exchange(to, Once(bytes), source, o);
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
  CHECK(r.handshake);
  CHECK(r.status == status);
  CHECK(r.ConnectionClose());
  CHECK(r.closed);
  CHECK_FALSE(r.timed_out);
}

// The scheduler log's lines about refused TLS handshakes (appended to `lines`).
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

// ---------------------------------------------------------------------------------------------
// The environment: PostgreSQL and one scheduler with the HTTP server's defaults and TLS, started
// once.

struct Env {
  std::string dir;
  std::unique_ptr<testing::PgServer> pg;
  std::string db;
  int port = 0;
  std::string pki;                    // deploy/pki.sh's directory: ca.pem, api.pem, api.key
  SslCtx tls{nullptr, SSL_CTX_free};  // clients trusting pki's CA
  Endpoint api;                       // the scheduler's HTTP listener, over TLS
  std::unique_ptr<testing::ChildProcess> sched;
  std::string log;
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
    // The API server certificate (SAN DNS:localhost, IP:127.0.0.1, serverAuth only).
    pki = dir + "/api-pki";
    const std::string sh = testing::RunfilePath("deploy/pki.sh");
    REQUIRE(testing::RunCommand(absl::StrCat(sh, " init ", pki)).ok());
    REQUIRE(testing::RunCommand(absl::StrCat(sh, " issue-server ", pki, " api")).ok());
    std::string error;
    tls = ClientContext(pki + "/ca.pem", &error);
    INFO(error);
    REQUIRE(tls);
    port = testing::FreePort();
    api = Endpoint{port, tls.get()};
    sched = StartScheduler(
        "attack", port,
        absl::StrCat("--api-tls-cert ", pki, "/api.pem --api-tls-key ", pki, "/api.key"), [this] {
          return Exchange(api, Get("/healthz"), "", Opts(absl::Seconds(2))).status == 200;
        });
    log = sched->log();
    rss_start_kb = RssKb(sched->pid());
    printf("attack: scheduler pid %d on 127.0.0.1:%d (TLS), RSS at start %ld KiB\n", sched->pid(),
           port, rss_start_kb);
    fflush(stdout);
  }
  ~Env() {
    if (sched) sched->Stop(absl::Seconds(10));
    sched.reset();
    pg.reset();
    testing::RunCommand("rm -rf " + dir).IgnoreError();
  }

  // A scheduler on this database, no agents (plaintext registry on a unix socket), the HTTP
  // server on 127.0.0.1:http_port; waits until `up` (or the process exits).
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
    "slowloris: 200 addresses trickling headers and 8 stalling in the handshake are cut at the "
    "10 s header deadline while the API keeps answering") {
  Env& e = E();
  constexpr int kSlow = 200, kStall = 8;
  struct Slow {
    std::string addr;
    bool stall = false;  // sends half a ClientHello, then nothing
    Wire w;
    absl::Time start;
    double closed_after = -1;  // seconds from before connect() to the server's close
    std::string out;           // bytes yet to be sent
    std::string got;
    uint64_t bytes = 0;  // bytes sent (the trickling ones: inside TLS)
  };
  const std::string hello = HalfClientHello(e.tls.get());
  REQUIRE(hello.size() > 20);
  const int handshake_lines_before = HandshakeLines(e.log);
  std::vector<Slow> slow(kSlow + kStall);
  std::atomic<bool> done{false};
  const absl::Time t0 = absl::Now();
  std::thread loris([&] {
    const std::string first = "GET /v1/hosts HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    for (int i = 0; i < kSlow + kStall; ++i) {
      Slow& s = slow[i];
      s.stall = i >= kSlow;
      s.addr = s.stall ? absl::StrCat("127.0.2.", 1 + i - kSlow) : absl::StrCat("127.0.0.", 2 + i);
      s.start = absl::Now();
      // The stalling ones are plaintext sockets: their bytes are the ClientHello itself.
      if (s.w.Open(s.stall ? Endpoint{e.port, nullptr} : e.api, s.addr)) {
        s.out = s.stall ? hello : first;
      }
    }
    // Each step: go on with the handshake, send what is queued, read what came (until the
    // server closes).
    auto step = [](Slow& s) {
      if (!s.w.ready()) {
        if (s.w.Handshake() == Wire::kFailed) s.closed_after = Seconds(absl::Now() - s.start);
        if (!s.w.ready()) return;
      }
      bool open = ReadAvailable(s.w, &s.got);
      if (open && !Flush(s.w, &s.out, &s.bytes)) {
        ReadAvailable(s.w, &s.got);  // what the server answered before it closed
        open = false;
      }
      if (!open) s.closed_after = Seconds(absl::Now() - s.start);
    };
    // One header byte a second on every trickling connection the server has not closed, for up
    // to 25 s.
    absl::Time tick = absl::Now() + absl::Seconds(1);
    const absl::Time end = t0 + absl::Seconds(25);
    for (;;) {
      std::vector<pollfd> fds;
      std::vector<int> idx;
      for (int i = 0; i < kSlow + kStall; ++i) {
        if (slow[i].w.fd() >= 0 && slow[i].closed_after < 0) {
          fds.push_back({slow[i].w.fd(), slow[i].w.Events(true, !slow[i].out.empty()), 0});
          idx.push_back(i);
        }
      }
      if (fds.empty() || absl::Now() >= end) break;
      const int wait_ms =
          static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(tick - absl::Now())));
      if (poll(fds.data(), fds.size(), wait_ms) > 0) {
        for (size_t k = 0; k < fds.size(); ++k) {
          if (fds[k].revents) step(slow[idx[k]]);
        }
      }
      if (absl::Now() >= tick) {
        for (Slow& s : slow) {
          if (s.stall || s.w.fd() < 0 || s.closed_after >= 0 || !s.w.ready()) continue;
          // A byte not yet taken (the socket was full) is retried rather than added to.
          if (s.out.empty()) s.out = "a";
          step(s);
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
          Exchange(e.api, health ? Get("/healthz") : Get("/v1/hosts", kReader), "127.0.0.1");
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

  int connected = 0, closed = 0, in_window = 0, with_408 = 0, silent = 0, other_reply = 0,
      handshakes = 0;
  int stall_connected = 0, stall_closed_in_window = 0, stall_silent = 0;
  std::vector<double> close_times, stall_times;
  std::vector<std::string> wrong;
  for (Slow& s : slow) {
    if (s.w.connect_errno != 0) {
      wrong.push_back(absl::StrCat(s.addr, ": connect: ", strerror(s.w.connect_errno)));
      continue;
    }
    (s.stall ? stall_connected : connected)++;
    handshakes += s.w.handshake;
    s.w.Close();
    if (s.closed_after < 0) {
      wrong.push_back(absl::StrCat(s.addr, ": still open after 25 s (", s.bytes, " bytes sent)"));
      continue;
    }
    // Closed by the 10 s deadline, not before 9 s nor after 20 s.
    const bool in = s.closed_after >= 9.0 && s.closed_after <= 20.0;
    if (!in) wrong.push_back(absl::StrCat(s.addr, ": closed after ", s.closed_after, " s"));
    if (s.stall) {
      stall_times.push_back(s.closed_after);
      stall_closed_in_window += in;
      if (s.got.empty()) {
        stall_silent++;
      } else {
        wrong.push_back(absl::StrCat(s.addr, " (stalled handshake): got ", s.got.size(),
                                     " bytes: ", absl::CEscape(s.got.substr(0, 100))));
      }
      continue;
    }
    closed++;
    in_window += in;
    close_times.push_back(s.closed_after);
    if (s.got.empty()) {
      silent++;
      wrong.push_back(absl::StrCat(s.addr, ": closed without an answer (", s.w.tls_error, ")"));
    } else if (absl::StartsWith(s.got, "HTTP/1.1 408")) {
      with_408++;
    } else {
      other_reply++;
      wrong.push_back(absl::StrCat(s.addr, ": answered ", s.got.substr(0, 200)));
    }
  }
  // Each stalled handshake is logged once, as not done in time (8 lines: within the log's 10 a
  // second), and nothing else about handshakes (the trickling ones completed theirs).
  auto stall_logged = [&] {
    std::ifstream in(e.log);
    std::string line;
    std::map<std::string, int> n;
    while (std::getline(in, line)) {
      if (!absl::StrContains(line, "no handshake in time")) continue;
      for (int i = 1; i <= kStall; ++i) {
        if (absl::StrContains(line, absl::StrCat(" from 127.0.2.", i, ":"))) n[std::to_string(i)]++;
      }
    }
    int once = 0;
    for (const auto& [addr, count] : n) once += count == 1;
    return once;
  };
  testing::WaitFor([&] { return stall_logged() == kStall; }, absl::Seconds(5));
  std::string lines;
  const int logged = stall_logged();
  const int handshake_lines = HandshakeLines(e.log, &lines) - handshake_lines_before;
  printf(
      "slowloris: %d connections from 127.0.0.2-127.0.0.%d, %d TLS handshakes done, %d closed by "
      "the server after min %.2f s, median %.2f s, max %.2f s (408: %d, closed without an "
      "answer: %d, other answers: %d)\n",
      connected, 1 + kSlow, handshakes, closed, Min(close_times), Median(close_times),
      Max(close_times), with_408, silent, other_reply);
  printf(
      "slowloris: %d connections from 127.0.2.1-127.0.2.%d stopped after %zu of a ClientHello's "
      "%zu bytes: %d closed without an answer after min %.2f s, max %.2f s; %d logged once as "
      "\"no handshake in time\" (%d log lines about handshakes in all)\n",
      stall_connected, kStall, hello.size(), 2 * hello.size(), stall_silent, Min(stall_times),
      Max(stall_times), logged, handshake_lines);
  printf(
      "slowloris: during the attack, %zu authorized GET /v1/hosts answered in median %.1f ms, "
      "max %.1f ms; %zu GET /healthz in median %.1f ms, max %.1f ms (%zu failed or over 2 s; "
      "each on a new TLS connection)\n",
      hosts_s.size(), 1000 * Median(hosts_s), 1000 * Max(hosts_s), health_s.size(),
      1000 * Median(health_s), 1000 * Max(health_s), bad.size());
  fflush(stdout);
  for (size_t i = 0; i < std::min<size_t>(wrong.size(), 10); ++i) UNSCOPED_INFO(wrong[i]);
  for (size_t i = 0; i < std::min<size_t>(bad.size(), 10); ++i) UNSCOPED_INFO(bad[i]);
  CHECK(connected == kSlow);
  CHECK(handshakes == connected);
  CHECK(closed == connected);
  CHECK(in_window == connected);
  CHECK(other_reply == 0);
  CHECK(with_408 == connected);  // each is told why: 408 at the header deadline
  CHECK(stall_connected == kStall);
  CHECK(stall_closed_in_window == kStall);
  CHECK(stall_silent == kStall);
  INFO(lines);
  CHECK(logged == kStall);
  CHECK(handshake_lines == kStall);
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
      Exchange(e.api,
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
      Exchange(e.api,
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
  const Reply r = Exchange(e.api, req, "", Opts(absl::Seconds(10), /*until_close=*/true));
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
      e.api,
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
      e.api,
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
  // Keep sending until the server closes (its close_notify, EOF, EPIPE or ECONNRESET): what the
  // client managed to send is the server's reading plus the kernel's socket buffers on both
  // sides (inside TLS records).
  const Reply r = Exchange(
      e.api,
      Filler("GET /v1/hosts HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: ", 200 * 1000 * 1000, 'h'), "",
      Opts(absl::Seconds(60), /*until_close=*/true,
           /*keep_sending=*/true));
  printf(
      "oversized: 200 MB header line: %d in %.1f ms (%.2f MiB sent by then); the client sent "
      "%.1f KiB (%.2f MiB) before the server closed (send: %s) after %.2f s\n",
      r.status, 1000 * r.head_s, r.sent_at_head / 1048576.0, r.sent / 1024.0, r.sent / 1048576.0,
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
      Exchange(e.api,
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
  const Reply r = Exchange(e.api,
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
  CHECK(Exchange(e.api, Get("/v1/hosts", kReader)).status == 200);
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

  enum State { kHandshake, kSending, kReading, kDone };
  struct Conn {
    Wire w;
    State state = kHandshake;
    std::string out;
    uint64_t sent = 0;
    std::string raw;
    Reply r;
    int err = 0;
    absl::Time start, end;
  };
  const std::string req = Get("/v1/hosts", kReader);
  std::vector<Conn> c(kConns);
  const double client_cpu0 = CpuSeconds(getpid()), server_cpu0 = CpuSeconds(e.sched->pid());
  const absl::Time t0 = absl::Now();
  // 4 connections from each of 127.0.1.1 .. 127.0.1.250: the per-client cap (64) is not the
  // limit; the total caps are.
  for (int i = 0; i < kConns; ++i) {
    c[i].start = absl::Now();
    c[i].out = req;
    if (!c[i].w.Open(e.api, absl::StrCat("127.0.1.", 1 + i / 4))) {
      c[i].err = c[i].w.connect_errno;
      c[i].state = kDone;
      c[i].end = absl::Now();
    }
  }
  // Every connection's handshake, request and reply in one poll loop: a refused connection gets
  // its 503 after a handshake (the server gives it 2 s), so none may wait for another.
  const absl::Time deadline = t0 + absl::Seconds(60);
  std::vector<pollfd> fds;
  std::vector<int> idx;
  for (;;) {
    fds.clear();
    idx.clear();
    for (int i = 0; i < kConns; ++i) {
      if (c[i].state == kDone) continue;
      fds.push_back(
          {c[i].w.fd(), c[i].w.Events(c[i].state == kReading, c[i].state == kSending), 0});
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
        x.r.TakeErrors(x.w);
        x.w.Close();
      };
      if (x.state == kHandshake) {
        const Wire::Step s = x.w.Handshake();
        if (s == Wire::kFailed) {
          finish(x.w.connect_errno ? x.w.connect_errno : x.w.recv_errno ? x.w.recv_errno : EPROTO);
          continue;
        }
        if (s == Wire::kAgain) continue;
        x.state = kSending;
      }
      // A send that fails (the server closed) still leaves its answer to read.
      if (x.state == kSending && (!Flush(x.w, &x.out, &x.sent) || x.out.empty())) {
        x.state = kReading;
      }
      if (x.state != kReading) continue;
      const bool open = ReadAvailable(x.w, &x.raw);
      if (x.r.status == 0) {
        ParseHead(x.raw, &x.r);
      } else {
        x.r.body = x.raw.substr(x.r.head.size() + 4);
      }
      if (x.r.status != 0 && BodyComplete(x.r)) {
        finish(0);
      } else if (!open) {
        x.r.closed = true;
        finish(x.r.status != 0 ? 0 : x.w.recv_errno);
      }
    }
  }
  int ok = 0, busy = 0, busy_no_retry = 0, hanging = 0, errors = 0, handshakes = 0;
  std::map<int, int> others;
  std::vector<double> ok_s;
  absl::Time last = t0;
  std::string example;
  for (Conn& x : c) {
    if (x.state != kDone) {
      hanging++;
      x.r.TakeErrors(x.w);
      if (example.empty()) example = absl::StrCat("hanging: ", x.r.Describe());
      x.w.Close();
      continue;
    }
    handshakes += x.r.handshake;
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
      if (example.empty()) {
        example = absl::StrCat("no answer: ", strerror(x.err), ": ", x.r.Describe());
      }
    }
  }
  std::string other_text;
  for (auto [s, n] : others) absl::StrAppend(&other_text, " ", s, ":", n);
  printf(
      "concurrent: %d TLS connections from 250 addresses (%d handshakes done): 200: %d, 503 with "
      "Retry-After: %d, 503 without: %d, other statuses:%s, no answer: %d, hanging after 60 s: "
      "%d; all done in %.2f s (the 200s: median %.0f ms, max %.0f ms); CPU used meanwhile: the "
      "client %.2f s, the scheduler %.2f s\n",
      kConns, handshakes, ok, busy, busy_no_retry,
      other_text.empty() ? " none" : other_text.c_str(), errors, hanging, Seconds(last - t0),
      1000 * Median(ok_s), 1000 * Max(ok_s), CpuSeconds(getpid()) - client_cpu0,
      CpuSeconds(e.sched->pid()) - server_cpu0);
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
    Wire w;
    absl::Time start;
    std::string raw;
    Reply r;
    bool closed = false;
    double answered_s = -1;
  };
  std::vector<Idle> idle(kIdle);
  for (int i = 0; i < kIdle; ++i) {
    idle[i].start = absl::Now();
    const bool opened = idle[i].w.Open(e.api, src);
    INFO("connection " << i << ": " << strerror(idle[i].w.connect_errno));
    REQUIRE(opened);
  }
  // Drives the handshakes (all at once: the refused ones get their 503 after theirs) and reads.
  auto pump = [&](int timeout_ms) {
    std::vector<pollfd> fds;
    std::vector<int> idx;
    for (int i = 0; i < kIdle; ++i) {
      if (idle[i].closed) continue;
      fds.push_back({idle[i].w.fd(), idle[i].w.Events(true, false), 0});
      idx.push_back(i);
    }
    if (fds.empty() || poll(fds.data(), fds.size(), timeout_ms) <= 0) return;
    for (size_t k = 0; k < fds.size(); ++k) {
      if (!fds[k].revents) continue;
      Idle& x = idle[idx[k]];
      if (!x.w.ready()) {
        if (x.w.Handshake() == Wire::kFailed) x.closed = true;
        if (!x.w.ready()) continue;
      }
      if (!ReadAvailable(x.w, &x.raw)) x.closed = true;
      if (x.r.status == 0 && ParseHead(x.raw, &x.r)) {
        x.answered_s = Seconds(absl::Now() - x.start);
      }
    }
  };
  auto refused = [&] {
    int n = 0;
    for (const Idle& x : idle) n += x.r.status != 0 && x.closed;
    return n;
  };
  auto handshakes = [&] {
    int n = 0;
    for (const Idle& x : idle) n += x.w.handshake;
    return n;
  };
  // Wait (up to 9 s: the idle ones' header deadline is 10 s) for every handshake, and for the
  // refusals to arrive and close.
  const absl::Time deadline = absl::Now() + absl::Seconds(9);
  while ((refused() < kIdle - kCap || handshakes() < kIdle) && absl::Now() < deadline) pump(100);
  // Another address is served meanwhile; then whatever else the 70 got has had time to arrive.
  const Reply other = Exchange(e.api, Get("/v1/hosts", kReader), "127.0.0.10");
  pump(0);

  int busy = 0, silent = 0;
  std::vector<double> times;
  std::string which;
  for (int i = 0; i < kIdle; ++i) {
    const Idle& x = idle[i];
    if (x.r.status == 503 && x.r.RetryAfter() && x.r.ConnectionClose() && x.closed) {
      busy++;
      times.push_back(x.answered_s);
      absl::StrAppend(&which, which.empty() ? "" : ",", i + 1);
    } else if (x.w.ready() && x.raw.empty() && !x.closed) {
      silent++;
    } else {
      UNSCOPED_INFO("connection " << i + 1 << ": handshake=" << x.w.handshake << " ("
                                  << x.w.tls_error << ") closed=" << x.closed << " got: " << x.raw);
    }
  }
  const int done_handshakes = handshakes();
  printf(
      "per-client: %d idle TLS connections from %s (%d handshakes done): %d refused with 503 + "
      "Retry-After (connections %s) in max %.1f ms, %d open and waiting; another address "
      "answered %d in %.1f ms\n",
      kIdle, src.c_str(), done_handshakes, busy, which.c_str(), 1000 * Max(times), silent,
      other.status, 1000 * other.total_s);
  fflush(stdout);
  CHECK(done_handshakes == kIdle);
  CHECK(busy == kIdle - kCap);
  CHECK(silent == kCap);
  CHECK(Max(times) <= 2.0);
  INFO(other.Describe());
  CHECK(other.status == 200);
  for (Idle& x : idle) x.w.Close();
  // Closing them frees the address's connections: a request from it is served again.
  Reply again;
  const bool served = testing::WaitFor(
      [&] {
        again = Exchange(e.api, Get("/v1/hosts", kReader), src);
        return again.status == 200;
      },
      absl::Seconds(10));
  INFO(again.Describe());
  CHECK(served);
  e.CheckAlive();
}

// ---------------------------------------------------------------------------------------------
// 5. TLS.

TEST_CASE(
    "TLS: plaintext is closed without a 200, the cluster CA's client gets 200, another CA's "
    "client fails the handshake, one log line per refusal") {
  Env& e = E();
  const std::string rogue = e.dir + "/rogue-pki";
  const std::string sh = testing::RunfilePath("deploy/pki.sh");
  REQUIRE(testing::RunCommand(absl::StrCat(sh, " init ", rogue)).ok());
  std::string error;
  const SslCtx rogue_tls = ClientContext(rogue + "/ca.pem", &error);
  INFO(error);
  REQUIRE(rogue_tls);

  const Reply health = Exchange(e.api, Get("/healthz"));
  const Reply hosts = Exchange(e.api, Get("/v1/hosts", kReader));
  printf(
      "tls: with the CA: GET /healthz %d in %.1f ms, GET /v1/hosts %d in %.1f ms (handshake "
      "included)\n",
      health.status, 1000 * health.head_s, hosts.status, 1000 * hosts.head_s);
  {
    INFO(health.Describe());
    CHECK(health.handshake);
    CHECK(health.verify == X509_V_OK);
    CHECK(health.status == 200);
    INFO(hosts.Describe());
    CHECK(hosts.status == 200);
  }

  const int before = HandshakeLines(e.log);
  constexpr int kPlain = 3, kRogue = 2;
  for (int i = 0; i < kPlain; ++i) {
    const Reply r = Exchange(Endpoint{e.port, nullptr}, Get("/healthz"), "",
                             Opts(absl::Seconds(15), /*until_close=*/true));
    printf("tls: plaintext GET /healthz: %s after %.1f ms (%llu bytes back)\n",
           r.status > 0 ? r.StatusLine().c_str() : "closed without an HTTP answer",
           1000 * r.total_s, static_cast<unsigned long long>(r.received));
    INFO(r.Describe());
    CHECK(r.status != 200);
    CHECK(r.closed);
    CHECK_FALSE(r.timed_out);
  }
  for (int i = 0; i < kRogue; ++i) {
    const Reply t = Exchange(Endpoint{e.port, rogue_tls.get()}, Get("/healthz"));
    printf("tls: a client trusting another CA: handshake %s, verify result %ld (%s): %s\n",
           t.handshake ? "succeeded" : "failed", t.verify, X509_verify_cert_error_string(t.verify),
           t.tls_error.c_str());
    INFO(t.Describe());
    CHECK_FALSE(t.handshake);
    CHECK(t.verify != X509_V_OK);
    CHECK(t.status == 0);
    CHECK(t.sent == 0);
  }
  // One log line per refused connection: wait for them, then (after one more good request, so
  // the server has moved on) check there are no more.
  const int refusals = kPlain + kRogue;
  testing::WaitFor([&] { return HandshakeLines(e.log) - before >= refusals; }, absl::Seconds(15));
  const Reply barrier = Exchange(e.api, Get("/healthz"));
  CHECK(barrier.status == 200);
  std::string lines;
  const int logged = HandshakeLines(e.log, &lines) - before;
  printf("tls: %d refused connections, %d log lines mentioning the handshake:\n%s", refusals,
         logged, lines.c_str());
  fflush(stdout);
  INFO(e.sched->LogTail(40));
  CHECK(logged == refusals);
  e.CheckAlive();
}

// ---------------------------------------------------------------------------------------------

TEST_CASE("after every attack: the scheduler still answers and its RSS grew by less than 300 MB") {
  Env& e = E();
  const Reply health = Exchange(e.api, Get("/healthz"));
  const Reply hosts = Exchange(e.api, Get("/v1/hosts", kReader));
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
