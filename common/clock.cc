#include "common/clock.h"

#include <algorithm>

namespace livemig {
namespace {
class RealClock : public Clock {
 public:
  absl::Time Now() const override { return absl::Now(); }
  void SleepFor(absl::Duration d) override {
    if (d > absl::ZeroDuration()) absl::SleepFor(d);
  }
  bool AwaitWithTimeout(absl::Mutex* mu, const absl::Condition& cond, absl::Duration timeout)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) override {
    return mu->AwaitWithTimeout(cond, std::max(timeout, absl::ZeroDuration()));
  }
};
}  // namespace

Clock* Clock::Real() {
  static RealClock* const kClock = new RealClock();
  return kClock;
}

void FakeClock::SleepFor(absl::Duration d) {
  absl::MutexLock l(&mu_);
  const absl::Time wake = now_ + d;
  ++waiters_;
  struct Due {
    const FakeClock* c;
    absl::Time wake;
  } due{this, wake};
  mu_.Await(absl::Condition(
      +[](Due* x) ABSL_NO_THREAD_SAFETY_ANALYSIS { return x->c->now_ >= x->wake; }, &due));
  --waiters_;
}

bool FakeClock::AwaitWithTimeout(absl::Mutex* mu, const absl::Condition& cond,
                                 absl::Duration timeout) {
  absl::Time deadline;
  {
    absl::MutexLock l(&mu_);
    deadline = now_ + timeout;
    ++waiters_;
  }
  // `mu` is the caller's: the condition is re-evaluated when its holders release it; the fake
  // time is looked at every 2 ms of real time (it moves only when a test says so).
  bool held = false;
  while (!(held = mu->AwaitWithTimeout(cond, absl::Milliseconds(2))) && Now() < deadline) {
  }
  absl::MutexLock l(&mu_);
  --waiters_;
  return held;
}

bool FakeClock::AwaitWaiters(int n, absl::Duration real_timeout) const {
  absl::MutexLock l(&mu_);
  struct Want {
    const FakeClock* c;
    int n;
  } want{this, n};
  return mu_.AwaitWithTimeout(
      absl::Condition(
          +[](Want* w) ABSL_NO_THREAD_SAFETY_ANALYSIS { return w->c->waiters_ >= w->n; }, &want),
      real_timeout);
}

}  // namespace livemig
