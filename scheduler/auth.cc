#include "scheduler/auth.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace livemig::sched {
namespace {

std::array<uint8_t, 32> Sha256(const std::string& text) {
  static_assert(SHA256_DIGEST_LENGTH == 32);
  std::array<uint8_t, 32> d;
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), d.data());
  return d;
}

constexpr char kGenerateHint[] =
    "generate one with `openssl rand -hex 32` (or deploy/pki.sh token)";

}  // namespace

absl::StatusOr<std::unique_ptr<TokenStore>> TokenStore::Load(const std::string& path) {
  auto store = std::unique_ptr<TokenStore>(new TokenStore(path));
  if (!path.empty()) {
    absl::Status s = store->Reload();
    if (!s.ok()) return s;
  }
  return store;
}

absl::Status TokenStore::Reload() {
  std::ifstream in(path_);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read the token file ", path_));
  }
  std::vector<Entry> fresh;
  std::vector<int> lines;  // where each entry of `fresh` was read
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    auto hash = line.find('#');
    if (hash != std::string::npos) line = line.substr(0, hash);
    std::istringstream fields(line);
    std::string token, role, name;
    if (!(fields >> token)) continue;
    if (!(fields >> role >> name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          path_, ":", n, ": expected '<token> <role> <name>' (role operator or reader)"));
    }
    if (role != "operator" && role != "reader") {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ":", n, ": unknown role '", role, "' (use operator or reader)"));
    }
    // The messages never show the token itself (the file is a secret; the log is not).
    for (const char* placeholder : kPlaceholderTokens) {
      if (absl::EqualsIgnoreCase(token, placeholder)) {
        return absl::InvalidArgumentError(absl::StrCat(
            path_, ":", n, ": the token is the placeholder '", placeholder,
            "' of the examples, not a secret: replace it with a real token; ", kGenerateHint));
      }
    }
    if (token.size() < kMinTokenLength) {
      return absl::InvalidArgumentError(absl::StrCat(path_, ":", n, ": token too short (",
                                                     token.size(), " characters, at least ",
                                                     kMinTokenLength, "): ", kGenerateHint));
    }
    Entry e{Sha256(token), Principal{name, role == "operator" ? Role::kOperator : Role::kReader}};
    for (size_t i = 0; i < fresh.size(); ++i) {
      if (fresh[i].digest == e.digest) {
        return absl::InvalidArgumentError(
            absl::StrCat(path_, ":", n, ": the same token as on line ", lines[i],
                         ": give every identity a token of its own; ", kGenerateHint));
      }
    }
    fresh.push_back(std::move(e));
    lines.push_back(n);
  }
  if (fresh.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("the token file ", path_, " has no token"));
  }
  absl::MutexLock l(&mu_);
  tokens_.swap(fresh);
  return absl::OkStatus();
}

absl::StatusOr<Principal> TokenStore::Check(const std::string& authorization, bool mutating,
                                            const std::string& operation) const {
  if (path_.empty()) return Principal{"anonymous", Role::kOperator};
  const std::string prefix = "Bearer ";
  if (authorization.rfind(prefix, 0) != 0 || authorization.size() == prefix.size()) {
    return absl::UnauthenticatedError(
        absl::StrCat(operation,
                     " needs a bearer token (header 'Authorization: Bearer <token>'; cloudctl: "
                     "--token or LIVEMIG_TOKEN)"));
  }
  const Digest presented = Sha256(authorization.substr(prefix.size()));
  Principal p;
  bool found = false;
  {
    absl::MutexLock l(&mu_);
    // Every entry is compared, in constant time, whatever matched before.
    for (const Entry& e : tokens_) {
      const bool match = CRYPTO_memcmp(e.digest.data(), presented.data(), presented.size()) == 0;
      if (match) p = e.principal;
      found |= match;
    }
  }
  if (!found) {
    return absl::UnauthenticatedError(absl::StrCat(operation, ": the token is not valid"));
  }
  if (mutating && p.role != Role::kOperator) {
    return absl::PermissionDeniedError(absl::StrCat("'", p.name,
                                                    "' has the reader role and may not call ",
                                                    operation, ": use an operator token"));
  }
  return p;
}

}  // namespace livemig::sched
