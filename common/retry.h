// The one retry policy of the scheduler's calls to its agents (docs/DESIGN.md § Retries).
//
// Every agent RPC is idempotent (keyed by the migration id), so a call that failed because the
// agent could not be reached (Unavailable) or did not answer in time (DeadlineExceeded) may be
// made again. Retries happen in ONE layer, the scheduler's state machines and dry runs
// (scheduler/orchestrator.h RetryAgentCall, through RetryCall); the agent client makes one attempt
// per call. Before, the orchestrator's retries wrapped the client's, and a step whose agent was
// down was tried 12 times.
#ifndef LIVEMIG_COMMON_RETRY_H_
#define LIVEMIG_COMMON_RETRY_H_

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/log.h"

namespace livemig {

struct RetryPolicy {
  // Attempts of one call, the first included: Unavailable from a restarting agent is tried
  // over initial_backoff * (1 + 2 + 4) = 1.75 s with the defaults.
  int max_attempts = 4;
  absl::Duration initial_backoff = absl::Milliseconds(250);
  double multiplier = 2.0;
  absl::Duration max_backoff = absl::Seconds(10);
  // DeadlineExceeded is retried too (a step's agent may have been slow once); a dry run, which
  // answers an operator now, clears this: an agent silent for a whole call is reported, not
  // waited for again.
  bool retry_deadline_exceeded = true;

  // Whether a failure may be retried: Unavailable, and DeadlineExceeded unless cleared.
  bool Retryable(const absl::Status& s) const;
  // The wait after failed attempt `attempt` (0 = the first): initial_backoff * multiplier^attempt,
  // at most max_backoff.
  absl::Duration Backoff(int attempt) const;
  // "4 attempts, 250ms backoff doubling up to 10s" (for --help and the logs).
  std::string Describe() const;
};

// Calls `call` until it succeeds, fails with a status the policy does not retry, or
// policy.max_attempts are used, waiting policy.Backoff() between attempts with `wait`, which
// returns false to give up early (the scheduler is stopping, or the wait would pass a deadline).
// Each failed attempt that is retried is logged once, naming `what`; the last status is returned.
template <typename T>
absl::StatusOr<T> RetryCall(const RetryPolicy& policy, const std::string& what,
                            const std::function<absl::StatusOr<T>()>& call,
                            const std::function<bool(absl::Duration)>& wait) {
  absl::StatusOr<T> r = absl::UnknownError("not called");
  for (int attempt = 0; attempt < policy.max_attempts; ++attempt) {
    r = call();
    if (r.ok() || !policy.Retryable(r.status())) return r;
    if (attempt + 1 == policy.max_attempts) break;
    const absl::Duration backoff = policy.Backoff(attempt);
    LogInfo("%s: attempt %d of %d failed, retrying in %s: %s", what, attempt + 1,
            policy.max_attempts, absl::FormatDuration(backoff), r.status().message());
    if (!wait(backoff)) break;
  }
  return r;
}

}  // namespace livemig

#endif  // LIVEMIG_COMMON_RETRY_H_
