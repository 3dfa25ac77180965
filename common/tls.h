// Mutual TLS between the scheduler and the compute agents (and plaintext only on an explicit
// development flag, with a warning).
//
// Certificates are read by gRPC's file-watching provider: replacing the files on disk (e.g.
// before SIGHUP) is picked up within `refresh` without a restart and without dropping calls.
#ifndef LIVEMIG_COMMON_TLS_H_
#define LIVEMIG_COMMON_TLS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"

namespace livemig {

struct TlsFiles {
  std::string ca;         // the cluster CA (PEM)
  std::string cert;       // this process's certificate (PEM)
  std::string key;        // its private key (PEM)
  bool insecure = false;  // plaintext: development only
  unsigned int refresh_s = 5;
};

// Checks that the files exist and parse, and that the certificate is valid now; warns when it
// expires within 30 days. InvalidArgument naming the file otherwise.
absl::Status ValidateTlsFiles(const TlsFiles& files, const std::string& who);

// Server side: requires and verifies a client certificate from the CA.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files);
// Client side: presents our certificate and verifies the server's against the CA.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsFiles& files);

// Channel arguments for a client: keepalive, and the name to verify the server's certificate
// against (needed for unix: addresses; empty: the target's host).
grpc::ChannelArguments ClientChannelArgs(const std::string& server_name);

// The authenticated identity of the caller: its certificate's common name ("" if none, e.g.
// plaintext).
std::string PeerIdentity(const grpc::ServerContext& ctx);

// ---- the client-facing APIs (the scheduler's gRPC API and HTTP): server-only TLS ----------

// 127.0.0.0/8, ::1 or "localhost" (with or without [brackets]).
bool IsLoopbackHost(const std::string& host);
// The host part of "HOST:PORT" / "[V6]:PORT"; "" for unix: addresses.
std::string HostOfAddress(const std::string& address);

// The rule for a client-facing listener at `address` ("unix:/path" or "HOST:PORT"): a Unix
// socket needs no TLS; TCP takes TLS when `has_tls`; plaintext TCP only on a loopback address
// or with `allow_plaintext` (logged as a warning). InvalidArgument saying what to pass otherwise.
absl::Status CheckApiListener(const std::string& flag, const std::string& address, bool has_tls,
                              bool allow_plaintext);

// The gRPC API's server credentials with `cert_pem`/`key_pem` files (the client presents no
// certificate: the bearer token authenticates it), and what keeps them current: a renewal
// written over the files (both parse, the key is the certificate's) is served to new
// connections within about `refresh_s` + 1 s, without a restart; a pair that cannot be used is
// logged and the previous one stays. Keep the object for as long as the server runs.
class ApiServerTls {
 public:
  ~ApiServerTls();
  const std::shared_ptr<grpc::ServerCredentials>& credentials() const { return credentials_; }
  class Mirror;

 private:
  ApiServerTls();
  friend absl::StatusOr<std::unique_ptr<ApiServerTls>> MakeApiServerCredentials(const std::string&,
                                                                                const std::string&,
                                                                                unsigned int);
  std::shared_ptr<grpc::ServerCredentials> credentials_;
  std::unique_ptr<Mirror> mirror_;
};
// InvalidArgument naming the file when one cannot be read or parsed, or the key is not the
// certificate's.
absl::StatusOr<std::unique_ptr<ApiServerTls>> MakeApiServerCredentials(const std::string& cert_pem,
                                                                       const std::string& key_pem,
                                                                       unsigned int refresh_s = 5);

// When the certificate in `pem_path` expires.
absl::StatusOr<absl::Time> CertificateNotAfter(const std::string& pem_path);

}  // namespace livemig

#endif  // LIVEMIG_COMMON_TLS_H_
