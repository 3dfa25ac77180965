// HTTP over a raw socket, for tests that need exactly the bytes they send (an attack, a body the
// server must refuse before it is sent): sends `head` (and what the caller sends after), reads one
// answer. No HTTP library in between.
#ifndef LIVEMIG_TESTING_RAW_HTTP_H_
#define LIVEMIG_TESTING_RAW_HTTP_H_

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace livemig::testing {

struct RawReply {
  int status = 0;
  std::map<std::string, std::string> headers;  // names in lower case
  std::string body;
};

// A connected TCP socket to 127.0.0.1:`port`, bound first to `source` when not empty (any
// 127.x.y.z address works on Linux). The caller closes it.
absl::StatusOr<int> RawConnect(int port, const std::string& source = "");
// Writes all of `bytes`; false on an error (EPIPE when the server closed).
bool RawSend(int fd, const std::string& bytes);
// Reads one response (status line, headers, a Content-Length body or up to the close) within
// `deadline`.
absl::StatusOr<RawReply> RawRead(int fd, absl::Duration deadline);
// Connect, send `head`, read the answer, close.
absl::StatusOr<RawReply> RawExchange(int port, const std::string& head,
                                     absl::Duration deadline = absl::Seconds(10));

// The same bytes inside TLS, for the scheduler's HTTPS listener: the server's certificate is
// verified against `ca_file` (the cluster CA, pki.sh) and the name 127.0.0.1, as a client of
// the API does.
class RawTls {
 public:
  // Connects to 127.0.0.1:`port` and completes the handshake; an error names what failed.
  static absl::StatusOr<std::unique_ptr<RawTls>> Connect(int port, const std::string& ca_file);
  ~RawTls();
  RawTls(const RawTls&) = delete;
  RawTls& operator=(const RawTls&) = delete;
  // Writes all of `bytes` (false once the server closed or reset).
  bool Send(const std::string& bytes);
  // Reads one response, as RawRead.
  absl::StatusOr<RawReply> Read(absl::Duration deadline);

 private:
  RawTls() = default;
  int fd_ = -1;
  struct Ssl;
  std::unique_ptr<Ssl> ssl_;
};

// Connect with TLS, send `head`, read the answer, close.
absl::StatusOr<RawReply> RawTlsExchange(int port, const std::string& ca_file,
                                        const std::string& head,
                                        absl::Duration deadline = absl::Seconds(10));

}  // namespace livemig::testing

#endif  // LIVEMIG_TESTING_RAW_HTTP_H_
