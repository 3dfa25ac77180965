// Time is injected, never read from a global inside logic, so tests are exact
// (docs/DESIGN.md § Clocks).
//
// A Clock tells the time and waits on it: SleepFor and AwaitWithTimeout measure their duration on
// this clock, so a FakeClock lets a test move a timer (a retry wait, the roll-forward window, the
// agent-silence limit, the report fence) past its end without waiting for it. Deadlines handed to
// gRPC, and lease expiry and host liveness (on the database's clock, shared by all scheduler
// replicas), are not local timers and stay on real time.
#ifndef LIVEMIG_COMMON_CLOCK_H_
#define LIVEMIG_COMMON_CLOCK_H_

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace livemig {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // Returns once `d` has passed on this clock (at once when d <= 0).
  virtual void SleepFor(absl::Duration d) = 0;
  // Called with `mu` held: waits (releasing `mu` meanwhile, as absl::Mutex::AwaitWithTimeout
  // does) until `cond` holds or `timeout` has passed on this clock; returns whether it holds.
  virtual bool AwaitWithTimeout(absl::Mutex* mu, const absl::Condition& cond,
                                absl::Duration timeout) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) = 0;
  // The process-wide real clock.
  static Clock* Real();
};

// A clock that only moves when told to. Its waits end when Advance moves the time past their
// end (an AwaitWithTimeout also when its condition holds). Thread-safe.
class FakeClock : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1'700'000'000)) : now_(start) {}
  absl::Time Now() const override {
    absl::MutexLock l(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock l(&mu_);
    now_ += d;
  }
  void SleepFor(absl::Duration d) override;
  bool AwaitWithTimeout(absl::Mutex* mu, const absl::Condition& cond, absl::Duration timeout)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) override;
  // Threads waiting on this clock now (in SleepFor or AwaitWithTimeout).
  int Waiters() const {
    absl::MutexLock l(&mu_);
    return waiters_;
  }
  // Waits, in real time up to `real_timeout`, until at least `n` threads wait on this clock
  // (a test's way to know that the code under test reached its timer before moving the clock).
  bool AwaitWaiters(int n, absl::Duration real_timeout) const;

 private:
  mutable absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
  int waiters_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace livemig

#endif  // LIVEMIG_COMMON_CLOCK_H_
