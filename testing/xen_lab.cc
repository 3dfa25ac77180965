#include "testing/xen_lab.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "testing/run_command.h"

namespace livemig::testing {
namespace {
std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}
// The last line of a command's output (xenlab.sh image prints progress first).
std::string LastLine(const std::string& s) {
  std::string t = Trim(s);
  auto nl = t.rfind('\n');
  return nl == std::string::npos ? t : t.substr(nl + 1);
}
}  // namespace

std::string XenLabShPath() { return RunfilePath("integration_tests/xenlab/xenlab.sh"); }

absl::StatusOr<std::string> XenLab::Sh(const std::string& args) const {
  return RunCommand(absl::StrCat("bash ", XenLabShPath(), " ", args));
}

absl::StatusOr<std::string> XenLab::Image(const std::string& agent) {
  auto out = RunCommand(absl::StrCat("bash ", XenLabShPath(), " image --agent ", agent));
  if (!out.ok()) return out.status();
  return LastLine(*out);
}

absl::StatusOr<std::unique_ptr<XenLab>> XenLab::Up(const Options& o) {
  if (geteuid() != 0) return absl::FailedPreconditionError("the Xen lab needs root");
  const std::string sh = XenLabShPath();
  // Leftovers of killed runs (their owner is gone), then a fresh lab owned by this process.
  auto swept = RunCommand(absl::StrCat("bash ", sh, " sweep /tmp"));
  if (!swept.ok()) return swept.status();
  auto image = Image(o.agent);
  if (!image.ok()) return image.status();
  std::unique_ptr<XenLab> l(new XenLab(o.dir));  // tears down even a partial lab
  auto up = RunCommand(absl::StrCat("LAB_OWNER_PID=", getpid(), " bash ", sh, " up ", o.dir,
                                    " --image ", *image, " --agent ", o.agent, " --pki ", o.pki,
                                    o.xen_b.empty() ? "" : " --xen-b " + o.xen_b,
                                    o.volumes ? " --volumes" : ""));
  if (!up.ok()) return up.status();
  std::ifstream env(o.dir + "/lab.env");
  std::string line;
  while (std::getline(env, line)) {
    auto eq = line.find('=');
    if (eq != std::string::npos) l->env_[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return l;
}

XenLab::~XenLab() {
  for (const char* h : {"a", "b"}) KillAgent(h).IgnoreError();
  Sh("down " + dir_).IgnoreError();
}

std::string XenLab::Env(const std::string& key) const {
  auto it = env_.find(key);
  return it == env_.end() ? "" : it->second;
}

int XenLab::RegistryPort() const { return std::atoi(Env("REGISTRY").c_str()); }

absl::StatusOr<std::string> XenLab::Ssh(const std::string& h, const std::string& command) const {
  return Sh(absl::StrCat("ssh ", dir_, " ", h, " -- '", command, "'"));
}

absl::StatusOr<std::string> XenLab::Virsh(const std::string& h, const std::string& args) const {
  return Sh(absl::StrCat("virsh ", dir_, " ", h, " ", args));
}

absl::Status XenLab::StartAgent(const std::string& h, const std::string& extra_flags) {
  return Sh(absl::StrCat("agent-start ", dir_, " ", h, " ", extra_flags)).status();
}

absl::Status XenLab::KillAgent(const std::string& h, const std::string& signal) {
  return Sh(absl::StrCat("agent-kill ", dir_, " ", h, " ", signal)).status();
}

std::string XenLab::AgentLog(const std::string& h, int lines) const {
  auto out = RunCommand(
      absl::StrCat("tail -n ", lines, " ", dir_, "/share/logs/agent-", Name(h), ".log 2>&1"));
  return out.ok() ? *out : out.status().ToString();
}

absl::Status XenLab::StartGuest(const std::string& h, const std::string& name,
                                const std::string& uuid, const std::string& kind,
                                const std::string& disk) {
  return Sh(absl::StrCat("guest-start ", dir_, " ", h, " ", name, " ", uuid, " ", kind,
                         disk.empty() ? "" : " --disk " + disk))
      .status();
}

absl::StatusOr<long> XenLab::DiskRecord(const std::string& h, const std::string& dev) const {
  auto out = Sh(absl::StrCat("disk-record ", dir_, " ", h, " ", dev));
  if (!out.ok()) return out.status();
  std::vector<std::string> w = absl::StrSplit(Trim(*out), ' ', absl::SkipEmpty());
  long n = 0;
  if (w.size() != 3 || w[0] != "LMDISK" || !absl::SimpleAtoi(w[1], &n)) {
    return absl::DataLossError(
        absl::StrCat("sector 0 of ", dev, " on ", Name(h), " holds no whole record: '", *out, "'"));
  }
  return n;
}

absl::StatusOr<long> XenLab::DiskConsole(const std::string& name, int* errors) const {
  auto out = RunCommand(
      absl::StrCat("cat ", dir_, "/share/consoles-xen?/guest-", name,
                   ".log 2>/dev/null | tr -d '\\r' | awk '$1 == \"disk\" && $4 == \"ok\" "
                   "&& $2 > last { last = $2 } $1 == \"disk\" && $4 == \"ERR\" "
                   "{ e++ } END { printf \"%d %d\\n\", last, e }'"));
  if (!out.ok()) return out.status();
  std::vector<std::string> w = absl::StrSplit(Trim(*out), ' ', absl::SkipEmpty());
  long last = 0;
  int e = 0;
  if (w.size() != 2 || !absl::SimpleAtoi(w[0], &last) || !absl::SimpleAtoi(w[1], &e)) {
    return absl::InternalError(absl::StrCat("cannot read the consoles of ", name, ": ", *out));
  }
  if (errors != nullptr) *errors = e;
  return last;
}

absl::StatusOr<XenLab::Beat> XenLab::Heartbeat(const std::string& name, long since) const {
  auto out = Sh(absl::StrCat("heartbeat ", dir_, " ", name, " ", since));
  if (!out.ok()) return out.status();
  Beat b;
  for (absl::string_view kv : absl::StrSplit(Trim(*out), ' ')) {
    std::pair<std::string, std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    const long v = std::atol(p.second.c_str());
    if (p.first == "boots") b.boots = static_cast<int>(v);
    if (p.first == "last") b.last = v;
    if (p.first == "gaps") b.gaps = static_cast<int>(v);
    if (p.first == "max_pause_ms") b.max_pause_ms = v;
    if (p.first == "ticks") b.ticks = v;
  }
  return b;
}

absl::StatusOr<std::vector<std::string>> XenLab::Where(const std::string& name) const {
  auto out = Sh(absl::StrCat("where ", dir_, " ", name));
  if (!out.ok()) return out.status();
  std::vector<std::string> hosts =
      absl::StrSplit(Trim(*out), absl::ByAnyChar(" \n"), absl::SkipEmpty());
  return hosts;
}

}  // namespace livemig::testing
