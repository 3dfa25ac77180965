// A small HTTP/1.1 server on Boost.Beast (Debian 12's Boost 1.74) that bounds every client.
//
// Why Beast: its parser takes a header limit and a body limit (chunked bodies included) and
// stops reading when one is reached; its stream has absolute deadlines; and reads are
// asynchronous, so a slow client holds a socket and a small buffer, never a thread. The caps on
// top are here (Options): every one is answered before a body is read, with `Connection: close`.
//
//   per connection   request line and each header line <= max_line (414 / 431), all headers
//                    <= max_headers (431), the headers within header_timeout of the
//                    connection's start or of a keep-alive request's first byte (408), the body
//                    <= max_body (413) within body_timeout (408), idle keep-alive <= idle_timeout
//   per client IP    <= max_per_client connections (503 + Retry-After)
//   in total         <= max_connections connections hold a slot (may read a body and run a
//                    handler); up to max_waiting more have their headers read and wait in a queue
//                    for a slot (queue_timeout, then 503 + Retry-After); beyond both: 503 at once
//   TLS handshakes   <= max_handshakes at once, within header_timeout; a TLS connection counts
//                    against the caps above once its handshake is done (then 503 at once if they
//                    are full), so a burst of new connections is not refused for the time their
//                    handshakes take; beyond max_handshakes: refused at accept
//   threads          `threads` I/O threads run the handlers; nothing grows with the clients
//
// Routes declare a gate that runs on the headers alone: a request the gate refuses (no token, a
// wrong one) is answered without reading a byte of its body. Routes marked `slotless` (a health
// check) are answered without a slot, so they stay answerable while the caps are reached.
//
// Memory bound: (max_connections + max_waiting) x (max_headers + 8 KiB) for headers, plus
// max_connections x max_body for bodies, plus max_handshakes x a TLS handshake's state (OpenSSL's
// SSL object and record buffers, about 40 KiB; a session's header buffer is allocated only as it
// reads), plus the responses being written: with the defaults 768 x 40 KiB + 256 x 1 MiB + 1024 x
// 40 KiB ~ 326 MiB at the worst, whatever the clients send.
#ifndef LIVEMIG_COMMON_HTTP_SERVER_H_
#define LIVEMIG_COMMON_HTTP_SERVER_H_

#include <functional>
#include <map>
#include <memory>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace livemig::http {

struct CaseLess {
  bool operator()(const std::string& a, const std::string& b) const;
};

struct Request {
  std::string method;
  std::string target;                              // as sent: path and query
  std::string path;                                // decoded path, without the query
  std::multimap<std::string, std::string> params;  // decoded query parameters
  std::multimap<std::string, std::string, CaseLess> headers;
  std::vector<std::string> matches;  // the route's regex groups; [0] is the whole path
  std::string body;
  std::string remote_addr;

  std::string get_header_value(const std::string& name) const;
  bool has_param(const std::string& name) const { return params.count(name) > 0; }
  std::string get_param_value(const std::string& name) const;
};

struct Response {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::string content_type;
  bool close = false;  // answer with Connection: close and close after writing

  void set_header(const std::string& name, const std::string& value);
  void set_content(std::string content, std::string type) {
    body = std::move(content);
    content_type = std::move(type);
  }
};

using Handler = std::function<void(const Request&, Response&)>;
// Runs on the headers alone (body empty). false: `res` holds the refusal; the body is not read.
using Gate = std::function<bool(const Request&, Response&)>;
// Renders an error the server itself answers (404, 405, 408, 413, 414, 431, 503, 500): `res`
// has the status set; the renderer fills the body for the request's API.
using ErrorRenderer = std::function<void(const Request&, Response&, const absl::Status&)>;

struct Options {
  int max_connections = 256;
  int max_waiting = 512;
  int max_per_client = 64;
  int max_handshakes = 1024;  // TLS handshakes in progress at once (see the file comment)
  absl::Duration queue_timeout = absl::Seconds(2);
  size_t max_line = 8 * 1024;
  size_t max_headers = 32 * 1024;
  size_t max_body = 1024 * 1024;
  absl::Duration header_timeout = absl::Seconds(10);
  absl::Duration body_timeout = absl::Seconds(30);
  absl::Duration idle_timeout = absl::Seconds(30);
  // The handlers run on these I/O threads, so a handler that waits holds one: the scheduler's
  // dry runs (which ask agents) are capped below this (--dry-run-max-concurrent, default 4).
  int threads = 8;
  int retry_after_s = 1;
  // TLS: both or neither (PEM files). With them, every connection must complete a TLS
  // handshake within header_timeout; a refused handshake is logged once per connection.
  std::string tls_cert;
  std::string tls_key;
};

// Checks the values (positive caps, limits that fit one another); InvalidArgument naming the
// option otherwise.
absl::Status ValidateOptions(const Options& o);

class Server {
 public:
  explicit Server(Options options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // `pattern` is an ECMAScript regex matched against the whole decoded path.
  void Route(const std::string& method, const std::string& pattern, Handler handler,
             Gate gate = nullptr, bool slotless = false);
  // Open routes (no gate), and routes whose gate runs before the body is read.
  void Get(const std::string& pattern, Handler h) { Route("GET", pattern, std::move(h)); }
  void Get(const std::string& pattern, Gate g, Handler h) {
    Route("GET", pattern, std::move(h), std::move(g));
  }
  void Post(const std::string& pattern, Gate g, Handler h) {
    Route("POST", pattern, std::move(h), std::move(g));
  }
  void Put(const std::string& pattern, Gate g, Handler h) {
    Route("PUT", pattern, std::move(h), std::move(g));
  }
  void Delete(const std::string& pattern, Gate g, Handler h) {
    Route("DELETE", pattern, std::move(h), std::move(g));
  }
  void SetErrorRenderer(ErrorRenderer r) { error_renderer_ = std::move(r); }

  // Binds `host:port` (port 0: a free port) and starts the I/O threads. Routes are fixed from
  // here on.
  absl::Status Start(const std::string& host, int port);
  int port() const { return port_; }
  bool tls() const { return !options_.tls_cert.empty(); }
  // Stops accepting, closes every connection and joins the threads.
  void Stop();

  struct Stats {
    int connections = 0;  // open, with or without a slot
    int slots_in_use = 0;
    int waiting = 0;
    uint64_t refused_busy = 0;        // 503: caps
    uint64_t refused_limits = 0;      // 408/413/414/431
    uint64_t refused_handshakes = 0;  // TLS
  };
  Stats stats() const;

  struct RouteEntry {
    std::string method;
    std::regex pattern;
    Handler handler;
    Gate gate;
    bool slotless = false;
  };
  class Impl;

 private:
  Options options_;
  std::vector<RouteEntry> routes_;
  ErrorRenderer error_renderer_;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

// Percent-decodes `s` ('+' as a space when `plus_is_space`); malformed escapes stay as they are.
std::string Decode(const std::string& s, bool plus_is_space);

}  // namespace livemig::http

#endif  // LIVEMIG_COMMON_HTTP_SERVER_H_
