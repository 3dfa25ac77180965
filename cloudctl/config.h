// Where cloudctl finds its scheduler and who it says it is: flags, then the environment, then a
// config file, then defaults.
//
//   server     --server, LIVEMIG_SERVER, `server = ...` in the config file,
//              default unix:/run/livemig/scheduler-api.sock
//   token      --token, LIVEMIG_TOKEN, `token = ...`; sent as "authorization: Bearer <token>"
//   requester  --requester, LIVEMIG_USER, `requester = ...`, $USER
//   timeout    --timeout, `timeout = ...`, default 30 (seconds, per call)
//   ca         --ca, LIVEMIG_CA, `ca = ...`: a PEM file of the CA(s) that issued the scheduler's
//              API certificate (deploy/pki.sh issue-server). Given, cloudctl speaks TLS to a
//              HOST:PORT server and verifies its certificate; without it a HOST:PORT server is
//              spoken to in plaintext (the scheduler allows that on loopback only). A unix:
//              server never uses TLS (the CA file is then not read).
//   server name --server-name, LIVEMIG_SERVER_NAME, `server-name = ...`: the name the
//              certificate must hold (default: the host part of the server address)
//
// The config file is --config, else $XDG_CONFIG_HOME/livemig/cloudctl.conf, else
// ~/.config/livemig/cloudctl.conf (a missing default file is fine; a missing --config is not).
// Its format: `key = value` lines, `#` comments, values optionally in double quotes.
#ifndef LIVEMIG_CLOUDCTL_CONFIG_H_
#define LIVEMIG_CLOUDCTL_CONFIG_H_

#include <functional>
#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace livemig::cloudctl {

inline constexpr char kDefaultServer[] = "unix:/run/livemig/scheduler-api.sock";
// The longest per-call deadline (--timeout, `timeout = ...`), in seconds.
inline constexpr double kMaxTimeoutS = 86400;

// What the command line said (empty / nullopt: not given).
struct Flags {
  std::string server;
  std::string config;
  std::string token;
  std::string requester;
  std::optional<double> timeout_s;
  std::string ca;
  std::string server_name;
};

struct Settings {
  std::string server;         // a gRPC target: unix:/path or host:port
  std::string server_origin;  // where it came from, for error hints ("--server", ...)
  std::string token;          // empty: none
  std::string requester;      // empty: none
  double timeout_s = 30;      // deadline of each call
  std::string config_path;    // the config file read; empty when none
  // TLS (only for a HOST:PORT server and a CA given): the CA's path, where it came from ("--ca",
  // "LIVEMIG_CA", the config file) and its PEM text. Empty ca_pem: plaintext.
  std::string ca_path, ca_origin, ca_pem;
  std::string server_name;  // --server-name: checked instead of the address's host; may be empty
  bool tls() const { return !ca_pem.empty(); }
};

// The host part of a gRPC target ("sched.example.net:8770" -> "sched.example.net",
// "[::1]:8770" -> "::1", "dns:///h:1" -> "h"): the name a TLS server's certificate is checked
// against unless --server-name says otherwise.
std::string HostOfTarget(const std::string& target);

// Parses a config file's text; InvalidArgument naming the line for malformed lines or unknown
// keys.
absl::StatusOr<std::map<std::string, std::string>> ParseConfig(const std::string& text,
                                                               const std::string& path);

// Resolves every setting. `getenv` reads the environment (injected for tests).
absl::StatusOr<Settings> ResolveSettings(const Flags& flags,
                                         const std::function<const char*(const char*)>& getenv);

// "/run/x.sock" -> "unix:/run/x.sock"; anything else unchanged.
std::string NormalizeTarget(const std::string& address);

}  // namespace livemig::cloudctl

#endif  // LIVEMIG_CLOUDCTL_CONFIG_H_
