#include "common/tls.h"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

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

namespace {

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return static_cast<bool>(in) || in.eof();
}

bool WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  return static_cast<bool>(out);
}

// A certificate (PEM, the leaf first) and its private key, read and checked: both parse and
// the key is the certificate's. InvalidArgument naming the file otherwise.
absl::Status ReadApiPair(const std::string& cert_pem, const std::string& key_pem, std::string* cert,
                         std::string* key) {
  if (!ReadFile(cert_pem, cert)) return absl::InvalidArgumentError("cannot read " + cert_pem);
  if (!ReadFile(key_pem, key)) return absl::InvalidArgumentError("cannot read " + key_pem);
  BIO* cb = BIO_new_mem_buf(cert->data(), static_cast<int>(cert->size()));
  BIO* kb = BIO_new_mem_buf(key->data(), static_cast<int>(key->size()));
  X509* x = PEM_read_bio_X509(cb, nullptr, nullptr, nullptr);
  EVP_PKEY* k = PEM_read_bio_PrivateKey(kb, nullptr, nullptr, nullptr);
  const bool match = x && k && X509_check_private_key(x, k) == 1;
  X509_free(x);
  EVP_PKEY_free(k);
  BIO_free(cb);
  BIO_free(kb);
  if (!x) return absl::InvalidArgumentError(cert_pem + " is not a PEM certificate");
  if (!k) return absl::InvalidArgumentError(key_pem + " is not a PEM private key");
  if (!match) {
    return absl::InvalidArgumentError(
        absl::StrCat(key_pem, " is not the private key of the certificate ", cert_pem));
  }
  return absl::OkStatus();
}

// What identifies a file's version on disk (a renewal written in place or renamed over it
// changes one of these); "" when it cannot be looked at.
std::string Stamp(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return "";
  return absl::StrCat(st.st_dev, ":", st.st_ino, ":", st.st_size, ":", st.st_mtim.tv_sec, ".",
                      st.st_mtim.tv_nsec, ":", st.st_ctim.tv_sec, ".", st.st_ctim.tv_nsec);
}

}  // namespace

// gRPC 1.51's file watcher hands whatever it reads to the TLS stack: a half-written renewal
// (pki.sh writes the key, then the certificate) or a broken file would stop every handshake.
// So it watches a private copy instead (<dir>/current/{cert,key}.pem, `current` a symlink
// swapped at once to a new version directory), which this class replaces only with a pair
// that parses and matches, looking at the operator's files every second.
class ApiServerTls::Mirror {
 public:
  Mirror(std::string cert, std::string key, std::string dir)
      : cert_(std::move(cert)), key_(std::move(key)), dir_(std::move(dir)) {}
  ~Mirror() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  std::string cert_path() const { return dir_ + "/current/cert.pem"; }
  std::string key_path() const { return dir_ + "/current/key.pem"; }

  absl::Status Publish(const std::string& cert, const std::string& key) {
    const std::string version = absl::StrCat("v", ++version_);
    const std::string vdir = dir_ + "/" + version;
    if (mkdir(vdir.c_str(), 0700) != 0 || !WriteFile(vdir + "/key.pem", key) ||
        !WriteFile(vdir + "/cert.pem", cert)) {
      return absl::InternalError(absl::StrCat("cannot write ", vdir, ": ", strerror(errno)));
    }
    const std::string link = dir_ + "/current.new";
    unlink(link.c_str());
    if (symlink(version.c_str(), link.c_str()) != 0 ||
        rename(link.c_str(), (dir_ + "/current").c_str()) != 0) {
      return absl::InternalError(
          absl::StrCat("cannot switch ", dir_, "/current: ", strerror(errno)));
    }
    // The version before the previous one: the watcher may still be reading the previous one.
    std::error_code ignored;
    if (version_ > 2) {
      std::filesystem::remove_all(absl::StrCat(dir_, "/v", version_ - 2), ignored);
    }
    return absl::OkStatus();
  }

  void StartWatching() {
    cert_stamp_ = Stamp(cert_);
    key_stamp_ = Stamp(key_);
    thread_ = std::thread([this] { Loop(); });
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> l(mu_);
    while (!cv_.wait_for(l, std::chrono::seconds(1), [this] { return stop_; })) {
      const std::string cs = Stamp(cert_), ks = Stamp(key_);
      if (cs == cert_stamp_ && ks == key_stamp_) continue;
      cert_stamp_ = cs;
      key_stamp_ = ks;
      std::string cert, key;
      absl::Status s = ReadApiPair(cert_, key_, &cert, &key);
      if (s.ok()) s = Publish(cert, key);
      if (s.ok()) {
        LogInfo("gRPC API: TLS certificate %s (key %s) changed on disk: served from now on", cert_,
                key_);
      } else {
        LogError(
            "gRPC API: the TLS certificate changed on disk but cannot be used; the previous "
            "one is still served: %s",
            s.message());
      }
    }
  }

  const std::string cert_, key_, dir_;
  int version_ = 0;
  std::string cert_stamp_, key_stamp_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

ApiServerTls::ApiServerTls() = default;
ApiServerTls::~ApiServerTls() = default;

absl::StatusOr<std::unique_ptr<ApiServerTls>> MakeApiServerCredentials(const std::string& cert_pem,
                                                                       const std::string& key_pem,
                                                                       unsigned int refresh_s) {
  std::string cert, key;
  if (auto s = ReadApiPair(cert_pem, key_pem, &cert, &key); !s.ok()) return s;
  auto out = std::unique_ptr<ApiServerTls>(new ApiServerTls());
  std::string watched_cert = cert_pem, watched_key = key_pem;
  // The private copy's directory: systemd's RuntimeDirectory (the first), else $TMPDIR or /tmp.
  std::string base = "/tmp";
  if (const char* r = getenv("RUNTIME_DIRECTORY"); r && *r) {
    base = std::string(r).substr(0, std::string(r).find(':'));
  } else if (const char* t = getenv("TMPDIR"); t && *t) {
    base = t;
  }
  std::string templ = base + "/livemig-api-tls-XXXXXX";
  if (mkdtemp(templ.data()) != nullptr) {
    auto mirror = std::make_unique<ApiServerTls::Mirror>(cert_pem, key_pem, templ);
    if (auto s = mirror->Publish(cert, key); !s.ok()) return s;
    watched_cert = mirror->cert_path();
    watched_key = mirror->key_path();
    mirror->StartWatching();
    out->mirror_ = std::move(mirror);
  } else {
    LogWarning(
        "gRPC API: no private directory for a checked copy of the TLS certificate (%s: "
        "%s): gRPC watches %s and %s directly, so replace them together and atomically "
        "(a rename, as Kubernetes does for a Secret)",
        base, strerror(errno), cert_pem, key_pem);
  }
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      watched_key, watched_cert, refresh_s);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  out->credentials_ = grpc::experimental::TlsServerCredentials(options);
  return out;
}

}  // namespace livemig
