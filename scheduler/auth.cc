#include "scheduler/auth.h"

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace livemig::sched {

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
  std::map<std::string, Principal> fresh;
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
    if (token.size() < 16) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ":", n, ": token too short (at least 16 characters)"));
    }
    fresh[token] = Principal{name, role == "operator" ? Role::kOperator : Role::kReader};
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
  const std::string token = authorization.substr(prefix.size());
  Principal p;
  {
    absl::MutexLock l(&mu_);
    auto it = tokens_.find(token);
    if (it == tokens_.end()) {
      return absl::UnauthenticatedError(absl::StrCat(operation, ": the token is not valid"));
    }
    p = it->second;
  }
  if (mutating && p.role != Role::kOperator) {
    return absl::PermissionDeniedError(absl::StrCat("'", p.name,
                                                    "' has the reader role and may not call ",
                                                    operation, ": use an operator token"));
  }
  return p;
}

}  // namespace livemig::sched
