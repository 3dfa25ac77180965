// Where cloudctl finds its scheduler and who it says it is: flags, then the environment, then a
// config file, then defaults.
//
//   server     --server, LIVEMIG_SERVER, `server = ...` in the config file,
//              default unix:/run/livemig/scheduler-api.sock
//   token      --token, LIVEMIG_TOKEN, `token = ...`; sent as "authorization: Bearer <token>"
//   requester  --requester, LIVEMIG_USER, `requester = ...`, $USER
//   timeout    --timeout, `timeout = ...`, default 30 (seconds, per call)
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
};

struct Settings {
  std::string server;         // a gRPC target: unix:/path or host:port
  std::string server_origin;  // where it came from, for error hints ("--server", ...)
  std::string token;          // empty: none
  std::string requester;      // empty: none
  double timeout_s = 30;      // deadline of each call
  std::string config_path;    // the config file read; empty when none
};

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
