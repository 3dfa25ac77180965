#include "testing/raw_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <functional>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace livemig::testing {

absl::StatusOr<int> RawConnect(int port, const std::string& source) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  if (!source.empty()) {
    sockaddr_in src{};
    src.sin_family = AF_INET;
    inet_pton(AF_INET, source.c_str(), &src.sin_addr);
    if (bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) != 0) {
      const int e = errno;
      close(fd);
      return absl::InternalError(absl::StrCat("bind ", source, ": ", strerror(e)));
    }
  }
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
    const int e = errno;
    close(fd);
    return absl::UnavailableError(absl::StrCat("connect 127.0.0.1:", port, ": ", strerror(e)));
  }
  return fd;
}

bool RawSend(int fd, const std::string& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

namespace {

// Reads one response from `receive` (bytes read, 0 on a close, -1 with errno EINTR/EAGAIN to try
// again, another -1 an error), which waits at most the milliseconds it is given.
absl::StatusOr<RawReply> ReadReply(const std::function<ssize_t(char*, size_t, int)>& receive,
                                   absl::Duration deadline) {
  const absl::Time end = absl::Now() + deadline;
  std::string in;
  RawReply r;
  size_t header_end = std::string::npos;
  size_t want = std::string::npos;  // total bytes once the length is known
  char buf[16384];
  while (true) {
    if (header_end == std::string::npos) {
      header_end = in.find("\r\n\r\n");
      if (header_end != std::string::npos) {
        std::vector<std::string> lines = absl::StrSplit(in.substr(0, header_end), "\r\n");
        std::vector<std::string> first = absl::StrSplit(lines[0], absl::MaxSplits(' ', 2));
        if (first.size() < 2 || !absl::SimpleAtoi(first[1], &r.status)) {
          return absl::DataLossError("not an HTTP status line: " + lines[0]);
        }
        for (size_t i = 1; i < lines.size(); ++i) {
          const size_t colon = lines[i].find(':');
          if (colon == std::string::npos) continue;
          r.headers[absl::AsciiStrToLower(lines[i].substr(0, colon))] =
              std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
        }
        size_t length = 0;
        if (auto it = r.headers.find("content-length");
            it != r.headers.end() && absl::SimpleAtoi(it->second, &length)) {
          want = header_end + 4 + length;
        }
      }
    }
    if (want != std::string::npos && in.size() >= want) break;
    const absl::Duration left = end - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrCat("no complete answer within ",
                                                      absl::FormatDuration(deadline), " (",
                                                      in.size(), " bytes read)"));
    }
    const ssize_t n =
        receive(buf, sizeof buf, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) {  // closed (or reset): what arrived is the answer
      if (header_end == std::string::npos) {
        return absl::UnavailableError(absl::StrCat("the connection closed after ", in.size(),
                                                   " bytes, before an answer's headers"));
      }
      break;
    }
    in.append(buf, static_cast<size_t>(n));
  }
  r.body = in.substr(header_end + 4,
                     want == std::string::npos ? std::string::npos : want - header_end - 4);
  return r;
}

}  // namespace

absl::StatusOr<RawReply> RawRead(int fd, absl::Duration deadline) {
  return ReadReply(
      [fd](char* buf, size_t size, int wait_ms) -> ssize_t {
        pollfd p{fd, POLLIN, 0};
        if (poll(&p, 1, wait_ms) <= 0) {
          errno = EAGAIN;
          return -1;
        }
        return recv(fd, buf, size, 0);
      },
      deadline);
}

absl::StatusOr<RawReply> RawExchange(int port, const std::string& head, absl::Duration deadline) {
  auto fd = RawConnect(port);
  if (!fd.ok()) return fd.status();
  absl::StatusOr<RawReply> r = absl::UnavailableError("send failed");
  if (RawSend(*fd, head)) r = RawRead(*fd, deadline);
  close(*fd);
  return r;
}

struct RawTls::Ssl {
  SSL_CTX* ctx = nullptr;
  SSL* ssl = nullptr;
  ~Ssl() {
    if (ssl) SSL_free(ssl);
    if (ctx) SSL_CTX_free(ctx);
  }
};

namespace {
std::string SslErrors() {
  std::string out;
  for (unsigned long e; (e = ERR_get_error()) != 0;) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    absl::StrAppend(&out, out.empty() ? "" : "; ", buf);
  }
  return out.empty() ? "no OpenSSL error queued" : out;
}
}  // namespace

absl::StatusOr<std::unique_ptr<RawTls>> RawTls::Connect(int port, const std::string& ca_file) {
  // OpenSSL writes with write(2): a server that closed (a refused body) must fail Send, not
  // end the test process with SIGPIPE.
  signal(SIGPIPE, SIG_IGN);
  auto fd = RawConnect(port);
  if (!fd.ok()) return fd.status();
  std::unique_ptr<RawTls> c(new RawTls());
  c->fd_ = *fd;
  c->ssl_ = std::make_unique<Ssl>();
  c->ssl_->ctx = SSL_CTX_new(TLS_client_method());
  if (!c->ssl_->ctx) return absl::InternalError("SSL_CTX_new: " + SslErrors());
  if (SSL_CTX_load_verify_locations(c->ssl_->ctx, ca_file.c_str(), nullptr) != 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot load the CA ", ca_file, ": ", SslErrors()));
  }
  SSL_CTX_set_verify(c->ssl_->ctx, SSL_VERIFY_PEER, nullptr);
  c->ssl_->ssl = SSL_new(c->ssl_->ctx);
  SSL_set_fd(c->ssl_->ssl, c->fd_);
  X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl_->ssl), "127.0.0.1");
  // A handshake that hangs (a server that never answers) fails within 10 s, not never.
  timeval tv{10, 0};
  setsockopt(c->fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (SSL_connect(c->ssl_->ssl) != 1) {
    const long verify = SSL_get_verify_result(c->ssl_->ssl);
    return absl::UnavailableError(absl::StrCat(
        "TLS handshake with 127.0.0.1:", port, " failed: ", SslErrors(),
        verify != X509_V_OK
            ? absl::StrCat(" (certificate: ", X509_verify_cert_error_string(verify), ")")
            : ""));
  }
  return c;
}

RawTls::~RawTls() {
  if (ssl_ && ssl_->ssl) SSL_shutdown(ssl_->ssl);
  ssl_.reset();
  if (fd_ >= 0) close(fd_);
}

bool RawTls::Send(const std::string& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const int n = SSL_write(ssl_->ssl, bytes.data() + done,
                            static_cast<int>(std::min<size_t>(bytes.size() - done, 1 << 20)));
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

absl::StatusOr<RawReply> RawTls::Read(absl::Duration deadline) {
  return ReadReply(
      [this](char* buf, size_t size, int wait_ms) -> ssize_t {
        if (SSL_pending(ssl_->ssl) == 0) {
          pollfd p{fd_, POLLIN, 0};
          if (poll(&p, 1, wait_ms) <= 0) {
            errno = EAGAIN;
            return -1;
          }
        }
        const int n = SSL_read(ssl_->ssl, buf, static_cast<int>(size));
        if (n > 0) return n;
        const int e = SSL_get_error(ssl_->ssl, n);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
          errno = EAGAIN;
          return -1;
        }
        return 0;  // closed (close_notify, a reset or an error): what arrived is the answer
      },
      deadline);
}

absl::StatusOr<RawReply> RawTlsExchange(int port, const std::string& ca_file,
                                        const std::string& head, absl::Duration deadline) {
  auto c = RawTls::Connect(port, ca_file);
  if (!c.ok()) return c.status();
  if (!(*c)->Send(head)) return absl::UnavailableError("send failed: the server closed");
  return (*c)->Read(deadline);
}

}  // namespace livemig::testing
