// Minimal structured logging to stderr (Abseil 20220623 has no absl/log):
//
//   LogInfo("migration=%s instance=%s step=pre_live_migration took %d ms", id, uuid, ms);
//
// One line per call: "2026-11-22T00:00:00.123Z I <component> <message>". Thread-safe.
// Log lines about a migration carry `migration=<id> instance=<uuid>` so that operators can grep
// one VM's story.
#ifndef LIVEMIG_COMMON_LOG_H_
#define LIVEMIG_COMMON_LOG_H_

#include <string>

#include "absl/strings/str_format.h"

namespace livemig {

enum class LogLevel { kInfo, kWarning, kError };

// The process's component name, printed on every line (e.g. "compute_agent[lab-a]").
void SetLogComponent(const std::string& component);
void LogLine(LogLevel level, const std::string& message);

template <typename... Args>
void LogInfo(const absl::FormatSpec<Args...>& fmt, const Args&... args) {
  LogLine(LogLevel::kInfo, absl::StrFormat(fmt, args...));
}
template <typename... Args>
void LogWarning(const absl::FormatSpec<Args...>& fmt, const Args&... args) {
  LogLine(LogLevel::kWarning, absl::StrFormat(fmt, args...));
}
template <typename... Args>
void LogError(const absl::FormatSpec<Args...>& fmt, const Args&... args) {
  LogLine(LogLevel::kError, absl::StrFormat(fmt, args...));
}

}  // namespace livemig

#endif  // LIVEMIG_COMMON_LOG_H_
