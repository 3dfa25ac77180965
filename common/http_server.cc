// Size: one HTTP/1.1 server over Boost.Beast, plain and TLS: the shared limits (caps, slots,
// queue) and the connection's state machine; the connection (~460 lines) could be a file of its
// own.
#include "common/http_server.h"

#include <strings.h>
#include <sys/stat.h>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <chrono>
#include <deque>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/log.h"

namespace livemig::http {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;

namespace {

// A TLS server context with `cert` (a PEM chain) and its `key`; InvalidArgument naming the file
// that cannot be used, or saying that the key is not the certificate's.
absl::StatusOr<std::shared_ptr<ssl::context>> MakeSslContext(const std::string& cert,
                                                             const std::string& key) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                   ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
  beast::error_code ec;
  ctx->use_certificate_chain_file(cert, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot use the TLS certificate ", cert, ": ", ec.message()));
  }
  ctx->use_private_key_file(key, ssl::context::pem, ec);
  if (ec) {
    return absl::InvalidArgumentError(absl::StrCat("cannot use the TLS key ", key, ": ",
                                                   ec.message(), " (is it ", cert, "'s key?)"));
  }
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the TLS key ", key, " is not the key of the certificate ", cert));
  }
  return ctx;
}

// What identifies a file's version on disk: a renewal (written in place or renamed over it)
// changes one of these.
struct FileStamp {
  bool exists = false;
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  bool operator==(const FileStamp& o) const {
    return exists == o.exists && dev == o.dev && ino == o.ino && size == o.size &&
           mtime_ns == o.mtime_ns && ctime_ns == o.ctime_ns;
  }
  bool operator!=(const FileStamp& o) const { return !(*this == o); }
};

FileStamp StampOf(const std::string& path) {
  struct stat st {};
  FileStamp f;
  if (stat(path.c_str(), &st) != 0) return f;
  f.exists = true;
  f.dev = st.st_dev;
  f.ino = st.st_ino;
  f.size = st.st_size;
  f.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  f.ctime_ns = static_cast<int64_t>(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec;
  return f;
}

}  // namespace

bool CaseLess::operator()(const std::string& a, const std::string& b) const {
  return strcasecmp(a.c_str(), b.c_str()) < 0;
}

std::string Request::get_header_value(const std::string& name) const {
  auto it = headers.find(name);
  return it == headers.end() ? "" : it->second;
}

std::string Request::get_param_value(const std::string& name) const {
  auto it = params.find(name);
  return it == params.end() ? "" : it->second;
}

void Response::set_header(const std::string& name, const std::string& value) {
  for (auto& [n, v] : headers) {
    if (strcasecmp(n.c_str(), name.c_str()) == 0) {
      v = value;
      return;
    }
  }
  headers.emplace_back(name, value);
}

std::string Decode(const std::string& s, bool plus_is_space) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && hex(s[i + 1]) >= 0 && hex(s[i + 2]) >= 0) {
      out += static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2]));
      i += 2;
    } else if (plus_is_space && s[i] == '+') {
      out += ' ';
    } else {
      out += s[i];
    }
  }
  return out;
}

absl::Status ValidateOptions(const Options& o) {
  auto positive = [](const char* name, int64_t v) -> absl::Status {
    if (v <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(name, " must be positive, got ", v));
    }
    return absl::OkStatus();
  };
  for (auto s :
       {positive("--http-max-connections", o.max_connections),
        positive("--http-max-per-client", o.max_per_client),
        positive("--http-max-handshakes", o.max_handshakes), positive("--http-threads", o.threads),
        positive("--http-max-line", static_cast<int64_t>(o.max_line)),
        positive("--http-max-headers", static_cast<int64_t>(o.max_headers)),
        positive("--http-max-body", static_cast<int64_t>(o.max_body)),
        positive("--http-header-timeout-ms", absl::ToInt64Milliseconds(o.header_timeout)),
        positive("--http-body-timeout-ms", absl::ToInt64Milliseconds(o.body_timeout)),
        positive("--http-idle-timeout-ms", absl::ToInt64Milliseconds(o.idle_timeout)),
        positive("--http-queue-timeout-ms", absl::ToInt64Milliseconds(o.queue_timeout))}) {
    if (!s.ok()) return s;
  }
  if (o.max_waiting < 0) {
    return absl::InvalidArgumentError("--http-max-waiting must be 0 or more");
  }
  if (o.max_line > o.max_headers) {
    return absl::InvalidArgumentError(absl::StrCat("--http-max-line (", o.max_line,
                                                   ") must not exceed --http-max-headers (",
                                                   o.max_headers, ")"));
  }
  if (o.threads > 64) return absl::InvalidArgumentError("--http-threads must be at most 64");
  if (o.tls_cert.empty() != o.tls_key.empty()) {
    return absl::InvalidArgumentError(
        "TLS needs both a certificate and its key (--api-tls-cert and --api-tls-key)");
  }
  return absl::OkStatus();
}

namespace {

std::chrono::steady_clock::duration Chrono(absl::Duration d) {
  return std::chrono::milliseconds(absl::ToInt64Milliseconds(d));
}

}  // namespace

// ---- the shared state: caps, slots, the queue -----------------------------------------------

class Server::Impl {
 public:
  Impl(Server* server, const Options& o) : server_(server), o_(o), ioc_(o.threads) {}

  enum class Admission { kOk, kClientBusy, kBusy };

  // At accept. A TLS connection counts against the total caps only once its handshake is done
  // (AdmitHandshaken): until then against max_handshakes, so that a burst of new connections is
  // not refused for the time their handshakes take.
  Admission Admit(const std::string& client, bool tls) {
    std::lock_guard<std::mutex> l(mu_);
    int& per = per_client_[client];
    if (per >= o_.max_per_client) {
      if (per == 0) per_client_.erase(client);
      return Admission::kClientBusy;
    }
    if (tls) {
      if (handshaking_ >= o_.max_handshakes) {
        if (per == 0) per_client_.erase(client);
        return Admission::kBusy;
      }
      ++per;
      ++handshaking_;
      return Admission::kOk;
    }
    if (connections_ >= o_.max_connections + o_.max_waiting) {
      if (per == 0) per_client_.erase(client);
      return Admission::kBusy;
    }
    ++per;
    ++connections_;
    return Admission::kOk;
  }

  // After a TLS handshake: false when the total caps are full (the caller answers 503).
  bool AdmitHandshaken() {
    std::lock_guard<std::mutex> l(mu_);
    --handshaking_;
    if (connections_ >= o_.max_connections + o_.max_waiting) return false;
    ++connections_;
    return true;
  }

  // stage: 0 handshaking, 1 admitted, 2 refused after its handshake (per-client count only).
  void Leave(const std::string& client, int stage) {
    std::lock_guard<std::mutex> l(mu_);
    if (stage == 0) --handshaking_;
    if (stage == 1) --connections_;
    auto it = per_client_.find(client);
    if (it != per_client_.end() && --it->second <= 0) per_client_.erase(it);
  }

  struct Waiter {
    // Posts OnSlot to the session's executor; holds the session until then (cleared when
    // granted or abandoned, so no cycle outlives the wait).
    std::function<void()> grant;
    bool done = false;
  };

  // true: the slot is the caller's now. false: `w` waits in the queue until a slot is handed to
  // it (its grant is posted) or the caller gives up (Abandon).
  bool AcquireSlot(const std::shared_ptr<Waiter>& w) {
    std::lock_guard<std::mutex> l(mu_);
    if (slots_ < o_.max_connections && waiters_.empty()) {
      ++slots_;
      return true;
    }
    waiters_.push_back(w);
    return false;
  }

  // true when `w` had not been granted a slot (it leaves the queue); false when it had.
  bool Abandon(const std::shared_ptr<Waiter>& w) {
    std::lock_guard<std::mutex> l(mu_);
    if (w->done) return false;
    w->done = true;
    w->grant = nullptr;
    for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
      if (*it == w) {
        waiters_.erase(it);
        break;
      }
    }
    return true;
  }

  void ReleaseSlot() {
    std::function<void()> grant;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!waiters_.empty()) {
        auto next = waiters_.front();  // the slot passes on: slots_ stays
        waiters_.pop_front();
        next->done = true;
        grant = std::move(next->grant);
        next->grant = nullptr;
      } else {
        --slots_;
      }
    }
    if (grant) grant();
  }

  bool BeginRefusal() {
    std::lock_guard<std::mutex> l(mu_);
    if (refusing_ >= kMaxRefusing) return false;
    ++refusing_;
    return true;
  }
  void EndRefusal() {
    std::lock_guard<std::mutex> l(mu_);
    --refusing_;
  }

  // One line per refused TLS handshake, at most 10 a second (then one line with the count).
  void LogHandshake(const std::string& client, const std::string& why) {
    refused_handshakes_++;
    const int64_t now = absl::ToUnixSeconds(absl::Now());
    int64_t suppressed = 0;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (now != log_second_) {
        suppressed = suppressed_;
        suppressed_ = 0;
        log_second_ = now;
        logged_ = 0;
      }
      if (logged_ >= 10) {
        ++suppressed_;
        return;
      }
      ++logged_;
    }
    if (suppressed > 0) {
      LogWarning("HTTP: %d more refused TLS handshakes were not logged", suppressed);
    }
    LogWarning("HTTP: refused a connection from %s: TLS handshake failed (%s)", client, why);
  }

  Stats stats() {
    std::lock_guard<std::mutex> l(mu_);
    Stats s;
    s.connections = connections_;
    s.slots_in_use = slots_;
    s.waiting = static_cast<int>(waiters_.size());
    s.refused_busy = refused_busy_;
    s.refused_limits = refused_limits_;
    s.refused_handshakes = refused_handshakes_;
    return s;
  }

  void Accept();
  template <class Stream>
  void StartSession(tcp::socket socket, const std::string& client, int refuse_status);

  Server* const server_;
  const Options o_;
  static constexpr int kMaxRefusing = 64;
  std::mutex mu_;
  int connections_ = 0;
  int handshaking_ = 0;
  int slots_ = 0;
  int refusing_ = 0;
  std::map<std::string, int> per_client_;
  std::deque<std::shared_ptr<Waiter>> waiters_;
  int64_t log_second_ = 0;
  int logged_ = 0;
  int64_t suppressed_ = 0;
  std::atomic<uint64_t> refused_busy_{0}, refused_limits_{0}, refused_handshakes_{0};
  // The TLS context new connections take (null: plaintext). A connection keeps the one it
  // started with; CurrentSsl() replaces it when the certificate or key files change on disk.
  std::shared_ptr<ssl::context> ssl_;
  std::mutex ssl_mu_;
  FileStamp cert_stamp_, key_stamp_;
  absl::Time ssl_checked_ = absl::InfinitePast();

  // Loads the certificate and key; called by Start, and again by CurrentSsl when they changed.
  absl::Status LoadSsl() {
    const FileStamp cert = StampOf(o_.tls_cert), key = StampOf(o_.tls_key);
    cert_stamp_ = cert;
    key_stamp_ = key;
    auto ctx = MakeSslContext(o_.tls_cert, o_.tls_key);
    if (!ctx.ok()) return ctx.status();
    ssl_ = *std::move(ctx);
    return absl::OkStatus();
  }

  // The context for a new connection. At most once a second, looks whether the certificate or
  // key file changed (a renewal: pki.sh issue-server, cert-manager, ...) and loads them again;
  // a pair that cannot be used (half written, a key of another certificate) is logged and the
  // previous context stays until the files change again.
  std::shared_ptr<ssl::context> CurrentSsl() {
    std::lock_guard<std::mutex> l(ssl_mu_);
    const absl::Time now = absl::Now();
    if (now - ssl_checked_ < absl::Seconds(1)) return ssl_;
    ssl_checked_ = now;
    if (StampOf(o_.tls_cert) == cert_stamp_ && StampOf(o_.tls_key) == key_stamp_) return ssl_;
    if (auto s = LoadSsl(); !s.ok()) {  // ssl_ is unchanged
      LogError(
          "HTTP: the TLS certificate changed on disk but cannot be used; the previous one "
          "is still served: %s",
          s.message());
    } else {
      LogInfo("HTTP: TLS certificate %s (key %s) reloaded: it changed on disk", o_.tls_cert,
              o_.tls_key);
    }
    return ssl_;
  }

  std::vector<std::thread> threads_;
  // Last: destroyed first, with every pending operation and the sessions they hold.
  net::io_context ioc_;
  std::unique_ptr<tcp::acceptor> acceptor_;
};

// ---- one connection -------------------------------------------------------------------------

namespace {

template <class Stream>
struct StreamTraits;

template <>
struct StreamTraits<beast::tcp_stream> {
  static beast::tcp_stream Make(tcp::socket s, ssl::context*) {
    return beast::tcp_stream(std::move(s));
  }
  static constexpr bool kTls = false;
};

template <>
struct StreamTraits<beast::ssl_stream<beast::tcp_stream>> {
  static beast::ssl_stream<beast::tcp_stream> Make(tcp::socket s, ssl::context* ctx) {
    return beast::ssl_stream<beast::tcp_stream>(beast::tcp_stream(std::move(s)), *ctx);
  }
  static constexpr bool kTls = true;
};

template <class Stream>
class Session : public std::enable_shared_from_this<Session<Stream>> {
 public:
  // refuse_status != 0: answer that status (503) without reading a request, then close.
  Session(Server::Impl* impl, const std::vector<Server::RouteEntry>* routes,
          const ErrorRenderer* renderer, tcp::socket socket, std::string client, int refuse_status,
          std::shared_ptr<ssl::context> ctx)
      : impl_(impl),
        o_(impl->o_),
        routes_(routes),
        renderer_(renderer),
        ctx_(std::move(ctx)),
        stream_(StreamTraits<Stream>::Make(std::move(socket), ctx_.get())),
        buffer_(impl->o_.max_headers + 8192),
        client_(std::move(client)),
        refuse_status_(refuse_status),
        stage_(StreamTraits<Stream>::kTls ? 0 : 1),
        deadline_(stream_.get_executor()) {}

  ~Session() {
    if (waiter_) impl_->Abandon(waiter_);
    if (has_slot_) impl_->ReleaseSlot();
    if (refuse_status_ != 0) {
      impl_->EndRefusal();
    } else {
      impl_->Leave(client_, stage_);
    }
  }

  void Start() {
    // The first request's headers (and the TLS handshake) are due header_timeout after the
    // connection's start.
    Arm(refuse_status_ ? absl::Seconds(2) : o_.header_timeout);
    if constexpr (StreamTraits<Stream>::kTls) {
      stream_.async_handshake(
          ssl::stream_base::server,
          [self = this->shared_from_this()](beast::error_code ec) { self->OnHandshake(ec); });
    } else {
      OnHandshake({});
    }
  }

 private:
  beast::tcp_stream& Lowest() { return beast::get_lowest_layer(stream_); }

  // An absolute deadline for the reads that follow: when it passes, the pending read is
  // cancelled (timed_out_ tells why) and the session can still answer 408. (beast::tcp_stream's
  // own timeout closes the socket, which would leave no way to answer.)
  void Arm(absl::Duration d) {
    timed_out_ = false;
    deadline_.expires_after(Chrono(d));
    std::weak_ptr<Session> weak = this->shared_from_this();
    deadline_.async_wait([weak](beast::error_code ec) {
      if (ec) return;
      if (auto self = weak.lock()) {
        self->timed_out_ = true;
        // Cancel the pending read, and end the receiving side: a read that completed just
        // before (its handler queued) starts no new one that would wait past the deadline.
        // The sending side stays open for the 408.
        beast::error_code ignored;
        self->Lowest().socket().cancel(ignored);
        self->Lowest().socket().shutdown(tcp::socket::shutdown_receive, ignored);
      }
    });
  }
  void Disarm() { deadline_.cancel(); }
  bool TimedOut(const beast::error_code& ec) const { return ec && timed_out_; }

  void OnHandshake(beast::error_code ec) {
    if (ec) {
      const bool timed_out = TimedOut(ec);
      Disarm();
      impl_->LogHandshake(client_, timed_out ? "no handshake in time" : ec.message());
      return;  // closed when the last reference goes
    }
    if (refuse_status_ != 0) {
      Request none;
      Response res;
      res.status = refuse_status_;
      Refuse(none, res, absl::UnavailableError(Busy()));
      return;
    }
    if (stage_ == 0) {
      if (!impl_->AdmitHandshaken()) {
        stage_ = 2;
        impl_->refused_busy_++;
        Request none;
        Response res;
        res.status = 503;
        Refuse(none, res, absl::UnavailableError(Busy()));
        return;
      }
      stage_ = 1;
    }
    ReadHeader();
  }

  std::string Busy() const {
    return absl::StrCat("the server is busy (", o_.max_connections, " connections, at most ",
                        o_.max_per_client, " per client); retry after ", o_.retry_after_s, " s");
  }

  void ReadHeader() {
    header_.emplace();
    header_->header_limit(static_cast<uint32_t>(o_.max_headers));
    // This parser reads no body; ReadBody checks the length. (Not boost::none: Boost 1.74 compares
    // a Content-Length against an empty limit as "too large".)
    header_->body_limit(std::numeric_limits<std::uint64_t>::max());
    if (!first_ && buffer_.size() == 0) {
      // Keep-alive: wait for the next request's first byte, then give it header_timeout.
      Arm(o_.idle_timeout);
      stream_.async_read_some(buffer_.prepare(1024),
                              [self = this->shared_from_this()](beast::error_code ec, size_t n) {
                                if (ec) return self->Disarm();  // idle, or the client left
                                self->buffer_.commit(n);
                                self->Arm(self->o_.header_timeout);
                                self->ReadHeaderNow();
                              });
      return;
    }
    if (!first_) Arm(o_.header_timeout);
    ReadHeaderNow();
  }

  void ReadHeaderNow() {
    first_ = false;
    bhttp::async_read_header(
        stream_, buffer_, *header_,
        [self = this->shared_from_this()](beast::error_code ec, size_t) { self->OnHeader(ec); });
  }

  // The first line of what is buffered is longer than max_line (or has no end within it).
  bool RequestLineTooLong() const {
    // Beast parses (and consumes) the request line as soon as it is whole.
    if (!header_->get().target().empty()) return false;
    const auto data = buffer_.data();
    const char* p = static_cast<const char*>(data.data());
    const size_t n = data.size();
    for (size_t i = 0; i < n && i <= o_.max_line; ++i) {
      if (p[i] == '\n') return false;
    }
    return true;
  }

  void OnHeader(beast::error_code ec) {
    Request req;
    Response res;
    const bool timed_out = TimedOut(ec);
    Disarm();
    if (timed_out) ec = beast::error::timeout;
    if (ec == bhttp::error::end_of_stream || ec == net::error::eof ||
        ec == net::error::connection_reset || ec == net::ssl::error::stream_truncated) {
      return;
    }
    if (ec == beast::error::timeout) {
      impl_->refused_limits_++;
      res.status = 408;
      return Refuse(
          req, res,
          absl::DeadlineExceededError(absl::StrCat("the request's headers did not arrive within ",
                                                   absl::FormatDuration(o_.header_timeout))));
    }
    if (ec == bhttp::error::header_limit || ec == bhttp::error::buffer_overflow) {
      impl_->refused_limits_++;
      if (RequestLineTooLong()) {
        res.status = 414;
        return Refuse(req, res,
                      absl::InvalidArgumentError(
                          absl::StrCat("the request line is longer than ", o_.max_line, " bytes")));
      }
      res.status = 431;
      return Refuse(req, res,
                    absl::InvalidArgumentError(absl::StrCat("the request's headers are longer "
                                                            "than ",
                                                            o_.max_headers, " bytes in all")));
    }
    if (ec) {
      res.status = 400;
      return Refuse(
          req, res,
          absl::InvalidArgumentError(absl::StrCat("malformed HTTP request (", ec.message(), ")")));
    }
    const auto& h = header_->get();
    req.method = std::string(h.method_string());
    req.target = std::string(h.target());
    req.remote_addr = client_;
    const size_t q = req.target.find('?');
    req.path = Decode(req.target.substr(0, q), false);
    const std::string query = q == std::string::npos ? "" : req.target.substr(q + 1);
    if (!query.empty()) {
      for (absl::string_view kv : absl::StrSplit(query, '&')) {
        if (kv.empty()) continue;
        const size_t eq = kv.find('=');
        std::string k(kv.substr(0, eq));
        std::string v(eq == absl::string_view::npos ? "" : kv.substr(eq + 1));
        req.params.emplace(Decode(k, true), Decode(v, true));
      }
    }
    keep_alive_ = h.keep_alive();
    if (req.target.size() + req.method.size() + 10 > o_.max_line) {
      impl_->refused_limits_++;
      res.status = 414;
      return Refuse(req, res,
                    absl::InvalidArgumentError(
                        absl::StrCat("the request line is longer than ", o_.max_line, " bytes")));
    }
    for (const auto& f : h) {
      if (f.name_string().size() + f.value().size() + 4 > o_.max_line) {
        impl_->refused_limits_++;
        res.status = 431;
        return Refuse(req, res,
                      absl::InvalidArgumentError(
                          absl::StrCat("the header ", std::string(f.name_string().substr(0, 64)),
                                       " is longer than ", o_.max_line, " bytes")));
      }
      req.headers.emplace(std::string(f.name_string()), std::string(f.value()));
    }
    has_body_ = !header_->is_done();

    route_ = nullptr;
    for (const auto& r : *routes_) {
      std::smatch m;
      if (r.method == req.method && std::regex_match(req.path, m, r.pattern)) {
        route_ = &r;
        for (const auto& g : m) req.matches.push_back(g.str());
        break;
      }
    }
    if (route_ == nullptr) {
      res.status = 404;
      if (has_body_) res.close = true;
      return Answer(req, res,
                    absl::NotFoundError(absl::StrCat("no such endpoint: ", req.method, " ",
                                                     req.path, " (see api/openapi.json)")));
    }
    if (route_->gate && !route_->gate(req, res)) {
      res.close = res.close || has_body_;
      return Write(res);
    }
    req_ = std::move(req);
    if (route_->slotless) {
      if (has_body_) keep_alive_ = false;  // its body is not read
      return Dispatch();
    }
    if (has_slot_) return ReadBody();
    waiter_ = std::make_shared<Server::Impl::Waiter>();
    auto executor = stream_.get_executor();
    waiter_->grant = [self = this->shared_from_this(), executor] {
      net::post(executor, [self] { self->OnSlot(); });
    };
    if (impl_->AcquireSlot(waiter_)) {
      waiter_.reset();
      has_slot_ = true;
      return ReadBody();
    }
    // Wait for a slot, at most queue_timeout. The timer holds the session.
    timer_.emplace(executor);
    timer_->expires_after(Chrono(o_.queue_timeout));
    timer_->async_wait([self = this->shared_from_this()](beast::error_code ec) {
      if (ec || !self->waiter_) return;
      if (!self->impl_->Abandon(self->waiter_)) return;  // granted meanwhile: OnSlot runs
      self->waiter_.reset();
      self->impl_->refused_busy_++;
      Response busy;
      busy.status = 503;
      self->Refuse(self->req_, busy, absl::UnavailableError(self->Busy()));
    });
  }

  void OnSlot() {
    if (!waiter_) {  // timed out just before the grant: give the slot back
      impl_->ReleaseSlot();
      return;
    }
    waiter_.reset();
    has_slot_ = true;
    if (timer_) timer_->cancel();
    ReadBody();
  }

  void ReadBody() {
    if (!has_body_) return Dispatch();
    const auto length = header_->content_length();
    if (length && *length > o_.max_body) return TooLarge();
    if (beast::iequals(req_.get_header_value("Expect"), "100-continue")) {
      auto cont =
          std::make_shared<bhttp::response<bhttp::empty_body>>(bhttp::status::continue_, 11);
      Lowest().expires_after(Chrono(o_.body_timeout));
      bhttp::async_write(stream_, *cont,
                         [self = this->shared_from_this(), cont](beast::error_code ec, size_t) {
                           if (ec) return;
                           self->Lowest().expires_never();
                           self->ReadBodyNow();
                         });
      return;
    }
    ReadBodyNow();
  }

  void ReadBodyNow() {
    body_.emplace(std::move(*header_));
    body_->body_limit(o_.max_body);
    Arm(o_.body_timeout);
    bhttp::async_read(
        stream_, buffer_, *body_,
        [self = this->shared_from_this()](beast::error_code ec, size_t) { self->OnBody(ec); });
  }

  void TooLarge() {
    impl_->refused_limits_++;
    Response res;
    res.status = 413;
    Refuse(req_, res,
           absl::InvalidArgumentError(
               absl::StrCat("the request body is too large (at most ", o_.max_body, " bytes)")));
  }

  void OnBody(beast::error_code ec) {
    const bool timed_out = TimedOut(ec);
    Disarm();
    if (timed_out) ec = beast::error::timeout;
    if (ec == bhttp::error::body_limit) return TooLarge();
    if (ec == beast::error::timeout) {
      impl_->refused_limits_++;
      Response res;
      res.status = 408;
      return Refuse(
          req_, res,
          absl::DeadlineExceededError(absl::StrCat("the request's body did not arrive within ",
                                                   absl::FormatDuration(o_.body_timeout))));
    }
    if (ec) {
      Response res;
      res.status = 400;
      return Refuse(req_, res,
                    absl::InvalidArgumentError(
                        absl::StrCat("malformed HTTP request body (", ec.message(), ")")));
    }
    req_.body = std::move(body_->get().body());
    body_.reset();
    Dispatch();
  }

  void Dispatch() {
    Response res;
    try {
      route_->handler(req_, res);
    } catch (const std::exception& e) {
      LogError("HTTP: %s %s failed: %s", req_.method, req_.path, e.what());
      res = Response();
      res.status = 500;
      return Answer(req_, res, absl::InternalError("internal error while handling the request"));
    }
    Write(res);
  }

  // A refusal by the server itself: rendered, then the connection is closed.
  void Refuse(const Request& req, Response& res, const absl::Status& why) {
    res.close = true;
    if (res.status == 503) res.set_header("Retry-After", absl::StrCat(o_.retry_after_s));
    Answer(req, res, why);
  }

  void Answer(const Request& req, Response& res, const absl::Status& why) {
    if (*renderer_) {
      (*renderer_)(req, res, why);
    } else {
      res.set_content(std::string(why.message()) + "\n", "text/plain; charset=utf-8");
    }
    Write(res);
  }

  void Write(const Response& r) {
    auto out = std::make_shared<bhttp::response<bhttp::string_body>>(
        static_cast<bhttp::status>(r.status), 11);
    out->set(bhttp::field::server, "livemig");
    if (!r.content_type.empty()) out->set(bhttp::field::content_type, r.content_type);
    for (const auto& [n, v] : r.headers) out->set(n, v);
    out->body() = r.body;
    close_ = r.close || !keep_alive_;
    out->keep_alive(!close_);
    out->prepare_payload();
    Lowest().expires_after(Chrono(o_.body_timeout));
    bhttp::async_write(stream_, *out,
                       [self = this->shared_from_this(), out](beast::error_code ec, size_t) {
                         self->OnWritten(ec);
                       });
  }

  void OnWritten(beast::error_code ec) {
    if (ec) return;
    Lowest().expires_never();
    if (!close_) {
      body_.reset();
      header_.reset();
      route_ = nullptr;
      req_ = Request();
      return ReadHeader();
    }
    Close();
  }

  // Lingering close: send our FIN, then discard what the client still sends for a moment (at
  // most 64 KiB, 1 s), so that the kernel does not answer unread data with a reset that could
  // destroy the response before the client reads it.
  void Close() {
    if constexpr (StreamTraits<Stream>::kTls) {
      // close_notify; OpenSSL then fails the wait for the client's close_notify at the first
      // application data still arriving (a refused request's rest), so linger as below after it.
      Lowest().expires_after(std::chrono::seconds(1));
      stream_.async_shutdown([self = this->shared_from_this()](beast::error_code) {
        beast::error_code ignored;
        self->Lowest().socket().shutdown(tcp::socket::shutdown_send, ignored);
        self->Drain(0);
      });
    } else {
      beast::error_code ignored;
      Lowest().socket().shutdown(tcp::socket::shutdown_send, ignored);
      Lowest().expires_after(std::chrono::seconds(1));
      Drain(0);
    }
  }

  void Drain(size_t so_far) {
    if (so_far >= 64 * 1024) return;
    drain_.resize(16 * 1024);
    Lowest().async_read_some(net::buffer(drain_), [self = this->shared_from_this(), so_far](
                                                      beast::error_code ec, size_t n) {
      if (ec) return;
      self->Drain(so_far + n);
    });
  }

  Server::Impl* const impl_;
  const Options& o_;
  const std::vector<Server::RouteEntry>* routes_;
  const ErrorRenderer* renderer_;
  const std::shared_ptr<ssl::context> ctx_;  // the TLS context this connection started with
  Stream stream_;
  beast::flat_buffer buffer_;
  const std::string client_;
  const int refuse_status_;
  int stage_;  // see Impl::Leave
  std::optional<bhttp::request_parser<bhttp::empty_body>> header_;
  std::optional<bhttp::request_parser<bhttp::string_body>> body_;
  std::optional<net::steady_timer> timer_;
  net::steady_timer deadline_;
  bool timed_out_ = false;
  std::shared_ptr<Server::Impl::Waiter> waiter_;
  const Server::RouteEntry* route_ = nullptr;
  Request req_;
  std::string drain_;
  bool first_ = true;
  bool has_slot_ = false;
  bool has_body_ = false;
  bool keep_alive_ = true;
  bool close_ = false;
};

}  // namespace

template <class Stream>
void Server::Impl::StartSession(tcp::socket socket, const std::string& client, int refuse_status) {
  std::make_shared<Session<Stream>>(this, &server_->routes_, &server_->error_renderer_,
                                    std::move(socket), client, refuse_status,
                                    ssl_ ? CurrentSsl() : nullptr)
      ->Start();
}

void Server::Impl::Accept() {
  acceptor_->async_accept(net::make_strand(ioc_), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || !acceptor_->is_open()) return;
    if (!ec) {
      beast::error_code ignored;
      socket.set_option(tcp::no_delay(true), ignored);
      const auto remote = socket.remote_endpoint(ignored);
      const std::string client = ignored ? "?" : remote.address().to_string();
      const Admission a = Admit(client, ssl_ != nullptr);
      int refuse = 0;
      if (a != Admission::kOk) {
        refused_busy_++;
        refuse = 503;
      }
      if (refuse != 0 && !BeginRefusal()) {
        socket.close(ignored);  // too many refusals in flight already: just close
      } else if (ssl_) {
        StartSession<beast::ssl_stream<beast::tcp_stream>>(std::move(socket), client, refuse);
      } else {
        StartSession<beast::tcp_stream>(std::move(socket), client, refuse);
      }
    } else if (ec == net::error::no_descriptors) {
      LogWarning("HTTP: cannot accept a connection: %s", ec.message());
    }
    Accept();
  });
}

// ---- Server ---------------------------------------------------------------------------------

Server::Server(Options options) : options_(std::move(options)) {}

Server::~Server() { Stop(); }

void Server::Route(const std::string& method, const std::string& pattern, Handler handler,
                   Gate gate, bool slotless) {
  routes_.push_back(RouteEntry{method, std::regex(pattern, std::regex::ECMAScript),
                               std::move(handler), std::move(gate), slotless});
}

absl::Status Server::Start(const std::string& host, int port) {
  if (auto s = ValidateOptions(options_); !s.ok()) return s;
  impl_ = std::make_unique<Impl>(this, options_);
  if (!options_.tls_cert.empty()) {
    if (auto s = impl_->LoadSsl(); !s.ok()) return s;
  }
  beast::error_code ec;
  const auto address = net::ip::make_address(host == "localhost" ? "127.0.0.1" : host, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("not an IP address to listen on: ", host, " (", ec.message(), ")"));
  }
  impl_->acceptor_ = std::make_unique<tcp::acceptor>(impl_->ioc_);
  const tcp::endpoint ep(address, static_cast<uint16_t>(port));
  impl_->acceptor_->open(ep.protocol(), ec);
  if (!ec) impl_->acceptor_->set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) impl_->acceptor_->bind(ep, ec);
  if (!ec) impl_->acceptor_->listen(1024, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", host, ":", port, ": ", ec.message()));
  }
  port_ = impl_->acceptor_->local_endpoint().port();
  impl_->Accept();
  for (int i = 0; i < options_.threads; ++i) {
    impl_->threads_.emplace_back([this] { impl_->ioc_.run(); });
  }
  return absl::OkStatus();
}

void Server::Stop() {
  if (!impl_) return;
  net::post(impl_->ioc_, [this] {
    beast::error_code ignored;
    impl_->acceptor_->close(ignored);
  });
  impl_->ioc_.stop();
  for (auto& t : impl_->threads_) t.join();
  impl_->threads_.clear();
  {
    std::lock_guard<std::mutex> l(impl_->mu_);
    for (auto& w : impl_->waiters_) w->grant = nullptr;
    impl_->waiters_.clear();
  }
  impl_.reset();
}

Server::Stats Server::stats() const { return impl_ ? impl_->stats() : Stats(); }

}  // namespace livemig::http
