#include "common/log.h"

#include <cstdio>
#include <mutex>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace livemig {
namespace {
std::mutex& Mu() {
  static std::mutex* mu = new std::mutex;
  return *mu;
}
std::string& Component() {
  static std::string* c = new std::string("livemig");
  return *c;
}
}  // namespace

void SetLogComponent(const std::string& component) {
  std::lock_guard<std::mutex> l(Mu());
  Component() = component;
}

void LogLine(LogLevel level, const std::string& message) {
  const char tag = level == LogLevel::kInfo ? 'I' : level == LogLevel::kWarning ? 'W' : 'E';
  const std::string ts = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
  std::lock_guard<std::mutex> l(Mu());
  std::fprintf(stderr, "%s %c %s %s\n", ts.c_str(), tag, Component().c_str(), message.c_str());
  std::fflush(stderr);
}

}  // namespace livemig
