#include "testing/pg_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
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

// A port on 127.0.0.1 free now (the kernel's choice).
absl::StatusOr<int> FreeTcpPort() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError("socket failed");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  close(fd);
  if (!ok) return absl::InternalError("no free TCP port on 127.0.0.1");
  return ntohs(a.sin_port);
}

// Replaces the value of `key` (a " key=value" or leading "key=value" pair) in `conninfo`.
std::string ReplaceKey(std::string conninfo, const std::string& key, const std::string& value) {
  size_t pos = conninfo.rfind(" " + key + "=");
  pos = pos == std::string::npos ? (conninfo.rfind(key + "=", 0) == 0 ? 0 : pos) : pos + 1;
  if (pos == std::string::npos) return absl::StrCat(conninfo, " ", key, "=", value);
  size_t end = conninfo.find(' ', pos);
  if (end == std::string::npos) end = conninfo.size();
  conninfo.replace(pos, end - pos, absl::StrCat(key, "=", value));
  return conninfo;
}
}  // namespace

std::string PgctlPath() { return RunfilePath("deploy/pgctl.sh"); }

std::string PgServer::OverTcp(const std::string& conninfo, int port) {
  return ReplaceKey(ReplaceKey(conninfo, "host", "127.0.0.1"), "port", absl::StrCat(port));
}

std::string PgServer::Env() const {
  if (tcp_port_ == 0) return "";
  // pgctl.sh passes PGCTL_EXTRA_OPTS after its own settings, so these win: TCP on 127.0.0.1,
  // and the port (which also names the Unix socket: the connection strings say it).
  const char* extra = getenv("PGCTL_EXTRA_OPTS");
  return absl::StrCat("PGCTL_EXTRA_OPTS='", extra ? extra : "",
                      " -c listen_addresses=127.0.0.1 -c port=", tcp_port_, "' ");
}

absl::StatusOr<std::unique_ptr<PgServer>> PgServer::Start(bool tcp) {
  const std::string pgctl = PgctlPath();
  const char* tmp = getenv("LIVEMIG_PG_TMPDIR");
  const std::string parent = tmp ? tmp : "/tmp";
  auto swept = RunCommand(absl::StrCat(pgctl, " sweep ", parent, " livemig-test-pg-"));
  if (!swept.ok()) return swept.status();
  int port = 0;
  if (tcp) {
    auto p = FreeTcpPort();
    if (!p.ok()) return p.status();
    port = *p;
  }
  std::string templ = absl::StrCat(parent, "/livemig-test-pg-", getpid(), "-XXXXXX");
  if (mkdtemp(templ.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", templ, " failed"));
  }
  std::unique_ptr<PgServer> server(new PgServer(templ, "", port));
  auto out = RunCommand(absl::StrCat(server->Env(), "OWNER_PID=", getpid(), " ", pgctl, " start ",
                                     templ, " --watch"));
  if (!out.ok()) {
    server.reset();  // destroys it
    return out.status();
  }
  server->conninfo_ = LastLine(*out);
  if (tcp) server->conninfo_ = ReplaceKey(server->conninfo_, "port", absl::StrCat(port));
  return server;
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
  return RunCommand(absl::StrCat(Env(), "OWNER_PID=", getpid(), " ", PgctlPath(), " start ", dir_))
      .status();
}

}  // namespace livemig::testing
