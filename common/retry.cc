// RetryPolicy (common/retry.h).
#include "common/retry.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace livemig {

bool RetryPolicy::Retryable(const absl::Status& s) const {
  return s.code() == absl::StatusCode::kUnavailable ||
         (retry_deadline_exceeded && s.code() == absl::StatusCode::kDeadlineExceeded);
}

absl::Duration RetryPolicy::Backoff(int attempt) const {
  const double factor = std::pow(multiplier, attempt);
  if (!std::isfinite(factor)) return max_backoff;
  return std::min(initial_backoff * factor, max_backoff);
}

std::string RetryPolicy::Describe() const {
  return absl::StrCat(max_attempts, " attempts, ", absl::FormatDuration(initial_backoff),
                      " backoff growing x", multiplier, " up to ",
                      absl::FormatDuration(max_backoff));
}

}  // namespace livemig
