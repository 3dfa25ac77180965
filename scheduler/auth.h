// API authentication: bearer tokens from a token file, with two roles. `operator` may migrate,
// abort, force-complete, disable/enable hosts and evacuate; `reader` may only look.
//
// Token file: one token per line, "<token> <role> <name>", '#' starts a comment. Reloaded on
// SIGHUP (Reload); a broken file keeps the previous tokens and reports why. A token must have at
// least kMinTokenLength characters and must not be a placeholder of the examples
// (kPlaceholderTokens); a token may appear once.
//
// Only SHA-256 digests of the tokens are kept, and Check compares the presented token's digest
// with every entry in constant time (CRYPTO_memcmp, no early exit), so the time an answer takes
// says nothing about how much of a token was right.
#ifndef LIVEMIG_SCHEDULER_AUTH_H_
#define LIVEMIG_SCHEDULER_AUTH_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace livemig::sched {

enum class Role { kReader, kOperator };

struct Principal {
  std::string name;
  Role role = Role::kReader;
};

// The shortest token the token file may hold (`openssl rand -hex 32` makes 64 characters).
inline constexpr size_t kMinTokenLength = 32;

// The placeholder tokens the repository's examples show (deploy/k8s/secrets.example.yaml, the
// READMEs, api/NOVA.md): refused, compared case-insensitively, so that a copied example never
// becomes a working credential. Keep this list in step with the examples.
inline constexpr const char* kPlaceholderTokens[] = {
    "REPLACE-WITH-A-TOKEN",        // deploy/k8s/secrets.example.yaml (operator)
    "REPLACE-WITH-ANOTHER-TOKEN",  // deploy/k8s/secrets.example.yaml (reader)
    "REPLACE",                     // deploy/k8s/secrets.example.yaml (the database password)
    "<token>",                     // README.md, api/NOVA.md, the token file's syntax line
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
  using Digest = std::array<uint8_t, 32>;  // SHA-256
  struct Entry {
    Digest digest;
    Principal principal;
  };

  explicit TokenStore(std::string path) : path_(std::move(path)) {}
  const std::string path_;
  mutable absl::Mutex mu_;
  std::vector<Entry> tokens_ ABSL_GUARDED_BY(mu_);
};

}  // namespace livemig::sched

#endif  // LIVEMIG_SCHEDULER_AUTH_H_
