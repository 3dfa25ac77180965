// API authentication: bearer tokens from a token file, with two roles. `operator` may migrate,
// abort, force-complete, disable/enable hosts and evacuate; `reader` may only look.
//
// Token file: one token per line, "<token> <role> <name>", '#' starts a comment. Reloaded on
// SIGHUP (Reload); a broken file keeps the previous tokens and reports why.
#ifndef LIVEMIG_SCHEDULER_AUTH_H_
#define LIVEMIG_SCHEDULER_AUTH_H_

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace livemig::sched {

enum class Role { kReader, kOperator };

struct Principal {
  std::string name;
  Role role = Role::kReader;
};

class TokenStore {
 public:
  // `path` empty: authentication is off (development only): everyone is an anonymous operator.
  static absl::StatusOr<std::unique_ptr<TokenStore>> Load(const std::string& path);
  absl::Status Reload();
  bool enabled() const { return !path_.empty(); }

  // `authorization` is the header's value ("Bearer <token>"). Unauthenticated without a valid
  // token; PermissionDenied when a reader calls a mutating operation.
  absl::StatusOr<Principal> Check(const std::string& authorization, bool mutating,
                                  const std::string& operation) const;

 private:
  explicit TokenStore(std::string path) : path_(std::move(path)) {}
  const std::string path_;
  mutable absl::Mutex mu_;
  std::map<std::string, Principal> tokens_ ABSL_GUARDED_BY(mu_);
};

}  // namespace livemig::sched

#endif  // LIVEMIG_SCHEDULER_AUTH_H_
