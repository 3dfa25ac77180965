#include "common/tls.h"

#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_credentials_options.h"

namespace livemig {
namespace {

absl::StatusOr<absl::Time> AsnTime(const ASN1_TIME* t) {
  struct tm tm = {};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return absl::InvalidArgumentError("bad certificate time");
  return absl::FromTM(tm, absl::UTCTimeZone());
}

}  // namespace

absl::StatusOr<absl::Time> CertificateNotAfter(const std::string& pem_path) {
  FILE* f = std::fopen(pem_path.c_str(), "r");
  if (f == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read certificate ", pem_path));
  }
  X509* x = PEM_read_X509(f, nullptr, nullptr, nullptr);
  std::fclose(f);
  if (x == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(pem_path, " is not a PEM certificate"));
  }
  auto t = AsnTime(X509_get0_notAfter(x));
  X509_free(x);
  return t;
}

absl::Status ValidateTlsFiles(const TlsFiles& files, const std::string& who) {
  if (files.insecure) return absl::OkStatus();
  for (const auto& [what, path] : {std::pair<const char*, std::string>{"CA", files.ca},
                                   {"certificate", files.cert},
                                   {"key", files.key}}) {
    if (path.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, ": no TLS ", what,
                       " file given (pass --tls-ca, --tls-cert and --tls-key; or "
                       "--insecure-plaintext for development only)"));
    }
    std::ifstream in(path);
    if (!in)
      return absl::InvalidArgumentError(absl::StrCat(who, ": cannot read TLS ", what, " ", path));
  }
  auto not_after = CertificateNotAfter(files.cert);
  if (!not_after.ok()) return not_after.status();
  const absl::Duration left = *not_after - absl::Now();
  if (left <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat(who, ": certificate ", files.cert, " expired on ",
                     absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", *not_after, absl::UTCTimeZone()),
                     ": issue a new one"));
  }
  if (left < absl::Hours(24 * 30)) {
    LogWarning("certificate %s expires in %d days (%s): renew it before then", files.cert,
               static_cast<int>(left / absl::Hours(24)),
               absl::FormatTime("%Y-%m-%d", *not_after, absl::UTCTimeZone()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& files) {
  if (files.insecure) return grpc::InsecureServerCredentials();
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      files.key, files.cert, files.ca, files.refresh_s);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  return grpc::experimental::TlsServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(
    const TlsFiles& files) {
  if (files.insecure) return grpc::InsecureChannelCredentials();
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      files.key, files.cert, files.ca, files.refresh_s);
  grpc::experimental::TlsChannelCredentialsOptions options;
  options.set_certificate_provider(provider);
  options.watch_root_certs();
  options.watch_identity_key_cert_pairs();
  options.set_verify_server_certs(true);
  return grpc::experimental::TlsCredentials(options);
}

grpc::ChannelArguments ClientChannelArgs(const std::string& server_name) {
  grpc::ChannelArguments args;
  if (!server_name.empty()) args.SetSslTargetNameOverride(server_name);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 5000);
  return args;
}

std::string PeerIdentity(const grpc::ServerContext& ctx) {
  auto auth = ctx.auth_context();
  if (!auth || !auth->IsPeerAuthenticated()) return "";
  auto cn = auth->FindPropertyValues("x509_common_name");
  if (!cn.empty()) return std::string(cn.front().data(), cn.front().size());
  auto ids = auth->GetPeerIdentity();
  if (!ids.empty()) return std::string(ids.front().data(), ids.front().size());
  return "";
}

bool IsLoopbackHost(const std::string& host) {
  std::string h = host;
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  return h == "localhost" || h == "::1" || h.rfind("127.", 0) == 0;
}

std::string HostOfAddress(const std::string& address) {
  if (address.rfind("unix:", 0) == 0) return "";
  const size_t colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

absl::Status CheckApiListener(const std::string& flag, const std::string& address, bool has_tls,
                              bool allow_plaintext) {
  if (address.rfind("unix:", 0) == 0 || has_tls) return absl::OkStatus();
  const std::string host = HostOfAddress(address);
  if (IsLoopbackHost(host)) return absl::OkStatus();
  if (allow_plaintext) {
    LogWarning(
        "%s %s: plaintext on a network address (--api-insecure-plaintext): bearer tokens "
        "cross the network in clear",
        flag, address);
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      flag, " ", address,
      " is a network address: the API would carry bearer tokens in plaintext. Pass "
      "--api-tls-cert and --api-tls-key (issue them with deploy/pki.sh issue-server), listen on a "
      "loopback address or a unix: socket, or pass --api-insecure-plaintext (not for "
      "production)"));
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeApiServerCredentials(
    const std::string& cert_pem, const std::string& key_pem) {
  auto read = [](const std::string& path, std::string* out) -> absl::Status {
    std::ifstream in(path, std::ios::binary);
    if (!in) return absl::InvalidArgumentError("cannot read " + path);
    out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (out->find("-----BEGIN") == std::string::npos) {
      return absl::InvalidArgumentError(path + " is not a PEM file");
    }
    return absl::OkStatus();
  };
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  if (auto s = read(cert_pem, &pair.cert_chain); !s.ok()) return s;
  if (auto s = read(key_pem, &pair.private_key); !s.ok()) return s;
  grpc::SslServerCredentialsOptions o(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  o.pem_key_cert_pairs.push_back(pair);
  return grpc::SslServerCredentials(o);
}

}  // namespace livemig
