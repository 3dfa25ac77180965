// TokenStore: the token file's checks (length, the examples' placeholders, duplicates, the line
// named in every refusal), the constant-time lookup's answers, and Reload keeping the previous
// tokens when the new file is refused.
#include "scheduler/auth.h"

#include <catch2/catch.hpp>
#include <fstream>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "testing/run_command.h"

namespace livemig::sched {
namespace {

// 64 characters each, as `openssl rand -hex 32` makes them.
constexpr char kOp[] = "0f3a9c1e5b7d2468ace013579bdf2468ace013579bdf0f3a9c1e5b7d24680aaa";
constexpr char kReader[] = "1e5b7d24680f3a9cace013579bdf2468ace013579bdf0f3a9c1e5b7d24681bbb";
constexpr char kOther[] = "2d24680f3a9c1e5bace013579bdf2468ace013579bdf0f3a9c1e5b7d24682ccc";

std::string Dir() {
  static const std::string dir = testing::MakeTempDir("auth");
  return dir;
}

std::string Write(const std::string& name, const std::string& text) {
  const std::string path = absl::StrCat(Dir(), "/", name);
  std::ofstream(path) << text;
  return path;
}

std::string Bearer(const std::string& token) { return "Bearer " + token; }

TEST_CASE("a token shorter than 32 characters is refused, naming the file and line") {
  const std::string short_token(31, 'a');
  const std::string path =
      Write("short", absl::StrCat("# <token> <role> <name>\n", kOp, " operator alice\n",
                                  short_token, " reader bob\n"));
  auto store = TokenStore::Load(path);
  REQUIRE_FALSE(store.ok());
  const std::string msg(store.status().message());
  INFO(msg);
  CHECK(store.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(absl::StrContains(msg, absl::StrCat(path, ":3:")));
  CHECK(absl::StrContains(msg, "too short (31 characters, at least 32)"));
  CHECK(absl::StrContains(msg, "openssl rand -hex 32"));
  CHECK_FALSE(absl::StrContains(msg, short_token));  // the secret is not in the log

  // Exactly 32 is enough.
  REQUIRE(TokenStore::Load(Write("just", std::string(32, 'b') + " reader bob\n")).ok());
}

TEST_CASE("the examples' placeholder tokens are refused, in any case") {
  for (const char* placeholder : kPlaceholderTokens) {
    for (const std::string& token :
         {std::string(placeholder), absl::AsciiStrToLower(placeholder)}) {
      const std::string path =
          Write("placeholder", absl::StrCat(kOp, " operator alice\n", token, " operator ops\n"));
      auto store = TokenStore::Load(path);
      REQUIRE_FALSE(store.ok());
      const std::string msg(store.status().message());
      INFO(msg);
      CHECK(absl::StrContains(msg, absl::StrCat(path, ":2:")));
      CHECK(absl::StrContains(msg, "placeholder"));
      CHECK(absl::StrContains(msg, "openssl rand -hex 32"));
    }
  }
  // The token of deploy/k8s/secrets.example.yaml, as shipped.
  auto store = TokenStore::Load(Write("k8s", "    REPLACE-WITH-A-TOKEN operator ops-team\n"));
  REQUIRE_FALSE(store.ok());
  CHECK(absl::StrContains(store.status().message(), "REPLACE-WITH-A-TOKEN"));
}

TEST_CASE("the same token twice is refused, naming both lines") {
  const std::string path =
      Write("dup", absl::StrCat(kOp, " operator alice\n\n", kOp, " reader bob\n"));
  auto store = TokenStore::Load(path);
  REQUIRE_FALSE(store.ok());
  INFO(store.status().message());
  CHECK(absl::StrContains(store.status().message(), absl::StrCat(path, ":3:")));
  CHECK(absl::StrContains(store.status().message(), "line 1"));
}

TEST_CASE("the right token is accepted with its role; a wrong one of the same length is not") {
  auto store =
      TokenStore::Load(Write("good", absl::StrCat(kOp, " operator alice   # the on-call operator\n",
                                                  kReader, " reader dashboard\n")));
  REQUIRE(store.ok());
  TokenStore& s = **store;
  CHECK(s.enabled());

  auto op = s.Check(Bearer(kOp), /*mutating=*/true, "LiveMigrate");
  REQUIRE(op.ok());
  CHECK(op->name == "alice");
  CHECK(op->role == Role::kOperator);

  auto rd = s.Check(Bearer(kReader), /*mutating=*/false, "ListHosts");
  REQUIRE(rd.ok());
  CHECK(rd->name == "dashboard");
  CHECK(rd->role == Role::kReader);
  auto denied = s.Check(Bearer(kReader), /*mutating=*/true, "LiveMigrate");
  CHECK(denied.status().code() == absl::StatusCode::kPermissionDenied);

  // Same length, differing in the last character, in the first, or entirely.
  std::string last = kOp, first = kOp;
  last.back() = last.back() == 'a' ? 'b' : 'a';
  first.front() = first.front() == '0' ? '1' : '0';
  for (const std::string& wrong :
       {last, first, std::string(kOther), std::string(kOp) + "0", std::string(kOp).substr(1)}) {
    auto r = s.Check(Bearer(wrong), /*mutating=*/false, "ListHosts");
    CHECK(r.status().code() == absl::StatusCode::kUnauthenticated);
    CHECK(absl::StrContains(r.status().message(), "ListHosts: the token is not valid"));
  }
  CHECK(s.Check("", false, "ListHosts").status().code() == absl::StatusCode::kUnauthenticated);
  CHECK(s.Check("Bearer ", false, "ListHosts").status().code() ==
        absl::StatusCode::kUnauthenticated);
  CHECK(s.Check(kOp, false, "ListHosts").status().code() == absl::StatusCode::kUnauthenticated);
}

TEST_CASE("a reload with a bad file keeps the previous tokens; a good one replaces them") {
  const std::string path = Write("reload", absl::StrCat(kOp, " operator alice\n"));
  auto store = TokenStore::Load(path);
  REQUIRE(store.ok());
  TokenStore& s = **store;

  Write("reload", absl::StrCat(kReader, " reader dashboard\nshort-token reader bob\n"));
  const absl::Status bad = s.Reload();
  REQUIRE_FALSE(bad.ok());
  CHECK(absl::StrContains(bad.message(), absl::StrCat(path, ":2:")));
  CHECK(s.Check(Bearer(kOp), true, "LiveMigrate").ok());  // still the old file's tokens
  CHECK_FALSE(s.Check(Bearer(kReader), false, "ListHosts").ok());

  Write("reload", "REPLACE-WITH-ANOTHER-TOKEN reader grafana\n");
  CHECK_FALSE(s.Reload().ok());
  CHECK(s.Check(Bearer(kOp), true, "LiveMigrate").ok());

  Write("reload", absl::StrCat(kReader, " reader dashboard\n"));
  REQUIRE(s.Reload().ok());
  CHECK(s.Check(Bearer(kReader), false, "ListHosts").ok());
  CHECK(s.Check(Bearer(kOp), false, "ListHosts").status().code() ==
        absl::StatusCode::kUnauthenticated);
}

TEST_CASE("without a token file everyone is an anonymous operator") {
  auto store = TokenStore::Load("");
  REQUIRE(store.ok());
  CHECK_FALSE((*store)->enabled());
  auto p = (*store)->Check("", true, "LiveMigrate");
  REQUIRE(p.ok());
  CHECK(p->role == Role::kOperator);
}

}  // namespace
}  // namespace livemig::sched
