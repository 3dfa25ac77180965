#include "testing/lab.h"

#include <unistd.h>

#include <cstdlib>
#include <sstream>

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
}  // namespace

std::string LabShPath() { return RunfilePath("integration_tests/lab/lab.sh"); }

absl::StatusOr<std::string> Lab::LabSh(const std::string& args) const {
  return RunCommand(absl::StrCat("bash ", LabShPath(), " ", args));
}

absl::StatusOr<std::unique_ptr<Lab>> Lab::Up(const std::string& extra_args) {
  if (geteuid() != 0) return absl::FailedPreconditionError("the lab needs root");
  const std::string lab = LabShPath();
  // Leftovers of killed runs (their owner is gone), then a fresh lab owned by this process.
  auto swept = RunCommand(absl::StrCat("bash ", lab, " sweep --remove /tmp"));
  if (!swept.ok()) return swept.status();
  std::string dir = "/tmp/livemig-lab-XXXXXX";
  if (mkdtemp(dir.data()) == nullptr) return absl::InternalError("mkdtemp failed");
  RunCommand(absl::StrCat("touch ", dir, "/.sweep-remove")).IgnoreError();
  auto up = RunCommand(
      absl::StrCat("LAB_OWNER_PID=", getpid(), " bash ", lab, " up ", dir, " ", extra_args));
  std::unique_ptr<Lab> l(new Lab(dir));  // tears down even a partial lab
  if (!up.ok()) return up.status();
  auto build = l->LabSh("guest-build " + dir);
  if (!build.ok()) return build.status();
  for (const char* h : {"a", "b"}) {
    auto uri = l->LabSh(absl::StrCat("uri ", dir, " ", h));
    auto peer = l->LabSh(absl::StrCat("peer-uri ", dir, " ", h));
    auto ip = l->LabSh(absl::StrCat("ip ", dir, " ", h));
    if (!uri.ok()) return uri.status();
    if (!peer.ok()) return peer.status();
    if (!ip.ok()) return ip.status();
    (std::string(h) == "a" ? l->uri_a_ : l->uri_b_) = Trim(*uri);
    (std::string(h) == "a" ? l->peer_a_ : l->peer_b_) = Trim(*peer);
    (std::string(h) == "a" ? l->ip_a_ : l->ip_b_) = Trim(*ip);
  }
  return l;
}

Lab::~Lab() {
  LabSh("down " + dir_).IgnoreError();
  RunCommand("rm -rf " + dir_).IgnoreError();
}

std::string Lab::Uri(const std::string& h) const { return h == "a" ? uri_a_ : uri_b_; }
std::string Lab::PeerUri(const std::string& h) const { return h == "a" ? peer_a_ : peer_b_; }
std::string Lab::Ip(const std::string& h) const { return h == "a" ? ip_a_ : ip_b_; }

std::string Lab::ExecPrefix(const std::string& host) const {
  return absl::StrCat("bash ", LabShPath(), " exec ", dir_, " ", host, " --");
}

absl::Status Lab::StartGuest(const std::string& host, const std::string& name,
                             const std::string& uuid, const std::string& extra_args) {
  return LabSh(absl::StrCat("guest-start ", dir_, " ", host, " ", name, " --uuid ", uuid, " ",
                            extra_args))
      .status();
}

absl::StatusOr<Lab::Beat> Lab::Heartbeat(const std::string& name) {
  auto out = LabSh(absl::StrCat("heartbeat ", dir_, " ", name));
  if (!out.ok()) return out.status();
  Beat b;
  for (absl::string_view kv : absl::StrSplit(Trim(*out), ' ')) {
    std::pair<std::string, std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    if (p.first == "boots") b.boots = std::atoi(p.second.c_str());
    if (p.first == "last") b.last = std::atol(p.second.c_str());
    if (p.first == "corrupt") b.corrupt = std::atoi(p.second.c_str());
  }
  return b;
}

absl::StatusOr<std::vector<std::string>> Lab::Where(const std::string& name) {
  auto out = LabSh(absl::StrCat("where ", dir_, " ", name));
  if (!out.ok()) return out.status();
  std::vector<std::string> hosts =
      absl::StrSplit(Trim(*out), absl::ByAnyChar(" \n"), absl::SkipEmpty());
  return hosts;
}

}  // namespace livemig::testing
