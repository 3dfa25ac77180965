#include "common/test_hooks.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

namespace livemig {
namespace {

std::mutex name_mu;
std::string& ProcessName() {
  static std::string name = "process";
  return name;
}

const char* HookDir() {
  static const char* dir = [] {
    const char* d = std::getenv("LIVEMIG_TEST_HOOK_DIR");
    return (d != nullptr && *d != '\0') ? d : nullptr;
  }();
  return dir;
}

bool Exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

std::string ReadTrimmed(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

void Append(const std::string& path, const std::string& line) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return;
  const std::string l = line + "\n";
  (void)!write(fd, l.data(), l.size());  // one write: lines from processes do not interleave
  close(fd);
}

}  // namespace

void SetTestPointProcess(const std::string& name) {
  std::lock_guard<std::mutex> l(name_mu);
  ProcessName() = name;
}

bool TestHooksEnabled() { return HookDir() != nullptr; }

void TestPoint(const std::string& point) {
  const char* dir = HookDir();
  if (dir == nullptr) return;
  std::string full;
  {
    std::lock_guard<std::mutex> l(name_mu);
    full = ProcessName() + ":" + point;
  }
  const std::string d(dir);
  Append(d + "/points.log", full);
  const std::string arm = d + "/arm";
  if (!Exists(arm) || ReadTrimmed(arm) != full) return;
  const std::string taken = d + "/arm.taken." + std::to_string(getpid());
  if (std::rename(arm.c_str(), taken.c_str()) != 0) return;  // another caller won
  std::remove(taken.c_str());
  {
    const std::string tmp = d + "/paused.tmp." + std::to_string(getpid());
    std::ofstream(tmp) << full << " " << getpid() << "\n";
    std::rename(tmp.c_str(), (d + "/paused").c_str());
  }
  std::fprintf(stderr, "TEST HOOK: paused at %s (pid %d); waiting for %s/resume\n", full.c_str(),
               getpid(), dir);
  const std::string resume = d + "/resume";
  while (!Exists(resume)) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::remove(resume.c_str());
  std::remove((d + "/paused").c_str());
  std::fprintf(stderr, "TEST HOOK: resumed at %s\n", full.c_str());
}

}  // namespace livemig
