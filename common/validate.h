// The syntax rules for what callers name, in one place for every layer (the REST and Nova
// parsers, cloudctl, the stores): instance UUIDs, host names, request ids, evacuation width.
// Header-only, so the fuzz targets compile it with clang without Bazel.
#ifndef LIVEMIG_COMMON_VALIDATE_H_
#define LIVEMIG_COMMON_VALIDATE_H_

#include <cstddef>
#include <cstdint>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"

namespace livemig {

// 8-4-4-4-12 hexadecimal digits (either case).
inline bool IsValidUuid(absl::string_view s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-') return false;
    } else if (!absl::ascii_isxdigit(static_cast<unsigned char>(s[i]))) {
      return false;
    }
  }
  return true;
}

// A letter or digit, then letters, digits, '.', '_' or '-'; at most 253 characters.
inline bool IsValidHostname(absl::string_view s) {
  if (s.empty() || s.size() > 253 || !absl::ascii_isalnum(static_cast<unsigned char>(s[0]))) {
    return false;
  }
  for (char c : s) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return false;
    }
  }
  return true;
}

// Names no host may take (case-insensitive): the scheduler's identity, which the agents'
// allow-lists name, so a host certificate or report with it could drive every agent. The same
// list as RESERVED_HOST_NAMES in deploy/pki.sh (which refuses to issue host certificates for them).
inline bool IsReservedHostname(absl::string_view s) {
  for (absl::string_view r : {"scheduler", "livemig-scheduler", "api", "ca"}) {
    if (absl::EqualsIgnoreCase(s, r)) return true;
  }
  return false;
}

// A caller's idempotency key: 1..128 printable ASCII characters.
inline constexpr size_t kMaxRequestIdLength = 128;
inline bool IsValidRequestId(absl::string_view s) {
  if (s.empty() || s.size() > kMaxRequestIdLength) return false;
  for (char c : s) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

// An evacuation live-migrates at most this many instances at once (max_parallel).
inline constexpr uint32_t kMaxEvacuationParallel = 100;

}  // namespace livemig

#endif  // LIVEMIG_COMMON_VALIDATE_H_
