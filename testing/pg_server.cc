#include "testing/pg_server.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace livemig::testing {
namespace {
std::string LastLine(std::string s) {
  while (!s.empty() && s.back() == '\n') s.pop_back();
  auto pos = s.rfind('\n');
  return pos == std::string::npos ? s : s.substr(pos + 1);
}
}  // namespace

std::string PgctlPath() { return RunfilePath("deploy/pgctl.sh"); }

absl::StatusOr<std::unique_ptr<PgServer>> PgServer::Start() {
  const std::string pgctl = PgctlPath();
  const char* tmp = getenv("LIVEMIG_PG_TMPDIR");
  const std::string parent = tmp ? tmp : "/tmp";
  auto swept = RunCommand(absl::StrCat(pgctl, " sweep ", parent, " livemig-test-pg-"));
  if (!swept.ok()) return swept.status();
  std::string templ = absl::StrCat(parent, "/livemig-test-pg-", getpid(), "-XXXXXX");
  if (mkdtemp(templ.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", templ, " failed"));
  }
  auto out =
      RunCommand(absl::StrCat("OWNER_PID=", getpid(), " ", pgctl, " start ", templ, " --watch"));
  if (!out.ok()) {
    RunCommand(absl::StrCat(pgctl, " destroy ", templ)).IgnoreError();
    return out.status();
  }
  return std::unique_ptr<PgServer>(new PgServer(templ, LastLine(*out)));
}

PgServer::~PgServer() { RunCommand(absl::StrCat(PgctlPath(), " destroy ", dir_)).IgnoreError(); }

absl::StatusOr<std::string> PgServer::CreateDatabase() {
  std::string name = absl::StrCat("test_", getpid(), "_", next_db_++);
  auto out = RunCommand(absl::StrCat("psql -X -q -v ON_ERROR_STOP=1 '", conninfo_,
                                     "' -c 'CREATE DATABASE ", name, "'"));
  if (!out.ok()) return out.status();
  std::string c = conninfo_;
  auto pos = c.find("dbname=postgres");
  c.replace(pos, std::string("dbname=postgres").size(), "dbname=" + name);
  return c;
}

absl::Status PgServer::Stop() {
  return RunCommand(absl::StrCat(PgctlPath(), " stop ", dir_)).status();
}

absl::Status PgServer::Restart() {
  return RunCommand(absl::StrCat("OWNER_PID=", getpid(), " ", PgctlPath(), " start ", dir_))
      .status();
}

}  // namespace livemig::testing
